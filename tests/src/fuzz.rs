//! Differential fuzzing of the datapath: random sequences of packets (well-formed, malformed,
//! replies, fragments, ICMP errors, TTL 1) and control-plane changes go through the loaded
//! programs (BPF_PROG_TEST_RUN) and through the reference model (`model`), and every verdict,
//! every rewritten packet and, every few steps, the whole conntrack must agree.
//!
//! A case is a list of `Action`s: replies and ICMP errors name the earlier step whose output
//! they answer, so a saved case replays exactly (the datapath's random SNAT ports are read
//! from its own outputs). Cases that diverged are kept in `tests/fuzz-corpus/` and replayed by
//! the tests.

use std::net::Ipv4Addr;

use lb_common::{Config, prog_names};
use lb_userspace::model::{
    Algorithm, DesiredState, Endpoint, EndpointState, Frontend, FrontendKind, IpNet, Protocol,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Datapath, NEXT_HOP_MAC, UPLINK},
    fixture::{self, BACKENDS, CLIENT, EMPTY_VIP, LB_IP, NODE_IP, OUTSIDE, REMOTE, VIP},
    model::{Entry, Hook, Model, Observed},
    packet::{self, flags},
};

/// A small, seedable generator (splitmix64): no dependency, the same sequence everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Where a case's packet arrives: a pod device, or the uplink (XDP, then tc if XDP passed
/// it on untouched, as on a real uplink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum At {
    Pod,
    Uplink,
}

/// A control-plane change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The third backend leaves (or comes back to) every service that has it.
    ToggleBackend,
    /// Every backend of `web` becomes terminating (draining), or active again.
    ToggleDraining,
}

/// One step of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A packet as given.
    Send { at: At, bytes: Vec<u8> },
    /// The answer to step `to`'s output (addresses and ports swapped), with TCP `flags`,
    /// sequence `seq` (None: 5000, where the backends' sequence space starts) and `len` bytes of payload.
    Reply {
        at: At,
        to: usize,
        flags: u8,
        seq: Option<u32>,
        len: usize,
    },
    /// An ICMP error about step `to`'s output: from its destination (`from_dst`) or from a
    /// router, port unreachable or fragmentation needed (`code` 3 or 4).
    Icmp {
        at: At,
        to: usize,
        from_dst: bool,
        code: u8,
    },
    /// Step `to`'s output sent again as a new TCP packet with `flags` (sequence 1000): the
    /// same tuple dialled straight at the backend.
    Resend { at: At, to: usize, flags: u8 },
    /// A control-plane change.
    Control(Change),
}

/// Why a run stopped.
#[derive(Debug)]
pub struct Divergence {
    /// Index of the action that diverged.
    pub step: usize,
    pub what: String,
    /// The case up to and including the divergence.
    pub case: Vec<Action>,
}

