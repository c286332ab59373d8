//! What the agent attaches, and where: uplinks (XDP as `--xdp-mode` and each device allow,
//! then tc), pod-facing devices (tc) as they appear, the XDP_TX error counters, and the
//! cgroup socket hooks. Every decision is logged with its reason and kept for `xlb status`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::Ebpf;
use lb_common::{DeviceStatus, dev_mode, dev_reason, dev_role};

use crate::{
    bpf::{self, Role, XdpModeOpt, devices, maps::Maps, sock::CgroupOpt},
    status::text,
};

/// Human text of a `dev_mode::*`.
pub fn mode_text(mode: u8) -> &'static str {
    match mode {
        dev_mode::TC => "tc",
        dev_mode::XDP_NATIVE => "xdp-native+tc",
        dev_mode::XDP_GENERIC => "xdp-generic+tc",
        dev_mode::FAILED => "failed",
        _ => "?",
    }
}

/// Attachments owned by this agent run.
pub struct Devices {
    dir: PathBuf,
    uplinks: Vec<String>,
    pod_globs: Vec<String>,
    xdp_mode: XdpModeOpt,
    /// Devices handled by this process, by (role, ifindex), with what runs there and why.
    /// Pins from a previous agent are re-pointed to this agent's programs the first time
    /// they are seen.
    done: BTreeMap<(Role, u32), DeviceStatus>,
    missing_warned: BTreeSet<String>,
    /// XDP_TX errors of each XDP uplink at the last check.
    tx_seen: HashMap<u32, u64>,
}

impl Devices {
    /// Nothing attached yet.
    pub fn new(dir: &Path, uplinks: &[String], pod_globs: &[String], xdp_mode: XdpModeOpt) -> Self {
        Self {
            dir: dir.to_owned(),
            uplinks: uplinks.to_vec(),
            pod_globs: pod_globs.to_vec(),
            xdp_mode,
            done: BTreeMap::new(),
            missing_warned: BTreeSet::new(),
            tx_seen: HashMap::new(),
        }
    }

    /// What is attached now.
    pub fn attached(&self) -> impl Iterator<Item = &DeviceStatus> {
        self.done.values()
    }

    /// Number of devices with an xlb program.
    pub fn count(&self) -> usize {
        self.done
            .values()
            .filter(|d| d.mode != dev_mode::FAILED)
            .count()
    }

