//! The per-packet pipeline shared by every hook: parse → frontend? (conntrack hit, or select a
//! backend and record the flow) → reply of a tracked flow? → pass. Each stage returns a
//! `Verdict` or hands on; every drop carries a reason that is counted.
//!
//! The entry program of a hook decides which stage a packet needs and tail-calls it
//! (`process`); the stages are programs of their own (`front_stage`, `back_stage`,
//! `icmp_stage`, `error_stage`).
//!
//! A translation is planned before anything is written: the route of the translated packet
//! is looked up first (`route::plan`), so XDP can leave a packet it cannot deliver itself
//! untouched, with no state changed, for tc to handle. Translated packets are forwarded as a
//! router would: the TTL is decremented, and a packet that cannot go on (TTL 1, too big with
//! DF set) gets an ICMP error instead (`icmp::send_error`, tc only).

use core::{mem::MaybeUninit, ptr::NonNull};

use aya_ebpf::Global;
use lb_common::{
    Address, Config, CtKey, CtValue, FragPorts, Ipv4, Ipv6, ServiceValue, backend_flags, capacity,
    counter, ct_dir, ct_flags, ct_state, drop_reason, event_kind, hook, kind, proto, selection,
    stage, svc_flags,
};

use crate::{
    conntrack::{self, CreateError, Peer},
    ctx::Packet,
    family::Family,
    icmp, lookup,
    maps::{SCRATCH, Scratch, Staged, config, mark_nat, may_be_tracked_backend},
    nat,
    parse::{self, Flow, Parsed, frag, tcp_flags},
    route::{self, Out},
    stats::{self, SvcCounter},
    verdict::{Verdict, count_skip, finish},
};

/// Runs the common part of the pipeline on one packet: the entry program of every hook.
///
/// The common packet (neither to a frontend, nor a backend's reply, nor a SYN that may reuse a
/// tracked tuple) is decided here from the parse and the filter words, in a short program:
/// what a connection's packets pay for most is code and data gone cold between them (measured
/// in `docs/performance.md`). The rest goes to a stage (`lb_common::stage`), its own program,
/// tail-called with the parsed flow in this CPU's scratch: the verifier checks each stage on
/// its own, so their paths add up instead of multiplying, and each has its own stack.
#[inline(always)]
pub fn process<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    stats::count(counter::PACKETS);
    let mut parsed = parse::parse(pkt);
    let flow = match &mut parsed {
        Ok(Parsed::Flow(flow)) => flow,
        Ok(Parsed::Flow6(flow)) => {
            if flow.frag == frag::LATER && !fragment_ports(flow) {
                count_skip(parse::Skip::Fragment);
                return Verdict::Pass;
            }
            let flow = *flow;
            return common(pkt, &flow);
        }
        Ok(Parsed::Icmp(h)) => {
            let head = *h;
            return to_stage(pkt, stage::ICMP, |s| {
                s.icmp = head;
                s.icmp_v6 = 0;
            });
        }
        // ICMPv6 errors are translated at tc (XDP leaves them to it).
        Ok(Parsed::Icmp6(_)) if P::DEFERS => return Verdict::Pass,
        Ok(Parsed::Icmp6(h)) => {
            let head = *h;
            return to_stage(pkt, stage::ICMP, |s| {
                s.icmp6 = head;
                s.icmp_v6 = 1;
            });
        }
        Err(skip) => {
            count_skip(*skip);
            return Verdict::Pass;
        }
    };
    if flow.frag == frag::LATER && !fragment_ports(flow) {
        count_skip(parse::Skip::Fragment);
        return Verdict::Pass;
    }
    let flow = *flow;
    common(pkt, &flow)
}

/// The common packet of either family: to a frontend's stage, the backend stage, or on.
#[inline(always)]
fn common<P: Packet + Staged, A: Family>(pkt: &mut P, flow: &Flow<A>) -> Verdict {
    stats::trace(|t| {
        t.parsed = 1;
        t.scope = 0xff;
    });
    if config().is_none() {
        return Verdict::Pass;
    }
    // XDP cannot answer a TTL that runs out: tc does, with the packet untouched.
    if P::DEFERS && flow.ttl <= 1 {
        return Verdict::Pass;
    }
    let flow = *flow;
    if lookup::may_be_frontend(flow.daddr, flow.dport, flow.proto) {
        return to_stage(pkt, A::FRONT, |s| *A::flow_mut(s) = flow);
    }
    to_backend_stage(pkt, &flow)
}

