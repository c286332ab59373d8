//! The standalone host load balancer: the compact format next to Kubernetes manifests in one
//! `--services` directory, one-arm SNAT with weighted backends, backends routed through the
//! balancer keeping the client address, `xlb check`, SIGHUP repairing map drift, and the
//! shipped example and systemd unit.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir, xlb_bin},
    files::WorkDir,
    netns::{require_root, unique_tag},
    topology::{Cluster, node_ip},
    traffic::{Servers, spread, tcp_requests, udp_requests},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const ROUTED_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const K8S_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);

/// Compact services: `web` one-arm with weights 3:1, `dns` over UDP, `routed` keeping the
/// client address (the backend routes the client's network through the balancer).
fn compact() -> String {
    let b = node_ip(1);
    format!(
        "services:
  - name: web
    frontend: {VIP}:80/tcp
    backends:
      - {{address: {b}:8080, weight: 3}}
      - {b}:8081
  - name: dns
    frontend: {VIP}:53/udp
    backends: [{b}:5353]
  - name: routed
    frontend: {ROUTED_VIP}:80/tcp
    clientIP: preserve
    backends: [{b}:8090]
"
    )
}

/// The balancer's agent on node n1 (uplink eth0) serving the files of `dir`.
fn balancer(ns: &xlb_tests::netns::Netns, pins: &PinDir, dir: &WorkDir) -> Agent {
    let ip = node_ip(0).to_string();
    let services = dir.path.to_str().expect("path");
    Agent::start(
        ns,
        pins,
        &[
            "--services",
            services,
            "--node-ip",
            &ip,
            "--devices",
            "eth0",
        ],
    )
}

/// A LoadBalancer Service and its EndpointSlice, in the same directory as the compact file.
fn manifest() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: legacy, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.5.1
  ports: [{{name: http, port: 80, targetPort: 8082, nodePort: 30500}}]
