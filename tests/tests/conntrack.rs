//! Connection tracking and packet edge cases through the loaded programs (BPF_PROG_TEST_RUN):
//! floods of new flows, one-way UDP, resets, reused tuples, SCTP with SNAT, fragments, TTL
//! and MTU. Every test here failed against the datapath before these were handled.

use std::{net::Ipv4Addr, time::Duration};

use lb_common::{counter, ct_state, drop_reason, prog_names};
use lb_userspace::{
    bpf::Capacities,
    model::{DesiredState, Frontend, FrontendKind, Protocol},
};
use xlb_tests::{
    datapath::Datapath,
    fixture::*,
    packet::{self, flags},
};

fn count(dp: &Datapath, c: u32) -> u64 {
    dp.counters()[c as usize]
}

fn dropped(dp: &Datapath, reason: u32) -> u64 {
    count(dp, counter::DROP_BASE + reason)
}

/// A TCP flow through the handshake: SYN, SYN/ACK, ACK. Returns the backend.
fn handshake(
    dp: &mut Datapath,
    hook: &'static str,
    client: (Ipv4Addr, u16),
    to: (Ipv4Addr, u16),
) -> Ipv4Addr {
    let syn = packet::tcp_seq(client, to, flags::SYN, 1000, 0, b"");
    let (rc, out) = dp.tc(hook, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT, "SYN of {client:?}");
    let be = packet::parse(&out).dst;
    let syn_ack = packet::tcp_seq((be, 8080), client, flags::SYN | flags::ACK, 5000, 1001, b"");
    let (_, back) = dp.tc(hook, &syn_ack);
    assert_eq!(packet::parse(&back).src, to.0, "SYN/ACK of {client:?}");
    let ack = packet::tcp_seq(client, to, flags::ACK, 1001, 5001, b"");
    dp.tc(hook, &ack);
    be
}

#[test]
fn a_flood_of_new_flows_ten_times_the_table_evicts_no_confirmed_flow() {
    let caps = Capacities {
        conntrack: 4096,
        ct_new: 1024,
        ..Capacities::default()
    };
    let mut dp = datapath_with(caps);
    let vip = (VIP, 80);
    let mut flows = Vec::new();
    for i in 0..500u16 {
        let client = (CLIENT, 20000 + i);
        flows.push((
            client,
            handshake(&mut dp, prog_names::HOST_INGRESS, client, vip),
        ));
    }
    assert_eq!(count(&dp, counter::CT_CONFIRMED), 500);
    // Ten times the table of confirmed flows: spoofed SYNs and one-way UDP from new sources,
    // which get answers that nobody acknowledges.
    for i in 0..40_960u32 {
        let src = Ipv4Addr::from(0xc612_0000 + i); // 198.18.0.0/15
        let pkt = if i % 2 == 0 {
            packet::tcp((src, 1024 + (i % 60000) as u16), vip, flags::SYN, b"")
        } else {
            packet::udp((src, 1024 + (i % 60000) as u16), (VIP, 53), b"q", true)
        };
        let (_, out) = dp.tc(prog_names::HOST_INGRESS, &pkt);
        if i % 4 == 0 {
            // Some are answered (SYN/ACK, UDP reply): still not confirmed.
            let p = packet::parse(&out);
            let reply = if p.proto == 6 {
                packet::tcp(
                    (p.dst, p.dport),
                    (p.src, p.sport),
                    flags::SYN | flags::ACK,
                    b"",
                )
            } else {
                packet::udp((p.dst, p.dport), (p.src, p.sport), b"a", true)
            };
            dp.tc(prog_names::HOST_INGRESS, &reply);
        }
    }
    assert_eq!(
        count(&dp, counter::CT_CONFIRMED),
        500,
        "the flood confirmed flows"
    );
    let confirmed = dp
        .maps
        .conntrack_tables()
        .unwrap()
        .into_iter()
        .filter(|(_, _, c)| *c)
        .count();
    assert_eq!(
        confirmed, 1000,
        "entries of confirmed flows after the flood"
    );
    let hits = count(&dp, counter::CT_HIT);
    for (client, be) in &flows {
        let ack = packet::tcp_seq(*client, vip, flags::ACK, 1001, 5001, b"more");
        let (_, out) = dp.tc(prog_names::HOST_INGRESS, &ack);
        assert_eq!(packet::parse(&out).dst, *be, "flow of {client:?} moved");
    }
    assert_eq!(count(&dp, counter::CT_HIT) - hits, 500);
    assert_eq!(
        count(&dp, counter::CT_MISSING),
        0,
        "a confirmed flow's state was lost"
    );
}

