//! `cargo xtask bench datapath`: nanoseconds per packet measured by the kernel
//! (BPF_PROG_TEST_RUN, repeat ≥ 1e6), as ratios to a parse-and-pass floor measured in the same
//! round, with 1 and with 10,000 services programmed.
//!
//! Scenarios at tc (pod ingress) and at XDP (uplink), each against the floor of its hook:
//! - floor: `xlb_floor` parses Ethernet/IPv4/TCP and passes;
//! - CT miss: the first packet of a flow — frontend lookup, Maglev selection, both conntrack
//!   entries written, DNAT. Every run is a miss because the benchmark's conntrack timeouts make
//!   each entry expire at once (slightly pessimistic: the stale entry is also overwritten);
//! - CT hit: a packet of an established flow;
//! - reply: reverse NAT of a backend's answer;
//! - not a service: a pod-to-pod packet (both address filters clear), and a backend's packet
//!   on a flow xlb never translated — from a backend with translated flows too (the reply
//!   lookup misses) and from one reached only at the socket (NAT slot zero: no lookup);
//! - XDP CT hit / XDP SNAT CT miss / XDP SNAT CT hit: north-south at XDP, forwarded with
//!   XDP_TX (the floor parses, swaps MACs and transmits);
//! - IPv6 CT miss / CT hit / reply / not a service / XDP CT hit: the same for an IPv6
//!   ping-pong pair, against the same (IPv4) floors, with their ratio to the IPv4 figure;
//! - throughput: packets per second of live frames pushed by a generator namespace through a
//!   native-XDP uplink and back, xlb (an established SNATed flow) vs the floor program.
//!
//! BPF_PROG_TEST_RUN repeats on the same packet buffer, so a translated packet would be seen
//! untranslated-looking by the next repeat (and take the cheap "not a service" path). The
//! benchmark therefore measures a ping-pong pair: service `ping` (VIP A:80) has backends
//! B1..B10:8080, and service `pong` has those B addresses as frontends and A:80 as backend, so
//! every repeat is a real translation of the scenario's kind. Counter deltas printed with the
//! results prove which path ran.

use std::net::{Ipv4Addr, Ipv6Addr};

use clap::Parser;
use lb_common::{counter, prog_names};
use lb_userspace::{
    maglev::{DEFAULT_TABLE_SIZE, MaglevSize},
    model::{
        Algorithm, DesiredState, Endpoint, EndpointState, Frontend, FrontendKind, LbService,
        Protocol, Scope,
    },
};
use xlb_benches::{
    object::{self, prog},
    stats::median,
};
use xlb_tests::{
    datapath::Datapath,
    netns::{require_root, unique_tag},
    packet::{self, flags},
    packet6,
};

const REPEAT: u32 = 1_000_000;
/// Repeats of an XDP scenario: every XDP test run swaps the program into the kernel's XDP
/// dispatcher and back (two RCU grace periods, milliseconds), and a routed packet lasts
/// `ROUTED_RUN` repeats, so XDP takes 40 runs of 250.
const XDP_REPEAT: u32 = 40 * xlb_tests::datapath::ROUTED_RUN;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// A pod that is neither a frontend nor a backend.
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);

/// The fixture datapath's NAT'd-backend slots.
fn nat_slots(dp: &mut Datapath) -> &lb_userspace::bpf::filter::NatSlots {
    &dp.sync.writer_mut().filters().expect("filters").nat
}

