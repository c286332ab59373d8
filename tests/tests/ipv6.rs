//! IPv6 through the datapath (BPF_PROG_TEST_RUN fixtures): DNAT and reverse NAT of TCP and
//! UDP with the L4 checksum recomputed from scratch, extension headers, dual-stack services
//! (one Service, both families, each to its own backends), NodePort SNAT to the node's IPv6
//! address, XDP translating IPv6 flows itself (`XDP_TX`), and neighbour discovery never
//! touched.

use std::net::{IpAddr, Ipv6Addr};

use lb_common::{counter, map_names, prog_names};
use lb_userspace::{
    model::{DesiredState, Frontend, FrontendKind, LbService, Protocol},
    translate::state::by_family,
};
use xlb_tests::{
    datapath::{Datapath, UPLINK_ADDR6},
    fixture::*,
    packet::{self, flags},
    packet6,
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x10);
const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x11),
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x12),
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x13),
];
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x20);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

/// A dual-stack service (`VIP` and `VIP6`, port 80 → 8080 on the three backends of each
/// family) and a UDP one on `VIP6`, split by family as the translator does.
fn dual_stack() -> Datapath {
    let mut dp = datapath();
    let mut backends: Vec<IpAddr> = BACKENDS.iter().map(|a| IpAddr::V4(*a)).collect();
    backends.extend(BACKENDS6.iter().map(|a| IpAddr::V6(*a)));
    let mut d = DesiredState::default();
    for s in [
        svc(
            "web6",
            vec![fe(VIP, 8000, Protocol::Tcp), fe(VIP6, 80, Protocol::Tcp)],
            &backends,
            8080,
        ),
        svc("dns6", vec![fe(VIP6, 53, Protocol::Udp)], &BACKENDS6, 5353),
    ]
    .into_iter()
    .flat_map(by_family)
    {
        d.services.insert(s.name.clone(), s);
    }
    d.services.extend(services().services);
    dp.program(&d);
    dp
}

/// Entries of the IPv6 conntrack tables.
fn ct6_entries(dp: &Datapath) -> usize {
    let mut n = 0;
    for name in [map_names::CONNTRACK6, map_names::CT_NEW6] {
        n += dp.maps.walk(name, |_, _| {}).expect("walk");
    }
    n
}

#[test]
fn an_ipv6_syn_to_the_vip_is_dnated_and_its_reply_comes_from_the_vip() {
    let mut dp = dual_stack();
    for (prog, sport) in [
        (prog_names::POD_INGRESS, 40000),
        (prog_names::HOST_INGRESS, 40001),
    ] {
        let syn = packet6::tcp((CLIENT6, sport), (VIP6, 80), flags::SYN, b"");
        let (rc, out) = dp.tc(prog, &syn);
        assert_eq!(rc, TC_ACT_REDIRECT, "{prog}");
        let p = packet6::parse(&out);
        assert!(p.l4_csum_ok, "{prog}: DNAT checksum: {p:?}");
        assert!(
            BACKENDS6.contains(&p.dst),
            "{prog}: dst {} not a backend",
            p.dst
        );
        assert_eq!((p.src, p.sport, p.dport), (CLIENT6, sport, 8080));
        assert_eq!(
            p.hop_limit,
            packet6::HOP_LIMIT - 1,
            "routed on: one hop less"
        );

        let synack = packet6::tcp(
            (p.dst, 8080),
            (CLIENT6, sport),
            flags::SYN | flags::ACK,
            b"",
        );
        let (rc, out) = dp.tc(prog, &synack);
        assert_eq!(rc, TC_ACT_REDIRECT);
        let r = packet6::parse(&out);
        assert!(r.l4_csum_ok, "reverse NAT checksum: {r:?}");
        assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP6, 80, CLIENT6, sport));

        // The handshake's ACK confirms the flow; data keeps the backend.
        for i in 0..10u8 {
            let data = packet6::tcp((CLIENT6, sport), (VIP6, 80), flags::ACK, &[i; 40]);
            let (_, out) = dp.tc(prog, &data);
            let d = packet6::parse(&out);
            assert!(d.l4_csum_ok);
            assert_eq!(d.dst, p.dst, "a flow keeps its backend");
        }
    }
    // Two flows, both directions each, in the IPv6 tables (none in the IPv4 ones).
    assert_eq!(ct6_entries(&dp), 4);
    assert!(dp.maps.conntrack_entries().expect("ct").is_empty());
}