/// The services of a fuzz run.
fn services(third: bool, draining: bool) -> DesiredState {
    let ep = |a: Ipv4Addr, port: u16, local: bool| Endpoint {
        addr: a.into(),
        port,
        weight: 1,
        local,
        state: EndpointState::Active,
        node: None,
    };
    let set = |port: u16| -> Vec<Endpoint> {
        BACKENDS
            .iter()
            .take(if third { 3 } else { 2 })
            .map(|a| ep(*a, port, true))
            .collect()
    };
    let mut d = DesiredState::default();
    let mut add = |name: &str,
                   fes: Vec<Frontend>,
                   eps: Vec<Endpoint>,
                   f: &dyn Fn(&mut lb_userspace::model::LbService)| {
        let mut s = fixture::svc::<Ipv4Addr>(name, fes, &[], 0);
        s.endpoints = eps;
        f(&mut s);
        d.services.insert(s.name.clone(), s);
    };
    let lb = |a, port, proto| Frontend {
        kind: FrontendKind::LoadBalancer,
        ..fixture::fe(a, port, proto)
    };
    add(
        "web",
        vec![fixture::fe(VIP, 80, Protocol::Tcp)],
        set(8080),
        &|s| {
            if draining {
                for e in &mut s.endpoints {
                    e.state = EndpointState::Terminating;
                }
            }
        },
    );
    let active = |port| -> Vec<Endpoint> {
        set(port)
            .into_iter()
            .map(|mut e| {
                e.state = EndpointState::Active;
                e
            })
            .collect()
    };
    add(
        "dns",
        vec![fixture::fe(VIP, 53, Protocol::Udp)],
        active(5353),
        &|_| {},
    );
    add(
        "sctp",
        vec![fixture::fe(SCTP_VIP, 9000, Protocol::Sctp)],
        active(9000),
        &|_| {},
    );
    add(
        "lb",
        vec![
            lb(LB_IP, 80, Protocol::Tcp),
            Frontend {
                kind: FrontendKind::NodePort,
                ..fixture::fe(NODE_IP, 30080, Protocol::Tcp)
            },
        ],
        vec![ep(REMOTE, 8080, false)],
        &|s| s.endpoints[0].state = EndpointState::Active,
    );
    add(
        "lbudp",
        vec![lb(LB_IP, 53, Protocol::Udp)],
        vec![ep(REMOTE, 5353, false)],
        &|s| s.endpoints[0].state = EndpointState::Active,
    );
    add(
        "ranges",
        vec![Frontend {
            source_ranges: true,
            ..lb(RANGES_IP, 80, Protocol::Tcp)
        }],
        vec![ep(BACKENDS[0], 8080, true)],
        &|s| {
            s.endpoints[0].state = EndpointState::Active;
            s.source_ranges = vec![IpNet::parse("198.51.100.0/28").expect("net")];
        },
    );
    add(
        "aff",
        vec![fixture::fe(AFF_VIP, 80, Protocol::Tcp)],
        active(8080),
        &|s| s.affinity_timeout = 10_000,
    );
    add(
        "empty",
        vec![fixture::fe(EMPTY_VIP, 80, Protocol::Tcp)],
        Vec::new(),
        &|_| {},
    );
    for s in d.services.values_mut() {
        s.algorithm = Algorithm::Maglev;
    }
    d
}

const SCTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const RANGES_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const AFF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

/// Clients: pods (one of them also a backend: hairpin), outside hosts (one inside the source
/// ranges, one not), and addresses no one should use.
const CLIENTS: [Ipv4Addr; 7] = [
    CLIENT,
    BACKENDS[1],
    Ipv4Addr::new(10, 244, 1, 20),
    OUTSIDE,
    Ipv4Addr::new(198, 51, 100, 99),
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(0, 0, 0, 0),
];
const PORTS: [u16; 5] = [40000, 40001, 40002, 0, 61000];
/// Destinations: every frontend, a backend straight, and noise.
const DESTS: [(Ipv4Addr, u16, u8); 13] = [
    (VIP, 80, 6),
    (VIP, 53, 17),
    (SCTP_VIP, 9000, 132),
    (LB_IP, 80, 6),
    (NODE_IP, 30080, 6),
    (LB_IP, 53, 17),
    (RANGES_IP, 80, 6),
    (AFF_VIP, 80, 6),
    (EMPTY_VIP, 80, 6),
    (VIP, 81, 6),
    (BACKENDS[0], 8080, 6),
    (BACKENDS[2], 5353, 17),
    (Ipv4Addr::new(10, 244, 3, 3), 443, 6),
];
const TCP_FLAGS: [u8; 9] = [
    flags::SYN,
    flags::SYN,
    flags::ACK,
    flags::ACK,
    flags::FIN | flags::ACK,
    flags::RST,
    flags::RST | flags::ACK,
    flags::SYN | flags::ACK,
    0xff,
];

/// A random packet from a client.
fn client_packet(r: &mut Rng) -> Vec<u8> {
    let (src, sport) = (r.pick(&CLIENTS), r.pick(&PORTS));
    let (dst, dport, p) = r.pick(&DESTS);
    let payload = vec![0x5a; r.pick(&[0, 0, 10, 100])];
    let mut pkt = match p {
        6 => {
            let seq = r.pick(&[1000, 1001, 1011, 1101, 7, 0xffff_fff0]);
            let ack = r.pick(&[0, 5001, 77]);
            packet::tcp_seq(
                (src, sport),
                (dst, dport),
                r.pick(&TCP_FLAGS),
                seq,
                ack,
                &payload,
            )
        }
        17 => packet::udp((src, sport), (dst, dport), &payload, r.chance(90)),
        _ => packet::sctp((src, sport), (dst, dport)),
    };
    if r.chance(5) {
        pkt = packet::with_ttl(pkt, r.pick(&[0, 1]));
    }
    pkt
}

