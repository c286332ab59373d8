//! North-south traffic and Service policies on a two-node cluster: each node a namespace with
//! its own agent (own pins, node name and address), pods on both, an L2 segment between the
//! nodes and external clients. Real TCP/UDP through XDP and tc.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    netns::{Netns, require_root, unique_tag},
    topology::{Cluster, node_ip},
    traffic::{Reply, Servers, http_get, spread, tcp_request},
};

const NP: u16 = 30080;
const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LB_CLUSTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const LB_RANGES: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
const AFF_NP: u16 = 30085;
const ITP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 6);
const HAIRPIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 7);
const ICMP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 8);

/// Pods: n1: p0 = 10.244.1.10 (client, also serves), p1 = 10.244.1.11;
/// n2: p1 = 10.244.2.11, p2 = 10.244.2.12. Every pod answers TCP 8080 and UDP 5353.
fn ep(addr: &str, node: &str) -> String {
    format!("- addresses: [\"{addr}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n")
}

fn svc(
    name: &str,
    ip: &str,
    spec: &str,
    status: &str,
    ports: &str,
    eps: &[(&str, &str)],
) -> String {
    let mut s = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n{spec}  ports:\n{ports}{status}"
    );
    s.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080}}\n- {{name: dns, port: 5353, protocol: UDP}}\n- {{name: closed, port: 5999, protocol: UDP}}\nendpoints:\n"
    ));
    for (a, n) in eps {
        s.push_str(&ep(a, n));
    }
    s
}

const HTTP: &str = "  - {name: http, port: 80, targetPort: 8080}\n";

fn lb_status(ip: Ipv4Addr) -> String {
    format!("status:\n  loadBalancer:\n    ingress: [{{ip: {ip}}}]\n")
}

fn services() -> String {
    let mut y = String::new();
    y += &svc(
        "np",
        "10.96.1.1",
        "  type: NodePort\n",
        "",
        &format!("  - {{name: http, port: 80, targetPort: 8080, nodePort: {NP}}}\n"),
        &[("10.244.1.11", "n1"), ("10.244.2.11", "n2")],
    );
    y += &svc(
        "lbl",
        "10.96.1.2",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
        &lb_status(LB_LOCAL),
        "  - {name: http, port: 80, targetPort: 8080, nodePort: 30081}\n",
        &[("10.244.2.11", "n2")],
    );
    y += &svc(
        "lbc",
        "10.96.1.3",
        "  type: LoadBalancer\n  externalIPs: [203.0.113.20]\n",
        &lb_status(LB_CLUSTER),
        "  - {name: http, port: 80, targetPort: 8080, nodePort: 30082}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30083}\n",
        &[("10.244.2.11", "n2"), ("10.244.2.12", "n2")],
    );
    y += &svc(
        "rng",
        "10.96.1.4",
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [192.168.100.100/32]\n",
        &lb_status(LB_RANGES),
        "  - {name: http, port: 80, targetPort: 8080, nodePort: 30084}\n",
        &[("10.244.1.11", "n1")],
    );
    y += &svc(
        "aff",
        "10.96.1.5",
        "  type: NodePort\n  sessionAffinity: ClientIP\n",
        "",
        &format!("  - {{name: http, port: 80, targetPort: 8080, nodePort: {AFF_NP}}}\n"),
        &[
            ("10.244.1.11", "n1"),
            ("10.244.2.11", "n2"),
            ("10.244.2.12", "n2"),
        ],
    );
    y += &svc(
        "itp",
        &ITP_VIP.to_string(),
        "  internalTrafficPolicy: Local\n",
        "",
        HTTP,
        &[("10.244.1.11", "n1"), ("10.244.2.11", "n2")],
    );
    y += &svc(
        "hp",
        &HAIRPIN_VIP.to_string(),
        "",
        "",
        HTTP,
        &[("10.244.1.10", "n1")],
    );
    y += &svc(
        "icmp",
        &ICMP_VIP.to_string(),
        "",
        "",
        "  - {name: closed, port: 53, protocol: UDP, targetPort: 5999}\n",
        &[("10.244.2.11", "n2")],
    );
    y
}