/// Hands the packet to `stage` with what `fill` puts in this CPU's scratch. Returns only if
/// the stage is missing (the packet passes, counted).
#[inline(always)]
fn to_stage<P: Packet + Staged>(
    pkt: &mut P,
    stage: u32,
    fill: impl FnOnce(&mut Scratch),
) -> Verdict {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Verdict::Pass;
    };
    // SAFETY: this CPU's slot; the stage reads it in the same softirq run.
    fill(unsafe { &mut *s });
    pkt.tail_call(stage);
    stats::count(counter::STAGE_MISSING);
    Verdict::Pass
}

/// Service CIDRs (`--service-cidrs`): each the network address then the mask, network order;
/// set at load.
#[unsafe(no_mangle)]
static SERVICE_CIDRS: Global<[[u32; 2]; capacity::SERVICE_CIDR_SLOTS]> =
    Global::new([[0; 2]; capacity::SERVICE_CIDR_SLOTS]);
/// How many of `SERVICE_CIDRS` are set (0: the guard is off).
#[unsafe(no_mangle)]
static SERVICE_CIDR_COUNT: Global<u32> = Global::new(0);
/// IPv6 service CIDRs: each the network address's 4 words then the mask's, as memory holds
/// them; set at load. One global per slot (the same bytes as one array): a packet copies one
/// slot at a time to its stack, not all four.
#[unsafe(no_mangle)]
static SERVICE_CIDRS6: [Global<[u32; 8]>; capacity::SERVICE_CIDR_SLOTS] =
    [const { Global::new([0; 8]) }; capacity::SERVICE_CIDR_SLOTS];
/// How many of `SERVICE_CIDRS6` are set.
#[unsafe(no_mangle)]
static SERVICE_CIDR6_COUNT: Global<u32> = Global::new(0);

/// Whether `addr` is in a service CIDR (a packet to it that reached here has no frontend).
#[inline(always)]
fn in_service_cidr<A: Address>(addr: A) -> bool {
    if A::FAMILY != 4 {
        return in_service_cidr6(&addr);
    }
    let n = SERVICE_CIDR_COUNT.load() as usize;
    // The guard off (the common case): no more than this one read per packet.
    if n == 0 {
        return false;
    }
    let cidrs = SERVICE_CIDRS.load();
    let a = addr.word(0);
    let mut i = 0;
    while i < capacity::SERVICE_CIDR_SLOTS {
        if i < n && a & cidrs[i][1] == cidrs[i][0] {
            return true;
        }
        i += 1;
    }
    false
}

/// `in_service_cidr` of an IPv6 address.
#[inline(always)]
fn in_service_cidr6<A: Address>(addr: &A) -> bool {
    let n = SERVICE_CIDR6_COUNT.load() as usize;
    if n == 0 {
        return false;
    }
    let mut i = 0;
    while i < capacity::SERVICE_CIDR_SLOTS {
        if i >= n {
            return false;
        }
        let c = SERVICE_CIDRS6[i].load();
        if addr.word(0) & c[4] == c[0]
            && addr.word(1) & c[5] == c[1]
            && addr.word(2) & c[6] == c[2]
            && addr.word(3) & c[7] == c[3]
        {
            return true;
        }
        i += 1;
    }
    false
}

/// A packet to no frontend: dropped if it is for an address in a service CIDR (no Service
/// owns it); else the backend stage if it may be a tracked flow's reply (from a backend's own
/// address and port) or a SYN reusing such a flow's tuple; else it passes.
#[inline(always)]
fn to_backend_stage<P: Packet + Staged, A: Family>(pkt: &mut P, flow: &Flow<A>) -> Verdict {
    if in_service_cidr(flow.daddr) {
        stats::drop_reason(drop_reason::UNOWNED_SERVICE_IP);
        return Verdict::Drop;
    }
    let reply = may_be_tracked_backend(flow.saddr, flow.sport);
    let reuse = flow.is_syn() && may_be_tracked_backend(flow.daddr, flow.dport);
    if !reply && !reuse {
        stats::count(counter::NOT_SERVICE);
        return Verdict::Pass;
    }
    let flow = *flow;
    to_stage(pkt, A::BACK, |s| {
        *A::flow_mut(s) = flow;
        s.reply = u8::from(reply);
        s.reuse = u8::from(reuse);
    })
}

/// The flow the entry program left in this CPU's scratch.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's slot, written by the entry program of this very packet.
    SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}