#[test]
fn a_mostly_one_way_udp_flow_keeps_its_reply_entry() {
    let mut dp = datapath();
    dp.set_config(|c| c.ct_udp = 2);
    let client = (CLIENT, 7000);
    let (_, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::udp(client, (VIP, 53), b"q", true),
    );
    let be = packet::parse(&out).dst;
    // Only the client speaks, for twice the timeout.
    for _ in 0..9 {
        std::thread::sleep(Duration::from_millis(500));
        dp.tc(
            prog_names::POD_INGRESS,
            &packet::udp(client, (VIP, 53), b"q", true),
        );
    }
    let (_, back) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::udp((be, 5353), client, b"late answer", true),
    );
    let p = packet::parse(&back);
    assert_eq!(
        (p.src, p.sport),
        (VIP, 53),
        "the late reply was not translated"
    );
}

#[test]
fn only_an_rst_with_the_expected_sequence_closes_an_established_flow() {
    let mut dp = datapath();
    let client = (CLIENT, 41000);
    let vip = (VIP, 80);
    let be = handshake(&mut dp, prog_names::POD_INGRESS, client, vip);
    // 100 bytes from the client: its next sequence number is 1101.
    dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp_seq(client, vip, flags::ACK, 1001, 5001, &[7; 100]),
    );
    let states = |dp: &Datapath| -> Vec<u8> {
        dp.maps
            .conntrack_entries()
            .unwrap()
            .iter()
            .map(|(_, v)| v.state)
            .collect()
    };
    // Blind RSTs (one from each side, sequence numbers off): forwarded, counted, ignored.
    for rst in [
        packet::tcp_seq(client, vip, flags::RST, 1_234_567, 0, b""),
        packet::tcp_seq((be, 8080), client, flags::RST, 99, 0, b""),
    ] {
        let (rc, _) = dp.tc(prog_names::POD_INGRESS, &rst);
        assert_eq!(rc, TC_ACT_REDIRECT, "an RST is forwarded either way");
    }
    assert_eq!(count(&dp, counter::RST_IGNORED), 2);
    assert!(
        states(&dp).iter().all(|s| *s == ct_state::ESTABLISHED),
        "{:?}",
        states(&dp)
    );
    // The real one.
    dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp_seq(client, vip, flags::RST, 1101, 0, b""),
    );
    assert!(
        states(&dp).iter().all(|s| *s == ct_state::CLOSED),
        "{:?}",
        states(&dp)
    );
}

#[test]
fn a_reused_tuple_never_removes_the_reply_entry_another_flow_took_over() {
    let mut dp = datapath();
    dp.set_config(|c| c.ct_tcp_syn = 1);
    // A second service whose only backend is the first flow's: the two flows' reply tuples
    // (backend → client port) are the same.
    let client = (CLIENT, 40000);
    let (_, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp(client, (VIP, 80), flags::SYN, b""),
    );
    let be = packet::parse(&out).dst;
    let vip2 = Ipv4Addr::new(10, 96, 0, 20);
    let mut d = services();
    let s = svc("other", vec![fe(vip2, 80, Protocol::Tcp)], &[be], 8080);
    d.services.insert(s.name.clone(), s);
    dp.program(&d);
    // The first flow expires; the second takes its reply tuple over.
    std::thread::sleep(Duration::from_millis(2100));
    dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp(client, (vip2, 80), flags::SYN, b""),
    );
    // A new SYN on the first tuple: its old reply entry is the second flow's now, and stays.
    dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp(client, (VIP, 80), flags::SYN, b""),
    );
    let (_, back) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp((be, 8080), client, flags::SYN | flags::ACK, b""),
    );
    let p = packet::parse(&back);
    assert_eq!(
        (p.src, p.sport),
        (vip2, 80),
        "the second flow's reply entry was removed"
    );
}

