//! Delivery of translated packets without the kernel's input route lookup.
//!
//! A translated packet may carry one of this node's own addresses as its source (SNAT,
//! replies from a NodePort): handed to the stack on ingress it would be dropped as a martian.
//! So the next hop comes from `bpf_fib_lookup` on the translated addresses: tc redirects with
//! `bpf_redirect_neigh` (which also resolves the neighbour); XDP transmits with `XDP_TX` when
//! the packet leaves through the device it came in on, and otherwise leaves the packet
//! untouched (no flow state written) for the tc program on the same device to finish.
//!
//! An uplink whose XDP_TX lost frames (`device`) gets no MACs in its hops: XDP leaves those
//! flows to tc.
//!
//! A flow's next hop is cached in its conntrack entry and looked up again at most once a
//! second (route changes take effect within a second; packets in between skip the FIB).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
};
use lb_common::{CtValue, Ipv4, dev_flags, device_slot, route_flags};

use crate::{
    ctx::Packet,
    maps::{DEVICES, SCRATCH},
    stats,
};

const AF_INET: u8 = 2;

/// How a translated packet leaves.
#[derive(Clone, Copy)]
pub enum Out {
    /// Let the stack route it (destination is this node, or no forwarding decision).
    Stack,
    /// tc: `bpf_redirect_neigh` to this device.
    Redirect(u32),
    /// XDP: rewrite the MAC addresses (source, destination) and transmit on the same device.
    Tx([u8; 6], [u8; 6]),
}

/// A FIB answer worth remembering.
#[derive(Clone, Copy)]
pub struct Hop {
    /// Egress device; 0 when the stack must deliver (local destination, no route).
    ifindex: u32,
    /// Destination and source MACs when the neighbour is resolved.
    macs: Option<([u8; 6], [u8; 6])>,
}

#[inline(always)]
fn lookup<P: Packet>(pkt: &P, saddr: Ipv4, daddr: Ipv4, ip_len: u16) -> Hop {
    const NONE: Hop = Hop {
        ifindex: 0,
        macs: None,
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return NONE;
    };
    // SAFETY: this CPU's slot, used by this program run only; a plain-data struct the helper
    // fills, zero is a valid initial state.
    let p = unsafe {
        let p = &raw mut (*scratch).fib;
        p.write(core::mem::zeroed());
        &mut *p
    };
    p.family = AF_INET;
    p.ifindex = pkt.ifindex();
    p.__bindgen_anon_1.tot_len = ip_len;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(saddr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(daddr);
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed; the context is the program's.
    let rc = unsafe {
        bpf_fib_lookup(
            pkt.ctx_ptr(),
            core::ptr::from_mut(p),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        // Back out of the device it came in on, which lost XDP_TX frames: no MACs, so XDP
        // leaves the flow to tc (which needs none).
        BPF_FIB_LKUP_RET_SUCCESS if p.ifindex == pkt.ifindex() && tx_fallback(p.ifindex) => Hop {
            ifindex: p.ifindex,
            macs: None,
        },
        BPF_FIB_LKUP_RET_SUCCESS => Hop {
            ifindex: p.ifindex,
            macs: Some((p.dmac, p.smac)),
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Hop {
            ifindex: p.ifindex,
            macs: None,
        },
        _ => NONE,
    }
}

/// True if XDP_TX lost frames on device `ifindex` (see `device`).
#[inline(always)]
fn tx_fallback(ifindex: u32) -> bool {
    DEVICES
        .get(device_slot(ifindex))
        .is_some_and(|d| d.ifindex == ifindex && d.flags & dev_flags::TX_FALLBACK != 0)
}

/// What this hook does with a packet whose next hop is `hop`; `None` (XDP only): leave it
/// untranslated for tc.
#[inline(always)]
fn decide<P: Packet>(pkt: &P, hop: Hop) -> Option<Out> {
    if P::DEFERS {
        return match hop.macs {
            Some((dst, src)) if hop.ifindex == pkt.ifindex() => Some(Out::Tx(src, dst)),
            _ => None,
        };
    }
    Some(if hop.ifindex != 0 {
        Out::Redirect(hop.ifindex)
    } else {
        Out::Stack
    })
}

/// Plans a packet that has no conntrack entry yet (from `known` when a hop of this second is
/// at hand); the hop goes into the entry (`store`).
#[inline(always)]
pub fn plan<P: Packet>(
    pkt: &P,
    saddr: Ipv4,
    daddr: Ipv4,
    ip_len: u16,
    known: Option<Hop>,
) -> (Option<Out>, Hop) {
    let hop = match known {
        Some(hop) => hop,
        None => lookup(pkt, saddr, daddr, ip_len),
    };
    (decide(pkt, hop), hop)
}

/// The hop cached in `ct`, if it was looked up this second.
#[inline(always)]
pub fn cached_hop(ct: &CtValue, now: u32) -> Option<Hop> {
    if ct.route_flags & route_flags::CACHED == 0 || ct.route_at != now {
        return None;
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&ct.route_macs[..6]);
    src.copy_from_slice(&ct.route_macs[6..]);
    Some(Hop {
        ifindex: ct.route_ifindex,
        macs: (ct.route_flags & route_flags::MACS != 0).then_some((dst, src)),
    })
}

/// Records `hop` in a conntrack value being built.
#[inline(always)]
pub fn store(ct: &mut CtValue, hop: Hop, now: u32) {
    ct.route_flags = route_flags::CACHED;
    ct.route_ifindex = hop.ifindex;
    ct.route_at = now;
    if let Some((dst, src)) = hop.macs {
        ct.route_flags |= route_flags::MACS;
        ct.route_macs[..6].copy_from_slice(&dst);
        ct.route_macs[6..].copy_from_slice(&src);
    }
}

/// Plans a packet of a tracked flow, from the entry's cached hop when it is from this second.
#[inline(always)]
pub fn plan_cached<P: Packet>(
    pkt: &P,
    ct: *mut CtValue,
    saddr: Ipv4,
    daddr: Ipv4,
    ip_len: u16,
    now: u32,
) -> Option<Out> {
    // SAFETY: `ct` points into the map value; fields are read and written one by one.
    let cur = unsafe { &mut *ct };
    if let Some(hop) = cached_hop(cur, now) {
        return decide(pkt, hop);
    }
    let hop = lookup(pkt, saddr, daddr, ip_len);
    if stats::live() {
        store(cur, hop, now);
    }
    decide(pkt, hop)
}
