//! The agent's status record (`xlb_agent`): what it attached and why, its last sync, what its
//! sources report and its warnings, refreshed by a heartbeat. It lives in the pin directory,
//! so `xlb status` finds it wherever the agent runs (another mount or pid namespace) and after
//! the agent is gone.

use lb_common::{AgentStatus, DeviceStatus, LAYOUT_VERSION, STATUS_DEVICES, agent_warn};

/// Seconds of CLOCK_MONOTONIC (the clock of conntrack and of the status record).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u32
}

/// Seconds after which a heartbeat is stale (the agent beats every 2 s).
pub const HEARTBEAT_STALE_SECS: u32 = 10;

/// `s` NUL padded into `N` bytes (truncated at a character boundary, one NUL kept).
pub fn text<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = s.len().min(N.saturating_sub(1));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// The text of a NUL-padded field.
pub fn from_text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// This build's version: `<crate version> (<commit>)` when the commit is known at build time.
pub fn version() -> String {
    match option_env!("XLB_COMMIT") {
        Some(c) if !c.is_empty() => format!("{} ({c})", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Inode of this process's pid namespace.
pub fn pid_ns() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino() as u32)
}

/// Start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22).
pub fn start_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, starttime field 22.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the agent that wrote `st` is alive: known for sure from its pid when this process
/// shares its pid namespace, else from a fresh heartbeat.
pub fn agent_alive(st: &AgentStatus, now: u32) -> bool {
    if st.pid != 0 && st.pid_ns != 0 && st.pid_ns == pid_ns() {
        return start_ticks(&st.pid.to_string()) == Some(st.start_ticks);
    }
    now.saturating_sub(st.heartbeat) <= HEARTBEAT_STALE_SECS
}

/// The record an agent keeps and writes.
pub struct StatusRecord {
    st: AgentStatus,
}

impl StatusRecord {
    /// A fresh record for this process, started now.
    pub fn new(pins_via: u8) -> Self {
        let now = monotonic_secs();
        let mut st = AgentStatus::ZERO;
        st.pid = std::process::id();
        st.layout_version = LAYOUT_VERSION;
        st.started = now;
        st.heartbeat = now;
        st.pins = pins_via;
        st.pid_ns = pid_ns();
        st.start_ticks = start_ticks("self").unwrap_or(0);
        st.version = text(&version());
        Self { st }
    }

    /// The record as it stands.
    pub fn get(&self) -> &AgentStatus {
        &self.st
    }

    /// Sets or clears warning bits (`agent_warn::*`).
    pub fn warn(&mut self, bits: u32, on: bool) {
        if on {
            self.st.warnings |= bits;
        } else {
            self.st.warnings &= !bits;
        }
    }

    /// The devices the agent has attached now (the first `STATUS_DEVICES`).
    pub fn set_devices<'a>(&mut self, devs: impl IntoIterator<Item = &'a DeviceStatus>) {
        self.st.devices = AgentStatus::ZERO.devices;
        let mut n = 0;
        for (slot, d) in self.st.devices.iter_mut().zip(devs) {
            *slot = *d;
            n += 1;
        }
        self.warn(agent_warn::NO_DEVICE, n == 0);
        debug_assert!(n <= STATUS_DEVICES);
    }

    /// The cgroup of socket-level load balancing (None: off).
    pub fn set_cgroup(&mut self, cgroup: Option<&std::path::Path>) {
        self.st.cgroup = text(&cgroup.map(|p| p.display().to_string()).unwrap_or_default());
    }

    /// The outcome of a sync pass.
    pub fn set_sync(&mut self, failures: usize, problems: &[String], services: u64, backends: u64) {
        self.st.last_sync = monotonic_secs();
        self.st.sync_failures = failures as u32;
        self.st.problems = problems.len() as u32;
        self.st.first_problem = text(problems.first().map_or("", String::as_str));
        self.st.services = services as u32;
        self.st.backends = backends as u32;
        self.warn(agent_warn::SYNC_FAILING, failures > 0);
        self.warn(agent_warn::SOURCE_PROBLEMS, !problems.is_empty());
    }

    /// A heartbeat.
    pub fn beat(&mut self) {
        self.st.heartbeat = monotonic_secs();
    }

    /// A clean stop.
    pub fn stop(&mut self) {
        self.st.stopped = monotonic_secs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_nul_padded_and_cut_at_a_character() {
        let t: [u8; 6] = text("héllo world");
        assert_eq!(from_text(&t), "héll");
        let t: [u8; 8] = text("ok");
        assert_eq!(&t[..3], b"ok\0");
        assert_eq!(from_text(&t), "ok");
    }

    #[test]
    fn devices_and_sync_set_their_warnings() {
        let mut r = StatusRecord::new(lb_common::pins_via::LOCAL);
        r.set_devices(&[]);
        assert_ne!(r.get().warnings & agent_warn::NO_DEVICE, 0);
        let d = DeviceStatus {
            ifindex: 3,
            role: lb_common::dev_role::UPLINK,
            mode: lb_common::dev_mode::TC,
            reason: lb_common::dev_reason::VETH,
            _pad: 0,
            name: text("eth0"),
        };
        r.set_devices(&[d]);
        assert_eq!(r.get().warnings & agent_warn::NO_DEVICE, 0);
        assert_eq!(r.get().devices[0], d);
        r.set_sync(1, &["a.yaml:3: bad".to_owned()], 4, 9);
        assert_eq!(from_text(&r.get().first_problem), "a.yaml:3: bad");
        assert_ne!(r.get().warnings & agent_warn::SYNC_FAILING, 0);
        r.set_sync(0, &[], 4, 9);
        assert_eq!(
            r.get().warnings & (agent_warn::SYNC_FAILING | agent_warn::SOURCE_PROBLEMS),
            0
        );
        assert_eq!(r.get().pid, std::process::id());
        // This very process is alive; a record of another start time is not.
        assert!(agent_alive(r.get(), monotonic_secs()));
        let mut other = *r.get();
        other.start_ticks += 1;
        other.heartbeat = monotonic_secs();
        assert!(!agent_alive(&other, monotonic_secs()));
        // From another pid namespace only the heartbeat tells.
        other.pid_ns = 1;
        assert!(agent_alive(&other, monotonic_secs()));
        other.heartbeat = 0;
        assert!(!agent_alive(
            &other,
            monotonic_secs() + HEARTBEAT_STALE_SECS + 1
        ));
    }
}
