//! Restarts and upgrades without disruption, flows across backend changes, cleanup and layout
//! versioning: the real agent, real connections, kill -9.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    agent::{Agent, PinDir, xlb_bin},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{Netns, require_root, sh, unique_tag},
    topology::Node,
    traffic::{Conn, Servers, eventually, spread, tcp_ping_once},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

fn cluster(n: u8) -> (String, Node) {
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=n {
        node.add_pod(i);
    }
    (tag, node)
}

fn ports() -> Vec<Port<'static>> {
    vec![
        Port {
            name: "http",
            port: 80,
            proto: "TCP",
            target: "8080",
            node_port: None,
        },
        Port {
            name: "dns",
            port: 53,
            proto: "UDP",
            target: "5353",
            node_port: None,
        },
    ]
}

fn web(eps: &[Ep<'_>], extra: bool) -> String {
    let mut parts = vec![
        service("web", VIP, &ports(), ""),
        slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            eps,
        ),
    ];
    if extra {
        parts.push(service("web2", VIP2, &ports(), ""));
        parts.push(slice(
            "web2-1",
            "web2",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            eps,
        ));
    }
    docs(&parts)
}

/// A UDP client sending one datagram every few ms from one socket (one flow), counting
/// answers, losses and which backends answered.
struct UdpStream {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Result<String, String>>>,
}

impl UdpStream {
    fn start(ns: &Netns, to: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = ns.spawn(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                sock.send_to(b"ping", to).unwrap();
                out.push(match sock.recv_from(&mut buf) {
                    Ok((n, _)) => Ok(String::from_utf8_lossy(&buf[..n])
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned()),
                    Err(e) => Err(e.to_string()),
                });
                std::thread::sleep(Duration::from_millis(5));
            }
            out
        });
        Self { stop, handle }
    }

    fn finish(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn ct_entries(agent: &Agent) -> usize {
    sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &format!("{}/xlb_ct", agent.bpffs.display()),
    ])
    .matches("\"key\"")
    .count()
}

