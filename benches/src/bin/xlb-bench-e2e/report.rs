//! The report: per N, each mode's medians and its ratios to the no-LB ceiling, as Markdown
//! (stdout and `target/bench/e2e.md`), JSON (`e2e.json`, re-rendered with `--render`) and
//! PNG charts (`benches/plot_e2e.py`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::json;
use xlb_benches::stats::{fmt_ms_range, fmt_range, median, quartiles, summary};

use crate::{
    cli::{MODES, Opts},
    measure::{BpfCost, LATENCY_PAIRS, Sample},
};

/// Every mode's samples per N.
pub type Results = BTreeMap<usize, BTreeMap<&'static str, Vec<Sample>>>;

/// Prints the report and writes it, the JSON and the charts to `target/bench/`.
pub fn publish(o: &Opts, machine: &str, results: &Results) {
    let report = render(o, machine, results);
    println!("\n{report}");
    let out = bench_dir();
    // An IPv6 or north-south run's files sit next to the others'.
    let stem = o.stem();
    let stem = stem.as_str();
    fs::write(out.join(format!("{stem}.md")), &report).expect("write report");
    let opts = json!({
        "reps": o.reps, "seconds": o.seconds, "pairs": o.pairs, "connects": o.connects,
        "ipv6": o.ipv6, "north_south": o.north_south, "streams": o.streams,
    });
    let json = json!({ "machine": machine, "opts": opts, "results": results });
    fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write JSON");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("plot_e2e.py");
    // Debian's python3, where python3-matplotlib (installed by the bench set-up) lives.
    match Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&out)
        .arg(stem)
        .status()
    {
        Ok(s) if s.success() => println!("charts: {}/{stem}-*.png", out.display()),
        other => eprintln!("charts not drawn ({other:?}): is python3-matplotlib installed?"),
    }
}

/// `--render FILE`: the report and charts of a finished run again, from its JSON (no traffic;
/// the run's options come from the file, or else from the flags).
pub fn rerender(mut o: Opts, file: &Path) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let field = |k: &str| v["opts"][k].as_u64().map(|x| x as usize);
    o.reps = field("reps").unwrap_or(o.reps);
    o.seconds = field("seconds").map_or(o.seconds, |x| x as u32);
    o.pairs = field("pairs").unwrap_or(o.pairs);
    o.ipv6 = v["opts"]["ipv6"].as_bool().unwrap_or(o.ipv6);
    o.north_south = v["opts"]["north_south"].as_bool().unwrap_or(o.north_south);
    o.streams = field("streams").unwrap_or(o.streams);
    o.connects = field("connects").unwrap_or(o.connects);
    let mut results = Results::new();
    let sizes = v["results"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: no results", file.display()));
    for (n, modes) in sizes {
        let n: usize = n
            .parse()
            .unwrap_or_else(|_| panic!("{}: N {n:?}", file.display()));
        for (m, samples) in modes.as_object().into_iter().flatten() {
            let mode = *MODES
                .iter()
                .find(|k| **k == m)
                .unwrap_or_else(|| panic!("{}: unknown mode {m}", file.display()));
            let samples: Vec<Sample> = serde_json::from_value(samples.clone())
                .unwrap_or_else(|e| panic!("{}: {mode} at N={n}: {e}", file.display()));
            results.entry(n).or_default().insert(mode, samples);
        }
    }
    o.modes = MODES
        .iter()
        .copied()
        .filter(|m| results.values().any(|r| r.contains_key(m)))
        .collect();
    publish(
        &o,
        v["machine"].as_str().unwrap_or("unknown machine"),
        &results,
    );
}

/// One mode's `BpfCost` over the rounds (medians), as a sentence; None without figures.
pub fn bpf_cost_line(mode: &str, samples: &[Sample]) -> Option<String> {
    let costs: Vec<&BpfCost> = samples.iter().filter_map(|s| s.bpf_cost.as_ref()).collect();
    if costs.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = costs
        .iter()
        .flat_map(|c| c.progs.iter().map(|(n, ..)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let progs: Vec<String> = names
        .iter()
        .map(|name| {
            let of = |f: fn(&(String, f64, f64)) -> f64| {
                let v: Vec<f64> = costs
                    .iter()
                    .flat_map(|c| c.progs.iter().filter(|p| p.0 == *name).map(f))
                    .collect();
                median(&v)
            };
            format!("{name} {:.1} runs × {:.0} ns", of(|p| p.1), of(|p| p.2))
        })
        .collect();
    let bpf: Vec<f64> = costs.iter().map(|c| c.ns_per_conn() / 1e3).collect();
    let busy: Vec<f64> = costs.iter().map(|c| c.busy_us_per_conn).collect();
    let share: Vec<f64> = costs
        .iter()
        .map(|c| c.ns_per_conn() / 1e3 / c.busy_us_per_conn)
        .collect();
    Some(format!(
        "{mode}'s programs per connection (one more wrk run per round, one backend per wrk, with `kernel.bpf_stats_enabled`, which adds a clock read to each run; medians over rounds): {}; together {:.2} µs of the {:.1} µs of CPU a connection takes in all ({:.1}% [{:.1}–{:.1}%]).",
        progs.join(", "),
        median(&bpf),
        median(&busy),
        100.0 * median(&share),
        100.0 * summary(&share).1,
        100.0 * summary(&share).2,
    ))
}

/// `target/bench/`, created.
pub fn bench_dir() -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&out).expect("target/bench");
    out
}

