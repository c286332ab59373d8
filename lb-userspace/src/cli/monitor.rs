//! `xlb monitor`: streams datapath events (drops with their reason, and optionally new-flow
//! decisions) from the pinned `xlb_events` ring buffer.
//!
//! The programs test one `xlb_config` flag before emitting anything, so events cost nothing
//! while nobody watches. A monitor turns the flags on, registers itself under
//! `/run/xlb/monitors/`, and on exit turns the flags off unless another live monitor of the same
//! pin directory is still registered (a monitor killed with SIGKILL leaves the flags on until
//! the next monitor exits; `xlb stats` shows it).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, RingBuf};
use lb_common::{
    Address, Event, Ipv6, config_flags, drop_reason, event_kind, hook, map_names as names,
    selection,
};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use super::Output;
use crate::{
    bpf::maps::{Maps, info_name},
    model::Protocol,
};

/// What to stream and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Stream drops.
    pub drops: bool,
    /// Stream new-flow decisions.
    pub flows: bool,
    /// Only events of services whose name contains this.
    pub service: Option<String>,
    /// Only events of this client address.
    pub client: Option<IpAddr>,
    /// Only events to this frontend address.
    pub frontend: Option<IpAddr>,
    /// Stop after this many printed events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Text lines or JSON lines.
    pub output: Output,
}

/// One event as printed.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Seconds since the Unix epoch, microsecond precision.
    pub time: String,
    /// `drop` or `flow`.
    pub kind: &'static str,
    /// Hook that saw the packet: `pod`, `host` or `xdp`.
    pub hook: &'static str,
    pub proto: String,
    pub client: String,
    pub frontend: String,
    pub service: Option<String>,
    /// Drops: the reason.
    pub reason: Option<&'static str>,
    /// New flows: the chosen backend.
    pub backend: Option<String>,
    /// New flows: how the backend was chosen.
    pub selection: Option<&'static str>,
}

fn hook_name(h: u8) -> &'static str {
    match h {
        hook::POD => "pod",
        hook::HOST => "host",
        hook::XDP => "xdp",
        _ => "?",
    }
}

fn selection_name(s: u8) -> &'static str {
    match s {
        selection::CONNTRACK => "conntrack",
        selection::AFFINITY => "affinity",
        selection::MAGLEV => "maglev",
        selection::RANDOM => "random",
        _ => "?",
    }
}

/// The row of an event if the filters pass it (names refreshed first if it names a service
/// not known yet).
fn shown<A: Address + Into<IpAddr>>(
    ev: &Event<A>,
    names: &mut BTreeMap<u32, String>,
    refresh: &dyn Fn(&mut BTreeMap<u32, String>) -> anyhow::Result<()>,
    offset: i128,
    opts: &Options,
) -> anyhow::Result<Option<EventRow>> {
    if ev.svc_id != 0 && !names.contains_key(&ev.svc_id) {
        refresh(names)?;
    }
    let r = row(ev, names, offset);
    Ok(opts.accepts(ev, &r).then_some(r))
}

/// Converts a raw event of either family; `names` maps service ids to names;
/// `epoch_offset_ns` turns the kernel's monotonic timestamps into wall time.
pub fn row<A: Address + Into<IpAddr>>(
    ev: &Event<A>,
    names: &BTreeMap<u32, String>,
    epoch_offset_ns: i128,
) -> EventRow {
    let at = |a: A, port: u16| SocketAddr::new(a.into(), port).to_string();
    let drop = ev.kind == event_kind::DROP;
    let wall_ns = i128::from(ev.ts_ns) + epoch_offset_ns;
    EventRow {
        time: format!(
            "{}.{:06}",
            wall_ns.div_euclid(1_000_000_000),
            wall_ns.rem_euclid(1_000_000_000) / 1000
        ),
        kind: if drop { "drop" } else { "flow" },
        hook: hook_name(ev.hook),
        proto: Protocol::from_number(ev.proto)
            .map_or_else(|| ev.proto.to_string(), |p| p.to_string()),
        client: at(ev.saddr, ev.sport),
        frontend: at(ev.daddr, ev.dport),
        service: (ev.svc_id != 0).then(|| {
            names
                .get(&ev.svc_id)
                .cloned()
                .unwrap_or_else(|| format!("#{}", ev.svc_id))
        }),
        reason: drop.then(|| drop_reason::name(ev.reason)),
        backend: (!drop && ev.backend_id != 0).then(|| at(ev.backend_addr, ev.backend_port)),
        selection: (!drop).then(|| selection_name(ev.selection)),
    }
}

impl Options {
    /// Whether an event passes the filters.
    pub fn accepts<A: Address + Into<IpAddr>>(&self, ev: &Event<A>, row: &EventRow) -> bool {
        let kind_ok = if ev.kind == event_kind::DROP {
            self.drops
        } else {
            self.flows
        };
        kind_ok
            && self.client.is_none_or(|c| ev.saddr.into() == c)
            && self.frontend.is_none_or(|f| ev.daddr.into() == f)
            && self.service.as_ref().is_none_or(|s| {
                row.service
                    .as_ref()
                    .is_some_and(|name| name.contains(s.as_str()))
            })
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.drops {
            f |= config_flags::MONITOR_DROPS;
        }
        if self.flows {
            f |= config_flags::MONITOR_FLOWS;
        }
        f
    }
}

