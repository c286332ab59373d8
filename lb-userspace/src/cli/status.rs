//! `xlb status`: is it working? One screen from the pin directory alone, so it answers with the
//! agent running, stopped or never started: the agent (from its heartbeat in `xlb_agent`),
//! its last sync and source problems, each device with its role, attach mode and why, the
//! socket hooks, map fill, drop counters that moved while it looked, and warnings.
//!
//! Exit codes: 0 the agent runs and nothing is wrong; 1 it runs with warnings; 3 the agent
//! is not running (the datapath it left may still forward); 4 there is no datapath.

use std::{path::Path, time::Duration};

use aya::{
    maps::{MapData, MapInfo},
    programs::links::PinnedLink,
};
use lb_common::{
    AgentStatus, LAYOUT_VERSION, agent_warn, counter, dev_flags, dev_mode, dev_reason, dev_role,
    drop_reason, map_names as names, pins_via,
};
use serde::Serialize;

use super::{
    Format,
    table::{Style, Table},
};
use crate::{
    agent::mode_text,
    bpf::{Role, link_pin, maps::Maps},
    status::{agent_alive, from_text, monotonic_secs},
};

/// Exit code: the agent runs with warnings.
pub const EXIT_WARNINGS: u8 = 1;
/// Exit code: no agent runs.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// Exit code: no datapath is pinned.
pub const EXIT_NO_DATAPATH: u8 = 4;

/// The agent as its record shows it.
#[derive(Serialize, Debug)]
pub struct AgentView {
    /// `running`, `stopped` (cleanly), `not running` (killed or crashed: its process is gone,
    /// or from another pid namespace, its heartbeat stopped), or
    /// `unknown` (no record: an agent older than this one pinned the maps).
    pub state: &'static str,
    pub pid: u32,
    pub version: String,
    pub layout_version: u32,
    pub uptime_secs: Option<u32>,
    pub last_heartbeat_secs_ago: Option<u32>,
    pub last_sync_secs_ago: Option<u32>,
    pub services: u32,
    pub backends: u32,
    pub sync_failures: u32,
    pub source_problems: u32,
    pub first_problem: Option<String>,
    /// How the agent reaches the pins: `local`, or `host` (from a private mount namespace).
    pub pins_via: &'static str,
}

/// One attached device.
#[derive(Serialize, Debug)]
pub struct DeviceView {
    pub name: String,
    pub ifindex: u32,
    pub role: &'static str,
    pub mode: &'static str,
    pub reason: &'static str,
    /// Its program links are pinned (the device still runs xlb).
    pub pinned: bool,
    pub xdp_tx_errors: u64,
    pub xdp_tx_fallback: bool,
}

/// A counter that moved while `xlb status` sampled.
#[derive(Serialize, Debug)]
pub struct Moved {
    pub name: &'static str,
    pub delta: u64,
    pub total: u64,
}