/// Stage `FRONT`: a packet the frontend filter let through. Follows its flow or starts one;
/// a packet to no frontend after all (the bit was another key's) goes on to `BACK`.
#[inline(always)]
pub fn front_stage<P: Packet + Staged, A: Family>(pkt: &mut P) -> Verdict {
    let (Some(s), Some(cfg)) = (scratch(), config()) else {
        return Verdict::Pass;
    };
    let copy;
    let flow: &Flow<A> = if A::FLOW_IN_SCRATCH {
        A::flow_mut(s)
    } else {
        copy = *A::flow_mut(s);
        &copy
    };
    let Some((svc, scope)) = lookup::frontend(flow.daddr, flow.dport, flow.proto, P::HOOK) else {
        return to_backend_stage(pkt, flow);
    };
    stats::trace(|t| {
        t.scope = scope;
        t.svc_id = svc.svc_id;
    });
    let v = to_frontend(pkt, flow, &svc, cfg, conntrack::now_secs());
    if conntrack::confirm_asked() {
        conntrack::confirm(&conntrack::key(flow, ct_dir::FORWARD));
    }
    after_stage::<P, A>(pkt, v)
}

/// Stage `BACK`: a SYN reusing a tracked flow's tuple (`reuse`) retires it; a reply of a
/// tracked flow (`reply`) is translated back.
#[inline(always)]
pub fn back_stage<P: Packet + Staged, A: Family>(pkt: &mut P) -> Verdict {
    let (Some(s), Some(cfg)) = (scratch(), config()) else {
        return Verdict::Pass;
    };
    let (reply, reuse) = (s.reply != 0, s.reuse != 0);
    let copy;
    let flow: &Flow<A> = if A::FLOW_IN_SCRATCH {
        A::flow_mut(s)
    } else {
        copy = *A::flow_mut(s);
        &copy
    };
    let now = conntrack::now_secs();
    if reuse {
        retire_reused_tuple(flow, now);
    }
    if reply && let Some(v) = translate_reply(pkt, flow, cfg, now) {
        return after_stage::<P, A>(pkt, v);
    }
    stats::count(counter::NOT_SERVICE);
    Verdict::Pass
}

/// `front_stage` of IPv4 packets.
#[inline(always)]
pub fn front4<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    front_stage::<P, Ipv4>(pkt)
}

/// `front_stage` of IPv6 packets.
#[inline(always)]
pub fn front6<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    front_stage::<P, Ipv6>(pkt)
}

/// `back_stage` of IPv4 packets.
#[inline(always)]
pub fn back4<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    back_stage::<P, Ipv4>(pkt)
}

/// `back_stage` of IPv6 packets.
#[inline(always)]
pub fn back6<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    back_stage::<P, Ipv6>(pkt)
}

/// Stage `ICMP`: an ICMP message, translated if it is an error about a tracked flow.
#[inline(always)]
pub fn icmp_stage<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    let Some(s) = scratch() else {
        return Verdict::Pass;
    };
    if s.icmp_v6 != 0 {
        // (Never at XDP, which leaves ICMPv6 to tc.)
        if P::DEFERS {
            return Verdict::Pass;
        }
        let mut head = s.icmp6;
        // Under 200 (see `parse::parse6`); the mask gives the verifier a bound back.
        head.off &= 0xff;
        return icmp::translate6(pkt, &head);
    }
    let mut head = s.icmp;
    // At most 14 + 60; the mask gives the verifier that bound back (lost in scratch).
    head.off &= 0xff;
    icmp::translate(pkt, &head)
}

/// Stage `ERROR`: the ICMP error a translation path asked for (its MTU in scratch).
#[inline(always)]
pub fn error_stage<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    let Some(s) = scratch() else {
        return Verdict::Drop;
    };
    let mtu = s.error_mtu;
    icmp::send_error(pkt, mtu)
}

/// What a translation stage's verdict becomes: an ICMP error goes to stage `ERROR` (the
/// packet untouched); a missing stage drops the packet, which cannot be forwarded.
#[inline(always)]
fn after_stage<P: Packet + Staged, A: Family>(pkt: &mut P, v: Verdict) -> Verdict {
    match v {
        Verdict::Error { mtu } => {
            to_stage(pkt, stage::ERROR, |s| s.error_mtu = mtu);
            Verdict::Drop
        }
        v => v,
    }
}

