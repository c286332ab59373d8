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
//! Flags: `--modes no-LB,iptables,nftables,xlb` `--sizes 1,1000,10000` `--reps 3`
//! `--connects 2000` `--seconds 2` (per wrk run) `--pairs 4` (side-by-side runs per pattern,
//! mode and round)
//! `--perf 1` (a `perf record -a -g` of each mode's first wrk run of each pattern,
//! `target/bench/perf-<mode>-<N>-<spread|pinned>.data`), `--cpus 0` (everything the benchmark
//! starts confined to these CPUs: side by side on one CPU, the two beds' processes take turns
//! on it and the ratio is purely one of CPU time per connection; the A/A control then stays
//! within ~1% where sharing two CPUs it strays by ~5%), `--render <e2e.json>` (no traffic:
//! the report and charts of a finished run again).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use xlb_tests::{
    agent::{Agent, PinDir, in_cgroup, in_netns},
    kubeproxy::{self, Svc},
    netns::{Netns, require_root, unique_tag},
    topology::Node,
};

const MODES: [&str; 4] = ["no-LB", "iptables", "nftables", "xlb"];
/// Services per manifest file of the xlb mode (a directory of manifests, as users keep them).
const PER_FILE: usize = 100;
const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// Pairs of latency blocks (first service, last service) per mode and round.
const LATENCY_PAIRS: usize = 20;
/// A pod address with nothing behind it: the "changed" endpoint.
const GONE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 99);

struct Opts {
    modes: Vec<&'static str>,
    sizes: Vec<usize>,
    reps: usize,
    connects: usize,
    seconds: u32,
    /// Side-by-side runs of each connection-rate pattern per mode and round (`conn_rates`).
    pairs: usize,
    /// Record a system-wide `perf` profile of every wrk phase into `target/bench/`.
    perf: bool,
    /// Only render the report and charts of this finished run's JSON.
    render: Option<PathBuf>,
    /// Run the whole benchmark (every process and thread it starts) on these CPUs only.
    cpus: Option<Vec<usize>>,
}

fn opts() -> Opts {
    let mut o = Opts {
        modes: MODES.to_vec(),
        sizes: vec![1, 1000, 10_000],
        reps: 3,
        connects: 2000,
        seconds: 2,
        pairs: 4,
        perf: false,
        render: None,
        cpus: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a}: missing value"));
        let num = |v: &str| -> usize {
            v.parse()
                .unwrap_or_else(|_| panic!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--sizes" => o.sizes = v.split(',').map(num).collect(),
            "--modes" => {
                o.modes = v
                    .split(',')
                    .map(|m| {
                        *MODES
                            .iter()
                            .find(|k| **k == m)
                            .unwrap_or_else(|| panic!("--modes: {m} is not one of {MODES:?}"))
                    })
                    .collect();
                assert!(
                    o.modes.contains(&"no-LB"),
                    "--modes: no-LB is the ceiling every ratio needs"
                );
            }
            "--reps" => o.reps = num(v).max(1),
            "--connects" => o.connects = num(v).max(10),
            "--seconds" => o.seconds = num(v).max(1) as u32,
            "--pairs" => o.pairs = num(v).max(1),
            "--perf" => o.perf = num(v) != 0,
            "--render" => o.render = Some(PathBuf::from(v)),
            "--cpus" => o.cpus = Some(v.split(',').map(num).collect()),
            _ => panic!(
                "unknown flag {a}: --modes --sizes --reps --connects --seconds --pairs --perf --cpus --render"
            ),
        }
    }
    o
}

/// `cmd` as a command that runs inside `ns`, output piped.
fn ns_command(ns: &Netns, cmd: &[&str]) -> Command {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_netns(&mut c, &ns.path());
    c
}

/// Runs `cmd` inside `ns` (stdin from `input`); returns wall time and output.
fn run_in(ns: &Netns, cmd: &[&str], input: Option<&Path>) -> (Duration, Output) {
    let mut c = ns_command(ns, cmd);
    if let Some(p) = input {
        c.stdin(Stdio::from(fs::File::open(p).expect("input")));
    }
    let start = Instant::now();
    let out = c.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (start.elapsed(), out)
}