/// The Markdown report: per N, each mode's median [min–max] and its ratios to the no-LB
/// ceiling (connection rates: side by side, and in turn against the ceiling runs around them;
/// iperf3: each round's run against the ceiling's runs just before and after).
pub fn render(o: &Opts, machine: &str, results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{}{}Machine: {}. {} repetitions; median [min–max]. Connection rates (conn/s columns): {}-second wrk runs in turn with the ceiling's; their \"vs no-LB\" is the median [quartiles] of {} runs per pattern and round side by side with the ceiling's wrk, both at once (the no-LB row: against a second, identical no-LB bed, an A/A control of the method). iperf3 ({} stream(s) of 3 s): median of per-round ratios to the mean of a no-LB run just before and one just after. last/first: median [quartiles] of the p50 ratio of adjacent blocks of {} connects to the last and the first service.\n",
        if o.ipv6 {
            "IPv6 throughout (IPv6 ClusterIPs and pods; kube-proxy in ip6tables and an ip6 table). "
        } else {
            ""
        },
        if o.north_south {
            "North-south: the client stands for an external one (its veth is an uplink, its processes outside the node: nothing is translated at the socket). "
        } else {
            ""
        },
        machine,
        o.reps,
        o.seconds,
        o.pairs,
        o.streams,
        o.connects.div_ceil(LATENCY_PAIRS),
    );
    for (n, modes) in results {
        // iperf3: to the ceiling runs bracketing the mode's own.
        let ratio_to = |m: &[Sample], f: fn(&Sample) -> f64, c: fn(&Sample) -> f64| -> f64 {
            let r: Vec<f64> = m.iter().map(|a| f(a) / c(a)).collect();
            summary(&r).0
        };
        // Connection rates (every side-by-side run's ratio) and latency (every block pair's),
        // pooled over the rounds.
        let pooled = |m: &[Sample], f: fn(&Sample) -> &Vec<f64>| -> String {
            let all: Vec<f64> = m.iter().flat_map(|a| f(a).iter().copied()).collect();
            if all.is_empty() {
                return "–".to_owned();
            }
            let (med, q1, q3) = quartiles(&all);
            format!("{med:.3} [{q1:.3}–{q3:.3}]")
        };
        let _ = writeln!(
            md,
            "### N = {n} service{}\n",
            if *n == 1 { "" } else { "s" }
        );
        md.push_str("| mode | connect p50 first (µs) | connect p50 last (µs) | last/first | connect p99 first / last (µs) | conn/s (`Connection: close`) | vs no-LB | conn/s, one backend per wrk | vs no-LB | iperf3 Gbit/s | vs no-LB | load N | change 1 endpoint |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for mode in o.modes.iter().copied() {
            let Some(s) = modes.get(mode) else { continue };
            let col = |f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<f64>>();
            let (load, change) = if mode == "no-LB" {
                ("–".to_owned(), "–".to_owned())
            } else {
                (
                    fmt_ms_range(&col(|x| x.load_ms)),
                    fmt_ms_range(&col(|x| x.change_ms)),
                )
            };
            let _ = writeln!(
                md,
                "| {mode} | {} | {} | {} | {:.0} / {:.0} | {} | {} | {} | {} | {} | {:.3} | {load} | {change} |",
                fmt_range(&col(|x| x.first_p50), 1),
                fmt_range(&col(|x| x.last_p50), 1),
                pooled(s, |x| &x.last_first),
                summary(&col(|x| x.first_p99)).0,
                summary(&col(|x| x.last_p99)).0,
                fmt_range(&col(|x| x.conns_per_s), 0),
                pooled(s, |x| &x.side_by_side),
                fmt_range(&col(|x| x.conns_per_s_pinned), 0),
                pooled(s, |x| &x.side_by_side_pinned),
                fmt_range(&col(|x| x.gbit_s), 2),
                ratio_to(s, |x| x.gbit_s, |x| x.ceiling_gbit_s),
            );
        }
        // The in-turn runs read against the ceiling runs around them (drift included).
        let in_turn: Vec<String> = o
            .modes
            .iter()
            .filter_map(|m| modes.get(m).map(|s| (m, s)))
            .map(|(m, s)| {
                format!(
                    "{m} {} / {}",
                    pooled(s, |x| &x.conns_ratios),
                    pooled(s, |x| &x.pinned_ratios)
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "\nIn turn (each run over the mean of the ceiling runs just before and after it; to the last service / one backend per wrk): {}.",
            in_turn.join("; ")
        );
        for mode in o.modes.iter().copied() {
            if let Some(line) = modes.get(mode).and_then(|s| bpf_cost_line(mode, s)) {
                let _ = writeln!(md, "\n{line}");
            }
        }
        md.push('\n');
    }
    md
}
