//! The benchmarks as users start them: flags checked by clap with the flag named, and an
//! end-to-end run interrupted with Ctrl-C (SIGINT) leaving no namespace, agent, pin or cgroup
//! behind.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use xlb_tests::netns::require_root;

const E2E: &str = env!("CARGO_BIN_EXE_xlb-bench-e2e");
const DATAPATH: &str = env!("CARGO_BIN_EXE_xlb-bench-datapath");
const SYNC: &str = env!("CARGO_BIN_EXE_xlb-bench-sync");

/// Runs `bin args`; returns (exit code, stderr).
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run benchmark");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    for (bin, args, needles) in [
        (
            E2E,
            &["--modes", "no-LB,ipvs"][..],
            &["--modes", "ipvs"][..],
        ),
        (E2E, &["--modes", "xlb"], &["--modes", "no-LB"]),
        (E2E, &["--reps", "0"], &["--reps", "minimum"]),
        (E2E, &["--sizes", "1,x"], &["--sizes", "x"]),
        (E2E, &["--speed", "1"], &["--speed"]),
        (DATAPATH, &["--rounds", "0"], &["--rounds"]),
        (DATAPATH, &["--services", "ten"], &["--services"]),
        (SYNC, &["--endpoints", "0"], &["--endpoints"]),
    ] {
        let (code, err) = run(bin, args);
        assert_eq!(code, Some(2), "{bin} {args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{bin} {args:?} does not name {n}: {err}");
        }
    }
    // --help works without root and lists the flags.
    let out = Command::new(E2E).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("--pairs") && help.contains("--cpus"));
}

/// Names under `dir` starting with `prefix`.
fn entries(dir: &str, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Network namespaces starting with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", needle])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn ctrl_c_during_a_run_removes_its_namespaces_agents_and_pins() {
    require_root();
    let mut child = Command::new(E2E)
        .args(["--modes", "no-LB,xlb", "--sizes", "1", "--reps", "1"])
        .env("XLB_BIN", xlb_tests::agent::xlb_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start xlb-bench-e2e");
    let prefix = format!("xlbt-{}x", child.id());
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("bench: {line}");
            if line == "beds ready" {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(90));
    if ready.is_err() {
        let _ = child.kill();
        panic!("the benchmark did not set up its beds in 90 s");
    }
    // What a run holds while it measures: the beds' namespaces, the agent and its pins.
    let before = (
        namespaces(&prefix),
        entries("/sys/fs/bpf", &prefix),
        processes(&format!("/sys/fs/bpf/{prefix}")),
    );
    assert!(
        before.0.len() >= 10 && !before.1.is_empty() && !before.2.is_empty(),
        "a running benchmark: {before:?}"
    );
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the benchmark did not exit within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cgroup = lb_userspace::bpf::sock::cgroup2_mount().expect("cgroup2");
    let after = (
        namespaces(&prefix),
        entries("/sys/fs/bpf", &prefix),
        processes(&format!("/sys/fs/bpf/{prefix}")),
        entries(cgroup.to_str().expect("path"), &prefix),
    );
    // Remove whatever is left so a failure here does not leak into other tests.
    xlb_benches::cleanup::remove_leftovers(&prefix);
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    assert!(
        after.0.is_empty() && after.1.is_empty() && after.2.is_empty() && after.3.is_empty(),
        "left behind (namespaces, pins, agents, cgroups): {after:?}"
    );
}