#[test]
fn kill_9_and_restart_with_same_and_changed_config_disrupts_nothing() {
    let (tag, node) = cluster(4);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        servers.udp(&pod.ns, SocketAddr::from((pod.ip, 5353)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let path = dir.write("services.yaml", &web(&eps[..3], false));
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/web:http/TCP", 3);
    let vip = SocketAddr::from((VIP, 80));
    let client = &node.pods[0].ns;

    // 200 long-lived connections, and one UDP flow sending all along.
    let mut conns: Vec<(Conn, String)> = client.run(move || {
        (0..200)
            .map(|_| {
                let mut c = Conn::open(vip, Duration::from_secs(3)).expect("connect");
                let b = c.ping().expect("ping").backend;
                (c, b)
            })
            .collect()
    });
    let stream = UdpStream::start(client, SocketAddr::from((VIP, 53)));
    let check_conns = |conns: &mut Vec<(Conn, String)>, when: &str| {
        for (i, (c, b)) in conns.iter_mut().enumerate() {
            let r = c
                .ping()
                .unwrap_or_else(|e| panic!("{when}: connection {i} (on {b}) failed: {e}"));
            assert_eq!(&r.backend, b, "{when}: connection {i} moved");
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let ct_before = ct_entries(&agent);
    assert!(ct_before >= 400, "conntrack holds {ct_before} entries");

    // kill -9: the datapath keeps forwarding, old and new connections alike.
    agent.kill9();
    check_conns(&mut conns, "agent dead");
    let gap: Vec<_> = client.run(move || {
        (0..30)
            .map(|_| tcp_ping_once(vip, Duration::from_secs(2)))
            .collect()
    });
    assert!(
        gap.iter().all(Result::is_ok),
        "new connections during the gap: {:?}",
        spread(&gap)
    );

    // Same config: adopted, nothing rewritten, conntrack kept.
    agent.restart();
    std::thread::sleep(Duration::from_millis(300));
    check_conns(&mut conns, "after restart (same config)");
    assert!(ct_entries(&agent) >= ct_before, "conntrack was flushed");
    let logs = agent.logs();
    let last_start = logs.rfind("datapath loaded").unwrap();
    assert!(
        logs[last_start..].contains("adopted_services=2"),
        "{}",
        &logs[last_start..]
    );
    assert!(
        !logs[last_start..].contains("maps synced"),
        "an unchanged config wrote maps"
    );

    // Changed config across a kill -9: a fourth backend and a second service.
    agent.kill9();
    dir.write("services.yaml", &web(&eps, true));
    agent.restart();
    agent.wait_active("default/web:http/TCP", 4);
    agent.wait_active("default/web2:http/TCP", 4);
    check_conns(&mut conns, "after restart (changed config)");
    let fresh: Vec<_> = client.run(move || {
        (0..100)
            .map(|_| tcp_ping_once(vip, Duration::from_secs(2)))
            .collect()
    });
    let s = spread(&fresh);
    assert!(!s.contains_key("<error>") && s.contains_key("b4"), "{s:?}");
    let two =
        client.run(move || tcp_ping_once(SocketAddr::from((VIP2, 80)), Duration::from_secs(2)));
    assert!(two.is_ok(), "{two:?}");

    // Upgrade from an agent whose maps had no address filters: the new agent creates them
    // empty and must fill them before its programs take over, or every Service would vanish
    // (and, with the NAT slots empty, every tracked flow's replies would go untranslated).
    agent.kill9();
    for f in [
        lb_common::map_names::FE_FILTER,
        lb_common::map_names::BE_FILTER,
        lb_common::map_names::BE_NAT,
    ] {
        std::fs::remove_file(pins.path.join(f)).expect("remove filter pin");
    }
    agent.restart();
    agent.wait_active("default/web2:http/TCP", 4);
    check_conns(&mut conns, "after an upgrade adding the filters");
    let upgraded: Vec<_> = client.run(move || {
        (0..50)
            .flat_map(|_| {
                [
                    tcp_ping_once(vip, Duration::from_secs(2)),
                    tcp_ping_once(SocketAddr::from((VIP2, 80)), Duration::from_secs(2)),
                ]
            })
            .collect()
    });
    assert!(
        upgraded.iter().all(Result::is_ok),
        "after an upgrade adding the filters: {:?}",
        spread(&upgraded)
    );

    let udp = stream.finish();
    let lost = udp.iter().filter(|r| r.is_err()).count();
    let backends: std::collections::BTreeSet<&String> = udp.iter().flatten().collect();
    assert!(udp.len() > 100, "UDP stream too short ({})", udp.len());
    assert_eq!(lost, 0, "{lost} of {} datagrams lost", udp.len());
    assert_eq!(
        backends.len(),
        1,
        "the UDP flow changed backend: {backends:?}"
    );
    assert!(agent.stop());
}

#[test]
fn established_flows_keep_their_backend_and_a_udp_flow_leaves_a_removed_one() {
    let (tag, node) = cluster(4);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        servers.udp(&pod.ns, SocketAddr::from((pod.ip, 5353)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let path = dir.write("services.yaml", &web(&eps[..3], false));
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/web:http/TCP", 3);
    let vip = SocketAddr::from((VIP, 80));
    let client = &node.pods[0].ns;
    let mut conns: Vec<(Conn, String)> = client.run(move || {
        (0..60)
            .map(|_| {
                let mut c = Conn::open(vip, Duration::from_secs(3)).expect("connect");
                let b = c.ping().expect("ping").backend;
                (c, b)
            })
            .collect()
    });
    let stream = UdpStream::start(client, SocketAddr::from((VIP, 53)));
    std::thread::sleep(Duration::from_millis(200));
    // Find the UDP flow's backend from the datapath (its conntrack entry names it).
    let udp_backend = eventually(Duration::from_secs(5), || {
        let dump = sh(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            &format!("{}/xlb_ct", agent.bpffs.display()),
        ]);
        let v: serde_json::Value = serde_json::from_str(&dump).ok()?;
        v.as_array()?
            .iter()
            .map(|e| &e["formatted"])
            .find(|e| e["key"]["proto"] == 17 && e["key"]["dir"] == 1)
            .and_then(|e| e["value"]["nat_daddr"].as_array().cloned())
            .map(|a| {
                Ipv4Addr::new(
                    a[0].as_u64().unwrap() as u8,
                    a[1].as_u64().unwrap() as u8,
                    a[2].as_u64().unwrap() as u8,
                    a[3].as_u64().unwrap() as u8,
                )
            })
    })
    .expect("UDP flow in conntrack");
    let udp_idx = eps.iter().position(|e| e.addr == udp_backend).unwrap();

    // Add a backend: every established connection keeps its backend.
    dir.write("services.yaml", &web(&eps, false));
    agent.wait_active("default/web:http/TCP", 4);
    for (c, b) in &mut conns {
        assert_eq!(&c.ping().expect("ping after add").backend, b);
    }
    // Remove the UDP flow's backend: its next datagrams go to a remaining backend; TCP
    // connections on the other backends are untouched.
    let kept: Vec<Ep<'_>> = eps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != udp_idx)
        .map(|(_, e)| Ep::ready(e.addr, "n1"))
        .collect();
    dir.write("services.yaml", &web(&kept, false));
    agent.wait_active("default/web:http/TCP", 3);
    std::thread::sleep(Duration::from_millis(300));
    let removed_name = format!("b{}", udp_idx + 1);
    for (c, b) in &mut conns {
        if *b != removed_name {
            assert_eq!(&c.ping().expect("ping after removal").backend, b);
        }
    }
    let udp = stream.finish();
    let lost = udp.iter().filter(|r| r.is_err()).count();
    assert_eq!(lost, 0, "{lost} datagrams lost");
    let first = udp.first().unwrap().as_ref().unwrap();
    let last = udp.last().unwrap().as_ref().unwrap();
    assert_eq!(first, &removed_name);
    assert_ne!(
        last, &removed_name,
        "the UDP flow still reaches its removed backend"
    );
    let counters = agent.cli(&["service", "list", "-o", "json"]);
    assert!(!counters.is_empty());
}

#[test]
fn cleanup_removes_the_datapath_and_a_layout_change_is_refused() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let p1 = &node.pods[1];
    servers.tcp(&p1.ns, SocketAddr::from((p1.ip, 8080)), "b1");
    let path = dir.write("services.yaml", &web(&[Ep::ready(p1.ip, "n1")], false));
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/web:http/TCP", 1);
    assert!(agent.stop());
    let vip = SocketAddr::from((VIP, 80));
    let before = node.pods[0]
        .ns
        .run(move || xlb_tests::traffic::tcp_request(vip, Duration::from_secs(2)));
    assert!(before.is_ok(), "{before:?}");

    // --cleanup: pins gone, programs detached, the VIP no longer answers.
    let out = std::process::Command::new(xlb_bin())
        .args(["agent", "--cleanup", "--bpffs"])
        .arg(&pins.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.path.exists());
    // Unpinned links are released by the kernel shortly after (deferred work).
    let detached = eventually(Duration::from_secs(10), || {
        node.pods[0]
            .ns
            .run(move || xlb_tests::traffic::tcp_request(vip, Duration::from_millis(300)))
            .is_err()
            .then_some(())
    });
    assert!(detached.is_some(), "the VIP still answers after --cleanup");

    // A map pinned with another layout is refused with a clear message, and nothing is mixed.
    std::fs::create_dir_all(&pins.path).unwrap();
    sh(&[
        "bpftool",
        "map",
        "create",
        &format!("{}/xlb_services", pins.path.display()),
        "type",
        "hash",
        "key",
        "8",
        "value",
        "24",
        "entries",
        "16",
        "name",
        "xlb_services",
    ]);
    let out = std::process::Command::new(xlb_bin())
        .args(["agent", "--services", path.to_str().unwrap(), "--bpffs"])
        .arg(&pins.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("another map layout") && err.contains("--cleanup"),
        "{err}"
    );
    assert!(
        !pins.path.join("xlb_ct").exists(),
        "maps were created next to a foreign layout"
    );
}
