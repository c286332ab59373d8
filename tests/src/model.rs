//! A reference model of the datapath's semantics in plain Rust, written from the behaviour the
//! datapath promises (docs/maps.md, the modules' docs), not from its code: parse, frontends
//! and Maglev selection, conntrack in two tables with the TCP state machine, RST sequence
//! checks and confirmation, SNAT and hairpin, affinity, source ranges, fragments, TTL, ICMP
//! errors both translated and sent. The differential fuzzer (`fuzz`) runs the same packets
//! through it and through the loaded programs and compares verdicts, packets and conntrack.
//!
//! Time stands still in the model (no entry expires during a run; expiry has tests of its
//! own), and the control-plane state (frontends, backends and their ids, tables, ranges) is
//! read from the programmed maps: the sync is tested elsewhere, the datapath here.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use lb_common::{
    Backend, Config, CtKey, CtValue, ServiceValue, backend_flags, ct_dir, ct_flags, ct_state,
    flow_hash, kind, proto, svc_flags,
};
use lb_userspace::{bpf::maps::Maps, model::IpNet};

/// tc return codes and XDP actions the datapath answers with.
pub mod code {
    pub const TC_PASS: i64 = -1;
    pub const TC_DROP: i64 = 2;
    pub const TC_REDIRECT: i64 = 7;
    pub const XDP_DROP: i64 = 1;
    pub const XDP_PASS: i64 = 2;
    pub const XDP_TX: i64 = 3;
}

/// Where a packet arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress on a pod device.
    Pod,
    /// tc ingress on the uplink.
    Host,
    /// XDP on the uplink.
    Xdp,
}

impl Hook {
    fn id(self) -> u8 {
        match self {
            Hook::Pod => lb_common::hook::POD,
            Hook::Host => lb_common::hook::HOST,
            Hook::Xdp => lb_common::hook::XDP,
        }
    }
}

/// The model's answer for one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: i64,
    pub packet: Vec<u8>,
}

/// A conntrack entry as the model keeps it: the fields with meaning (no route cache, no
/// times: they do not change what a packet becomes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub svc_id: u32,
    pub backend_id: u32,
    pub nat_saddr: [u8; 4],
    pub nat_daddr: [u8; 4],
    pub nat_sport: u16,
    pub nat_dport: u16,
    pub state: u8,
    pub flags: u8,
    pub hook: u8,
    pub seq_end: u32,
}

impl Entry {
    /// The model's view of a map value.
    pub fn of(v: &CtValue) -> Self {
        Self {
            svc_id: v.svc_id,
            backend_id: v.backend_id,
            nat_saddr: v.nat_saddr,
            nat_daddr: v.nat_daddr,
            nat_sport: v.nat_sport,
            nat_dport: v.nat_dport,
            state: v.state,
            flags: v.flags,
            hook: v.hook,
            seq_end: v.seq_end,
        }
    }
}

/// A parsed packet.
#[derive(Clone, Copy, Debug)]
struct Pkt {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    tcp: u8,
    l4: usize,
    ip_len: u16,
    id: u16,
    /// 0 whole, 1 first fragment, 2 later fragment.
    frag: u8,
    ttl: u8,
    seq_end: u32,
    ack: u32,
}

/// The fixture's link MTU. XDP asks the FIB with the header's total length: a packet that
/// claims more is too big there and left to tc, which goes by the frame's real size.
const MTU: u16 = 1500;

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl Pkt {
    fn is_syn(&self) -> bool {
        self.proto == proto::TCP && self.tcp & (SYN | ACK) == SYN
    }
    fn key(&self, dir: u8) -> CtKey {
        key(
            self.saddr, self.daddr, self.sport, self.dport, self.proto, dir,
        )
    }
}

fn key(s: [u8; 4], d: [u8; 4], sp: u16, dp: u16, p: u8, dir: u8) -> CtKey {
    CtKey {
        saddr: s,
        daddr: d,
        sport: sp,
        dport: dp,
        proto: p,
        dir,
        _pad: [0; 2],
    }
}

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// What the parser makes of a frame.
enum Parsed {
    Flow(Pkt),
    /// An ICMP message: its header offset.
    Icmp(usize),
    /// Left alone (not IPv4, malformed, another protocol).
    Skip,
}

