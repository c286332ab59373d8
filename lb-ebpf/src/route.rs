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
//! second (route changes take effect within a second; packets in between skip the FIB), and
//! whenever a packet is bigger than what the cached hop is known to carry (`route_mtu`) or
//! is a GSO aggregate: those go through the FIB's size check. A packet too big for its next
//! hop (`how::TOO_BIG`) gets an ICMP fragmentation-needed (IPv6: packet too big) from tc when
//! it has DF set (every IPv6 packet), and is left to the stack (which fragments it) otherwise.
//!
//! At tc the FIB is asked without a length (`tot_len` 0), so the kernel checks the skb
//! itself, GSO aggregates by their segment size; XDP frames are linear and give their length.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};
use lb_common::{CtValue, dev_flags, device_slot, route_flags};

use crate::{
    ctx::Packet,
    family::Family,
    maps::{DEVICES, SCRATCH},
    stats,
};

/// How a translated packet leaves (`how`), with what that needs. A struct whose every field
/// is always written, not an enum: LLVM packs an enum's payload into registers, and for a
/// variant without one those bytes are whatever the register held; the verifier refuses to
/// spill an undefined register or to shift one that held a pointer.
#[derive(Clone, Copy)]
pub struct Out {
    /// `how::*`.
    pub how: u8,
    /// `REDIRECT`: the egress device.
    pub ifindex: u32,
    /// `TX`: the Ethernet source then destination to write.
    pub macs: [u8; 12],
}

/// `Out::how`.
pub mod how {
    /// Let the stack route it (destination is this node, or no forwarding decision).
    pub const STACK: u8 = 0;
    /// tc: `bpf_redirect_neigh` to `ifindex`.
    pub const REDIRECT: u8 = 1;
    /// XDP: rewrite the MAC addresses and transmit on the same device.
    pub const TX: u8 = 2;
    /// Too big for the next hop, whose MTU `too_big_mtu` gives (tc: answer an ICMP error or
    /// let the stack fragment it).
    pub const TOO_BIG: u8 = 3;
}

impl Out {
    #[inline(always)]
    pub const fn of(how: u8) -> Self {
        Self {
            how,
            ifindex: 0,
            macs: [0; 12],
        }
    }

    /// Forwarded (redirected or transmitted), as opposed to handed to the stack.
    #[inline(always)]
    pub fn routed(&self) -> bool {
        self.how == how::REDIRECT || self.how == how::TX
    }
}

/// The next hop's MTU of the last `how::TOO_BIG` this CPU planned.
#[inline(always)]
pub fn too_big_mtu() -> u16 {
    // SAFETY: this CPU's slot; written by the same program run.
    SCRATCH
        .get_ptr_mut(0)
        .map_or(0, |s| unsafe { (*s).too_big_mtu })
}

/// A FIB answer worth remembering.
#[derive(Clone, Copy)]
pub struct Hop {
    /// Egress device; 0 when the stack must deliver (local destination, no route).
    ifindex: u32,
    /// Destination and source MACs when the neighbour is resolved.
    macs: Option<([u8; 6], [u8; 6])>,
    /// The largest IP packet known to fit this hop (tc: the device's MTU; XDP: the length of
    /// the frame looked up); 0: unknown.
    mtu: u16,
    /// The packet looked up was too big: `mtu` is the next hop's MTU. Never cached.
    too_big: bool,
}