struct Env {
    cluster: Cluster,
    agents: Vec<Agent>,
    _pins: Vec<PinDir>,
    _servers: Servers,
    _dir: WorkDir,
}

/// Default flags; the uplinks' peers (switch ports) run no XDP, as in most labs.
fn env() -> Env {
    env_with(None, false)
}

/// `--xdp-mode` as given (None: the default), with or without XDP on the uplinks' peers.
fn env_with(xdp_mode: Option<&str>, xdp_peers: bool) -> Env {
    require_root();
    let tag = unique_tag();
    let routed = ["203.0.113.0/24"];
    let mut cluster = if xdp_peers {
        Cluster::with_xdp_peers(&tag, 2, 2, &routed)
    } else {
        Cluster::new(&tag, 2, 2, &routed)
    };
    for i in [0u8, 1] {
        cluster.nodes[0].add_pod(i);
    }
    for i in [1u8, 2] {
        cluster.nodes[1].add_pod(i);
    }
    let mut servers = Servers::new();
    for node in &cluster.nodes {
        for pod in &node.pods {
            let name = format!("{}p{}", node.name, pod.ip.octets()[3] - 10);
            servers.tcp(&pod.ns, SocketAddr::from((pod.ip, 8080)), &name);
            servers.udp(&pod.ns, SocketAddr::from((pod.ip, 5353)), &name);
        }
    }
    let dir = WorkDir::new(&tag);
    let file = dir.write("services.yaml", &services());
    let mut agents = Vec::new();
    let mut pins = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let p = PinDir::new(&format!("{tag}-{}", node.name));
        let ip = node_ip(i).to_string();
        let mut args = vec![
            "--services",
            file.to_str().unwrap(),
            "--node-name",
            &node.name,
            "--node-ip",
            &ip,
            "--devices",
            "eth0",
            "--pod-devices",
            "xp*",
        ];
        if let Some(m) = xdp_mode {
            args.extend(["--xdp-mode", m]);
        }
        let a = Agent::start(&node.ns, &p, &args);
        pins.push(p);
        agents.push(a);
    }
    for a in &mut agents {
        a.wait_for_log("maps synced", 1);
    }
    Env {
        cluster,
        agents,
        _pins: pins,
        _servers: servers,
        _dir: dir,
    }
}

fn tcp_from(ns: &Netns, to: SocketAddr, n: usize) -> Vec<std::io::Result<Reply>> {
    ns.run(move || {
        (0..n)
            .map(|_| tcp_request(to, Duration::from_secs(2)))
            .collect()
    })
}

fn ip(r: &Reply) -> IpAddr {
    r.seen_from.ip()
}

#[test]
fn nodeport_and_load_balancers_from_outside() {
    nodeport_and_load_balancers(&env());
}

#[test]
fn nodeport_and_load_balancers_with_generic_xdp() {
    nodeport_and_load_balancers(&env_with(Some("generic"), false));
}

#[test]
fn nodeport_and_load_balancers_with_native_xdp_where_the_peers_run_xdp() {
    let e = env_with(Some("native"), true);
    nodeport_and_load_balancers(&e);
    // XDP_TX worked: nothing lost, no fallback.
    assert_eq!(e.agents[0].counter("drop_xdp_tx_error"), 0);
    let st = e.agents[0].status();
    let up = uplink(&st);
    assert_eq!(up["mode"], "xdp-native+tc", "{st:#}");
    assert_eq!(up["xdp_tx_fallback"], false, "{st:#}");
}

