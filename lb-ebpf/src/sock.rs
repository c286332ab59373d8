//! Socket-level load balancing (cgroup hooks): a TCP `connect()` to a ClusterIP is pointed at a
//! backend before the first packet exists, so the connection's packets carry the backend's
//! address end to end and need no NAT and no conntrack entry. `getpeername()` still reports the
//! ClusterIP, from a record in the slot of the socket's cookie (`maps::SOCK`).
//!
//! UDP is translated here for host-network sockets only (they never cross a pod device, so
//! tc never sees them leave): a connected socket at `connect()`, every datagram of an
//! unconnected one at `sendmsg()` (the same backend for a socket while its table keeps it: the
//! slot comes from the socket's cookie); `recvmsg()` gives replies the ClusterIP as their
//! source (`maps::SOCK_REV`). A connected socket whose backend leaves is aborted by the agent
//! (`sock_diag` destroy), so it never keeps talking to a dead backend. Pods' UDP stays on the
//! tc path, whose flows re-select when a backend leaves.
//!
//! Host-network sockets also reach NodePorts (on a node address and on `127.0.0.1`, as
//! kube-proxy's `localhostNodePorts`), LoadBalancer IPs and externalIPs here: their packets
//! would otherwise go to the local stack or out of the node, past every xlb hook. What the
//! socket dialled is what `getpeername()` and `recvmsg()` report.
//!
//! IPv6 sockets are translated the same way (connect6, getpeername6, sendmsg6, recvmsg6) with
//! their own records (`maps::SOCK6`, `maps::SOCK_REV6`); an IPv6 socket dialling an IPv4
//! ClusterIP as `::ffff:a.b.c.d` (a dual-stack socket) uses the IPv4 services and records and
//! keeps its mapped form in what it reports. `localhostNodePorts` are IPv4 only, as kube-proxy's.
//!
//! Not covered here, left to tc untouched: session affinity of pods (it needs the client
//! address, unknown before the route is chosen; tc applies it on the pod's packets),
//! pods' non-ClusterIP frontends, services without backends (tc rejects them). Host-network sockets'
//! session affinity is applied here, keyed by the node's address (the client address every
//! such connection has).

use aya_ebpf::{
    Global,
    bindings::bpf_sock_addr,
    btf_maps::LruHashMap,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::{
    AffinityKey, Backend, Ipv4, Ipv6, ServiceValue, SockRevKey, SockRevValue, SockXlate, capacity,
    counter, hook, kind, proto, svc_flags,
};

use crate::{
    conntrack,
    family::Family,
    lookup,
    maps::{SOCK, SOCK_REV, SOCK_REV6, SOCK6, config, may_be_backend, sock_slot, sock6_slot},
    stats::{self, SvcCounter},
};

/// The cookie of the agent's network namespace (the node's host network), set at load; 0:
/// unknown, host-network affinity is then left alone.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: Global<u64> = Global::new(0);

/// 1: only host-network sockets are translated (`--socket-lb-scope host`); pods' connects go
/// through tc. Set at load.
#[unsafe(no_mangle)]
static SOCK_HOST_ONLY: Global<u8> = Global::new(0);

/// A reverse-translation map of a family.
type SockRev<A> = LruHashMap<SockRevKey<A>, SockRevValue<A>, { capacity::SOCK_REV as usize }>;

/// What the socket hooks need of an address family: its records.
trait SockFamily: Family {
    /// The record slot of the socket with `cookie` (every slot exists; `None` is the
    /// verifier's check).
    fn record(cookie: u64) -> Option<*mut SockXlate<Self>>;
    /// The addresses host-network sockets' replies are given back.
    fn sock_rev() -> &'static SockRev<Self>;
    /// A loopback address (a NodePort there is the node address's, `localhostNodePorts`).
    fn loopback(addr: &Self) -> bool;
}

impl SockFamily for Ipv4 {
    #[inline(always)]
    fn record(cookie: u64) -> Option<*mut SockXlate<Self>> {
        SOCK.get_ptr_mut(sock_slot(cookie))
    }
    #[inline(always)]
    fn sock_rev() -> &'static SockRev<Self> {
        &SOCK_REV
    }
    #[inline(always)]
    fn loopback(addr: &Self) -> bool {
        addr[0] == 127
    }
}

