//! `cargo xtask bench datapath`: nanoseconds per packet measured by the kernel
//! (BPF_PROG_TEST_RUN, repeat ≥ 1e6), as ratios to a parse-and-pass floor measured in the same
//! round, with 1 and with 10,000 services programmed.
//!
//! Scenarios (tc pod ingress unless noted):
//! - floor: `xlb_floor` parses Ethernet/IPv4/TCP and passes;
//! - CT miss: the first packet of a flow — frontend lookup, Maglev selection, both conntrack
//!   entries written, DNAT. Every run is a miss because the benchmark's conntrack timeouts make
//!   each entry expire at once (slightly pessimistic: the stale entry is also overwritten);
//! - CT hit: a packet of an established flow;
//! - reply: reverse NAT of a backend's answer.
//!
//! BPF_PROG_TEST_RUN repeats on the same packet buffer, so a translated packet would be seen
//! untranslated-looking by the next repeat (and take the cheap "not a service" path). The
//! benchmark therefore measures a ping-pong pair: service `ping` (VIP A:80) has backends
//! B1..B10:8080, and service `pong` has those B addresses as frontends and A:80 as backend, so
//! every repeat is a real translation of the scenario's kind. Counter deltas printed with the
//! results prove which path ran.

use std::net::Ipv4Addr;

use lb_common::{counter, prog_names};
use lb_userspace::{
    maglev::DEFAULT_TABLE_SIZE,
    model::{
        Algorithm, DesiredState, Endpoint, EndpointState, Frontend, FrontendKind, LbService,
        Protocol, Scope,
    },
};
use xlb_tests::{
    datapath::Datapath,
    netns::{require_root, unique_tag},
    packet::{self, flags},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);

fn service(i: u32) -> LbService {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
    LbService {
        name: format!("bench/svc-{i}:80/TCP"),
        frontends: vec![Frontend {
            addr: vip,
            port: 80,
            proto: Protocol::Tcp,
            scope: Scope::External,
            kind: FrontendKind::ClusterIp,
            source_ranges: false,
        }],
        endpoints: (0..10u32)
            .map(|e| Endpoint {
                addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + e),
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    ping.frontends[0].addr = a;
    for (e, b) in ping.endpoints.iter_mut().zip(&bs) {
        e.addr = *b;
    }
    let mut pong = service(0);
    pong.name = "bench/pong:8080/TCP".into();
    pong.frontends = bs
        .iter()
        .map(|b| Frontend {
            addr: *b,
            port: 8080,
            ..ping.frontends[0]
        })
        .collect();
    pong.endpoints.truncate(1);
    pong.endpoints[0].addr = a;
    pong.endpoints[0].port = 80;
    (ping, pong, a)
}

fn measure(services: u32) -> Vec<Row> {
    let mut dp = Datapath::new(&unique_tag(), DEFAULT_TABLE_SIZE);
    let mut d = DesiredState::default();
    for i in 1..services.saturating_sub(1) {
        let s = service(i);
        d.services.insert(s.name.clone(), s);
    }
    let (ping, pong, vip) = ping_pong();
    d.services.insert(ping.name.clone(), ping);
    d.services.insert(pong.name.clone(), pong);
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
    let normal = dp.config;

    let mut floor = Vec::new();
    let mut miss = Vec::new();
    let mut hit = Vec::new();
    let mut rev = Vec::new();
    // Warm-up (this also creates the pong flow of the reply ping-pong).
    dp.time(prog_names::FLOOR, &ack, REPEAT / 10);
    dp.time(prog_names::POD_INGRESS, &ack, REPEAT / 10);
    let (_, out) = dp.tc(
        prog_names::POD_INGRESS,
        &packet::tcp((CLIENT, 40001), (backend, 8080), flags::ACK, b""),
    );
    assert_eq!(packet::parse(&out).dst, vip, "pong must lead back to ping");
    let delta = |dp: &Datapath, before: &[u64], idx: u32| {
        dp.counters()[idx as usize] - before[idx as usize]
    };
    let mut checks = Vec::new();
    // Interleaved rounds so drift hits every scenario alike.
    for round in 0..ROUNDS {
        floor.push(dp.time(prog_names::FLOOR, &ack, REPEAT));
        let c0 = dp.counters();
        hit.push(dp.time(prog_names::POD_INGRESS, &ack, REPEAT));
        let hits = delta(&dp, &c0, counter::CT_HIT);
        let c0 = dp.counters();
        rev.push(dp.time(prog_names::POD_INGRESS, &reply, REPEAT));
        let revs = delta(&dp, &c0, counter::XLATE_REV);
        dp.set_config(|c| {
            c.ct_tcp_syn = u32::MAX;
            c.ct_tcp_established = u32::MAX;
        });
        let c0 = dp.counters();
        miss.push(dp.time(prog_names::POD_INGRESS, &syn, REPEAT));
        let news = delta(&dp, &c0, counter::CT_NEW);
        dp.set_config(|c| *c = normal);
        if round == 0 {
            checks.push(format!(
                "path check ({services} services): of {REPEAT} runs each, {hits} were CT hits, {revs} reverse translations, {news} new flows"
            ));
            assert!(
                hits >= u64::from(REPEAT) && revs >= u64::from(REPEAT) && news >= u64::from(REPEAT),
                "{}",
                checks[0]
            );
        }
    }
    for c in checks {
        eprintln!("{c}");
    }
    let f = median(floor);
    vec![
        Row {
            services: services as usize,
            name: "floor (parse + pass)",
            ns: f,
            floor: f,
        },
        Row {
            services: services as usize,
            name: "CT miss (new flow, Maglev, DNAT)",
            ns: median(miss),
            floor: f,
        },
        Row {
            services: services as usize,
            name: "CT hit (established, DNAT)",
            ns: median(hit),
            floor: f,
        },
        Row {
            services: services as usize,
            name: "reply (reverse NAT)",
            ns: median(rev),
            floor: f,
        },
    ]
}

fn main() {
    require_root();
    println!(
        "xlb datapath: ns/packet by BPF_PROG_TEST_RUN, repeat {REPEAT}, median of {ROUNDS} rounds (tc pod ingress)"
    );
    // The small case is the ping-pong pair alone (2 services); the large one adds 9,998.
    let mut rows = measure(2);
    rows.extend(measure(10_000));
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
}