status:
  loadBalancer:
    ingress: [{{ip: {K8S_VIP}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-1
  namespace: default
  labels: {{kubernetes.io/service-name: legacy}}
addressType: IPv4
ports: [{{name: http, port: 8082}}]
endpoints:
- addresses: [\"{}\"]
  conditions: {{ready: true}}
",
        node_ip(1)
    )
}

#[test]
fn one_arm_snat_weights_routed_backends_and_manifests_side_by_side() {
    require_root();
    let tag = unique_tag();
    // n1 balances (uplink eth0, 192.168.100.1); n2 (192.168.100.2) is a plain backend host;
    // the client reaches 198.51.100.0/24 through n1.
    let cluster = Cluster::new(&tag, 2, 1, &["198.51.100.0/24"]);
    let (lb, backend) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (client, caddr) = (&cluster.clients[0].0, cluster.clients[0].1);
    let b = node_ip(1);
    let mut servers = Servers::new();
    servers.tcp(&backend.ns, SocketAddr::from((b, 8080)), "heavy");
    servers.tcp(&backend.ns, SocketAddr::from((b, 8081)), "light");
    servers.tcp(&backend.ns, SocketAddr::from((b, 8082)), "legacy");
    servers.tcp(&backend.ns, SocketAddr::from((b, 8090)), "routed");
    servers.udp(&backend.ns, SocketAddr::from((b, 5353)), "dns");
    // Routed mode: the backend sends replies for the client through the balancer.
    backend.ns.ip(&[
        "route",
        "add",
        &format!("{caddr}/32"),
        "via",
        &node_ip(0).to_string(),
    ]);

    let dir = WorkDir::new(&tag);
    dir.write("lb.yaml", &compact());
    dir.write("legacy.yaml", &manifest());
    let pins = PinDir::new(&tag);
    let agent = balancer(&lb.ns, &pins, &dir);
    for name in ["web", "dns", "routed", "default/legacy:http/TCP"] {
        agent.wait_active(name, if name == "web" { 2 } else { 1 });
    }

    // One-arm: replies come from the VIP, the backend sees the balancer, weights hold.
    let to = SocketAddr::from((VIP, 80));
    let replies = tcp_requests(client, to, 400);
    let s = spread(&replies);
    assert!(!s.contains_key("<error>"), "{s:?}");
    for r in replies.iter().flatten() {
        assert_eq!(r.from, to);
        assert_eq!(r.seen_from.ip(), IpAddr::V4(node_ip(0)), "one-arm SNAT");
    }
    let heavy = s.get("heavy").copied().unwrap_or(0) as f64 / 400.0;
    assert!(
        (0.65..=0.85).contains(&heavy),
        "weight 3:1 should give ~75% to the heavy backend: {s:?}"
    );

    let to = SocketAddr::from((VIP, 53));
    let replies = udp_requests(client, to, 50);
    assert!(replies.iter().all(|r| {
        r.as_ref()
            .is_ok_and(|r| r.from == to && r.seen_from.ip() == IpAddr::V4(node_ip(0)))
    }));

    // Routed: the backend sees the client itself; replies still come from the VIP.
    let to = SocketAddr::from((ROUTED_VIP, 80));
    let replies = tcp_requests(client, to, 20);
    for r in &replies {
        let r = r.as_ref().expect("routed request");
        assert_eq!(r.from, to);
        assert_eq!(
            r.seen_from.ip(),
            IpAddr::V4(caddr),
            "client address preserved"
        );
    }

    // The manifest next to the compact file is served too.
    let to = SocketAddr::from((K8S_VIP, 80));
    let replies = tcp_requests(client, to, 10);
    assert_eq!(
        spread(&replies).get("legacy"),
        Some(&10),
        "{:?}",
        spread(&replies)
    );

    // SIGHUP repairs drift: delete web's frontend behind the agent's back.
    let web_key = frontend_key_hex(VIP, 80, 6);
    let mut del = Command::new("bpftool");
    del.args(["map", "delete", "pinned"])
        .arg(pins.path.join("xlb_services"))
        .arg("key")
        .args(["hex"])
        .args(web_key.split(' '));
    let out = del.output().expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to = SocketAddr::from((VIP, 80));
    let broken = client.run(move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_err()
    });
    assert!(broken, "without its frontend entry the VIP does not answer");
    let pid = agent.pid().expect("agent pid");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let healed = xlb_tests::traffic::eventually(Duration::from_secs(10), || {
        tcp_requests(client, to, 1)[0].is_ok().then_some(())
    });
    assert!(
        healed.is_some(),
        "SIGHUP puts the frontend back:\n{}",
        agent.logs()
    );
    drop(servers);
}

/// `ServiceKey` of an external-scope frontend as bpftool hex bytes.
fn frontend_key_hex(addr: Ipv4Addr, port: u16, proto: u8) -> String {
    let mut k = addr.octets().to_vec();
    k.extend_from_slice(&port.to_ne_bytes());
    k.push(proto);
    k.push(lb_common::scope::EXTERNAL);
    k.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `xlb check PATH`: (exit code, stdout + stderr).
fn check(path: &Path) -> (i32, String) {
    let out = Command::new(xlb_bin())
        .arg("check")
        .arg(path)
        .output()
        .expect("xlb check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_names_file_line_and_field_of_every_problem() {
    let dir = WorkDir::new(&format!("check-{}", unique_tag()));
    let good = dir.write("good.yaml", &compact());
    let (code, text) = check(&good);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("0 error(s), 0 warning(s); would program 3 service(s)"),
        "{text}"
    );

    let bad = dir.write(
        "bad.yaml",
        "services:
  - name: web
    frontend: 192.0.2.10:80/tcp
    backends:
      - 10.0.1.1:8080
      - 10.0.1.300:8080
  - name: dns
    frontend: 192.0.2.10:53/quic
    backends: [10.0.1.1:53]
  - name: ok
    frontend: 192.0.2.10:8080
    backends: [{address: 10.0.1.2:80, weight: 0}]
",
    );
    let (code, text) = check(&bad);
    assert_eq!(code, 1, "{text}");
    for needle in [
        "bad.yaml:6",
        "services[0].backends[1]",
        "\"10.0.1.300\" is not an IPv4 address",
        "bad.yaml:8",
        "services[1].frontends[0]",
        "bad.yaml:12",
        "services[2].backends[0]: weight must be a whole number from 1 to 65535, got 0",
        "3 error(s)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    // A directory: every file is checked, manifests and compact alike.
    dir.write("legacy.yaml", &manifest());
    let (code, text) = check(&dir.path);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("bad.yaml:6") && text.contains("would program 4 service(s)"),
        "{text}"
    );
}

#[test]
fn shipped_standalone_example_and_systemd_unit_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (code, text) = check(&root.join("deploy/standalone/services.yaml"));
    assert_eq!(code, 0, "{text}");
    // systemd-analyze wants the ExecStart binary to exist: point the unit at this build.
    let dir = WorkDir::new(&format!("unit-{}", unique_tag()));
    let unit = std::fs::read_to_string(root.join("deploy/systemd/xlb.service")).expect("unit");
    let path = dir.write(
        "xlb.service",
        &unit.replace("/usr/local/bin/xlb", xlb_bin().to_str().unwrap()),
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (installed by `cargo xtask setup`)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// A TCP server answering like `Servers::tcp` (`"<name> <client>"`) until `stop` is set; then
/// its port is closed.
fn stoppable_server(
    ns: &xlb_tests::netns::Netns,
    bind: SocketAddr,
    name: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::Write as _;
    let l = ns.run(move || std::net::TcpListener::bind(bind).expect("bind"));
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(format!("{name} {peer}").as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

#[test]
fn a_backend_failing_its_health_check_leaves_its_service_and_comes_back() {
    require_root();
    let tag = unique_tag();
    let cluster = Cluster::new(&tag, 2, 1, &["198.51.100.0/24"]);
    let (lb, backend) = (&cluster.nodes[0], &cluster.nodes[1]);
    let client = &cluster.clients[0].0;
    let b = node_ip(1);
    let mut servers = Servers::new();
    servers.tcp(&backend.ns, SocketAddr::from((b, 8080)), "steady");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flaky = SocketAddr::from((b, 8085));
    let server = stoppable_server(&backend.ns, flaky, "flaky", stop.clone());
    let dir = WorkDir::new(&tag);
    dir.write(
        "lb.yaml",
        &format!(
            "services:
  - name: hc
    frontend: {VIP}:80/tcp
    backends: [{b}:8080, {flaky}]
    healthCheck: {{type: tcp, intervalSeconds: 1, timeoutSeconds: 1, unhealthyThreshold: 2, healthyThreshold: 1}}
"
        ),
    );
    let pins = PinDir::new(&tag);
    let agent = balancer(&lb.ns, &pins, &dir);
    let to = SocketAddr::from((VIP, 80));
    let served = || {
        let s = spread(&tcp_requests(client, to, 40));
        let mut names: Vec<String> = s.keys().cloned().collect();
        names.sort();
        names
    };
    let healthy = |want: &str| {
        let (_, text) = lb.ns.run(|| {
            xlb_tests::traffic::http_get("127.0.0.1:10249".parse().expect("addr"), "/metrics")
                .expect("metrics")
        });
        text.lines()
            .find(|l| l.starts_with("xlb_backend_healthy{") && l.contains(":8085\""))
            .is_some_and(|l| l.ends_with(want))
    };
    agent.wait_active("hc", 2);
    assert_eq!(served(), ["flaky", "steady"]);
    assert!(healthy(" 1"));
    // The flaky backend stops answering: within interval × threshold it leaves the service.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().expect("server");
    agent.wait_active("hc", 1);
    assert_eq!(served(), ["steady"], "new flows to a failing backend");
    assert!(healthy(" 0"));
    assert!(
        agent.logs().contains("failed its health check"),
        "{}",
        agent.logs()
    );
    // It answers again: back after one good probe.
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let server = stoppable_server(&backend.ns, flaky, "flaky", stop.clone());
    agent.wait_active("hc", 2);
    assert_eq!(served(), ["flaky", "steady"]);
    assert!(healthy(" 1"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().expect("server");
    drop(servers);
}