/// Like `run_in`, but the command must succeed.
fn must_in(ns: &Netns, cmd: &[&str], input: Option<&Path>) -> (Duration, String) {
    let (t, out) = run_in(ns, cmd, input);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A minimal HTTP/1.1 server: `threads` accept loops answering every request with a short
/// body and closing (the server closes first, as with `Connection: close`).
fn http_server(ns: &Netns, bind: SocketAddr, threads: usize) {
    let listener = ns.run(move || TcpListener::bind(bind).expect("bind http"));
    for _ in 0..threads {
        let l = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            const RESPONSE: &[u8] =
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
            let mut buf = [0u8; 2048];
            while let Ok((mut s, _)) = l.accept() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = s.write_all(RESPONSE);
                        break;
                    }
                }
            }
        });
    }
}

/// `connect()` times in µs for `n` connections to `to`, each reset right away (SO_LINGER 0:
/// no TIME_WAIT, so `n` is not limited by ports).
fn connect_times(to: SocketAddr, n: usize, warmup: usize) -> Vec<f64> {
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

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, p)
}

/// The `q` quantile of sorted `s`, interpolated between neighbours (the median of an even
/// count is the mean of the middle two).
fn quantile(s: &[f64], q: f64) -> f64 {
    let pos = (s.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// One mode's topology.
struct Bed {
    mode: &'static str,
    node: Node,
    backends: Vec<Ipv4Addr>,
    work: PathBuf,
    agent: Option<Agent>,
    /// xlb: the node's pin directory and cgroup (the agent attaches its socket programs to
    /// it; the client pod's processes run in it, as every process of a node does).
    pins: Option<PinDir>,
    iperf: Child,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.iperf.kill();
        let _ = self.iperf.wait();
        let _ = fs::remove_dir_all(&self.work);
    }
}

impl Bed {
    fn new(tag: &str, mode: &'static str, idx: usize) -> Self {
        let mut node = Node::new(&format!("{tag}{idx}"), "n", 1);
        for i in 0..=3 {
            node.add_pod(i);
        }
        for pod in &node.pods {
            // Offloads on, as pods have them (the test topology turns them off for XDP).
            pod.ns.exec(&["ethtool", "-K", "eth0", "tx", "on"]);
            pod.ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        }
        let backends: Vec<Ipv4Addr> = node.pods[1..].iter().map(|p| p.ip).collect();
        for (pod, ip) in node.pods[1..].iter().zip(&backends) {
            http_server(&pod.ns, SocketAddr::from((*ip, HTTP_PORT)), 4);
        }
        let iperf = ns_command(
            &node.pods[1].ns,
            &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
        let work = std::env::temp_dir().join(format!("xlb-bench-e2e-{tag}-{idx}"));
        fs::create_dir_all(work.join("services")).expect("work dir");
        let mut bed = Self {
            mode,
            node,
            backends,
            work,
            agent: None,
            pins: None,
            iperf,
        };
        if mode == "xlb" {
            fs::write(
                bed.work.join("services/iperf.yaml"),
                kubeproxy::manifests(&bed.fixed_svcs()),
            )
            .expect("write");
            let pins = PinDir::new(&format!("{tag}{idx}"));
            let dir = bed.work.join("services");
            let mut agent = Agent::spawn(
                &bed.node.ns,
                &pins,
                &[
                    "--services",
                    dir.to_str().expect("path"),
                    "--node-name",
                    "n",
                    "--pod-devices",
                    "xp*",
                    "--metrics-addr",
                    "off",
                ],
            );
            agent.wait_for_log("agent ready", 1);
            bed.agent = Some(agent);
            bed.pins = Some(pins);
        }
        bed
    }

    /// `cmd` as a process of the client pod (its namespace, and the node's cgroup if any).
    fn client_command(&self, cmd: &[&str]) -> Command {
        let mut c = ns_command(&self.node.pods[0].ns, cmd);
        if let Some(p) = &self.pins {
            in_cgroup(&mut c, &p.cgroup);
        }
        c
    }

    /// `connect()` times to `to` measured by a client-pod process (see `connect_times`).
    fn connect_times(&self, to: SocketAddr, n: usize, warmup: usize) -> Vec<f64> {
        let exe = std::env::current_exe().expect("own path");
        let exe = exe.to_str().expect("utf-8 path");
        let (to, n, warmup) = (to.to_string(), n.to_string(), warmup.to_string());
        let out = self
            .client_command(&[exe, "--connect-times", &to, &n, &warmup])
            .output()
            .expect("connect-times child");
        assert!(
            out.status.success(),
            "connect-times: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    /// Services every N has: iperf, and one per backend (`pinned_svc`).
    fn fixed_svcs(&self) -> Vec<Svc> {
        let mut v = vec![self.iperf_svc()];
        v.extend((0..self.backends.len()).map(|i| self.pinned_svc(i)));
        v
    }

    /// A Service whose one endpoint is backend `i`: the wrk run with one backend per wrk
    /// process goes through it, so the load balancers carry exactly the ceiling's traffic.
    fn pinned_svc(&self, i: usize) -> Svc {
        Svc {
            namespace: "bench".into(),
            name: format!("pinned{i}"),
            vip: Ipv4Addr::new(10, 98, 0, 1 + i as u8),
            port: 80,
            target: HTTP_PORT,
            endpoints: vec![self.backends[i]],
        }
    }

    fn iperf_svc(&self) -> Svc {
        Svc {
            namespace: "bench".into(),
            name: "iperf".into(),
            vip: Ipv4Addr::new(10, 97, 0, 1),
            port: IPERF_PORT,
            target: IPERF_PORT,
            endpoints: vec![self.backends[0]],
        }
    }

    fn services(&self, n: usize) -> Vec<Svc> {
        (0..n)
            .map(|i| Svc {
                namespace: format!("ns{}", i / PER_FILE),
                name: format!("svc{i}"),
                vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32),
                port: 80,
                target: HTTP_PORT,
                endpoints: self.backends.clone(),
            })
            .collect()
    }

    /// Where the client dials for (first service, last service, iperf).
    fn targets(&self, n: usize) -> (SocketAddr, SocketAddr, SocketAddr) {
        if self.mode == "no-LB" {
            let b = &self.backends;
            return (
                SocketAddr::from((b[0], HTTP_PORT)),
                SocketAddr::from((b[2], HTTP_PORT)),
                SocketAddr::from((b[0], IPERF_PORT)),
            );
        }
        let s = self.services(n);
        (
            SocketAddr::from((s[0].vip, 80)),
            SocketAddr::from((s[n - 1].vip, 80)),
            SocketAddr::from((self.iperf_svc().vip, IPERF_PORT)),
        )
    }

    fn rules(&self, name: &str, text: String) -> PathBuf {
        let p = self.work.join(name);
        fs::write(&p, text).expect("write rules");
        p
    }

    /// Removes every service but iperf (untimed).
    fn clear(&mut self) {
        let ns = &self.node.ns;
        match self.mode {
            "iptables" => {
                let f = self.rules("empty.rules", kubeproxy::iptables_full(&self.fixed_svcs()));
                must_in(ns, &["iptables-legacy-restore"], Some(&f));
            }
            "nftables" => {
                let _ = run_in(ns, &["nft", "delete", "table", "ip", "kube-proxy"], None);
                let f = self.rules("empty.nft", kubeproxy::nft_full(&self.fixed_svcs()));
                must_in(ns, &["nft", "-f", f.to_str().expect("path")], None);
            }
            "xlb" => {
                let dir = self.work.join("services");
                let mark = self.xlb_mark();
                let mut removed = false;
                for e in fs::read_dir(&dir).expect("dir").flatten() {
                    if e.file_name().to_string_lossy().starts_with('s') {
                        fs::remove_file(e.path()).expect("remove");
                        removed = true;
                    }
                }
                if removed {
                    self.xlb_wait(mark, Instant::now(), Some(self.fixed_svcs().len()));
                }
            }
            _ => {}
        }
    }

    /// How many syncs the agent has logged so far.
    fn xlb_mark(&self) -> usize {
        let agent = self.agent.as_ref().expect("agent");
        agent.logs().matches("maps synced").count()
    }

    /// Waits for a sync logged after `mark` (leaving `services` services, if given); returns
    /// the time since `since`.
    fn xlb_wait(&self, mark: usize, since: Instant, services: Option<usize>) -> Duration {
        let agent = self.agent.as_ref().expect("agent");
        let want = services.map(|n| format!("services={n} "));
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let log = agent.logs();
            let done = log
                .lines()
                .filter(|l| l.contains("maps synced"))
                .skip(mark)
                .any(|l| want.as_ref().is_none_or(|w| l.contains(w.as_str())));
            if done {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "xlb: no sync to {services:?} services:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn xlb_write(&self, services: &[Svc], chunk: usize) {
        let dir = self.work.join("services");
        let tmp = dir.join(format!(".tmp{chunk}"));
        let part = &services[chunk * PER_FILE..((chunk + 1) * PER_FILE).min(services.len())];
        fs::write(&tmp, kubeproxy::manifests(part)).expect("write");
        fs::rename(&tmp, dir.join(format!("s{chunk:04}.yaml"))).expect("rename");
    }

    /// Loads `n` services (timed), then changes one endpoint (timed) and changes it back.
    fn load(&mut self, n: usize) -> (f64, f64) {
        self.clear();
        let mut all = self.services(n);
        let mid = n / 2;
        let mut moved = all[mid].clone();
        moved.endpoints[0] = GONE_POD;
        let ns = &self.node.ns;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match self.mode {
            "iptables" => {
                let mut with_iperf = all.clone();
                with_iperf.extend(self.fixed_svcs());
                let full = self.rules("full.rules", kubeproxy::iptables_full(&with_iperf));
                let change = self.rules(
                    "change.rules",
                    kubeproxy::iptables_change(&all[mid], &moved),
                );
                let back = self.rules("back.rules", kubeproxy::iptables_change(&moved, &all[mid]));
                let (load, _) = must_in(ns, &["iptables-legacy-restore"], Some(&full));
                let noflush = ["iptables-legacy-restore", "--noflush"];
                let (change, _) = must_in(ns, &noflush, Some(&change));
                must_in(ns, &noflush, Some(&back));
                (ms(load), ms(change))
            }
            "nftables" => {
                let _ = run_in(ns, &["nft", "delete", "table", "ip", "kube-proxy"], None);
                let mut with_iperf = all.clone();
                with_iperf.extend(self.fixed_svcs());
                let full = self.rules("full.nft", kubeproxy::nft_full(&with_iperf));
                let change = self.rules("change.nft", kubeproxy::nft_change(&all[mid], &moved));
                let back = self.rules("back.nft", kubeproxy::nft_change(&moved, &all[mid]));
                let nft = |f: &Path| must_in(ns, &["nft", "-f", f.to_str().expect("path")], None).0;
                let load = nft(&full);
                let change = nft(&change);
                nft(&back);
                (ms(load), ms(change))
            }
            "xlb" => {
                let (mark, start) = (self.xlb_mark(), Instant::now());
                for chunk in 0..n.div_ceil(PER_FILE) {
                    self.xlb_write(&all, chunk);
                }
                let load = self.xlb_wait(mark, start, Some(n + self.fixed_svcs().len()));
                let original = all[mid].clone();
                all[mid] = moved;
                let (mark, start) = (self.xlb_mark(), Instant::now());
                self.xlb_write(&all, mid / PER_FILE);
                let change = self.xlb_wait(mark, start, None);
                all[mid] = original;
                let (mark, start) = (self.xlb_mark(), Instant::now());
                self.xlb_write(&all, mid / PER_FILE);
                self.xlb_wait(mark, start, None);
                (ms(load), ms(change))
            }
            _ => (0.0, 0.0),
        }
    }
}

/// A sysctl of the bench's own (initial) namespace, set until dropped.
struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    fn set(key: &str, value: &str) -> Self {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let old = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{key}: {e}"));
        fs::write(&path, value).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        Self { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.old.trim());
    }
}

/// One mode's figures in one round.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Sample {
    first_p50: f64,
    first_p99: f64,
    last_p50: f64,
    last_p99: f64,
    /// Per adjacent pair of latency blocks, the last service's p50 over the first's.
    #[serde(default)]
    last_first: Vec<f64>,
    conns_per_s: f64,
    /// Connections per second with each wrk on one backend of its own (the ceiling's own
    /// traffic pattern; the load balancers through one-endpoint Services).
    conns_per_s_pinned: f64,
    /// Median of the ceiling's runs in turn with this mode's (see `conn_rates`).
    ceiling_conns_per_s: f64,
    /// Each of the mode's runs to the last service over the mean of the ceiling runs on
    /// either side of it (for no-LB itself: against the control bed, A/A).
    conns_ratios: Vec<f64>,
    /// Likewise for the runs with one backend per wrk.
    pinned_ratios: Vec<f64>,
    /// The ceiling's runs, in order.
    ceiling_runs: Vec<f64>,
    /// The mode's rate to the last service over the ceiling's, in runs side by side (for
    /// no-LB itself: against the control bed, A/A).
    side_by_side: Vec<f64>,
    /// Likewise with one backend per wrk.
    side_by_side_pinned: Vec<f64>,
    gbit_s: f64,
    /// The ceiling's iperf3 throughput around this mode's (mean of a run just before and one
    /// just after; for no-LB itself, its own).
    ceiling_gbit_s: f64,
    load_ms: f64,
    change_ms: f64,
    /// xlb: what its programs cost per connection (`bpf_cost`), one backend per wrk.
    #[serde(default)]
    bpf_cost: Option<BpfCost>,
}

/// The datapath's own share of a connection's CPU, read from the kernel's BPF run-time
/// statistics over one extra wrk run (one backend per wrk) of the mode alone.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct BpfCost {
    /// CPU time (the benchmark's CPUs, not idle, not stolen) per connection over the run, µs.
    busy_us_per_conn: f64,
    /// Per program that ran: (name, runs per connection, ns per run).
    progs: Vec<(String, f64, f64)>,
}

impl BpfCost {
    /// ns of BPF program time per connection.
    fn ns_per_conn(&self) -> f64 {
        self.progs.iter().map(|(_, runs, ns)| runs * ns).sum()
    }
}

/// Every loaded program's (name, run_cnt, run_time_ns), by id, as `bpftool` lists them.
fn prog_stats() -> BTreeMap<u64, (String, u64, u64)> {
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
fn cpu_busy_ticks() -> f64 {
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

/// The CPUs this process may run on (its affinity mask).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Confines this process, and so everything it starts from now on, to `cpus`.
fn pin_to(cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        assert!(cpu < libc::CPU_SETSIZE as usize, "--cpus: no CPU {cpu}");
        // SAFETY: `cpu` < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "--cpus {cpus:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// `bed`'s wrk to `targets` for `seconds` with `kernel.bpf_stats_enabled` on: each xlb
/// program's runs and time per connection, against the machine's CPU time per connection.
/// (The statistics add a clock read around each run, counted in ns per run.)
fn bpf_cost(bed: &Bed, targets: [SocketAddr; 3], seconds: u32) -> BpfCost {
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

/// Spawns `cmd` inside `ns` with its output piped.
fn spawn_in(ns: &Netns, cmd: &[&str]) -> Child {
    ns_command(ns, cmd)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Short connections per second: three wrk processes at once (one thread, 12 connections
/// each), wrk `i` to `targets[i]`.
fn wrk(bed: &Bed, targets: [SocketAddr; 3], seconds: u32) -> f64 {
    wrk_rate(bed, wrk_start(bed, targets, seconds))
}

/// Starts the three wrk processes of `wrk`.
fn wrk_start(bed: &Bed, targets: [SocketAddr; 3], seconds: u32) -> Vec<Child> {
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
fn wrk_rate(bed: &Bed, children: Vec<Child>) -> f64 {
    wrk_results(bed, children).0
}

/// The summed rate and request count of wrk processes started by `wrk_start`.
fn wrk_results(bed: &Bed, children: Vec<Child>) -> (f64, f64) {
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
fn side_by_side(bed: &Bed, targets: [SocketAddr; 3], ceiling: &Bed, seconds: u32) -> f64 {
    let own = wrk_start(bed, targets, seconds);
    let other = wrk_start(ceiling, direct(ceiling), seconds);
    let own = wrk_rate(bed, own);
    own / wrk_rate(ceiling, other)
}

fn iperf(bed: &Bed, to: SocketAddr) -> f64 {
    let ip = to.ip().to_string();
    let port = to.port().to_string();
    let cmd = ["iperf3", "-c", &ip, "-p", &port, "-t", "3", "-J"];
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

/// The ceiling's targets: each wrk straight to one backend.
fn direct(bed: &Bed) -> [SocketAddr; 3] {
    [0, 1, 2].map(|i| SocketAddr::from((bed.backends[i], HTTP_PORT)))
}

/// One mode's sample for `n` services, loaded already (`load_ms`, `change_ms`); `ceiling`
/// (the no-LB bed) brackets a load balancer's wrk runs.
fn measure(bed: &Bed, ceiling: Option<&Bed>, n: usize, o: &Opts, load: (f64, f64)) -> Sample {
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
        [0, 1, 2].map(|i| SocketAddr::from((bed.pinned_svc(i).vip, 80)))
    };
    let wrk_targets = if bed.mode == "no-LB" {
        pinned
    } else {
        [last; 3]
    };
    let rates = conn_rates(bed, ceiling, [wrk_targets, pinned], n, o);
    let ceiling_iperf = |c: &Bed| iperf(c, c.targets(n).2);
    let before = ceiling.map(ceiling_iperf);
    let gbit_s = iperf(bed, iperf_to);
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
struct Rates {
    /// The mode's runs, per pattern: [to the last service (spread), one backend per wrk].
    runs: [Vec<f64>; 2],
    /// Each run of `runs` divided by the mean of the ceiling runs on either side of it.
    ratios: [Vec<f64>; 2],
    /// The ceiling's runs, in order.
    ceiling: Vec<f64>,
    /// Per pattern, the mode's rate over the ceiling's in runs side by side (`side_by_side`).
    side_by_side: [Vec<f64>; 2],
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
fn conn_rates(
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

/// (median, first quartile, third quartile) of `v`.
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (quantile(&s, 0.5), quantile(&s, 0.25), quantile(&s, 0.75))
}

fn median(v: &[f64]) -> f64 {
    summary(v).0
}

/// median [min–max] of `v`.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (quantile(&s, 0.5), s[0], s[s.len() - 1])
}

fn fmt_range(v: &[f64], digits: usize) -> String {
    let (m, lo, hi) = summary(v);
    format!("{m:.digits$} [{lo:.digits$}–{hi:.digits$}]")
}

fn fmt_ms(v: &[f64]) -> String {
    let (m, lo, hi) = summary(v);
    if m >= 1000.0 {
        format!("{:.2} s [{:.2}–{:.2}]", m / 1e3, lo / 1e3, hi / 1e3)
    } else {
        format!("{m:.1} ms [{lo:.1}–{hi:.1}]")
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as usize;
    let mine = allowed_cpus();
    let pinned = if mine.len() < cores {
        format!(" (the benchmark confined to CPU {mine:?})")
    } else {
        String::new()
    };
    format!("{cpu}, {cores} cores{pinned}, kernel {}", kernel.trim())
}

fn main() {
    // Child mode: `--connect-times <addr> <n> <warmup>` prints one time (µs) per line.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--connect-times") {
        let to: SocketAddr = args[1].parse().expect("address");
        let (n, warmup) = (
            args[2].parse().expect("n"),
            args[3].parse().expect("warmup"),
        );
        for t in connect_times(to, n, warmup) {
            println!("{t:.3}");
        }
        return;
    }
    let o = opts();
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
        "end-to-end: modes {:?}, N = {:?}, {} repetitions, {} connects per latency figure, wrk {} s",
        o.modes, o.sizes, o.reps, o.connects, o.seconds
    );
    println!("machine: {}", machine());
    let mut beds: Vec<Bed> = {
        // The servers close first, so every connection leaves a TIME_WAIT socket (60 s) in its
        // backend pod: ~200k per wrk run. In the kernel's shared socket hash they would slow
        // down whichever mode runs next; namespaces created with their own hash keep each
        // mode's sockets to itself.
        let _own_hash = Sysctl::set("net.ipv4.tcp_child_ehash_entries", "262144");
        o.modes
            .iter()
            .enumerate()
            .map(|(i, m)| Bed::new(&tag, m, i))
            .collect()
    };
    // A second no-LB bed, identical to the first: the no-LB mode is measured against it (an
    // A/A control with servers, sockets and namespaces of its own, as every mode has).
    let control = {
        let _own_hash = Sysctl::set("net.ipv4.tcp_child_ehash_entries", "262144");
        Bed::new(&tag, "no-LB", o.modes.len())
    };
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

/// Every mode's samples per N.
type Results = BTreeMap<usize, BTreeMap<&'static str, Vec<Sample>>>;

/// Prints the report and writes it, the JSON and the charts to `target/bench/`.
fn publish(o: &Opts, machine: &str, results: &Results) {
    let report = render(o, machine, results);
    println!("\n{report}");
    let out = bench_dir();
    fs::write(out.join("e2e.md"), &report).expect("write e2e.md");
    let opts = json!({
        "reps": o.reps, "seconds": o.seconds, "pairs": o.pairs, "connects": o.connects,
    });
    let json = json!({ "machine": machine, "opts": opts, "results": results });
    fs::write(
        out.join("e2e.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write e2e.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/plot_e2e.py");
    // Debian's python3, where python3-matplotlib (installed by the bench set-up) lives.
    match Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&out)
        .status()
    {
        Ok(s) if s.success() => println!("charts: {}/e2e-*.png", out.display()),
        other => eprintln!("charts not drawn ({other:?}): is python3-matplotlib installed?"),
    }
}

/// `--render FILE`: the report and charts of a finished run again, from its JSON (no traffic;
/// the run's options come from the file, or else from the flags).
fn rerender(mut o: Opts, file: &Path) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let field = |k: &str| v["opts"][k].as_u64().map(|x| x as usize);
    o.reps = field("reps").unwrap_or(o.reps);
    o.seconds = field("seconds").map_or(o.seconds, |x| x as u32);
    o.pairs = field("pairs").unwrap_or(o.pairs);
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
fn bpf_cost_line(mode: &str, samples: &[Sample]) -> Option<String> {
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
fn bench_dir() -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&out).expect("target/bench");
    out
}

/// The Markdown report: per N, each mode's median [min–max] and its ratios to the no-LB
/// ceiling (connection rates: side by side, and in turn against the ceiling runs around them;
/// iperf3: each round's run against the ceiling's runs just before and after).
fn render(o: &Opts, machine: &str, results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. {} repetitions; median [min–max]. Connection rates (conn/s columns): {}-second wrk runs in turn with the ceiling's; their \"vs no-LB\" is the median [quartiles] of {} runs per pattern and round side by side with the ceiling's wrk, both at once (the no-LB row: against a second, identical no-LB bed, an A/A control of the method). iperf3: median of per-round ratios to the mean of a no-LB run just before and one just after. last/first: median [quartiles] of the p50 ratio of adjacent blocks of {} connects to the last and the first service.\n",
        machine,
        o.reps,
        o.seconds,
        o.pairs,
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
                (fmt_ms(&col(|x| x.load_ms)), fmt_ms(&col(|x| x.change_ms)))
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
