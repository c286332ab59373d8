//! BPF_PROG_TEST_RUN fixtures: crafted packets through the loaded programs, asserting verdicts,
//! rewritten packets (checksums recomputed from scratch) and map state.

use std::net::Ipv4Addr;

use lb_common::{counter, ct_dir, drop_reason, prog_names};
use lb_userspace::model::{Algorithm, DesiredState, Protocol};
use xlb_tests::{
    datapath::Datapath,
    fixture::*,
    netns::{require_root, unique_tag},
    packet::{self, flags},
};

#[test]
fn syn_to_vip_is_dnated_and_the_reply_reverse_translated() {
    let mut dp = datapath();
    for prog in [prog_names::POD_INGRESS, prog_names::HOST_INGRESS] {
        let sport = if prog == prog_names::POD_INGRESS {
            40000
        } else {
            40001
        };
        let syn = packet::tcp((CLIENT, sport), (VIP, 80), flags::SYN, b"");
        let (rc, out) = dp.tc(prog, &syn);
        assert_eq!(rc, TC_ACT_REDIRECT, "{prog}");
        let p = packet::parse(&out);
        assert_valid(&p, "DNAT");
        assert!(
            BACKENDS.contains(&p.dst),
            "{prog}: dst {} not a backend",
            p.dst
        );
        assert_eq!((p.src, p.sport, p.dport), (CLIENT, sport, 8080));

        // Both conntrack entries exist and agree.
        let ct = dp.maps.conntrack_entries().unwrap();
        let fwd = ct
            .iter()
            .find(|(k, _)| k.dir == ct_dir::FORWARD && k.sport == sport)
            .expect("forward entry");
        let rev = ct
            .iter()
            .find(|(k, _)| k.dir == ct_dir::REPLY && k.dport == sport)
            .expect("reply entry");
        assert_eq!(fwd.1.backend_id, rev.1.backend_id);
        assert_eq!(rev.0.saddr, p.dst.octets());

        // The backend's SYN/ACK goes back from the VIP.
        let synack = packet::tcp((p.dst, 8080), (CLIENT, sport), flags::SYN | flags::ACK, b"");
        let (rc, out) = dp.tc(prog, &synack);
        assert_eq!(rc, TC_ACT_REDIRECT);
        let r = packet::parse(&out);
        assert_valid(&r, "reverse NAT");
        assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, 80, CLIENT, sport));

        // Later packets of the flow keep the backend.
        for i in 0..20u8 {
            let data = packet::tcp((CLIENT, sport), (VIP, 80), flags::ACK, &[i; 33]);
            let (_, out) = dp.tc(prog, &data);
            let q = packet::parse(&out);
            assert_valid(&q, "established");
            assert_eq!(q.dst, p.dst);
        }
    }
    let c = dp.counters();
    assert_eq!(c[counter::CT_NEW as usize], 2);
    assert_eq!(c[counter::CT_HIT as usize], 40);
    assert_eq!(c[counter::XLATE_REV as usize], 2);
}

#[test]
fn udp_with_and_without_checksum() {
    let mut dp = datapath();
    let with = packet::udp((CLIENT, 5000), (VIP, 53), b"query", true);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &with);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = packet::parse(&out);
    assert_valid(&p, "UDP DNAT");
    assert!(BACKENDS.contains(&p.dst));
    assert_eq!(p.dport, 5353);
    assert_ne!(p.udp_csum, Some(0));

    let without = packet::udp((CLIENT, 5001), (VIP, 53), b"query", false);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &without);
    let p = packet::parse(&out);
    assert!(BACKENDS.contains(&p.dst));
    assert_eq!(p.udp_csum, Some(0), "a zero UDP checksum stays zero (none)");
    assert!(p.ip_csum_ok);
}

#[test]
fn xdp_translates_with_valid_checksums() {
    let mut dp = datapath();
    let syn = packet::tcp((CLIENT, 41000), (VIP, 80), flags::SYN, b"");
    let (rc, out) = dp.xdp(&syn);
    assert_eq!(rc, XDP_TX);
    assert_eq!(
        out[..6],
        xlb_tests::datapath::NEXT_HOP_MAC,
        "next hop's MAC"
    );
    let p = packet::parse(&out);
    assert_valid(&p, "XDP DNAT");
    assert!(BACKENDS.contains(&p.dst));
    let synack = packet::tcp(
        (p.dst, 8080),
        (CLIENT, 41000),
        flags::SYN | flags::ACK,
        b"hi",
    );
    let (_, out) = dp.xdp(&synack);
    let r = packet::parse(&out);
    assert_valid(&r, "XDP reverse NAT");
    assert_eq!((r.src, r.sport), (VIP, 80));
    let udp = packet::udp((CLIENT, 41001), (VIP, 53), b"q", true);
    let (_, out) = dp.xdp(&udp);
    assert_valid(&packet::parse(&out), "XDP UDP");
}