#[test]
fn xdp_translates_ipv6_flows_itself_with_valid_checksums() {
    let mut dp = dual_stack();
    let syn = packet6::tcp((CLIENT6, 41000), (VIP6, 80), flags::SYN, b"");
    let (rc, out) = dp.xdp(&syn);
    assert_eq!(rc, XDP_TX, "XDP forwards the IPv6 flow itself");
    assert_eq!(
        out[..6],
        xlb_tests::datapath::NEXT_HOP_MAC,
        "next hop's MAC"
    );
    let p = packet6::parse(&out);
    assert!(p.l4_csum_ok, "XDP DNAT checksum: {p:?}");
    assert!(BACKENDS6.contains(&p.dst), "dst {} not a backend", p.dst);
    assert_eq!((p.src, p.sport, p.dport), (CLIENT6, 41000, 8080));
    assert_eq!(p.hop_limit, packet6::HOP_LIMIT - 1);
    let synack = packet6::tcp(
        (p.dst, 8080),
        (CLIENT6, 41000),
        flags::SYN | flags::ACK,
        b"hi",
    );
    let (rc, out) = dp.xdp(&synack);
    assert_eq!(rc, XDP_TX);
    let r = packet6::parse(&out);
    assert!(r.l4_csum_ok, "XDP reverse NAT checksum: {r:?}");
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP6, 80, CLIENT6, 41000));
    let udp = packet6::udp((CLIENT6, 41001), (VIP6, 53), b"q");
    let (rc, out) = dp.xdp(&udp);
    assert_eq!(rc, XDP_TX);
    let u = packet6::parse(&out);
    assert!(u.l4_csum_ok && BACKENDS6.contains(&u.dst), "XDP UDP: {u:?}");
    assert!(dp.counters()[counter::CT_NEW as usize] >= 2);
}

#[test]
fn ipv6_sctp_is_translated_when_its_port_is_kept_and_refused_otherwise() {
    let mut dp = datapath();
    let vip = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x40);
    let mut d = DesiredState::default();
    for (name, port, target) in [("same", 9000, 9000), ("rewrite", 9001, 7000)] {
        let s = svc(
            name,
            vec![fe(vip, port, Protocol::Sctp)],
            &BACKENDS6,
            target,
        );
        d.services.insert(s.name.clone(), s);
    }
    dp.program(&d);
    let pkt = packet6::sctp((CLIENT6, 5000), (vip, 9000));
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &pkt);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).expect("16 bytes"));
    assert!(BACKENDS6.contains(&dst), "{dst}");
    assert_eq!(out[54..58], pkt[54..58], "ports unchanged");
    assert_eq!(
        out[62..66],
        pkt[62..66],
        "CRC32c untouched (it does not cover the IP header)"
    );
    let (rc, _) = dp.tc(
        prog_names::POD_INGRESS,
        &packet6::sctp((CLIENT6, 5000), (vip, 9001)),
    );
    assert_eq!(rc, TC_ACT_SHOT, "a port rewrite would need a new CRC32c");
    assert_eq!(
        dp.counters()[(counter::DROP_BASE + lb_common::drop_reason::SCTP_PORT_REWRITE) as usize],
        1
    );
}

#[test]
fn a_dual_stack_service_serves_each_family_from_its_own_backends() {
    let mut dp = dual_stack();
    let mut seen6 = std::collections::BTreeSet::new();
    let mut seen4 = std::collections::BTreeSet::new();
    for sport in 41000..41060u16 {
        let (_, out) = dp.tc(
            prog_names::POD_INGRESS,
            &packet6::tcp((CLIENT6, sport), (VIP6, 80), flags::SYN, b""),
        );
        seen6.insert(packet6::parse(&out).dst);
        let (_, out) = dp.tc(
            prog_names::POD_INGRESS,
            &packet::tcp((CLIENT, sport), (VIP, 8000), flags::SYN, b""),
        );
        let p = packet::parse(&out);
        assert_valid(&p, "IPv4 half");
        seen4.insert(p.dst);
    }
    assert_eq!(seen6, BACKENDS6.into_iter().collect(), "every IPv6 backend");
    assert_eq!(seen4, BACKENDS.into_iter().collect(), "every IPv4 backend");
}

