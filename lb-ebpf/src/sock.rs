//! Socket-level load balancing (cgroup hooks): a TCP `connect()` to a ClusterIP is pointed at a
//! backend before the first packet exists, so the connection's packets carry the backend's
//! address end to end and need no NAT and no conntrack entry. `getpeername()` still reports the
//! ClusterIP. What this does not cover falls through to the tc path untouched: UDP (its flows
//! re-select when a backend leaves, which a connected socket could not), session affinity (needs
//! the client address, unknown before the route is chosen), non-ClusterIP frontends, services
//! without backends (tc drops and counts them).

use aya_ebpf::programs::SockAddrContext;
use lb_common::{SockXlate, counter, hook, kind, proto};

use crate::{
    lookup,
    maps::{CONFIG, SOCK},
    stats::{self, SvcCounter},
};

/// `bpf_sock_addr::protocol` of TCP.
const IPPROTO_TCP: u32 = proto::TCP as u32;

/// cgroup connect4: translates a TCP connect to a ClusterIP. Never refuses the connect.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) {
    // SAFETY: the context the kernel passed; fields are read and written one by one.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return;
    }
    match CONFIG.get(0) {
        Some(cfg) if cfg.layout_version != 0 => {}
        _ => return,
    }
    let vip = sa.user_ip4.to_ne_bytes();
    let vip_port_be = sa.user_port as u16;
    let Some((svc, _)) = lookup::frontend(vip, u16::from_be(vip_port_be), proto::TCP, hook::POD)
    else {
        return;
    };
    if svc.kind != kind::CLUSTER_IP || svc.affinity_timeout != 0 || svc.lut_size == 0 {
        return;
    }
    let Some((_, be)) = lookup::slot_backend(&svc, lookup::random_slot(&svc)) else {
        return;
    };
    let mut rec = SockXlate {
        vip,
        backend: be.addr,
        vip_port_be,
        backend_port_be: be.port.to_be(),
        svc_id: svc.svc_id,
    };
    // Without the record getpeername() could not report the ClusterIP: leave it to tc then.
    // SAFETY: `ctx.sock_addr->sk` is the socket being connected (never null in connect4).
    let stored = unsafe { SOCK.get_or_insert_ptr_mut(ctx, Some(&mut rec)) };
    if stored.is_null() {
        return;
    }
    // SAFETY: socket storage of this socket, owned by this connect() call.
    unsafe { *stored = rec };
    sa.user_ip4 = u32::from_ne_bytes(be.addr);
    sa.user_port = u32::from(rec.backend_port_be);
    stats::count(counter::SOCK_XLATE);
    stats::svc(svc.svc_id, SvcCounter::NewFlow, 0);
}

/// cgroup getpeername4: a socket connected to a backend by `connect4` names the ClusterIP.
#[inline(always)]
pub fn getpeername4(ctx: &SockAddrContext) {
    // SAFETY: as in `connect4`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return;
    }
    // SAFETY: lookup only (no create) in this socket's storage.
    let rec = unsafe { SOCK.get_ptr_mut(ctx) };
    if rec.is_null() {
        return;
    }
    // SAFETY: non-null socket storage of this socket.
    let rec = unsafe { *rec };
    if sa.user_ip4 == u32::from_ne_bytes(rec.backend) && sa.user_port as u16 == rec.backend_port_be
    {
        sa.user_ip4 = u32::from_ne_bytes(rec.vip);
        sa.user_port = u32::from(rec.vip_port_be);
    }
}