/// The ports of a later fragment, from its datagram's first fragment; false if unknown.
#[inline(always)]
fn fragment_ports<A: Family>(flow: &mut Flow<A>) -> bool {
    let key = A::frag_key(flow);
    // SAFETY: copied out at once.
    let Some(p) = (unsafe { A::frags().get(key) }).copied() else {
        return false;
    };
    flow.sport = p.sport;
    flow.dport = p.dport;
    true
}

/// Records a translated first fragment's ports for the datagram's later fragments.
#[inline(always)]
fn note_fragment<A: Family>(flow: &Flow<A>) {
    if flow.frag == frag::NONE || !stats::live() {
        return;
    }
    if flow.frag == frag::FIRST {
        let ports = FragPorts {
            sport: flow.sport,
            dport: flow.dport,
        };
        let _ = A::frags().insert(A::frag_key(flow), ports, 0);
    }
    stats::count(counter::FRAG_XLATE);
}

/// Addresses a packet of `flow` has once `ct` is applied (references: an IPv6 pair by value
/// takes four registers, and their spills the stack).
#[inline(always)]
fn translated<'a, A: Family>(flow: &'a Flow<A>, ct: &'a CtValue<A>) -> (&'a A, &'a A) {
    let s = if ct.flags & ct_flags::XLATE_SRC != 0 {
        &ct.nat_saddr
    } else {
        &flow.saddr
    };
    let d = if ct.flags & ct_flags::XLATE_DST != 0 {
        &ct.nat_daddr
    } else {
        &flow.daddr
    };
    (s, d)
}

/// A copy of the conntrack entry at `ct` to decide on: in `stack` for IPv4, in this CPU's
/// scratch for IPv6 (see `Family::FLOW_IN_SCRATCH`; that room is free until a new flow's
/// `conntrack::create`, which comes after the copy's last use).
#[inline(always)]
fn working_copy<A: Family>(
    ct: *const CtValue<A>,
    stack: &mut MaybeUninit<CtValue<A>>,
) -> Option<&CtValue<A>> {
    if A::FLOW_IN_SCRATCH {
        let slot = A::ct_mut(scratch()?);
        conntrack::copy_ct(slot, ct);
        return Some(slot);
    }
    conntrack::copy_ct(stack.as_mut_ptr(), ct);
    // SAFETY: every byte was written by `copy_ct`.
    Some(unsafe { stack.assume_init_ref() })
}

/// Room for a new flow's forward entry: `stack` for IPv4, this CPU's scratch for IPv6 (as
/// `working_copy`).
#[inline(always)]
fn new_entry<A: Family>(stack: &mut MaybeUninit<CtValue<A>>) -> Option<&mut CtValue<A>> {
    if A::FLOW_IN_SCRATCH {
        return Some(A::fwd_mut(scratch()?));
    }
    // SAFETY: the caller writes the whole entry before reading it.
    Some(unsafe { stack.assume_init_mut() })
}

/// The packet's acknowledgment number when it is an RST (which `conntrack::refresh` checks).
#[inline(always)]
fn rst_ack<P: Packet + Staged, A: Family>(pkt: &P, flow: &Flow<A>) -> u32 {
    if flow.proto != proto::TCP || flow.tcp_flags & tcp_flags::RST == 0 {
        return 0;
    }
    pkt.load_be32(usize::from(flow.l4.off) + 8).unwrap_or(0)
}

/// A packet addressed to a frontend: follow its flow, or start one.
#[inline(always)]
fn to_frontend<P: Packet + Staged, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    svc: &ServiceValue,
    cfg: &Config,
    now: u32,
) -> Verdict {
    let fkey = conntrack::key(flow, ct_dir::FORWARD);
    let (found, confirmed) = match A::ct().get_ptr_mut(fkey) {
        Some(p) => (Some(p), true),
        None => (A::ct_new().get_ptr_mut(fkey), false),
    };
    let mut stale = None;
    let mut copy = MaybeUninit::uninit();
    if let Some(ct) = found
        && let Some(cur) = working_copy(ct, &mut copy)
    {
        let usable = cur.expires >= now && !(flow.is_syn() && cur.state == ct_state::CLOSED);
        if usable
            && cur.svc_id == svc.svc_id
            && lookup::backend::<A>(cur.backend_id, cur.svc_id).is_some()
        {
            return established(pkt, flow, svc, ct, confirmed, cur, cfg, now);
        }
        if usable && P::DEFERS {
            // Re-selection rewrites state: leave it to tc, which sees this packet next.
            return Verdict::Pass;
        }
        if usable {
            // The flow's backend left the service (or the frontend moved): pick again now.
            stats::count(counter::CT_RESELECT);
        }
        if confirmed {
            // A new flow starts unanswered: the confirmed one's entries go (its reply entry
            // only if still its own).
            if stats::live() {
                retire_old_reply(&conntrack::reply_key_of(cur, flow.proto), flow);
                let _ = A::ct().remove(fkey);
            }
        } else {
            // The unanswered entry the new flow replaces (closed, expired, or its backend
            // left): rewritten in place rather than re-inserted, so a client reusing a source
            // port costs no conntrack allocation.
            stale = NonNull::new(ct);
        }
    } else if flow.proto == proto::TCP && flow.tcp_flags & tcp_flags::SYN == 0 {
        // Mid-stream, but no state: it was evicted (or predates the datapath).
        stats::count(counter::CT_MISSING);
    }
    if A::FLOW_IN_SCRATCH {
        // IPv6: a stage of its own (it re-reads the flow's unanswered entry, `stale`).
        let svc = *svc;
        return to_stage(pkt, stage::NEW6, |s| s.svc = svc);
    }
    new_flow(pkt, flow, svc, cfg, now, stale)
}

