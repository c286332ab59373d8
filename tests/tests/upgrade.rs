//! Upgrading from the previous release with traffic running: the previous layout's agent (built
//! from its commit in this repository's history) programs a node and carries long-lived TCP
//! flows through tc conntrack; it stops, this release's agent starts on the same pins, migrates
//! the datapath in place, and every flow keeps its backend while new connections keep working.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir, xlb_bin},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{Conn, Servers, tcp_ping_once},
};

/// The last commit of map layout v4, the layout before this release's.
const PREVIOUS: &str = "0967348";
/// Its layout version.
const PREVIOUS_LAYOUT: u32 = lb_common::LAYOUT_VERSION - 1;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB: &str = "default/web:http/TCP";
/// Long-lived flows carried across the upgrade.
const FLOWS: usize = 40;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The previous release's `xlb`, built once from its commit (kept under target/previous/).
fn previous_release() -> PathBuf {
    let root = root();
    let out = root.join(format!("target/previous/{PREVIOUS}"));
    let bin = out.join("xlb");
    if bin.exists() {
        return bin;
    }
    let has = Command::new("git")
        .args(["cat-file", "-e", &format!("{PREVIOUS}^{{commit}}")])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has,
        "commit {PREVIOUS} (the previous layout's release) is not in this checkout: the \
         upgrade test needs the repository's history (a full, not shallow, clone)"
    );
    let src = out.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("create source dir");
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git archive {PREVIOUS} | tar -x -C '{}'",
            src.display()
        ))
        .current_dir(&root)
        .status()
        .expect("git archive");
    assert!(archive.success(), "git archive {PREVIOUS} failed");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let build = Command::new(cargo)
        .args(["build", "-q", "-p", "lb-userspace", "--bin", "xlb"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", out.join("target"))
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cargo build of the previous release");
    assert!(build.success(), "building {PREVIOUS} failed");
    std::fs::copy(out.join("target/debug/xlb"), &bin).expect("copy the previous xlb");
    bin
}

#[test]
fn an_upgrade_from_the_previous_layout_keeps_every_flow_and_its_backend() {
    require_root();
    let previous = previous_release();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=2 {
        node.add_pod(i);
    }
    let mut servers = Servers::new();
    let mut eps = Vec::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
        eps.push(Ep::ready(pod.ip, "n1"));
    }
    let port = Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    };
    let dir = WorkDir::new(&tag);
    let path = dir.write(
        "services.yaml",
        &docs(&[
            service("web", VIP, &[port], ""),
            slice("web-1", "web", &[("http", 8080, "TCP")], &eps),
        ]),
    );
    let pins = PinDir::new(&tag);
    let services = path.to_str().expect("path");
    // Socket-level translation off: every flow goes through tc and its conntrack.
    let args = [
        "--services",
        services,
        "--node-name",
        "n1",
        "--pod-devices",
        "xp*",
        "--cgroup",
        "off",
    ];
    let mut agent = Agent::start_binary(&previous, &node.ns, &pins, &args, "maps synced");
    let (_, version, _) = {
        let o = Command::new(&previous)
            .arg("--version")
            .output()
            .expect("previous --version");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            (),
        )
    };
    assert!(version.starts_with("xlb "), "{version}");

    // Long-lived flows through the previous release's datapath.
    let to = SocketAddr::from((VIP, 80));
    let mut conns: Vec<(Conn, String)> = node.pods[0].ns.run(move || {
        (0..FLOWS)
            .map(|_| {
                let mut c = Conn::open(to, Duration::from_secs(2)).expect("connect");
                let b = c.ping().expect("ping").backend;
                (c, b)
            })
            .collect()
    });
    let check = |conns: &mut Vec<(Conn, String)>, when: &str| {
        for (i, (c, backend)) in conns.iter_mut().enumerate() {
            let r = c
                .ping()
                .unwrap_or_else(|e| panic!("{when}: flow {i} broke: {e}"));
            assert_eq!(&r.backend, backend, "{when}: flow {i} moved");
        }
    };
    check(&mut conns, "before the upgrade");

    // The upgrade: the old agent stops (its datapath stays and forwards), the new one starts.
    assert!(agent.stop(), "the previous agent did not stop cleanly");
    check(&mut conns, "between the agents");
    let pings = |n: usize| -> usize {
        node.pods[0].ns.run(move || {
            (0..n)
                .filter(|_| tcp_ping_once(to, Duration::from_secs(2)).is_ok())
                .count()
        })
    };
    assert_eq!(pings(5), 5, "new connections between the agents");
    agent.set_binary(&xlb_bin());
    agent.restart();
    let logs = agent.logs();
    assert!(
        logs.contains(&format!(
            "migrated the datapath from layout v{PREVIOUS_LAYOUT} to v{}",
            lb_common::LAYOUT_VERSION
        )),
        "{logs}"
    );
    agent.wait_active(WEB, 2);
    // Both entries of every flow were carried over.
    let migrated: usize = logs
        .lines()
        .find(|l| l.contains("migrated the datapath"))
        .and_then(|l| l.split("flows=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        migrated >= 2 * FLOWS,
        "{migrated} entries migrated:\n{logs}"
    );

    // Every flow still goes to its backend; new ones are balanced.
    check(&mut conns, "after the upgrade");
    assert_eq!(pings(20), 20, "new connections after the upgrade");
    // No packet of them met a datapath without its state (which would re-pick a backend: the
    // same one while the backends are unchanged, but an SNAT flow would be reset).
    assert_eq!(
        agent.counter("ct_missing"),
        0,
        "flows lost their state in the upgrade"
    );
    // The flows are in this layout's confirmed table, the old table is gone.
    let flows = agent.json(&["conntrack", "list", "--client", "10.244.1.10"]);
    let confirmed = flows
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["confirmed"] == true && r["state"] == "established")
        .count();
    assert!(confirmed >= FLOWS, "{confirmed} confirmed flows: {flows}");
    assert!(
        !pins
            .path
            .join(format!("xlb_ct_v{PREVIOUS_LAYOUT}"))
            .exists()
    );
    let status = agent.status();
    assert_eq!(
        status["agent"]["layout_version"],
        lb_common::LAYOUT_VERSION,
        "{status}"
    );
    drop(conns);
    drop(servers);
}
