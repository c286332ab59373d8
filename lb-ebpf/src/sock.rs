//! Socket-level load balancing (cgroup hooks): a TCP `connect()` to a ClusterIP is pointed at a
//! backend before the first packet exists, so the connection's packets carry the backend's
//! address end to end and need no NAT and no conntrack entry. `getpeername()` still reports the
//! ClusterIP, from a record in the slot of the socket's cookie (`maps::SOCK`). What this does
//! not cover falls through to the tc path untouched: UDP (its flows re-select when a backend
//! leaves, which a connected socket could not), session affinity (needs the client address,
//! unknown before the route is chosen), non-ClusterIP frontends, services without backends (tc
//! drops and counts them).

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use lb_common::{SockXlate, counter, hook, kind, proto};

use crate::{
    lookup,
    maps::{SOCK, config, sock_slot},
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
    if config().is_none() {
        return;
    }
    let vip = sa.user_ip4.to_ne_bytes();
    let vip_port_be = sa.user_port as u16;
    let port = u16::from_be(vip_port_be);
    if !lookup::may_be_frontend(vip, port, proto::TCP) {
        return;
    }
    let Some((svc, _)) = lookup::frontend(vip, port, proto::TCP, hook::POD) else {
        return;
    };
    if svc.kind != kind::CLUSTER_IP || svc.affinity_timeout != 0 || svc.lut_size == 0 {
        return;
    }
    let Some((_, be)) = lookup::slot_backend(&svc, lookup::pick_slot(&svc)) else {
        return;
    };
    // SAFETY: the helper takes this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // (Every slot exists; the check is the verifier's.)
    let Some(slot) = SOCK.get_ptr_mut(sock_slot(cookie)) else {
        return;
    };
    let mut rec = SockXlate {
        tag: 0,
        vip,
        backend: be.addr,
        vip_port_be,
        backend_port_be: be.port.to_be(),
        svc_id: svc.svc_id,
    };
    rec.seal(cookie);
    // SAFETY: a slot of the map value array; a later socket may take it over at any time.
    unsafe { *slot = rec };
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
    // SAFETY: the helper takes this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let Some(rec) = SOCK.get(sock_slot(cookie)).copied() else {
        return;
    };
    // Only the socket that wrote the slot (a record torn by a concurrent writer or read while
    // another socket takes the slot over names nobody), and only while it is connected to that
    // backend.
    if rec.cookie() == cookie
        && sa.user_ip4 == u32::from_ne_bytes(rec.backend)
        && sa.user_port as u16 == rec.backend_port_be
    {
        sa.user_ip4 = u32::from_ne_bytes(rec.vip);
        sa.user_port = u32::from(rec.vip_port_be);
    }
}
