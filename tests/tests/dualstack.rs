//! Dual-stack Services through the real agent and real traffic: a node and pods with both
//! families (`Node::dual_stack`), a Service with an IPv4 and an IPv6 ClusterIP and an
//! EndpointSlice per family, the agent started as users start it (`ip netns exec`, default
//! flags). Pods' packets are translated by tc in each family; the node's own processes (in the
//! agent's cgroup) are translated at the socket: IPv6 connects and datagrams, and IPv4
//! ClusterIPs dialled from IPv6 sockets as `::ffff:a.b.c.d`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    manifests::{Ep, Port, docs, dual_stack_spec, service, slice},
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{Reply, Servers, requests_from_cgroup, spread, tcp_requests, udp_requests},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
const CLOSED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const CLOSED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x11);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const KEEP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
const STICKY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x14);
const KEEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x13);
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x12);
const WEB6: &str = "default/web:http/TCP (IPv6)";
const DNS6: &str = "default/dns:dns/UDP (IPv6)";

/// Every reply came (no errors), from `from`, and the backends that served.
fn served_from(what: &str, replies: &[std::io::Result<Reply>], from: SocketAddr) -> Vec<String> {
    let s = spread(replies);
    assert!(!s.contains_key("<error>"), "{what}: failures {s:?}");
    for r in replies.iter().flatten() {
        assert_eq!(
            r.from, from,
            "{what}: the answer's source is what was dialled"
        );
    }
    s.into_keys().collect()
}

