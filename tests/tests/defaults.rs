//! Safe defaults, tried the way users start xlb: `ip netns exec` (a private mount namespace)
//! keeps the pins on the host so the datapath outlives the agent, and `xlb status` tells a
//! running, a stopped and a never-started set-up apart.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir, in_netns, xlb_bin},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, sh, unique_tag},
    topology::Node,
    traffic::{Conn, Servers, spread, tcp_ping_once},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn web(eps: &[Ep<'_>]) -> String {
    let ports = [Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }];
    docs(&[
        service("web", VIP, &ports, ""),
        slice("web-1", "web", &[("http", 8080, "TCP")], eps),
    ])
}

/// A node with a client pod and `n` backend pods serving long-lived TCP on 8080.
fn node(tag: &str, n: u8) -> (Node, Servers, Vec<Ep<'static>>) {
    let mut node = Node::new(tag, "n1", 1);
    for i in 0..=n {
        node.add_pod(i);
    }
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    (node, servers, eps)
}

/// `xlb status -o json --sample 0` as run from the host: (exit code, parsed output).
fn status(bpffs: &std::path::Path) -> (i32, serde_json::Value) {
    let out = Command::new(xlb_bin())
        .args(["status", "-o", "json", "--sample", "0", "--bpffs"])
        .arg(bpffs)
        .output()
        .expect("xlb status");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("xlb status: {e}: {text} {:?}", out.stderr));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn an_agent_started_with_ip_netns_exec_pins_on_the_host_and_its_datapath_survives_kill_9() {
    require_root();
    let tag = unique_tag();
    let (node, _servers, eps) = node(&tag, 3);
    let dir = WorkDir::new(&tag);
    let path = dir.write("services.yaml", &web(&eps));
    let pins = PinDir::new(&tag);
    // Exactly as a user types it; --cgroup names a cgroup of the host's mount namespace,
    // which `ip netns exec` hides.
    let mut agent = Agent::start_via_ip_netns_exec(
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
    agent.wait_for_log("maps synced", 1);
    let logs = agent.logs();
    assert!(logs.contains("pinning in the host's bpffs"), "{logs}");
    assert!(
        logs.contains("socket-level load balancing attached"),
        "the host's cgroup was not found: {logs}"
    );
    // The host's mount namespace sees the pins and the CLI reads them from there.
    assert!(pins.path.join("xlb_services").exists());
    agent.wait_active("default/web:http/TCP", 3);
    let (code, st) = status(&pins.path);
    assert_eq!(st["agent"]["state"], "running", "{st:#}");
    assert_eq!(st["agent"]["pins_via"], "host", "{st:#}");
    assert_eq!(st["agent"]["pid"], agent.pid().unwrap(), "{st:#}");
    assert_eq!(code, 0, "{st:#}");
    // And so does the CLI run the same way as the agent.
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &node.ns.name,
        xlb_bin().to_str().unwrap(),
        "service",
        "list",
        "--bpffs",
        pins.path.to_str().unwrap(),
    ]);
    assert!(out.contains("default/web:http/TCP"), "{out}");

    let vip = SocketAddr::from((VIP, 80));
    let client = &node.pods[0].ns;
    let mut conns: Vec<(Conn, String)> = client.run(move || {
        (0..120)
            .map(|_| {
                let mut c = Conn::open(vip, Duration::from_secs(3)).expect("connect");
                let b = c.ping().expect("ping").backend;
                (c, b)
            })
            .collect()
    });
    let check = |conns: &mut Vec<(Conn, String)>, when: &str| {
        for (i, (c, b)) in conns.iter_mut().enumerate() {
            let r = c
                .ping()
                .unwrap_or_else(|e| panic!("{when}: connection {i} (on {b}) failed: {e}"));
            assert_eq!(&r.backend, b, "{when}: connection {i} moved");
        }
    };

    // kill -9: nothing of the agent's mount namespace remains, the datapath stays.
    agent.kill9();
    let progs = sh(&["bpftool", "prog", "show"]);
    assert!(
        progs.contains("xlb_pod_ingress"),
        "no xlb program left:\n{progs}"
    );
    check(&mut conns, "agent killed");
    let gap: Vec<_> = client.run(move || {
        (0..30)
            .map(|_| tcp_ping_once(vip, Duration::from_secs(2)))
            .collect()
    });
    assert!(
        gap.iter().all(Result::is_ok),
        "new connections: {:?}",
        spread(&gap)
    );
    let (code, st) = status(&pins.path);
    assert_eq!(st["agent"]["state"], "not running", "{st:#}");
    assert_eq!(code, 3, "{st:#}");

    // A restart, the same way, adopts the pins.
    agent.restart();
    let logs = agent.logs();
    let last = &logs[logs.rfind("datapath loaded").unwrap()..];
    assert!(last.contains("adopted_services=1"), "{last}");
    check(&mut conns, "after restart");
    assert_eq!(status(&pins.path).1["agent"]["state"], "running");

    // SIGTERM: the message is what the pins show, and it is true.
    assert!(agent.stop(), "agent did not exit cleanly");
    let logs = agent.logs();
    assert!(
        logs.contains("the datapath stays pinned and keeps forwarding"),
        "{logs}"
    );
    check(&mut conns, "agent stopped");
    let (code, st) = status(&pins.path);
    assert_eq!(
        (code, st["agent"]["state"].as_str()),
        (3, Some("stopped")),
        "{st:#}"
    );
}