#[inline(always)]
fn lookup<P: Packet, A: Family>(pkt: &P, saddr: &A, daddr: &A, ip_len: u16) -> Hop {
    const NONE: Hop = Hop {
        ifindex: 0,
        macs: None,
        mtu: 0,
        too_big: false,
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return NONE;
    };
    // SAFETY: this CPU's slot, used by this program run only; a plain-data struct the helper
    // fills, zero is a valid initial state.
    let p = unsafe {
        let p = &raw mut (*scratch).fib;
        // Zeroed word by word: `write(zeroed())` becomes a call to `memset`, a byte loop the
        // verifier walks 64 times at every lookup of every path.
        let words = p.cast::<u64>();
        for i in 0..core::mem::size_of::<FibParams>() / 8 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        &mut *p
    };
    p.family = A::AF;
    p.ifindex = pkt.ifindex();
    // tc: no length, so the kernel checks the skb (GSO-aware) and returns the device's MTU.
    p.__bindgen_anon_1.tot_len = if P::DEFERS { ip_len } else { 0 };
    A::fib_addrs(p, saddr, daddr);
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed; the context is the program's.
    let rc = unsafe {
        bpf_fib_lookup(
            pkt.ctx_ptr(),
            core::ptr::from_mut(p),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    // SAFETY: the union's MTU member is what the helper wrote back.
    let mtu_result = unsafe { p.__bindgen_anon_1.mtu_result };
    let mtu = if P::DEFERS { ip_len } else { mtu_result };
    match rc {
        // Back out of the device it came in on, which lost XDP_TX frames: no MACs, so XDP
        // leaves the flow to tc (which needs none).
        BPF_FIB_LKUP_RET_SUCCESS if p.ifindex == pkt.ifindex() && tx_fallback(p.ifindex) => Hop {
            ifindex: p.ifindex,
            macs: None,
            mtu,
            too_big: false,
        },
        BPF_FIB_LKUP_RET_SUCCESS => Hop {
            ifindex: p.ifindex,
            macs: Some((p.dmac, p.smac)),
            mtu,
            too_big: false,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Hop {
            ifindex: p.ifindex,
            macs: None,
            mtu,
            too_big: false,
        },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Hop {
            ifindex: p.ifindex,
            macs: None,
            mtu: mtu_result,
            too_big: true,
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
    if hop.too_big {
        // XDP cannot answer with an error: tc does.
        if let Some(s) = SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, used by this program run only.
            unsafe { (*s).too_big_mtu = hop.mtu };
        }
        return (!P::DEFERS).then_some(Out::of(how::TOO_BIG));
    }
    if P::DEFERS {
        return match hop.macs {
            Some((dst, src)) if hop.ifindex == pkt.ifindex() => {
                let mut o = Out::of(how::TX);
                o.macs[..6].copy_from_slice(&src);
                o.macs[6..].copy_from_slice(&dst);
                Some(o)
            }
            _ => None,
        };
    }
    Some(if hop.ifindex != 0 {
        Out {
            how: how::REDIRECT,
            ifindex: hop.ifindex,
            macs: [0; 12],
        }
    } else {
        Out::of(how::STACK)
    })
}

/// Plans a packet that has no conntrack entry yet (from `known` when a hop of this second is
/// at hand); the hop goes into the entry (`store`).
#[inline(always)]
pub fn plan<P: Packet, A: Family>(
    pkt: &P,
    saddr: &A,
    daddr: &A,
    ip_len: u16,
    known: Option<Hop>,
) -> (Option<Out>, Hop) {
    let hop = match known {
        Some(hop) => hop,
        None => lookup(pkt, saddr, daddr, ip_len),
    };
    (decide(pkt, hop), hop)
}

/// The hop cached in `ct`, if it was looked up this second and is known to carry a packet
/// of `ip_len` bytes (`gso`: an aggregate, whose size only the FIB's check judges).
#[inline(always)]
pub fn cached_hop<A: Family>(ct: &CtValue<A>, now: u32, ip_len: u16, gso: bool) -> Option<Hop> {
    if ct.route_flags & route_flags::CACHED == 0 || ct.route_at != now {
        return None;
    }
    if ct.route_ifindex != 0 && (gso || ip_len > ct.route_mtu) {
        return None;
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&ct.route_macs[..6]);
    src.copy_from_slice(&ct.route_macs[6..]);
    Some(Hop {
        ifindex: ct.route_ifindex,
        macs: (ct.route_flags & route_flags::MACS != 0).then_some((dst, src)),
        mtu: ct.route_mtu,
        too_big: false,
    })
}

/// Records `hop` in a conntrack value being built (a too-big answer is not a route: kept
/// out, so the next packet asks again).
#[inline(always)]
pub fn store<A: Family>(ct: &mut CtValue<A>, hop: Hop, now: u32) {
    if hop.too_big {
        ct.route_flags = 0;
        return;
    }
    ct.route_flags = route_flags::CACHED;
    ct.route_ifindex = hop.ifindex;
    ct.route_at = now;
    ct.route_mtu = hop.mtu;
    if let Some((dst, src)) = hop.macs {
        ct.route_flags |= route_flags::MACS;
        ct.route_macs[..6].copy_from_slice(&dst);
        ct.route_macs[6..].copy_from_slice(&src);
    }
}

/// Plans a packet of a tracked flow, from the entry's cached hop when it is from this second.
#[inline(always)]
pub fn plan_cached<P: Packet, A: Family>(
    pkt: &P,
    ct: *mut CtValue<A>,
    saddr: &A,
    daddr: &A,
    ip_len: u16,
    now: u32,
) -> Option<Out> {
    // SAFETY: `ct` points into the map value; fields are read and written one by one.
    let cur = unsafe { &mut *ct };
    if let Some(hop) = cached_hop(cur, now, ip_len, pkt.is_gso()) {
        return decide(pkt, hop);
    }
    let hop = lookup(pkt, saddr, daddr, ip_len);
    if stats::live() {
        store(cur, hop, now);
    }
    decide(pkt, hop)
}
