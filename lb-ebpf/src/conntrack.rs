//! Connection tracking: one LRU entry per direction of each translated flow, keyed by the
//! packet's own 5-tuple, holding the rewrite to apply, the service/backend ids and the TCP state.
//!
//! The forward entry (client → frontend) says where to send the flow; the reply entry (backend →
//! client or → SNAT address) says how to restore what the client dialled. FIN/RST update both,
//! and a UDP/SCTP flow's two entries expire together however one-way its traffic is.
//!
//! Two tables: a flow is created in `CT_NEW` and moves to `CONNTRACK` when its client speaks
//! again after a reply (`saw_reply`, `confirm`): the TCP handshake's ACK, UDP both ways. A
//! flood of new flows (SYNs, one-way UDP, spoofed sources) evicts only other unanswered flows;
//! confirmed flows are evicted only by confirmed flows.
//!
//! An RST closes a flow only with the sequence number its receiver expects (RFC 5961; the
//! endpoint ignores others and answers a challenge ACK), so a blind RST cannot make the flow's
//! state expire while the connection lives on.

use core::{mem::MaybeUninit, ptr::NonNull};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use lb_common::{Config, CtKey, CtValue, counter, ct_dir, ct_flags, ct_state, proto};

use crate::family::Family;

use crate::{
    maps,
    parse::{Flow, tcp_flags},
    stats,
};

