//! The commands the README and docs/ show, run as written: every `xlb` line of their `sh` code
//! blocks (a `kubectl ... exec ds/xlb --` prefix dropped) is executed through `sh` in a node
//! namespace where the README's standalone `xlb agent` line runs, with `/etc/xlb/` standing for
//! the test's file directory and `XLB_BPFFS` for its pin directory. A documented flag that no
//! longer parses, or a command that fails on a working set-up, fails here.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir, xlb_bin},
    files::WorkDir,
    netns::{Netns, require_root, unique_tag},
    topology::Node,
    traffic::{Servers, tcp_ping_once},
};

/// The files whose code blocks are run.
const DOCS: [&str; 5] = [
    "README.md",
    "docs/kubernetes.md",
    "docs/standalone.md",
    "docs/troubleshooting.md",
    "docs/upgrading.md",
];

/// A documented `xlb` command line: where it is, and the line.
struct Documented {
    file: &'static str,
    line: usize,
    command: String,
}

/// Every `xlb ...` line of the `sh` code blocks of `DOCS`, comments removed.
fn documented() -> Vec<Documented> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for file in DOCS {
        let text =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut in_sh = false;
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if let Some(lang) = l.strip_prefix("```") {
                in_sh = !in_sh && (lang == "sh" || lang == "bash");
                continue;
            }
            if !in_sh {
                continue;
            }
            let l = l.split(" #").next().unwrap_or("").trim();
            let cmd = l.rsplit_once(" -- xlb ").map_or(l, |(_, rest)| rest);
            let cmd = if l.contains(" -- xlb ") {
                format!("xlb {cmd}")
            } else {
                cmd.to_owned()
            };
            if cmd.starts_with("xlb ") {
                out.push(Documented {
                    file,
                    line: i + 1,
                    command: cmd,
                });
            }
        }
    }
    out
}

/// Runs `command` through `sh` in `ns` as a user's shell would, `xlb` on the PATH.
fn shell(ns: &Netns, pins: &Path, command: &str) -> std::process::Output {
    let bin_dir = xlb_bin().parent().expect("binary directory").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", command])
        .env("PATH", path)
        .env("XLB_BPFFS", pins)
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

#[test]
fn every_documented_command_runs_as_written() {
    require_root();
    let commands = documented();
    assert!(
        commands.len() >= 20,
        "only {} documented commands found: the extraction broke",
        commands.len()
    );

    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    node.add_pod(0);
    node.add_pod(1);
    // Pod devices as Calico names them (docs/troubleshooting.md explains on `cali1234`).
    node.ns.ip(&["link", "set", "xp0", "down"]);
    node.ns.ip(&["link", "set", "xp0", "name", "cali1234"]);
    node.ns.ip(&["link", "set", "cali1234", "up"]);
    node.ns
        .ip(&["route", "replace", "10.244.1.10/32", "dev", "cali1234"]);
    // The uplink of the README's agent line, `--devices eth0 --node-ip 192.0.2.1`.
    let outside = Netns::new(&format!("xlbt-{tag}-out"));
    node.ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    node.ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    node.ns.ip(&["link", "set", "eth0", "up"]);
    outside.ip(&["link", "set", "eth0", "up"]);

    // The services of the docs' examples: web on 10.96.0.10:80, DNS on 10.96.0.10:53.
    let dir = WorkDir::new(&tag);
    dir.write(
        "services.yaml",
        "services:\n\
         \x20 - name: web\n\
         \x20   frontend: 10.96.0.10:80/tcp\n\
         \x20   backends: [10.244.1.11:8080]\n\
         \x20 - name: dns\n\
         \x20   frontend: 10.96.0.10:53/udp\n\
         \x20   backends: [10.244.1.11:53]\n",
    );
    let mut servers = Servers::new();
    servers.tcp_persistent(
        &node.pods[1].ns,
        SocketAddr::from((node.pods[1].ip, 8080)),
        "b1",
    );
    let etc = format!("{}/", dir.path.display());
    let with_files = |c: &str| c.replace("/etc/xlb/", &etc);

    // The agent: the README's standalone line (pod devices added, which it has none of).
    let agent_line = commands
        .iter()
        .find(|d| d.file == "README.md" && d.command.starts_with("xlb agent --services"))
        .expect("README shows how to start the agent");
    let agent_args = with_files(&agent_line.command["xlb agent ".len()..]);
    let mut args: Vec<&str> = agent_args.split_whitespace().collect();
    args.extend(["--pod-devices", "cali*,xp*"]);
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start_via_ip_netns_exec(&node.ns, &pins, &args);
    agent.wait_active("web", 1);
    // A flow for `conntrack list` and `explain` to find.
    let to = SocketAddr::from(([10, 96, 0, 10], 80));
    node.pods[0]
        .ns
        .run(move || tcp_ping_once(to, Duration::from_secs(2)))
        .expect("the documented service answers");

    let mut failures = Vec::new();
    let mut ran = 0;
    for d in &commands {
        let cmd = with_files(&d.command);
        let where_ = format!("{}:{}: {}", d.file, d.line, d.command);
        if cmd.starts_with("xlb agent --services") {
            continue; // running above
        }
        if cmd == "xlb agent --cleanup" {
            continue; // run last
        }
        ran += 1;
        if cmd.starts_with("xlb monitor") {
            // Streams until stopped: it must still be running after a second, and say nothing
            // on stderr.
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node.ns.name,
                    "sh",
                    "-c",
                    &format!("exec {cmd}"),
                ])
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        xlb_bin().parent().expect("dir").display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("XLB_BPFFS", &pins.path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn monitor");
            std::thread::sleep(Duration::from_secs(1));
            match child.try_wait() {
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                status => {
                    let out = child.wait_with_output().expect("monitor output");
                    failures.push(format!(
                        "{where_}: exited {status:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            continue;
        }
        let out = shell(&node.ns, &pins.path, &cmd);
        let code = out.status.code();
        // `xlb status` exits 1 when it has warnings (e.g. the uplink's peer), which is a
        // working set-up; everything else must succeed.
        let ok = code == Some(0) || (cmd.starts_with("xlb status") && code == Some(1));
        if !ok || out.stdout.is_empty() {
            failures.push(format!(
                "{where_}: exit {code:?}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(ran >= 15, "only {ran} commands ran");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // Last, the documented clean start: it removes the datapath.
    assert!(commands.iter().any(|d| d.command == "xlb agent --cleanup"));
    agent.stop();
    let out = shell(&node.ns, &pins.path, "xlb agent --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !pins.path.join("xlb_services").exists(),
        "`xlb agent --cleanup` left the maps"
    );
    drop(servers);
}