#[test]
fn traffic_not_for_a_vip_passes_untouched() {
    let mut dp = datapath();
    let cases = [
        packet::tcp((CLIENT, 40000), (BACKENDS[0], 8080), flags::SYN, b""),
        packet::tcp((CLIENT, 40000), (VIP, 81), flags::SYN, b""),
        packet::udp((CLIENT, 40000), (VIP, 80), b"x", true),
        packet::tcp((BACKENDS[0], 8080), (CLIENT, 40000), flags::ACK, b""),
    ];
    for pkt in &cases {
        let (rc, out) = dp.tc(prog_names::POD_INGRESS, pkt);
        assert_eq!(rc, TCX_NEXT);
        assert_eq!(&out, pkt, "non-service packet changed");
        let (rc, out) = dp.xdp(pkt);
        assert_eq!(rc, XDP_PASS);
        assert_eq!(&out, pkt);
    }
    // ARP, and an IPv6 packet of a protocol xlb does not translate (next header 0x60).
    let mut arp = vec![0xffu8; 6];
    arp.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend([0u8; 28]);
    let mut v6 = vec![2u8, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    v6.extend([0x60u8; 40]);
    for pkt in [&arp, &v6] {
        let (rc, out) = dp.tc(prog_names::POD_INGRESS, pkt);
        assert_eq!((rc, &out), (TCX_NEXT, pkt));
    }
    let c = dp.counters();
    assert_eq!(c[counter::NOT_SERVICE as usize], 9);
    assert_eq!(c[counter::NOT_IP as usize], 1);
    assert_eq!(c[counter::XLATE_FWD as usize], 0);
}

#[test]
fn truncated_and_malformed_packets_are_never_translated() {
    let mut dp = datapath();
    let full = packet::tcp((CLIENT, 40000), (VIP, 80), flags::SYN, b"");
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Cut anywhere inside the headers (BPF_PROG_TEST_RUN refuses frames without any byte
    // after the Ethernet header).
    for len in [15, 20, 33, 34, 40, 53] {
        cases.push(full[..len].to_vec());
    }
    // IHL below 5, and version 6 in an IPv4 frame.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    cases.push(bad_ihl);
    let mut bad_ver = full.clone();
    bad_ver[14] = 0x65;
    cases.push(bad_ver);
    // IHL pointing past the end.
    let mut long_ihl = full.clone();
    long_ihl[14] = 0x4f;
    cases.push(long_ihl);
    let n_malformed = cases.len();
    // tc runs need a whole IPv4 header (BPF_PROG_TEST_RUN builds a real skb); XDP takes any
    // frame, so every cut goes through XDP and the L4 cuts through tc too.
    let mut runs = (0usize, 0usize);
    for pkt in &cases {
        let (rc, out) = dp.xdp(pkt);
        assert_eq!(rc, XDP_PASS, "xdp len {}", pkt.len());
        assert_eq!(
            &out,
            pkt,
            "xdp: malformed packet (len {}) was changed",
            pkt.len()
        );
        runs.0 += 1;
        if pkt.len() >= 34 {
            let (rc, out) = dp.tc(prog_names::POD_INGRESS, pkt);
            assert_eq!(rc, TCX_NEXT, "tc len {}", pkt.len());
            assert_eq!(
                &out,
                pkt,
                "tc: malformed packet (len {}) was changed",
                pkt.len()
            );
            runs.1 += 1;
        }
    }
    let tc_malformed = cases[..n_malformed]
        .iter()
        .filter(|p| p.len() >= 34)
        .count();
    let n_malformed = n_malformed + tc_malformed;
    let c = dp.counters();
    assert_eq!(c[counter::MALFORMED as usize] as usize, n_malformed);
    assert_eq!(c[counter::PACKETS as usize] as usize, runs.0 + runs.1);
    assert_eq!(c[counter::CT_NEW as usize], 0);
    assert!(dp.maps.conntrack_entries().unwrap().is_empty());
}

#[test]
fn no_backend_is_rejected_with_port_unreachable_from_tc_and_counted_once() {
    let mut dp = datapath();
    let syn = packet::tcp((CLIENT, 40000), (EMPTY_VIP, 80), flags::SYN, b"");
    // XDP leaves it to tc, untouched and uncounted.
    let (rc, out) = dp.xdp(&syn);
    assert_eq!(rc, XDP_PASS);
    assert_eq!(out, syn);
    // tc answers in its place: ICMP port unreachable from the VIP to the client, quoting the
    // SYN's IPv4 and TCP headers.
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_ne!(rc, TC_ACT_SHOT);
    assert_eq!(out.len(), 14 + 20 + 8 + 40, "{out:02x?}");
    assert_eq!(out[23], 1, "not ICMP");
    assert_eq!(&out[26..30], &EMPTY_VIP.octets(), "source");
    assert_eq!(&out[30..34], &CLIENT.octets(), "destination");
    assert_eq!((out[34], out[35]), (3, 3), "not port unreachable");
    assert_eq!(&out[42..82], &syn[14..54], "quote");
    let ok = |b: &[u8]| lb_common::csum::fold(lb_common::csum::sum_be(b, 0)) == 0xffff;
    assert!(ok(&out[14..34]) && ok(&out[34..]), "checksums: {out:02x?}");
    let c = dp.counters();
    assert_eq!(
        c[(counter::DROP_BASE + drop_reason::NO_BACKEND) as usize],
        1
    );
    assert_eq!(c[counter::ICMP_SENT as usize], 1);
}

#[test]
fn hairpin_rewrites_the_source_and_back() {
    let mut dp = datapath();
    // The client is a backend of web; find a source port whose flow hashes to itself.
    let me = BACKENDS[0];
    let mut hit = None;
    for sport in 30000..31000u16 {
        let syn = packet::tcp((me, sport), (VIP, 80), flags::SYN, b"");
        let (_, out) = dp.tc(prog_names::POD_INGRESS, &syn);
        let p = packet::parse(&out);
        if p.dst == me {
            hit = Some((sport, p));
            break;
        }
    }
    let (sport, p) = hit.expect("some flow lands on its own client");
    assert_valid(&p, "hairpin");
    assert_eq!(
        p.src,
        Ipv4Addr::new(169, 254, 42, 1),
        "source must not be the pod itself"
    );
    let reply = packet::tcp((me, 8080), (p.src, p.sport), flags::SYN | flags::ACK, b"");
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &reply);
    let r = packet::parse(&out);
    assert_valid(&r, "hairpin reply");
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, 80, me, sport));
    assert!(dp.counters()[counter::HAIRPIN as usize] >= 1);
}