#[test]
fn a_dual_stack_service_serves_each_family_on_packets_and_at_the_socket() {
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=2 {
        node.add_pod(i);
    }
    node.dual_stack();
    let dir = WorkDir::new(&tag);
    let mut servers = Servers::new();
    // Each backend answers with its name and family, on both.
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        for (addr, fam) in [(IpAddr::V4(pod.ip), "4"), (IpAddr::V6(pod.ip6), "6")] {
            let name = format!("b{i}v{fam}");
            servers.tcp(&pod.ns, SocketAddr::new(addr, 8080), &name);
            servers.udp(&pod.ns, SocketAddr::new(addr, 5353), &name);
        }
        // Long-lived connections (kill -9 below).
        servers.tcp_persistent(
            &pod.ns,
            SocketAddr::new(pod.ip6.into(), 8081),
            &format!("k{i}"),
        );
    }
    let closed_port = || Port {
        target: "5999",
        ..Port::DNS
    };
    let keep_port = || Port {
        target: "8081",
        ..Port::HTTP
    };
    let all6: Vec<Ep> = [1, 2]
        .iter()
        .map(|i: &usize| Ep::ready(node.pods[*i].ip6, "n1"))
        .collect();
    let with = |pods: &[usize]| {
        let eps = |v6: bool| -> Vec<Ep> {
            pods.iter()
                .map(|i| {
                    let p = &node.pods[*i];
                    let a = if v6 { IpAddr::V6(p.ip6) } else { p.ip.into() };
                    Ep::ready(a, "n1")
                })
                .collect()
        };
        let spec = dual_stack_spec(VIP, VIP6);
        docs(&[
            service("web", VIP, &[Port::HTTP], &spec),
            slice("web-4", "web", &[("http", 8080, "TCP")], &eps(false)),
            slice("web-6", "web", &[("http", 8080, "TCP")], &eps(true)),
            service("dns", VIP, &[Port::DNS], &spec),
            slice("dns-4", "dns", &[("dns", 5353, "UDP")], &eps(false)),
            slice("dns-6", "dns", &[("dns", 5353, "UDP")], &eps(true)),
            // Its backends' port 5999 is closed: they answer with ICMPv6 port unreachable.
            service(
                "closed",
                CLOSED,
                &[closed_port()],
                &dual_stack_spec(CLOSED, CLOSED6),
            ),
            slice("closed-6", "closed", &[("dns", 5999, "UDP")], &eps(true)),
            // Long-lived connections, on every backend that ever was (they stay through the
            // endpoint changes below).
            service("keep", KEEP, &[keep_port()], &dual_stack_spec(KEEP, KEEP6)),
            // ClientIP affinity over IPv6.
            service(
                "sticky",
                STICKY,
                &[Port::HTTP],
                &format!(
                    "{}  sessionAffinity: ClientIP\n",
                    dual_stack_spec(STICKY, STICKY6)
                ),
            ),
            slice("sticky-6", "sticky", &[("http", 8080, "TCP")], &all6),
            slice("keep-6", "keep", &[("http", 8081, "TCP")], &all6),
            // No endpoints at all: xlb rejects, as kube-proxy does.
            service(
                "empty",
                EMPTY,
                &[Port::HTTP, Port::DNS],
                &dual_stack_spec(EMPTY, EMPTY6),
            ),
        ])
    };
    let path = dir.write("services.yaml", &with(&[1, 2]));
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/web:http/TCP", 2);
    agent.wait_active(WEB6, 2);
    agent.wait_active(DNS6, 2);
    let (web, web6) = (SocketAddr::from((VIP, 80)), SocketAddr::from((VIP6, 80)));
    let dns6 = SocketAddr::from((VIP6, 53));
    let pod = &node.pods[0];

    // A pod's packets, per family (tc): each family's backends only, replies from its VIP,
    // the backend sees the pod's own address.
    let v6 = tcp_requests(&pod.ns, web6, 40);
    assert_eq!(
        served_from("pod TCP v6", &v6, web6),
        ["b1v6", "b2v6"],
        "IPv6 clients reach the IPv6 backends, every one"
    );
    assert!(
        v6.iter()
            .flatten()
            .all(|r| r.seen_from.ip() == IpAddr::V6(pod.ip6))
    );
    let v4 = tcp_requests(&pod.ns, web, 40);
    assert_eq!(served_from("pod TCP v4", &v4, web), ["b1v4", "b2v4"]);
    let u6 = udp_requests(&pod.ns, dns6, 40);
    assert_eq!(served_from("pod UDP v6", &u6, dns6), ["b1v6", "b2v6"]);
    // ClientIP affinity: one backend for every connection of the pod.
    let sticky6 = SocketAddr::from((STICKY6, 80));
    let st = tcp_requests(&pod.ns, sticky6, 20);
    assert_eq!(
        served_from("affinity v6", &st, sticky6).len(),
        1,
        "affinity keeps one backend"
    );
    // Hairpin: a backend reaching the Service lands on itself at times; it sees the hairpin
    // address (`--hairpin-addr6`'s default), the other backend sees it directly.
    let b1 = &node.pods[1];
    let hp = tcp_requests(&b1.ns, web6, 40);
    assert_eq!(served_from("hairpin v6", &hp, web6), ["b1v6", "b2v6"]);
    let hairpin: IpAddr = "fd00:786c:62::1".parse().expect("addr");
    for r in hp.iter().flatten() {
        let want = if r.backend == "b1v6" {
            hairpin
        } else {
            IpAddr::V6(b1.ip6)
        };
        assert_eq!(r.seen_from.ip(), want, "{} saw {}", r.backend, r.seen_from);
    }
    assert!(agent.counter("hairpin") >= 1);

    // ICMPv6 errors, both kinds: a backend's port unreachable reaches the client about the
    // ClusterIP it dialled (checksums valid, or its kernel would drop it); a Service without
    // endpoints is rejected by xlb itself, TCP and UDP. Each fails at once, not by timeout.
    let refused = |to: SocketAddr, tcp: bool| {
        pod.ns.run(move || {
            let start = std::time::Instant::now();
            let r = if tcp {
                std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(drop)
            } else {
                let s = std::net::UdpSocket::bind("[::]:0").expect("bind");
                s.connect(to).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                s.send(b"ping").expect("send");
                s.recv(&mut [0u8; 64]).map(drop)
            };
            (r.map_err(|e| e.kind()), start.elapsed())
        })
    };
    for (to, tcp) in [
        (SocketAddr::from((CLOSED6, 53)), false),
        (SocketAddr::from((EMPTY6, 53)), false),
        (SocketAddr::from((EMPTY6, 80)), true),
    ] {
        let (r, took) = refused(to, tcp);
        assert_eq!(
            r,
            Err(std::io::ErrorKind::ConnectionRefused),
            "{to} tcp={tcp}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{to}: refused after {took:?}"
        );
    }
    assert!(agent.counter("icmp_xlate") >= 1);
    assert!(agent.counter("icmp_sent") >= 2);

    // The CLI shows the IPv6 half as its own service, with its frontends, backends and flows,
    // in IPv6 notation; an IPv6 address selects it.
    let svc = agent.cli(&["service", "list", "fd00:10:96::10"]);
    assert!(svc.contains(WEB6) && svc.contains(DNS6), "{svc}");
    assert!(
        !svc.contains("10.96.0.10:"),
        "only the IPv6 frontends match: {svc}"
    );
    assert!(svc.contains("[fd00:10:96::10]:80/TCP"), "{svc}");
    let b1 = SocketAddr::from((node.pods[1].ip6, 8080)).to_string();
    assert!(svc.contains(&b1), "{svc}");
    let wide = agent.cli(&["service", "list", "[fd00:10:96::10]:80", "-o", "wide"]);
    assert!(
        wide.contains("xlb_services6") && wide.contains("xlb_backends6"),
        "{wide}"
    );
    let backends = agent.json(&["backend", "list"]);
    let v6_rows = backends
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["map"] == "xlb_backends6")
        .count();
    assert_eq!(
        v6_rows, 10,
        "two IPv6 backends of web, dns, closed, keep, sticky: {backends}"
    );
    let flows = agent.json(&["conntrack", "list", "--client", &pod.ip6.to_string()]);
    let flows = flows.as_array().expect("rows");
    assert!(!flows.is_empty(), "the pod's IPv6 flows are listed");
    assert!(
        flows.iter().all(|f| f["original"]
            .as_str()
            .is_some_and(|o| o.starts_with(&format!("[{}]:", pod.ip6)))),
        "{flows:?}"
    );

    // explain, IPv6: a new flow is a Maglev pick of an IPv6 backend, without creating a flow;
    // a Service without endpoints is rejected with ICMPv6 port unreachable.
    let explain = |src: &str, dst: &str| {
        agent.json(&["explain", "--device", "xp0", "--src", src, "--dst", dst])
    };
    let src = pod.ip6.to_string();
    let ct_new = agent.counter("ct_new");
    let x = explain(&src, "[fd00:10:96::10]:80");
    let step = &x["steps"][0];
    assert_eq!(step["frontend"], "[fd00:10:96::10]:80/TCP", "{x}");
    assert_eq!(step["service"], WEB6, "{x}");
    assert!(
        step["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("new flow: Maglev")),
        "{x}"
    );
    let chosen = step["backend"].as_str().expect("backend").to_owned();
    let b6 = [1, 2].map(|i| SocketAddr::from((node.pods[i].ip6, 8080)).to_string());
    assert!(b6.contains(&chosen), "{chosen} is not an IPv6 backend");
    assert_eq!(
        step["packet_after"],
        format!("TCP [{src}]:40000 -> {chosen}"),
        "{x}"
    );
    assert_eq!(
        agent.counter("ct_new"),
        ct_new,
        "explain must not create flows"
    );
    let x = explain(&src, "[fd00:10:96::12]:80");
    assert_eq!(
        x["steps"][0]["packet_after"],
        format!("ICMPv6 port unreachable {EMPTY6} -> {src}"),
        "{x}"
    );
    let mixed = agent.cli_output(&["explain", "--src", &src, "--dst", "10.96.0.10:80"]);
    let err = String::from_utf8_lossy(&mixed.stderr);
    assert!(!mixed.status.success());
    assert!(err.contains("different address families"), "{err}");

    // monitor, IPv6: new flows of the pod's IPv6 address, in IPv6 notation.
    let mut mon = agent
        .cli_command(&[
            "monitor",
            "--flows",
            "--no-drops",
            "-o",
            "json",
            "--client",
            &src,
            "--count",
            "3",
            "--duration",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xlb monitor");
    // New flows until the monitor has its three (it may start listening after the first).
    for _ in 0..80 {
        if mon.try_wait().expect("monitor").is_some() {
            break;
        }
        let _ = tcp_requests(&pod.ns, web6, 1);
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = mon.wait_with_output().expect("monitor output");
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    for ev in &events {
        assert_eq!(ev["kind"], "flow", "{ev}");
        assert_eq!(ev["frontend"], "[fd00:10:96::10]:80", "{ev}");
        assert_eq!(ev["service"], WEB6, "{ev}");
        assert!(
            ev["client"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("[{src}]:"))),
            "{ev}"
        );
        assert!(
            b6.contains(&ev["backend"].as_str().unwrap_or("").to_owned()),
            "{ev}"
        );
    }

    // The node's own processes, in the agent's cgroup (socket-level): an IPv6 connect names the
    // IPv6 ClusterIP in getpeername() while the backend sees the node's address.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    let host = |mode: &str, to: SocketAddr, n| {
        requests_from_cgroup(bin, mode, &node.ns, &pins.cgroup, to, n)
    };
    let before = agent.counter("sock_xlate");
    let t6 = host("--tcp", web6, 40);
    assert_eq!(served_from("host TCP v6", &t6, web6), ["b1v6", "b2v6"]);
    assert!(
        t6.iter()
            .flatten()
            .all(|r| r.seen_from.ip() == IpAddr::V6(node.ip6()))
    );
    assert_eq!(
        agent.counter("sock_xlate") - before,
        40,
        "every connect translated at the socket"
    );
    // An IPv6 socket dialling the IPv4 ClusterIP as an IPv4-mapped address reaches an IPv4
    // backend and keeps the mapped form in what it reports, over TCP and UDP.
    let mapped = SocketAddr::new(IpAddr::V6(VIP.to_ipv6_mapped()), 80);
    let m = host("--tcp", mapped, 20);
    assert_eq!(served_from("host TCP mapped", &m, mapped), ["b1v4", "b2v4"]);
    let mapped_dns = SocketAddr::new(IpAddr::V6(VIP.to_ipv6_mapped()), 53);
    let m = host("--udp", mapped_dns, 20);
    assert_eq!(
        served_from("host UDP mapped", &m, mapped_dns),
        ["b1v4", "b2v4"]
    );
    // IPv6 datagrams: unconnected (sendmsg6/recvmsg6) and connected (connect6).
    let before = agent.counter("sock_xlate");
    let u = host("--udp", dns6, 20);
    assert_eq!(served_from("host UDP v6", &u, dns6), ["b1v6", "b2v6"]);
    let c = host("--udp-connected", dns6, 10);
    assert_eq!(
        served_from("host connected UDP v6", &c, dns6).len(),
        1,
        "one connected socket, one backend"
    );
    assert!(agent.counter("sock_xlate") - before >= 21);

    // A connected IPv6 socket on b1 while b1 leaves the Service (its pod still answers): the
    // agent aborts the socket, and the client's reconnect reaches b2.
    dir.write("services.yaml", &with(&[1]));
    agent.wait_active(DNS6, 1);
    let (replies, ()) = std::thread::scope(|s| {
        let client = s.spawn(|| host("--udp-connected", dns6, 80));
        std::thread::sleep(Duration::from_millis(1500));
        dir.write("services.yaml", &with(&[2]));
        agent.wait_active(DNS6, 1);
        (client.join().expect("client"), ())
    });
    xlb_tests::traffic::assert_moved_off(&replies, "b1v6", "b2v6");
    assert!(
        agent.logs().contains("aborted host-network UDP sockets"),
        "{}",
        agent.logs()
    );

    // kill -9: the pinned datapath keeps serving both families (b2 only now), and established
    // IPv6 flows keep their backends through the gap and the new agent.
    let keep6 = SocketAddr::from((KEEP6, 80));
    let mut conns: Vec<xlb_tests::traffic::Conn> = pod.ns.run(move || {
        (0..10)
            .map(|_| xlb_tests::traffic::Conn::open(keep6, Duration::from_secs(2)).expect("open"))
            .collect()
    });
    let first: Vec<String> = conns
        .iter_mut()
        .map(|c| c.ping().expect("ping").backend)
        .collect();
    let same = |conns: &mut [xlb_tests::traffic::Conn], when: &str| {
        for (c, was) in conns.iter_mut().zip(&first) {
            let r = c
                .ping()
                .unwrap_or_else(|e| panic!("{when}: a long-lived IPv6 flow broke: {e}"));
            assert_eq!(&r.backend, was, "{when}: the flow changed backend");
            assert_eq!(r.from, keep6, "{when}");
        }
    };
    agent.kill9();
    same(&mut conns, "agent dead");
    let v6 = tcp_requests(&pod.ns, web6, 10);
    assert_eq!(served_from("v6 with the agent gone", &v6, web6), ["b2v6"]);
    let t6 = host("--tcp", web6, 10);
    assert_eq!(served_from("host v6, agent gone", &t6, web6), ["b2v6"]);
    let v4 = tcp_requests(&pod.ns, web, 10);
    assert_eq!(served_from("v4 with the agent gone", &v4, web), ["b2v4"]);
    agent.restart();
    agent.wait_active(WEB6, 1);
    same(&mut conns, "after the restart");
    let u6 = udp_requests(&pod.ns, dns6, 10);
    assert_eq!(served_from("v6 after the restart", &u6, dns6), ["b2v6"]);
    drop(servers);
}

/// A single-stack IPv6 Service with `spec` lines on `clusterIP`, port 80 → 8080 (and
/// `node_port`, unless 0), `status` lines (empty: none), endpoints (pod, node name).
fn v6_service(
    name: &str,
    cluster_ip: &str,
    spec: &str,
    node_port: u16,
    status: &str,
    eps: &[(Ipv6Addr, &str)],
) -> String {
    let np = if node_port == 0 {
        String::new()
    } else {
        format!(", nodePort: {node_port}")
    };
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: \"{cluster_ip}\"\n  ipFamilies: [IPv6]\n{spec}  ports:\n  - {{name: http, port: 80, targetPort: 8080{np}}}\n{status}"
    );
    let eps: Vec<Ep> = eps.iter().map(|(a, n)| Ep::ready(*a, n)).collect();
    s.push_str("---\n");
    s.push_str(&slice(
        &format!("{name}-1"),
        name,
        &[("http", 8080, "TCP")],
        &eps,
    ));
    s
}