impl SockFamily for Ipv6 {
    #[inline(always)]
    fn record(cookie: u64) -> Option<*mut SockXlate<Self>> {
        SOCK6.get_ptr_mut(sock6_slot(cookie))
    }
    #[inline(always)]
    fn sock_rev() -> &'static SockRev<Self> {
        &SOCK_REV6
    }
    #[inline(always)]
    fn loopback(_addr: &Self) -> bool {
        // kube-proxy serves NodePorts on IPv4 loopback only.
        false
    }
}

/// Where a hook's context holds the address of family `A`: `user_ip4` (`In4`), `user_ip6`
/// (`In6`), or `user_ip6` as an IPv4-mapped IPv6 address (`Mapped`). The context's words are
/// read and written 4 bytes at a time, the only access the verifier allows to `user_ip6`.
trait Slot<A> {
    fn get(sa: &bpf_sock_addr) -> A;
    fn set(sa: &mut bpf_sock_addr, addr: &A);
}

struct In4;
struct In6;
struct Mapped;

/// Word `i` of `user_ip6` (network order in memory, as the address's bytes).
#[inline(always)]
fn ip6_word(sa: &bpf_sock_addr, i: usize) -> u32 {
    // SAFETY: a field of the context, read as the 4-byte load the verifier requires.
    unsafe { core::ptr::read_volatile(&raw const sa.user_ip6[i & 3]) }
}

#[inline(always)]
fn set_ip6_word(sa: &mut bpf_sock_addr, i: usize, w: u32) {
    // SAFETY: as in `ip6_word`, a 4-byte store.
    unsafe { core::ptr::write_volatile(&raw mut sa.user_ip6[i & 3], w) }
}

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
const MAPPED_WORD: u32 = 0x0000_ffff_u32.to_be();

/// True if `user_ip6` holds an IPv4-mapped address.
#[inline(always)]
fn is_mapped(sa: &bpf_sock_addr) -> bool {
    ip6_word(sa, 0) == 0 && ip6_word(sa, 1) == 0 && ip6_word(sa, 2) == MAPPED_WORD
}

impl Slot<Ipv4> for In4 {
    #[inline(always)]
    fn get(sa: &bpf_sock_addr) -> Ipv4 {
        sa.user_ip4.to_ne_bytes()
    }
    #[inline(always)]
    fn set(sa: &mut bpf_sock_addr, addr: &Ipv4) {
        sa.user_ip4 = u32::from_ne_bytes(*addr);
    }
}

impl Slot<Ipv4> for Mapped {
    #[inline(always)]
    fn get(sa: &bpf_sock_addr) -> Ipv4 {
        ip6_word(sa, 3).to_ne_bytes()
    }
    #[inline(always)]
    fn set(sa: &mut bpf_sock_addr, addr: &Ipv4) {
        // The prefix is already there (the socket dialled a mapped address).
        set_ip6_word(sa, 3, u32::from_ne_bytes(*addr));
    }
}

impl Slot<Ipv6> for In6 {
    #[inline(always)]
    fn get(sa: &bpf_sock_addr) -> Ipv6 {
        let mut a = [0u8; 16];
        for i in 0..4 {
            a[i * 4..i * 4 + 4].copy_from_slice(&ip6_word(sa, i).to_ne_bytes());
        }
        a
    }
    #[inline(always)]
    fn set(sa: &mut bpf_sock_addr, addr: &Ipv6) {
        for i in 0..4 {
            let w = u32::from_ne_bytes([
                addr[i * 4],
                addr[i * 4 + 1],
                addr[i * 4 + 2],
                addr[i * 4 + 3],
            ]);
            set_ip6_word(sa, i, w);
        }
    }
}

/// The backend for a host-network socket's connect to an affinity service: the one its client
/// (this node, `client`) had within the timeout, else a new pick, recorded.
#[inline(always)]
fn affine<A: Family>(svc: &ServiceValue, client: A) -> Option<Backend<A>> {
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
    if let Some(aff) = unsafe { A::affinity().get(key) }.copied()
        && aff.last_used.wrapping_add(svc.affinity_timeout) >= now
        && let Some(be) = lookup::backend::<A>(aff.backend_id, svc.svc_id)
        && be.flags & lb_common::backend_flags::DRAINING == 0
    {
        stats::count(counter::AFFINITY_HIT);
        chosen = Some((aff.backend_id, be));
    }
    let (id, be) = match chosen {
        Some(c) => c,
        None => lookup::slot_backend::<A>(svc, slot)?,
    };
    lookup::touch_affinity(&key, id, now);
    Some(be)
}

