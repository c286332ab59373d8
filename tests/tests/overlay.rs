//! Overlay CNIs: two nodes whose pods reach each other over VXLAN (flannel's default mode,
//! built with `ip link` as flannel does). A pod on node 1 reaches a ClusterIP whose backend is
//! on node 2; the backend's replies come back decapsulated on `flannel.1`, where the agent
//! must reverse-translate them (the overlay device is one of its `--devices`).

use std::net::SocketAddr;

use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, unique_tag},
    topology::{Cluster, node_ip},
    traffic::{Servers, requests_from_cgroup, spread, tcp_requests, udp_requests},
};

const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);

#[test]
fn a_pod_reaches_a_backend_on_another_node_over_vxlan_tcp_and_udp_with_and_without_socket_lb() {
    require_root();
    let tag = unique_tag();
    let mut cluster = Cluster::with_vxlan(&tag, 2);
    cluster.nodes[0].add_pod(0);
    cluster.nodes[1].add_pod(1);
    let backend = &cluster.nodes[1].pods[0];
    let mut servers = Servers::new();
    servers.tcp(&backend.ns, SocketAddr::from((backend.ip, 8080)), "remote");
    servers.udp(&backend.ns, SocketAddr::from((backend.ip, 5353)), "remote");
    let ports = [Port::HTTP, Port::DNS];
    let dir = WorkDir::new(&tag);
    let file = dir.write(
        "services.yaml",
        &docs(&[
            service("web", VIP, &ports, ""),
            slice(
                "web-1",
                "web",
                &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
                &[Ep::ready(backend.ip, "n2")],
            ),
        ]),
    );
    let mut agents = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let pins = PinDir::new(&format!("{tag}-{}", node.name));
        let ip = node_ip(i).to_string();
        let agent = Agent::start(
            &node.ns,
            &pins,
            &[
                "--services",
                file.to_str().expect("path"),
                "--node-name",
                &node.name,
                "--node-ip",
                &ip,
                "--devices",
                "eth0,flannel.*",
                "--pod-devices",
                "xp*",
            ],
        );
        agent.wait_active("default/web:dns/UDP", 1);
        agents.push((agent, pins));
    }
    let client = &cluster.nodes[0].pods[0];
    // Without socket LB (the test's own threads are outside the agent's cgroup): tc on the
    // pod device translates, the reply is reverse-translated on flannel.1.
    let tcp = tcp_requests(&client.ns, SocketAddr::from((VIP, 80)), 20);
    let udp = udp_requests(&client.ns, SocketAddr::from((VIP, 53)), 20);
    for (proto, replies, port) in [("tcp", &tcp, 80), ("udp", &udp, 53)] {
        let s = spread(replies);
        assert_eq!(
            s.get("remote"),
            Some(&20),
            "{proto} without socket LB: {s:?}"
        );
        assert!(
            replies.iter().all(|r| r
                .as_ref()
                .is_ok_and(|r| r.from == SocketAddr::from((VIP, port)))),
            "{proto}: replies from the ClusterIP"
        );
    }
    // With socket LB: a process of the pod in node 1's cgroup.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlb-test-client"));
    let (agent, pins) = &agents[0];
    let before = agent.counter("sock_xlate");
    for (mode, port) in [("--tcp", 80), ("--udp", 53)] {
        let to = SocketAddr::from((VIP, port));
        let replies = requests_from_cgroup(bin, mode, &client.ns, &pins.cgroup, to, 10);
        assert!(
            replies.iter().all(|r| r
                .as_ref()
                .is_ok_and(|r| r.backend == "remote" && r.from == to)),
            "{mode} with socket LB: {replies:?}"
        );
    }
    assert_eq!(
        agent.counter("sock_xlate") - before,
        10,
        "the TCP connects, at the socket"
    );
    drop(servers);
}
