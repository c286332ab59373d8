//! ClusterIP services through the real agent and real traffic in network namespaces.

use aya::maps::{Array, Map, MapData};
use lb_common::SockXlate;
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{
        Servers, eventually, requests_from_cgroup, spread, tcp_request_from_port, tcp_requests,
        tcp_requests_from_cgroup, udp_requests,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Serves `yaml` and node n1's Node object from a fake API server reachable in `node`'s
/// namespace; returns it (keep it alive) and the kubeconfig for `--kubeconfig`.
fn through_api(node: &Node, dir: &WorkDir, yaml: &str) -> (xlb_tests::fakeapi::FakeApi, String) {
    let mut api = xlb_tests::fakeapi::FakeApi::new();
    api.apply(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  addresses:\n  - {type: InternalIP, address: \"192.168.77.1\"}\n",
    );
    api.apply(yaml);
    api.serve_in(node.ns.handle());
    let kubeconfig = api.kubeconfig(&dir.path).display().to_string();
    (api, kubeconfig)
}

/// A network outside node n1 (namespace `xlbt-<tag>-ext`, reached over `ext0`) that holds
/// `addrs` itself; the node routes each of `routes` there.
fn outside(node: &Node, tag: &str, addrs: &[&str], routes: &[&str]) -> xlb_tests::netns::Netns {
    let ext = xlb_tests::netns::Netns::new(&format!("xlbt-{tag}-ext"));
    node.ns.ip(&[
        "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    node.ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "ext0"]);
    node.ns.ip(&["link", "set", "ext0", "up"]);
    ext.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    ext.ip(&["link", "set", "eth0", "up"]);
    ext.ip(&["link", "set", "lo", "up"]);
    ext.ip(&["route", "add", "10.244.0.0/16", "via", "10.99.0.1"]);
    for a in addrs {
        ext.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    for r in routes {
        node.ns.ip(&["route", "add", r, "via", "10.99.0.2"]);
    }
    ext
}

/// A node with a client pod (index 0) and `n` backend pods (1..=n).
fn cluster(n: u8) -> (String, Node) {
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=n {
        node.add_pod(i);
    }
    (tag, node)
}

#[test]
fn tcp_and_udp_reach_every_ready_backend_and_replies_come_from_the_vip() {
    let (tag, node) = cluster(3);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        servers.udp(&pod.ns, SocketAddr::from((pod.ip, 5353)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let yaml = docs(&[
        service(
            "web",
            VIP,
            &[
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
            ],
            "",
        ),
        slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            &eps,
        ),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/web:http/TCP", 3);
    agent.wait_active("default/web:dns/UDP", 3);

    let client = &node.pods[0];
    let tcp = tcp_requests(&client.ns, SocketAddr::from((VIP, 80)), 300);
    let udp = udp_requests(&client.ns, SocketAddr::from((VIP, 53)), 300);
    for (proto, replies) in [("tcp", &tcp), ("udp", &udp)] {
        let s = spread(replies);
        assert!(!s.contains_key("<error>"), "{proto}: failures {s:?}");
        assert_eq!(
            s.keys().cloned().collect::<BTreeSet<_>>(),
            ["b1", "b2", "b3"]
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            "{proto}: every backend serves: {s:?}"
        );
        for r in replies.iter().flatten() {
            // The client talked to the VIP only; the backend saw the real client.
            assert_eq!(
                r.from.ip(),
                std::net::IpAddr::V4(VIP),
                "{proto}: reply from {}",
                r.from
            );
            assert_eq!(r.seen_from.ip(), std::net::IpAddr::V4(client.ip));
        }
    }
    let text = agent.cli(&["service", "list"]);
    assert!(text.contains("10.96.0.10:80/TCP"), "{text}");
    drop(servers);
}

fn start(node: &Node, tag: &str, path: &std::path::Path) -> (PinDir, Agent) {
    let pins = PinDir::new(tag);
    let agent = Agent::start_on_node(&node.ns, &pins, path, "n1");
    (pins, agent)
}

fn http(name: &str, target: &'static str) -> Vec<Port<'static>> {
    let _ = name;
    vec![Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target,
        node_port: None,
    }]
}

/// A Service `name` on `vip`:80/TCP → 8080 with one EndpointSlice (`<name>-1`) of `eps`.
fn http_service(name: &str, vip: Ipv4Addr, eps: &[Ep<'_>], extra_spec: &str) -> Vec<String> {
    vec![
        service(name, vip, &http(name, "8080"), extra_spec),
        slice(&format!("{name}-1"), name, &[("http", 8080, "TCP")], eps),
    ]
}

#[test]
fn two_services_on_the_same_port_with_different_vips() {
    let (tag, node) = cluster(2);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let (p1, p2) = (&node.pods[1], &node.pods[2]);
    servers.tcp(&p1.ns, SocketAddr::from((p1.ip, 8080)), "alpha");
    servers.tcp(&p2.ns, SocketAddr::from((p2.ip, 8080)), "beta");
    let vip2 = Ipv4Addr::new(10, 96, 0, 11);
    let yaml = docs(
        &[
            http_service("alpha", VIP, &[Ep::ready(p1.ip, "n1")], ""),
            http_service("beta", vip2, &[Ep::ready(p2.ip, "n1")], ""),
        ]
        .concat(),
    );
    let path = dir.write("services.yaml", &yaml);
    let (_pins, agent) = start(&node, &tag, &path);
    agent.wait_active("default/alpha:http/TCP", 1);
    agent.wait_active("default/beta:http/TCP", 1);
    let client = &node.pods[0];
    let a = spread(&tcp_requests(&client.ns, SocketAddr::from((VIP, 80)), 50));
    let b = spread(&tcp_requests(&client.ns, SocketAddr::from((vip2, 80)), 50));
    assert_eq!(a.get("alpha"), Some(&50), "{a:?}");
    assert_eq!(b.get("beta"), Some(&50), "{b:?}");
}

#[test]
fn named_target_port_with_different_numbers_per_endpoint() {
    let (tag, node) = cluster(2);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let (p1, p2) = (&node.pods[1], &node.pods[2]);
    // The same named port ("web") is 8080 on one pod and 9090 on the other: the EndpointSlice
    // controller writes one slice per port number.
    servers.tcp(&p1.ns, SocketAddr::from((p1.ip, 8080)), "on8080");
    servers.tcp(&p2.ns, SocketAddr::from((p2.ip, 9090)), "on9090");
    let yaml = docs(&[
        service("web", VIP, &http("web", "web"), ""),
        slice(
            "web-a",
            "web",
            &[("http", 8080, "TCP")],
            &[Ep::ready(p1.ip, "n1")],
        ),
        slice(
            "web-b",
            "web",
            &[("http", 9090, "TCP")],
            &[Ep::ready(p2.ip, "n1")],
        ),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let (_pins, agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 2);
    let s = spread(&tcp_requests(
        &node.pods[0].ns,
        SocketAddr::from((VIP, 80)),
        200,
    ));
    assert!(!s.contains_key("<error>"), "{s:?}");
    assert!(s.get("on8080").copied().unwrap_or(0) > 40, "{s:?}");
    assert!(s.get("on9090").copied().unwrap_or(0) > 40, "{s:?}");
}

#[test]
fn a_not_ready_endpoint_gets_nothing() {
    let (tag, node) = cluster(3);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        let mut ep = Ep::ready(pod.ip, "n1");
        if i == 3 {
            ep.ready = false;
            ep.serving = false;
        }
        eps.push(ep);
    }
    let yaml = docs(&http_service("web", VIP, &eps, ""));
    let path = dir.write("services.yaml", &yaml);
    let (_pins, agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 2);
    let s = spread(&tcp_requests(
        &node.pods[0].ns,
        SocketAddr::from((VIP, 80)),
        300,
    ));
    assert_eq!(s.get("b3"), None, "{s:?}");
    assert_eq!(s.values().sum::<usize>(), 300);
    assert!(!s.contains_key("<error>"), "{s:?}");
    let list = agent.cli(&["service", "list"]);
    assert!(list.contains("not-ready"), "{list}");
}

#[test]
fn a_removed_endpoint_stops_getting_new_connections_while_the_others_keep_serving() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use xlb_tests::traffic::{Conn, tcp_ping_once};

    let (tag, node) = cluster(3);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let file = |eps: &[Ep<'_>]| docs(&http_service("web", VIP, eps, ""));
    let path = dir.write("services.yaml", &file(&eps));
    let (_pins, agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 3);
    let vip = SocketAddr::from((VIP, 80));

    // Established connections, spread over the three backends.
    let mut conns: Vec<(Conn, String)> = node.pods[0].ns.run(move || {
        (0..30)
            .map(|_| {
                let mut c = Conn::open(vip, Duration::from_secs(2)).expect("connect");
                let first = c.ping().expect("first ping").backend;
                (c, first)
            })
            .collect()
    });
    // And a client opening new connections through the whole change.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let churn = node.pods[0].ns.spawn(move || {
        // Each request with the time it started.
        let mut replies = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            let t = std::time::Instant::now();
            replies.push((t, tcp_ping_once(vip, Duration::from_secs(2))));
        }
        replies
    });
    std::thread::sleep(Duration::from_millis(400));
    dir.write("services.yaml", &file(&eps[..2]));
    agent.wait_active("default/web:http/TCP", 2);
    let programmed = std::time::Instant::now();
    // Long enough for a connection caught in the change (its handshake half done with b3) to
    // finish or time out, and for many more after it.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let timed = churn.join().unwrap();
    // Requests are in the order they started.
    let first_after = timed
        .iter()
        .position(|(t, _)| *t >= programmed)
        .unwrap_or(timed.len());
    let replies: Vec<_> = timed.into_iter().map(|(_, r)| r).collect();

    // Connections to the backends that stayed keep their backend, without a single error.
    let mut kept = 0;
    for (c, first) in &mut conns {
        if first == "b3" {
            continue;
        }
        for _ in 0..3 {
            let r = c
                .ping()
                .unwrap_or_else(|e| panic!("connection to {first} broke: {e}"));
            assert_eq!(&r.backend, first, "an established connection moved");
        }
        kept += 1;
    }
    assert!(kept >= 10, "too few connections on b1/b2 ({kept})");
    // New connections: b3 served before the change and nothing once it was programmed. Only a
    // connection in flight to b3 at the very moment of removal may fail.
    assert!(replies.len() > 100, "too few requests ({})", replies.len());
    let errors = replies.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 2, "{errors} failures: {:?}", spread(&replies));
    let after = &replies[first_after..];
    assert!(
        after.len() >= 20,
        "too few requests after the change ({})",
        after.len()
    );
    let s = spread(after);
    assert_eq!(s.get("b3"), None, "b3 still got new connections: {s:?}");
    assert_eq!(s.get("<error>"), None, "{s:?}");
    assert!(spread(&replies).contains_key("b3"));
}

#[test]
fn a_broken_file_keeps_the_last_good_state_and_names_file_and_line() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let p1 = &node.pods[1];
    servers.tcp(&p1.ns, SocketAddr::from((p1.ip, 8080)), "b1");
    let good = docs(&http_service("web", VIP, &[Ep::ready(p1.ip, "n1")], ""));
    let path = dir.write("services.yaml", &good);
    let (_pins, mut agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 1);
    // A syntax error: the whole file keeps its last good objects; the error names file:line.
    dir.write(
        "services.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web: x\n",
    );
    agent.wait_for_log("services.yaml:4: mapping values are not allowed", 1);
    agent.wait_for_log("keeping this file's last good objects", 1);
    let s = spread(&tcp_requests(
        &node.pods[0].ns,
        SocketAddr::from((VIP, 80)),
        20,
    ));
    assert_eq!(s.get("b1"), Some(&20), "{s:?}");
    // An invalid field: the object keeps its last good version; the error names it.
    let bad = good.replace("port: 80\n", "port: 0\n");
    dir.write("services.yaml", &bad);
    agent.wait_for_log("Service default/web: spec.ports[0].port", 1);
    let s = spread(&tcp_requests(
        &node.pods[0].ns,
        SocketAddr::from((VIP, 80)),
        20,
    ));
    assert_eq!(s.get("b1"), Some(&20), "{s:?}");
    // Fixing the file works again; removing the Service removes it.
    dir.write("services.yaml", &good);
    std::thread::sleep(Duration::from_millis(300));
    dir.write("services.yaml", "");
    let gone = eventually(Duration::from_secs(10), || {
        agent
            .services()
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
    assert!(gone.is_some(), "{}", agent.cli(&["service", "list"]));
}

#[test]
fn late_pods_are_attached_sigterm_is_clean_and_the_cli_reads_a_stopped_datapath() {
    let (tag, mut node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let p1 = &node.pods[1];
    servers.tcp(&p1.ns, SocketAddr::from((p1.ip, 8080)), "b1");
    let yaml = docs(&http_service("web", VIP, &[Ep::ready(p1.ip, "n1")], ""));
    let path = dir.write("services.yaml", &yaml);
    let (_pins, mut agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 1);
    // A pod created after the agent started gets the datapath too.
    node.add_pod(7);
    agent.wait_for_log("device=xp7", 1);
    let late = &node.pods[2];
    let s = spread(&tcp_requests(&late.ns, SocketAddr::from((VIP, 80)), 20));
    assert_eq!(s.get("b1"), Some(&20), "{s:?}");
    // SIGTERM: clean exit; the pinned datapath stays readable and keeps forwarding.
    assert!(
        agent.stop(),
        "agent did not exit cleanly on SIGTERM:\n{}",
        agent.logs()
    );
    let list = agent.cli(&["service", "list"]);
    assert!(
        list.contains("default/web:http/TCP") && list.contains("10.96.0.10:80/TCP"),
        "{list}"
    );
    let s = spread(&tcp_requests(&late.ns, SocketAddr::from((VIP, 80)), 20));
    assert_eq!(s.get("b1"), Some(&20), "{s:?}");
}

/// Tracked flows of `service`.
fn flows(agent: &Agent, service: &str) -> usize {
    let rows = agent.json(&["conntrack", "list", "--service", service]);
    rows.as_array().map_or(0, Vec::len)
}

/// How many times each socket program is attached to `cgroup` (bpftool's view).
fn sock_programs(cgroup: &std::path::Path) -> (usize, usize) {
    let text = xlb_tests::netns::sh(&["bpftool", "cgroup", "show", cgroup.to_str().unwrap()]);
    (
        text.matches("xlb_connect4").count(),
        text.matches("xlb_peername4").count(),
    )
}

/// The pinned `xlb_sock` map.
fn sock_map(pins: &PinDir) -> Array<MapData, SockXlate> {
    let data = MapData::from_pin(pins.path.join(lb_common::map_names::SOCK)).expect("xlb_sock");
    Array::try_from(Map::Array(data)).expect("array")
}

#[test]
fn tcp_connects_from_the_nodes_cgroup_are_translated_at_the_socket() {
    const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
    const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
    let (tag, node) = cluster(3);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let yaml = docs(
        &[
            http_service("web", VIP, &eps, ""),
            http_service("sticky", STICKY, &eps, "  sessionAffinity: ClientIP\n"),
            vec![service("empty", EMPTY, &http("empty", "8080"), "")],
        ]
        .concat(),
    );
    let path = dir.write("services.yaml", &yaml);
    let (pins, mut agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 3);
    agent.wait_active("default/sticky:http/TCP", 3);
    assert_eq!(sock_programs(&pins.cgroup), (1, 1));
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    let client = &node.pods[0];
    let from_cgroup = |to: Ipv4Addr, n| {
        tcp_requests_from_cgroup(bin, &client.ns, &pins.cgroup, (to, 80).into(), n)
    };

    // A process of the node's cgroup: every backend serves, the backend sees the client, and
    // getpeername() names the ClusterIP; no packet was translated (nothing tracked).
    let replies = from_cgroup(VIP, 200);
    let s = spread(&replies);
    assert!(!s.contains_key("<error>"), "failures {s:?}");
    assert_eq!(s.len(), 3, "every backend serves: {s:?}");
    for r in replies.iter().flatten() {
        assert_eq!(r.from, SocketAddr::from((VIP, 80)), "getpeername");
        assert_eq!(r.seen_from.ip(), std::net::IpAddr::V4(client.ip));
    }
    assert_eq!(agent.counter("sock_xlate"), 200);
    assert_eq!(flows(&agent, "default/web"), 0, "translated at the socket");

    // One record per socket, each in the slot of its own cookie.
    let mut slots = sock_map(&pins);
    let recorded: Vec<_> = (0..slots.len())
        .map(|i| (i, slots.get(&i, 0).expect("slot")))
        .filter(|(_, r)| r.tag != 0)
        .collect();
    assert_eq!(recorded.len(), 200, "one slot per translated socket");
    assert!(recorded.iter().all(|(i, r)| {
        u64::from(*i) == r.cookie() & u64::from(lb_common::capacity::SOCK_SLOTS - 1)
            && r.vip == VIP.octets()
    }));
    // Every slot taken over by other sockets (tags of cookies no socket here has) that went to
    // backend 1 through another ClusterIP: a socket connected straight to backend 1 gets
    // backend 1 from getpeername(), never a ClusterIP it did not dial; new connects through
    // the ClusterIP write their own slots.
    let b1 = node.pods[1].ip;
    for i in 0..slots.len() {
        let foreign = SockXlate {
            tag: u64::MAX - u64::from(i),
            vip: STICKY.octets(),
            backend: b1.octets(),
            vip_port_be: 80u16.to_be(),
            backend_port_be: 8080u16.to_be(),
            svc_id: 0,
        };
        slots.set(i, foreign, 0).expect("write slot");
    }
    for r in tcp_requests_from_cgroup(bin, &client.ns, &pins.cgroup, (b1, 8080).into(), 20) {
        assert_eq!(r.expect("direct").from, SocketAddr::from((b1, 8080)));
    }
    for r in from_cgroup(VIP, 20) {
        assert_eq!(
            r.expect("via the ClusterIP").from,
            SocketAddr::from((VIP, 80))
        );
    }
    assert_eq!(agent.counter("sock_xlate"), 220);

    // Session affinity needs the client address: left to tc (tracked, one backend).
    let sticky = spread(&from_cgroup(STICKY, 20));
    assert_eq!(sticky.len(), 1, "affinity keeps one backend: {sticky:?}");
    assert!(!sticky.contains_key("<error>"), "{sticky:?}");
    assert!(flows(&agent, "default/sticky") > 0);
    assert_eq!(agent.counter("sock_xlate"), 220);

    // A service without endpoints is left to tc too, which drops the SYN and counts why.
    let drops = agent.counter("drop_no_backend");
    let refused = from_cgroup(EMPTY, 1);
    assert!(refused.iter().all(Result::is_err), "{refused:?}");
    assert!(agent.counter("drop_no_backend") > drops);
    assert_eq!(agent.counter("sock_xlate"), 220);

    // Outside the cgroup the tc path translates as before.
    let plain = tcp_requests(&client.ns, SocketAddr::from((VIP, 80)), 5);
    assert!(plain.iter().all(Result::is_ok), "{plain:?}");
    assert!(flows(&agent, "default/web") > 0);

    // The programs stay attached while the agent is down; a restarted agent swaps its own in:
    // still attached once each, still working.
    assert!(agent.stop());
    assert!(from_cgroup(VIP, 10).iter().all(Result::is_ok));
    agent.restart();
    assert_eq!(sock_programs(&pins.cgroup), (1, 1));
    assert!(from_cgroup(VIP, 10).iter().all(Result::is_ok));
    assert_eq!(agent.counter("sock_xlate"), 240);

    // --cgroup off detaches them: the same process goes through tc, and still gets answers.
    assert!(agent.stop());
    agent.set_arg("--cgroup", "off");
    agent.restart();
    assert_eq!(sock_programs(&pins.cgroup), (0, 0));
    let replies = from_cgroup(VIP, 10);
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    assert!(
        replies
            .iter()
            .flatten()
            .all(|r| r.from == SocketAddr::from((VIP, 80)))
    );
    assert_eq!(agent.counter("sock_xlate"), 240);
    drop(servers);
}

#[test]
fn a_source_port_reused_after_a_translated_flow_reaches_the_backend_directly() {
    // A connection translated by tc (here: a process outside the node's cgroup) leaves its
    // conntrack entries behind for a while after it closes. A new connection from the same
    // source port straight to the backend (pod to pod, or a connect translated at the socket)
    // has, seen from the backend, that old flow's reply tuple: its SYN/ACK must not be
    // rewritten to the ClusterIP. Nor must a new connection through another ClusterIP with the
    // same backend: it takes the closed flow's reply tuple over, keeping its source port (a
    // single client at a high connection rate reuses every port this way).
    const PORT: u16 = 40_123;
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let backend = SocketAddr::from((node.pods[1].ip, 8080));
    servers.tcp(&node.pods[1].ns, backend, "b1");
    let eps = [Ep::ready(node.pods[1].ip, "n1")];
    let mut objects = http_service("web", VIP, &eps, "");
    objects.extend(http_service("other", VIP2, &eps, ""));
    let yaml = docs(&objects);
    let path = dir.write("services.yaml", &yaml);
    let (_pins, agent) = start(&node, &tag, &path);
    agent.wait_active("default/web:http/TCP", 1);
    let client = &node.pods[0];
    let request = |to: SocketAddr| {
        // Long enough for a SYN retransmit: the backend's TIME_WAIT on the same tuple may
        // answer the first SYN with a challenge ACK.
        client
            .ns
            .run(move || tcp_request_from_port(PORT, to, Duration::from_secs(5)))
    };

    for round in 0..3 {
        let r = request(SocketAddr::from((VIP, 80)))
            .unwrap_or_else(|e| panic!("round {round}: via the ClusterIP: {e}"));
        assert_eq!(r.seen_from, SocketAddr::from((client.ip, PORT)));
        assert!(flows(&agent, "default/web") > 0, "round {round}: tracked");
        let translated = agent.counter("xlate_rev");
        assert!(translated > 0, "round {round}: replies from the VIP");
        let r = request(backend)
            .unwrap_or_else(|e| panic!("round {round}: straight to the backend: {e}"));
        assert_eq!(r.backend, "b1");
        assert_eq!(
            agent.counter("xlate_rev"),
            translated,
            "round {round}: the direct connection's packets were reverse-translated"
        );
        // The same port through both ClusterIPs in turn, each flow closed when the next
        // starts: the backend sees the client's own port every time (never a moved one), and
        // the answers come from the address dialled.
        for vip in [VIP, VIP2, VIP] {
            let to = SocketAddr::from((vip, 80));
            let r = request(to).unwrap_or_else(|e| panic!("round {round}: via {to}: {e}"));
            assert_eq!(r.from, to, "round {round}");
            assert_eq!(
                r.seen_from,
                SocketAddr::from((client.ip, PORT)),
                "round {round}: via {to}"
            );
        }
    }
    drop(servers);
}

#[test]
fn a_service_beyond_the_frontend_capacity_is_refused_naming_the_flag_and_the_others_serve() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let pod = &node.pods[1];
    servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), "b1");
    let http = [Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }];
    let eps = [Ep::ready(pod.ip, "n1")];
    let vips = [
        VIP,
        Ipv4Addr::new(10, 96, 0, 11),
        Ipv4Addr::new(10, 96, 0, 12),
    ];
    let mut objects = Vec::new();
    for (i, vip) in vips.iter().enumerate() {
        let name = format!("s{i}");
        objects.push(service(&name, *vip, &http, ""));
        objects.push(slice(
            &format!("{name}-1"),
            &name,
            &[("http", 8080, "TCP")],
            &eps,
        ));
    }
    let path = dir.write("services.yaml", &docs(&objects));
    let pins = PinDir::new(&tag);
    let services = path.to_str().expect("path");
    // Room for two frontends; three services of one frontend each.
    let mut agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--services",
            services,
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
            "--max-frontends",
            "2",
        ],
    );
    agent.wait_for_log("raise --max-frontends", 1);
    let list = agent.services();
    let names: BTreeSet<&str> = list
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["default/s0:http/TCP", "default/s1:http/TCP"].into(),
        "{list}"
    );
    let logs = agent.logs();
    assert!(
        logs.contains("default/s2:http/TCP") && logs.contains("2 entries of xlb_services"),
        "{logs}"
    );
    // The two that fit serve; the status says a service fails.
    for vip in &vips[..2] {
        let to = SocketAddr::from((*vip, 80));
        let ok = tcp_requests(&node.pods[0].ns, to, 3);
        assert_eq!(ok.iter().filter(|r| r.is_ok()).count(), 3, "{vip}");
    }
    assert!(
        agent.status()["agent"]["sync_failures"].as_u64() >= Some(1),
        "{}",
        agent.status()
    );
    drop(servers);
}

#[test]
fn guarded_external_ips_and_proxy_mode_lb_ips_are_left_to_the_network() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let pod = &node.pods[1];
    servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), "b1");
    // Outside the node: an external proxy load balancer (192.0.2.51) and whoever really owns
    // 198.51.100.7, both answering for themselves.
    let ext = outside(
        &node,
        &tag,
        &["192.0.2.51", "198.51.100.7"],
        &["192.0.2.51/32", "198.51.100.7/32"],
    );
    for (addr, name) in [
        ([192, 0, 2, 51], "external-lb"),
        ([198, 51, 100, 7], "owner"),
    ] {
        servers.tcp_persistent(&ext, SocketAddr::from((addr, 80)), name);
    }
    let http = [Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }];
    let yaml = docs(&[
        service(
            "lb",
            VIP,
            &http,
            "  type: LoadBalancer\n  externalIPs: [203.0.113.5, 198.51.100.7]\nstatus:\n  loadBalancer:\n    ingress:\n    - {ip: 192.0.2.50}\n    - {ip: 192.0.2.51, ipMode: Proxy}\n",
        ),
        slice(
            "lb-1",
            "lb",
            &[("http", 8080, "TCP")],
            &[Ep::ready(pod.ip, "n1")],
        ),
    ]);
    // Through the Kubernetes source (a fake API server), as a cluster delivers it.
    let (_api, kubeconfig) = through_api(&node, &dir, &yaml);
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
            "--external-ip-cidrs",
            "203.0.113.0/24",
        ],
    );
    agent.wait_active("default/lb:http/TCP", 1);
    agent.wait_for_log("198.51.100.7 is outside --external-ip-cidrs", 1);
    let who = |addr: [u8; 4]| -> String {
        let to = SocketAddr::from((addr, 80));
        node.pods[0]
            .ns
            .run(move || xlb_tests::traffic::tcp_ping_once(to, Duration::from_secs(2)))
            .map_or_else(|e| format!("<{e}>"), |r| r.backend)
    };
    assert_eq!(who([10, 96, 0, 10]), "b1");
    assert_eq!(who([203, 0, 113, 5]), "b1", "an allowed externalIP");
    assert_eq!(who([192, 0, 2, 50]), "b1", "a VIP-mode LoadBalancer IP");
    assert_eq!(
        who([198, 51, 100, 7]),
        "owner",
        "an externalIP outside the CIDRs was taken over"
    );
    assert_eq!(
        who([192, 0, 2, 51]),
        "external-lb",
        "a Proxy-mode LoadBalancer IP was short-circuited"
    );
    drop(servers);
}