#[test]
fn a_flow_whose_backend_left_reselects_on_its_next_packet() {
    let mut dp = datapath();
    let pkt = packet::udp((CLIENT, 7000), (VIP, 53), b"a", true);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &pkt);
    let first = packet::parse(&out).dst;
    // Remove that backend from the service.
    let rest: Vec<Ipv4Addr> = BACKENDS.iter().copied().filter(|b| *b != first).collect();
    let mut d = DesiredState::default();
    for s in [
        svc("web", vec![fe(VIP, 80, Protocol::Tcp)], &BACKENDS, 8080),
        svc("dns", vec![fe(VIP, 53, Protocol::Udp)], &rest, 5353),
        svc::<Ipv4Addr>("empty", vec![fe(EMPTY_VIP, 80, Protocol::Tcp)], &[], 8080),
    ] {
        d.services.insert(s.name.clone(), s);
    }
    dp.program(&d);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &pkt);
    let second = packet::parse(&out).dst;
    assert!(rest.contains(&second), "stale flow still sent to {second}");
    assert_eq!(dp.counters()[counter::CT_RESELECT as usize], 1);
    // The old reply entry is gone, the new one routes replies back.
    let reply = packet::udp((second, 5353), (CLIENT, 7000), b"r", true);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &reply);
    assert_eq!(packet::parse(&out).src, VIP);
    let stale_reply = packet::udp((first, 5353), (CLIENT, 7000), b"r", true);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &stale_reply);
    assert_eq!(
        out, stale_reply,
        "reply entry of the old backend must be removed"
    );
}

