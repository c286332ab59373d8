//! One mode's topology (a node namespace, a client pod and three backend pods on veths) and
//! how each mode loads N services: kube-proxy's rules with its own tools, xlb through the
//! real agent on a directory of manifests.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    agent::{Agent, PinDir, in_cgroup, in_netns},
    kubeproxy::{self, Svc},
    netns::Netns,
    topology::Node,
};

/// Services per manifest file of the xlb mode (a directory of manifests, as users keep them).
pub const PER_FILE: usize = 100;

pub const HTTP_PORT: u16 = 8080;

pub const IPERF_PORT: u16 = 5201;

/// A pod address with nothing behind it: the "changed" endpoint (of each family).
pub const GONE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 99);
pub const GONE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x99);

/// `cmd` as a command that runs inside `ns`, output piped.
pub fn ns_command(ns: &Netns, cmd: &[&str]) -> Command {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_netns(&mut c, &ns.path());
    c
}

/// Runs `cmd` inside `ns` (stdin from `input`); returns wall time and output.
pub fn run_in(ns: &Netns, cmd: &[&str], input: Option<&Path>) -> (Duration, Output) {
    let mut c = ns_command(ns, cmd);
    if let Some(p) = input {
        c.stdin(Stdio::from(fs::File::open(p).expect("input")));
    }
    let start = Instant::now();
    let out = c.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (start.elapsed(), out)
}

