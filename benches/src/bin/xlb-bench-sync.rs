//! `cargo xtask bench sync`: control-plane speed at 10,000 services × 10 endpoints (`--services`,
//! `--endpoints`), side by side in one run with kube-proxy's iptables mode
//! (`iptables-legacy-restore`) and nftables mode (`nft -f`), each in its own fresh network
//! namespace:
//! - full load from scratch;
//! - one endpoint change (xlb: file change → maps updated, through the real agent; and the
//!   in-process state change → maps updated that a Kubernetes event costs; kube-proxy: its
//!   partial sync of the changed chains);
//! - the agent's memory at that scale;
//! - kernel memory (the maps' memlock, as `bpftool map show` reports it) and agent RSS with
//!   `--memory-endpoints` endpoints per service at each of `--memory-at` service counts.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use lb_userspace::{
    maglev::DEFAULT_TABLE_SIZE,
    source::{Spec, files::FileSource},
    translate::{NodeContext, SliceSpec, Translator},
};
use xlb_benches::stats::{fmt_ms, median};
use xlb_tests::{
    agent::{Agent, PinDir, in_netns},
    datapath::Datapath,
    kubeproxy::{self, Svc},
    netns::{Netns, require_root, unique_tag},
};

/// `cargo xtask bench sync [-- FLAGS]`.
#[derive(Parser)]
#[command(about = "xlb control plane against kube-proxy's iptables and nftables rule loading")]
struct Opts {
    /// Services (each with `--endpoints` endpoints).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=60_000))]
    services: u32,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    endpoints: u32,
    /// Service counts at which to measure kernel and agent memory (empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    memory_at: Vec<u32>,
    /// Endpoints per service of the memory measurements.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    memory_endpoints: u32,
}
const PER_FILE: usize = 100;

/// Every BPF map's (id, name, memlock bytes), as `bpftool` lists them.
fn maps_memlock() -> Vec<(u64, String, u64)> {
    let out = xlb_tests::netns::sh(&["bpftool", "-j", "map", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["id"].as_u64()?,
                m["name"].as_str().unwrap_or("").to_owned(),
                m["bytes_memlock"].as_u64()?,
            ))
        })
        .collect()
}

/// Maps (either family's: the IPv6 name adds a 6) whose size is fixed by capacity flags, not
/// by the number of services: flow state.
const FLOW_MAPS: &[&str] = &[
    "xlb_ct",
    "xlb_ct_new",
    "xlb_frags",
    "xlb_affinity",
    "xlb_sock",
    "xlb_sock_rev",
    "xlb_events",
];

/// Kernel memory of the maps an agent creates and its RSS, with `n` services of
/// `endpoints` endpoints each: (lookup tables, other service maps, flow state, RSS) in MiB.
fn memory_at(tag: &str, work: &Path, n: usize, endpoints: usize) -> [f64; 4] {
    let dir = work.join(format!("mem{n}"));
    fs::create_dir_all(&dir).expect("dir");
    write_files(&dir, &kubeproxy::service_set(n, endpoints));
    let before: std::collections::BTreeSet<u64> =
        maps_memlock().into_iter().map(|(id, _, _)| id).collect();
    let node = Netns::new(&format!("xlbt-{tag}-m{n}"));
    let pins = PinDir::new(&format!("{tag}m{n}"));
    let mut agent = Agent::spawn(&node, &pins, &["--services", dir.to_str().expect("path")]);
    agent.wait_for_log("maps synced", 1);
    let log = agent.logs();
    assert!(
        log.contains(&format!("services={n} ")),
        "the agent must program all {n} services: {log}"
    );
    let rss = fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("pid")))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0);
    let mut mib = [0.0, 0.0, 0.0, rss];
    for (id, name, bytes) in maps_memlock() {
        if before.contains(&id) {
            continue;
        }
        let group = if name.starts_with("xlb_lut_") {
            0
        } else if FLOW_MAPS.contains(&name.replace('6', "").as_str()) {
            2
        } else {
            1
        };
        mib[group] += bytes as f64 / (1024.0 * 1024.0);
    }
    assert!(agent.stop());
    drop(agent);
    drop(pins);
    let _ = fs::remove_dir_all(&dir);
    mib
}

/// Runs `cmd < input` inside `ns`; returns the wall time.
fn timed_in(ns: &Netns, cmd: &[&str], input: &Path) -> Duration {
    let stdin = fs::File::open(input).expect("input");
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..])
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    in_netns(&mut c, &ns.path());
    let start = Instant::now();
    let out = c.output().expect("run");
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