/// A malformed (or merely unusual) variant of a packet.
fn mangle(r: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    let fix_ip = |p: &mut Vec<u8>| {
        let ihl = usize::from(p[14] & 0x0f) * 4;
        if p.len() >= 14 + ihl.max(20) {
            p[24..26].copy_from_slice(&[0, 0]);
            let c = !lb_common::csum::fold(lb_common::csum::sum_be(&p[14..14 + ihl.max(20)], 0));
            p[24..26].copy_from_slice(&c.to_be_bytes());
        }
    };
    match r.below(8) {
        // Cut anywhere (BPF_PROG_TEST_RUN wants a byte past the Ethernet header).
        0 => {
            let n = 15 + r.below(p.len().saturating_sub(15).max(1));
            p.truncate(n.min(p.len()));
        }
        // A bad IHL.
        1 => p[14] = 0x40 | r.pick(&[0u8, 3, 4, 15]),
        // IP options (IHL 6: four bytes of no-ops).
        2 => {
            p.splice(34..34, [1u8, 1, 1, 1]);
            p[14] = 0x46;
            let len = u16::from_be_bytes([p[16], p[17]]) + 4;
            p[16..18].copy_from_slice(&len.to_be_bytes());
            fix_ip(&mut p);
        }
        // A VLAN tag.
        3 => {
            p.splice(12..12, [0x81u8, 0x00, 0x00, 0x07]);
        }
        // Another EtherType.
        4 => p[12..14].copy_from_slice(&[0x86, 0xdd]),
        // A bad checksum.
        5 => {
            let i = r.pick(&[24usize, 25, 50, 51]);
            if i < p.len() {
                p[i] ^= 0x5a;
            }
        }
        // An IP version that is not 4.
        6 => {
            p[14] = 0x65;
        }
        // A length field that lies.
        _ => {
            let l = r.pick(&[0u16, 20, 65535]);
            p[16..18].copy_from_slice(&l.to_be_bytes());
            fix_ip(&mut p);
        }
    }
    p
}

/// Generates a random case of `steps` actions.
pub fn generate(seed: u64, steps: usize) -> Vec<Action> {
    let mut r = Rng::new(seed);
    let mut case: Vec<Action> = Vec::with_capacity(steps);
    // Steps whose action was a packet (replies answer one of the last of them).
    let mut sent: Vec<usize> = Vec::new();
    for i in 0..steps {
        let at = if r.chance(45) { At::Pod } else { At::Uplink };
        let recent = |r: &mut Rng, sent: &[usize]| {
            let k = sent.len();
            (k > 0).then(|| sent[k - 1 - r.below(k.min(8))])
        };
        let a = match r.below(100) {
            0..=34 => Action::Send {
                at,
                bytes: client_packet(&mut r),
            },
            35..=64 => match recent(&mut r, &sent) {
                Some(to) => Action::Reply {
                    at,
                    to,
                    flags: r.pick(&TCP_FLAGS),
                    seq: r.chance(70).then_some(5000).or(r.chance(50).then_some(1)),
                    len: r.pick(&[0, 0, 50]),
                },
                None => continue,
            },
            65..=69 => match recent(&mut r, &sent) {
                Some(to) => Action::Icmp {
                    at,
                    to,
                    from_dst: r.chance(50),
                    code: r.pick(&[3, 4]),
                },
                None => continue,
            },
            70..=75 => {
                // A datagram bigger than the MTU, in fragments (sometimes out of order, or
                // only its later pieces).
                let (src, sport) = (r.pick(&CLIENTS[..5]), r.pick(&PORTS[..3]));
                let big = packet::udp((src, sport), (VIP, 53), &[7u8; 3000], true);
                let mut frags = packet::fragment(&big, 1480, (r.next_u64() & 0xffff) as u16);
                if r.chance(20) {
                    frags.swap(0, 1);
                }
                if r.chance(10) {
                    frags.remove(0);
                }
                for f in frags {
                    case.push(Action::Send { at, bytes: f });
                }
                continue;
            }
            76..=78 => {
                reuse_script(&mut r, &mut case, &mut sent);
                continue;
            }
            79..=87 => {
                let p = client_packet(&mut r);
                Action::Send {
                    at,
                    bytes: mangle(&mut r, p),
                }
            }
            88..=90 => Action::Control(if r.chance(70) {
                Change::ToggleBackend
            } else {
                Change::ToggleDraining
            }),
            _ => {
                let mut b = vec![0u8; 14 + r.below(80)];
                for x in &mut b {
                    *x = r.next_u64() as u8;
                }
                if r.chance(60) {
                    b[12..14].copy_from_slice(&[0x08, 0x00]);
                }
                if b.len() < 15 {
                    b.push(0);
                }
                Action::Send { at, bytes: b }
            }
        };
        if !matches!(a, Action::Control(_)) {
            sent.push(case.len());
        }
        case.push(a);
        let _ = i;
    }
    case
}