#[test]
fn a_closed_flows_fin_never_reaches_the_entry_of_a_flow_that_took_its_tuple_over() {
    let mut dp = datapath();
    let client = (CLIENT, 40000);
    let hook = prog_names::POD_INGRESS;
    // The first flow: a SYN, refused by the backend (an RST answering it closes the flow).
    let (_, out) = dp.tc(
        hook,
        &packet::tcp_seq(client, (VIP, 80), flags::SYN, 1000, 0, b""),
    );
    let be = packet::parse(&out).dst;
    dp.tc(
        hook,
        &packet::tcp_seq((be, 8080), client, flags::RST | flags::ACK, 0, 1001, b""),
    );
    // The client dials the backend straight from the same port (its SYN retires the closed
    // flow's reply entry), then a second service whose only backend is that one: the second
    // flow takes the reply tuple (backend → client port) over.
    dp.tc(
        hook,
        &packet::tcp_seq(client, (be, 8080), flags::SYN, 1000, 0, b""),
    );
    let vip2 = Ipv4Addr::new(10, 96, 0, 20);
    let mut d = services();
    let s = svc("other", vec![fe(vip2, 80, Protocol::Tcp)], &[be], 8080);
    d.services.insert(s.name.clone(), s);
    dp.program(&d);
    let (rc, _) = dp.tc(
        hook,
        &packet::tcp_seq(client, (vip2, 80), flags::SYN, 3000, 0, b""),
    );
    assert_eq!(rc, TC_ACT_REDIRECT, "the second flow's SYN");
    // A late FIN on the first flow's tuple: its forward entry (closed) still forwards it, and
    // the FIN must not reach the reply entry the second flow owns now.
    dp.tc(
        hook,
        &packet::tcp_seq(client, (VIP, 80), flags::FIN | flags::ACK, 1001, 1, b""),
    );
    let reply = dp
        .maps
        .conntrack_tables()
        .expect("conntrack")
        .into_iter()
        .find(|(k, _, _)| k.saddr == be.octets() && k.dport == 40000 && k.dir == 2)
        .map(|(_, v, _)| v)
        .expect("the second flow's reply entry");
    assert_eq!(reply.nat_saddr, vip2.octets(), "owned by the second flow");
    assert_eq!(
        (reply.state, reply.flags & lb_common::ct_flags::FIN_FWD),
        (ct_state::SYN_SENT, 0),
        "the first flow's FIN closed the second flow's reply entry"
    );
    let (_, back) = dp.tc(
        hook,
        &packet::tcp_seq((be, 8080), client, flags::SYN | flags::ACK, 5000, 3001, b""),
    );
    assert_eq!(packet::parse(&back).src, vip2, "the second flow's SYN/ACK");
}

#[test]
fn sctp_through_snat_keeps_its_port_and_comes_back() {
    let mut dp = north_south(false);
    let mut d = DesiredState::default();
    let mut s = svc("sctp", vec![], &[REMOTE], 9000);
    s.endpoints[0].local = false;
    s.frontends = vec![Frontend {
        kind: FrontendKind::LoadBalancer,
        ..fe(LB_IP, 9000, Protocol::Sctp)
    }];
    d.services.insert(s.name.clone(), s);
    dp.program(&d);
    let init = packet::sctp((OUTSIDE, 5000), (LB_IP, 9000));
    let (rc, out) = dp.xdp(&init);
    assert_eq!(rc, XDP_TX, "SCTP through SNAT was refused");
    let p = packet::parse_addrs(&out);
    assert_eq!(p, (NODE_IP, 5000, REMOTE, 9000));
    assert_eq!(out[42..46], init[42..46], "the CRC32c covers no address");
    let (_, back) = dp.xdp(&packet::sctp((REMOTE, 9000), (NODE_IP, 5000)));
    assert_eq!(packet::parse_addrs(&back), (LB_IP, 9000, OUTSIDE, 5000));
    assert_eq!(dropped(&dp, drop_reason::SNAT_EXHAUSTED), 0);
}

#[test]
fn a_fragmented_datagram_is_translated_both_ways() {
    let mut dp = datapath();
    let client = (CLIENT, 7001);
    let query = packet::udp(client, (VIP, 53), &[1u8; 3000], true);
    let frags = packet::fragment(&query, 1480, 0x4242);
    assert_eq!(frags.len(), 3);
    // A later fragment before the first is not known yet: untouched, counted.
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &frags[1]);
    assert_eq!((rc, &out), (TCX_NEXT, &frags[1]));
    assert_eq!(count(&dp, counter::FRAGMENT), 1);
    let out: Vec<Vec<u8>> = frags
        .iter()
        .map(|f| {
            let (rc, out) = dp.tc(prog_names::POD_INGRESS, f);
            assert_eq!(rc, TC_ACT_REDIRECT);
            out
        })
        .collect();
    let whole = packet::parse(&packet::reassemble(&out));
    assert_valid(&whole, "reassembled query");
    assert!(
        BACKENDS.contains(&whole.dst) && whole.dport == 5353,
        "{whole:?}"
    );
    // The answer, fragmented by the backend.
    let answer = packet::udp((whole.dst, 5353), client, &[2u8; 4000], true);
    let back: Vec<Vec<u8>> = packet::fragment(&answer, 1480, 0x7)
        .iter()
        .map(|f| dp.tc(prog_names::POD_INGRESS, f).1)
        .collect();
    let whole = packet::parse(&packet::reassemble(&back));
    assert_valid(&whole, "reassembled answer");
    assert_eq!((whole.src, whole.sport, whole.dst), (VIP, 53, CLIENT));
    assert_eq!(count(&dp, counter::FRAG_XLATE), 3 + 3);
}