fn service(i: u32) -> LbService {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
    LbService {
        name: format!("bench/svc-{i}:80/TCP"),
        frontends: vec![Frontend {
            addr: vip.into(),
            port: 80,
            proto: Protocol::Tcp,
            scope: Scope::External,
            kind: FrontendKind::ClusterIp,
            source_ranges: false,
        }],
        endpoints: (0..10u32)
            .map(|e| Endpoint {
                addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + e).into(),
                port: 8080,
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

struct Row {
    services: usize,
    name: &'static str,
    ns: f64,
    floor: f64,
}

fn ping_pong() -> (LbService, LbService, Ipv4Addr) {
    let a = Ipv4Addr::new(10, 95, 0, 1);
    let bs: Vec<Ipv4Addr> = (1..=10).map(|i| Ipv4Addr::new(10, 95, 1, i)).collect();
    let mut ping = service(0);
    ping.name = "bench/ping:80/TCP".into();
    ping.frontends[0].addr = a.into();
    for (e, b) in ping.endpoints.iter_mut().zip(&bs) {
        e.addr = (*b).into();
    }
    let mut pong = service(0);
    pong.name = "bench/pong:8080/TCP".into();
    pong.frontends = bs
        .iter()
        .map(|b| Frontend {
            addr: (*b).into(),
            port: 8080,
            ..ping.frontends[0]
        })
        .collect();
    pong.endpoints.truncate(1);
    pong.endpoints[0].addr = a.into();
    pong.endpoints[0].port = 80;
    (ping, pong, a)
}

// IPv6 addresses inside the fixture's routed prefixes (`datapath::ROUTED6`), as the IPv4 ones
// are inside its IPv4 prefixes: XDP forwards only what the FIB routes.
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x10);
const OTHER_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 7);

/// `ping_pong` in IPv6: `ping6` (fd00:10:96::5:1, port 80) → fd00:10:244:95::1..10:8080,
/// `pong6` back.
fn ping_pong6() -> (LbService, LbService, Ipv6Addr) {
    let a = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 5, 1);
    let (mut ping, mut pong, _) = ping_pong();
    ping.name = "bench/ping6:80/TCP".into();
    pong.name = "bench/pong6:8080/TCP".into();
    ping.frontends[0].addr = a.into();
    for (i, (e, f)) in ping
        .endpoints
        .iter_mut()
        .zip(pong.frontends.iter_mut())
        .enumerate()
    {
        let b = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0x95, 0, 0, 0, i as u16 + 1);
        e.addr = b.into();
        f.addr = b.into();
    }
    pong.endpoints[0].addr = a.into();
    (ping, pong, a)
}

const SNAT_A: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// LoadBalancer services whose endpoints are on "other nodes": `nsA` (A:80) → B1..B10:8080 and
/// `nsB` (B1..B10:8080) → A:80. Every packet through one of them is SNATed.
fn snat_pair() -> (LbService, LbService) {
    let mut a = service(0);
    a.name = "bench/nsA:80/TCP".into();
    a.frontends[0].addr = SNAT_A.into();
    a.frontends[0].kind = FrontendKind::LoadBalancer;
    for (i, e) in a.endpoints.iter_mut().enumerate() {
        e.addr = Ipv4Addr::new(10, 94, 1, i as u8 + 1).into();
        e.local = false;
    }
    let mut b = service(0);
    b.name = "bench/nsB:8080/TCP".into();
    b.frontends = a
        .endpoints
        .iter()
        .map(|e| Frontend {
            addr: e.addr,
            port: 8080,
            ..a.frontends[0]
        })
        .collect();
    b.endpoints.truncate(1);
    b.endpoints[0].addr = SNAT_A.into();
    b.endpoints[0].port = 80;
    b.endpoints[0].local = false;
    (a, b)
}