fn parse(p: &[u8]) -> Parsed {
    if p.len() < 14 || be16(p, 12) != 0x0800 {
        return Parsed::Skip;
    }
    if p.len() < 34 {
        return Parsed::Skip;
    }
    let ihl = usize::from(p[14] & 0x0f);
    if p[14] >> 4 != 4 || ihl < 5 {
        return Parsed::Skip;
    }
    let l4 = 14 + ihl * 4;
    let frag_off = be16(p, 20);
    let frag = if frag_off & 0x1fff != 0 {
        2
    } else if frag_off & 0x2000 != 0 {
        1
    } else {
        0
    };
    let proto_ = p[23];
    let mut f = Pkt {
        saddr: [p[26], p[27], p[28], p[29]],
        daddr: [p[30], p[31], p[32], p[33]],
        sport: 0,
        dport: 0,
        proto: proto_,
        tcp: 0,
        l4,
        ip_len: be16(p, 16),
        id: be16(p, 18),
        frag,
        ttl: p[22],
        seq_end: 0,
        ack: 0,
    };
    if frag == 2 {
        return if matches!(proto_, proto::TCP | proto::UDP | proto::SCTP) {
            Parsed::Flow(f)
        } else {
            Parsed::Skip
        };
    }
    let need = match proto_ {
        proto::TCP => 20,
        proto::UDP => 8,
        proto::SCTP => 12,
        proto::ICMP => return Parsed::Icmp(l4),
        _ => return Parsed::Skip,
    };
    if p.len() < l4 + need {
        return Parsed::Skip;
    }
    f.sport = be16(p, l4);
    f.dport = be16(p, l4 + 2);
    if proto_ == proto::TCP {
        f.tcp = p[l4 + 13];
        let hdrs = (ihl * 4) as u32 + u32::from(p[l4 + 12] >> 4) * 4;
        let payload = u32::from(f.ip_len).saturating_sub(hdrs);
        let ends = u32::from(f.tcp & SYN != 0) + u32::from(f.tcp & FIN != 0);
        f.seq_end = be32(p, l4 + 4).wrapping_add(payload + ends);
        f.ack = be32(p, l4 + 8);
    }
    Parsed::Flow(f)
}

/// Incremental (RFC 1624) update of the 16-bit checksum at `at` for a 32-bit field changed
/// from `old` to `new` (both as packet bytes).
fn fix(p: &mut [u8], at: usize, old: [u8; 4], new: [u8; 4]) {
    let sum = u16::from_ne_bytes([p[at], p[at + 1]]);
    let r = lb_common::csum::replace4(sum, u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    p[at..at + 2].copy_from_slice(&r.to_ne_bytes());
}

/// Replaces 4 bytes at `at`, fixing the checksums at `csums`.
fn put4(p: &mut [u8], at: usize, new: [u8; 4], csums: &[usize]) {
    let old = [p[at], p[at + 1], p[at + 2], p[at + 3]];
    for c in csums {
        fix(p, *c, old, new);
    }
    p[at..at + 4].copy_from_slice(&new);
}

/// Replaces the 2 bytes (host-order value) at `at`, fixing the checksums at `csums`.
fn put2(p: &mut [u8], at: usize, new: u16, csums: &[usize]) {
    let old = [p[at], p[at + 1], 0, 0];
    let nb = new.to_be_bytes();
    for c in csums {
        fix(p, *c, old, [nb[0], nb[1], 0, 0]);
    }
    p[at..at + 2].copy_from_slice(&nb);
}

/// A fragmented datagram: (source, destination, IP id, protocol).
type FragId = ([u8; 4], [u8; 4], u16, u8);

/// The model.
pub struct Model {
    pub cfg: Config,
    /// Frontends by (address, port, protocol).
    frontends: HashMap<([u8; 4], u16, u8), ServiceValue>,
    backends: HashMap<u32, Backend>,
    tables: HashMap<u32, Vec<u32>>,
    ranges: Vec<(u32, IpNet)>,
    /// (address, port) of every programmed backend.
    backend_keys: HashSet<([u8; 4], u16)>,
    /// Conntrack: entry and whether it is in the table of confirmed flows.
    pub ct: BTreeMap<CtKey, (Entry, bool)>,
    /// First fragments' ports by (source, destination, IP id, protocol).
    frags: HashMap<FragId, (u16, u16)>,
    affinity: HashMap<(u32, [u8; 4]), u32>,
    /// Backends with translated flows (the NAT'd-backend slots the datapath raises).
    nat_raised: HashSet<([u8; 4], u16)>,
    /// The uplink's MAC and the next hop's (XDP_TX writes them).
    pub uplink_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
    /// ICMP errors the model had tc send in the current wall-clock second (the datapath sends
    /// at most `ERRORS_PER_SEC` per CPU and second, then drops).
    errors: (u64, u32),
}

/// The datapath's ICMP error budget per CPU and second (`icmp.rs`).
const ERRORS_PER_SEC: u32 = 100;

/// Port unreachable, as the datapath encodes it in place of a next-hop MTU (`icmp.rs`).
const PORT_UNREACHABLE: u16 = 1;

/// The datapath's answer, which the model consults for what it cannot predict (the random
/// SNAT ports).
pub struct Observed<'a> {
    pub packet: &'a [u8],
}