#[test]
fn ipv6_udp_and_extension_headers_translate_with_valid_checksums() {
    let mut dp = dual_stack();
    let q = packet6::udp((CLIENT6, 50000), (VIP6, 53), b"query");
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &q);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = packet6::parse(&out);
    assert!(p.l4_csum_ok, "UDP DNAT checksum: {p:?}");
    assert!(BACKENDS6.contains(&p.dst));
    assert_eq!(p.dport, 5353);
    let a = packet6::udp((p.dst, 5353), (CLIENT6, 50000), b"answer");
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &a);
    let r = packet6::parse(&out);
    assert!(r.l4_csum_ok, "UDP reverse checksum: {r:?}");
    assert_eq!((r.src, r.sport), (VIP6, 53));

    // A hop-by-hop options header before TCP: walked past, the L4 header rewritten.
    let syn = packet6::tcp_hop_by_hop((CLIENT6, 42000), (VIP6, 80), flags::SYN, b"");
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let h = packet6::parse(&out);
    assert!(h.l4_csum_ok, "behind an extension header: {h:?}");
    assert!(BACKENDS6.contains(&h.dst));
    assert_eq!(h.dport, 8080);
}

#[test]
fn ipv6_neighbour_discovery_and_other_traffic_pass_untouched() {
    let mut dp = dual_stack();
    let before = dp.counters()[counter::XLATE_FWD as usize];
    let cases = [
        packet6::neighbour_solicitation(CLIENT6, VIP6),
        // Not a frontend port, not a backend's reply.
        packet6::tcp((CLIENT6, 40000), (VIP6, 81), flags::SYN, b""),
        packet6::tcp((CLIENT6, 40000), (BACKENDS6[0], 8080), flags::ACK, b""),
    ];
    for pkt in &cases {
        let (rc, out) = dp.tc(prog_names::POD_INGRESS, pkt);
        assert_eq!((rc, &out), (TCX_NEXT, pkt));
        // XDP leaves IPv6 to tc.
        let (rc, out) = dp.xdp(pkt);
        assert_eq!((rc, &out), (XDP_PASS, pkt));
    }
    assert_eq!(dp.counters()[counter::XLATE_FWD as usize], before);
}

#[test]
fn an_external_ipv6_client_of_a_node_port_is_snated_to_the_node_address() {
    let mut dp = datapath();
    let node6: Ipv6Addr = UPLINK_ADDR6.parse().expect("ip");
    let mut s = svc("np6", vec![], &[REMOTE6], 8080);
    s.endpoints[0].local = false;
    s.frontends = vec![Frontend {
        kind: FrontendKind::NodePort,
        ..fe(node6, 30080, Protocol::Tcp)
    }];
    let mut local = LbService {
        name: "np6-local".into(),
        ext_local: true,
        ..s.clone()
    };
    local.frontends = vec![Frontend {
        kind: FrontendKind::NodePort,
        ..fe(node6, 30081, Protocol::Tcp)
    }];
    let mut d = DesiredState::default();
    d.services.insert(s.name.clone(), s);
    d.services.insert(local.name.clone(), local);
    dp.program(&d);

    let syn = packet6::tcp((OUTSIDE6, 45000), (node6, 30080), flags::SYN, b"");
    let (rc, out) = dp.tc(prog_names::HOST_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = packet6::parse(&out);
    assert!(p.l4_csum_ok, "SNAT checksum: {p:?}");
    assert_eq!((p.dst, p.dport), (REMOTE6, 8080));
    assert_eq!(p.src, node6, "SNATed to the node's IPv6 address");
    let reply = packet6::tcp(
        (REMOTE6, 8080),
        (node6, p.sport),
        flags::SYN | flags::ACK,
        b"",
    );
    let (rc, out) = dp.tc(prog_names::HOST_INGRESS, &reply);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let r = packet6::parse(&out);
    assert!(r.l4_csum_ok);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (node6, 30080, OUTSIDE6, 45000),
        "the reply goes back from the NodePort to the client"
    );

    // externalTrafficPolicy: Local keeps the client's address.
    let syn = packet6::tcp((OUTSIDE6, 45001), (node6, 30081), flags::SYN, b"");
    let (_, out) = dp.tc(prog_names::HOST_INGRESS, &syn);
    let l = packet6::parse(&out);
    assert_eq!((l.src, l.dst), (OUTSIDE6, REMOTE6));
    assert_eq!(dp.counters()[counter::SNAT as usize], 1);
}