/// A pod's tuple used for one service, closed by an RST (with the right sequence, or not),
/// dialled at the chosen backend straight, then for a second service with the same
/// backends, then for the first again: the paths where one flow's entries could take or
/// retire another's.
fn reuse_script(r: &mut Rng, case: &mut Vec<Action>, sent: &mut Vec<usize>) {
    let (src, sport) = (r.pick(&CLIENTS[..3]), r.pick(&PORTS[..3]));
    let (f1, f2) = if r.chance(50) {
        (VIP, AFF_VIP)
    } else {
        (AFF_VIP, VIP)
    };
    let mut push = |case: &mut Vec<Action>, a: Action| {
        sent.push(case.len());
        case.push(a);
    };
    let syn = |to: Ipv4Addr| Action::Send {
        at: At::Pod,
        bytes: packet::tcp_seq((src, sport), (to, 80), flags::SYN, 1000, 0, &[]),
    };
    let first = case.len();
    push(case, syn(f1));
    push(
        case,
        Action::Reply {
            at: At::Pod,
            to: first,
            flags: flags::SYN | flags::ACK,
            seq: Some(5000),
            len: 0,
        },
    );
    // The backend's RST: 5001 is what its SYN-ACK makes the right sequence.
    push(
        case,
        Action::Reply {
            at: At::Pod,
            to: first,
            flags: flags::RST,
            seq: Some(if r.chance(80) { 5001 } else { 5002 }),
            len: 0,
        },
    );
    if r.chance(70) {
        push(
            case,
            Action::Resend {
                at: At::Pod,
                to: first,
                flags: flags::SYN,
            },
        );
    }
    let second = case.len();
    push(case, syn(f2));
    push(
        case,
        Action::Reply {
            at: At::Pod,
            to: second,
            flags: flags::SYN | flags::ACK,
            seq: Some(5000),
            len: 0,
        },
    );
    push(case, syn(f1));
    let last = case.len() - 1;
    push(
        case,
        Action::Reply {
            at: At::Pod,
            to: second,
            flags: flags::ACK,
            seq: Some(5001),
            len: 10,
        },
    );
    push(
        case,
        Action::Reply {
            at: At::Pod,
            to: last,
            flags: flags::SYN | flags::ACK,
            seq: Some(5000),
            len: 0,
        },
    );
}

/// Step `to`'s output as a new TCP packet with `flags`, its addresses and ports kept.
fn resend(out: &[u8], tcp_flags: u8) -> Option<Vec<u8>> {
    if out.len() < 54 || out[12..14] != [0x08, 0x00] || out[14] != 0x45 || out[23] != 6 {
        return None;
    }
    let (s, sp, d, dp) = packet::parse_addrs(out);
    Some(packet::tcp_seq((s, sp), (d, dp), tcp_flags, 1000, 0, &[]))
}

/// Swaps the addresses and ports of a translated packet's output to make its answer.
fn answer(out: &[u8], tcp_flags: u8, seq: Option<u32>, len: usize) -> Option<Vec<u8>> {
    if out.len() < 54 || out[12..14] != [0x08, 0x00] || out[14] != 0x45 {
        return None;
    }
    let (s, sp, d, dp) = packet::parse_addrs(out);
    let body = vec![0x33u8; len];
    Some(match out[23] {
        6 => {
            let l4 = 14 + usize::from(out[14] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([out[16], out[17]]));
            let payload = total.saturating_sub(l4 - 14 + usize::from(out[l4 + 12] >> 4) * 4);
            let fl = out[l4 + 13];
            let ends = u32::from(fl & flags::SYN != 0) + u32::from(fl & flags::FIN != 0);
            let their_end =
                u32::from_be_bytes([out[l4 + 4], out[l4 + 5], out[l4 + 6], out[l4 + 7]])
                    .wrapping_add(payload as u32 + ends);
            let seq = seq.unwrap_or(5000);
            packet::tcp_seq((d, dp), (s, sp), tcp_flags, seq, their_end, &body)
        }
        17 => packet::udp((d, dp), (s, sp), &body, true),
        132 => packet::sctp((d, dp), (s, sp)),
        _ => return None,
    })
}

