//! The fixture datapath every BPF_PROG_TEST_RUN test starts from: a few services with known
//! addresses, and the return codes the tests expect.

use std::net::Ipv4Addr;

use lb_userspace::{
    bpf::Capacities,
    model::{
        Algorithm, DesiredState, Endpoint, EndpointState, Frontend, FrontendKind, LbService,
        Protocol, Scope,
    },
};

use crate::{
    datapath::Datapath,
    netns::{require_root, unique_tag},
    packet,
};

/// tcx "next": passed on.
pub const TCX_NEXT: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
/// Translated packets leave through `bpf_redirect_neigh` (no input route lookup).
pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_PASS: u32 = 2;
pub const XDP_DROP: u32 = 1;
/// Translated packets routed back out of the ingress device leave through `XDP_TX`.
pub const XDP_TX: u32 = 3;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 11),
    Ipv4Addr::new(10, 244, 1, 12),
    Ipv4Addr::new(10, 244, 1, 13),
];
pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 20);
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A ClusterIP frontend.
pub fn fe(addr: impl Into<std::net::IpAddr>, port: u16, proto: Protocol) -> Frontend {
    Frontend {
        addr: addr.into(),
        port,
        proto,
        scope: Scope::External,
        kind: FrontendKind::ClusterIp,
        source_ranges: false,
    }
}

/// A Maglev service of active, node-local backends on `port`.
pub fn svc<A: Into<std::net::IpAddr> + Copy>(
    name: &str,
    frontends: Vec<Frontend>,
    backends: &[A],
    port: u16,
) -> LbService {
    LbService {
        name: name.to_owned(),
        frontends,
        endpoints: backends
            .iter()
            .map(|a| Endpoint {
                addr: (*a).into(),
                port,
                weight: 1,
                local: true,
                state: EndpointState::Active,
                node: None,
            })
            .collect(),
        algorithm: Algorithm::Maglev,
        affinity_timeout: 0,
        source_ranges: Vec::new(),
        ext_local: false,
    }
}

/// The services of `datapath`: web (TCP 80), dns (UDP 53) on `VIP`, empty on `EMPTY_VIP`.
pub fn services() -> DesiredState {
    let mut d = DesiredState::default();
    for s in [
        svc("web", vec![fe(VIP, 80, Protocol::Tcp)], &BACKENDS, 8080),
        svc("dns", vec![fe(VIP, 53, Protocol::Udp)], &BACKENDS, 5353),
        svc::<Ipv4Addr>("empty", vec![fe(EMPTY_VIP, 80, Protocol::Tcp)], &[], 8080),
    ] {
        d.services.insert(s.name.clone(), s);
    }
    d
}

/// The fixture datapath with `services` programmed.
pub fn datapath() -> Datapath {
    datapath_with(Capacities::default())
}

/// `datapath` with the given map capacities.
pub fn datapath_with(caps: Capacities) -> Datapath {
    require_root();
    let mut dp = Datapath::with_capacities(&unique_tag(), crate::datapath::MAGLEV_SIZE, caps);
    dp.program(&services());
    dp
}

/// A LoadBalancer and a NodePort frontend whose only backend runs on another node.
pub fn north_south(ext_local: bool) -> Datapath {
    let mut dp = datapath();
    let mut s = svc("lb", vec![], &[REMOTE], 8080);
    s.endpoints[0].local = false;
    s.ext_local = ext_local;
    s.frontends = vec![
        Frontend {
            kind: FrontendKind::LoadBalancer,
            ..fe(LB_IP, 80, Protocol::Tcp)
        },
        Frontend {
            kind: FrontendKind::NodePort,
            ..fe(NODE_IP, 30080, Protocol::Tcp)
        },
        Frontend {
            kind: FrontendKind::LoadBalancer,
            ..fe(LB_IP, 53, Protocol::Udp)
        },
    ];
    let mut d = DesiredState::default();
    d.services.insert(s.name.clone(), s);
    dp.program(&d);
    dp
}

/// Asserts both checksums of a parsed packet verify.
pub fn assert_valid(p: &packet::Parsed, what: &str) {
    assert!(p.ip_csum_ok, "{what}: IPv4 checksum wrong: {p:?}");
    assert!(p.l4_csum_ok, "{what}: L4 checksum wrong: {p:?}");
}
