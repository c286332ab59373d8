//! Connection tracking: one LRU entry per direction of each translated flow, keyed by the
//! packet's own 5-tuple, holding the rewrite to apply, the service/backend ids and the TCP state.
//!
//! The forward entry (client → frontend) says where to send the flow; the reply entry (backend →
//! client or → SNAT address) says how to restore what the client dialled. FIN/RST update both.

use core::ptr::NonNull;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use lb_common::{Config, CtKey, CtValue, ct_dir, ct_flags, ct_state, proto};

use crate::{
    maps::{self, CONNTRACK},
    parse::{Flow, tcp_flags},
    stats,
};

/// Seconds of CLOCK_MONOTONIC (what user space compares `expires` against).
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without preconditions.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The packet's own 5-tuple as a key in direction `dir`.
#[inline(always)]
pub fn key(flow: &Flow, dir: u8) -> CtKey {
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
pub fn reversed_key(flow: &Flow, dir: u8) -> CtKey {
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

/// State and FIN bits after a packet with `flags` in direction `dir`.
#[inline(always)]
pub fn next_state(l4_proto: u8, state: u8, fl: u8, tcp: u8, dir: u8) -> (u8, u8) {
    if l4_proto != proto::TCP {
        return (ct_state::ESTABLISHED, fl);
    }
    if tcp & tcp_flags::RST != 0 {
        return (ct_state::CLOSED, fl);
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

/// Refreshes an entry for a packet of `flow` in direction `dir`: state, then expiry (written only
/// when it moves, so a busy flow writes its entry at most once a second).
/// Returns true if the packet closed or half-closed the flow (FIN/RST), so the peer entry must
/// learn it too.
#[inline(always)]
pub fn refresh(ct: *mut CtValue, flow: &Flow, cfg: &Config, now: u32, dir: u8) -> bool {
    if !stats::live() {
        return false;
    }
    // SAFETY: `ct` points into the map value; racing writers only move timestamps and state.
    let ct = unsafe { &mut *ct };
    let (state, fl) = next_state(flow.proto, ct.state, ct.flags, flow.tcp_flags, dir);
    let changed = state != ct.state || fl != ct.flags;
    if changed {
        ct.state = state;
        ct.flags = fl;
    }
    let expires = now.wrapping_add(timeout(cfg, flow.proto, state));
    if expires != ct.expires {
        ct.expires = expires;
    }
    changed && flow.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0
}

/// Copies the closing state of one direction's entry to the other's.
#[inline(always)]
pub fn mirror_close(peer: &CtKey, state: u8, fin_bits: u8, cfg: &Config, now: u32, l4_proto: u8) {
    if let Some(p) = CONNTRACK.get_ptr_mut(peer) {
        // SAFETY: pointer into the map value.
        let p = unsafe { &mut *p };
        p.state = state;
        p.flags |= fin_bits;
        p.expires = now.wrapping_add(timeout(cfg, l4_proto, state));
    }
}

/// A key no flow has (all zero).
pub const NO_KEY: CtKey = CtKey {
    saddr: [0; 4],
    daddr: [0; 4],
    sport: 0,
    dport: 0,
    proto: 0,
    dir: 0,
    _pad: [0; 2],
};

/// The reply-direction key of a forward entry: the backend answering the (possibly rewritten)
/// client address. Forward entries always carry the post-translation source in `nat_s*`.
#[inline(always)]
pub fn reply_key_of(fwd: &CtValue, l4_proto: u8) -> CtKey {
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

/// The forward-direction key of a reply entry, for a reply packet `flow`.
#[inline(always)]
pub fn forward_key_of(rev: &CtValue, flow: &Flow) -> CtKey {
    let (client, cport) = if rev.flags & ct_flags::XLATE_DST != 0 {
        (rev.nat_daddr, rev.nat_dport)
    } else {
        (flow.daddr, flow.dport)
    };
    CtKey {
        saddr: client,
        daddr: rev.nat_saddr,
        sport: cport,
        dport: rev.nat_sport,
        proto: flow.proto,
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

/// Attempts to claim `key` for `rev`: succeeds if free, expired, or already this same flow's.
/// An existing entry is rewritten in place (no allocation from the LRU); the route it cached
/// is kept when it is the same flow's (the reply goes back the same way). `present`: the entry
/// probably exists (the tuple had a flow before), so look before inserting.
#[inline(always)]
fn claim(key: &CtKey, rev: &CtValue, now: u32, present: bool) -> bool {
    if !present && CONNTRACK.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    let Some(p) = CONNTRACK.get_ptr_mut(key) else {
        // Absent after all (or evicted meanwhile).
        return CONNTRACK.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok();
    };
    // SAFETY: pointer into the map value.
    let old = unsafe { &mut *p };
    let same_flow = old.nat_saddr == rev.nat_saddr
        && old.nat_sport == rev.nat_sport
        && old.nat_daddr == rev.nat_daddr
        && old.nat_dport == rev.nat_dport;
    if !same_flow && old.expires >= now {
        return false;
    }
    // The same flow keeps its cached route (no copy of the whole entry on the stack).
    let route = if same_flow {
        (
            old.route_flags,
            old.route_ifindex,
            old.route_at,
            old.route_macs,
        )
    } else {
        (
            rev.route_flags,
            rev.route_ifindex,
            rev.route_at,
            rev.route_macs,
        )
    };
    *old = *rev;
    (
        old.route_flags,
        old.route_ifindex,
        old.route_at,
        old.route_macs,
    ) = route;
    true
}

/// Writes both entries of a new flow. `fwd` (with `nat_saddr:nat_sport` = the source the backend
/// will see) says how to translate the client's packets. If that reply tuple belongs to another
/// live flow, a free source port is found (`fwd` is updated to use it). `entry` is the tuple's
/// forward entry when one exists (rewritten in place).
#[inline(always)]
pub fn create(
    flow: &Flow,
    fwd: &mut CtValue,
    cfg: &Config,
    now: u32,
    entry: Option<NonNull<CtValue>>,
) -> Result<(), CreateError> {
    if !stats::live() {
        return Ok(());
    }
    // The reply entry is built in this CPU's scratch, off the stack (see `maps::SCRATCH`).
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return Err(CreateError::Insert);
    };
    // SAFETY: this CPU's slot, used by this program run only.
    let rev = unsafe { &mut (*scratch).ct };
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
    };
    if fwd.flags & ct_flags::XLATE_SRC != 0 {
        rev.flags |= ct_flags::XLATE_DST;
    }
    let mut rkey = reply_key_of(fwd, flow.proto);
    // Before either entry exists: the backend's replies must be looked up from now on.
    maps::mark_nat(rkey.saddr, rkey.sport);
    // SNAT takes its port from the range (never a port this node's own sockets may use);
    // other flows keep the client's port unless another live flow owns that reply tuple.
    let snat = fwd.flags & ct_flags::SNAT != 0;
    let mut ok = !snat && claim(&rkey, rev, now, entry.is_some());
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
            if claim(&rkey, rev, now, false) {
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
        // SAFETY: pointer into the map value (the packet's own tuple).
        unsafe { *p.as_ptr() = *fwd };
        return Ok(());
    }
    let fkey = key(flow, ct_dir::FORWARD);
    if CONNTRACK.insert(fkey, fwd, u64::from(BPF_ANY)).is_err() {
        let _ = CONNTRACK.remove(rkey);
        return Err(CreateError::Insert);
    }
    Ok(())
}
