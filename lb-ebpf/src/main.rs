//! xlb datapath entry points. Each is thin: build the hook's packet context, run the shared
//! pipeline (`lb::process`) or one of its stages (tail-called by it, see `lb_common::stage`),
//! map the verdict to the hook's return code.
#![no_std]
// `atomic_xadd`: the BPF target has no read-modify-write atomic types, only the instruction.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only way to the BPF atomic add"
)]
#![no_main]

mod conntrack;
mod device;
mod family;
mod icmp;
mod lb;
mod lookup;
mod maps;
mod nat;
mod route;
mod sock;
mod stats;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect_neigh,
    macros::{cgroup_sock_addr, classifier, raw_tracepoint, xdp},
    programs::{RawTracePointContext, SockAddrContext, TcContext, XdpContext},
};
use lb_common::hook;
// Shared with the benchmarks' object (`bench.rs`); as modules of this crate's root, so the
// datapath names them `crate::ctx` and `crate::parse`.
use lb_ebpf::{ctx, parse};

use crate::{
    ctx::{TcPacket, XdpPacket},
    verdict::Verdict,
};

/// tcx "next": let later programs and the stack see the (translated) packet.
const TCX_NEXT: i32 = -1;

/// The XDP action of a verdict (XDP never plans a redirect nor an error: only tc does).
#[inline(always)]
fn xdp_code(v: Verdict) -> u32 {
    let code = match v {
        Verdict::Pass | Verdict::Redirect(_) | Verdict::Error { .. } => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
    };
    stats::trace(|t| t.verdict = code as i32);
    code
}

/// The tc return code of a verdict.
#[inline(always)]
fn tc_code(v: Verdict) -> i32 {
    let code = match v {
        Verdict::Pass | Verdict::Tx => TCX_NEXT,
        // (Stages turn an error into the error stage's verdict: one left is dropped.)
        Verdict::Drop | Verdict::Error { .. } => TC_ACT_SHOT,
        // SAFETY: helper without pointer arguments (no neighbour parameters given).
        Verdict::Redirect(ifindex) => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
    };
    stats::trace(|t| t.verdict = code);
    code
}

/// tc ingress on pod-facing devices: pods → Services, and replies from local backends.
#[classifier]
pub fn xlb_pod_ingress(ctx: TcContext) -> i32 {
    tc_code(lb::process(&mut TcPacket::<{ hook::POD }> { ctx }))
}

/// tc ingress on uplinks: frontends and replies that XDP passed up or could not handle.
#[classifier]
pub fn xlb_host_ingres(ctx: TcContext) -> i32 {
    tc_code(lb::process(&mut TcPacket::<{ hook::HOST }> { ctx }))
}

/// XDP on uplinks: north-south frontends and their replies, before the stack.
#[xdp]
pub fn xlb_xdp(ctx: XdpContext) -> u32 {
    xdp_code(lb::process(&mut XdpPacket { ctx }))
}

/// Declares a hook's stage programs (tail-called by its entry program).
macro_rules! stages {
    (tc $hook:expr => $($name:ident: $stage:path;)*) => { $(
        /// A stage of the tc pipeline (see `lb_common::stage`).
        #[classifier]
        pub fn $name(ctx: TcContext) -> i32 {
            tc_code($stage(&mut TcPacket::<{ $hook }> { ctx }))
        }
    )* };
    (xdp => $($name:ident: $stage:path;)*) => { $(
        /// A stage of the XDP pipeline (see `lb_common::stage`).
        #[xdp]
        pub fn $name(ctx: XdpContext) -> u32 {
            xdp_code($stage(&mut XdpPacket { ctx }))
        }
    )* };
}

stages!(tc hook::POD =>
    xlb_pod_front: lb::front4;
    xlb_pod_back: lb::back4;
    xlb_pod_icmp: lb::icmp_stage;
    xlb_pod_error: lb::error_stage;
    xlb_pod_front6: lb::front6;
    xlb_pod_back6: lb::back6;
    xlb_pod_new6: lb::new6;
);
stages!(tc hook::HOST =>
    xlb_host_front: lb::front4;
    xlb_host_back: lb::back4;
    xlb_host_icmp: lb::icmp_stage;
    xlb_host_error: lb::error_stage;
    xlb_host_front6: lb::front6;
    xlb_host_back6: lb::back6;
    xlb_host_new6: lb::new6;
);
stages!(xdp =>
    xlb_xdp_front: lb::front4;
    xlb_xdp_back: lb::back4;
    xlb_xdp_icmp: lb::icmp_stage;
    xlb_xdp_front6: lb::front6;
    xlb_xdp_back6: lb::back6;
    xlb_xdp_new6: lb::new6;
);

/// Declares the cgroup socket programs: `name: attach type => handler;`. Each lets the call
/// proceed (returns 1: to the backend, if translated).
macro_rules! sock_hooks {
    ($($(#[$doc:meta])* $name:ident: $kind:ident => $hook:path;)*) => { $(
        $(#[$doc])*
        #[cgroup_sock_addr($kind)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            $hook(&ctx);
            1
        }
    )* };
}

sock_hooks! {
    /// cgroup connect4: TCP connects to a ClusterIP go straight to a backend (socket-level LB).
    xlb_connect4: connect4 => sock::connect4;
    /// cgroup getpeername4: sockets translated at connect() report the ClusterIP as their peer.
    xlb_peername4: getpeername4 => sock::getpeername4;
    /// cgroup sendmsg4: a host-network UDP datagram to a ClusterIP goes to a backend.
    xlb_sendmsg4: sendmsg4 => sock::sendmsg4;
    /// cgroup recvmsg4: replies to those datagrams show the ClusterIP as their source.
    xlb_recvmsg4: recvmsg4 => sock::recvmsg4;
    /// cgroup connect6: as connect4, for IPv6 sockets (IPv6 ClusterIPs and IPv4-mapped dials).
    xlb_connect6: connect6 => sock::connect6;
    /// cgroup getpeername6: sockets translated by connect6 report the ClusterIP.
    xlb_peername6: getpeername6 => sock::getpeername6;
    /// cgroup sendmsg6: a host-network IPv6 UDP datagram to a ClusterIP goes to a backend.
    xlb_sendmsg6: sendmsg6 => sock::sendmsg6;
    /// cgroup recvmsg6: replies to those datagrams show the ClusterIP as their source.
    xlb_recvmsg6: recvmsg6 => sock::recvmsg6;
}

/// Raw tracepoint `xdp_bulk_tx`: counts frames an uplink's XDP_TX could not send.
#[raw_tracepoint(tracepoint = "xdp_bulk_tx")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya macro passes the context by value"
)]
pub fn xlb_txerr_bulk(ctx: RawTracePointContext) -> i32 {
    device::bulk_tx(&ctx);
    0
}

/// Raw tracepoint `xdp_exception`: counts an XDP_TX a driver refused.
#[raw_tracepoint(tracepoint = "xdp_exception")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya macro passes the context by value"
)]
pub fn xlb_txerr_exc(ctx: RawTracePointContext) -> i32 {
    device::exception(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}