#[test]
fn ipv6_node_ports_from_outside_snat_to_the_node_and_local_policy_keeps_the_client() {
    node_ports6(false);
}

#[test]
fn ipv6_node_ports_through_native_xdp_where_the_peers_run_xdp() {
    node_ports6(true);
}

/// NodePorts over IPv6 from an external client, with the default flags, or with native XDP
/// on uplinks whose peers run XDP (XDP then translates the IPv6 flows itself).
fn node_ports6(native_xdp: bool) {
    use xlb_tests::topology::{Cluster, client_ip6, node_ip, node_ip6};
    const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, 0, 0x30);
    require_root();
    let tag = unique_tag();
    let mut cluster = if native_xdp {
        Cluster::with_xdp_peers(&tag, 2, 1, &[])
    } else {
        Cluster::new(&tag, 2, 1, &[])
    };
    cluster.nodes[0].add_pod(1);
    cluster.nodes[1].add_pod(1);
    cluster.dual_stack();
    let mut servers = Servers::new();
    for node in &cluster.nodes {
        let pod = &node.pods[0];
        servers.tcp(
            &pod.ns,
            SocketAddr::from((pod.ip6, 8080)),
            &format!("{}p1", node.name),
        );
    }
    let (p1, p2) = (cluster.nodes[0].pods[0].ip6, cluster.nodes[1].pods[0].ip6);
    let yaml = [
        v6_service(
            "np",
            "fd00:96::1:1",
            "  type: NodePort\n",
            30080,
            "",
            &[(p1, "n1"), (p2, "n2")],
        ),
        v6_service(
            "local",
            "fd00:96::1:2",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            30081,
            "",
            &[(p2, "n2")],
        ),
        v6_service(
            "ranges",
            "fd00:96::1:3",
            &format!(
                "  type: LoadBalancer\n  loadBalancerSourceRanges: [\"{}/128\"]\n",
                client_ip6(0)
            ),
            30082,
            &format!("status:\n  loadBalancer:\n    ingress: [{{ip: \"{LB6}\"}}]\n"),
            &[(p1, "n1")],
        ),
    ]
    .join("---\n");
    let dir = WorkDir::new(&tag);
    let file = dir.write("services.yaml", &yaml);
    let mut agents = Vec::new();
    let mut pins = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let p = PinDir::new(&format!("{tag}-{}", node.name));
        let ips = format!("{},{}", node_ip(i), node_ip6(i));
        let mut args = vec![
            "--services",
            file.to_str().expect("utf-8"),
            "--node-name",
            &node.name,
            "--node-ip",
            &ips,
            "--devices",
            "eth0",
            "--pod-devices",
            "xp*",
        ];
        if native_xdp {
            args.extend(["--xdp-mode", "native"]);
        }
        agents.push(Agent::start(&node.ns, &p, &args));
        pins.push(p);
    }
    // (Node 2 holds the eTP=Local endpoint.)
    for (i, a) in agents.iter().enumerate() {
        a.wait_active("default/np:http/TCP", 2);
        a.wait_active("default/local:http/TCP (local)", i);
        a.wait_active("default/ranges:http/TCP", 1);
    }
    let client = &cluster.clients[0].0;
    let from = |to: SocketAddr, n| tcp_requests(client, to, n);

    // NodePort on node 1, an endpoint on each node: the local one sees the client, the remote
    // one node 1's IPv6 address (SNAT); every reply comes from the address dialled.
    let to = SocketAddr::from((node_ip6(0), 30080));
    let replies = from(to, 60);
    assert_eq!(served_from("NodePort v6", &replies, to), ["n1p1", "n2p1"]);
    for r in replies.iter().flatten() {
        let expect = if r.backend == "n1p1" {
            client_ip6(0)
        } else {
            node_ip6(0)
        };
        assert_eq!(
            r.seen_from.ip(),
            IpAddr::V6(expect),
            "{} saw {}",
            r.backend,
            r.seen_from
        );
    }
    // externalTrafficPolicy Local: through node 2 (its endpoint is there) the client's address
    // is preserved; node 1 has none and drops.
    let to = SocketAddr::from((node_ip6(1), 30081));
    let replies = from(to, 20);
    assert_eq!(served_from("eTP=Local v6", &replies, to), ["n2p1"]);
    assert!(
        replies
            .iter()
            .flatten()
            .all(|r| r.seen_from.ip() == IpAddr::V6(client_ip6(0)))
    );
    let before = agents[0].counter("drop_no_local_backend");
    let dropped = client.run(|| {
        xlb_tests::traffic::tcp_request(
            SocketAddr::from((node_ip6(0), 30081)),
            Duration::from_millis(700),
        )
    });
    assert!(
        dropped.is_err(),
        "node 1 forwarded without a local endpoint"
    );
    assert!(agents[0].counter("drop_no_local_backend") > before);

    // loadBalancerSourceRanges of IPv6 CIDRs: the LoadBalancer IP (routed through node 1)
    // answers the client's address, the /128 allowed, and drops another address of the same
    // client outside it (each request binds its source).
    cluster.route_via(0, &format!("{LB6}/128"), 0);
    let outside: Ipv6Addr = "fd00:192:168:100::1ff".parse().expect("ip");
    client.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{outside}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    let to = SocketAddr::from((LB6, 80));
    let inside = SocketAddr::from((client_ip6(0), 0));
    let replies: Vec<_> = client.run(move || {
        (0..10)
            .map(|_| xlb_tests::traffic::tcp_request_from(inside, to, Duration::from_secs(2)))
            .collect()
    });
    assert_eq!(served_from("LB v6 in range", &replies, to), ["n1p1"]);
    let before = agents[0].counter("drop_source_range");
    let refused = client.run(move || {
        xlb_tests::traffic::tcp_request_from(
            SocketAddr::from((outside, 0)),
            to,
            Duration::from_millis(700),
        )
    });
    assert!(refused.is_err(), "{outside} is outside the source ranges");
    assert!(agents[0].counter("drop_source_range") > before);
    drop(servers);
}

