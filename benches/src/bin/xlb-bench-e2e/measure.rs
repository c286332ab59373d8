//! What one mode is measured for in one round: connect() latency to the first and the last
//! service, short connections per second (in turn with the ceiling's and side by side), one
//! iperf3 stream, and for xlb what its programs cost per connection.

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpStream},
    process::Child,
    time::{Duration, Instant},
};

use xlb_benches::{
    cleanup::Sysctl,
    stats::{median, percentile},
};

use crate::{
    bed::{Bed, direct, spawn_in},
    cli::Opts,
    machine::allowed_cpus,
    report::bench_dir,
};

/// Pairs of latency blocks (first service, last service) per mode and round.
pub const LATENCY_PAIRS: usize = 20;

/// `connect()` times in µs for `n` connections to `to`, each reset right away (SO_LINGER 0:
/// no TIME_WAIT, so `n` is not limited by ports).
pub fn connect_times(to: SocketAddr, n: usize, warmup: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..n + warmup {
        if Instant::now() > deadline {
            break;
        }
        let start = Instant::now();
        let Ok(s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            continue;
        };
        let t = start.elapsed();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an open socket with a correctly sized value.
        unsafe {
            use std::os::fd::AsRawFd as _;
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
        if i >= warmup {
            out.push(t.as_secs_f64() * 1e6);
        }
    }
    assert!(
        out.len() * 10 >= n * 9,
        "{to}: only {} of {n} connects succeeded",
        out.len()
    );
    out
}

/// One mode's figures in one round.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub first_p50: f64,
    pub first_p99: f64,
    pub last_p50: f64,
    pub last_p99: f64,
    /// Per adjacent pair of latency blocks, the last service's p50 over the first's.
    #[serde(default)]
    pub last_first: Vec<f64>,
    pub conns_per_s: f64,
    /// Connections per second with each wrk on one backend of its own (the ceiling's own
    /// traffic pattern; the load balancers through one-endpoint Services).
    pub conns_per_s_pinned: f64,
    /// Median of the ceiling's runs in turn with this mode's (see `conn_rates`).
    pub ceiling_conns_per_s: f64,
    /// Each of the mode's runs to the last service over the mean of the ceiling runs on
    /// either side of it (for no-LB itself: against the control bed, A/A).
    pub conns_ratios: Vec<f64>,
    /// Likewise for the runs with one backend per wrk.
    pub pinned_ratios: Vec<f64>,
    /// The ceiling's runs, in order.
    pub ceiling_runs: Vec<f64>,
    /// The mode's rate to the last service over the ceiling's, in runs side by side (for
    /// no-LB itself: against the control bed, A/A).
    pub side_by_side: Vec<f64>,
    /// Likewise with one backend per wrk.
    pub side_by_side_pinned: Vec<f64>,
    pub gbit_s: f64,
    /// The ceiling's iperf3 throughput around this mode's (mean of a run just before and one
    /// just after; for no-LB itself, its own).
    pub ceiling_gbit_s: f64,
    pub load_ms: f64,
    pub change_ms: f64,
    /// xlb: what its programs cost per connection (`bpf_cost`), one backend per wrk.
    #[serde(default)]
    pub bpf_cost: Option<BpfCost>,
}

/// The datapath's own share of a connection's CPU, read from the kernel's BPF run-time
/// statistics over one extra wrk run (one backend per wrk) of the mode alone.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BpfCost {
    /// CPU time (the benchmark's CPUs, not idle, not stolen) per connection over the run, µs.
    pub busy_us_per_conn: f64,
    /// Per program that ran: (name, runs per connection, ns per run).
    pub progs: Vec<(String, f64, f64)>,
}

impl BpfCost {
    /// ns of BPF program time per connection.
    pub fn ns_per_conn(&self) -> f64 {
        self.progs.iter().map(|(_, runs, ns)| runs * ns).sum()
    }
}