/// Renders one row as a line.
pub fn line(r: &EventRow, output: Output) -> String {
    match output {
        // One JSON document per line, or a stream of YAML documents.
        Output::Json => return serde_json::to_string(r).unwrap_or_default(),
        Output::Yaml => {
            let doc = serde_yaml_ng::to_string(r).unwrap_or_default();
            return format!("---\n{}", doc.trim_end());
        }
        Output::Table | Output::Wide => {}
    }
    let svc = r.service.as_deref().unwrap_or("-");
    match r.kind {
        "drop" => format!(
            "{} drop {:<4} {} {} -> {} svc {svc}: {}",
            r.time,
            r.hook,
            r.proto,
            r.client,
            r.frontend,
            r.reason.unwrap_or("?")
        ),
        _ => format!(
            "{} flow {:<4} {} {} -> {} => {} svc {svc} ({})",
            r.time,
            r.hook,
            r.proto,
            r.client,
            r.frontend,
            r.backend.as_deref().unwrap_or("-"),
            r.selection.unwrap_or("?")
        ),
    }
}

/// Registration of running monitors (one file per pid) for a pin directory.
fn registry(dir: &Path) -> PathBuf {
    let tag: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/xlb/monitors").join(tag)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Flags still wanted by other live monitors (stale registrations are removed).
fn others_flags(reg: &Path) -> u32 {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir(reg) else {
        return 0;
    };
    let mut flags = 0;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if pid_alive(pid) {
            flags |= std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(config_flags::MONITOR_DROPS | config_flags::MONITOR_FLOWS);
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    flags
}

/// Sets the monitor flags to `mine | others'` on start and back to `others'` on drop.
struct Registration {
    dir: PathBuf,
    file: PathBuf,
}

impl Registration {
    fn new(dir: &Path, flags: u32) -> anyhow::Result<Self> {
        let reg = registry(dir);
        std::fs::create_dir_all(&reg)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", reg.display()))?;
        let file = reg.join(std::process::id().to_string());
        std::fs::write(&file, flags.to_string())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
        let me = Self {
            dir: dir.to_owned(),
            file,
        };
        me.set_flags(flags | others_flags(&reg))?;
        Ok(me)
    }

    fn set_flags(&self, monitor: u32) -> anyhow::Result<()> {
        let mut maps = Maps::open(&self.dir)?;
        let mut cfg = maps.read_config()?;
        cfg.flags = (cfg.flags & !config_flags::MONITOR_MASK) | monitor;
        maps.write_config(&cfg)?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let others = self.file.parent().map_or(0, others_flags);
        if let Err(e) = self.set_flags(others) {
            eprintln!("xlb monitor: could not turn events off: {e:#}");
        }
    }
}

fn epoch_offset_ns() -> i128 {
    let mono = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the struct we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - mono
}

/// Streams events to `out` until the count or duration is reached, or SIGINT/SIGTERM.
/// Returns the number of events written.
pub async fn run(dir: &Path, opts: &Options, mut out: impl std::io::Write) -> anyhow::Result<u64> {
    let maps = Maps::open(dir)?;
    let path = dir.join(names::EVENTS);
    let data = MapData::from_pin(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut ring: RingBuf<MapData> = RingBuf::try_from(Map::RingBuf(data))?;
    if others_flags(&registry(dir)) != 0 {
        eprintln!(
            "xlb monitor: another monitor is running on {}; the two share (split) the events",
            dir.display()
        );
    } else {
        // Events left from before this monitor started are stale: drop them.
        while ring.next().is_some() {}
    }
    // SAFETY: the ring buffer owns its map fd; it stays open and unchanged until `fd` drops.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    let _reg = Registration::new(dir, opts.flags())?;
    let offset = epoch_offset_ns();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let refresh = |names: &mut BTreeMap<u32, String>| -> anyhow::Result<()> {
        *names = maps
            .infos()?
            .into_iter()
            .map(|(id, i)| (id, info_name(&i)))
            .collect();
        Ok(())
    };
    refresh(&mut names)?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut printed = 0u64;
    loop {
        let until = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if until.is_zero() {
            break;
        }
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    // IPv4 and IPv6 events differ in length (`lb_common::Event`).
                    let r = match item.len() {
                        n if n == size_of::<Event<Ipv6>>() => {
                            // SAFETY: the programs write whole events of this length;
                            // read_unaligned copes with the ring's 8-byte alignment.
                            let ev: Event<Ipv6> =
                                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                            drop(item);
                            shown(&ev, &mut names, &refresh, offset, opts)?
                        }
                        n if n == size_of::<Event>() => {
                            // SAFETY: as above.
                            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                            drop(item);
                            shown(&ev, &mut names, &refresh, offset, opts)?
                        }
                        _ => None,
                    };
                    let Some(r) = r else {
                        continue;
                    };
                    writeln!(out, "{}", line(&r, opts.output))?;
                    out.flush()?;
                    printed += 1;
                    if opts.count.is_some_and(|c| printed >= c) {
                        return Ok(printed);
                    }
                }
                guard.clear_ready();
            }
            _ = tokio::time::sleep(until) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(printed)
}