/// The checksum fields of a frame, zeroed (both sides compute the same checksums in
/// different ways; their validity is checked apart).
fn normalized(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    if v.len() < 34 || v[12..14] != [0x08, 0x00] || v[14] >> 4 != 4 {
        return v;
    }
    v[24] = 0;
    v[25] = 0;
    let l4 = 14 + usize::from(v[14] & 0x0f) * 4;
    let frag = u16::from_be_bytes([v[20], v[21]]) & 0x1fff != 0;
    let at = match v[23] {
        _ if frag => None,
        6 => Some(l4 + 16),
        17 => Some(l4 + 6),
        1 => Some(l4 + 2),
        _ => None,
    };
    if let Some(at) = at
        && v.len() >= at + 2
    {
        // (A UDP checksum of 0 stays 0: that is meaningful.)
        if !(v[23] == 17 && v[at] == 0 && v[at + 1] == 0) {
            v[at] = 0;
            v[at + 1] = 0;
        }
    }
    if v[23] == 1 && v.len() >= l4 + 8 + 12 {
        // The quoted IPv4 header's checksum.
        v[l4 + 8 + 10] = 0;
        v[l4 + 8 + 11] = 0;
    }
    v
}

/// True if the frame's IPv4 and L4 (or ICMP) checksums verify; None if it has none to check.
fn checksums_ok(p: &[u8]) -> Option<bool> {
    if p.len() < 34 || p[12..14] != [0x08, 0x00] || p[14] != 0x45 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[16], p[17]]));
    if total < 20 || 14 + total != p.len() || u16::from_be_bytes([p[20], p[21]]) & 0x3fff != 0 {
        return None;
    }
    let ip = lb_common::csum::fold(lb_common::csum::sum_be(&p[14..34], 0)) == 0xffff;
    let l4 = match p[23] {
        6 | 17 => {
            let par = packet::parse(p);
            par.l4_csum_ok
        }
        1 => lb_common::csum::fold(lb_common::csum::sum_be(&p[34..], 0)) == 0xffff,
        _ => true,
    };
    Some(ip && l4)
}

/// True if BPF_PROG_TEST_RUN builds an skb of the frame: it refuses an IPv4 frame shorter
/// than an IPv4 header, an IPv6 one shorter than an IPv6 header.
fn test_run_builds_skb(p: &[u8]) -> bool {
    match p.get(12..14) {
        Some([0x08, 0x00]) => p.len() >= 34,
        Some([0x86, 0xdd]) => p.len() >= 54,
        _ => true,
    }
}

/// The datapath and the model, side by side.
pub struct Bed {
    pub dp: Datapath,
    pub model: Model,
    third: bool,
    draining: bool,
    /// Each step's packet after the datapath (what replies answer).
    outputs: Vec<Option<Vec<u8>>>,
    /// tc runs the kernel's test run could not make (`test_run_builds_skb`).
    pub skipped: usize,
    /// What became of the last action's packet (None: it had none).
    last: Option<Last>,
}

/// What became of one packet.
#[derive(Clone, Copy, Debug)]
struct Last {
    rewritten: bool,
    dropped: bool,
}

impl Bed {
    /// A fresh datapath with the fuzz services, and the model of it.
    pub fn new() -> Self {
        crate::netns::require_root();
        let mut dp = Datapath::new(&crate::netns::unique_tag(), crate::datapath::MAGLEV_SIZE);
        dp.program(&services(true, false));
        // Timeouts never run out during a run (the model's time stands still).
        dp.set_config(|c| {
            c.ct_tcp_syn = 100_000;
            c.ct_tcp_fin = 100_000;
            c.ct_tcp_closed = 100_000;
            c.ct_udp = 100_000;
        });
        let cfg: Config = dp.config;
        let mut model = Model::new(cfg, uplink_mac_of(), NEXT_HOP_MAC);
        model.load_services(&dp.maps);
        Self {
            dp,
            model,
            third: true,
            draining: false,
            outputs: Vec::new(),
            skipped: 0,
            last: None,
        }
    }

