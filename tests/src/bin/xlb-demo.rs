//! `cargo xtask demo`: a throw-away node with a client pod and three backend pods, the agent
//! started on the bundled example (`deploy/examples/demo.yaml`), a few hundred TCP and UDP
//! requests to the ClusterIP, how they spread, then the operator's view: `xlb service list`,
//! `xlb explain` of one packet and `xlb stats`. Everything is removed at the end (also on
//! failure).

use std::net::{Ipv4Addr, SocketAddr};

use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{Servers, spread, tcp_requests, udp_requests},
};

const EXAMPLE: &str = include_str!("../../../deploy/examples/demo.yaml");
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REQUESTS: usize = 300;

fn main() {
    require_root();
    let tag = unique_tag();
    println!("== topology: node netns, client pod 10.244.1.10, backends 10.244.1.11-13");
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=3 {
        node.add_pod(i);
    }
    let mut servers = Servers::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp(
            &pod.ns,
            SocketAddr::from((pod.ip, 8080)),
            &format!("backend-{i}"),
        );
        servers.udp(
            &pod.ns,
            SocketAddr::from((pod.ip, 5353)),
            &format!("backend-{i}"),
        );
    }
    let dir = WorkDir::new(&format!("demo-{tag}"));
    let services = dir.write("demo.yaml", EXAMPLE);
    let pins = PinDir::new(&tag);
    println!(
        "== xlb agent --services {} --node-name node-1 --pod-devices xp*",
        services.display()
    );
    let mut agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--services",
            services.to_str().expect("utf-8 path"),
            "--node-name",
            "node-1",
            "--pod-devices",
            "xp*",
        ],
    );
    agent.wait_for_log("maps synced", 1);

    let client = &node.pods[0];
    for (proto, port) in [("TCP", 80u16), ("UDP", 53)] {
        let to = SocketAddr::from((VIP, port));
        let replies = if proto == "TCP" {
            tcp_requests(&client.ns, to, REQUESTS)
        } else {
            udp_requests(&client.ns, to, REQUESTS)
        };
        let from_vip = replies.iter().flatten().filter(|r| r.from == to).count();
        println!("== {REQUESTS} {proto} requests to {to} (each from a new source port):");
        for (backend, n) in spread(&replies) {
            println!("   {backend:<12} {n:>4}  {}", "#".repeat(n * 40 / REQUESTS));
        }
        println!("   replies that came from the VIP: {from_vip}/{REQUESTS}");
    }
    for args in [
        &["service", "list"][..],
        &[
            "explain",
            "--device",
            "xp0",
            "--proto",
            "tcp",
            "--src",
            "10.244.1.10:40000",
            "--dst",
            "10.96.0.10:80",
        ],
        &["stats"],
    ] {
        println!("== xlb {}", args.join(" "));
        print!("{}", agent.cli(args));
    }
    agent.stop();
    drop(servers);
    drop(dir);
    println!("== done; namespaces and pins removed");
}