    /// Attaches every selected device not yet attached, forgets devices that went, detaches
    /// devices no longer selected. Returns true if the set changed.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf, maps: &mut Maps) -> bool {
        let live = match devices::list() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing devices failed");
                return false;
            }
        };
        let before = self.done.len();
        bpf::prune_links(&self.dir, &live);
        self.done
            .retain(|(_, idx), _| live.iter().any(|i| i.index == *idx));
        let mut changed = before != self.done.len();
        for name in &self.uplinks {
            if !live.iter().any(|i| devices::glob_match(name, &i.name))
                && self.missing_warned.insert(name.clone())
            {
                tracing::warn!(device = %name, "uplink not found; will attach when it appears");
            }
        }
        for iface in &live {
            if devices::matches_any(&self.uplinks, &iface.name) {
                if !self.done.contains_key(&(Role::Host, iface.index)) {
                    let st = self.attach_uplink(ebpf, maps, iface);
                    self.done.insert((Role::Host, iface.index), st);
                    changed = true;
                }
            } else if devices::matches_any(&self.pod_globs, &iface.name)
                && !self.done.contains_key(&(Role::Pod, iface.index))
            {
                let mode = match bpf::attach_tc(ebpf, &self.dir, Role::Pod, iface) {
                    Ok(()) => {
                        tracing::info!(device = %iface.name, "pod device attached (tc)");
                        dev_mode::TC
                    }
                    Err(e) => {
                        tracing::error!(device = %iface.name, error = %e, "pod device attach failed");
                        dev_mode::FAILED
                    }
                };
                if mode == dev_mode::TC {
                    self.done.insert(
                        (Role::Pod, iface.index),
                        status(iface, dev_role::POD, mode, dev_reason::POD_DEVICE),
                    );
                    changed = true;
                }
            }
        }
        // Devices no longer selected (flags changed across a restart) are detached.
        let is_live = |idx: u32| live.iter().any(|i| i.index == idx);
        for idx in bpf::attached(&self.dir, Role::Pod) {
            if !self.done.contains_key(&(Role::Pod, idx)) && is_live(idx) {
                bpf::detach(&self.dir, Role::Pod, idx);
            }
        }
        for role in [Role::Host, Role::Xdp] {
            for idx in bpf::attached(&self.dir, role) {
                if !self.done.contains_key(&(Role::Host, idx)) && is_live(idx) {
                    bpf::detach(&self.dir, role, idx);
                    if role == Role::Xdp
                        && let Err(e) = maps.release_device(idx)
                    {
                        tracing::warn!(ifindex = idx, error = %e, "freeing the device slot failed");
                    }
                }
            }
        }
        changed
    }

    /// Attaches XDP (as decided for this device) and tc to an uplink.
    fn attach_uplink(
        &mut self,
        ebpf: &mut Ebpf,
        maps: &mut Maps,
        iface: &bpf::Iface,
    ) -> DeviceStatus {
        let plan = bpf::plan_xdp(self.xdp_mode, iface.index);
        let mut mode = match bpf::attach_xdp(ebpf, &self.dir, iface, plan) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(device = %iface.name, error = %e, "XDP attach failed; tc only");
                dev_mode::TC
            }
        };
        let reason = match (plan.mode, mode) {
            (Some(aya::programs::XdpMode::Driver), dev_mode::TC) => dev_reason::NO_NATIVE,
            (Some(aya::programs::XdpMode::Driver), dev_mode::XDP_GENERIC) => {
                dev_reason::NATIVE_UNSUPPORTED
            }
            _ => plan.reason,
        };
        if mode == dev_mode::TC {
            if let Err(e) = maps.release_device(iface.index) {
                tracing::warn!(device = %iface.name, error = %e, "freeing the device slot failed");
            }
        } else {
            match maps.claim_device(iface.index) {
                Ok(None) => {}
                Ok(Some(other)) => tracing::warn!(
                    device = %iface.name,
                    other_ifindex = other,
                    "the XDP_TX error slot of this device is another's: its XDP_TX errors are not counted"
                ),
                Err(e) => {
                    tracing::warn!(device = %iface.name, error = %e, "claiming the device slot failed");
                }
            }
            if !bpf::txerr_supported() {
                tracing::warn!(
                    device = %iface.name,
                    "the kernel's BTF lacks the fields the XDP_TX error counters read: XDP_TX errors are not counted"
                );
            }
        }
        if reason == dev_reason::REQUESTED_MAY_DROP {
            tracing::warn!(
                device = %iface.name,
                "--xdp-mode native on a veth whose peer runs no XDP program: XDP_TX loses frames there. \
                 xlb counts them (xdp_tx_error) and leaves the device's flows to tc after the first; \
                 `--xdp-mode auto` uses tc on this device from the start"
            );
        }
        if let Err(e) = bpf::attach_tc(ebpf, &self.dir, Role::Host, iface) {
            tracing::error!(device = %iface.name, error = %e, "uplink tc attach failed");
            mode = dev_mode::FAILED;
        }
        tracing::info!(
            device = %iface.name,
            mode = mode_text(mode),
            reason = dev_reason::text(reason),
            "uplink attached"
        );
        status(iface, dev_role::UPLINK, mode, reason)
    }

    /// Reads the XDP_TX errors of every XDP uplink and warns about new ones. Returns whether
    /// any uplink has lost frames.
    pub fn check_tx_errors(&mut self, maps: &Maps) -> bool {
        let mut any = false;
        for d in self
            .done
            .values()
            .filter(|d| matches!(d.mode, dev_mode::XDP_NATIVE | dev_mode::XDP_GENERIC))
        {
            let name = crate::status::from_text(&d.name);
            let Ok(Some(dev)) = maps.device(d.ifindex) else {
                continue;
            };
            let seen = self.tx_seen.insert(d.ifindex, dev.tx_errors).unwrap_or(0);
            if dev.tx_errors > seen {
                tracing::warn!(
                    device = %name,
                    lost = dev.tx_errors - seen,
                    total = dev.tx_errors,
                    "XDP_TX lost frames on this device: XDP now leaves its flows to tc"
                );
            }
            any |= dev.tx_errors > 0;
        }
        any
    }
}

/// A device's status entry.
fn status(iface: &bpf::Iface, role: u8, mode: u8, reason: u8) -> DeviceStatus {
    DeviceStatus {
        ifindex: iface.index,
        role,
        mode,
        reason,
        _pad: 0,
        name: text(&iface.name),
    }
}

/// Attaches (or detaches) socket-level load balancing as `--cgroup` says. Returns the cgroup
/// attached to (None: off).
pub fn attach_sockets(
    cgroup: &CgroupOpt,
    dir: &Path,
    ebpf: &mut Ebpf,
) -> anyhow::Result<Option<PathBuf>> {
    let path = match cgroup {
        CgroupOpt::Off => None,
        CgroupOpt::Path(p) => Some(
            bpf::sock::resolve_cgroup(p).with_context(|| format!("--cgroup {}", p.display()))?,
        ),
        CgroupOpt::Auto => {
            let found = bpf::sock::cgroup2_root();
            if found.is_none() {
                tracing::warn!(
                    "--cgroup auto: no cgroup v2 mount; socket-level load balancing is off (every connection takes the tc path)"
                );
            }
            found
        }
    };
    match &path {
        Some(p) => {
            bpf::sock::attach(ebpf, dir, p).with_context(|| format!("--cgroup {}", p.display()))?;
            tracing::info!(cgroup = %p.display(), "socket-level load balancing attached");
        }
        None => bpf::sock::detach(dir),
    }
    Ok(path)
}