    fn control(&mut self, c: Change) {
        match c {
            Change::ToggleBackend => self.third = !self.third,
            Change::ToggleDraining => self.draining = !self.draining,
        }
        self.dp.program(&services(self.third, self.draining));
        self.model.load_services(&self.dp.maps);
    }

    /// Materializes an action's packet (None: nothing to send, e.g. a reply to a drop).
    fn packet(&self, a: &Action) -> Option<(At, Vec<u8>)> {
        let out = |to: usize| self.outputs.get(to).cloned().flatten();
        match a {
            Action::Send { at, bytes } => Some((*at, bytes.clone())),
            Action::Reply {
                at,
                to,
                flags,
                seq,
                len,
            } => Some((*at, answer(&out(*to)?, *flags, *seq, *len)?)),
            Action::Icmp {
                at,
                to,
                from_dst,
                code,
            } => {
                let o = out(*to)?;
                if o.len() < 42 || o[12..14] != [0x08, 0x00] || o[14] != 0x45 {
                    return None;
                }
                let (s, _, d, _) = packet::parse_addrs(&o);
                let from = if *from_dst {
                    d
                } else {
                    Ipv4Addr::new(10, 244, 9, 1)
                };
                Some((*at, packet::icmp_error(from, s, 3, *code, &o)))
            }
            Action::Resend { at, to, flags } => Some((*at, resend(&out(*to)?, *flags)?)),
            Action::Control(_) => None,
        }
    }

    /// Runs one action through both; the first difference is the error.
    pub fn step(&mut self, a: &Action) -> Result<(), String> {
        use crate::model::code;
        self.last = None;
        if let Action::Control(c) = a {
            self.control(*c);
            self.outputs.push(None);
            return Ok(());
        }
        let Some((at, pkt)) = self.packet(a) else {
            self.outputs.push(None);
            return Ok(());
        };
        let (out, dropped) = match at {
            At::Pod => {
                let (c, o) = self.compare(Hook::Pod, &pkt)?;
                (o, c == code::TC_DROP)
            }
            At::Uplink => {
                let (c, o) = self.compare(Hook::Xdp, &pkt)?;
                if c == code::XDP_PASS && o == pkt {
                    let (c, o) = self.compare(Hook::Host, &pkt)?;
                    (o, c == code::TC_DROP)
                } else {
                    (o, c == code::XDP_DROP)
                }
            }
        };
        self.last = Some(Last {
            rewritten: out != pkt,
            dropped,
        });
        self.outputs.push(Some(out));
        Ok(())
    }

    /// One packet at one hook through both: (code, output) of the datapath.
    fn compare(&mut self, hook: Hook, pkt: &[u8]) -> Result<(i64, Vec<u8>), String> {
        if hook != Hook::Xdp && !test_run_builds_skb(pkt) {
            // Not a datapath question: the kernel's test run refuses to build this skb (the
            // XDP run of it was compared).
            self.skipped += 1;
            return Ok((crate::model::code::TC_PASS, pkt.to_vec()));
        }
        let (code, real) = match hook {
            Hook::Xdp => {
                let (c, o) = self.dp.xdp(pkt);
                (i64::from(c), o)
            }
            Hook::Pod => {
                let (c, o) = self.dp.tc(prog_names::POD_INGRESS, pkt);
                (i64::from(c), o)
            }
            Hook::Host => {
                let (c, o) = self.dp.tc(prog_names::HOST_INGRESS, pkt);
                (i64::from(c), o)
            }
        };
        let want = self.model.run(hook, pkt, &Observed { packet: &real })?;
        let show = |p: &[u8]| {
            p.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join("")
        };
        if want.code != code || normalized(&want.packet) != normalized(&real) {
            return Err(format!(
                "{hook:?}: datapath {code} {}\n  model  {} {}\n  input  {}",
                show(&real),
                want.code,
                show(&want.packet),
                show(pkt)
            ));
        }
        if checksums_ok(pkt) == Some(true) && checksums_ok(&real) == Some(false) {
            return Err(format!("{hook:?}: checksums broken: {}", show(&real)));
        }
        Ok((code, real))
    }