#[test]
fn tcp_close_expires_fast_and_a_new_syn_starts_a_new_flow() {
    let mut dp = datapath();
    let syn = packet::tcp((CLIENT, 42000), (VIP, 80), flags::SYN, b"");
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    let be = packet::parse(&out).dst;
    // The backend refuses: RST acknowledging the SYN (sequence 1000 + 1). One acknowledging
    // something else is not this flow's answer: ignored, counted, the flow stays open.
    let blind = packet::tcp_seq(
        (be, 8080),
        (CLIENT, 42000),
        flags::RST | flags::ACK,
        0,
        77,
        b"",
    );
    dp.tc(prog_names::POD_INGRESS, &blind);
    assert_eq!(dp.counters()[counter::RST_IGNORED as usize], 1);
    assert!(
        dp.maps
            .conntrack_entries()
            .unwrap()
            .iter()
            .all(|(_, v)| v.state == lb_common::ct_state::SYN_SENT)
    );
    let rst = packet::tcp_seq(
        (be, 8080),
        (CLIENT, 42000),
        flags::RST | flags::ACK,
        0,
        1001,
        b"",
    );
    dp.tc(prog_names::POD_INGRESS, &rst);
    let ct = dp.maps.conntrack_entries().unwrap();
    let now = ct.iter().map(|(_, v)| v.created).max().unwrap();
    for (k, v) in &ct {
        assert_eq!(v.state, lb_common::ct_state::CLOSED, "{k:?}");
        assert!(
            v.expires <= now + dp.config.ct_tcp_closed,
            "closed flows expire fast"
        );
    }
    // A new SYN on the closed tuple is a new flow (counted as new, not as a hit), written
    // over the closed flow's two entries (still two).
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!(dp.counters()[counter::CT_NEW as usize], 2);
    let ct = dp.maps.conntrack_entries().unwrap();
    assert_eq!(ct.len(), 2, "the tuple's entries are reused: {ct:?}");
    for (k, v) in &ct {
        assert_eq!(v.state, lb_common::ct_state::SYN_SENT, "{k:?}");
    }
    // ...and the reused reply entry translates the new flow's SYN/ACK back to the VIP.
    let be = packet::parse(&out).dst;
    let syn_ack = packet::tcp((be, 8080), (CLIENT, 42000), flags::SYN | flags::ACK, b"");
    let (_, back) = dp.tc(prog_names::POD_INGRESS, &syn_ack);
    let back = packet::parse(&back);
    assert_eq!((back.src, back.sport), (VIP, 80));
    let ack = packet::tcp((CLIENT, 42000), (VIP, 80), flags::ACK, b"");
    dp.tc(prog_names::POD_INGRESS, &ack);
    let ct = dp.maps.conntrack_entries().unwrap();
    assert!(
        ct.iter()
            .all(|(_, v)| v.state == lb_common::ct_state::ESTABLISHED),
        "{ct:?}"
    );
}

#[test]
fn an_untranslated_syn_retires_a_closed_flow_on_its_reply_tuple_but_not_a_live_one() {
    let mut dp = datapath();
    let to_vip = |fl| packet::tcp((CLIENT, 42000), (VIP, 80), fl, b"");
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &to_vip(flags::SYN));
    let be = packet::parse(&out).dst;
    let from_be = |fl| packet::tcp((be, 8080), (CLIENT, 42000), fl, b"");
    dp.tc(prog_names::POD_INGRESS, &from_be(flags::SYN | flags::ACK));
    dp.tc(prog_names::POD_INGRESS, &to_vip(flags::ACK));
    let direct_syn = packet::tcp((CLIENT, 42000), (be, 8080), flags::SYN, b"");
    let states = |dp: &mut Datapath| {
        let mut v: Vec<(u8, u8)> = dp
            .maps
            .conntrack_entries()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.dir, v.state))
            .collect();
        v.sort_unstable();
        v
    };
    // The same source port straight to the backend while the translated flow is established,
    // then half-closed: the SYN passes untouched and the live flow keeps its entries (its
    // replies still go back from the VIP).
    for (fin, state) in [
        (None, lb_common::ct_state::ESTABLISHED),
        (
            Some(from_be(flags::FIN | flags::ACK)),
            lb_common::ct_state::FIN_WAIT,
        ),
    ] {
        if let Some(fin) = fin {
            dp.tc(prog_names::POD_INGRESS, &fin);
        }
        let (rc, out) = dp.tc(prog_names::POD_INGRESS, &direct_syn);
        assert_eq!((rc, &out), (TCX_NEXT, &direct_syn));
        assert_eq!(
            states(&mut dp),
            [(ct_dir::FORWARD, state), (ct_dir::REPLY, state)]
        );
        let (_, back) = dp.tc(prog_names::POD_INGRESS, &from_be(flags::ACK));
        assert_eq!(packet::parse(&back).src, VIP, "live flow's reply");
    }
    // Once it is closed, that SYN retires its reply entry: the new connection's SYN/ACK goes
    // back from the backend, as the client dialled it.
    dp.tc(prog_names::POD_INGRESS, &to_vip(flags::FIN | flags::ACK));
    let closed = lb_common::ct_state::CLOSED;
    assert_eq!(
        states(&mut dp),
        [(ct_dir::FORWARD, closed), (ct_dir::REPLY, closed)]
    );
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &direct_syn);
    assert_eq!((rc, &out), (TCX_NEXT, &direct_syn));
    assert_eq!(states(&mut dp), [(ct_dir::FORWARD, closed)]);
    let synack = from_be(flags::SYN | flags::ACK);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!(
        (rc, &out),
        (TCX_NEXT, &synack),
        "reply of the new connection"
    );
    // A late packet of the old flow is still forwarded by its closed forward entry, and does
    // not take the reply tuple back from the new connection.
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &to_vip(flags::ACK));
    assert_eq!((rc, packet::parse(&out).dst), (TC_ACT_REDIRECT, be));
    assert_eq!(states(&mut dp), [(ct_dir::FORWARD, closed)]);
    let ack = from_be(flags::ACK);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &ack);
    assert_eq!((rc, &out), (TCX_NEXT, &ack));
}