/// `bpf_sock_addr::protocol` of TCP and UDP.
const IPPROTO_TCP: u32 = proto::TCP as u32;
const IPPROTO_UDP: u32 = proto::UDP as u32;

/// True for a socket of the node's own network namespace (a host-network process).
#[inline(always)]
fn host_socket(ctx: &SockAddrContext) -> bool {
    let host = HOST_NETNS_COOKIE.load();
    // SAFETY: the helper takes this program type's context.
    host != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == host
}

/// The socket's cookie.
#[inline(always)]
fn cookie_of(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes this program type's context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// The service a socket dialling `addr:port` (network-order port) over `l4` reaches, if it has
/// backends, and whether only host-network sockets are translated for it. A ClusterIP is
/// translated for every socket. NodePorts (on a node address, or on loopback as on the node's
/// address, `Config::snat_addr`), LoadBalancer IPs and externalIPs only for host-network ones:
/// a pod's packets to them cross its device, where tc translates them.
#[inline(always)]
fn service_for<A: SockFamily>(addr: A, port_be: u16, l4: u8) -> Option<(ServiceValue, bool)> {
    let port = u16::from_be(port_be);
    let loopback = A::loopback(&addr);
    // (The configuration is read only for loopback: every other connect and datagram skips it.)
    let key_addr = if loopback {
        A::snat_addr(config()?)
    } else {
        addr
    };
    if !lookup::may_be_frontend(key_addr, port, l4) {
        return None;
    }
    let (svc, _) = lookup::frontend(key_addr, port, l4, hook::POD)?;
    if svc.lut_size == 0 || (loopback && svc.kind != kind::NODE_PORT) {
        return None;
    }
    // loadBalancerSourceRanges are checked on packets (tc), which know the client address;
    // a socket does not yet, so such frontends are not translated here.
    if svc.kind != kind::CLUSTER_IP && svc.flags & svc_flags::SRC_RANGES != 0 {
        return None;
    }
    Some((svc, svc.kind != kind::CLUSTER_IP))
}

/// Records that the socket `cookie` sends to `be` for `svc`'s `vip:port`: its replies from
/// `be` are given the ClusterIP back (`recvmsg`).
#[inline(always)]
fn remember_reply<A: SockFamily>(
    cookie: u64,
    be: &Backend<A>,
    vip: A,
    vip_port_be: u16,
    svc_id: u32,
) {
    let key = SockRevKey {
        cookie,
        backend: be.addr,
        backend_port_be: be.port.to_be(),
        _pad: 0,
    };
    let value = SockRevValue {
        vip,
        vip_port_be,
        _pad: 0,
        svc_id,
    };
    // Unchanged entries are left alone (a datagram stream rewrites nothing).
    // SAFETY: copied out at once.
    if unsafe { A::sock_rev().get(key) }.copied() != Some(value) {
        let _ = A::sock_rev().insert(key, value, 0);
    }
}

/// Drops the record that gives the socket `cookie`'s answers from `backend:port` a service's
/// address.
#[inline(always)]
fn forget_reply<A: SockFamily>(cookie: u64, backend: A, backend_port_be: u16) {
    let key = SockRevKey {
        cookie,
        backend,
        backend_port_be,
        _pad: 0,
    };
    let _ = A::sock_rev().remove(key);
}

/// cgroup connect4: translates a TCP connect to a ClusterIP (any socket), and for a
/// host-network socket a UDP connect and connects to NodePorts, LoadBalancer IPs and
/// externalIPs (`service_for`). Never refuses the connect.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) {
    connect::<Ipv4, In4>(ctx);
}

/// cgroup connect6: as `connect4`, for IPv6 services, and for IPv4 ones dialled as
/// IPv4-mapped addresses.
#[inline(always)]
pub fn connect6(ctx: &SockAddrContext) {
    // SAFETY: the context the kernel passed.
    if is_mapped(unsafe { &*ctx.sock_addr }) {
        connect::<Ipv4, Mapped>(ctx);
    } else {
        connect::<Ipv6, In6>(ctx);
    }
}