/// Like `run_in`, but the command must succeed.
pub fn must_in(ns: &Netns, cmd: &[&str], input: Option<&Path>) -> (Duration, String) {
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
pub fn http_server(ns: &Netns, bind: SocketAddr, threads: usize) {
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

/// What every bed of a run looks like.
#[derive(Clone, Copy)]
pub struct Shape {
    /// IPv6 addresses and services throughout.
    pub ipv6: bool,
    /// The client pod stands for an external client: its device is an uplink and its
    /// processes are outside the node's cgroup.
    pub north_south: bool,
}

/// One mode's topology.
pub struct Bed {
    pub mode: &'static str,
    pub node: Node,
    /// The backend pods' addresses, of the bed's family.
    pub backends: Vec<IpAddr>,
    pub work: PathBuf,
    pub agent: Option<Agent>,
    /// xlb: the node's pin directory and cgroup (the agent attaches its socket programs to
    /// it; the client pod's processes run in it, as every process of a node does).
    pub pins: Option<PinDir>,
    pub iperf: Child,
    pub shape: Shape,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.iperf.kill();
        let _ = self.iperf.wait();
        let _ = fs::remove_dir_all(&self.work);
    }
}

impl Bed {
    pub fn new(tag: &str, mode: &'static str, idx: usize, shape: Shape) -> Self {
        let ipv6 = shape.ipv6;
        let mut node = Node::new(&format!("{tag}{idx}"), kubeproxy::NODE_NAME, 1);
        for i in 0..=3 {
            node.add_pod(i);
        }
        if ipv6 {
            node.dual_stack();
        }
        for pod in &node.pods {
            // Offloads on, as pods have them (the test topology turns them off for XDP).
            pod.ns.exec(&["ethtool", "-K", "eth0", "tx", "on"]);
            pod.ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        }
        let backends: Vec<IpAddr> = node.pods[1..]
            .iter()
            .map(|p| if ipv6 { p.ip6.into() } else { p.ip.into() })
            .collect();
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
            shape,
        };
        if mode == "xlb" {
            fs::write(
                bed.work.join("services/iperf.yaml"),
                kubeproxy::manifests(&bed.fixed_svcs()),
            )
            .expect("write");
            let pins = PinDir::new(&format!("{tag}{idx}"));
            let dir = bed.work.join("services");
            let mut args = vec![
                "--services",
                dir.to_str().expect("path"),
                "--node-name",
                kubeproxy::NODE_NAME,
                "--metrics-addr",
                "off",
            ];
            if shape.north_south {
                // The client's veth is the uplink; the backends' are pod devices.
                args.extend(["--devices", "xp0", "--pod-devices", "xp1,xp2,xp3"]);
            } else {
                args.extend(["--pod-devices", "xp*"]);
            }
            let mut agent = Agent::spawn(&bed.node.ns, &pins, &args);
            agent.wait_for_log("agent ready", 1);
            bed.agent = Some(agent);
            bed.pins = Some(pins);
        }
        bed
    }

    /// `cmd` as a process of the client pod (its namespace, and the node's cgroup if any,
    /// unless the client stands for an external one).
    pub fn client_command(&self, cmd: &[&str]) -> Command {
        let mut c = ns_command(&self.node.pods[0].ns, cmd);
        if let Some(p) = &self.pins
            && !self.shape.north_south
        {
            in_cgroup(&mut c, &p.cgroup);
        }
        c
    }

    /// `connect()` times to `to` measured by a client-pod process (see `connect_times`).
    pub fn connect_times(&self, to: SocketAddr, n: usize, warmup: usize) -> Vec<f64> {
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
    pub fn fixed_svcs(&self) -> Vec<Svc> {
        let mut v = vec![self.iperf_svc()];
        v.extend((0..self.backends.len()).map(|i| self.pinned_svc(i)));
        v
    }

    /// A Service whose one endpoint is backend `i`: the wrk run with one backend per wrk
    /// process goes through it, so the load balancers carry exactly the ceiling's traffic.
    pub fn pinned_svc(&self, i: usize) -> Svc {
        Svc {
            namespace: "bench".into(),
            name: format!("pinned{i}"),
            vip: self.vip(Ipv4Addr::new(10, 98, 0, 1 + i as u8)),
            external: self.external(Ipv4Addr::new(10, 98, 0, 1 + i as u8)),
            port: 80,
            target: HTTP_PORT,
            endpoints: vec![self.backends[i]],
        }
    }

    /// Whether the bed runs IPv6.
    pub fn ipv6(&self) -> bool {
        self.shape.ipv6
    }

    /// A service address of the bed's family: `v4`, or `fd00:96::<v4's low 24 bits>` (the
    /// IPv6 service range, `10.96.x.y` → `fd00:96::x:y`-like).
    fn vip(&self, v4: Ipv4Addr) -> IpAddr {
        if self.ipv6() {
            let b = v4.octets();
            Ipv6Addr::new(
                0xfd00,
                0x96,
                0,
                0,
                0,
                u16::from(b[1]),
                u16::from(b[2]),
                u16::from(b[3]),
            )
            .into()
        } else {
            v4.into()
        }
    }

    /// North-south: the externalIP the client dials for the service of ClusterIP `v4`'s
    /// counterpart (`10.x.y.z` → `100.x.y.z`, IPv6 `fd00:100:x:y:z::`); None otherwise.
    fn external(&self, v4: Ipv4Addr) -> Option<IpAddr> {
        if !self.shape.north_south {
            return None;
        }
        let b = v4.octets();
        Some(if self.ipv6() {
            Ipv6Addr::new(
                0xfd00,
                0x100,
                b[1].into(),
                b[2].into(),
                b[3].into(),
                0,
                0,
                0,
            )
            .into()
        } else {
            Ipv4Addr::new(100, b[1], b[2], b[3]).into()
        })
    }

    /// kube-proxy's iptables restore tool for the bed's family.
    fn iptables_restore(&self) -> &'static str {
        if self.ipv6() {
            "ip6tables-legacy-restore"
        } else {
            "iptables-legacy-restore"
        }
    }

    /// nftables' table family of the bed.
    fn nft_family(&self) -> &'static str {
        if self.ipv6() { "ip6" } else { "ip" }
    }

    pub fn iperf_svc(&self) -> Svc {
        Svc {
            namespace: "bench".into(),
            name: "iperf".into(),
            vip: self.vip(Ipv4Addr::new(10, 97, 0, 1)),
            external: self.external(Ipv4Addr::new(10, 97, 0, 1)),
            port: IPERF_PORT,
            target: IPERF_PORT,
            endpoints: vec![self.backends[0]],
        }
    }

    pub fn services(&self, n: usize) -> Vec<Svc> {
        (0..n)
            .map(|i| Svc {
                namespace: format!("ns{}", i / PER_FILE),
                name: format!("svc{i}"),
                vip: self.vip(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32,
                )),
                external: self.external(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32,
                )),
                port: 80,
                target: HTTP_PORT,
                endpoints: self.backends.clone(),
            })
            .collect()
    }

    /// Where the client dials for (first service, last service, iperf).
    pub fn targets(&self, n: usize) -> (SocketAddr, SocketAddr, SocketAddr) {
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
            SocketAddr::from((s[0].dialled(), 80)),
            SocketAddr::from((s[n - 1].dialled(), 80)),
            SocketAddr::from((self.iperf_svc().dialled(), IPERF_PORT)),
        )
    }

    pub fn rules(&self, name: &str, text: String) -> PathBuf {
        let p = self.work.join(name);
        fs::write(&p, text).expect("write rules");
        p
    }

    /// Removes every service but iperf (untimed).
    pub fn clear(&mut self) {
        let ns = &self.node.ns;
        match self.mode {
            "iptables" => {
                let f = self.rules("empty.rules", kubeproxy::iptables_full(&self.fixed_svcs()));
                must_in(ns, &[self.iptables_restore()], Some(&f));
            }
            "nftables" => {
                let fam = self.nft_family();
                let _ = run_in(ns, &["nft", "delete", "table", fam, "kube-proxy"], None);
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
                    let want = self.xlb_services(self.fixed_svcs().len());
                    self.xlb_wait(mark, Instant::now(), Some(want));
                }
            }
            _ => {}
        }
    }

    /// The services xlb programs for `svcs` of the bed's: two per externalIP service with
    /// `externalTrafficPolicy: Local` (north-south: the in-cluster and the external view).
    fn xlb_services(&self, svcs: usize) -> usize {
        if self.shape.north_south {
            2 * svcs
        } else {
            svcs
        }
    }

    /// How many syncs the agent has logged so far.
    pub fn xlb_mark(&self) -> usize {
        let agent = self.agent.as_ref().expect("agent");
        agent.logs().matches("maps synced").count()
    }

    /// Waits for a sync logged after `mark` (leaving `services` services, if given); returns
    /// the time since `since`.
    pub fn xlb_wait(&self, mark: usize, since: Instant, services: Option<usize>) -> Duration {
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

    pub fn xlb_write(&self, services: &[Svc], chunk: usize) {
        let dir = self.work.join("services");
        let tmp = dir.join(format!(".tmp{chunk}"));
        let part = &services[chunk * PER_FILE..((chunk + 1) * PER_FILE).min(services.len())];
        fs::write(&tmp, kubeproxy::manifests(part)).expect("write");
        fs::rename(&tmp, dir.join(format!("s{chunk:04}.yaml"))).expect("rename");
    }

    /// Loads `n` services (timed), then changes one endpoint (timed) and changes it back.
    pub fn load(&mut self, n: usize) -> (f64, f64) {
        self.clear();
        let mut all = self.services(n);
        let mid = n / 2;
        let mut moved = all[mid].clone();
        moved.endpoints[0] = if self.ipv6() {
            GONE_POD6.into()
        } else {
            GONE_POD.into()
        };
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
                let (load, _) = must_in(ns, &[self.iptables_restore()], Some(&full));
                let noflush = [self.iptables_restore(), "--noflush"];
                let (change, _) = must_in(ns, &noflush, Some(&change));
                must_in(ns, &noflush, Some(&back));
                (ms(load), ms(change))
            }
            "nftables" => {
                let fam = self.nft_family();
                let _ = run_in(ns, &["nft", "delete", "table", fam, "kube-proxy"], None);
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
                let want = self.xlb_services(n + self.fixed_svcs().len());
                let load = self.xlb_wait(mark, start, Some(want));
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

/// Spawns `cmd` inside `ns` with its output piped.
pub fn spawn_in(ns: &Netns, cmd: &[&str]) -> Child {
    ns_command(ns, cmd)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The ceiling's targets: each wrk straight to one backend.
pub fn direct(bed: &Bed) -> [SocketAddr; 3] {
    [0, 1, 2].map(|i| SocketAddr::from((bed.backends[i], HTTP_PORT)))
}
