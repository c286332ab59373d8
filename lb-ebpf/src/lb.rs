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

use core::ptr::NonNull;

use aya_ebpf::Global;
use lb_common::{
    Config, CtValue, FragKey, FragPorts, Ipv4, ServiceValue, backend_flags, capacity, counter,
    ct_dir, ct_flags, ct_state, drop_reason, event_kind, hook, kind, proto, selection, stage,
    svc_flags,
};

use crate::{
    conntrack::{self, CreateError, Peer},
    ctx::Packet,
    icmp, lookup,
    maps::{
        CONNTRACK, CT_NEW, FRAGS, SCRATCH, Scratch, Staged, config, mark_nat,
        may_be_tracked_backend,
    },
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
        Ok(Parsed::Icmp(h)) => {
            let head = *h;
            return to_stage(pkt, stage::ICMP, |s| s.icmp = head);
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
        return to_stage(pkt, stage::FRONT, |s| s.flow = flow);
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

/// Whether `addr` is in a service CIDR (a packet to it that reached here has no frontend).
#[inline(always)]
fn in_service_cidr(addr: [u8; 4]) -> bool {
    let n = SERVICE_CIDR_COUNT.load() as usize;
    // The guard off (the common case): no more than this one read per packet.
    if n == 0 {
        return false;
    }
    let cidrs = SERVICE_CIDRS.load();
    let a = u32::from_ne_bytes(addr);
    let mut i = 0;
    while i < capacity::SERVICE_CIDR_SLOTS {
        if i < n && a & cidrs[i][1] == cidrs[i][0] {
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
fn to_backend_stage<P: Packet + Staged>(pkt: &mut P, flow: &Flow) -> Verdict {
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
    to_stage(pkt, stage::BACK, |s| {
        s.flow = flow;
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
pub fn front_stage<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    let (Some(s), Some(cfg)) = (scratch(), config()) else {
        return Verdict::Pass;
    };
    let flow = s.flow;
    let Some((svc, scope)) = lookup::frontend(flow.daddr, flow.dport, flow.proto, P::HOOK) else {
        return to_backend_stage(pkt, &flow);
    };
    stats::trace(|t| {
        t.scope = scope;
        t.svc_id = svc.svc_id;
    });
    let v = to_frontend(pkt, &flow, &svc, cfg, conntrack::now_secs());
    if conntrack::confirm_asked() {
        conntrack::confirm(&conntrack::key(&flow, ct_dir::FORWARD));
    }
    after_stage(pkt, v)
}

/// Stage `BACK`: a SYN reusing a tracked flow's tuple (`reuse`) retires it; a reply of a
/// tracked flow (`reply`) is translated back.
#[inline(always)]
pub fn back_stage<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    let (Some(s), Some(cfg)) = (scratch(), config()) else {
        return Verdict::Pass;
    };
    let (flow, reply, reuse) = (s.flow, s.reply != 0, s.reuse != 0);
    let now = conntrack::now_secs();
    if reuse {
        retire_reused_tuple(&flow, now);
    }
    if reply && let Some(v) = translate_reply(pkt, &flow, cfg, now) {
        return after_stage(pkt, v);
    }
    stats::count(counter::NOT_SERVICE);
    Verdict::Pass
}

/// Stage `ICMP`: an ICMP message, translated if it is an error about a tracked flow.
#[inline(always)]
pub fn icmp_stage<P: Packet + Staged>(pkt: &mut P) -> Verdict {
    let Some(s) = scratch() else {
        return Verdict::Pass;
    };
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
fn after_stage<P: Packet + Staged>(pkt: &mut P, v: Verdict) -> Verdict {
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
fn fragment_ports(flow: &mut Flow) -> bool {
    let key = FragKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        id: flow.ip_id,
        proto: flow.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(p) = (unsafe { FRAGS.get(key) }).copied() else {
        return false;
    };
    flow.sport = p.sport;
    flow.dport = p.dport;
    true
}

/// Records a translated first fragment's ports for the datagram's later fragments.
#[inline(always)]
fn note_fragment(flow: &Flow) {
    if flow.frag == frag::NONE || !stats::live() {
        return;
    }
    if flow.frag == frag::FIRST {
        let key = FragKey {
            saddr: flow.saddr,
            daddr: flow.daddr,
            id: flow.ip_id,
            proto: flow.proto,
            _pad: 0,
        };
        let ports = FragPorts {
            sport: flow.sport,
            dport: flow.dport,
        };
        let _ = FRAGS.insert(key, ports, 0);
    }
    stats::count(counter::FRAG_XLATE);
}

/// Addresses a packet of `flow` has once `ct` is applied.
#[inline(always)]
fn translated(flow: &Flow, ct: &CtValue) -> (Ipv4, Ipv4) {
    let s = if ct.flags & ct_flags::XLATE_SRC != 0 {
        ct.nat_saddr
    } else {
        flow.saddr
    };
    let d = if ct.flags & ct_flags::XLATE_DST != 0 {
        ct.nat_daddr
    } else {
        flow.daddr
    };
    (s, d)
}

/// The packet's acknowledgment number when it is an RST (which `conntrack::refresh` checks).
#[inline(always)]
fn rst_ack<P: Packet + Staged>(pkt: &P, flow: &Flow) -> u32 {
    if flow.proto != proto::TCP || flow.tcp_flags & tcp_flags::RST == 0 {
        return 0;
    }
    pkt.load_be32(usize::from(flow.l4.off) + 8).unwrap_or(0)
}

/// A packet addressed to a frontend: follow its flow, or start one.
#[inline(always)]
fn to_frontend<P: Packet + Staged>(
    pkt: &mut P,
    flow: &Flow,
    svc: &ServiceValue,
    cfg: &Config,
    now: u32,
) -> Verdict {
    let fkey = conntrack::key(flow, ct_dir::FORWARD);
    let (found, confirmed) = match CONNTRACK.get_ptr_mut(fkey) {
        Some(p) => (Some(p), true),
        None => (CT_NEW.get_ptr_mut(fkey), false),
    };
    let mut stale = None;
    if let Some(ct) = found {
        let cur = conntrack::read_ct(ct);
        let usable = cur.expires >= now && !(flow.is_syn() && cur.state == ct_state::CLOSED);
        if usable
            && cur.svc_id == svc.svc_id
            && lookup::backend(cur.backend_id, cur.svc_id).is_some()
        {
            return established(pkt, flow, svc, ct, confirmed, &cur, cfg, now);
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
                retire_old_reply(&conntrack::reply_key_of(&cur, flow.proto), flow);
                let _ = CONNTRACK.remove(fkey);
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
    new_flow(pkt, flow, svc, cfg, now, stale)
}

/// Next packet of a tracked flow whose backend is still in the service.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the state of one packet, kept in registers"
)]
fn established<P: Packet + Staged>(
    pkt: &mut P,
    flow: &Flow,
    svc: &ServiceValue,
    ct: *mut CtValue,
    confirmed: bool,
    cur: &CtValue,
    cfg: &Config,
    now: u32,
) -> Verdict {
    let (s, d) = translated(flow, cur);
    let Some(out) = route::plan_cached(pkt, ct, s, d, flow.ip_len, now) else {
        return Verdict::Pass;
    };
    let out = match can_go(flow, out) {
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
        let key = lb_common::AffinityKey {
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
fn new_flow<P: Packet + Staged>(
    pkt: &mut P,
    flow: &Flow,
    svc: &ServiceValue,
    cfg: &Config,
    now: u32,
    stale: Option<NonNull<CtValue>>,
) -> Verdict {
    if !lookup::source_allowed(svc, flow) {
        return drop_flow(cfg, P::HOOK, flow, svc.svc_id, drop_reason::SOURCE_RANGE);
    }
    let sel = match lookup::select(svc, flow, cfg, now) {
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
    let be = sel.backend;
    let (state, _) =
        conntrack::next_state(flow.proto, 0, 0, flow.tcp_flags, ct_dir::FORWARD, false);
    let mut fwd = CtValue {
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
        fwd.nat_saddr = cfg.hairpin_addr;
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
            cfg.snat_addr
        };
        if snat == [0; 4] {
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
    let (s, d) = translated(flow, &fwd);
    // The previous flow of this tuple went the same way if it was translated alike.
    let known = stale.and_then(|prev| {
        // SAFETY: pointer into the map value, not yet rewritten.
        let prev = unsafe { prev.as_ref() };
        (translated(flow, prev) == (s, d))
            .then(|| route::cached_hop(prev, now, flow.ip_len, pkt.is_gso()))
    });
    let known = known.flatten();
    let (out, hop) = route::plan(pkt, s, d, flow.ip_len, known);
    let Some(out) = out else {
        return Verdict::Pass;
    };
    let out = match can_go(flow, out) {
        Ok(o) => o,
        Err(v) => return v,
    };
    route::store(&mut fwd, hop, now);
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
    let old_reply = match stale {
        // SAFETY: pointer into the map value.
        Some(prev) => conntrack::reply_key_of(unsafe { prev.as_ref() }, flow.proto),
        None => conntrack::NO_KEY,
    };
    if let Err(e) = conntrack::create(flow, &mut fwd, cfg, now, stale) {
        let reason = match e {
            CreateError::PortsExhausted => drop_reason::SNAT_EXHAUSTED,
            CreateError::Insert => drop_reason::CT_INSERT,
        };
        return drop_flow(cfg, P::HOOK, flow, svc.svc_id, reason);
    }
    if svc.affinity_timeout != 0 {
        let key = lb_common::AffinityKey {
            svc_id: svc.svc_id,
            client: flow.saddr,
        };
        lookup::touch_affinity(&key, sel.id, now);
    }
    if stale.is_some() && old_reply != conntrack::reply_key_of(&fwd, flow.proto) && stats::live() {
        retire_old_reply(&old_reply, flow);
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
    forward(pkt, flow, &fwd, out)
}

/// Removes the reply entry of the flow this tuple had before (from either table), if it is
/// still that flow's: its tuple may have been taken by another flow meanwhile (a SYN reusing
/// it, another client's SNAT port), whose entry must stay.
#[inline(always)]
fn retire_old_reply(old_reply: &lb_common::CtKey, flow: &Flow) {
    let fkey = conntrack::key(flow, ct_dir::FORWARD);
    // SAFETY: read in place.
    if let Some(rev) = unsafe { CONNTRACK.get(old_reply) }
        && conntrack::names(old_reply, rev, &fkey)
    {
        let _ = CONNTRACK.remove(old_reply);
    }
    // SAFETY: read in place.
    if let Some(rev) = unsafe { CT_NEW.get(old_reply) }
        && conntrack::names(old_reply, rev, &fkey)
    {
        let _ = CT_NEW.remove(old_reply);
    }
}

/// Whether a planned packet can go on as a router would forward it: one that cannot is
/// answered with an ICMP error instead (`process` sends it, untranslated); `process`
/// decrements the TTL of one that goes on. Asked right after planning, before any state is
/// written (and so that the paths after it carry no `TooBig`).
#[inline(always)]
fn can_go(flow: &Flow, out: Out) -> Result<Out, Verdict> {
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
fn deliver<P: Packet + Staged>(
    pkt: &mut P,
    flow: &Flow,
    ct: &CtValue,
    out: Out,
) -> Result<Out, Verdict> {
    if nat::apply(pkt, flow, ct).is_err() || (out.routed() && pkt.decrement_ttl().is_err()) {
        stats::drop_reason(drop_reason::XLATE_ERROR);
        return Err(Verdict::Drop);
    }
    note_fragment(flow);
    Ok(out)
}

/// Translates a client → frontend packet as its forward entry says, and sends it on.
#[inline(always)]
fn forward<P: Packet + Staged>(pkt: &mut P, flow: &Flow, ct: &CtValue, out: Out) -> Verdict {
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
fn retire_reused_tuple(flow: &Flow, now: u32) {
    if !stats::live() {
        return;
    }
    let rkey = conntrack::reversed_key(flow, ct_dir::REPLY);
    // SAFETY: read once.
    if let Some(c) = unsafe { CONNTRACK.get(rkey) }
        && (c.state == ct_state::CLOSED || c.expires < now)
    {
        let _ = CONNTRACK.remove(rkey);
    }
    // SAFETY: read once.
    if let Some(c) = unsafe { CT_NEW.get(rkey) }
        && (c.state == ct_state::CLOSED || c.expires < now)
    {
        let _ = CT_NEW.remove(rkey);
    }
}

/// A packet from a backend of a tracked flow (the caller checked that its source may be one):
/// restore what the client dialled. A flow's first reply confirms it (`conntrack::confirm`).
#[inline(always)]
fn translate_reply<P: Packet + Staged>(
    pkt: &mut P,
    flow: &Flow,
    cfg: &Config,
    now: u32,
) -> Option<Verdict> {
    let rkey = conntrack::key(flow, ct_dir::REPLY);
    let (ct, confirmed) = match CONNTRACK.get_ptr_mut(rkey) {
        Some(p) => (p, true),
        None => (CT_NEW.get_ptr_mut(rkey)?, false),
    };
    let cur = conntrack::read_ct(ct);
    if cur.expires < now {
        return None;
    }
    let (s, d) = translated(flow, &cur);
    let Some(out) = route::plan_cached(pkt, ct, s, d, flow.ip_len, now) else {
        return Some(Verdict::Pass);
    };
    let out = match can_go(flow, out) {
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
    let out = match deliver(pkt, flow, &cur, out) {
        Ok(o) => o,
        Err(v) => return Some(v),
    };
    stats::count(counter::XLATE_REV);
    stats::svc(cur.svc_id, SvcCounter::Rev, len);
    Some(finish(pkt, out))
}

/// Drops a packet for a service, counting and (if watched) reporting why.
#[inline(always)]
fn drop_flow(cfg: &Config, hook: u8, flow: &Flow, svc_id: u32, reason: u32) -> Verdict {
    stats::drop_reason(reason);
    stats::svc(svc_id, SvcCounter::Drop, 0);
    stats::trace(|t| t.drop_reason = reason);
    stats::event(cfg, hook, event_kind::DROP, flow, |ev| {
        ev.reason = reason;
        ev.svc_id = svc_id;
    });
    Verdict::Drop
}
