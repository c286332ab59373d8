//! ClusterIP services through the real agent and real traffic in network namespaces.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir},
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{Servers, eventually, spread, tcp_requests, udp_requests},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

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

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("services.yaml");
    // Write-then-rename so the agent never reads a half-written file.
    let tmp = dir.join(".services.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

fn wait_backends(agent: &Agent, name: &str, active: usize) {
    let ok = eventually(Duration::from_secs(15), || {
        let v = agent.services();
        let svc = v.as_array()?.iter().find(|s| s["name"] == name)?;
        let n = svc["backends"]
            .as_array()?
            .iter()
            .filter(|b| b["state"] == "active")
            .count();
        (n == active).then_some(())
    });
    assert!(
        ok.is_some(),
        "{name}: expected {active} active backends; service list:\n{}",
        agent.cli(&["service", "list"])
    );
}

#[test]
fn tcp_and_udp_reach_every_ready_backend_and_replies_come_from_the_vip() {
    let (tag, node) = cluster(3);
    let dir = tempdir(&tag);
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
    let path = write(&dir, &yaml);
    let pins = PinDir::new(&tag);
    let agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--services",
            path.to_str().unwrap(),
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
        ],
    );
    wait_backends(&agent, "default/web:http/TCP", 3);
    wait_backends(&agent, "default/web:dns/UDP", 3);

    let client = &node.pods[0];
    let tcp = tcp_requests(&client.ns, SocketAddr::from((VIP, 80)), 300);
    let udp = udp_requests(&client.ns, SocketAddr::from((VIP, 53)), 300);
    for (proto, replies) in [("tcp", &tcp), ("udp", &udp)] {
        let s = spread(replies);
        assert!(!s.contains_key("<error>"), "{proto}: failures {s:?}");
        assert_eq!(
            s.keys().cloned().collect::<BTreeSet<_>>(),
            ["b1", "b2", "b3"].iter().map(|s| s.to_string()).collect(),
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

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xlbt-{tag}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}
