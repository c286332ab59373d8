//! Leaves nothing behind when a benchmark is interrupted. Everything a run creates is named
//! from its tag (`xlb_tests::netns::unique_tag`: namespaces and cgroups `xlbt-<tag>…`, pins
//! `/sys/fs/bpf/xlbt-<tag>`, temporary directories `xlb-bench-*-<tag>…`), and the tags of one
//! process share the prefix `xlbt-<pid>x`. `install` makes SIGINT, SIGTERM and SIGHUP end
//! the run through `remove_leftovers` instead of killing it with its namespaces, agents and
//! pins in place; drops do the same on a normal exit. Sysctls of the host set with `Sysctl`
//! are put back too.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Set once a signal is being handled: the run's work fails under it (its processes are
/// killed) and must not end the process before the removal has.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The thread that waits for the signals and removes what the run made (never parked).
static SIGNAL_THREAD: std::sync::OnceLock<std::thread::ThreadId> = std::sync::OnceLock::new();

/// Host sysctls set by this run and their values before: (path, old value).
static SYSCTLS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// The prefix of every name this process's tags produce.
pub fn prefix() -> String {
    format!("xlbt-{}x", std::process::id())
}

/// Blocks the three signals in the calling thread (so in every thread started after it: call
/// it first thing in `main`) and starts the thread that waits for them. Child processes
/// inherit the mask: the xlb agent unblocks the signals it handles itself; other children are
/// stopped with SIGKILL.
pub fn install() {
    // SAFETY: an empty sigset_t filled by sigemptyset/sigaddset; the calls only write `set`.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&raw mut set, sig);
        }
        set
    };
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
    assert_eq!(
        rc,
        0,
        "pthread_sigmask: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let remover = SIGNAL_THREAD.get() == Some(&std::thread::current().id());
        if STOPPING.load(Ordering::SeqCst) && !remover {
            // A thread whose processes the removal killed: wait for `exit`.
            loop {
                std::thread::park();
            }
        }
        default_hook(info);
    }));
    std::thread::spawn(move || {
        let _ = SIGNAL_THREAD.set(std::thread::current().id());
        let mut sig = 0;
        // SAFETY: `set` and `sig` are valid for the call.
        if unsafe { libc::sigwait(&raw const set, &raw mut sig) } != 0 {
            return;
        }
        STOPPING.store(true, Ordering::SeqCst);
        let prefix = prefix();
        // (After SIGHUP the terminal may be gone: a failed write must not stop the removal.)
        let _ = writeln!(
            std::io::stderr(),
            "\nsignal {sig}: removing the run's namespaces, agents and pins ({prefix}*)"
        );
        remove_leftovers(&prefix);
        std::process::exit(128 + sig);
    });
}

/// Removes what names starting with `prefix` hold: kills the processes inside its network
/// namespaces (servers, load generators, agents), deletes the namespaces, the pin directories,
/// the cgroups and the temporary directories, and puts back the host sysctls.
pub fn remove_leftovers(prefix: &str) {
    let netns = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = netns
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    for name in &names {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
    // A killed process leaves its namespace (and cgroup) once it has exited.
    std::thread::sleep(Duration::from_millis(200));
    for name in &names {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
    }
    remove_entries(
        Path::new("/sys/fs/bpf"),
        |n| n.starts_with(prefix),
        |p| fs::remove_dir_all(p),
    );
    if let Some(root) = lb_userspace::bpf::sock::cgroup2_mount() {
        remove_entries(
            &root,
            |n| n.starts_with(prefix),
            |p| {
                // A cgroup goes once its last process has exited.
                let mut r = fs::remove_dir(p);
                for _ in 0..50 {
                    if r.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    r = fs::remove_dir(p);
                }
                r
            },
        );
    }
    let tag = prefix.trim_start_matches("xlbt-");
    remove_entries(
        &std::env::temp_dir(),
        |n| n.starts_with("xlb-bench-") && n.contains(&format!("-{tag}")),
        |p| fs::remove_dir_all(p),
    );
    let mut sysctls = SYSCTLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (path, old) in sysctls.drain(..).rev() {
        let _ = fs::write(&path, old.trim());
    }
}

/// Removes the entries of `dir` whose name `select`s with `remove`, saying which failed.
fn remove_entries(
    dir: &Path,
    select: impl Fn(&str) -> bool,
    remove: impl Fn(&Path) -> std::io::Result<()>,
) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if select(&e.file_name().to_string_lossy()) {
            let p = e.path();
            if let Err(err) = remove(&p) {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: {} not removed: {err}",
                    p.display()
                );
            }
        }
    }
}

/// A sysctl of the benchmark's own (initial) namespace, set until dropped (or until a signal
/// ends the run).
pub struct Sysctl {
    path: PathBuf,
}

impl Sysctl {
    /// Sets `key` (dotted) to `value`, remembering the old value.
    pub fn set(key: &str, value: &str) -> Self {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let old = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{key}: {e}"));
        SYSCTLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((path.clone(), old));
        fs::write(&path, value).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        Self { path }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let mut sysctls = SYSCTLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = sysctls.iter().rposition(|(p, _)| *p == self.path) {
            let (path, old) = sysctls.remove(i);
            let _ = fs::write(&path, old.trim());
        }
    }
}