#[test]
fn random_selection_spreads_new_flows_over_every_backend() {
    let mut dp = datapath();
    let mut s = svc(
        "rand",
        vec![fe(Ipv4Addr::new(10, 96, 0, 30), 80, Protocol::Tcp)],
        &BACKENDS,
        8080,
    );
    s.algorithm = Algorithm::Random;
    let mut d = DesiredState::default();
    d.services.insert(s.name.clone(), s);
    dp.program(&d);
    let mut seen = std::collections::BTreeMap::new();
    for sport in 20000..20300u16 {
        let syn = packet::tcp(
            (CLIENT, sport),
            (Ipv4Addr::new(10, 96, 0, 30), 80),
            flags::SYN,
            b"",
        );
        let (_, out) = dp.tc(prog_names::POD_INGRESS, &syn);
        *seen.entry(packet::parse(&out).dst).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n > 60), "{seen:?}");
}

#[test]
fn maglev_picks_the_same_backend_on_independent_nodes() {
    // Two datapaths loaded separately (own maps, own backend ids, services programmed in a
    // different order) agree on every flow: the table is a function of backend identities.
    let mut a = datapath();
    require_root();
    let mut b = Datapath::new(&unique_tag(), xlb_tests::datapath::MAGLEV_SIZE);
    let mut d = DesiredState::default();
    for s in [
        svc::<Ipv4Addr>("empty", vec![fe(EMPTY_VIP, 80, Protocol::Tcp)], &[], 8080),
        svc("dns", vec![fe(VIP, 53, Protocol::Udp)], &BACKENDS, 5353),
        svc("web", vec![fe(VIP, 80, Protocol::Tcp)], &BACKENDS, 8080),
    ] {
        d.services.insert(s.name.clone(), s);
    }
    b.program(&d);
    let mut differ = 0;
    for sport in 30000..30200u16 {
        let syn = packet::tcp((CLIENT, sport), (VIP, 80), flags::SYN, b"");
        let (_, oa) = a.tc(prog_names::POD_INGRESS, &syn);
        let (_, ob) = b.xdp(&syn);
        if packet::parse(&oa).dst != packet::parse(&ob).dst {
            differ += 1;
        }
    }
    assert_eq!(differ, 0, "{differ} of 200 flows picked different backends");
}

