//! Socket-level load balancing (cgroup hooks): a TCP `connect()` to a ClusterIP is pointed at a
//! backend before the first packet exists, so the connection's packets carry the backend's
//! address end to end and need no NAT and no conntrack entry. `getpeername()` still reports the
//! ClusterIP, from a record in the slot of the socket's cookie (`maps::SOCK`). What this does
//! not cover falls through to the tc path untouched: UDP (its flows re-select when a backend
//! leaves, which a connected socket could not), session affinity of pods (it needs the client
//! address, unknown before the route is chosen; tc applies it on the pod's packets),
//! non-ClusterIP frontends, services without backends (tc rejects them). Host-network sockets
//! never cross a pod device, so their session affinity is applied here, keyed by the node's
//! address (the client address every such connection has).

use aya_ebpf::{
    Global,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::{AffinityKey, Backend, ServiceValue, SockXlate, counter, hook, kind, proto};

use crate::{
    conntrack, lookup,
    maps::{AFFINITY, SOCK, config, sock_slot},
    stats::{self, SvcCounter},
};

/// The cookie of the agent's network namespace (the node's host network), set at load; 0:
/// unknown, host-network affinity is then left alone.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: Global<u64> = Global::new(0);

/// The backend for a host-network socket's connect to an affinity service: the one its client
/// (this node, `client`) had within the timeout, else a new pick, recorded.
#[inline(always)]
fn affine(svc: &ServiceValue, client: [u8; 4]) -> Option<Backend> {
    let key = AffinityKey {
        svc_id: svc.svc_id,
        client,
    };
    // The fallback pick first, right after the check that its table is not empty (after a
    // helper call the compiler could not prove it, and would keep a division-by-zero panic
    // the verifier refuses).
    if svc.lut_size == 0 {
        return None;
    }
    let slot = lookup::pick_slot(svc);
    let now = conntrack::now_secs();
    let mut chosen = None;
    // SAFETY: copied out at once.
    if let Some(aff) = unsafe { AFFINITY.get(key) }.copied()
        && aff.last_used.wrapping_add(svc.affinity_timeout) >= now
        && let Some(be) = lookup::backend(aff.backend_id, svc.svc_id)
        && be.flags & lb_common::backend_flags::DRAINING == 0
    {
        stats::count(counter::AFFINITY_HIT);
        chosen = Some((aff.backend_id, be));
    }
    let (id, be) = match chosen {
        Some(c) => c,
        None => lookup::slot_backend(svc, slot)?,
    };
    lookup::touch_affinity(&key, id, now);
    Some(be)
}

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
    let Some(cfg) = config() else {
        return;
    };
    let vip = sa.user_ip4.to_ne_bytes();
    let vip_port_be = sa.user_port as u16;
    let port = u16::from_be(vip_port_be);
    if !lookup::may_be_frontend(vip, port, proto::TCP) {
        return;
    }
    let Some((svc, _)) = lookup::frontend(vip, port, proto::TCP, hook::POD) else {
        return;
    };
    if svc.kind != kind::CLUSTER_IP || svc.lut_size == 0 {
        return;
    }
    let be = if svc.affinity_timeout == 0 {
        lookup::slot_backend(&svc, lookup::pick_slot(&svc)).map(|(_, be)| be)
    } else {
        let host = HOST_NETNS_COOKIE.load();
        // SAFETY: the helper takes this program type's context.
        if host == 0 || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != host {
            return;
        }
        affine(&svc, cfg.snat_addr)
    };
    let Some(be) = be else {
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