/// A map's fill.
#[derive(Serialize, Debug)]
pub struct Fill {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// The whole status.
#[derive(Serialize, Debug)]
pub struct StatusView {
    pub bpffs: String,
    pub datapath: &'static str,
    pub agent: Option<AgentView>,
    pub devices: Vec<DeviceView>,
    pub socket_lb: Option<String>,
    pub socket_hooks_pinned: bool,
    pub maps: Vec<Fill>,
    pub sample_secs: f64,
    pub drops_moved: Vec<Moved>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub exit: u8,
}

fn ago(now: u32, t: u32) -> Option<u32> {
    (t != 0).then(|| now.saturating_sub(t))
}

fn agent_view(st: &AgentStatus, now: u32) -> AgentView {
    let state = if st.layout_version == 0 {
        "unknown"
    } else if st.stopped != 0 && st.stopped >= st.heartbeat {
        "stopped"
    } else if agent_alive(st, now) {
        "running"
    } else {
        "not running"
    };
    let problem = from_text(&st.first_problem);
    AgentView {
        state,
        pid: st.pid,
        version: from_text(&st.version),
        layout_version: st.layout_version,
        uptime_secs: (state == "running").then(|| now.saturating_sub(st.started)),
        last_heartbeat_secs_ago: ago(now, st.heartbeat),
        last_sync_secs_ago: ago(now, st.last_sync),
        services: st.services,
        backends: st.backends,
        sync_failures: st.sync_failures,
        source_problems: st.problems,
        first_problem: (!problem.is_empty()).then_some(problem),
        pins_via: if st.pins == pins_via::HOST {
            "host"
        } else {
            "local"
        },
    }
}

fn pinned(path: &Path) -> bool {
    PinnedLink::from_pin(path).is_ok()
}

/// Entries of the hash maps that fill up, against their capacity.
fn fills(dir: &Path) -> Vec<Fill> {
    [
        names::SERVICES,
        names::BACKENDS,
        names::CONNTRACK,
        names::AFFINITY,
    ]
    .into_iter()
    .filter_map(|name| {
        let path = dir.join(name);
        let cap = MapInfo::from_pin(&path).ok()?.max_entries();
        let data = MapData::from_pin(&path).ok()?;
        let entries = crate::bpf::maps::count_entries(&data).ok()?;
        Some(Fill {
            name,
            entries,
            capacity: cap,
        })
    })
    .collect()
}

/// Gathers the status of the datapath pinned under `dir`, sampling drop counters for `sample`.
pub fn gather(dir: &Path, sample: Duration) -> StatusView {
    let shown = dir.display().to_string();
    let Ok(maps) = Maps::open(dir) else {
        return StatusView {
            bpffs: shown.clone(),
            datapath: "absent",
            agent: None,
            devices: Vec::new(),
            socket_lb: None,
            socket_hooks_pinned: false,
            maps: Vec::new(),
            sample_secs: 0.0,
            drops_moved: Vec::new(),
            warnings: vec![crate::bpf::pins::no_datapath_message(dir)],
            exit: EXIT_NO_DATAPATH,
        };
    };
    let now = monotonic_secs();
    let st = maps.read_agent().unwrap_or(AgentStatus::ZERO);
    let agent = agent_view(&st, now);
    let mut warnings = Vec::new();
    let mut devices = Vec::new();
    for d in st.devices.iter().filter(|d| d.ifindex != 0) {
        let role = if d.role == dev_role::POD {
            Role::Pod
        } else {
            Role::Host
        };
        let xdp = matches!(d.mode, dev_mode::XDP_NATIVE | dev_mode::XDP_GENERIC);
        let pinned = pinned(&link_pin(dir, role, d.ifindex))
            && (!xdp || pinned(&link_pin(dir, Role::Xdp, d.ifindex)));
        let dev = if xdp {
            maps.device(d.ifindex).ok().flatten()
        } else {
            None
        };
        let name = from_text(&d.name);
        let (errors, fallback) = dev.map_or((0, false), |s| {
            (s.tx_errors, s.flags & dev_flags::TX_FALLBACK != 0)
        });
        if errors > 0 {
            warnings.push(format!(
                "XDP_TX lost {errors} frames on {name}{}",
                if fallback {
                    ": XDP leaves its flows to tc now (`--xdp-mode auto` avoids this)"
                } else {
                    ""
                }
            ));
        }
        if !pinned && agent.state == "running" {
            warnings.push(format!("{name}: its program links are not pinned"));
        }
        devices.push(DeviceView {
            name,
            ifindex: d.ifindex,
            role: if d.role == dev_role::POD {
                "pod"
            } else {
                "uplink"
            },
            mode: mode_text(d.mode),
            reason: dev_reason::text(d.reason),
            pinned,
            xdp_tx_errors: errors,
            xdp_tx_fallback: fallback,
        });
    }
    let socket_lb = Some(from_text(&st.cgroup)).filter(|c| !c.is_empty());
    let socket_hooks_pinned = crate::bpf::sock::PROGRAMS
        .iter()
        .all(|(_, p)| pinned(&dir.join("links").join(p)));
    // Drops that move while we look.
    let before = maps.counters_sum().unwrap_or_default();
    if !sample.is_zero() {
        std::thread::sleep(sample);
    }
    let after = maps.counters_sum().unwrap_or_default();
    let drops_moved: Vec<Moved> = (1..drop_reason::MAX)
        .filter_map(|r| {
            let i = (counter::DROP_BASE + r) as usize;
            let (b, a) = (before.get(i).copied()?, after.get(i).copied()?);
            (a > b).then(|| Moved {
                name: drop_reason::name(r),
                delta: a - b,
                total: a,
            })
        })
        .collect();
    match agent.state {
        "running" => {}
        "stopped" | "not running" => warnings.push(format!(
            "the agent is {}: the datapath keeps forwarding with what it last programmed, but \
             nothing follows source changes",
            agent.state
        )),
        _ => warnings.push("no agent status record (an older agent pinned these maps)".to_owned()),
    }
    let w = st.warnings;
    if agent.state == "running" {
        for (bit, text) in [
            (
                agent_warn::NO_DEVICE,
                "no device has an xlb program (check --devices / --pod-devices)",
            ),
            (
                agent_warn::SYNC_FAILING,
                "some services could not be programmed (see the agent's log)",
            ),
            (
                agent_warn::NO_SOCKET_LB,
                "socket-level load balancing is off: no cgroup v2 found",
            ),
            (
                agent_warn::NATIVE_MAY_DROP,
                "native XDP runs on a veth whose peer has no XDP program (XDP_TX loses frames)",
            ),
        ] {
            if w & bit != 0 {
                warnings.push(text.to_owned());
            }
        }
        if w & agent_warn::SOURCE_PROBLEMS != 0 {
            warnings.push(format!(
                "{} source problem(s); the last good state of each stays in force{}",
                st.problems,
                agent
                    .first_problem
                    .as_deref()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            ));
        }
    }
    if st.layout_version != 0 && st.layout_version != LAYOUT_VERSION {
        warnings.push(format!(
            "the datapath has map layout v{}, this xlb v{LAYOUT_VERSION}",
            st.layout_version
        ));
    }
    for m in drops_moved
        .iter()
        .filter(|m| m.name != drop_reason::name(drop_reason::NO_BACKEND))
    {
        warnings.push(format!(
            "{} drops moved by {} while sampling",
            m.name, m.delta
        ));
    }
    let exit = match agent.state {
        "running" if warnings.is_empty() => 0,
        "running" => EXIT_WARNINGS,
        _ => EXIT_NOT_RUNNING,
    };
    StatusView {
        bpffs: shown,
        datapath: "pinned",
        agent: Some(agent),
        devices,
        socket_lb,
        socket_hooks_pinned,
        maps: fills(dir),
        sample_secs: sample.as_secs_f64(),
        drops_moved,
        warnings,
        exit,
    }
}

fn secs(s: Option<u32>) -> String {
    s.map_or_else(|| "-".to_owned(), |s| format!("{s}s ago"))
}

/// Renders the status.
pub fn render(v: &StatusView, format: Format) -> anyhow::Result<String> {
    format.render(v, |style| text(v, style))
}

fn text(v: &StatusView, style: Style) -> String {
    let mut s = format!("datapath:   {} under {}\n", v.datapath, v.bpffs);
    if let Some(a) = &v.agent {
        s += &format!(
            "agent:      {} (pid {}, xlb {}, layout v{}{})\n",
            a.state,
            a.pid,
            if a.version.is_empty() {
                "?"
            } else {
                &a.version
            },
            a.layout_version,
            a.uptime_secs
                .map(|u| format!(", up {u}s"))
                .unwrap_or_default()
        );
        s += &format!(
            "sync:       last {}; {} services, {} backends; {} failing; {} source problems\n",
            secs(a.last_sync_secs_ago),
            a.services,
            a.backends,
            a.sync_failures,
            a.source_problems
        );
        if a.pins_via == "host" {
            s += "pins:       the host's bpffs, reached from the agent's private mount namespace\n";
        }
    }
    if !v.devices.is_empty() {
        let mut t = Table::new(&[
            "DEVICE",
            "IFINDEX",
            "ROLE",
            "MODE",
            "WHY",
            "PINNED",
            "XDP_TX ERRORS",
        ]);
        for d in &v.devices {
            t.row(vec![
                d.name.clone(),
                d.ifindex.to_string(),
                d.role.to_owned(),
                d.mode.to_owned(),
                d.reason.to_owned(),
                if d.pinned { "yes" } else { "no" }.to_owned(),
                if d.xdp_tx_fallback {
                    format!("{} (tc fallback)", d.xdp_tx_errors)
                } else {
                    d.xdp_tx_errors.to_string()
                },
            ]);
        }
        s += "\n";
        s += &t.render(style);
    }
    if v.datapath == "pinned" {
        s += &format!(
            "\nsocket LB:  {}{}\n",
            v.socket_lb.as_deref().unwrap_or("off"),
            if v.socket_lb.is_some() && !v.socket_hooks_pinned {
                " (hooks not pinned)"
            } else {
                ""
            }
        );
        let fill: Vec<String> = v
            .maps
            .iter()
            .map(|m| format!("{} {}/{}", m.name, m.entries, m.capacity))
            .collect();
        s += &format!("maps:       {}\n", fill.join(", "));
        if v.drops_moved.is_empty() {
            s += &format!("drops:      none in {:.1}s\n", v.sample_secs);
        } else {
            let d: Vec<String> = v
                .drops_moved
                .iter()
                .map(|m| format!("{} +{}", m.name, m.delta))
                .collect();
            s += &format!("drops:      {} in {:.1}s\n", d.join(", "), v.sample_secs);
        }
    }
    if v.warnings.is_empty() {
        s += "\nno warnings\n";
    } else {
        s += "\nwarnings:\n";
        for w in &v.warnings {
            s += &format!("  - {w}\n");
        }
    }
    s
}