fn measure(services: u32, rounds: usize, caps: lb_userspace::bpf::Capacities) -> Vec<Row> {
    let mut dp = Datapath::with_capacities(&unique_tag(), DEFAULT_TABLE_SIZE, caps);
    dp.add_object(object::open([0; object::TEMPLATE_LEN]).expect("benchmarks' object"));
    let mut d = DesiredState::default();
    for i in 1..services.saturating_sub(1) {
        let s = service(i);
        d.services.insert(s.name.clone(), s);
    }
    let (ping, pong, vip) = ping_pong();
    d.services.insert(ping.name.clone(), ping);
    d.services.insert(pong.name.clone(), pong);
    let (ping6, pong6, vip6) = ping_pong6();
    d.services.insert(ping6.name.clone(), ping6);
    d.services.insert(pong6.name.clone(), pong6);
    let (sa, sb) = snat_pair();
    d.services.insert(sa.name.clone(), sa);
    d.services.insert(sb.name.clone(), sb);
    // A service whose backends are nobody's frontend (the ping-pong's are), for the direct SYN.
    let plain = service(100_000);
    let std::net::IpAddr::V4(plain_vip) = plain.frontends[0].addr else {
        unreachable!("an IPv4 frontend")
    };
    d.services.insert(plain.name.clone(), plain);
    let t = std::time::Instant::now();
    dp.program(&d);
    eprintln!(
        "programmed {} service(s) in {:.2}s",
        d.services.len(),
        t.elapsed().as_secs_f64()
    );
    let syn = packet::tcp((CLIENT, 40000), (vip, 80), flags::SYN, b"");
    let ack = packet::tcp((CLIENT, 40001), (vip, 80), flags::ACK, &[0u8; 64]);
    // Establish the hit flow and find its backend for the reply packet.
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &ack);
    let backend = packet::parse(&out).dst;
    let reply = packet::tcp((backend, 8080), (CLIENT, 40001), flags::ACK, &[0u8; 64]);
    // Traffic xlb leaves alone: pod to pod (no frontend, not from a backend), a backend's answer
    // on a flow xlb never translated (a socket-translated connect, say) — from a backend that
    // has translated flows too (the reply lookup misses), and from one reached only at the
    // socket (its NAT slot zero: no lookup).
    let other = packet::tcp((CLIENT, 40002), (OTHER_POD, 9000), flags::ACK, &[0u8; 64]);
    let untracked = packet::tcp((backend, 8080), (CLIENT, 40003), flags::ACK, &[0u8; 64]);
    // A connect translated at the socket (or pod to pod) opening to a backend that also has
    // translated flows: its SYN also checks that no closed translated flow holds its reply
    // tuple.
    let (_, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp((CLIENT, 40005), (plain_vip, 80), flags::SYN, b""),
    );
    let plain_backend = packet::parse(&out).dst;
    assert!(
        nat_slots(&mut dp).is_set(lb_common::filter::backend_nat_slot(
            plain_backend.octets(),
            8080
        )),
        "the direct SYN must find its backend's NAT slot raised (else it skips the lookup)"
    );
    let direct_syn = packet::tcp((CLIENT, 40004), (plain_backend, 8080), flags::SYN, b"");
    let normal = dp.config;
    // IPv6: the same ping-pong, a new flow, and pod-to-pod traffic.
    let syn6 = packet6::tcp((CLIENT6, 40000), (vip6, 80), flags::SYN, b"");
    let ack6 = packet6::tcp((CLIENT6, 40001), (vip6, 80), flags::ACK, &[0u8; 64]);
    let (_, out) = dp.tc(prog_names::POD_INGRESS, &ack6);
    let backend6 = packet6::parse(&out).dst;
    assert_ne!(backend6, vip6, "the IPv6 ping must be translated");
    let reply6 = packet6::tcp((backend6, 8080), (CLIENT6, 40001), flags::ACK, &[0u8; 64]);
    let other6 = packet6::tcp((CLIENT6, 40002), (OTHER_POD6, 9000), flags::ACK, &[0u8; 64]);
    dp.time_routed(prog_names::POD_INGRESS, &ack6, REPEAT / 10);
    let (_, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet6::tcp((CLIENT6, 40001), (backend6, 8080), flags::ACK, b""),
    );
    assert_eq!(
        packet6::parse(&out).dst,
        vip6,
        "pong6 must lead back to ping6"
    );
    let (mut miss6, mut hit6, mut rev6, mut pass6) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut xhit6 = Vec::new();

    let mut floor = Vec::new();
    let mut miss = Vec::new();
    let mut hit = Vec::new();
    let mut rev = Vec::new();
    let mut pass_other = Vec::new();
    let mut pass_untracked = Vec::new();
    let mut pass_socket_only = Vec::new();
    let mut pass_direct_syn = Vec::new();
    let nat_slot = lb_common::filter::backend_nat_slot(backend.octets(), 8080);
    // Warm-up (this also creates the pong flow of the reply ping-pong).
    dp.time_routed(prog::FLOOR, &ack, REPEAT / 10);
    dp.time_routed(prog_names::POD_INGRESS, &ack, REPEAT / 10);
    let (_, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp((CLIENT, 40001), (backend, 8080), flags::ACK, b""),
    );
    assert_eq!(packet::parse(&out).dst, vip, "pong must lead back to ping");
    let delta = |dp: &Datapath, before: &[u64], idx: u32| {
        dp.counters()[idx as usize] - before[idx as usize]
    };
    let mut checks = Vec::new();
    // The two conntrack entries of an SNATed flow through nsA, arranged so that each one's
    // translation is the other one's key: every repeat is a CT hit with four rewrites.
    let svc_a = dp.sync.service_id("bench/nsA:80/TCP").expect("nsA");
    let svc_b = dp.sync.service_id("bench/nsB:8080/TCP").expect("nsB");
    let b1 = Ipv4Addr::new(10, 94, 1, 1);
    let be_a = dp
        .sync
        .backend_id("bench/nsA:80/TCP", b1, 8080)
        .expect("backend");
    let be_b = dp
        .sync
        .backend_id("bench/nsB:8080/TCP", SNAT_A, 80)
        .expect("backend");
    let snat_src = Ipv4Addr::from(dp.config.snat_addr);
    let entry = |svc_id, backend_id, s: (Ipv4Addr, u16), d: (Ipv4Addr, u16)| lb_common::CtValue {
        svc_id,
        backend_id,
        created: 0,
        expires: u32::MAX - 1,
        nat_saddr: s.0.octets(),
        nat_daddr: d.0.octets(),
        nat_sport: s.1,
        nat_dport: d.1,
        state: lb_common::ct_state::ESTABLISHED,
        flags: lb_common::ct_flags::XLATE_SRC
            | lb_common::ct_flags::XLATE_DST
            | lb_common::ct_flags::SNAT,
        hook: lb_common::hook::XDP,
        route_flags: 0,
        route_ifindex: 0,
        route_at: 0,
        route_macs: [0; 12],
        seq_end: 0,
        route_mtu: 0,
        _pad: 0,
    };
    let key = |s: (Ipv4Addr, u16), d: (Ipv4Addr, u16)| lb_common::CtKey {
        saddr: s.0.octets(),
        daddr: d.0.octets(),
        sport: s.1,
        dport: d.1,
        proto: 6,
        dir: lb_common::ct_dir::FORWARD,
        _pad: [0; 2],
    };
    let client = (OUTSIDE, 41000);
    let front = (SNAT_A, 80);
    let snatted = (snat_src, 61000);
    let via = (b1, 8080);
    let snat_entries = [
        (key(client, front), entry(svc_a, be_a, snatted, via)),
        (key(snatted, via), entry(svc_b, be_b, client, front)),
    ];
    for (k, v) in snat_entries {
        dp.put_ct(k, v);
    }
    let snat_hit = packet::tcp(client, front, flags::ACK, &[0u8; 64]);
    // A new client port every run: each run's first SYN is a new flow too.
    let snat_miss = |run: u32| {
        let port = 20000 + u16::try_from(run % 20000).expect("port");
        packet::tcp((OUTSIDE, port), front, flags::SYN, b"")
    };
    let (rc, out) = dp.xdp(&snat_hit);
    assert_eq!(
        (rc, packet::parse(&out).dst),
        (3, b1),
        "the SNAT pair must loop via XDP_TX"
    );
    let mut xfloor = Vec::new();
    let mut xhit = Vec::new();
    let mut xmiss = Vec::new();
    let mut xsnat_hit = Vec::new();
    // Interleaved rounds so drift hits every scenario alike.
    for round in 0..rounds {
        floor.push(dp.time_routed(prog::FLOOR, &ack, REPEAT));
        let c0 = dp.counters();
        hit.push(dp.time_routed(prog_names::POD_INGRESS, &ack, REPEAT));
        let hits = delta(&dp, &c0, counter::CT_HIT);
        let c0 = dp.counters();
        rev.push(dp.time_routed(prog_names::POD_INGRESS, &reply, REPEAT));
        let revs = delta(&dp, &c0, counter::XLATE_REV);
        let c0 = dp.counters();
        pass_other.push(dp.time(prog_names::POD_INGRESS, &other, REPEAT));
        pass_untracked.push(dp.time(prog_names::POD_INGRESS, &untracked, REPEAT));
        pass_direct_syn.push(dp.time(prog_names::POD_INGRESS, &direct_syn, REPEAT));
        // The same backend as if only socket-translated connects had reached it (the hit
        // scenario raises its slot again each round).
        nat_slots(&mut dp).clear(nat_slot);
        pass_socket_only.push(dp.time(prog_names::POD_INGRESS, &untracked, REPEAT));
        assert!(
            !nat_slots(&mut dp).is_set(nat_slot),
            "untracked packets raised the slot"
        );
        let passed = delta(&dp, &c0, counter::NOT_SERVICE);
        dp.set_config(|c| {
            c.ct_tcp_syn = u32::MAX;
            c.ct_tcp_established = u32::MAX;
        });
        let c0 = dp.counters();
        miss.push(dp.time_routed(prog_names::POD_INGRESS, &syn, REPEAT));
        let news = delta(&dp, &c0, counter::CT_NEW);
        let c6 = dp.counters();
        miss6.push(dp.time_routed(prog_names::POD_INGRESS, &syn6, REPEAT));
        let news6 = delta(&dp, &c6, counter::CT_NEW);
        let c0 = dp.counters();
        xmiss.push(dp.time_runs(prog_names::XDP, XDP_REPEAT, snat_miss));
        let snats = delta(&dp, &c0, counter::SNAT);
        dp.set_config(|c| *c = normal);
        xfloor.push(dp.time_routed(prog::FLOOR_XDP, &ack, XDP_REPEAT));
        let c0 = dp.counters();
        xhit.push(dp.time_routed(prog_names::XDP, &ack, XDP_REPEAT));
        let xhits = delta(&dp, &c0, counter::CT_HIT);
        // The miss scenario's flows went through the LRU: put the pair back.
        for (k, v) in snat_entries {
            dp.put_ct(k, v);
        }
        let c0 = dp.counters();
        xsnat_hit.push(dp.time_routed(prog_names::XDP, &snat_hit, XDP_REPEAT));
        let xsnat_hits = delta(&dp, &c0, counter::CT_HIT);
        let c6 = dp.counters();
        hit6.push(dp.time_routed(prog_names::POD_INGRESS, &ack6, REPEAT));
        let hits6 = delta(&dp, &c6, counter::CT_HIT);
        let c6 = dp.counters();
        rev6.push(dp.time_routed(prog_names::POD_INGRESS, &reply6, REPEAT));
        let revs6 = delta(&dp, &c6, counter::XLATE_REV);
        let c6 = dp.counters();
        pass6.push(dp.time(prog_names::POD_INGRESS, &other6, REPEAT));
        let passed6 = delta(&dp, &c6, counter::NOT_SERVICE);
        let c6 = dp.counters();
        xhit6.push(dp.time_routed(prog_names::XDP, &ack6, XDP_REPEAT));
        let xhits6 = delta(&dp, &c6, counter::CT_HIT);
        if round == 0 {
            checks.push(format!(
                "path check ({services} services, IPv6): {hits6} CT hits, {revs6} reverse translations, {news6} new flows, {passed6} passed untouched; XDP: {xhits6} CT hits"
            ));
            let r = u64::from(REPEAT);
            assert!(
                hits6 >= r
                    && revs6 >= r
                    && news6 >= r
                    && passed6 >= r
                    && xhits6 >= u64::from(XDP_REPEAT),
                "{}",
                checks.last().unwrap()
            );
        }
        if round == 0 {
            checks.push(format!(
                "path check ({services} services, XDP): {xhits} CT hits, {snats} SNATed new flows, {xsnat_hits} SNAT CT hits"
            ));
            // A few of a million SNATed flows may draw a port whose reply entry another
            // flow of this same run still holds; allow 0.1%.
            let r = u64::from(XDP_REPEAT) * 999 / 1000;
            assert!(
                xhits >= r && snats >= r && xsnat_hits >= r,
                "{}",
                checks.last().unwrap()
            );
        }
        if round == 0 {
            checks.push(format!(
                "path check ({services} services): of {REPEAT} runs each, {hits} were CT hits, {revs} reverse translations, {news} new flows; {passed} of four times as many passed untouched"
            ));
            assert!(
                hits >= u64::from(REPEAT)
                    && revs >= u64::from(REPEAT)
                    && news >= u64::from(REPEAT)
                    && passed >= 4 * u64::from(REPEAT),
                "{}",
                checks.last().unwrap()
            );
        }
    }
    for c in checks {
        eprintln!("{c}");
    }
    let f = median(&floor);
    let xf = median(&xfloor);
    let n = services as usize;
    let row = |name, ns, floor| Row {
        services: n,
        name,
        ns,
        floor,
    };
    vec![
        row("floor (parse + pass)", f, f),
        row("CT miss (new flow, Maglev, DNAT)", median(&miss), f),
        row("CT hit (established, DNAT)", median(&hit), f),
        row("reply (reverse NAT)", median(&rev), f),
        row("not a service: pod to pod", median(&pass_other), f),
        row(
            "not a service: backend, untracked flow",
            median(&pass_untracked),
            f,
        ),
        row(
            "not a service: socket-only backend",
            median(&pass_socket_only),
            f,
        ),
        row(
            "not a service: SYN straight to a backend with translated flows",
            median(&pass_direct_syn),
            f,
        ),
        row("XDP floor (parse + swap MACs + XDP_TX)", xf, xf),
        row("XDP CT hit (DNAT, XDP_TX)", median(&xhit), xf),
        row(
            "XDP CT miss with SNAT (new flow, XDP_TX)",
            median(&xmiss),
            xf,
        ),
        row("XDP CT hit with SNAT (XDP_TX)", median(&xsnat_hit), xf),
        row("IPv6 CT miss (new flow, Maglev, DNAT)", median(&miss6), f),
        row("IPv6 CT hit (established, DNAT)", median(&hit6), f),
        row("IPv6 reply (reverse NAT)", median(&rev6), f),
        row("IPv6 not a service: pod to pod", median(&pass6), f),
        row("IPv6 XDP CT hit (DNAT, XDP_TX)", median(&xhit6), xf),
    ]
}