#[test]
fn status_tells_a_never_started_a_running_and_a_stopped_setup_apart() {
    require_root();
    let tag = unique_tag();
    // Never started.
    let none = std::path::PathBuf::from(format!("/sys/fs/bpf/xlbt-{tag}-none"));
    let (code, st) = status(&none);
    assert_eq!(
        (code, st["datapath"].as_str()),
        (4, Some("absent")),
        "{st:#}"
    );
    let text = Command::new(xlb_bin())
        .args(["status", "--sample", "0", "--bpffs"])
        .arg(&none)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("no xlb datapath is pinned"),
        "{text:?}"
    );

    let (node, _servers, eps) = node(&tag, 2);
    let dir = WorkDir::new(&tag);
    dir.write("services.yaml", &web(&eps));
    let path = dir.path.clone();
    let pins = PinDir::new(&tag);

    // Running with no device selected: said at start and by status.
    let mut agent = Agent::start(&node.ns, &pins, &["--services", path.to_str().unwrap()]);
    assert!(
        agent.logs().contains("no device has an xlb program"),
        "{}",
        agent.logs()
    );
    let (code, st) = status(&pins.path);
    assert_eq!(code, 1, "{st:#}");
    let warnings = st["warnings"].to_string();
    assert!(warnings.contains("no device has an xlb program"), "{st:#}");
    // explain refuses a device without a program instead of answering as if it were lo.
    let out = agent.cli_output(&[
        "explain",
        "--src",
        "10.244.1.10:40000",
        "--dst",
        "10.96.0.10:80",
        "--device",
        "xp0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no xlb program is attached"),
        "{out:?}"
    );
    assert!(agent.stop());

    // Running properly: every pod device in tc, the service programmed, no warnings.
    let mut agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active("default/web:http/TCP", 2);
    let (code, st) = status(&pins.path);
    assert_eq!(code, 0, "{st:#}");
    let a = &st["agent"];
    assert_eq!(a["state"], "running");
    assert_eq!(a["pid"], agent.pid().unwrap());
    assert_eq!(a["layout_version"], lb_common::LAYOUT_VERSION);
    assert_eq!(a["services"], 1, "{st:#}");
    assert!(a["uptime_secs"].as_u64().is_some());
    let devs = st["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 3, "{st:#}");
    for d in devs {
        assert_eq!(
            (
                d["role"].as_str(),
                d["mode"].as_str(),
                d["pinned"].as_bool()
            ),
            (Some("pod"), Some("tc"), Some(true)),
            "{d}"
        );
    }
    assert!(
        st["socket_lb"]
            .as_str()
            .is_some_and(|c| c.contains("xlbt-")),
        "{st:#}"
    );
    assert_eq!(st["socket_hooks_pinned"], true);
    assert!(st["maps"].to_string().contains("xlb_services"));

    // A broken file: a warning with the problem, the last good state in force.
    dir.write(
        "broken.yaml",
        "services:\n  - name: x\n    frontend: nope\n",
    );
    agent.wait_for_log("broken.yaml", 1);
    let (code, st) = wait_status(&pins.path, |st| {
        st["agent"]["source_problems"].as_u64() == Some(1)
    });
    assert_eq!(code, 1, "{st:#}");
    assert!(st["warnings"].to_string().contains("broken.yaml"), "{st:#}");
    std::fs::remove_file(dir.path.join("broken.yaml")).unwrap();

    // Stopped cleanly, then killed.
    assert!(agent.stop());
    let (code, st) = status(&pins.path);
    assert_eq!(
        (code, st["agent"]["state"].as_str()),
        (3, Some("stopped")),
        "{st:#}"
    );
    assert!(
        st["warnings"].to_string().contains("keeps forwarding"),
        "{st:#}"
    );
    agent.restart();
    agent.kill9();
    // The record goes stale when heartbeats stop (HEARTBEAT_STALE_SECS).
    let (code, st) = wait_status(&pins.path, |st| st["agent"]["state"] == "not running");
    assert_eq!(code, 3, "{st:#}");

    // The table form, as an operator reads it.
    let mut cmd = Command::new(xlb_bin());
    cmd.args(["status", "--sample", "0.2", "--bpffs"])
        .arg(&pins.path);
    in_netns(&mut cmd, &node.ns.path());
    let text = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    for want in [
        "agent:      not running",
        "xp0",
        "pod-facing device",
        "drops:",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
}

/// Polls `xlb status` (up to 20 s) until `ok` holds.
fn wait_status(
    bpffs: &std::path::Path,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> (i32, serde_json::Value) {
    let mut last = status(bpffs);
    for _ in 0..200 {
        if ok(&last.1) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = status(bpffs);
    }
    panic!("status never got there: {:#}", last.1);
}