#[test]
fn ttl_is_decremented_and_a_ttl_of_one_answered_with_time_exceeded() {
    let mut dp = datapath();
    let syn = packet::tcp((CLIENT, 42000), (VIP, 80), flags::SYN, b"");
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &syn);
    assert_eq!(packet::ttl(&out), packet::ttl(&syn) - 1);
    assert_valid(&packet::parse(&out), "decremented TTL");

    let last = packet::with_ttl(packet::tcp((CLIENT, 42001), (VIP, 80), flags::SYN, b""), 1);
    // XDP leaves it to tc, untouched.
    let (rc, out) = dp.xdp(&last);
    assert_eq!((rc, &out), (XDP_PASS, &last));
    let entries = dp.maps.conntrack_entries().unwrap().len();
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &last);
    assert_eq!(rc, TC_ACT_REDIRECT, "the error goes back to the client");
    let e = packet::parse_icmp(&out);
    assert!(e.ip_csum_ok && e.icmp_csum_ok && e.inner_csum_ok, "{e:?}");
    assert_eq!((e.icmp_type, e.code, e.src, e.dst), (11, 0, VIP, CLIENT));
    assert_eq!(
        (e.inner_src, e.inner_sport, e.inner_dst, e.inner_dport),
        (CLIENT, 42001, VIP, 80),
        "the error quotes the packet as the client sent it"
    );
    assert_eq!(
        dp.maps.conntrack_entries().unwrap().len(),
        entries,
        "no flow for a packet that went nowhere"
    );
    assert_eq!(dropped(&dp, drop_reason::TTL_EXCEEDED), 1);
    assert_eq!(count(&dp, counter::ICMP_SENT), 1);
    // A flood of them gets at most a hundred errors per second and CPU.
    for port in 0..300 {
        let p = packet::with_ttl(
            packet::tcp((CLIENT, 10000 + port), (VIP, 80), flags::SYN, b""),
            1,
        );
        dp.tc(prog_names::POD_INGRESS, &p);
    }
    assert!(
        count(&dp, counter::ICMP_SENT) <= 201,
        "errors are not rate-limited"
    );
}

#[test]
fn too_big_for_the_next_hop_with_df_gets_fragmentation_needed() {
    let mut dp = datapath();
    xlb_tests::netns::sh(&[
        "ip",
        "link",
        "set",
        xlb_tests::datapath::UPLINK,
        "mtu",
        "1300",
    ]);
    let big = packet::tcp((CLIENT, 43000), (VIP, 80), flags::ACK, &[0u8; 1400]);
    // XDP cannot answer: untouched, for tc.
    let (rc, out) = dp.xdp(&big);
    assert_eq!((rc, &out), (XDP_PASS, &big));
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &big);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let e = packet::parse_icmp(&out);
    assert!(e.ip_csum_ok && e.icmp_csum_ok && e.inner_csum_ok, "{e:?}");
    assert_eq!((e.icmp_type, e.code, e.dst), (3, 4, CLIENT));
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1300, "next-hop MTU");
    assert_eq!((e.inner_dst, e.inner_dport), (VIP, 80));
    assert_eq!(dropped(&dp, drop_reason::FRAG_NEEDED), 1);
    // Without DF the stack fragments it: translated, handed on.
    let mut no_df = big.clone();
    no_df[20] = 0;
    no_df[24..26].copy_from_slice(&[0, 0]);
    let c = !lb_common::csum::fold(lb_common::csum::sum_be(&no_df[14..34], 0));
    no_df[24..26].copy_from_slice(&c.to_be_bytes());
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &no_df);
    assert_eq!(rc, TCX_NEXT);
    assert!(BACKENDS.contains(&packet::parse(&out).dst));
}

#[test]
fn an_error_about_a_backends_reply_reaches_the_backend() {
    let mut dp = datapath();
    let client = (CLIENT, 44000);
    let be = handshake(&mut dp, prog_names::POD_INGRESS, client, (VIP, 80));
    // The backend's big reply, as it left the node (from the VIP), and a router on the
    // client's side finding it too big.
    let reply = packet::tcp_seq((VIP, 80), client, flags::ACK, 5001, 1001, &[0u8; 1400]);
    let router = Ipv4Addr::new(10, 244, 9, 1);
    let err = packet::icmp_error(router, VIP, 3, 4, &reply);
    let (rc, out) = dp.tc(prog_names::POD_INGRESS, &err);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let e = packet::parse_icmp(&out);
    assert!(e.ip_csum_ok && e.icmp_csum_ok && e.inner_csum_ok, "{e:?}");
    assert_eq!((e.src, e.dst, e.code), (router, be, 4));
    assert_eq!(
        (e.inner_src, e.inner_sport, e.inner_dst, e.inner_dport),
        (be, 8080, CLIENT, 44000),
        "the error quotes the reply as the backend sent it"
    );
}
