//! The per-packet pipeline shared by every hook: parse → frontend? (conntrack hit, or select a
//! backend and record the flow) → reply of a tracked flow? → pass. Each stage returns a
//! `Verdict` or hands on; every drop carries a reason that is counted.
//!
//! A translation is planned before anything is written: the route of the translated packet
//! is looked up first (`route::plan`), so XDP can leave a packet it cannot deliver itself
//! untouched, with no state changed, for tc to handle.

use core::ptr::NonNull;

use lb_common::{
    Config, CtValue, Ipv4, ServiceValue, backend_flags, counter, ct_dir, ct_flags, ct_state,
    drop_reason, event_kind, hook, kind, proto, selection, svc_flags,
};

use crate::{
    conntrack::{self, CreateError},
    ctx::Packet,
    icmp, lookup,
    maps::{CONNTRACK, config, mark_nat, may_be_tracked_backend},
    nat,
    parse::{self, Flow, Parsed, Skip},
    route::{self, Out},
    stats::{self, SvcCounter},
};

/// What the hook should do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet to the stack (or the next program) as it is now.
    Pass,
    /// Drop it; the reason was counted.
    Drop,
    /// tc: send it out of this device through `bpf_redirect_neigh`.
    Redirect(u32),
    /// XDP: transmit it back out of the device it came in on.
    Tx,
}

impl Verdict {
    /// As one scalar, for a BPF subprogram's return: BPF returns a register, never an
    /// aggregate (LLVM rejects a verdict returned through memory).
    #[inline(always)]
    pub fn to_raw(self) -> u64 {
        match self {
            Verdict::Pass => 0,
            Verdict::Drop => 1,
            Verdict::Tx => 2,
            Verdict::Redirect(ifindex) => 3 | u64::from(ifindex) << 32,
        }
    }

    /// The verdict `to_raw` encoded.
    #[inline(always)]
    pub fn from_raw(raw: u64) -> Self {
        match raw as u32 {
            0 => Verdict::Pass,
            1 => Verdict::Drop,
            2 => Verdict::Tx,
            _ => Verdict::Redirect((raw >> 32) as u32),
        }
    }
}

/// Runs the whole pipeline on one packet.
///
/// The common packet (neither to a frontend, nor a backend's reply, nor a SYN that may reuse a
/// tracked tuple) is decided here from the parse and the filter words; the rest goes to the
/// BPF subprograms `frontend`, `backend` and `icmp::translate`. Out of line, they leave this a
/// short program, which is what a connection's packets pay for most (its code and data go
/// cold between them; measured in `docs/performance.md`). The verifier bounds the stack
/// frames of a call chain together (512 bytes): this frame holds little more than the parsed
/// flow, and the largest temporaries of a new flow live in `maps::SCRATCH`.
#[inline(always)]
pub fn process<P: Packet>(pkt: &mut P) -> Verdict {
    stats::count(counter::PACKETS);
    // Borrowed where the parser put it, not copied out (one copy on this frame).
    let parsed = parse::parse(pkt);
    let flow = match &parsed {
        Ok(Parsed::Flow(flow)) => flow,
        Ok(Parsed::Icmp(h)) => {
            let raw = icmp::translate(pkt, h.saddr, h.daddr, h.off as u32, u32::from(h.ip_len));
            return Verdict::from_raw(raw);
        }
        Err(skip) => {
            count_skip(*skip);
            return Verdict::Pass;
        }
    };
    stats::trace(|t| {
        t.parsed = 1;
        t.scope = 0xff;
    });
    let Some(cfg) = config() else {
        return Verdict::Pass;
    };
    if lookup::may_be_frontend(flow.daddr, flow.dport, flow.proto) {
        let raw = frontend(pkt, flow, cfg);
        if raw != NO_FRONTEND {
            return Verdict::from_raw(raw);
        }
    }
    // Replies come from a backend's own address and port; a SYN to a backend may reuse the
    // reply tuple of one of its translated flows.
    let reply = may_be_tracked_backend(flow.saddr, flow.sport);
    let reuse = flow.is_syn() && may_be_tracked_backend(flow.daddr, flow.dport);
    if reply || reuse {
        return Verdict::from_raw(backend(pkt, flow, cfg, reply, reuse));
    }
    stats::count(counter::NOT_SERVICE);
    Verdict::Pass
}

