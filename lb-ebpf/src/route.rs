//! Delivery of translated packets without the kernel's input route lookup.
//!
//! A translated packet may carry one of this node's own addresses as its source (SNAT,
//! replies from a NodePort): handed to the stack on ingress it would be dropped as a martian.
//! So the next hop comes from `bpf_fib_lookup` on the translated addresses: tc redirects with
//! `bpf_redirect_neigh` (which also resolves the neighbour); XDP transmits with `XDP_TX` when
//! the packet leaves through the device it came in on, and otherwise leaves the packet
//! untouched (no state written) for the tc program on the same device to finish.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
};
use lb_common::Ipv4;

use crate::ctx::Packet;

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

/// Decides how the packet, once translated to `saddr → daddr`, leaves this hook. `None` (XDP
/// only) means: do not translate here, the tc program will.
#[inline(always)]
pub fn plan<P: Packet>(pkt: &P, saddr: Ipv4, daddr: Ipv4, ip_len: u16) -> Option<Out> {
    // SAFETY: a plain-data struct the helper fills; zero is a valid initial state.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.ifindex = pkt.ifindex();
    p.__bindgen_anon_1.tot_len = ip_len;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(saddr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(daddr);
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed; the context is the program's.
    let rc = unsafe {
        bpf_fib_lookup(
            pkt.ctx_ptr(),
            &raw mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    if P::DEFERS {
        if rc == BPF_FIB_LKUP_RET_SUCCESS && p.ifindex == pkt.ifindex() {
            return Some(Out::Tx(p.smac, p.dmac));
        }
        return None;
    }
    Some(match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Out::Redirect(p.ifindex),
        _ => Out::Stack,
    })
}