#[test]
fn session_affinity_holds_within_its_timeout_and_expires_after_it() {
    const TIMEOUT: u64 = 2;
    let (tag, node) = cluster(3);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let http = [Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }];
    let yaml = docs(&[
        service(
            "sticky",
            VIP,
            &http,
            &format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {TIMEOUT}}}}}\n"
            ),
        ),
        slice("sticky-1", "sticky", &[("http", 8080, "TCP")], &eps),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/sticky:http/TCP", 3);
    let to = SocketAddr::from((VIP, 80));
    let burst = |n: usize| spread(&tcp_requests(&node.pods[0].ns, to, n));
    // Within the timeout every connection of the client goes to one backend; after it expired
    // (idle longer than the timeout) the next connection is balanced again, so over a few
    // rounds more than one backend is seen (three backends: the chance that every round
    // lands on the same one is 3^-(rounds-1)).
    let mut firsts = BTreeSet::new();
    for round in 0..12 {
        let b = burst(6);
        assert_eq!(
            b.len(),
            1,
            "round {round}: affinity broke within its timeout: {b:?}"
        );
        assert!(!b.contains_key("<error>"), "{b:?}");
        firsts.extend(b.into_keys());
        if firsts.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(TIMEOUT * 1000 + 1500));
    }
    assert!(
        firsts.len() >= 2,
        "affinity never expired: always {firsts:?}"
    );
    drop(servers);
}