#[inline(always)]
fn connect<A: SockFamily, S: Slot<A>>(ctx: &SockAddrContext) {
    if !translate_connect::<A, S>(ctx) {
        forget_direct::<A, S>(ctx);
    }
}

/// Translates the connect if it dials a service (see `connect4`); false if it was left alone.
#[inline(always)]
fn translate_connect<A: SockFamily, S: Slot<A>>(ctx: &SockAddrContext) -> bool {
    // SAFETY: the context the kernel passed; fields are read and written one by one.
    let sa = unsafe { &mut *ctx.sock_addr };
    let l4 = match sa.protocol {
        IPPROTO_TCP => proto::TCP,
        IPPROTO_UDP => proto::UDP,
        _ => return false,
    };
    let vip = S::get(sa);
    let vip_port_be = sa.user_port as u16;
    let Some((svc, host_only)) = service_for(vip, vip_port_be, l4) else {
        return false;
    };
    // UDP, affinity and frontends other than ClusterIPs at the socket are for host-network
    // sockets only (pods' go through tc).
    let host_only = host_only || l4 == proto::UDP || svc.affinity_timeout != 0;
    if (host_only || SOCK_HOST_ONLY.load() != 0) && !host_socket(ctx) {
        return false;
    }
    let be = if svc.affinity_timeout == 0 {
        // Checked again after the helper calls above (see `affine`).
        if svc.lut_size == 0 {
            return false;
        }
        lookup::slot_backend::<A>(&svc, lookup::pick_slot(&svc)).map(|(_, be)| be)
    } else {
        let Some(cfg) = config() else {
            return false;
        };
        affine(&svc, A::snat_addr(cfg))
    };
    let Some(be) = be else {
        return false;
    };
    let cookie = cookie_of(ctx);
    let Some(slot) = A::record(cookie) else {
        return false;
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
    if l4 == proto::UDP {
        remember_reply(cookie, &be, vip, vip_port_be, svc.svc_id);
    }
    S::set(sa, &be.addr);
    sa.user_port = u32::from(rec.backend_port_be);
    stats::count(counter::SOCK_XLATE);
    stats::svc(svc.svc_id, SvcCounter::NewFlow, 0);
    true
}

/// A socket connecting straight to a backend after a translated connect (a UDP socket
/// connected again, a TCP connect retried on the same socket) must stop naming the ClusterIP:
/// its records go. Only connects to addresses that may be backends pay for the lookup.
#[inline(always)]
fn forget_direct<A: SockFamily, S: Slot<A>>(ctx: &SockAddrContext) {
    // SAFETY: as in `translate_connect`.
    let sa = unsafe { &*ctx.sock_addr };
    let udp = sa.protocol == IPPROTO_UDP;
    if sa.protocol != IPPROTO_TCP && !udp {
        return;
    }
    let addr = S::get(sa);
    let port_be = sa.user_port as u16;
    if !may_be_backend(addr, u16::from_be(port_be)) {
        return;
    }
    let cookie = cookie_of(ctx);
    let Some(slot) = A::record(cookie) else {
        return;
    };
    // SAFETY: a slot of the map value array, copied out at once.
    if unsafe { *slot }.cookie() == cookie {
        // SAFETY: as above; an empty record names no socket.
        unsafe { *slot = SockXlate::EMPTY };
    }
    if udp {
        forget_reply(cookie, addr, port_be);
    }
}

/// cgroup sendmsg4: a host-network socket's datagram addressed to a service (`service_for`)
/// goes to a backend, the same one for every datagram of the socket while the service's table
/// keeps it there (the slot comes from the socket's cookie).
#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) {
    sendmsg::<Ipv4, In4>(ctx);
}

/// cgroup sendmsg6: as `sendmsg4`, for IPv6 services. (The kernel hands a datagram to an
/// IPv4-mapped address to the IPv4 path before this hook: `sendmsg4` translates it; the mapped
/// branch here only keeps the hook right should that change.)
#[inline(always)]
pub fn sendmsg6(ctx: &SockAddrContext) {
    // SAFETY: the context the kernel passed.
    if is_mapped(unsafe { &*ctx.sock_addr }) {
        sendmsg::<Ipv4, Mapped>(ctx);
    } else {
        sendmsg::<Ipv6, In6>(ctx);
    }
}