/// Seconds of CLOCK_MONOTONIC (what user space compares `expires` against).
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without preconditions.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// Copies a conntrack value word by word. A plain `*dst = *src` of this size becomes a call to
/// `memcpy`, a byte loop the verifier walks 60 times on every path through it; volatile word
/// accesses keep LLVM from forming that call again.
#[inline(always)]
pub fn copy_ct<A: Family>(dst: *mut CtValue<A>, src: *const CtValue<A>) {
    let words = core::mem::size_of::<CtValue<A>>() / 4;
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    for i in 0..words {
        // SAFETY: both point to a whole CtValue (4-byte aligned, a multiple of 4 bytes).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}

/// The packet's own 5-tuple as a key in direction `dir`.
#[inline(always)]
pub fn key<A: Family>(flow: &Flow<A>, dir: u8) -> CtKey<A> {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        dir,
        _pad: [0; 2],
    }
}

/// The key of `flow`'s tuple as its peer sends it (addresses and ports swapped), in direction
/// `dir`.
#[inline(always)]
pub fn reversed_key<A: Family>(flow: &Flow<A>, dir: u8) -> CtKey<A> {
    CtKey {
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport: flow.dport,
        dport: flow.sport,
        proto: flow.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Timeout of a flow in `state`, in seconds.
#[inline(always)]
pub fn timeout(cfg: &Config, l4_proto: u8, state: u8) -> u32 {
    if l4_proto != proto::TCP {
        return cfg.ct_udp;
    }
    match state {
        ct_state::SYN_SENT => cfg.ct_tcp_syn,
        ct_state::FIN_WAIT => cfg.ct_tcp_fin,
        ct_state::CLOSED => cfg.ct_tcp_closed,
        _ => cfg.ct_tcp_established,
    }
}

/// State and FIN bits after a packet with `flags` in direction `dir`; an RST counts only if
/// `rst_ok` (its sequence number checked).
#[inline(always)]
pub fn next_state(l4_proto: u8, state: u8, fl: u8, tcp: u8, dir: u8, rst_ok: bool) -> (u8, u8) {
    if l4_proto != proto::TCP {
        return (ct_state::ESTABLISHED, fl);
    }
    if tcp & tcp_flags::RST != 0 {
        return (if rst_ok { ct_state::CLOSED } else { state }, fl);
    }
    let mut fl = fl;
    if tcp & tcp_flags::FIN != 0 {
        fl |= if dir == ct_dir::FORWARD {
            ct_flags::FIN_FWD
        } else {
            ct_flags::FIN_REPLY
        };
        let both = ct_flags::FIN_FWD | ct_flags::FIN_REPLY;
        let st = if fl & both == both {
            ct_state::CLOSED
        } else {
            ct_state::FIN_WAIT
        };
        return (st, fl);
    }
    let st = match state {
        ct_state::SYN_SENT if tcp & tcp_flags::ACK != 0 => ct_state::ESTABLISHED,
        0 if tcp & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN => ct_state::SYN_SENT,
        0 => ct_state::ESTABLISHED,
        s => s,
    };
    (st, fl)
}

/// `a` comes after `b` in sequence space.
#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What a refresh asks of the flow's other entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Nothing.
    Keep,
    /// The packet closed or half-closed the flow (FIN, accepted RST): copy the state.
    Close,
    /// A UDP/SCTP entry's expiry moved: the other one's moves too (one-way flows keep both).
    Extend,
}

/// Refreshes an entry for a packet of `flow` in direction `dir`: the RST check, the sequence
/// number, state, then expiry (written only when it moves, so a busy flow writes its expiry at
/// most once a second). `ack`: the packet's acknowledgment number (read for RSTs only).
#[inline(always)]
pub fn refresh<A: Family>(
    ct: *mut CtValue<A>,
    flow: &Flow<A>,
    cfg: &Config,
    now: u32,
    dir: u8,
    ack: u32,
) -> Peer {
    if !stats::live() {
        return Peer::Keep;
    }
    // SAFETY: `ct` points into the map value; racing writers only move timestamps, the
    // sequence number and the state.
    let ct = unsafe { &mut *ct };
    let tcp = flow.proto == proto::TCP;
    let rst = tcp && flow.tcp_flags & tcp_flags::RST != 0;
    // A reply entry still SYN_SENT holds what an RST answering the SYN must acknowledge.
    let answering_syn = dir == ct_dir::REPLY && ct.state == ct_state::SYN_SENT;
    let rst_ok = rst
        && if answering_syn {
            flow.tcp_flags & tcp_flags::ACK != 0 && ack == ct.seq_end
        } else {
            ct.seq_end == 0 || flow.seq_end == ct.seq_end
        };
    if rst && !rst_ok {
        stats::count(counter::RST_IGNORED);
    }
    if tcp && !rst && (answering_syn || ct.seq_end == 0 || seq_after(flow.seq_end, ct.seq_end)) {
        ct.seq_end = flow.seq_end;
    }
    let (state, fl) = next_state(flow.proto, ct.state, ct.flags, flow.tcp_flags, dir, rst_ok);
    let changed = state != ct.state || fl != ct.flags;
    if changed {
        ct.state = state;
        ct.flags = fl;
    }
    let expires = now.wrapping_add(timeout(cfg, flow.proto, state));
    let moved = expires != ct.expires;
    if moved {
        ct.expires = expires;
    }
    if changed && (flow.tcp_flags & tcp_flags::FIN != 0 || rst_ok) {
        Peer::Close
    } else if moved && !tcp {
        Peer::Extend
    } else {
        Peer::Keep
    }
}

/// Applies a refresh's `Peer` to the flow's other entry (`peer`, in the table of confirmed
/// flows or the other): the state and expiry `after` (the entry at `own`) has now (the same
/// state has the same timeout). Only if `peer` still names `own` as its other half: another
/// flow may have taken the tuple over (a reused tuple, a re-created flow).
#[inline(always)]
pub fn touch_peer<A: Family>(
    confirmed: bool,
    own: &CtKey<A>,
    peer: &CtKey<A>,
    what: Peer,
    after: &CtValue<A>,
) {
    if what == Peer::Keep {
        return;
    }
    let p = if confirmed {
        A::ct().get_ptr_mut(peer)
    } else {
        A::ct_new().get_ptr_mut(peer)
    };
    let Some(p) = p else {
        return;
    };
    // SAFETY: pointer into the map value.
    let p = unsafe { &mut *p };
    if !names(peer, p, own) {
        return;
    }
    if what == Peer::Close {
        p.state = after.state;
        p.flags |= after.flags & (ct_flags::FIN_FWD | ct_flags::FIN_REPLY);
    }
    p.expires = after.expires;
}

/// True if the entry `e` at `key` names `other` as its flow's other half (the reply key of a
/// forward entry, the forward key of a reply entry).
#[inline(always)]
pub fn names<A: Family>(key: &CtKey<A>, e: &CtValue<A>, other: &CtKey<A>) -> bool {
    if key.dir == ct_dir::FORWARD {
        reply_key_of(e, key.proto) == *other
    } else {
        forward_key_of(key, e) == *other
    }
}

/// Room for conntrack key `i` (0 or 1) of a new flow: `stack` for IPv4, this CPU's scratch
/// for IPv6 (see `Family::FLOW_IN_SCRATCH`).
#[inline(always)]
pub fn key_room<A: Family>(stack: &mut MaybeUninit<CtKey<A>>, i: usize) -> Option<&mut CtKey<A>> {
    if A::FLOW_IN_SCRATCH {
        let s = maps::SCRATCH.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot, used by this program run only.
        return Some(A::key_mut(unsafe { &mut *s }, i));
    }
    // SAFETY: the caller writes the whole key before reading it.
    Some(unsafe { stack.assume_init_mut() })
}

/// True if `key` is the reply key of the forward entry `fwd` (`reply_key_of`), compared in
/// place.
#[inline(always)]
pub fn is_reply_key_of<A: Family>(key: &CtKey<A>, fwd: &CtValue<A>, l4_proto: u8) -> bool {
    key.saddr == fwd.nat_daddr
        && key.daddr == fwd.nat_saddr
        && key.sport == fwd.nat_dport
        && key.dport == fwd.nat_sport
        && key.proto == l4_proto
        && key.dir == ct_dir::REPLY
}

/// A key no flow has (all zero).
#[inline(always)]
pub fn no_key<A: Family>() -> CtKey<A> {
    CtKey {
        saddr: A::ZERO,
        daddr: A::ZERO,
        sport: 0,
        dport: 0,
        proto: 0,
        dir: 0,
        _pad: [0; 2],
    }
}

/// The reply-direction key of a forward entry: the backend answering the (possibly rewritten)
/// client address. Forward entries always carry the post-translation source in `nat_s*`.
#[inline(always)]
pub fn reply_key_of<A: Family>(fwd: &CtValue<A>, l4_proto: u8) -> CtKey<A> {
    CtKey {
        saddr: fwd.nat_daddr,
        daddr: fwd.nat_saddr,
        sport: fwd.nat_dport,
        dport: fwd.nat_sport,
        proto: l4_proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    }
}

/// The forward-direction key of the reply entry `rev` stored at `rkey`.
#[inline(always)]
pub fn forward_key_of<A: Family>(rkey: &CtKey<A>, rev: &CtValue<A>) -> CtKey<A> {
    let (client, cport) = if rev.flags & ct_flags::XLATE_DST != 0 {
        (rev.nat_daddr, rev.nat_dport)
    } else {
        (rkey.daddr, rkey.dport)
    };
    CtKey {
        saddr: client,
        daddr: rev.nat_saddr,
        sport: cport,
        dport: rev.nat_sport,
        proto: rkey.proto,
        dir: ct_dir::FORWARD,
        _pad: [0; 2],
    }
}

/// Why a flow could not be recorded.
pub enum CreateError {
    /// Every candidate source port is taken.
    PortsExhausted,
    /// The map refused the entry.
    Insert,
}

/// Attempts to claim `key` in `CT_NEW` for `rev`: succeeds if free, expired, closed, or
/// already this same flow's. An existing entry is rewritten in place (no allocation from the
/// LRU); the route it cached is kept when it is the same flow's (the reply goes back the same
/// way). A reply tuple a live confirmed flow holds is not free either. A closed flow's is: its
/// client reused the source port for another frontend with the same backend (the rule an
/// untranslated SYN follows, `lb::retire_reused_tuple`); its confirmed reply entry goes, so
/// the backend's answers find the new one. `present`: the entry probably exists (the tuple had
/// a flow before), so look before inserting.
#[inline(always)]
fn claim<A: Family>(key: &CtKey<A>, rev: &mut CtValue<A>, now: u32, present: bool) -> bool {
    let fresh: &CtValue<A> = rev;
    // SAFETY: read once (the state is copied out before the entry may go).
    if let Some(state) = unsafe { A::ct().get(key) }
        .filter(|c| c.expires >= now)
        .map(|c| c.state)
    {
        if state != ct_state::CLOSED {
            return false;
        }
        let _ = A::ct().remove(key);
    }
    if !present
        && A::ct_new()
            .insert(key, fresh, u64::from(BPF_NOEXIST))
            .is_ok()
    {
        return true;
    }
    let Some(p) = A::ct_new().get_ptr_mut(key) else {
        // Absent after all (or evicted meanwhile).
        return A::ct_new()
            .insert(key, fresh, u64::from(BPF_NOEXIST))
            .is_ok();
    };
    // SAFETY: pointer into the map value.
    let old = unsafe { &mut *p };
    let same_flow = old.nat_saddr == rev.nat_saddr
        && old.nat_sport == rev.nat_sport
        && old.nat_daddr == rev.nat_daddr
        && old.nat_dport == rev.nat_dport;
    if !same_flow && old.expires >= now && old.state != ct_state::CLOSED {
        return false;
    }
    // The same flow keeps its cached route (`rev`, built in scratch, takes it over first: no
    // copy of the whole entry on the stack).
    if same_flow {
        rev.route_flags = old.route_flags;
        rev.route_ifindex = old.route_ifindex;
        rev.route_at = old.route_at;
        rev.route_macs = old.route_macs;
        rev.route_mtu = old.route_mtu;
    }
    copy_ct(old, rev);
    true
}

/// `claim` for a port the SNAT search picked (`rev` a fresh reply entry): free, or held by an
/// expired or closed flow (a closed confirmed entry goes, as in `claim`). Fewer branches than
/// `claim`, which the verifier walks at every try.
#[inline(always)]
fn claim_port<A: Family>(key: &CtKey<A>, rev: &CtValue<A>, now: u32) -> bool {
    // SAFETY: read once (the state is copied out before the entry may go).
    if let Some(state) = unsafe { A::ct().get(key) }
        .filter(|c| c.expires >= now)
        .map(|c| c.state)
    {
        if state != ct_state::CLOSED {
            return false;
        }
        let _ = A::ct().remove(key);
    }
    if A::ct_new().insert(key, rev, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // SAFETY: read once.
    if unsafe { A::ct_new().get(key) }
        .is_some_and(|c| c.expires >= now && c.state != ct_state::CLOSED)
    {
        return false;
    }
    A::ct_new().insert(key, rev, u64::from(BPF_ANY)).is_ok()
}

/// Writes both entries of a new flow into `CT_NEW`. `fwd` (with `nat_saddr:nat_sport` = the
/// source the backend will see) says how to translate the client's packets. If that reply
/// tuple belongs to another live flow, a free source port is found (`fwd` is updated to use
/// it); SCTP keeps its port (its checksum covers the ports). `entry` is the tuple's forward
/// entry in `CT_NEW` when one exists (rewritten in place).
#[inline(always)]
pub fn create<A: Family>(
    flow: &Flow<A>,
    fwd: &mut CtValue<A>,
    cfg: &Config,
    now: u32,
    entry: Option<NonNull<CtValue<A>>>,
) -> Result<(), CreateError> {
    if !stats::live() {
        return Ok(());
    }
    // The reply entry is built in this CPU's scratch, off the stack (see `maps::SCRATCH`).
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return Err(CreateError::Insert);
    };
    // SAFETY: this CPU's slot, used by this program run only.
    let rev = A::ct_mut(unsafe { &mut *scratch });
    *rev = CtValue {
        svc_id: fwd.svc_id,
        backend_id: fwd.backend_id,
        created: now,
        expires: fwd.expires,
        // Replies get the frontend the client dialled as their source...
        nat_saddr: flow.daddr,
        nat_sport: flow.dport,
        // ...and, when the client's source was rewritten, the client as destination.
        nat_daddr: flow.saddr,
        nat_dport: flow.sport,
        state: fwd.state,
        flags: ct_flags::XLATE_SRC | (fwd.flags & (ct_flags::HAIRPIN | ct_flags::SNAT)),
        hook: fwd.hook,
        // The reply direction's next hop is looked up by its first packet.
        route_flags: 0,
        route_ifindex: 0,
        route_at: 0,
        route_macs: [0; 12],
        // Until the backend answers: what an RST answering the SYN must acknowledge.
        seq_end: fwd.seq_end,
        route_mtu: 0,
        _pad: 0,
    };
    if fwd.flags & ct_flags::XLATE_SRC != 0 {
        rev.flags |= ct_flags::XLATE_DST;
    }
    let mut room = MaybeUninit::uninit();
    let Some(rkey) = key_room(&mut room, 0) else {
        return Err(CreateError::Insert);
    };
    *rkey = reply_key_of(fwd, flow.proto);
    // Before either entry exists: the backend's replies must be looked up from now on.
    maps::mark_nat(rkey.saddr, rkey.sport);
    // SNAT takes its port from the range (never a port this node's own sockets may use);
    // other flows, and SCTP always, keep the client's port unless another live flow owns that
    // reply tuple.
    let snat = fwd.flags & ct_flags::SNAT != 0;
    let keep_port = !snat || flow.proto == proto::SCTP;
    let mut ok = keep_port && claim(rkey, rev, now, entry.is_some());
    if !ok && cfg.snat_port_max > cfg.snat_port_min && flow.proto != proto::SCTP {
        // Another live flow owns this reply tuple: move this flow's source port.
        rev.flags |= ct_flags::XLATE_DST;
        let span = u32::from(cfg.snat_port_max - cfg.snat_port_min) + 1;
        let mut tries = 0;
        while tries < 8 {
            tries += 1;
            // SAFETY: helper without preconditions.
            let port = cfg.snat_port_min + (unsafe { bpf_get_prandom_u32() } % span) as u16;
            rkey.dport = port;
            if claim_port(rkey, rev, now) {
                fwd.flags |= ct_flags::XLATE_SRC;
                fwd.nat_sport = port;
                ok = true;
                break;
            }
        }
    }
    if !ok {
        return Err(CreateError::PortsExhausted);
    }
    if let Some(p) = entry {
        copy_ct(p.as_ptr(), fwd);
        return Ok(());
    }
    let fkey = key(flow, ct_dir::FORWARD);
    if A::ct_new().insert(fkey, fwd, u64::from(BPF_ANY)).is_err() {
        let in_place: &CtKey<A> = rkey;
        let _ = A::ct_new().remove(in_place);
        return Err(CreateError::Insert);
    }
    Ok(())
}

/// Marks an unanswered flow as answered (`SEEN_REPLY` on its forward entry), from its reply
/// entry at `rkey`.
#[inline(always)]
pub fn saw_reply<A: Family>(rkey: &CtKey<A>, rev: &CtValue<A>) {
    if !stats::live() {
        return;
    }
    let fkey = forward_key_of(rkey, rev);
    if let Some(f) = A::ct_new().get_ptr_mut(fkey)
        // SAFETY: pointer into the map value, read in place.
        && names(&fkey, unsafe { &*f }, rkey)
    {
        // SAFETY: pointer into the map value; a racing writer sets the same bit.
        unsafe { (*f).flags |= ct_flags::SEEN_REPLY };
    }
}

/// Asks `lb::process` to confirm the flow of this packet once its translation path is done.
#[inline(always)]
pub fn ask_confirm() {
    if let Some(s) = maps::SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, used by this program run only.
        unsafe { (*s).confirm = 1 };
    }
}

/// True (once) if the translation path asked to confirm the packet's flow.
#[inline(always)]
pub fn confirm_asked() -> bool {
    let Some(s) = maps::SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by this program run only.
    unsafe {
        let asked = (*s).confirm != 0;
        if asked {
            (*s).confirm = 0;
        }
        asked
    }
}

/// Moves a flow whose client spoke again after a reply from `CT_NEW` to `CONNTRACK`: the
/// forward entry (`fkey`, in `CT_NEW`) and its reply entry. Both are in `CONNTRACK` before
/// either leaves `CT_NEW`, so every packet finds one of them. A BPF subprogram called from the
/// entry program (see `lb::process`).
#[inline(never)]
pub fn confirm<A: Family>(fkey: &CtKey<A>) {
    if !stats::live() {
        return;
    }
    // SAFETY: read in place by the helpers.
    let Some(fwd) = (unsafe { A::ct_new().get(fkey) }) else {
        return;
    };
    let rkey = reply_key_of(fwd, fkey.proto);
    // SAFETY: read in place by the helper.
    let Some(rev) = (unsafe { A::ct_new().get(rkey) }) else {
        return;
    };
    // Another flow's reply entry (it took the tuple over) stays with that flow.
    if !names(&rkey, rev, fkey) {
        return;
    }
    if A::ct().insert(fkey, fwd, u64::from(BPF_ANY)).is_err()
        || A::ct().insert(rkey, rev, u64::from(BPF_ANY)).is_err()
    {
        let _ = A::ct().remove(fkey);
        return;
    }
    let _ = A::ct_new().remove(rkey);
    let _ = A::ct_new().remove(fkey);
    stats::count(counter::CT_CONFIRMED);
}