impl Model {
    /// A model with no state, for `cfg`.
    pub fn new(cfg: Config, uplink_mac: [u8; 6], next_hop_mac: [u8; 6]) -> Self {
        Self {
            cfg,
            frontends: HashMap::new(),
            backends: HashMap::new(),
            tables: HashMap::new(),
            ranges: Vec::new(),
            backend_keys: HashSet::new(),
            ct: BTreeMap::new(),
            frags: HashMap::new(),
            affinity: HashMap::new(),
            nat_raised: HashSet::new(),
            errors: (0, 0),
            uplink_mac,
            next_hop_mac,
        }
    }

    /// Takes the control-plane state from the programmed maps.
    pub fn load_services(&mut self, maps: &Maps) {
        self.frontends = maps
            .frontends()
            .expect("frontends")
            .into_iter()
            .filter(|(k, _)| k.scope == lb_common::scope::EXTERNAL)
            .map(|(k, v)| ((k.addr, k.port, k.proto), v))
            .collect();
        self.backends = maps.all_backends().expect("backends").into_iter().collect();
        self.tables = self
            .frontends
            .values()
            .filter_map(|v| Some((v.svc_id, maps.table(v.svc_id).ok()??)))
            .collect();
        self.ranges = maps.ranges().expect("ranges");
        self.backend_keys = self.backends.values().map(|b| (b.addr, b.port)).collect();
        // The agent zeroes the NAT slot of a backend that is gone.
        let keys = self.backend_keys.clone();
        self.nat_raised.retain(|k| keys.contains(k));
    }

    fn backend_of(&self, id: u32, svc: u32) -> Option<Backend> {
        self.backends.get(&id).copied().filter(|b| b.svc_id == svc)
    }

    /// Runs one packet arriving at `hook`; `seen` is what the datapath did with it.
    pub fn run(&mut self, hook: Hook, p: &[u8], seen: &Observed<'_>) -> Result<Outcome, String> {
        let mut out = p.to_vec();
        let v = self.process(hook, &mut out, seen)?;
        Ok(self.outcome(hook, v, out))
    }

    fn outcome(&self, hook: Hook, v: V, mut packet: Vec<u8>) -> Outcome {
        let code = match (hook, v) {
            (Hook::Xdp, V::Pass) => code::XDP_PASS,
            (Hook::Xdp, V::Drop) => code::XDP_DROP,
            (Hook::Xdp, V::Out) => {
                packet[0..6].copy_from_slice(&self.next_hop_mac);
                packet[6..12].copy_from_slice(&self.uplink_mac);
                code::XDP_TX
            }
            (Hook::Xdp, V::Stack | V::Error(_)) => code::XDP_PASS,
            (_, V::Pass | V::Stack | V::Error(_)) => code::TC_PASS,
            (_, V::Drop) => code::TC_DROP,
            (_, V::Out) => code::TC_REDIRECT,
        };
        Outcome { code, packet }
    }

    fn process(&mut self, hook: Hook, p: &mut Vec<u8>, seen: &Observed<'_>) -> Result<V, String> {
        let mut f = match parse(p) {
            Parsed::Flow(f) => f,
            Parsed::Icmp(off) => return Ok(self.icmp(hook, p, off)),
            Parsed::Skip => return Ok(V::Pass),
        };
        if f.frag == 2 {
            let Some((sp, dp)) = self.frags.get(&(f.saddr, f.daddr, f.id, f.proto)).copied() else {
                return Ok(V::Pass);
            };
            f.sport = sp;
            f.dport = dp;
        }
        if hook == Hook::Xdp && f.ttl <= 1 {
            return Ok(V::Pass);
        }
        if let Some(svc) = self.frontends.get(&(f.daddr, f.dport, f.proto)).copied() {
            let v = self.for_frontend(hook, p, &f, &svc, seen)?;
            return Ok(self.error_if_asked(hook, p, v, seen));
        }
        let tracked = |m: &Self, a: [u8; 4], port: u16| {
            m.backend_keys.contains(&(a, port)) && m.nat_raised.contains(&(a, port))
        };
        let reply = tracked(self, f.saddr, f.sport);
        let reuse = f.is_syn() && tracked(self, f.daddr, f.dport);
        if reuse {
            let r = key(f.daddr, f.saddr, f.dport, f.sport, f.proto, ct_dir::REPLY);
            if self
                .ct
                .get(&r)
                .is_some_and(|(e, _)| e.state == ct_state::CLOSED)
            {
                self.ct.remove(&r);
            }
        }
        if reply && let Some(v) = self.reply(hook, p, &f) {
            return Ok(self.error_if_asked(hook, p, v, seen));
        }
        Ok(V::Pass)
    }