/// `xlb status`'s entry of eth0.
fn uplink(st: &serde_json::Value) -> &serde_json::Value {
    st["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "eth0"))
        .unwrap_or_else(|| panic!("no eth0 in {st:#}"))
}

/// NodePort eTP=Cluster from outside, endpoints on both nodes: `n` connections to node 1's
/// NodePort, each a SYN retransmit long (3 s); returns the replies.
fn nodeport_connections(e: &Env, n: usize) -> Vec<std::io::Result<Reply>> {
    let client = &e.cluster.clients[0].0;
    let to = SocketAddr::from((node_ip(0), NP));
    client.run(move || {
        (0..n)
            .map(|_| tcp_request(to, Duration::from_secs(3)))
            .collect()
    })
}

#[test]
fn default_flags_on_veth_uplinks_whose_peers_run_no_xdp_lose_nothing() {
    let e = env();
    let replies = nodeport_connections(&e, 200);
    let s = spread(&replies);
    assert_eq!(s.get("<error>"), None, "{s:?}");
    assert!(s.contains_key("n1p1") && s.contains_key("n2p1"), "{s:?}");
    // The agent chose tc on the veth uplink, said why, and nothing was lost.
    assert!(
        e.agents[0]
            .logs()
            .contains("XDP would stop GRO/GSO aggregation"),
        "{}",
        e.agents[0].logs()
    );
    let st = e.agents[0].status();
    let up = uplink(&st);
    assert_eq!(
        (up["role"].as_str(), up["mode"].as_str()),
        (Some("uplink"), Some("tc")),
        "{st:#}"
    );
    assert!(up["reason"].as_str().unwrap().starts_with("veth"), "{st:#}");
    assert_eq!(e.agents[0].counter("drop_xdp_tx_error"), 0);
}

#[test]
fn forced_native_xdp_on_bare_veth_uplinks_counts_tx_errors_and_falls_back_to_tc() {
    let e = env_with(Some("native"), false);
    assert!(
        e.agents[0].logs().contains("XDP_TX loses frames there"),
        "no warning at attach:
{}",
        e.agents[0].logs()
    );
    // Flows to the remote endpoint leave through XDP_TX, which the veth drops; each lost
    // frame is counted and the device falls back to tc, so no connection is lost (the SYN
    // retransmit goes through tc).
    let replies = nodeport_connections(&e, 200);
    let s = spread(&replies);
    assert_eq!(s.get("<error>"), None, "{s:?}");
    assert!(s.contains_key("n2p1"), "{s:?}");
    let lost = e.agents[0].counter("drop_xdp_tx_error");
    assert!(lost > 0, "XDP_TX errors were not counted");
    let st = e.agents[0].status();
    let up = uplink(&st);
    assert_eq!(up["mode"], "xdp-native+tc", "{st:#}");
    assert_eq!(up["xdp_tx_fallback"], true, "{st:#}");
    assert!(up["xdp_tx_errors"].as_u64().unwrap() >= 1, "{st:#}");
    assert!(st["warnings"].to_string().contains("XDP_TX lost"), "{st:#}");
    xlb_tests::traffic::eventually(Duration::from_secs(10), || {
        e.agents[0]
            .logs()
            .contains("XDP_TX lost frames on this device")
            .then_some(())
    })
    .expect("no warning in the log");
    // The metric, labelled with the device.
    let metrics = e.cluster.nodes[0]
        .ns
        .run(|| http_get(SocketAddr::from(([127, 0, 0, 1], 10249)), "/metrics").map(|(_, b)| b));
    let metrics = metrics.expect("metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("xlb_xdp_tx_errors_total{device=\"eth0\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

fn nodeport_and_load_balancers(e: &Env) {
    let (client, caddr) = (&e.cluster.clients[0].0, e.cluster.clients[0].1);
    // NodePort on node 1, endpoints on both nodes: the local one sees the client, the
    // remote one sees node 1 (SNAT); every reply comes from the address dialled.
    let to = SocketAddr::from((node_ip(0), NP));
    let replies = tcp_from(client, to, 60);
    let s = spread(&replies);
    assert!(s.contains_key("n1p1") && s.contains_key("n2p1"), "{s:?}");
    for r in replies.iter().flatten() {
        assert_eq!(r.from, to);
        let expect = if r.backend == "n1p1" {
            IpAddr::V4(caddr)
        } else {
            IpAddr::V4(node_ip(0))
        };
        assert_eq!(ip(r), expect, "{} saw {}", r.backend, r.seen_from);
    }
    // The same NodePort on node 2.
    let to2 = SocketAddr::from((node_ip(1), NP));
    assert!(
        tcp_from(client, to2, 20)
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.from == to2))
    );

    // LoadBalancer, externalTrafficPolicy Cluster, endpoints only on node 2, entering node 1:
    // SNATed to node 1, replies return through it.
    let to = SocketAddr::from((LB_CLUSTER, 80));
    let replies = tcp_from(client, to, 30);
    assert!(
        replies.iter().all(|r| r
            .as_ref()
            .is_ok_and(|r| r.from == to && ip(r) == IpAddr::V4(node_ip(0)))),
        "{:?}",
        spread(&replies)
    );

    // The same service through its externalIP.
    let to = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 20), 80));
    let replies = tcp_from(client, to, 10);
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.from == to)),
        "{:?}",
        spread(&replies)
    );

    // LoadBalancer, externalTrafficPolicy Local, endpoint on node 2 only: through node 2 the
    // client address is preserved; node 1 has no local endpoint and drops (counted).
    e.cluster.route_via(0, "203.0.113.10/32", 1);
    let to = SocketAddr::from((LB_LOCAL, 80));
    let replies = tcp_from(client, to, 20);
    assert!(
        replies.iter().all(|r| r
            .as_ref()
            .is_ok_and(|r| r.backend == "n2p1" && ip(r) == IpAddr::V4(caddr))),
        "{:?}",
        spread(&replies)
    );
    e.cluster.route_via(0, "203.0.113.10/32", 0);
    let dropped = client.run(move || tcp_request(to, Duration::from_millis(700)));
    assert!(
        dropped.is_err(),
        "node 1 forwarded an eTP=Local service without local endpoints"
    );
    let stats = e.agents[0].cli(&["service", "list", "-o", "json"]);
    assert!(stats.contains("default/lbl:http/TCP (local)"), "{stats}");
    let counters = xlb_tests::netns::sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &format!("{}/xlb_counters", e.agents[0].bpffs.display()),
    ]);
    let v: serde_json::Value = serde_json::from_str(&counters).unwrap();
    let idx = u64::from(lb_common::counter::DROP_BASE + lb_common::drop_reason::NO_LOCAL_BACKEND);
    let drops: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["formatted"]["key"] == idx)
        .map_or(0, |e| {
            e["formatted"]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["value"].as_u64().unwrap())
                .sum()
        });
    assert!(drops >= 1, "no-local-backend drops not counted");

    // healthCheckNodePort: 503 where the service has no local endpoint, 200 + count where it has.
    let (st1, _) = client
        .run(|| http_get(SocketAddr::from((node_ip(0), 32000)), "/"))
        .unwrap();
    let (st2, body) = client
        .run(|| http_get(SocketAddr::from((node_ip(1), 32000)), "/"))
        .unwrap();
    assert_eq!((st1, st2), (503, 200), "{body}");
    assert!(body.contains("\"localEndpoints\":1"), "{body}");
}