/// Stage `NEW6`: an IPv6 packet that starts a flow (`front_stage` found its frontend, in
/// scratch, and retired the flow's confirmed entries).
#[inline(always)]
pub fn new6<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    let (Some(s), Some(cfg)) = (scratch(), config()) else {
        return Verdict::Pass;
    };
    let s: &Scratch = s;
    let flow: &Flow<Ipv6> = &s.flow6;
    let fkey = conntrack::key(flow, ct_dir::FORWARD);
    let stale = <Ipv6 as Family>::ct_new()
        .get_ptr_mut(fkey)
        .and_then(NonNull::new);
    let v = new_flow(pkt, flow, &s.svc, cfg, conntrack::now_secs(), stale);
    after_stage::<P, Ipv6>(pkt, v)
}

/// Next packet of a tracked flow whose backend is still in the service.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the state of one packet, kept in registers"
)]
fn established<P: Packet + Staged, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    svc: &ServiceValue,
    ct: *mut CtValue<A>,
    confirmed: bool,
    cur: &CtValue<A>,
    cfg: &Config,
    now: u32,
) -> Verdict {
    let (s, d) = translated(flow, cur);
    let Some(out) = route::plan_cached::<P, A>(pkt, ct, s, d, flow.ip_len, now) else {
        return Verdict::Pass;
    };
    let out = match can_go::<A>(flow, out) {
        Ok(o) => o,
        Err(v) => return v,
    };
    stats::count(counter::CT_HIT);
    if stats::live() {
        // Keeps the backend's replies looked up (the agent may have zeroed its slot while the
        // backend was briefly out of the service).
        mark_nat(cur.nat_daddr, cur.nat_dport);
    }
    stats::trace(|t| {
        t.selection = selection::CONNTRACK;
        t.backend_id = cur.backend_id;
        t.ct_flags = cur.flags;
    });
    let what = conntrack::refresh(ct, flow, cfg, now, ct_dir::FORWARD, rst_ack(pkt, flow));
    if what != Peer::Keep {
        // SAFETY: pointer into the map value (read in place, no copy on this frame).
        let after = unsafe { &*ct };
        let peer = conntrack::reply_key_of(after, flow.proto);
        let own = conntrack::key(flow, ct_dir::FORWARD);
        conntrack::touch_peer(confirmed, &own, &peer, what, after);
    }
    if !confirmed && cur.flags & ct_flags::SEEN_REPLY != 0 && cur.state != ct_state::CLOSED {
        // The client speaks again after a reply: the flow is real (`process` moves it).
        conntrack::ask_confirm();
    }
    if svc.affinity_timeout != 0 {
        let key = lb_common::AffinityKey::<A> {
            svc_id: svc.svc_id,
            client: flow.saddr,
        };
        lookup::touch_affinity(&key, cur.backend_id, now);
    }
    forward(pkt, flow, cur, out)
}