/// Counts a packet the parser left alone, under why.
#[inline(always)]
pub fn count_skip(skip: Skip) {
    stats::count(match skip {
        Skip::NotIpv4 => counter::NOT_IPV4,
        Skip::Malformed => counter::MALFORMED,
        Skip::Fragment => counter::FRAGMENT,
        Skip::OtherProto => counter::NOT_SERVICE,
    });
}

/// `frontend`'s answer when the packet is to no frontend (the filter bit was another key's).
const NO_FRONTEND: u64 = u64::MAX;

/// A packet the frontend filter let through: to a frontend, follow its flow or start one.
/// A BPF subprogram (see `process`) returning `Verdict::to_raw`, or `NO_FRONTEND`.
#[inline(never)]
fn frontend<P: Packet>(pkt: &mut P, flow: &Flow, cfg: &Config) -> u64 {
    let Some((svc, scope)) = lookup::frontend(flow.daddr, flow.dport, flow.proto, P::HOOK) else {
        return NO_FRONTEND;
    };
    stats::trace(|t| {
        t.scope = scope;
        t.svc_id = svc.svc_id;
    });
    to_frontend(pkt, flow, &svc, cfg, conntrack::now_secs()).to_raw()
}

/// A packet the backend filters let through: a SYN reusing a tracked flow's tuple (`reuse`)
/// retires it; a reply of a tracked flow (`reply`: its source may be such a backend) is
/// translated back. A BPF subprogram (see `process`) returning `Verdict::to_raw`.
#[inline(never)]
fn backend<P: Packet>(pkt: &mut P, flow: &Flow, cfg: &Config, reply: bool, reuse: bool) -> u64 {
    let now = conntrack::now_secs();
    if reuse {
        retire_reused_tuple(flow, now);
    }
    if reply && let Some(verdict) = translate_reply(pkt, flow, cfg, now) {
        return verdict.to_raw();
    }
    stats::count(counter::NOT_SERVICE);
    Verdict::Pass.to_raw()
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

/// Sends a translated packet on as planned.
#[inline(always)]
pub fn finish<P: Packet>(pkt: &mut P, out: Out) -> Verdict {
    stats::trace(|t| {
        t.out_ifindex = match out {
            Out::Stack => 0,
            Out::Redirect(ifindex) => ifindex,
            Out::Tx(..) => pkt.ifindex(),
        }
    });
    match out {
        Out::Stack => Verdict::Pass,
        Out::Redirect(ifindex) => Verdict::Redirect(ifindex),
        Out::Tx(src, dst) => {
            if pkt.set_macs(src, dst).is_err() {
                stats::drop_reason(drop_reason::XLATE_ERROR);
                return Verdict::Drop;
            }
            Verdict::Tx
        }
    }
}

/// A packet addressed to a frontend: follow its flow, or start one.
#[inline(always)]
fn to_frontend<P: Packet>(
    pkt: &mut P,
    flow: &Flow,
    svc: &ServiceValue,
    cfg: &Config,
    now: u32,
) -> Verdict {
    let fkey = conntrack::key(flow, ct_dir::FORWARD);
    let mut stale = None;
    if let Some(ct) = CONNTRACK.get_ptr_mut(fkey) {
        // SAFETY: pointer into the map value; copied out at once.
        let cur = unsafe { *ct };
        let usable = cur.expires >= now && !(flow.is_syn() && cur.state == ct_state::CLOSED);
        if usable
            && cur.svc_id == svc.svc_id
            && lookup::backend(cur.backend_id, cur.svc_id).is_some()
        {
            return established(pkt, flow, svc, ct, &cur, cfg, now);
        }
        if usable && P::DEFERS {
            // Re-selection rewrites state: leave it to tc, which sees this packet next.
            return Verdict::Pass;
        }
        if usable {
            // The flow's backend left the service (or the frontend moved): pick again now.
            stats::count(counter::CT_RESELECT);
        }
        // The entry the new flow replaces (closed, expired, or its backend left): rewritten
        // in place rather than re-inserted, so a client reusing a source port costs no
        // conntrack allocation.
        stale = NonNull::new(ct);
    }
    new_flow(pkt, flow, svc, cfg, now, stale)
}

/// Next packet of a tracked flow whose backend is still in the service.
#[inline(always)]
fn established<P: Packet>(
    pkt: &mut P,
    flow: &Flow,
    svc: &ServiceValue,
    ct: *mut CtValue,
    cur: &CtValue,
    cfg: &Config,
    now: u32,
) -> Verdict {
    let (s, d) = translated(flow, cur);
    let Some(out) = route::plan_cached(pkt, ct, s, d, flow.ip_len, now) else {
        return Verdict::Pass;
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
    if conntrack::refresh(ct, flow, cfg, now, ct_dir::FORWARD) {
        // SAFETY: pointer into the map value.
        let after = unsafe { *ct };
        let fins = after.flags & (ct_flags::FIN_FWD | ct_flags::FIN_REPLY);
        let peer = conntrack::reply_key_of(&after, flow.proto);
        conntrack::mirror_close(&peer, after.state, fins, cfg, now, flow.proto);
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

/// First packet of a flow (or one whose backend left): select, record, translate.
#[inline(always)]
fn new_flow<P: Packet>(
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
        Err(reason) => return drop_flow(cfg, P::HOOK, flow, svc.svc_id, reason),
    };
    let be = sel.backend;
    let (state, _) = conntrack::next_state(flow.proto, 0, 0, flow.tcp_flags, ct_dir::FORWARD);
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
        // NodePort address itself, else the agent's SNAT address) and a port of the range.
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
        (translated(flow, prev) == (s, d)).then(|| route::cached_hop(prev, now))
    });
    let known = known.flatten();
    let (out, hop) = route::plan(pkt, s, d, flow.ip_len, known);
    let Some(out) = out else {
        return Verdict::Pass;
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
        let _ = CONNTRACK.remove(old_reply);
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

/// Translates a client → frontend packet as its forward entry says, and sends it on.
#[inline(always)]
fn forward<P: Packet>(pkt: &mut P, flow: &Flow, ct: &CtValue, out: Out) -> Verdict {
    let len = pkt.len();
    if nat::apply(pkt, flow, ct).is_err() {
        stats::drop_reason(drop_reason::XLATE_ERROR);
        return Verdict::Drop;
    }
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
    let Some(ct) = CONNTRACK.get_ptr_mut(rkey) else {
        return;
    };
    // SAFETY: pointer into the map value; read once.
    let (state, expires) = unsafe { ((*ct).state, (*ct).expires) };
    if state == ct_state::CLOSED || expires < now {
        let _ = CONNTRACK.remove(rkey);
    }
}

/// A packet from a backend of a tracked flow (the caller checked that its source may be one):
/// restore what the client dialled.
#[inline(always)]
fn translate_reply<P: Packet>(pkt: &mut P, flow: &Flow, cfg: &Config, now: u32) -> Option<Verdict> {
    let rkey = conntrack::key(flow, ct_dir::REPLY);
    let ct = CONNTRACK.get_ptr_mut(rkey)?;
    // SAFETY: pointer into the map value; copied out at once.
    let cur = unsafe { *ct };
    if cur.expires < now {
        return None;
    }
    let (s, d) = translated(flow, &cur);
    let Some(out) = route::plan_cached(pkt, ct, s, d, flow.ip_len, now) else {
        return Some(Verdict::Pass);
    };
    stats::trace(|t| {
        t.reply = 1;
        t.svc_id = cur.svc_id;
        t.backend_id = cur.backend_id;
        t.ct_flags = cur.flags;
    });
    if conntrack::refresh(ct, flow, cfg, now, ct_dir::REPLY) {
        // SAFETY: pointer into the map value.
        let after = unsafe { *ct };
        let fins = after.flags & (ct_flags::FIN_FWD | ct_flags::FIN_REPLY);
        let peer = conntrack::forward_key_of(&after, flow);
        conntrack::mirror_close(&peer, after.state, fins, cfg, now, flow.proto);
    }
    let len = pkt.len();
    if nat::apply(pkt, flow, &cur).is_err() {
        stats::drop_reason(drop_reason::XLATE_ERROR);
        return Some(Verdict::Drop);
    }
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