/// A copy of `s` with its first endpoint replaced.
fn changed(s: &Svc, round: usize) -> Svc {
    let mut c = s.clone();
    c.endpoints[0] =
        std::net::Ipv4Addr::new(10, 200, (round / 250) as u8, (round % 250) as u8 + 1).into();
    c
}

fn field(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

struct KubeProxy {
    full: Vec<f64>,
    change: Vec<f64>,
}

fn kube_proxy(
    tag: &str,
    work: &Path,
    services: &[Svc],
    restore: &[&str],
    restore_noflush: &[&str],
    full: impl Fn(&[Svc]) -> String,
    change: impl Fn(&Svc, &Svc) -> String,
) -> KubeProxy {
    let full_file = work.join("full.rules");
    fs::write(&full_file, full(services)).expect("write rules");
    let mut r = KubeProxy {
        full: Vec::new(),
        change: Vec::new(),
    };
    for rep in 0..3 {
        let ns = Netns::new(&format!("xlbt-{tag}-kp{rep}"));
        r.full
            .push(timed_in(&ns, restore, &full_file).as_secs_f64() * 1e3);
        if rep == 0 {
            let target = &services[services.len() / 2];
            let mut prev = target.clone();
            for round in 0..5 {
                let next = changed(target, round + 1);
                let f = work.join("change.rules");
                fs::write(&f, change(&prev, &next)).expect("write change");
                r.change
                    .push(timed_in(&ns, restore_noflush, &f).as_secs_f64() * 1e3);
                prev = next;
            }
        }
    }
    r
}

fn write_files(dir: &Path, services: &[Svc]) -> Vec<PathBuf> {
    services
        .chunks(PER_FILE)
        .enumerate()
        .map(|(i, chunk)| {
            let p = dir.join(format!("ns{i:03}.yaml"));
            fs::write(&p, kubeproxy::manifests(chunk)).expect("write manifests");
            p
        })
        .collect()
}

fn main() {
    let o = Opts::parse();
    xlb_benches::cleanup::install();
    require_root();
    let (services_n, endpoints_n) = (o.services as usize, o.endpoints as usize);
    let tag = unique_tag();
    let work = std::env::temp_dir().join(format!("xlb-bench-sync-{tag}"));
    let memory: Vec<(u32, [f64; 4])> = o
        .memory_at
        .iter()
        .map(|n| {
            let m = memory_at(&tag, &work, *n as usize, o.memory_endpoints as usize);
            (*n, m)
        })
        .collect();
    let svc_dir = work.join("services");
    fs::create_dir_all(&svc_dir).expect("work dir");
    let mut services = kubeproxy::service_set(services_n, endpoints_n);
    let files = write_files(&svc_dir, &services);
    println!(
        "control plane: {services_n} services x {endpoints_n} endpoints ({} manifest files of {PER_FILE} services)",
        files.len()
    );

    // xlb through the real agent and the file source.
    let node = Netns::new(&format!("xlbt-{tag}-xlb"));
    let pins = PinDir::new(&tag);
    let t0 = Instant::now();
    let mut agent = Agent::spawn(
        &node,
        &pins,
        &["--services", svc_dir.to_str().expect("path")],
    );
    agent.wait_for_log("maps synced", 1);
    let xlb_full_wall = t0.elapsed().as_secs_f64() * 1e3;
    let log = agent.logs();
    let first = log
        .lines()
        .find(|l| l.contains("maps synced"))
        .expect("synced line");
    let xlb_full_pipeline = field(first, "latency_us").unwrap_or(0.0) / 1e3;
    let xlb_full_sync = field(first, "sync_us").unwrap_or(0.0) / 1e3;
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("pid")))
        .unwrap_or_default();
    let mem = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    let (rss, hwm) = (mem("VmRSS:"), mem("VmHWM:"));
    let mut file_change = Vec::new();
    let target = services_n / 2;
    for round in 0..5 {
        services[target] = changed(&services[target], round + 1);
        let chunk = target / PER_FILE;
        let tmp = svc_dir.join(".tmp");
        fs::write(
            &tmp,
            kubeproxy::manifests(&services[chunk * PER_FILE..(chunk + 1) * PER_FILE]),
        )
        .expect("write");
        fs::rename(&tmp, &files[chunk]).expect("rename");
        agent.wait_for_log("maps synced", round + 2);
        let log = agent.logs();
        let line = log
            .lines()
            .filter(|l| l.contains("maps synced"))
            .nth(round + 1)
            .expect("line");
        assert!(
            line.contains("changed=1"),
            "one endpoint change must change one service: {line}"
        );
        file_change.push(field(line, "latency_us").unwrap_or(0.0) / 1e3);
    }
    assert!(agent.stop());
    drop(agent);
    drop(pins);

    // The same change as a state change in process (what one Kubernetes event costs).
    let mut dp = Datapath::new(&format!("{tag}s"), DEFAULT_TABLE_SIZE);
    let mut t = Translator::new(NodeContext::default());
    let delta = FileSource::new(&svc_dir).load();
    delta.apply_to(&mut t);
    t.flush();
    dp.program(t.desired());
    let slice: SliceSpec = delta
        .changes
        .iter()
        .find_map(|(_, s)| match s {
            Some(Spec::Slice(s)) if s.service == services[target].name => Some(s.clone()),
            _ => None,
        })
        .expect("slice");
    let mut state_change = Vec::new();
    for round in 0..20u8 {
        let mut s = slice.clone();
        s.endpoints[0].addr = std::net::Ipv4Addr::new(10, 201, 0, round + 1).into();
        let start = Instant::now();
        t.upsert_slice(s);
        let names = t.flush();
        let r = dp.sync.apply_changes(t.desired(), &names);
        state_change.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.changed, 1, "{r:?}");
    }
    drop(dp);

    // kube-proxy, iptables mode (legacy backend) and nftables mode.
    let base = kubeproxy::service_set(services_n, endpoints_n);
    let ipt = kube_proxy(
        &tag,
        &work,
        &base,
        &["iptables-legacy-restore"],
        &["iptables-legacy-restore", "--noflush"],
        kubeproxy::iptables_full,
        kubeproxy::iptables_change,
    );
    let nft = kube_proxy(
        &tag,
        &work,
        &base,
        &["nft", "-f", "-"],
        &["nft", "-f", "-"],
        kubeproxy::nft_full,
        kubeproxy::nft_change,
    );
    let _ = fs::remove_dir_all(&work);

    let xlb_full = xlb_full_pipeline;
    let xlb_change = median(&file_change);
    let state = median(&state_change);
    let (ipt_full, ipt_change) = (median(&ipt.full), median(&ipt.change));
    let (nft_full, nft_change) = (median(&nft.full), median(&nft.change));
    println!();
    println!(
        "| system | full load | ratio to xlb | one endpoint change | ratio to xlb (state change) |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| xlb, state change → maps (in process) | | | {} | 1.00x |",
        fmt_ms(state)
    );
    println!(
        "| xlb agent, file source (parse + translate + Maglev + maps) | {} | 1.00x | {} | {:.0}x |",
        fmt_ms(xlb_full),
        fmt_ms(xlb_change),
        xlb_change / state
    );
    println!(
        "| kube-proxy iptables (iptables-legacy-restore) | {} | {:.1}x | {} | {:.0}x |",
        fmt_ms(ipt_full),
        ipt_full / xlb_full,
        fmt_ms(ipt_change),
        ipt_change / state
    );
    println!(
        "| kube-proxy nftables (nft -f) | {} | {:.1}x | {} | {:.0}x |",
        fmt_ms(nft_full),
        nft_full / xlb_full,
        fmt_ms(nft_change),
        nft_change / state
    );
    println!();
    println!(
        "xlb full load detail: agent start to maps programmed {} (includes loading the BPF programs); map writes alone {}",
        fmt_ms(xlb_full_wall),
        fmt_ms(xlb_full_sync)
    );
    println!("xlb agent memory at this scale: RSS {rss:.0} MiB (peak {hwm:.0} MiB)");
    if !memory.is_empty() {
        println!();
        println!(
            "Memory with {} endpoints per service (kernel: the agent's maps' memlock; flow state is sized by capacity flags, not by services):",
            o.memory_endpoints
        );
        println!();
        println!(
            "| services | lookup tables | other service maps | flow state | kernel total | agent RSS |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for (n, [lut, svc, flow, rss]) in &memory {
            println!(
                "| {n} | {lut:.1} MiB | {svc:.1} MiB | {flow:.1} MiB | {:.1} MiB | {rss:.0} MiB |",
                lut + svc + flow
            );
        }
    }
    println!(
        "samples (ms): state change {:?}; file change {:?}; iptables change {:?}; nft change {:?}",
        state_change
            .iter()
            .map(|v| (v * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        file_change,
        ipt.change.iter().map(|v| v.round()).collect::<Vec<_>>(),
        nft.change.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
}