#[test]
fn source_ranges_affinity_and_cross_node_maglev() {
    let e = env();
    let (c0, c1) = (&e.cluster.clients[0].0, &e.cluster.clients[1].0);
    // loadBalancerSourceRanges: 192.168.100.100/32 allowed, .101 refused.
    let to = SocketAddr::from((LB_RANGES, 80));
    assert!(
        c0.run(move || tcp_request(to, Duration::from_secs(2)))
            .is_ok()
    );
    assert!(
        c1.run(move || tcp_request(to, Duration::from_millis(700)))
            .is_err()
    );

    // ClientIP affinity: every connection of one client lands on one backend; ten client
    // addresses spread.
    for k in 0..10u8 {
        c0.ip(&[
            "addr",
            "add",
            &format!("192.168.100.{}/24", 150 + k),
            "dev",
            "eth0",
        ]);
    }
    let to = SocketAddr::from((node_ip(0), AFF_NP));
    let per_client: BTreeMap<u8, BTreeSet<String>> = c0.run(move || {
        (0..10u8)
            .map(|k| {
                let src = SocketAddr::from((Ipv4Addr::new(192, 168, 100, 150 + k), 0));
                let names = (0..8)
                    .map(|_| {
                        let s = socket2_connect(src, to);
                        s.map_or_else(|e| format!("<{e}>"), |r| r.backend)
                    })
                    .collect();
                (k, names)
            })
            .collect()
    });
    for (k, names) in &per_client {
        assert_eq!(names.len(), 1, "client .{} spread over {names:?}", 150 + k);
    }
    let distinct: BTreeSet<&String> = per_client.values().flatten().collect();
    assert!(distinct.len() >= 2, "ten clients all on {distinct:?}");

    // The same UDP flow entering node 1 (SNATed) or node 2 (local) picks the same backend:
    // both nodes build the same Maglev table with the shared seed.
    let to = SocketAddr::from((LB_CLUSTER, 53));
    let mut same = 0;
    for port in 42000..42010u16 {
        let mut picks = Vec::new();
        for node in [0, 1] {
            e.cluster.route_via(0, "203.0.113.11/32", node);
            let r = c0.run(move || {
                let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 256];
                for _ in 0..3 {
                    s.send_to(b"q", to).unwrap();
                    if let Ok((n, _)) = s.recv_from(&mut buf) {
                        return String::from_utf8_lossy(&buf[..n])
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                    }
                }
                "<no answer>".to_owned()
            });
            picks.push(r);
        }
        if picks[0] == picks[1] {
            same += 1;
        }
    }
    assert_eq!(same, 10, "flows picked different backends on the two nodes");
}