#[test]
fn a_service_without_endpoints_refuses_tcp_and_udp_at_once() {
    let (tag, node) = cluster(0);
    let dir = WorkDir::new(&tag);
    let ports = [
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
    ];
    let (_api, kubeconfig) = through_api(&node, &dir, &docs(&[service("empty", VIP, &ports, "")]));
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
        ],
    );
    agent.wait_for_log("maps synced", 1);
    let (tcp, udp) = node.pods[0].ns.run(|| {
        let tcp = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((VIP, 80)),
            Duration::from_secs(5),
        )
        .map(|_| ())
        .map_err(|e| e.kind());
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(SocketAddr::from((VIP, 53))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.send(b"query").expect("send");
        let mut buf = [0u8; 64];
        let udp = s.recv(&mut buf).map(|_| ()).map_err(|e| e.kind());
        (tcp, udp)
    });
    // Refused (the ICMP port unreachable), not timed out.
    assert_eq!(tcp, Err(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(udp, Err(std::io::ErrorKind::ConnectionRefused));
    assert!(agent.counter("drop_no_backend") >= 2);
    assert!(agent.counter("icmp_sent") >= 2);
}

#[test]
fn with_service_cidrs_unowned_service_addresses_are_dropped_not_leaked() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let pod = &node.pods[1];
    servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), "b1");
    // Beyond the node the service CIDR is routed to a network where 10.96.0.99 answers: what
    // a stray packet to an unallocated ClusterIP would reach without the guard.
    let ext = outside(&node, &tag, &["10.96.0.99"], &["10.96.0.0/16"]);
    servers.tcp_persistent(&ext, SocketAddr::from(([10, 96, 0, 99], 80)), "leaked");
    let http = [Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }];
    let yaml = docs(&[
        service("web", VIP, &http, ""),
        slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &[Ep::ready(pod.ip, "n1")],
        ),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let services = path.to_str().expect("path").to_owned();
    let who = |node: &Node, addr: [u8; 4], port: u16| -> String {
        let to = SocketAddr::from((addr, port));
        node.pods[0]
            .ns
            .run(move || xlb_tests::traffic::tcp_ping_once(to, Duration::from_millis(700)))
            .map_or_else(|e| format!("<{:?}>", e.kind()), |r| r.backend)
    };
    let base = [
        "--services",
        &services,
        "--node-name",
        "n1",
        "--pod-devices",
        "xp*",
    ];
    // Without the guard the stray packet leaves the node.
    {
        let pins = PinDir::new(&format!("{tag}a"));
        let agent = Agent::start(&node.ns, &pins, &base);
        agent.wait_active("default/web:http/TCP", 1);
        assert_eq!(who(&node, [10, 96, 0, 99], 80), "leaked");
    }
    let pins = PinDir::new(&format!("{tag}b"));
    let mut args = base.to_vec();
    args.extend(["--service-cidrs", "10.96.0.0/16"]);
    let agent = Agent::start(&node.ns, &pins, &args);
    agent.wait_active("default/web:http/TCP", 1);
    assert_eq!(who(&node, [10, 96, 0, 10], 80), "b1", "the Service itself");
    assert_eq!(
        who(&node, [10, 96, 0, 99], 80),
        "<TimedOut>",
        "an unowned ClusterIP leaked"
    );
    assert_eq!(
        who(&node, [10, 96, 0, 10], 81),
        "<TimedOut>",
        "an unowned port leaked"
    );
    assert!(agent.counter("drop_unowned_service_ip") >= 2);
    drop(servers);
}

