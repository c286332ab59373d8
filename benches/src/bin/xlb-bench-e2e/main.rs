//! `cargo xtask bench e2e`: xlb against what users would run instead, on one topology shape,
//! in one invocation, as ratios to a ceiling measured in the same round.
//!
//! Four copies of the topology (a node namespace; a client pod and three backend pods on
//! veths), one per mode, so no mode's rules sit in another's path:
//! - `no-LB`: the client dials a backend directly (the ceiling);
//! - `iptables`: kube-proxy's iptables rules (`iptables-legacy-restore`);
//! - `nftables`: kube-proxy's nftables rules (`nft -f`);
//! - `xlb`: the real agent on Service/EndpointSlice files, with its defaults: TCP connects of
//!   the node's processes translated at the socket (here the node is the bed's own cgroup,
//!   which the client pod's processes run in), everything else by the tc programs.
//!
//! For each N (services × 3 endpoints) and repetition, every mode in turn: time to load the N
//! services and to change one endpoint, connect latency (SYN → SYN/ACK, i.e. `connect()`) to
//! the first and the last service, short connections per second with wrk (`Connection:
//! close`) in two patterns — to the last service (the load balancers spread each wrk's
//! connections over the three backends) and with one backend per wrk (through one-endpoint
//! Services: exactly the ceiling's traffic, so the ratio is the datapath's own cost) — and
//! one-stream iperf3 throughput. A machine shared with others drifts by tens of percent within
//! a round, so a load balancer's connection rates are compared with the ceiling's (no-LB bed)
//! in runs side by side — both wrk sets at once, sharing the machine, the ratio of their rates
//! that of their costs per connection — next to absolute rates from runs in turn (C A C B C);
//! the ceiling does both against a second, identical no-LB bed (an A/A control: how far the
//! method alone strays from 1). iperf3 is bracketed by a ceiling run before and one after.
//! Results: stdout, `target/bench/e2e.md`, `target/bench/e2e.json` and PNG charts
//! (`benches/plot_e2e.py`).
//!
//! Flags: `--help` (`cli.rs`). Files: `bed` (one mode's topology and its service loading),
//! `measure` (latency, connection rates, throughput, the programs' cost), `machine` (CPUs),
//! `report` (Markdown, JSON, charts). An interrupted run (Ctrl-C, SIGTERM) removes its
//! namespaces, agents and pins (`xlb_benches::cleanup`).

mod bed;
mod cli;
mod machine;
mod measure;
mod report;

use xlb_benches::{
    cleanup::{self, Sysctl},
    stats::median,
};
use xlb_tests::netns::{require_root, unique_tag};

use crate::{
    bed::Bed,
    cli::Opts,
    machine::{machine, pin_to},
    measure::measure,
    report::{Results, publish, rerender},
};

fn main() {
    let o = Opts::get();
    // Child mode: `--connect-times ADDR N WARMUP` prints one time (µs) per line.
    if let Some(c) = o.connect_times() {
        let c = c.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        for t in measure::connect_times(c.to, c.n, c.warmup) {
            println!("{t:.3}");
        }
        return;
    }
    // First, before any thread: every later thread inherits the blocked signals.
    cleanup::install();
    if let Some(file) = o.render.clone() {
        rerender(o, &file);
        return;
    }
    require_root();
    if let Some(cpus) = &o.cpus {
        // Before any thread or child exists: all of them inherit the mask.
        pin_to(cpus);
    }
    let tag = unique_tag();
    println!(
        "end-to-end{}{}: modes {:?}, N = {:?}, {} repetitions, {} connects per latency figure, wrk {} s, iperf3 {} stream(s)",
        if o.ipv6 { " (IPv6)" } else { "" },
        if o.north_south { " (north-south)" } else { "" },
        o.modes,
        o.sizes,
        o.reps,
        o.connects,
        o.seconds,
        o.streams
    );
    println!("machine: {}", machine());
    println!(
        "beds: namespaces {}* (removed at the end, or on Ctrl-C)",
        cleanup::prefix()
    );
    let mut beds: Vec<Bed> = {
        // The servers close first, so every connection leaves a TIME_WAIT socket (60 s) in its
        // backend pod: ~200k per wrk run. In the kernel's shared socket hash they would slow
        // down whichever mode runs next; namespaces created with their own hash keep each
        // mode's sockets to itself.
        let _own_hash = Sysctl::set("net.ipv4.tcp_child_ehash_entries", "262144");
        o.modes
            .iter()
            .enumerate()
            .map(|(i, m)| Bed::new(&tag, m, i, o.shape()))
            .collect()
    };
    // A second no-LB bed, identical to the first: the no-LB mode is measured against it (an
    // A/A control with servers, sockets and namespaces of its own, as every mode has).
    let control = {
        let _own_hash = Sysctl::set("net.ipv4.tcp_child_ehash_entries", "262144");
        Bed::new(&tag, "no-LB", o.modes.len(), o.shape())
    };
    println!("beds ready");
    // results[n][mode] = one Sample per round.
    let mut results = Results::new();
    for &n in &o.sizes {
        for rep in 0..o.reps {
            // Each round starts with another mode, so no mode always follows the same one.
            let count = beds.len();
            let ceiling_idx = beds.iter().position(|b| b.mode == "no-LB");
            for i in 0..count {
                let idx = (i + rep) % count;
                let load = beds[idx].load(n);
                let bed = &beds[idx];
                let ceiling = match ceiling_idx {
                    Some(c) if c == idx => Some(&control),
                    c => c.map(|c| &beds[c]),
                };
                let s = measure(bed, ceiling, n, &o, load);
                println!(
                    "N={n:>5} rep {rep} {:<9} connect p50 {:>6.1}/{:>6.1} µs p99 {:>6.1}/{:>6.1} µs (first/last)  {:>8.0} conn/s ({:>6.0} pinned, ceiling {:>6.0}; x{:.3} / x{:.3}; side by side x{:.3} / x{:.3})  {:>6.2} Gbit/s  load {:>9.1} ms  change {:>7.2} ms",
                    bed.mode,
                    s.first_p50,
                    s.last_p50,
                    s.first_p99,
                    s.last_p99,
                    s.conns_per_s,
                    s.conns_per_s_pinned,
                    s.ceiling_conns_per_s,
                    median(&s.conns_ratios),
                    median(&s.pinned_ratios),
                    median(&s.side_by_side),
                    median(&s.side_by_side_pinned),
                    s.gbit_s,
                    s.load_ms,
                    s.change_ms
                );
                results
                    .entry(n)
                    .or_default()
                    .entry(bed.mode)
                    .or_default()
                    .push(s);
            }
        }
    }
    publish(&o, &machine(), &results);
    drop(beds);
    drop(control);
}