#[test]
fn external_traffic_to_a_remote_backend_is_snated_and_replies_restored() {
    let mut dp = north_south(false);
    for (front, fport, expect_src) in [(LB_IP, 80, NODE_IP), (NODE_IP, 30080, NODE_IP)] {
        let syn = packet::tcp((OUTSIDE, 40000), (front, fport), flags::SYN, b"");
        let (rc, out) = dp.xdp(&syn);
        assert_eq!(rc, XDP_TX);
        let p = packet::parse(&out);
        assert_valid(&p, "SNAT");
        assert_eq!((p.dst, p.dport), (REMOTE, 8080));
        assert_eq!(p.src, expect_src, "SNAT source for {front}");
        assert!(
            (61000..=65535).contains(&p.sport),
            "SNAT port {} outside the range",
            p.sport
        );
        let reply = packet::tcp(
            (REMOTE, 8080),
            (p.src, p.sport),
            flags::SYN | flags::ACK,
            b"",
        );
        let (_, out) = dp.xdp(&reply);
        let r = packet::parse(&out);
        assert_valid(&r, "SNAT reply");
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (front, fport, OUTSIDE, 40000)
        );
        // Two clients with the same source port get different SNAT ports.
        let other = packet::tcp(
            (Ipv4Addr::new(198, 51, 100, 8), 40000),
            (front, fport),
            flags::SYN,
            b"",
        );
        let (_, out) = dp.xdp(&other);
        assert_ne!(packet::parse(&out).sport, p.sport);
    }
    // The same service from a local pod (tc pod ingress): east-west, never SNATed.
    let syn = packet::tcp((CLIENT, 40000), (LB_IP, 80), flags::SYN, b"");
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    let p = packet::parse(&out);
    assert_eq!((p.src, p.sport, p.dst), (CLIENT, 40000, REMOTE));
    assert!(dp.counters()[counter::SNAT as usize] >= 4);
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address() {
    let mut dp = north_south(true);
    let syn = packet::tcp((OUTSIDE, 40000), (LB_IP, 80), flags::SYN, b"");
    let (_, out) = dp.xdp(&syn);
    let p = packet::parse(&out);
    assert_eq!((p.src, p.sport, p.dst), (OUTSIDE, 40000, REMOTE));
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_back() {
    // Port unreachable from a backend about a DNATed UDP flow (tc, east-west).
    let mut dp = datapath();
    let q = packet::udp((CLIENT, 5000), (VIP, 53), b"query", true);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &q);
    let fwd = packet::parse(&out);
    let err = packet::icmp_error(fwd.dst, CLIENT, 3, 3, &out);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &err);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let e = packet::parse_icmp(&out);
    assert!(e.ip_csum_ok && e.icmp_csum_ok && e.inner_csum_ok, "{e:?}");
    assert_eq!((e.src, e.dst), (VIP, CLIENT));
    assert_eq!(
        (e.inner_src, e.inner_sport, e.inner_dst, e.inner_dport),
        (CLIENT, 5000, VIP, 53)
    );

    // Fragmentation needed from a router about an SNATed north-south flow (XDP).
    let mut dp = north_south(false);
    let syn = packet::tcp(
        (OUTSIDE, 41000),
        (LB_IP, 80),
        flags::SYN | flags::ACK,
        &[0u8; 100],
    );
    let (_, out) = dp.xdp(&syn);
    let fwd = packet::parse(&out);
    let router = Ipv4Addr::new(192, 168, 0, 254);
    let err = packet::icmp_error(router, fwd.src, 3, 4, &out);
    let (rc, out) = dp.xdp(&err);
    assert_eq!(rc, XDP_TX);
    let e = packet::parse_icmp(&out);
    assert!(e.ip_csum_ok && e.icmp_csum_ok && e.inner_csum_ok, "{e:?}");
    assert_eq!((e.src, e.dst, e.code), (router, OUTSIDE, 4));
    assert_eq!(
        (e.inner_src, e.inner_sport, e.inner_dst, e.inner_dport),
        (OUTSIDE, 41000, LB_IP, 80)
    );
    assert_eq!(dp.counters()[counter::ICMP_XLATE as usize], 1);

    // An ICMP error about a flow we never saw passes untouched.
    let stray = packet::icmp_error(
        router,
        CLIENT,
        3,
        3,
        &packet::udp((CLIENT, 1), (OUTSIDE, 2), b"", true),
    );
    let (_, out) = dp.xdp(&stray);
    assert_eq!(out, stray);
}

#[test]
fn xdp_leaves_what_it_cannot_transmit_to_tc_untouched() {
    // A backend reached through another device than the ingress one: XDP cannot deliver it
    // (no redirect into other devices), so it passes the packet unchanged and writes nothing;
    // tc on the same device translates it and redirects.
    let mut dp = datapath();
    xlb_tests::netns::sh(&[
        "ip", "link", "add", "side", "type", "veth", "peer", "name", "sidepeer",
    ]);
    xlb_tests::netns::sh(&["ip", "link", "set", "side", "up"]);
    xlb_tests::netns::sh(&["ip", "link", "set", "sidepeer", "up"]);
    xlb_tests::netns::sh(&["ip", "route", "replace", "10.244.1.0/24", "dev", "side"]);
    let syn = packet::tcp((CLIENT, 43000), (VIP, 80), flags::SYN, b"");
    let (rc, out) = dp.xdp(&syn);
    assert_eq!((rc, &out), (XDP_PASS, &syn));
    assert!(
        dp.maps.conntrack_entries().unwrap().is_empty(),
        "XDP wrote state for a deferred packet"
    );
    let (rc, out) = dp.tc(prog_names::HOST_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert!(BACKENDS.contains(&packet::parse(&out).dst));
    assert_eq!(dp.counters()[counter::CT_NEW as usize], 1);
}

#[test]
fn sctp_is_translated_when_its_port_is_kept_and_refused_otherwise() {
    let mut dp = datapath();
    let vip = Ipv4Addr::new(10, 96, 0, 40);
    let mut d = DesiredState::default();
    for (name, port, target) in [("same", 9000, 9000), ("rewrite", 9001, 7000)] {
        let s = svc(name, vec![fe(vip, port, Protocol::Sctp)], &BACKENDS, target);
        d.services.insert(s.name.clone(), s);
    }
    dp.program(&d);
    let sctp = |dport: u16| packet::sctp((CLIENT, 5000), (vip, dport));
    let pkt = sctp(9000);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &pkt);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    assert!(BACKENDS.contains(&dst), "{dst}");
    assert_eq!(out[34..38], pkt[34..38], "ports unchanged");
    assert_eq!(
        out[42..46],
        pkt[42..46],
        "CRC32c untouched (it does not cover the IP header)"
    );
    assert_eq!(
        lb_common::csum::fold(lb_common::csum::sum_be(&out[14..34], 0)),
        0xffff
    );
    let (rc, _) = dp.tc(prog_names::POD_INGRESS, &sctp(9001));
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(
        dp.counters()[(counter::DROP_BASE + drop_reason::SCTP_PORT_REWRITE) as usize],
        1
    );
}