#[test]
fn host_network_clients_keep_their_session_affinity_at_the_socket() {
    let (tag, node) = cluster(3);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let http = [Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }];
    let yaml = docs(&[
        service("sticky", VIP, &http, "  sessionAffinity: ClientIP\n"),
        slice("sticky-1", "sticky", &[("http", 8080, "TCP")], &eps),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/sticky:http/TCP", 3);
    // Processes of the node itself (host network), in the agent's cgroup: their packets never
    // cross a pod device, so only the socket hook can translate them.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    let before = agent.counter("sock_xlate");
    let replies = tcp_requests_from_cgroup(bin, &node.ns, &pins.cgroup, (VIP, 80).into(), 30);
    let seen = spread(&replies);
    assert_eq!(seen.len(), 1, "host-network connections spread: {seen:?}");
    assert!(!seen.contains_key("<error>"), "{seen:?}");
    assert_eq!(agent.counter("sock_xlate") - before, 30);
    assert!(agent.counter("affinity_hit") >= 29);
    // getpeername() still names the ClusterIP.
    assert!(replies.iter().all(|r| {
        r.as_ref()
            .is_ok_and(|r| r.from == SocketAddr::from((VIP, 80)))
    }));
    drop(servers);
}

#[test]
fn host_network_udp_reaches_cluster_ips_at_the_socket_and_a_connected_socket_leaves_a_gone_backend()
{
    const DNS: &str = "default/dns:dns/UDP";
    let (tag, node) = cluster(2);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.udp(&pod.ns, SocketAddr::from((pod.ip, 5353)), &format!("b{i}"));
    }
    let dns = [Port::DNS];
    let with = |pods: &[usize]| {
        let eps: Vec<Ep> = pods
            .iter()
            .map(|i| Ep::ready(node.pods[*i].ip, "n1"))
            .collect();
        docs(&[
            service("dns", VIP, &dns, ""),
            slice("dns-1", "dns", &[("dns", 5353, "UDP")], &eps),
        ])
    };
    let path = dir.write("services.yaml", &with(&[1, 2]));
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active(DNS, 2);
    // Processes of the node itself (host network), in the agent's cgroup: their datagrams
    // never cross a pod device, so only the socket hooks can translate them.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    let to = SocketAddr::from((VIP, 53));
    let before = agent.counter("sock_xlate");
    for mode in ["--udp", "--udp-connected"] {
        let replies = requests_from_cgroup(bin, mode, &node.ns, &pins.cgroup, to, 20);
        let seen = spread(&replies);
        assert!(!seen.contains_key("<error>"), "{mode}: {seen:?}");
        assert!(
            replies
                .iter()
                .all(|r| r.as_ref().is_ok_and(|r| r.from == to)),
            "{mode}: every answer comes from the ClusterIP: {replies:?}"
        );
        if mode == "--udp-connected" {
            assert_eq!(seen.len(), 1, "one connected socket, one backend: {seen:?}");
        }
    }
    // 20 datagrams, 20 unconnected sockets, then one connect.
    assert!(agent.counter("sock_xlate") - before >= 21);

    // A connected socket on b1 while b1 leaves the Service (its pod still answers): the agent
    // aborts the socket, and the client's reconnect reaches b2.
    dir.write("services.yaml", &with(&[1]));
    agent.wait_active(DNS, 1);
    let (replies, ()) = std::thread::scope(|s| {
        let client = s
            .spawn(|| requests_from_cgroup(bin, "--udp-connected", &node.ns, &pins.cgroup, to, 80));
        std::thread::sleep(Duration::from_millis(1500));
        dir.write("services.yaml", &with(&[2]));
        agent.wait_active(DNS, 1);
        (client.join().expect("client"), ())
    });
    xlb_tests::traffic::assert_moved_off(&replies, "b1", "b2");
    assert!(
        agent.logs().contains("aborted host-network UDP sockets"),
        "{}",
        agent.logs()
    );
    let (_, metrics) = node.ns.run(|| {
        xlb_tests::traffic::http_get("127.0.0.1:10249".parse().expect("addr"), "/metrics")
            .expect("metrics")
    });
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("xlb_udp_sockets_aborted_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // A socket connected through the ClusterIP, then straight to the backend: it names the
    // backend from then on (its records went with the direct connect).
    // Likewise an unconnected socket that sends through the ClusterIP, then straight to it.
    let b2 = SocketAddr::from((node.pods[2].ip, 5353));
    for mode in ["--udp-redial", "--udp-sendto-direct"] {
        let mut cmd = std::process::Command::new(bin);
        cmd.args([mode, &to.to_string(), &b2.to_string()])
            .stdin(std::process::Stdio::null());
        xlb_tests::agent::in_netns(&mut cmd, &node.ns.path());
        xlb_tests::agent::in_cgroup(&mut cmd, &pins.cgroup);
        let out = cmd.output().expect("xlb-test-client");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{to} {to}\n{b2} {b2}\n"),
            "{mode}: the peer and the answer's source, through the ClusterIP then direct"
        );
    }
    drop(servers);
}

