//! The real `xlb` binary under test: started inside a node namespace (only the network
//! namespace is switched, so bpffs stays visible), with its own pin directory, logs kept and
//! printed when a test fails.

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Path of the `xlb` binary: `$XLB_BIN`, or next to the test executable's target dir.
pub fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/xlb
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    let bin = dir.join("xlb");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p lb-userspace`) or set XLB_BIN",
        bin.display()
    );
    bin
}

/// A pin directory that is removed (datapath detached) when dropped, with the test's own
/// cgroup: agents started on it attach their socket programs there (never to the machine's
/// root cgroup, which every other test and process shares).
pub struct PinDir {
    pub path: PathBuf,
    /// `<cgroup2 mount>/xlbt-<tag>`: the processes of this test's "node".
    pub cgroup: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/xlbt-<tag>` and its cgroup.
    pub fn new(tag: &str) -> Self {
        let root = lb_userspace::bpf::sock::cgroup2_mount()
            .expect("no cgroup v2 mount: socket-level load balancing cannot be tested here");
        let cgroup = root.join(format!("xlbt-{tag}"));
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("creating {}: {e}", cgroup.display()));
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/xlbt-{tag}")),
            cgroup,
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        // A cgroup goes once its last process has exited (which may take a moment).
        for _ in 0..100 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("warning: {} not removed", self.cgroup.display());
    }
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
    pub bpffs: PathBuf,
    netns: PathBuf,
    args: Vec<String>,
    /// Capabilities the agent keeps (None: all of root's).
    caps: Option<Vec<u32>>,
    /// Started as a user would, with `ip netns exec` (its own mount namespace), rather than by
    /// entering only the network namespace.
    ip_netns_exec: bool,
    /// The `xlb` binary run (`xlb_bin()` unless a test runs another release).
    bin: PathBuf,
}

/// Capabilities of the DaemonSet in deploy/kubernetes: CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF.
pub const DAEMONSET_CAPS: &[u32] = &[12, 38, 39];
/// The highest capability number the kernel knows of (CAP_CHECKPOINT_RESTORE).
const CAP_LAST: u32 = 40;
/// CAP_SETPCAP: needed to shrink the bounding set, so dropped last.
const CAP_SETPCAP: u32 = 8;

fn spawn(
    bin: &Path,
    netns: &Path,
    log: &Path,
    args: &[String],
    caps: Option<&[u32]>,
    ip_netns_exec: bool,
) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = if ip_netns_exec {
        let name = netns
            .file_name()
            .and_then(|n| n.to_str())
            .expect("netns name");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", name]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .env("XLB_LOG", "info,lb_userspace=debug")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if !ip_netns_exec {
        in_netns(&mut cmd, netns);
    }
    if let Some(keep) = caps {
        limit_caps(&mut cmd, keep.to_vec());
    }
    cmd.spawn().expect("spawn xlb agent")
}