/// First packet of a flow (or one whose backend left): select, record (in `CT_NEW`; `stale`
/// is the tuple's entry there), translate.
#[inline(always)]
fn new_flow<P: Packet + Staged, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    svc: &ServiceValue,
    cfg: &Config,
    now: u32,
    stale: Option<NonNull<CtValue<A>>>,
) -> Verdict {
    if !lookup::source_allowed(svc, flow) {
        return drop_flow(cfg, P::HOOK, flow, svc.svc_id, drop_reason::SOURCE_RANGE);
    }
    let sel = match lookup::select::<A>(svc, flow, cfg, now) {
        Ok(sel) => sel,
        // A Service without endpoints is rejected, as kube-proxy does: the client fails at once
        // (ICMP port unreachable, which TCP reports as a refused connect) instead of timing
        // out. XDP leaves the packet to tc, which counts it and sends the error.
        Err(drop_reason::NO_BACKEND) if P::DEFERS => return Verdict::Pass,
        Err(drop_reason::NO_BACKEND) => {
            let _ = drop_flow(cfg, P::HOOK, flow, svc.svc_id, drop_reason::NO_BACKEND);
            return Verdict::Error {
                mtu: icmp::PORT_UNREACHABLE,
            };
        }
        Err(reason) => return drop_flow(cfg, P::HOOK, flow, svc.svc_id, reason),
    };
    let be = &sel.backend;
    let (state, _) =
        conntrack::next_state(flow.proto, 0, 0, flow.tcp_flags, ct_dir::FORWARD, false);
    let mut stack_fwd = MaybeUninit::uninit();
    let Some(fwd) = new_entry(&mut stack_fwd) else {
        return Verdict::Pass;
    };
    *fwd = CtValue {
        svc_id: svc.svc_id,
        backend_id: sel.id,
        created: now,
        expires: now.wrapping_add(conntrack::timeout(cfg, flow.proto, state)),
        nat_saddr: flow.saddr,
        nat_daddr: be.addr,
        nat_sport: flow.sport,
        nat_dport: be.port,
        state,
        flags: ct_flags::XLATE_DST,
        hook: P::HOOK,
        route_flags: 0,
        route_ifindex: 0,
        route_at: 0,
        route_macs: [0; 12],
        seq_end: flow.seq_end,
        route_mtu: 0,
        _pad: 0,
    };
    if be.addr == flow.saddr {
        // Hairpin: the client is its own backend; a packet from its own address would be a
        // martian, so the source becomes the hairpin address and replies come back through us.
        fwd.flags |= ct_flags::XLATE_SRC | ct_flags::HAIRPIN;
        fwd.nat_saddr = A::hairpin_addr(cfg);
    } else if P::HOOK != hook::POD
        && svc.flags & svc_flags::EXT_LOCAL == 0
        && be.flags & backend_flags::LOCAL == 0
    {
        // From outside to an endpoint on another node (externalTrafficPolicy: Cluster): the
        // reply must come back through this node, so the source becomes a node address (the
        // NodePort address itself, else the agent's SNAT address) and a port of the range
        // (SCTP keeps its port: its checksum covers the ports).
        let snat = if svc.kind == kind::NODE_PORT {
            flow.daddr
        } else {
            A::snat_addr(cfg)
        };
        if snat == A::ZERO {
            return drop_flow(cfg, P::HOOK, flow, svc.svc_id, drop_reason::NO_SNAT_ADDRESS);
        }
        fwd.flags |= ct_flags::XLATE_SRC | ct_flags::SNAT;
        fwd.nat_saddr = snat;
    }
    if flow.proto == proto::SCTP && be.port != flow.dport {
        return drop_flow(
            cfg,
            P::HOOK,
            flow,
            svc.svc_id,
            drop_reason::SCTP_PORT_REWRITE,
        );
    }
    let (s, d) = translated(flow, fwd);
    // The previous flow of this tuple went the same way if it was translated alike.
    let known = stale.and_then(|prev| {
        // SAFETY: pointer into the map value, not yet rewritten.
        let prev = unsafe { prev.as_ref() };
        (translated(flow, prev) == (s, d))
            .then(|| route::cached_hop(prev, now, flow.ip_len, pkt.is_gso()))
    });
    let known = known.flatten();
    let (out, hop) = route::plan::<P, A>(pkt, s, d, flow.ip_len, known);
    let Some(out) = out else {
        return Verdict::Pass;
    };
    let out = match can_go::<A>(flow, out) {
        Ok(o) => o,
        Err(v) => return v,
    };
    route::store(fwd, hop, now);
    stats::trace(|t| {
        t.selection = sel.how;
        t.backend_id = sel.id;
        t.slot = sel.slot;
        t.hash = sel.hash;
        t.ct_flags = fwd.flags;
    });
    // Read before `create` rewrites the entry. A zero key, not `None`, when there is no entry:
    // LLVM would spill the key's registers on both paths, and the verifier rejects a spill of
    // registers that no instruction set.
    let mut room = MaybeUninit::uninit();
    let Some(old_reply) = conntrack::key_room(&mut room, 1) else {
        return Verdict::Pass;
    };
    *old_reply = match stale {
        // SAFETY: pointer into the map value.
        Some(prev) => conntrack::reply_key_of(unsafe { prev.as_ref() }, flow.proto),
        None => conntrack::no_key(),
    };
    if let Err(e) = conntrack::create(flow, fwd, cfg, now, stale) {
        let reason = match e {
            CreateError::PortsExhausted => drop_reason::SNAT_EXHAUSTED,
            CreateError::Insert => drop_reason::CT_INSERT,
        };
        return drop_flow(cfg, P::HOOK, flow, svc.svc_id, reason);
    }
    if svc.affinity_timeout != 0 {
        let key = lb_common::AffinityKey::<A> {
            svc_id: svc.svc_id,
            client: flow.saddr,
        };
        lookup::touch_affinity(&key, sel.id, now);
    }
    if stale.is_some() && !conntrack::is_reply_key_of(old_reply, fwd, flow.proto) && stats::live() {
        retire_old_reply(old_reply, flow);
    }
    stats::count(counter::CT_NEW);
    if fwd.flags & ct_flags::HAIRPIN != 0 {
        stats::count(counter::HAIRPIN);
    }
    if fwd.flags & ct_flags::SNAT != 0 {
        stats::count(counter::SNAT);
    }
    if sel.how == selection::AFFINITY {
        stats::count(counter::AFFINITY_HIT);
    }
    stats::svc(svc.svc_id, SvcCounter::NewFlow, 0);
    stats::event(cfg, P::HOOK, event_kind::NEW_FLOW, flow, |ev| {
        ev.selection = sel.how;
        ev.svc_id = svc.svc_id;
        ev.backend_id = sel.id;
        ev.backend_addr = be.addr;
        ev.backend_port = be.port;
    });
    forward(pkt, flow, fwd, out)
}