    fn for_frontend(
        &mut self,
        hook: Hook,
        p: &mut [u8],
        f: &Pkt,
        svc: &ServiceValue,
        seen: &Observed<'_>,
    ) -> Result<V, String> {
        let fkey = f.key(ct_dir::FORWARD);
        let mut stale = false;
        if let Some((cur, confirmed)) = self.ct.get(&fkey).copied() {
            let usable = !(f.is_syn() && cur.state == ct_state::CLOSED);
            if usable
                && cur.svc_id == svc.svc_id
                && self.backend_of(cur.backend_id, cur.svc_id).is_some()
            {
                return Ok(self.established(hook, p, f, fkey, cur, confirmed, svc));
            }
            if usable && hook == Hook::Xdp {
                return Ok(V::Pass);
            }
            if confirmed {
                self.retire_old_reply(&reply_key_of(&cur, f.proto), &fkey);
                self.ct.remove(&fkey);
            } else {
                stale = true;
            }
        }
        self.new_flow(hook, p, f, svc, stale, seen)
    }

    #[expect(clippy::too_many_arguments, reason = "one packet's state")]
    fn established(
        &mut self,
        hook: Hook,
        p: &mut [u8],
        f: &Pkt,
        fkey: CtKey,
        cur: Entry,
        confirmed: bool,
        svc: &ServiceValue,
    ) -> V {
        let go = routed(next_dst(&cur, f));
        if hook == Hook::Xdp && (!go || f.ip_len > MTU) {
            return V::Pass;
        }
        if go && f.ttl <= 1 {
            return V::Error(0);
        }
        self.nat_raised.insert((cur.nat_daddr, cur.nat_dport));
        let (after, close) = refresh(cur, f, ct_dir::FORWARD);
        self.ct.insert(fkey, (after, confirmed));
        if close {
            let peer = reply_key_of(&after, f.proto);
            self.close_peer(&fkey, confirmed, &peer, &after);
        }
        if !confirmed && cur.flags & ct_flags::SEEN_REPLY != 0 && cur.state != ct_state::CLOSED {
            self.confirm(&fkey, f.proto);
        }
        if svc.affinity_timeout != 0 {
            self.affinity.insert((svc.svc_id, f.saddr), cur.backend_id);
        }
        self.deliver(p, f, &cur, go)
    }

    /// A FIN or an accepted RST of the entry at `own` reaches its flow's other entry: the one
    /// at `peer` in the same table, if it still names `own` (another flow may own the tuple).
    fn close_peer(&mut self, own: &CtKey, confirmed: bool, peer: &CtKey, after: &Entry) {
        if let Some((e, c)) = self.ct.get_mut(peer)
            && *c == confirmed
            && names(peer, e, own)
        {
            e.state = after.state;
            e.flags |= after.flags & (ct_flags::FIN_FWD | ct_flags::FIN_REPLY);
        }
    }

    fn confirm(&mut self, fkey: &CtKey, l4: u8) {
        let Some((fwd, false)) = self.ct.get(fkey).copied() else {
            return;
        };
        let rkey = reply_key_of(&fwd, l4);
        let Some((rev, false)) = self.ct.get(&rkey).copied() else {
            return;
        };
        if !names(&rkey, &rev, fkey) {
            return;
        }
        self.ct.insert(*fkey, (fwd, true));
        self.ct.insert(rkey, (rev, true));
    }

    fn retire_old_reply(&mut self, old: &CtKey, fkey: &CtKey) {
        if let Some((rev, _)) = self.ct.get(old).copied()
            && names(old, &rev, fkey)
        {
            self.ct.remove(old);
        }
    }