/// Makes `cmd` run with only the capabilities `keep` (bounding set shrunk before exec, so
/// root gets no others), like a container with `capabilities: {drop: [ALL], add: [...]}`.
fn limit_caps(cmd: &mut Command, keep: Vec<u32>) {
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec; runs after the
    // setns of `in_netns`, which still needs CAP_SYS_ADMIN.
    unsafe {
        cmd.pre_exec(move || {
            let drop = (0..=CAP_LAST)
                .filter(|c| !keep.contains(c) && *c != CAP_SETPCAP)
                .chain((!keep.contains(&CAP_SETPCAP)).then_some(CAP_SETPCAP));
            for cap in drop {
                if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes `cmd` run in the network namespace at `netns` (bpffs stays the host's).
pub fn in_netns(cmd: &mut Command, netns: &Path) {
    let ns = File::open(netns).expect("netns handle");
    // SAFETY: only async-signal-safe calls (setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd as _;
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd` start inside `cgroup` (cgroup v2).
pub fn in_cgroup(cmd: &mut Command, cgroup: &Path) {
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_encoded_bytes())
        .expect("path without NUL");
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec; writing
    // "0" moves the writing process.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if ok { Ok(()) } else { Err(err) }
        });
    }
}

impl Agent {
    /// Starts `xlb agent <args> --bpffs <pins>` in `node` and waits until it is ready.
    pub fn start(node: &Netns, pins: &PinDir, args: &[&str]) -> Self {
        let mut a = Self::spawn(node, pins, args);
        a.wait_for_log("agent ready", 1);
        a
    }

    /// Starts the agent of node `node_name` on the service files at `services`, attaching
    /// every pod device (`xp*`).
    pub fn start_on_node(node: &Netns, pins: &PinDir, services: &Path, node_name: &str) -> Self {
        Self::start_on_node_with(node, pins, services, node_name, &[])
    }

    /// `start_on_node` with more agent flags.
    pub fn start_on_node_with(
        node: &Netns,
        pins: &PinDir,
        services: &Path,
        node_name: &str,
        extra: &[&str],
    ) -> Self {
        let services = services.to_str().expect("utf-8 path");
        let mut args = vec![
            "--services",
            services,
            "--node-name",
            node_name,
            "--pod-devices",
            "xp*",
        ];
        args.extend_from_slice(extra);
        Self::start(node, pins, &args)
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        // (`ip netns exec` execs the command: the same process.)
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` to the agent.
    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Starts the agent without waiting for it to be ready.
    pub fn spawn(node: &Netns, pins: &PinDir, args: &[&str]) -> Self {
        Self::spawn_with_caps(node, pins, args, None)
    }

    /// Starts the agent as a user would, `ip netns exec <node> xlb agent <args> --bpffs
    /// <pins>` (a private mount namespace with a fresh /sys), and waits until it is ready.
    pub fn start_via_ip_netns_exec(node: &Netns, pins: &PinDir, args: &[&str]) -> Self {
        let mut a = Self::spawn_inner(node, pins, args, None, true, xlb_bin());
        a.wait_for_log("agent ready", 1);
        a
    }

    /// Starts the agent keeping only the capabilities `caps`, and waits until it is ready.
    pub fn start_with_caps(node: &Netns, pins: &PinDir, args: &[&str], caps: &[u32]) -> Self {
        let mut a = Self::spawn_with_caps(node, pins, args, Some(caps.to_vec()));
        a.wait_for_log("agent ready", 1);
        a
    }

    fn spawn_with_caps(node: &Netns, pins: &PinDir, args: &[&str], caps: Option<Vec<u32>>) -> Self {
        Self::spawn_inner(node, pins, args, caps, false, xlb_bin())
    }

    fn spawn_inner(
        node: &Netns,
        pins: &PinDir,
        args: &[&str],
        caps: Option<Vec<u32>>,
        ip_netns_exec: bool,
        bin: PathBuf,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("xlb-agent-{}.log", node.name));
        let _ = std::fs::remove_file(&log);
        let mut all: Vec<String> = vec!["agent".into(), "--bpffs".into()];
        all.push(pins.path.display().to_string());
        all.push("--healthz-addr".into());
        all.push("127.0.0.1:10256".into());
        if !args.contains(&"--cgroup") {
            all.push("--cgroup".into());
            all.push(pins.cgroup.display().to_string());
        }
        all.extend(args.iter().map(|s| (*s).to_owned()));
        Self {
            child: Some(spawn(
                &bin,
                &node.path(),
                &log,
                &all,
                caps.as_deref(),
                ip_netns_exec,
            )),
            log,
            bpffs: pins.path.clone(),
            netns: node.path(),
            args: all,
            caps,
            ip_netns_exec,
            bin,
        }
    }

    /// Like `start`, running the binary `bin` (another release), waiting for `ready` in its log.
    pub fn start_binary(
        bin: &Path,
        node: &Netns,
        pins: &PinDir,
        args: &[&str],
        ready: &str,
    ) -> Self {
        let mut a = Self::spawn_inner(node, pins, args, None, false, bin.to_owned());
        a.wait_for_log(ready, 1);
        a
    }

    /// The binary the next `restart` runs.
    pub fn set_binary(&mut self, bin: &Path) {
        self.bin = bin.to_owned();
    }

    /// The agent's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` appeared at least `count` times in the log (panics after 60 s).
    pub fn wait_for_log(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.logs().matches(needle).count() >= count {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "agent exited ({status}) before {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent: no {needle:?} after 60s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for exit; returns the exit status success.
    pub fn stop(&mut self) -> bool {
        self.signal(libc::SIGTERM);
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the agent with SIGKILL (no chance to clean anything).
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again with the same arguments (after `stop` or `kill9`), appending to
    /// the same log, and waits until it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        let before = self.logs().matches("agent ready").count();
        self.child = Some(spawn(
            &self.bin,
            &self.netns,
            &self.log,
            &self.args,
            self.caps.as_deref(),
            self.ip_netns_exec,
        ));
        self.wait_for_log("agent ready", before + 1);
    }

    /// Replaces one argument value for the next `restart` (e.g. another `--services`).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args[i + 1] = value.to_owned();
        } else {
            self.args.push(flag.to_owned());
            self.args.push(value.to_owned());
        }
    }

    /// Runs `xlb <args> --bpffs <pins>` (a CLI command) in the agent's network namespace and
    /// returns stdout; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "xlb {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like `cli`, but returns the whole outcome (status, stdout, stderr).
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args).output().expect("run xlb")
    }

    /// `xlb <args> --bpffs <pins>` set up to run in the agent's network namespace.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(xlb_bin());
        cmd.args(args).arg("--bpffs").arg(&self.bpffs);
        in_netns(&mut cmd, &self.netns);
        cmd
    }

    /// Waits (up to 20 s) until service `name` has `n` active backends in the pinned maps and
    /// its frontends select from them. A sync writes backends first, then tables, then
    /// frontends, so the count alone can be seen mid-sync: the frontends must have a table
    /// (none while no backend is active) and the view must hold for two polls in a row.
    pub fn wait_active(&self, name: &str, n: usize) {
        // The service's programming (not its traffic counters), if it is ready.
        let settled = |v: &serde_json::Value| -> Option<serde_json::Value> {
            let s = v.as_array()?.iter().find(|s| s["name"] == name)?;
            let k = s["backends"]
                .as_array()?
                .iter()
                .filter(|b| b["state"] == "active")
                .count();
            let has_table = s["table_slots"].as_u64()? != 0;
            (k == n && (n == 0 || has_table))
                .then(|| serde_json::json!([s["backends"], s["frontends"], s["table_slots"]]))
        };
        let mut last: Option<serde_json::Value> = None;
        let ok = crate::traffic::eventually(Duration::from_secs(20), || {
            let now = settled(&self.services());
            let same = now.is_some() && now == last;
            last = now;
            same.then_some(())
        });
        assert!(
            ok.is_some(),
            "{name}: want {n} active backends:\n{}",
            self.cli(&["service", "list"])
        );
    }

    /// `xlb service list -o json`, parsed.
    pub fn services(&self) -> serde_json::Value {
        self.json(&["service", "list"])
    }

    /// `xlb <args> -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("xlb {args:?}: {e}:\n{out}"))
    }

    /// `xlb status -o json --sample 0`, parsed (whatever its exit code: warnings are data).
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli_output(&["status", "-o", "json", "--sample", "0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("xlb status: {e}: {text}"))
    }

    /// A datapath counter by name, as `xlb stats` reports it.
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.json(&["stats"]);
        stats
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .and_then(|r| r["value"].as_u64())
            .unwrap_or_else(|| panic!("counter {name} missing: {stats}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- agent log ({}) -----\n{}",
                self.log.display(),
                self.logs()
            );
        }
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