/// The fixture datapath's address filters, as its sync keeps them.
fn filters(dp: &mut Datapath) -> &mut lb_userspace::bpf::filter::Filters {
    dp.sync.writer_mut().filters().expect("filters")
}

#[test]
fn address_filters_track_the_maps_and_gate_both_lookups() {
    use lb_common::filter::bit;
    use lb_userspace::bpf::maps::Maps;
    let mut dp = datapath();
    let vip2 = Ipv4Addr::new(10, 96, 0, 20);
    let web = bit(VIP.octets(), 80, 6);
    let dns = bit(VIP.octets(), 53, 17);
    let be = |a: Ipv4Addr, port| bit(a.octets(), port, 0);
    let f = filters(&mut dp);
    for b in [web, dns, bit(EMPTY_VIP.octets(), 80, 6)] {
        assert!(f.frontends.is_set(b), "frontend bit {b} clear");
    }
    for a in BACKENDS {
        assert!(f.backends.is_set(be(a, 8080)) && f.backends.is_set(be(a, 5353)));
    }
    assert!(!f.frontends.is_set(bit(CLIENT.octets(), 40000, 6)));

    // The datapath reads them: with the frontend's bit cleared by hand the SYN is not a
    // service's, with the backend's bit cleared its reply is not reverse-translated.
    let syn = packet::tcp((CLIENT, 41000), (VIP, 80), flags::SYN, b"");
    filters(&mut dp).frontends.remove(web);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!((rc, &out), (TCX_NEXT, &syn), "filtered frontend translated");
    filters(&mut dp).frontends.add(web);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let chosen = packet::parse(&out).dst;
    let synack = packet::tcp(
        (chosen, 8080),
        (CLIENT, 41000),
        flags::SYN | flags::ACK,
        b"",
    );
    filters(&mut dp).backends.remove(be(chosen, 8080));
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!((rc, &out), (TCX_NEXT, &synack), "filtered reply translated");
    filters(&mut dp).backends.add(be(chosen, 8080));
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!((rc, packet::parse(&out).src), (TC_ACT_REDIRECT, VIP));

    // Bits follow the services: "web" goes; "web2" shares one of its backends, which stays.
    let mut d = DesiredState::default();
    for s in [
        svc(
            "web2",
            vec![fe(vip2, 80, Protocol::Tcp)],
            &BACKENDS[..1],
            8080,
        ),
        svc("dns", vec![fe(VIP, 53, Protocol::Udp)], &BACKENDS, 5353),
        svc::<Ipv4Addr>("empty", vec![fe(EMPTY_VIP, 80, Protocol::Tcp)], &[], 8080),
    ] {
        d.services.insert(s.name.clone(), s);
    }
    dp.program(&d);
    let f = filters(&mut dp);
    assert!(!f.frontends.is_set(web), "removed frontend's bit kept");
    assert!(f.frontends.is_set(bit(vip2.octets(), 80, 6)) && f.frontends.is_set(dns));
    assert!(
        f.backends.is_set(be(BACKENDS[0], 8080)),
        "shared backend's bit cleared"
    );
    for a in &BACKENDS[1..] {
        assert!(
            !f.backends.is_set(be(*a, 8080)),
            "removed backend's bit kept"
        );
        assert!(f.backends.is_set(be(*a, 5353)));
    }
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!(
        (rc, &out),
        (TCX_NEXT, &syn),
        "removed service still translated"
    );

    // A bit nothing is behind (left by a crash) is cleared when an agent adopts the maps;
    // every key's bit stays.
    let stray = bit([192, 0, 2, 1], 443, 6);
    let mut other = Maps::open(&dp.maps.dir).expect("open maps");
    other.filters().unwrap().frontends.add(stray);
    drop(other);
    let mut adopter = Maps::open(&dp.maps.dir).expect("open maps");
    let f = adopter.filters().unwrap();
    assert!(!f.frontends.is_set(stray), "stray bit survived adoption");
    assert!(f.frontends.is_set(dns) && f.backends.is_set(be(BACKENDS[0], 8080)));
    let (rc, _) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::udp((CLIENT, 7100), (VIP, 53), b"q", true),
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
}