/// `cargo xtask bench datapath [-- FLAGS]`.
#[derive(Parser)]
#[command(about = "xlb datapath: kernel-measured ns/packet and XDP packets/s against floors")]
struct Opts {
    /// Interleaved rounds per scenario (the figures are their medians).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Services programmed, per measurement (at least 2: the ping-pong pair; the rest are
    /// extra services of 10 endpoints each).
    #[arg(long, value_delimiter = ',', default_values_t = [2, 10_000])]
    services: Vec<u32>,
    /// Skip the XDP throughput run (live frames between two namespaces).
    #[arg(long)]
    no_throughput: bool,
    /// Load the datapath with these service CIDRs (as `xlb agent --service-cidrs`, at most
    /// 4): what the guard costs the packets to no frontend. Keep them clear of the scenarios'
    /// addresses (10.94/16, 10.95/16, 10.128/16, 10.244/16).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    service_cidrs: Vec<lb_userspace::model::IpNet>,
}

fn parse_cidr(s: &str) -> Result<lb_userspace::model::IpNet, String> {
    lb_userspace::model::IpNet::parse(s).ok_or_else(|| format!("{s}: not an IPv4 CIDR"))
}

fn main() {
    let o = Opts::parse();
    xlb_benches::cleanup::install();
    require_root();
    let rounds = o.rounds as usize;
    if let Some(family) = lb_userspace::bpf::service_cidrs_over(&o.service_cidrs) {
        eprintln!(
            "error: --service-cidrs: at most {} {family} CIDRs",
            lb_common::capacity::SERVICE_CIDR_SLOTS
        );
        std::process::exit(2);
    }
    let caps = lb_userspace::bpf::Capacities {
        service_cidrs: lb_userspace::bpf::service_cidr_slots(&o.service_cidrs),
        ..Default::default()
    };
    println!(
        "xlb datapath: ns/packet by BPF_PROG_TEST_RUN, repeat {REPEAT} (XDP {XDP_REPEAT}), median of {rounds} rounds (tc pod ingress), service CIDRs {:?}",
        o.service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    // The smallest case is the ping-pong pair alone (2 services).
    let mut rows = Vec::new();
    for &n in &o.services {
        rows.extend(measure(n.max(2), rounds, caps));
    }
    println!();
    println!("| services | scenario | ns/packet | ratio to floor |");
    println!("|---:|---|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.2}x |",
            r.services,
            r.name,
            r.ns,
            r.ns / r.floor
        );
    }
    // IPv6 against IPv4, scenario by scenario.
    println!();
    println!("| services | scenario | IPv6 / IPv4 |");
    println!("|---:|---|---:|");
    for r6 in rows.iter().filter(|r| r.name.starts_with("IPv6 ")) {
        let name4 = &r6.name["IPv6 ".len()..];
        if let Some(r4) = rows
            .iter()
            .find(|r| r.services == r6.services && r.name == name4)
        {
            println!("| {} | {name4} | {:.2}x |", r6.services, r6.ns / r4.ns);
        }
    }
    if o.no_throughput {
        return;
    }
    println!();
    println!(
        "XDP throughput between namespaces (one veth pair, live frames, median of {rounds} rounds each):"
    );
    let tp = throughput(rounds);
    let floor = tp
        .iter()
        .find(|(n, _)| n.starts_with("floor"))
        .map_or(1.0, |t| t.1);
    println!("| path | Mpps | ratio to floor |");
    println!("|---|---:|---:|");
    for (name, mpps) in &tp {
        println!("| {name} | {mpps:.2} | {:.2}x |", mpps / floor);
    }
}