    fn new_flow(
        &mut self,
        hook: Hook,
        p: &mut [u8],
        f: &Pkt,
        svc: &ServiceValue,
        stale: bool,
        seen: &Observed<'_>,
    ) -> Result<V, String> {
        if svc.flags & svc_flags::SRC_RANGES != 0
            && !self
                .ranges
                .iter()
                .any(|(id, net)| *id == svc.svc_id && net.contains(Ipv4Addr::from(f.saddr).into()))
        {
            return Ok(V::Drop);
        }
        if svc.lut_size == 0 {
            // No endpoint: rejected (port unreachable) from tc; XDP leaves it to tc. Without a
            // local endpoint (externalTrafficPolicy Local): dropped.
            if svc.flags & svc_flags::EXT_LOCAL != 0 {
                return Ok(V::Drop);
            }
            if hook == Hook::Xdp {
                return Ok(V::Pass);
            }
            return Ok(V::Error(PORT_UNREACHABLE));
        }
        let mut chosen = None;
        if svc.affinity_timeout != 0
            && let Some(id) = self.affinity.get(&(svc.svc_id, f.saddr))
            && let Some(b) = self.backend_of(*id, svc.svc_id)
            && b.flags & backend_flags::DRAINING == 0
        {
            chosen = Some((*id, b));
        }
        if chosen.is_none() {
            let h = flow_hash(
                f.saddr,
                f.daddr,
                f.sport,
                f.dport,
                f.proto,
                self.cfg.hash_seed,
            );
            let slot = (h % svc.lut_size) as usize;
            let id = self
                .tables
                .get(&svc.svc_id)
                .and_then(|t| t.get(slot).copied())
                .ok_or("no table slot")?;
            let Some(b) = self.backend_of(id, svc.svc_id) else {
                return Ok(V::Drop);
            };
            chosen = Some((id, b));
        }
        let (id, be) = chosen.ok_or("no backend")?;
        let state = next_state(f.proto, 0, 0, f.tcp, ct_dir::FORWARD, false).0;
        let mut fwd = Entry {
            svc_id: svc.svc_id,
            backend_id: id,
            nat_saddr: f.saddr,
            nat_daddr: be.addr,
            nat_sport: f.sport,
            nat_dport: be.port,
            state,
            flags: ct_flags::XLATE_DST,
            hook: hook.id(),
            seq_end: f.seq_end,
        };
        if be.addr == f.saddr {
            fwd.flags |= ct_flags::XLATE_SRC | ct_flags::HAIRPIN;
            fwd.nat_saddr = self.cfg.hairpin_addr;
        } else if hook != Hook::Pod
            && svc.flags & svc_flags::EXT_LOCAL == 0
            && be.flags & backend_flags::LOCAL == 0
        {
            let snat = if svc.kind == kind::NODE_PORT {
                f.daddr
            } else {
                self.cfg.snat_addr
            };
            if snat == [0; 4] {
                return Ok(V::Drop);
            }
            fwd.flags |= ct_flags::XLATE_SRC | ct_flags::SNAT;
            fwd.nat_saddr = snat;
        }
        if f.proto == proto::SCTP && be.port != f.dport {
            return Ok(V::Drop);
        }
        let go = routed(be.addr);
        if hook == Hook::Xdp && (!go || f.ip_len > MTU) {
            return Ok(V::Pass);
        }
        if go && f.ttl <= 1 {
            return Ok(V::Error(0));
        }
        let fkey = f.key(ct_dir::FORWARD);
        let old_reply = stale.then(|| {
            let (e, _) = self.ct[&fkey];
            reply_key_of(&e, f.proto)
        });
        // The reply entry.
        let mut rev = Entry {
            svc_id: fwd.svc_id,
            backend_id: fwd.backend_id,
            nat_saddr: f.daddr,
            nat_sport: f.dport,
            nat_daddr: f.saddr,
            nat_dport: f.sport,
            state: fwd.state,
            flags: ct_flags::XLATE_SRC | (fwd.flags & (ct_flags::HAIRPIN | ct_flags::SNAT)),
            hook: fwd.hook,
            seq_end: fwd.seq_end,
        };
        if fwd.flags & ct_flags::XLATE_SRC != 0 {
            rev.flags |= ct_flags::XLATE_DST;
        }
        let mut rkey = reply_key_of(&fwd, f.proto);
        self.nat_raised.insert((rkey.saddr, rkey.sport));
        let snat = fwd.flags & ct_flags::SNAT != 0;
        let keep = !snat || f.proto == proto::SCTP;
        let free = |m: &Self, k: &CtKey, rev: &Entry| match m.ct.get(k) {
            None => true,
            // A closed flow's reply tuple is free: its client reused the source port.
            Some((old, _)) if old.state == ct_state::CLOSED => true,
            Some((_, true)) => false,
            Some((old, false)) => {
                (old.nat_saddr, old.nat_sport, old.nat_daddr, old.nat_dport)
                    == (rev.nat_saddr, rev.nat_sport, rev.nat_daddr, rev.nat_dport)
            }
        };
        let mut ok = keep && free(self, &rkey, &rev);
        if !ok && f.proto != proto::SCTP {
            // A port of the range, picked at random: the datapath's pick, if it is one a
            // fresh flow may take.
            rev.flags |= ct_flags::XLATE_DST;
            let o = seen.packet;
            let port = if o.len() >= f.l4 + 2 {
                be16(o, f.l4)
            } else {
                0
            };
            if !(self.cfg.snat_port_min..=self.cfg.snat_port_max).contains(&port) {
                return Err(format!("source port {port} picked outside the range"));
            }
            rkey.dport = port;
            if self
                .ct
                .get(&rkey)
                .is_some_and(|(e, _)| e.state != ct_state::CLOSED)
            {
                return Err(format!("source port {port} picked while in use"));
            }
            fwd.flags |= ct_flags::XLATE_SRC;
            fwd.nat_sport = port;
            ok = true;
        }
        if !ok {
            return Ok(V::Drop);
        }
        self.ct.insert(rkey, (rev, false));
        self.ct.insert(fkey, (fwd, false));
        if svc.affinity_timeout != 0 {
            self.affinity.insert((svc.svc_id, f.saddr), id);
        }
        if let Some(old) = old_reply
            && old != rkey
        {
            self.retire_old_reply(&old, &fkey);
        }
        Ok(self.deliver(p, f, &fwd, go))
    }