#[test]
fn nat_slots_gate_reply_lookups_to_backends_with_translated_flows() {
    use lb_common::filter::{backend_nat_slot, bit};
    use lb_userspace::bpf::maps::Maps;
    let mut dp = datapath();
    let slot_of = |a: Ipv4Addr, port| backend_nat_slot(a.octets(), port);
    // No flow yet: no backend's replies are looked up.
    for a in BACKENDS {
        assert!(
            !filters(&mut dp).nat.is_set(slot_of(a, 8080)),
            "slot raised early"
        );
    }

    // A translated flow raises its backend's slot before its first reply.
    let syn = packet::tcp((CLIENT, 42000), (VIP, 80), flags::SYN, b"");
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let chosen = packet::parse(&out).dst;
    let slot = slot_of(chosen, 8080);
    assert!(
        filters(&mut dp).nat.is_set(slot),
        "flow recorded, slot not raised"
    );
    let synack = packet::tcp(
        (chosen, 8080),
        (CLIENT, 42000),
        flags::SYN | flags::ACK,
        b"",
    );
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!((rc, packet::parse(&out).src), (TC_ACT_REDIRECT, VIP));

    // The datapath reads it: zeroed by hand, the reply skips the lookup (goes out untranslated)
    // until the client's next packet, a conntrack hit, raises it again.
    filters(&mut dp).nat.clear(slot);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!(
        (rc, &out),
        (TCX_NEXT, &synack),
        "reply looked up with slot zero"
    );
    let ack = packet::tcp((CLIENT, 42000), (VIP, 80), flags::ACK, b"");
    let (rc, _) = dp.tc(prog_names::POD_INGRESS, &ack);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert!(
        filters(&mut dp).nat.is_set(slot),
        "conntrack hit did not raise the slot"
    );
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!((rc, packet::parse(&out).src), (TC_ACT_REDIRECT, VIP));

    // An agent adopting slots that are all zero (an upgrade created the map) raises them from
    // the conntrack reply entries.
    for s in 0..1u32 << lb_common::filter::NAT_SLOTS_LOG2 {
        filters(&mut dp).nat.clear(s);
    }
    let mut adopter = Maps::open(&dp.maps.dir).expect("open maps");
    assert!(
        adopter.filters().unwrap().nat.is_set(slot),
        "adoption left a tracked backend's slot zero"
    );
    drop(adopter);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &synack);
    assert_eq!((rc, packet::parse(&out).src), (TC_ACT_REDIRECT, VIP));

    // The slot goes with the last backend of its backend-filter word: with "web" gone no
    // backend is left in that word (the remaining 5353 backends hash elsewhere); the slot of a
    // backend still present stays.
    let (rc, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::udp((CLIENT, 7200), (VIP, 53), b"q", true),
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    let dns_slot = slot_of(packet::parse(&out).dst, 5353);
    assert!(filters(&mut dp).nat.is_set(dns_slot));
    let mut d = DesiredState::default();
    let s = svc("dns", vec![fe(VIP, 53, Protocol::Udp)], &BACKENDS, 5353);
    d.services.insert(s.name.clone(), s);
    dp.program(&d);
    let f = filters(&mut dp);
    assert!(
        !f.backends.word_set(bit(chosen.octets(), 8080, 0)),
        "test premise: another backend shares the word"
    );
    assert!(!f.nat.is_set(slot), "slot kept with no backend behind it");
    assert!(
        f.nat.is_set(dns_slot),
        "a present backend's slot was zeroed"
    );
}

#[test]
fn every_program_verifies_well_inside_the_kernels_budget() {
    // The verifier walks every path of a program and gives up at a million instructions.
    // Each stage is a program of its own (tail calls), so paths add up per stage; a stage
    // near the limit is one small change from failing to load, so half of it is the bound.
    let mut dp = datapath();
    let mut seen = 0;
    for (name, prog) in dp.ebpf.programs_mut() {
        let Ok(info) = prog.info() else { continue };
        let n = info.verified_instruction_count().unwrap_or(0);
        println!("{name}: {n} instructions verified");
        assert!(n < 500_000, "{name}: {n} verified instructions");
        seen += 1;
    }
    assert!(seen >= 3 + 11, "only {seen} programs loaded");
}