/// One TCP request from a chosen local address.
fn socket2_connect(src: SocketAddr, to: SocketAddr) -> std::io::Result<Reply> {
    use std::io::Read as _;
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a fresh descriptor owned by the returned stream.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = std::net::TcpStream::from_raw_fd(fd);
        let SocketAddr::V4(v4) = src else {
            unreachable!()
        };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let SocketAddr::V4(t4) = to else {
            unreachable!()
        };
        let ta = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: t4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(t4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // Non-blocking connect bounded by a 2 s poll: a dropped SYN must not hang the test.
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let rc = libc::connect(
            fd,
            (&raw const ta).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(std::io::Error::last_os_error());
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        if libc::poll(&raw mut pfd, 1, 2000) != 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ));
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as u32;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        );
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
        libc::fcntl(fd, libc::F_SETFL, flags);
        s
    };
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let mut it = text.split_whitespace();
    Ok(Reply {
        backend: it.next().unwrap_or_default().to_owned(),
        seen_from: it.next().and_then(|s| s.parse().ok()).unwrap_or(src),
        from: to,
    })
}

#[test]
fn internal_policy_hairpin_and_icmp_errors() {
    let e = env();
    let pod = &e.cluster.nodes[0].pods[0];
    // internalTrafficPolicy Local: pods on node 1 only reach node 1's endpoint.
    let s = spread(&tcp_from(&pod.ns, SocketAddr::from((ITP_VIP, 80)), 40));
    assert_eq!(s.get("n1p1"), Some(&40), "{s:?}");

    // Hairpin: the pod reaches its own Service and is picked: the connection works, and the
    // pod sees it coming from the hairpin address, not from itself.
    let replies = tcp_from(&pod.ns, SocketAddr::from((HAIRPIN_VIP, 80)), 10);
    for r in &replies {
        let r = r.as_ref().expect("hairpin connection");
        assert_eq!(r.backend, "n1p0");
        assert_eq!(r.from, SocketAddr::from((HAIRPIN_VIP, 80)));
        assert_eq!(ip(r), IpAddr::V4(Ipv4Addr::new(169, 254, 42, 1)));
    }

    // ICMP port unreachable from a backend on the other node (nothing listens on its UDP
    // 5999) is translated on node 1's uplink: the pod's socket, connected to the VIP, gets
    // "connection refused" (an untranslated error would be ignored and time out).
    let to = SocketAddr::from((ICMP_VIP, 53));
    let err = pod.ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        s.send(b"q").unwrap();
        s.recv(&mut buf).map(|_| ()).err().map(|e| e.kind())
    });
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionRefused));
}