/// Every loaded program's (name, run_cnt, run_time_ns), by id, as `bpftool` lists them.
pub fn prog_stats() -> BTreeMap<u64, (String, u64, u64)> {
    let out = xlb_tests::netns::sh(&["bpftool", "-j", "prog", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                (
                    p["name"].as_str().unwrap_or("?").to_owned(),
                    p["run_cnt"].as_u64().unwrap_or(0),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// Busy CPU ticks so far on the CPUs this benchmark may run on (`/proc/stat`: all but idle,
/// iowait and steal).
pub fn cpu_busy_ticks() -> f64 {
    let mine = allowed_cpus();
    let stat = fs::read_to_string("/proc/stat").expect("/proc/stat");
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            mine.contains(&cpu).then_some(f)
        })
        .map(|f| {
            let f: Vec<f64> = f.filter_map(|v| v.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            f.iter().take(8).sum::<f64>() - f[3] - f[4] - f[7]
        })
        .sum()
}

/// `bed`'s wrk to `targets` for `seconds` with `kernel.bpf_stats_enabled` on: each xlb
/// program's runs and time per connection, against the machine's CPU time per connection.
/// (The statistics add a clock read around each run, counted in ns per run.)
pub fn bpf_cost(bed: &Bed, targets: [SocketAddr; 3], seconds: u32) -> BpfCost {
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1");
    let before = prog_stats();
    let busy = cpu_busy_ticks();
    let (_, conns) = wrk_results(bed, wrk_start(bed, targets, seconds));
    let busy = cpu_busy_ticks() - busy;
    let after = prog_stats();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let progs = after
        .iter()
        .filter(|(_, (name, ..))| name.starts_with("xlb_"))
        .filter_map(|(id, (name, cnt, ns))| {
            let (_, cnt0, ns0) = before.get(id)?;
            let runs = cnt.checked_sub(*cnt0).filter(|r| *r > 0)?;
            Some((
                name.clone(),
                runs as f64 / conns,
                (ns - ns0) as f64 / runs as f64,
            ))
        })
        .collect();
    BpfCost {
        busy_us_per_conn: busy / hz * 1e6 / conns,
        progs,
    }
}

/// Short connections per second: three wrk processes at once (one thread, 12 connections
/// each), wrk `i` to `targets[i]`.
pub fn wrk(bed: &Bed, targets: [SocketAddr; 3], seconds: u32) -> f64 {
    wrk_rate(bed, wrk_start(bed, targets, seconds))
}

/// Starts the three wrk processes of `wrk`.
pub fn wrk_start(bed: &Bed, targets: [SocketAddr; 3], seconds: u32) -> Vec<Child> {
    let d = format!("{seconds}s");
    targets
        .iter()
        .map(|to| {
            let url = format!("http://{to}/");
            let cmd = [
                "wrk",
                "-t1",
                "-c12",
                "-d",
                &d,
                "-H",
                "Connection: close",
                &url,
            ];
            bed.client_command(&cmd)
                .spawn()
                .unwrap_or_else(|e| panic!("wrk: {e}"))
        })
        .collect()
}

/// The summed rate of wrk processes started by `wrk_start`.
pub fn wrk_rate(bed: &Bed, children: Vec<Child>) -> f64 {
    wrk_results(bed, children).0
}

/// The summed rate and request count of wrk processes started by `wrk_start`.
pub fn wrk_results(bed: &Bed, children: Vec<Child>) -> (f64, f64) {
    let (mut total, mut requests) = (0.0, 0.0);
    for child in children {
        let out = child.wait_with_output().expect("wrk");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        total += text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("wrk output: {text}"));
        // "  123456 requests in 2.00s, ..."
        requests += text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("wrk output: {text}"));
        if let Some(e) = text
            .lines()
            .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        {
            eprintln!("  {}: wrk: {}", bed.mode, e.trim());
        }
    }
    (total, requests)
}

/// `bed`'s wrk (to `targets`) and the ceiling's (straight to the backends) at the same time,
/// sharing the machine: the ratio of their rates is that of their costs per connection, with
/// whatever the machine does at that moment hitting both alike.
pub fn side_by_side(bed: &Bed, targets: [SocketAddr; 3], ceiling: &Bed, seconds: u32) -> f64 {
    let own = wrk_start(bed, targets, seconds);
    let other = wrk_start(ceiling, direct(ceiling), seconds);
    let own = wrk_rate(bed, own);
    own / wrk_rate(ceiling, other)
}

/// iperf3 throughput (Gbit/s, received) of `streams` parallel streams to `to`.
pub fn iperf(bed: &Bed, to: SocketAddr, streams: usize) -> f64 {
    let ip = to.ip().to_string();
    let port = to.port().to_string();
    let p = streams.to_string();
    let cmd = ["iperf3", "-c", &ip, "-p", &port, "-t", "3", "-P", &p, "-J"];
    let res = bed.client_command(&cmd).output().expect("iperf3");
    assert!(
        res.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let out = String::from_utf8_lossy(&res.stdout);
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 output: {out}"))
        / 1e9
}

/// One mode's sample for `n` services, loaded already (`load_ms`, `change_ms`); `ceiling`
/// (the no-LB bed) brackets a load balancer's wrk runs.
pub fn measure(bed: &Bed, ceiling: Option<&Bed>, n: usize, o: &Opts, load: (f64, f64)) -> Sample {
    let (load_ms, change_ms) = load;
    let (first, last, iperf_to) = bed.targets(n);
    // First and last service alternate in short blocks (which goes first alternates too), and
    // each adjacent pair of blocks gives a ratio of medians: the machine's speed jumps between
    // rounds and within them (p50 11 vs 18 µs, for the ceiling too), and a jump then spoils one
    // pair, not the comparison.
    let k = o.connects.div_ceil(LATENCY_PAIRS);
    let (mut f, mut l, mut last_first) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..LATENCY_PAIRS {
        let (a, b) = if i % 2 == 0 {
            let a = bed.connect_times(first, k, 20);
            (a, bed.connect_times(last, k, 20))
        } else {
            let b = bed.connect_times(last, k, 20);
            (bed.connect_times(first, k, 20), b)
        };
        if !a.is_empty() && !b.is_empty() {
            last_first.push(percentile(&b, 0.5) / percentile(&a, 0.5));
        }
        f.extend(a);
        l.extend(b);
    }
    let pinned = if bed.mode == "no-LB" {
        direct(bed)
    } else {
        [0, 1, 2].map(|i| SocketAddr::from((bed.pinned_svc(i).dialled(), 80)))
    };
    let wrk_targets = if bed.mode == "no-LB" {
        pinned
    } else {
        [last; 3]
    };
    let rates = conn_rates(bed, ceiling, [wrk_targets, pinned], n, o);
    let ceiling_iperf = |c: &Bed| iperf(c, c.targets(n).2, o.streams);
    let before = ceiling.map(ceiling_iperf);
    let gbit_s = iperf(bed, iperf_to, o.streams);
    let after = ceiling.map(ceiling_iperf);
    let ceiling_gbit_s = match (before, after) {
        (Some(b), Some(a)) => (b + a) / 2.0,
        _ => gbit_s,
    };
    Sample {
        first_p50: percentile(&f, 0.5),
        first_p99: percentile(&f, 0.99),
        last_p50: percentile(&l, 0.5),
        last_p99: percentile(&l, 0.99),
        last_first,
        conns_per_s: median(&rates.runs[0]),
        conns_per_s_pinned: median(&rates.runs[1]),
        ceiling_conns_per_s: median(&rates.ceiling),
        conns_ratios: rates.ratios[0].clone(),
        pinned_ratios: rates.ratios[1].clone(),
        ceiling_runs: rates.ceiling,
        side_by_side: rates.side_by_side[0].clone(),
        side_by_side_pinned: rates.side_by_side[1].clone(),
        gbit_s,
        ceiling_gbit_s,
        load_ms,
        change_ms,
        bpf_cost: (bed.mode == "xlb").then(|| bpf_cost(bed, pinned, o.seconds)),
    }
}

/// Connection rates of one mode in one round (`conn_rates`).
pub struct Rates {
    /// The mode's runs, per pattern: [to the last service (spread), one backend per wrk].
    pub runs: [Vec<f64>; 2],
    /// Each run of `runs` divided by the mean of the ceiling runs on either side of it.
    pub ratios: [Vec<f64>; 2],
    /// The ceiling's runs, in order.
    pub ceiling: Vec<f64>,
    /// Per pattern, the mode's rate over the ceiling's in runs side by side (`side_by_side`).
    pub side_by_side: [Vec<f64>; 2],
}

/// Short-connection runs of `bed` and the ceiling in two ways, `o.seconds` each:
/// - in turn, C A C B C (A, B: `targets`' two patterns), for absolute rates; each of the mode's
///   runs is also divided by the mean of the ceiling runs around it;
/// - side by side, `o.pairs` runs of each pattern (alternating) with the ceiling's wrk running
///   at the same time (`side_by_side`): the machine's drift, tens of percent between runs a
///   few seconds apart here, hits both alike, so these ratios are the method's main result.
///
/// The no-LB mode does both against a second no-LB bed: an A/A control, whose ratios
/// should centre on 1. With `--perf`, the mode's in-turn run of each pattern is profiled.
pub fn conn_rates(
    bed: &Bed,
    ceiling: Option<&Bed>,
    targets: [[SocketAddr; 3]; 2],
    n: usize,
    o: &Opts,
) -> Rates {
    let c = ceiling.unwrap_or(bed);
    // A discarded second: whatever the latency phase left cold (CPU idle states, caches)
    // must not count against the first run alone.
    wrk(c, direct(c), 1);
    let mut r = Rates {
        runs: [Vec::new(), Vec::new()],
        ratios: [Vec::new(), Vec::new()],
        ceiling: vec![wrk(c, direct(c), o.seconds)],
        side_by_side: [Vec::new(), Vec::new()],
    };
    for (pattern, to) in targets.iter().enumerate() {
        let perf = o.perf.then(|| {
            let name = ["spread", "pinned"][pattern];
            let out = bench_dir().join(format!("perf-{}-{n}-{name}.data", bed.mode));
            let secs = o.seconds.to_string();
            let out = out.to_str().expect("path");
            let cmd = [
                "perf", "record", "-a", "-g", "-q", "-o", out, "--", "sleep", &secs,
            ];
            spawn_in(&bed.node.ns, &cmd)
        });
        let own = wrk(bed, *to, o.seconds);
        if let Some(p) = perf {
            let out = p.wait_with_output().expect("perf");
            if !out.status.success() {
                eprintln!("perf: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let after = wrk(c, direct(c), o.seconds);
        let before = r.ceiling[r.ceiling.len() - 1];
        r.ratios[pattern].push(own / ((before + after) / 2.0));
        r.runs[pattern].push(own);
        r.ceiling.push(after);
    }
    for i in 0..2 * o.pairs {
        let pattern = i % 2;
        r.side_by_side[pattern].push(side_by_side(bed, targets[pattern], c, o.seconds));
    }
    r
}