/// Removes the reply entry of the flow this tuple had before (from either table), if it is
/// still that flow's: its tuple may have been taken by another flow meanwhile (a SYN reusing
/// it, another client's SNAT port), whose entry must stay.
#[inline(always)]
fn retire_old_reply<A: Family>(old_reply: &CtKey<A>, flow: &Flow<A>) {
    let fkey = conntrack::key(flow, ct_dir::FORWARD);
    // SAFETY: read in place.
    if let Some(rev) = unsafe { A::ct().get(old_reply) }
        && conntrack::names(old_reply, rev, &fkey)
    {
        let _ = A::ct().remove(old_reply);
    }
    // SAFETY: read in place.
    if let Some(rev) = unsafe { A::ct_new().get(old_reply) }
        && conntrack::names(old_reply, rev, &fkey)
    {
        let _ = A::ct_new().remove(old_reply);
    }
}

/// Whether a planned packet can go on as a router would forward it: one that cannot is
/// answered with an ICMP error instead (`process` sends it, untranslated); `process`
/// decrements the TTL of one that goes on. Asked right after planning, before any state is
/// written (and so that the paths after it carry no `TooBig`).
#[inline(always)]
fn can_go<A: Family>(flow: &Flow<A>, out: Out) -> Result<Out, Verdict> {
    if out.how == route::how::TOO_BIG {
        // Without DF the stack fragments it (`finish` passes it to the stack).
        if !flow.df {
            return Ok(out);
        }
        return Err(Verdict::Error {
            mtu: route::too_big_mtu(),
        });
    }
    if out.routed() && flow.ttl <= 1 {
        return Err(Verdict::Error { mtu: 0 });
    }
    Ok(out)
}

/// Translates a packet about to be forwarded (`can_go` passed it), decrementing the TTL of
/// one routed on as a router does (a routing loop through the balancer dies out).
#[inline(always)]
fn deliver<P: Packet + Staged, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    ct: &CtValue<A>,
    out: Out,
) -> Result<Out, Verdict> {
    if nat::apply(pkt, flow, ct).is_err() || (out.routed() && A::decrement_ttl(pkt).is_err()) {
        stats::drop_reason(drop_reason::XLATE_ERROR);
        return Err(Verdict::Drop);
    }
    note_fragment(flow);
    Ok(out)
}

