//! XDP_TX failures, counted where the kernel reports them: the raw tracepoints `xdp_bulk_tx`
//! (a driver's bulk queue flush; veth's XDP_TX towards a peer that has no XDP program ends
//! there) and `xdp_exception` (a driver refusing one frame). Each failure on an uplink of this
//! agent is counted in its `xlb_devices` slot and globally (`xdp_tx_error`), and the device's
//! `TX_FALLBACK` flag makes XDP leave its flows to tc from then on (`route::lookup`).
//!
//! Tracepoints are global: they fire for every device of every network namespace. The
//! device's ifindex and its namespace are read from `struct net_device` at offsets the loader
//! takes from the kernel's BTF (no CO-RE in Rust), and only this agent's namespace counts.

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::RawTracePointContext,
};
use lb_common::{dev_flags, device_slot, drop_reason};

use crate::{maps::DEVICES, stats};

/// `offsetof(struct net_device, ifindex)`, set by the loader (0: unknown, nothing counted).
#[unsafe(no_mangle)]
static NETDEV_IFINDEX_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct net_device, nd_net)` (a `possible_net_t`, whose `net` pointer is first).
#[unsafe(no_mangle)]
static NETDEV_NET_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
#[unsafe(no_mangle)]
static NET_INUM_OFF: Global<u32> = Global::new(0);
/// The inode number of the agent's network namespace.
#[unsafe(no_mangle)]
static NETNS_INUM: Global<u32> = Global::new(0);

/// `XDP_TX` in `enum xdp_action`.
const XDP_TX: u64 = 3;

/// The ifindex of `dev` (a `struct net_device *`) if it is in this agent's namespace.
#[inline(always)]
fn our_ifindex(dev: u64) -> Option<u32> {
    let ifx_off = NETDEV_IFINDEX_OFF.load();
    if ifx_off == 0 || dev == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one only fails the read.
    let net: u64 = unsafe {
        bpf_probe_read_kernel((dev + u64::from(NETDEV_NET_OFF.load())) as *const u64).ok()?
    };
    // SAFETY: as above.
    let inum: u32 = unsafe {
        bpf_probe_read_kernel((net + u64::from(NET_INUM_OFF.load())) as *const u32).ok()?
    };
    if inum != NETNS_INUM.load() {
        return None;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((dev + u64::from(ifx_off)) as *const u32).ok() }
}

/// Records `frames` lost by XDP_TX on device `dev`, if it is one of this agent's uplinks.
#[inline(always)]
fn tx_failed(dev: u64, frames: u64) {
    let Some(ifindex) = our_ifindex(dev) else {
        return;
    };
    let Some(slot) = DEVICES.get_ptr_mut(device_slot(ifindex)) else {
        return;
    };
    // SAFETY: a slot of the array map; other CPUs may update it at once (the counter with an
    // atomic add, the flag and the time with plain stores of the same values).
    unsafe {
        if (*slot).ifindex != ifindex {
            return;
        }
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*slot).tx_errors,
            frames,
        );
        (*slot).flags = dev_flags::TX_FALLBACK;
        // Tracing programs may not read the coarse clock conntrack uses; the same clock.
        (*slot).last_error = (bpf_ktime_get_ns() / 1_000_000_000) as u32;
    }
    stats::count_n(
        lb_common::counter::DROP_BASE + drop_reason::XDP_TX_ERROR,
        frames,
    );
}

/// `xdp_bulk_tx(const struct net_device *dev, int sent, int drops, int err)`.
#[inline(always)]
pub fn bulk_tx(ctx: &RawTracePointContext) {
    let drops: u64 = ctx.arg(2);
    let drops = drops as u32 as i32;
    if drops > 0 {
        tx_failed(ctx.arg(0), drops as u64);
    }
}

/// `xdp_exception(const struct net_device *dev, const struct bpf_prog *xdp, u32 act)`.
#[inline(always)]
pub fn exception(ctx: &RawTracePointContext) {
    let act: u64 = ctx.arg(2);
    if u64::from(act as u32) == XDP_TX {
        tx_failed(ctx.arg(0), 1);
    }
}