    /// Conntrack of both sides, entry by entry.
    pub fn compare_conntrack(&self) -> Result<usize, String> {
        let real: std::collections::BTreeMap<_, _> = self
            .dp
            .maps
            .conntrack_tables()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(k, v, c)| (k, (Entry::of(&v), c)))
            .collect();
        if real == self.model.ct {
            return Ok(real.len());
        }
        let mut diff = Vec::new();
        for (k, v) in &real {
            if self.model.ct.get(k) != Some(v) {
                diff.push(format!(
                    "  datapath {k:?} {v:?}\n     model {:?}",
                    self.model.ct.get(k)
                ));
            }
        }
        for (k, v) in &self.model.ct {
            if !real.contains_key(k) {
                diff.push(format!("  only in the model {k:?} {v:?}"));
            }
        }
        Err(format!("conntrack differs:\n{}", diff.join("\n")))
    }
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

/// The fixture uplink's MAC (XDP_TX writes it as the source), from the kernel through `ip`
/// (the calling thread is in the fixture namespace; its sysfs view may be another's).
fn uplink_mac_of() -> [u8; 6] {
    let out = crate::netns::sh(&["ip", "-o", "link", "show", UPLINK]);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default();
    let mut m = [0u8; 6];
    for (i, b) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).unwrap_or(0);
    }
    m
}

/// What a run went through: the evidence that it exercised the datapath.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Packets compared (a packet through XDP then tc counts once).
    pub packets: usize,
    /// Compared packets the datapath rewrote (translated, or answered with an ICMP error).
    pub rewritten: usize,
    /// Compared packets dropped.
    pub dropped: usize,
    /// Control-plane changes.
    pub changes: usize,
    /// Most conntrack entries at a comparison of the tables.
    pub max_entries: usize,
    /// tc runs the kernel's test run could not build (compared at XDP only).
    pub skipped: usize,
}

impl Stats {
    /// Adds another run's figures.
    pub fn add(&mut self, o: &Stats) {
        self.packets += o.packets;
        self.rewritten += o.rewritten;
        self.dropped += o.dropped;
        self.changes += o.changes;
        self.max_entries = self.max_entries.max(o.max_entries);
        self.skipped += o.skipped;
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets ({} rewritten, {} dropped), {} control-plane changes, up to {} conntrack entries, {} tc runs not buildable",
            self.packets,
            self.rewritten,
            self.dropped,
            self.changes,
            self.max_entries,
            self.skipped
        )
    }
}

/// Runs a case; every `check` steps (and at the end) the conntrack tables are compared too.
pub fn run(case: &[Action], check: usize) -> Result<Stats, Divergence> {
    let mut bed = Bed::new();
    let mut stats = Stats::default();
    for (i, a) in case.iter().enumerate() {
        let r = bed.step(a).and_then(|()| {
            if (i + 1) % check == 0 || i + 1 == case.len() {
                let n = bed.compare_conntrack()?;
                stats.max_entries = stats.max_entries.max(n);
            }
            Ok(())
        });
        if let Err(what) = r {
            return Err(Divergence {
                step: i,
                what,
                case: case[..=i].to_vec(),
            });
        }
        match bed.last {
            Some(Last { rewritten, dropped }) => {
                stats.packets += 1;
                stats.rewritten += usize::from(rewritten);
                stats.dropped += usize::from(dropped);
            }
            None if matches!(a, Action::Control(_)) => stats.changes += 1,
            None => {}
        }
    }
    stats.skipped = bed.skipped;
    Ok(stats)
}

/// The corpus directory (cases that once diverged, replayed by the tests).
pub fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// Reads every case of the corpus: (file name, case).
pub fn corpus() -> Vec<(String, Vec<Action>)> {
    let Ok(rd) = std::fs::read_dir(corpus_dir()) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<Action>)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).expect("corpus file");
            let case = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            (e.file_name().to_string_lossy().into_owned(), case)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Saves a diverging case into the corpus; returns its path.
pub fn save(name: &str, case: &[Action]) -> std::path::PathBuf {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string(case).expect("json")).expect("write case");
    path
}