/// Translates a client → frontend packet as its forward entry says, and sends it on.
#[inline(always)]
fn forward<P: Packet + Staged, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    ct: &CtValue<A>,
    out: Out,
) -> Verdict {
    let len = pkt.len();
    let out = match deliver(pkt, flow, ct, out) {
        Ok(o) => o,
        Err(v) => return v,
    };
    stats::count(counter::XLATE_FWD);
    stats::svc(ct.svc_id, SvcCounter::Fwd, len);
    finish(pkt, out)
}

/// An untranslated SYN (a connect translated at the socket, or straight to a pod) whose tuple,
/// seen from the backend, is the reply tuple of an earlier translated flow: if that flow is
/// closed or expired (the rule a frontend's entry follows in `to_frontend`), its source port
/// was reused and its reply entry goes, or the new connection's SYN/ACK would be rewritten to
/// the old frontend's address and be refused by the client. The old forward entry stays, closed:
/// a late packet of the old flow is still forwarded by it instead of starting a flow that would
/// take the reply tuple back. A flow not closed keeps its entries (the two connections are then
/// indistinguishable at the backend; the live one wins). The caller checked that the backend
/// may have translated flows.
#[inline(always)]
fn retire_reused_tuple<A: Family>(flow: &Flow<A>, now: u32) {
    if !stats::live() {
        return;
    }
    let rkey = conntrack::reversed_key(flow, ct_dir::REPLY);
    // SAFETY: read once.
    if let Some(c) = unsafe { A::ct().get(rkey) }
        && (c.state == ct_state::CLOSED || c.expires < now)
    {
        let _ = A::ct().remove(rkey);
    }
    // SAFETY: read once.
    if let Some(c) = unsafe { A::ct_new().get(rkey) }
        && (c.state == ct_state::CLOSED || c.expires < now)
    {
        let _ = A::ct_new().remove(rkey);
    }
}

/// A packet from a backend of a tracked flow (the caller checked that its source may be one):
/// restore what the client dialled. A flow's first reply confirms it (`conntrack::confirm`).
#[inline(always)]
fn translate_reply<P: Packet + Staged, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    cfg: &Config,
    now: u32,
) -> Option<Verdict> {
    let rkey = conntrack::key(flow, ct_dir::REPLY);
    let (ct, confirmed) = match A::ct().get_ptr_mut(rkey) {
        Some(p) => (p, true),
        None => (A::ct_new().get_ptr_mut(rkey)?, false),
    };
    let mut copy = MaybeUninit::uninit();
    let cur = working_copy(ct, &mut copy)?;
    if cur.expires < now {
        return None;
    }
    let (s, d) = translated(flow, cur);
    let Some(out) = route::plan_cached::<P, A>(pkt, ct, s, d, flow.ip_len, now) else {
        return Some(Verdict::Pass);
    };
    let out = match can_go::<A>(flow, out) {
        Ok(o) => o,
        Err(v) => return Some(v),
    };
    stats::trace(|t| {
        t.reply = 1;
        t.svc_id = cur.svc_id;
        t.backend_id = cur.backend_id;
        t.ct_flags = cur.flags;
    });
    let what = conntrack::refresh(ct, flow, cfg, now, ct_dir::REPLY, rst_ack(pkt, flow));
    // SAFETY: pointer into the map value (read in place, no copy on this frame).
    let after = unsafe { &*ct };
    if what != Peer::Keep {
        let peer = conntrack::forward_key_of(&rkey, after);
        conntrack::touch_peer(confirmed, &rkey, &peer, what, after);
    }
    if !confirmed && flow.tcp_flags & tcp_flags::RST == 0 {
        conntrack::saw_reply(&rkey, after);
    }
    let len = pkt.len();
    let out = match deliver(pkt, flow, cur, out) {
        Ok(o) => o,
        Err(v) => return Some(v),
    };
    stats::count(counter::XLATE_REV);
    stats::svc(cur.svc_id, SvcCounter::Rev, len);
    Some(finish(pkt, out))
}

/// Drops a packet for a service, counting and (if watched) reporting why.
#[inline(always)]
fn drop_flow<A: Family>(
    cfg: &Config,
    hook: u8,
    flow: &Flow<A>,
    svc_id: u32,
    reason: u32,
) -> Verdict {
    stats::drop_reason(reason);
    stats::svc(svc_id, SvcCounter::Drop, 0);
    stats::trace(|t| t.drop_reason = reason);
    stats::event(cfg, hook, event_kind::DROP, flow, |ev| {
        ev.reason = reason;
        ev.svc_id = svc_id;
    });
    Verdict::Drop
}