#[test]
fn ipv6_service_cidrs_drop_unowned_service_addresses_instead_of_leaking_them() {
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    node.add_pod(0);
    node.add_pod(1);
    node.dual_stack();
    // Beyond the node the IPv6 service CIDR is routed to a network where fd00:10:96::99
    // answers: what a stray packet to an unallocated ClusterIP reaches without the guard.
    let ext = xlb_tests::netns::Netns::new(&format!("xlbt-{tag}-ext"));
    node.ns.ip(&[
        "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    node.ns
        .ip(&["-6", "addr", "add", "fd00:99::1/64", "dev", "ext0", "nodad"]);
    node.ns.ip(&["link", "set", "ext0", "up"]);
    ext.ip(&["-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"]);
    ext.ip(&["link", "set", "eth0", "up"]);
    ext.ip(&["link", "set", "lo", "up"]);
    ext.ip(&["-6", "addr", "add", "fd00:10:96::99/128", "dev", "lo"]);
    ext.ip(&["-6", "route", "add", "fd00:10::/32", "via", "fd00:99::1"]);
    node.ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:10:96::/112",
        "via",
        "fd00:99::2",
    ]);
    let mut servers = Servers::new();
    let pod = &node.pods[1];
    servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip6, 8080)), "b1");
    servers.tcp_persistent(&ext, "[fd00:10:96::99]:80".parse().expect("addr"), "leaked");
    let dir = WorkDir::new(&tag);
    let yaml = v6_service("web", "fd00:10:96::10", "", 0, "", &[(pod.ip6, "n1")]);
    let path = dir.write("services.yaml", &yaml);
    let services = path.to_str().expect("path").to_owned();
    let who = |to: &str| -> String {
        let to: SocketAddr = to.parse().expect("addr");
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
        // (The first try may wait for neighbour discovery towards the outside network.)
        let leaked = (0..5)
            .map(|_| who("[fd00:10:96::99]:80"))
            .find(|w| w == "leaked");
        assert_eq!(leaked.as_deref(), Some("leaked"));
    }
    let pins = PinDir::new(&format!("{tag}b"));
    let mut args = base.to_vec();
    args.extend(["--service-cidrs", "10.96.0.0/16,fd00:10:96::/112"]);
    let agent = Agent::start(&node.ns, &pins, &args);
    agent.wait_active("default/web:http/TCP", 1);
    assert_eq!(who("[fd00:10:96::10]:80"), "b1", "the Service itself");
    assert_eq!(
        who("[fd00:10:96::99]:80"),
        "<TimedOut>",
        "an unowned ClusterIP leaked"
    );
    assert_eq!(
        who("[fd00:10:96::10]:81"),
        "<TimedOut>",
        "an unowned port leaked"
    );
    assert!(agent.counter("drop_unowned_service_ip") >= 2);
    drop(servers);
}