    fn reply(&mut self, hook: Hook, p: &mut [u8], f: &Pkt) -> Option<V> {
        let rkey = f.key(ct_dir::REPLY);
        let (cur, confirmed) = self.ct.get(&rkey).copied()?;
        let go = routed(next_dst(&cur, f));
        if hook == Hook::Xdp && (!go || f.ip_len > MTU) {
            return Some(V::Pass);
        }
        if go && f.ttl <= 1 {
            return Some(V::Error(0));
        }
        let (after, close) = refresh(cur, f, ct_dir::REPLY);
        self.ct.insert(rkey, (after, confirmed));
        let fkey = forward_key_of(&rkey, &after);
        if close {
            self.close_peer(&rkey, confirmed, &fkey, &after);
        }
        if !confirmed
            && f.tcp & RST == 0
            && let Some((fwd, false)) = self.ct.get_mut(&fkey)
            && names(&fkey, fwd, &rkey)
        {
            fwd.flags |= ct_flags::SEEN_REPLY;
        }
        Some(self.deliver(p, f, &cur, go))
    }

    /// Rewrites the packet as `e` says; one forwarded (`go`) has its TTL decremented.
    fn deliver(&mut self, p: &mut [u8], f: &Pkt, e: &Entry, go: bool) -> V {
        let l4 = f.l4;
        let csum = match (f.frag == 2, f.proto) {
            (true, _) => None,
            (_, proto::TCP) => Some(l4 + 16),
            (_, proto::UDP) if be16(p, l4 + 6) != 0 => Some(l4 + 6),
            _ => None,
        };
        let ports = f.frag != 2;
        let with = |c: Option<usize>, ip: bool| -> Vec<usize> {
            let mut v: Vec<usize> = c.into_iter().collect();
            if ip {
                v.push(24);
            }
            v
        };
        if e.flags & ct_flags::XLATE_DST != 0 {
            if e.nat_daddr != f.daddr {
                put4(p, 30, e.nat_daddr, &with(csum, true));
            }
            if ports && e.nat_dport != f.dport {
                put2(p, l4 + 2, e.nat_dport, &with(csum, false));
            }
        }
        if e.flags & ct_flags::XLATE_SRC != 0 {
            if e.nat_saddr != f.saddr {
                put4(p, 26, e.nat_saddr, &with(csum, true));
            }
            if ports && e.nat_sport != f.sport {
                put2(p, l4, e.nat_sport, &with(csum, false));
            }
        }
        // A zero UDP checksum after the update is sent as 0xffff (zero means none).
        if let Some(c) = csum
            && f.proto == proto::UDP
            && p[c] == 0
            && p[c + 1] == 0
        {
            p[c] = 0xff;
            p[c + 1] = 0xff;
        }
        if f.frag == 1 {
            self.frags
                .insert((f.saddr, f.daddr, f.id, f.proto), (f.sport, f.dport));
        }
        if !go {
            return V::Stack;
        }
        // TTL: the 16-bit word with the protocol.
        let old = [p[22], p[23], 0, 0];
        p[22] -= 1;
        fix(p, 24, old, [p[22], p[23], 0, 0]);
        V::Out
    }

