//! The benchmarks' kernel object (`cargo xtask bench datapath`), never loaded by the agent:
//! the floors each hook's figures are read against, and the live-frames generator and sink of
//! the XDP throughput run. Built next to the product object from the same packet access and
//! parser (`lb_ebpf::{ctx, parse}`); it has no maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::hook;
use lb_ebpf::{
    ctx::{self, TcPacket, XdpPacket},
    parse,
};

/// tcx "next", as the datapath's tc programs return it.
const TCX_NEXT: i32 = -1;

/// Benchmark floor (`cargo xtask bench datapath`): parses like the real programs, then passes.
/// Never attached.
#[classifier]
pub fn xlb_floor(ctx: TcContext) -> i32 {
    let parsed = parse::parse(&mut TcPacket::<{ hook::POD }> { ctx }).is_ok();
    if core::hint::black_box(parsed) {
        TCX_NEXT
    } else {
        TCX_NEXT - 1
    }
}

/// XDP benchmark floor: parses like `xlb_xdp`, swaps the Ethernet addresses and transmits
/// back (the least a forwarder does).
#[xdp]
pub fn xlb_floor_xdp(ctx: XdpContext) -> u32 {
    let mut pkt = XdpPacket { ctx };
    if parse::parse(&mut pkt).is_err() {
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ctx::ptr_at::<XdpPacket, [u8; 12]>(&pkt, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let eth = unsafe { &mut *eth };
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[..6]);
    eth.copy_within(6..12, 0);
    eth[6..].copy_from_slice(&dst);
    xdp_action::XDP_TX
}

/// Headers the generator writes into every frame (set by the benchmark at load time): live
/// frames are recycled with whatever the round trip left in them.
#[unsafe(no_mangle)]
static GEN_TEMPLATE: aya_ebpf::Global<[u8; GEN_TEMPLATE_LEN]> =
    aya_ebpf::Global::new([0; GEN_TEMPLATE_LEN]);
const GEN_TEMPLATE_LEN: usize = 64;

/// Packet generator for the XDP throughput benchmark: run with BPF_PROG_TEST_RUN in live-frames
/// mode on a client's device, it restores the test frame's headers and transmits it.
#[xdp]
pub fn xlb_gen(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket { ctx };
    if let Some(head) = ctx::ptr_at::<XdpPacket, [u8; GEN_TEMPLATE_LEN]>(&pkt, 0) {
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe { head.write_unaligned(GEN_TEMPLATE.load()) };
    }
    xdp_action::XDP_TX
}

/// Sink of the XDP throughput benchmark: drops what comes back to the generator's device.
#[xdp]
pub fn xlb_sink(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}