/// `/etc/netns/<ns>/<file>`, which `ip netns exec <ns>` mounts over `/etc/<file>`; removed
/// when dropped.
struct NetnsEtc(std::path::PathBuf);

impl NetnsEtc {
    fn write(ns: &str, file: &str, text: &str) -> Self {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns");
        std::fs::write(dir.join(file), text).expect("write");
        Self(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_host_network_resolver_queries_a_dns_server_behind_a_udp_cluster_ip() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let server = &node.pods[1];
    // dnsmasq, as a cluster DNS pod would run it, answering one name.
    let mut cmd = std::process::Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--bind-interfaces",
        "--port=5353",
        &format!("--listen-address={}", server.ip),
        "--address=/web.cluster.test/10.1.2.3",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    xlb_tests::agent::in_netns(&mut cmd, &server.ns.path());
    let mut dnsmasq = KillOnDrop(cmd.spawn().expect("dnsmasq (package dnsmasq-base)"));
    let dns = [Port::DNS];
    let yaml = docs(&[
        service("kube-dns", VIP, &dns, ""),
        slice(
            "kube-dns-1",
            "kube-dns",
            &[("dns", 5353, "UDP")],
            &[Ep::ready(server.ip, "n1")],
        ),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/kube-dns:dns/UDP", 1);
    assert!(
        dnsmasq.0.try_wait().expect("dnsmasq").is_none(),
        "dnsmasq exited"
    );
    // The node's resolver points at the ClusterIP; `ip netns exec` mounts it over
    // /etc/resolv.conf, and glibc's resolver runs in a host-network process of the cgroup.
    let _etc = NetnsEtc::write(
        &node.ns.name,
        "resolv.conf",
        &format!("nameserver {VIP}\noptions timeout:1 attempts:3\n"),
    );
    let mut getent = std::process::Command::new("ip");
    getent
        .args([
            "netns",
            "exec",
            &node.ns.name,
            "getent",
            "ahostsv4",
            "web.cluster.test",
        ])
        .stdin(std::process::Stdio::null());
    xlb_tests::agent::in_cgroup(&mut getent, &pins.cgroup);
    let out = getent.output().expect("getent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("10.1.2.3"),
        "getent through the ClusterIP: {out:?}\n{}",
        agent.logs()
    );
    assert!(agent.counter("sock_xlate") >= 1);
    drop(dnsmasq);
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn host_network_processes_reach_node_ports_on_node_addresses_and_loopback_and_lb_and_external_ips()
{
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let node_ip = Ipv4Addr::new(192, 168, 77, 1);
    node.ns
        .ip(&["addr", "add", &format!("{node_ip}/32"), "dev", "lo"]);
    let mut servers = Servers::new();
    let pod = &node.pods[1];
    servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), "b1");
    servers.udp(&pod.ns, SocketAddr::from((pod.ip, 5353)), "b1");
    let ports = [
        Port {
            node_port: Some(30080),
            ..Port::HTTP
        },
        Port {
            node_port: Some(30053),
            ..Port::DNS
        },
    ];
    let yaml = docs(&[
        service(
            "lb",
            VIP,
            &ports,
            "  type: LoadBalancer\n  externalIPs: [203.0.113.5]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 192.0.2.50}]\n",
        ),
        slice(
            "lb-1",
            "lb",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            &[Ep::ready(pod.ip, "n1")],
        ),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let ip = node_ip.to_string();
    let agent = Agent::start_on_node_with(&node.ns, &pins, &path, "n1", &["--node-ip", &ip]);
    agent.wait_active("default/lb:http/TCP", 1);
    agent.wait_active("default/lb:dns/UDP", 1);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    let targets: [([u8; 4], u16, u16, &str); 4] = [
        (
            node_ip.octets(),
            30080,
            30053,
            "a NodePort on the node's address",
        ),
        ([127, 0, 0, 1], 30080, 30053, "a NodePort on loopback"),
        ([192, 0, 2, 50], 80, 53, "a LoadBalancer IP"),
        ([203, 0, 113, 5], 80, 53, "an externalIP"),
    ];
    for (addr, tcp_port, udp_port, what) in targets {
        for (mode, port) in [("--tcp", tcp_port), ("--udp", udp_port)] {
            let to = SocketAddr::from((addr, port));
            let replies = requests_from_cgroup(bin, mode, &node.ns, &pins.cgroup, to, 5);
            assert!(
                replies
                    .iter()
                    .all(|r| r.as_ref().is_ok_and(|r| r.backend == "b1" && r.from == to)),
                "{what} {mode} {to} from a host-network process: {replies:?}"
            );
        }
    }
    drop(servers);
}

#[test]
fn socket_lb_scope_host_leaves_pods_connects_to_tc_and_translates_host_network_ones() {
    let (tag, node) = cluster(1);
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    let pod = &node.pods[1];
    servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), "b1");
    let http = [Port::HTTP];
    let yaml = docs(&[
        service("web", VIP, &http, ""),
        slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &[Ep::ready(pod.ip, "n1")],
        ),
    ]);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let agent =
        Agent::start_on_node_with(&node.ns, &pins, &path, "n1", &["--socket-lb-scope", "host"]);
    agent.wait_active("default/web:http/TCP", 1);
    let to = SocketAddr::from((VIP, 80));
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    // A pod (in the node's cgroup, as every pod is): served through tc, not at the socket.
    let client = &node.pods[0];
    let (sock0, ct0) = (agent.counter("sock_xlate"), agent.counter("ct_new"));
    let replies = requests_from_cgroup(bin, "--tcp", &client.ns, &pins.cgroup, to, 10);
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.backend == "b1" && r.from == to)),
        "{replies:?}"
    );
    assert_eq!(
        agent.counter("sock_xlate"),
        sock0,
        "a pod's connect was translated at the socket"
    );
    assert!(
        agent.counter("ct_new") - ct0 >= 10,
        "tc did not translate the pod's flows"
    );
    // A host-network process still is.
    let replies = requests_from_cgroup(bin, "--tcp", &node.ns, &pins.cgroup, to, 10);
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.backend == "b1"))
    );
    assert_eq!(agent.counter("sock_xlate") - sock0, 10);
    drop(servers);
}