    /// An ICMP message: an error about a tracked flow is translated for the other end.
    fn icmp(&mut self, hook: Hook, p: &mut [u8], off: usize) -> V {
        if p.len() < off + 8 || !matches!(p[off], 3 | 11 | 12) {
            return V::Pass;
        }
        let inner = off + 8;
        if p.len() < inner + 20 {
            return V::Pass;
        }
        let ihl = usize::from(p[inner] & 0x0f);
        if p[inner] >> 4 != 4 || ihl < 5 {
            return V::Pass;
        }
        let iproto = p[inner + 9];
        if !matches!(iproto, proto::TCP | proto::UDP | proto::SCTP) {
            return V::Pass;
        }
        let il4 = inner + ihl * 4;
        if p.len() < il4 + 4 {
            return V::Pass;
        }
        let (es, ed) = ([p[26], p[27], p[28], p[29]], [p[30], p[31], p[32], p[33]]);
        let qs: [u8; 4] = p[inner + 12..inner + 16].try_into().unwrap_or_default();
        let qd: [u8; 4] = p[inner + 16..inner + 20].try_into().unwrap_or_default();
        let (qsp, qdp) = (be16(p, il4), be16(p, il4 + 2));
        let icsum = off + 2;
        let inner_csum = inner + 10;
        let sent = |to: [u8; 4]| match (routed(to), hook) {
            (true, _) => Some(V::Out),
            (false, Hook::Xdp) => None,
            (false, _) => Some(V::Stack),
        };
        if let Some((rev, _)) = self
            .ct
            .get(&key(qd, qs, qdp, qsp, iproto, ct_dir::REPLY))
            .copied()
        {
            let to = if rev.flags & ct_flags::XLATE_DST != 0 {
                rev.nat_daddr
            } else {
                ed
            };
            let Some(v) = sent(to) else {
                return V::Pass;
            };
            if rev.nat_saddr != qd {
                put4(p, inner + 16, rev.nat_saddr, &[inner_csum]);
            }
            if rev.nat_sport != qdp {
                put2(p, il4 + 2, rev.nat_sport, &[icsum]);
            }
            if rev.flags & ct_flags::XLATE_DST != 0 {
                if rev.nat_daddr != qs {
                    put4(p, inner + 12, rev.nat_daddr, &[inner_csum]);
                }
                if rev.nat_dport != qsp {
                    put2(p, il4, rev.nat_dport, &[icsum]);
                }
                if rev.nat_daddr != ed {
                    put4(p, 30, rev.nat_daddr, &[24]);
                }
            }
            if es == qd && rev.nat_saddr != es {
                put4(p, 26, rev.nat_saddr, &[24]);
            }
            return v;
        }
        if let Some((fwd, _)) = self
            .ct
            .get(&key(qd, qs, qdp, qsp, iproto, ct_dir::FORWARD))
            .copied()
            && fwd.flags & ct_flags::XLATE_DST != 0
        {
            let Some(v) = sent(fwd.nat_daddr) else {
                return V::Pass;
            };
            if fwd.nat_daddr != qs {
                put4(p, inner + 12, fwd.nat_daddr, &[inner_csum]);
            }
            if fwd.nat_dport != qsp {
                put2(p, il4, fwd.nat_dport, &[icsum]);
            }
            if fwd.flags & ct_flags::XLATE_SRC != 0 {
                if fwd.nat_saddr != qd {
                    put4(p, inner + 16, fwd.nat_saddr, &[inner_csum]);
                }
                if fwd.nat_sport != qdp {
                    put2(p, il4 + 2, fwd.nat_sport, &[icsum]);
                }
            }
            if fwd.nat_daddr != ed {
                put4(p, 30, fwd.nat_daddr, &[24]);
            }
            return v;
        }
        V::Pass
    }