/// Runs `f` on a thread inside `ns` (borrowing from the caller).
fn in_ns<T: Send>(ns: &xlb_tests::netns::Netns, f: impl FnOnce() -> T + Send) -> T {
    let handle = ns.handle();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            xlb_tests::netns::enter(&handle);
            f()
        })
        .join()
        .expect("thread")
    })
}

fn mac_of(ns: &xlb_tests::netns::Netns, dev: &str) -> [u8; 6] {
    let j = ns.ip(&["-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("ip -j");
    let s = v[0]["address"].as_str().expect("address");
    let mut mac = [0u8; 6];
    for (i, b) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).expect("hex");
    }
    mac
}

/// Packets per second through a native-XDP uplink between two namespaces: a generator
/// transmits live frames (BPF_PROG_TEST_RUN, `BPF_F_TEST_XDP_LIVE_FRAMES`) to the node, whose
/// XDP program sends them back out (xlb: an established flow to a LoadBalancer address,
/// SNATed to a remote backend; floor: parse + swap MACs), and a sink drops them.
fn throughput(rounds: usize) -> Vec<(&'static str, f64)> {
    use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
    use xlb_tests::netns::Netns;
    const FRAMES: u32 = 3_000_000;
    let tag = unique_tag();
    let generator = Netns::new(&format!("xlbt-{tag}-gen"));
    let node = Netns::new(&format!("xlbt-{tag}-node"));
    generator.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &node.name,
    ]);
    generator.ip(&["addr", "add", "192.168.50.2/24", "dev", "eth0"]);
    node.ip(&["addr", "add", "192.168.50.1/24", "dev", "eth0"]);
    generator.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node.sysctl("net.ipv4.ip_forward", "1");
    let (gen_mac, node_mac) = (mac_of(&generator, "eth0"), mac_of(&node, "eth0"));
    let hex = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    node.ip(&[
        "neigh",
        "add",
        "192.168.50.2",
        "lladdr",
        &hex(gen_mac),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    node.ip(&["route", "add", "10.244.2.0/24", "via", "192.168.50.2"]);

    // The datapath with one LoadBalancer service whose endpoint is on another node.
    let pins = xlb_tests::agent::PinDir::new(&format!("{tag}-tp"));
    let mut frame = packet::tcp(
        (Ipv4Addr::new(192, 168, 50, 2), 40000),
        (Ipv4Addr::new(203, 0, 113, 50), 80),
        flags::ACK,
        &[0u8; 64],
    );
    frame[..6].copy_from_slice(&node_mac);
    frame[6..12].copy_from_slice(&gen_mac);
    let mut template = [0u8; 64];
    template.copy_from_slice(&frame[..64]);
    let mut product =
        lb_userspace::bpf::load(&pins.path, lb_userspace::bpf::Capacities::default(), false)
            .expect("load");
    let mut bench = object::open(template).expect("benchmarks' object");
    let mut maps = lb_userspace::bpf::maps::Maps::open(&pins.path).expect("maps");
    let mut cfg = xlb_tests::datapath::default_config();
    cfg.snat_addr = [192, 168, 50, 1];
    maps.write_config(&cfg).expect("config");
    let mut sync = lb_userspace::sync::MapSync::new(
        lb_userspace::bpf::maps::Maps::open(&pins.path).expect("maps"),
        lb_userspace::sync::SyncConfig {
            maglev_size: MaglevSize::Fixed(DEFAULT_TABLE_SIZE),
            hash_seed: 1,
            limits: lb_userspace::sync::Limits::default(),
        },
    );
    let mut s = service(0);
    s.name = "bench/lb:80/TCP".into();
    s.frontends[0].addr = Ipv4Addr::new(203, 0, 113, 50).into();
    s.frontends[0].kind = FrontendKind::LoadBalancer;
    s.endpoints.truncate(1);
    s.endpoints[0].addr = Ipv4Addr::new(10, 244, 2, 11).into();
    s.endpoints[0].local = false;
    let mut d = DesiredState::default();
    d.services.insert(s.name.clone(), s);
    assert!(sync.apply(&d).failed.is_empty());
    for name in [prog::FLOOR_XDP, prog::GEN, prog::SINK] {
        let p: &mut Xdp = bench
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("xdp");
        lb_userspace::bpf::load_program(name, || p.load()).expect("load program");
    }
    in_ns(&generator, || {
        let p: &mut Xdp = bench
            .program_mut(prog::SINK)
            .expect("sink")
            .try_into()
            .expect("xdp");
        p.attach("eth0", XdpMode::Driver).expect("attach sink");
    });
    let mut results: std::collections::BTreeMap<&'static str, Vec<f64>> = Default::default();
    for round in 0..(2 * rounds) {
        // The floor from the benchmarks' object, xlb from the datapath's.
        let (prog, owner) = if round % 2 == 0 {
            (prog::FLOOR_XDP, &mut bench)
        } else {
            (prog_names::XDP, &mut product)
        };
        let p: &mut Xdp = owner
            .program_mut(prog)
            .expect("program")
            .try_into()
            .expect("xdp");
        let link = in_ns(&node, || p.attach("eth0", XdpMode::Driver).expect("attach"));
        let c0 = maps.counters_sum().expect("counters");
        let t = in_ns(&generator, || {
            let c = std::ffi::CString::new("eth0").expect("name");
            // SAFETY: a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let p: &Xdp = bench
                .program(prog::GEN)
                .expect("gen")
                .try_into()
                .expect("xdp");
            let start = std::time::Instant::now();
            p.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: FRAMES,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
            .expect("live frames");
            start.elapsed().as_secs_f64()
        });
        let c1 = maps.counters_sum().expect("counters");
        let delta = |i: u32| c1[i as usize] - c0[i as usize];
        // Frames the node's veth ring had no room for never reach XDP: the check is on the
        // frames xlb saw, and the rate counts only what it transmitted.
        let (seen, forwarded) = (delta(counter::PACKETS), delta(counter::XLATE_FWD));
        if prog == prog_names::XDP {
            assert!(
                seen > 0 && forwarded >= seen * 99 / 100,
                "xlb translated {forwarded} of the {seen} frames it saw"
            );
        }
        let owner = if prog == prog_names::XDP {
            &mut product
        } else {
            &mut bench
        };
        let p: &mut Xdp = owner
            .program_mut(prog)
            .expect("program")
            .try_into()
            .expect("xdp");
        in_ns(&node, || p.detach(link).expect("detach"));
        let name = if prog == prog_names::XDP {
            "xlb: established LB flow, SNAT, XDP_TX"
        } else {
            "floor: parse + swap MACs + XDP_TX"
        };
        results
            .entry(name)
            .or_default()
            .push(f64::from(FRAMES) / t / 1e6);
    }
    drop(generator);
    drop(node);
    results.into_iter().map(|(k, v)| (k, median(&v))).collect()
}