#[inline(always)]
fn sendmsg<A: SockFamily, S: Slot<A>>(ctx: &SockAddrContext) {
    // SAFETY: as in `translate_connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_UDP {
        return;
    }
    let vip = S::get(sa);
    let vip_port_be = sa.user_port as u16;
    let Some((svc, _)) = service_for(vip, vip_port_be, proto::UDP) else {
        // A datagram straight to a backend this socket also reached through a service: its
        // answers from that backend are the backend's own from now on.
        if may_be_backend(vip, u16::from_be(vip_port_be)) && host_socket(ctx) {
            forget_reply(cookie_of(ctx), vip, vip_port_be);
        }
        return;
    };
    if !host_socket(ctx) {
        return;
    }
    let cookie = cookie_of(ctx);
    let mixed = (cookie ^ (cookie >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    // The division right after its check (see `affine`).
    if svc.lut_size == 0 {
        return;
    }
    let slot = (mixed as u32) % svc.lut_size;
    let Some((_, be)) = lookup::slot_backend::<A>(&svc, slot) else {
        return;
    };
    remember_reply(cookie, &be, vip, vip_port_be, svc.svc_id);
    S::set(sa, &be.addr);
    sa.user_port = u32::from(be.port.to_be());
    stats::count(counter::SOCK_XLATE);
}

/// cgroup recvmsg4: a datagram from a backend a host-network socket was sent to for a
/// ClusterIP shows the ClusterIP as its source.
#[inline(always)]
pub fn recvmsg4(ctx: &SockAddrContext) {
    recvmsg::<Ipv4, In4>(ctx);
}

/// cgroup recvmsg6: as `recvmsg4`, for IPv6 sockets (IPv4-mapped sources included).
#[inline(always)]
pub fn recvmsg6(ctx: &SockAddrContext) {
    // SAFETY: the context the kernel passed.
    if is_mapped(unsafe { &*ctx.sock_addr }) {
        recvmsg::<Ipv4, Mapped>(ctx);
    } else {
        recvmsg::<Ipv6, In6>(ctx);
    }
}

#[inline(always)]
fn recvmsg<A: SockFamily, S: Slot<A>>(ctx: &SockAddrContext) {
    // SAFETY: as in `translate_connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_UDP {
        return;
    }
    let backend = S::get(sa);
    let backend_port_be = sa.user_port as u16;
    // Only a backend's datagram to a host-network socket can have an entry: every other
    // receive (pods' included) stops at a bitmap test or the namespace check, and never asks
    // for a socket cookie (which would spend one on every receiving socket).
    if !may_be_backend(backend, u16::from_be(backend_port_be)) || !host_socket(ctx) {
        return;
    }
    let key = SockRevKey {
        cookie: cookie_of(ctx),
        backend,
        backend_port_be,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { A::sock_rev().get(key) }.copied() {
        S::set(sa, &v.vip);
        sa.user_port = u32::from(v.vip_port_be);
    }
}

/// cgroup getpeername4: a socket connected to a backend by `connect4` names the ClusterIP.
#[inline(always)]
pub fn getpeername4(ctx: &SockAddrContext) {
    getpeername::<Ipv4, In4>(ctx);
}

/// cgroup getpeername6: as `getpeername4`, for sockets translated by `connect6`.
#[inline(always)]
pub fn getpeername6(ctx: &SockAddrContext) {
    // SAFETY: the context the kernel passed.
    if is_mapped(unsafe { &*ctx.sock_addr }) {
        getpeername::<Ipv4, Mapped>(ctx);
    } else {
        getpeername::<Ipv6, In6>(ctx);
    }
}

#[inline(always)]
fn getpeername<A: SockFamily, S: Slot<A>>(ctx: &SockAddrContext) {
    // SAFETY: as in `translate_connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP && sa.protocol != IPPROTO_UDP {
        return;
    }
    let cookie = cookie_of(ctx);
    let Some(slot) = A::record(cookie) else {
        return;
    };
    // SAFETY: a slot of the map value array, copied out at once.
    let rec = unsafe { *slot };
    // Only the socket that wrote the slot (a record torn by a concurrent writer or read while
    // another socket takes the slot over names nobody), and only while it is connected to that
    // backend.
    if rec.cookie() == cookie
        && S::get(sa) == rec.backend
        && sa.user_port as u16 == rec.backend_port_be
    {
        S::set(sa, &rec.vip);
        sa.user_port = u32::from(rec.vip_port_be);
    }
}