    /// tc answers a packet that cannot go on with an ICMP error in its place (XDP passes it
    /// to tc before).
    fn error_if_asked(&mut self, hook: Hook, p: &mut Vec<u8>, v: V, seen: &Observed<'_>) -> V {
        let V::Error(mtu) = v else {
            return v;
        };
        if hook == Hook::Xdp {
            return V::Pass;
        }
        // The rate limit: once the model sent a second's budget, a datapath that answered
        // with nothing (the packet unchanged) ran out on its CPU.
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.errors.0 != second {
            self.errors = (second, 0);
        }
        if self.errors.1 >= ERRORS_PER_SEC && seen.packet == p.as_slice() {
            return V::Drop;
        }
        self.errors.1 += 1;
        let later = be16(p, 20) & 0x1fff != 0;
        let q = match p[23] {
            proto::TCP => 40,
            proto::SCTP => 32,
            _ => 28,
        };
        if p[14] != 0x45 || later || p.len() < 14 + q {
            return V::Drop;
        }
        let mut out = p[..14].to_vec();
        let mut h = vec![0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, proto::ICMP, 0, 0];
        h[2..4].copy_from_slice(&((28 + q) as u16).to_be_bytes());
        h.extend_from_slice(&p[30..34]);
        h.extend_from_slice(&p[26..30]);
        let c = !lb_common::csum::fold(lb_common::csum::sum_be(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut icmp = if mtu == 0 {
            vec![11, 0, 0, 0, 0, 0, 0, 0]
        } else if mtu == PORT_UNREACHABLE {
            vec![3, 3, 0, 0, 0, 0, 0, 0]
        } else {
            let m = mtu.to_be_bytes();
            vec![3, 4, 0, 0, 0, 0, m[0], m[1]]
        };
        icmp.extend_from_slice(&p[14..14 + q]);
        let c = !lb_common::csum::fold(lb_common::csum::sum_be(&icmp, 0));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let to = [p[26], p[27], p[28], p[29]];
        out.extend(h);
        out.extend(icmp);
        *p = out;
        if routed(to) { V::Out } else { V::Stack }
    }
}

/// A verdict of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    Pass,
    Drop,
    /// Forwarded (tc redirect, XDP_TX).
    Out,
    /// Translated and handed to the stack (no route of the fixture's: local or unreachable).
    Stack,
    /// An ICMP error instead (MTU, 0: time exceeded).
    Error(u16),
}

/// Where a tracked packet goes: the translated destination if the entry rewrites it.
fn next_dst(cur: &Entry, f: &Pkt) -> [u8; 4] {
    if cur.flags & ct_flags::XLATE_DST != 0 {
        cur.nat_daddr
    } else {
        f.daddr
    }
}

/// True if the fixture namespace routes `addr` through its uplink (`datapath::ROUTED`, via a
/// permanent neighbour): a translated packet to it is forwarded; to anything else the stack
/// gets it.
pub fn routed(addr: [u8; 4]) -> bool {
    crate::datapath::ROUTED
        .iter()
        .any(|n| IpNet::parse(n).is_some_and(|net| net.contains(Ipv4Addr::from(addr).into())))
}

/// True if the entry `e` at `k` names `other` as its flow's other half.
fn names(k: &CtKey, e: &Entry, other: &CtKey) -> bool {
    if k.dir == ct_dir::FORWARD {
        reply_key_of(e, k.proto) == *other
    } else {
        forward_key_of(k, e) == *other
    }
}

fn reply_key_of(fwd: &Entry, l4: u8) -> CtKey {
    key(
        fwd.nat_daddr,
        fwd.nat_saddr,
        fwd.nat_dport,
        fwd.nat_sport,
        l4,
        ct_dir::REPLY,
    )
}

fn forward_key_of(rkey: &CtKey, rev: &Entry) -> CtKey {
    let (c, cp) = if rev.flags & ct_flags::XLATE_DST != 0 {
        (rev.nat_daddr, rev.nat_dport)
    } else {
        (rkey.daddr, rkey.dport)
    };
    key(
        c,
        rev.nat_saddr,
        cp,
        rev.nat_sport,
        rkey.proto,
        ct_dir::FORWARD,
    )
}

fn next_state(l4: u8, state: u8, fl: u8, tcp: u8, dir: u8, rst_ok: bool) -> (u8, u8) {
    if l4 != proto::TCP {
        return (ct_state::ESTABLISHED, fl);
    }
    if tcp & RST != 0 {
        return (if rst_ok { ct_state::CLOSED } else { state }, fl);
    }
    if tcp & FIN != 0 {
        let fl = fl
            | if dir == ct_dir::FORWARD {
                ct_flags::FIN_FWD
            } else {
                ct_flags::FIN_REPLY
            };
        let both = ct_flags::FIN_FWD | ct_flags::FIN_REPLY;
        return (
            if fl & both == both {
                ct_state::CLOSED
            } else {
                ct_state::FIN_WAIT
            },
            fl,
        );
    }
    let st = match state {
        ct_state::SYN_SENT if tcp & ACK != 0 => ct_state::ESTABLISHED,
        0 if tcp & (SYN | ACK) == SYN => ct_state::SYN_SENT,
        0 => ct_state::ESTABLISHED,
        s => s,
    };
    (st, fl)
}

/// An entry after a packet in direction `dir`; true if the flow's other entry must learn a
/// close (FIN, accepted RST).
fn refresh(mut e: Entry, f: &Pkt, dir: u8) -> (Entry, bool) {
    let tcp = f.proto == proto::TCP;
    let rst = tcp && f.tcp & RST != 0;
    let answering_syn = dir == ct_dir::REPLY && e.state == ct_state::SYN_SENT;
    let rst_ok = rst
        && if answering_syn {
            f.tcp & ACK != 0 && f.ack == e.seq_end
        } else {
            e.seq_end == 0 || f.seq_end == e.seq_end
        };
    let after = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
    if tcp && !rst && (answering_syn || e.seq_end == 0 || after(f.seq_end, e.seq_end)) {
        e.seq_end = f.seq_end;
    }
    let (state, fl) = next_state(f.proto, e.state, e.flags, f.tcp, dir, rst_ok);
    let changed = state != e.state || fl != e.flags;
    e.state = state;
    e.flags = fl;
    (e, changed && (f.tcp & FIN != 0 || rst_ok))
}
