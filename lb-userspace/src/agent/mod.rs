//! `xlb agent`: loads (or adopts) the datapath, attaches it to uplinks and pod-facing devices
//! as they appear, and keeps the maps equal to what the sources describe.
//!
//! Sources run as tasks and publish snapshots (latest wins); this task alone translates and
//! writes maps. On exit (SIGTERM, SIGINT) nothing is detached: maps and links stay pinned and
//! the datapath keeps forwarding until the next agent adopts it — the pins are in a bpffs the
//! host keeps (`bpf::pins::resolve`), and the stop message says what the pins show.

mod attach;
mod stale;

pub use attach::mode_text;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::{Config, Config6, LAYOUT_VERSION};
use tokio::sync::mpsc;

use crate::{
    bpf::{self, Capacities, XdpModeOpt, devices, maps::Maps, sock::CgroupOpt},
    http::Response,
    metrics::{Health, Metrics},
    source::{
        Delta, SourceId,
        files::FileSource,
        kube::{self as kube_source, Access as KubeAccess},
        watch::Watch,
    },
    status::StatusRecord,
    sync::{MapReader as _, MapSync, SyncConfig},
    translate::{NodeContext, Translator},
};

/// Everything the agent is told on its command line.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub services: Option<PathBuf>,
    /// The Kubernetes source, if any.
    pub kubernetes: Option<KubeAccess>,
    pub node_name: Option<String>,
    /// Node addresses of both families.
    pub node_ips: Vec<IpAddr>,
    /// This node's zone (`--node-zone`; else the Node's `topology.kubernetes.io/zone`).
    pub node_zone: Option<String>,
    /// CIDRs externalIPs must be in (`--external-ip-cidrs`); `None`: any.
    pub external_ip_cidrs: Option<Vec<crate::model::IpNet>>,
    pub devices: Vec<String>,
    pub pod_devices: Vec<String>,
    pub bpffs: PathBuf,
    pub xdp_mode: XdpModeOpt,
    /// Where TCP connects to ClusterIPs are translated at the socket.
    pub cgroup: CgroupOpt,
    pub proxy_name: Option<String>,
    pub maglev_size: crate::maglev::MaglevSize,
    pub hash_seed: u32,
    pub capacities: Capacities,
    pub hairpin_addr: Ipv4Addr,
    pub hairpin_addr6: Ipv6Addr,
    pub snat_addr: Option<Ipv4Addr>,
    pub snat_addr6: Option<Ipv6Addr>,
    pub snat_ports: (u16, u16),
    pub timeouts: Timeouts,
    /// Where `/metrics` is served (None: off).
    pub metrics_addr: Option<SocketAddr>,
    /// Where `/healthz` and `/livez` are served (None: off).
    pub healthz_addr: Option<SocketAddr>,
}

/// Conntrack timeouts, seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_fin: u32,
    pub tcp_closed: u32,
    pub udp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 6 * 3600,
            tcp_fin: 120,
            tcp_closed: 10,
            udp: 60,
        }
    }
}

impl AgentConfig {
    /// The datapath configuration entry.
    pub fn datapath_config(&self) -> Config {
        let snat = self
            .snat_addr
            .or_else(|| first_v4(&self.node_ips))
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Config {
            layout_version: LAYOUT_VERSION,
            hash_seed: self.hash_seed,
            hairpin_addr: self.hairpin_addr.octets(),
            snat_addr: snat.octets(),
            snat_port_min: self.snat_ports.0,
            snat_port_max: self.snat_ports.1,
            ct_tcp_syn: self.timeouts.tcp_syn,
            ct_tcp_established: self.timeouts.tcp_established,
            ct_tcp_fin: self.timeouts.tcp_fin,
            ct_tcp_closed: self.timeouts.tcp_closed,
            ct_udp: self.timeouts.udp,
            flags: 0,
        }
    }

    /// The datapath's IPv6 configuration entry.
    pub fn datapath_config6(&self) -> Config6 {
        Config6 {
            hairpin_addr: self.hairpin_addr6.octets(),
            snat_addr: self
                .snat_addr6
                .or_else(|| first_v6(&self.node_ips))
                .unwrap_or(Ipv6Addr::UNSPECIFIED)
                .octets(),
        }
    }

    fn node_context(&self) -> NodeContext {
        NodeContext {
            node_name: self.node_name.clone(),
            node_ips: self.node_ips.clone(),
            proxy_name: self.proxy_name.clone(),
            zone: self.node_zone.clone(),
            external_ip_cidrs: self.external_ip_cidrs.clone(),
        }
    }
}

/// Removes the whole datapath on purpose: links detach, maps (conntrack included) go. False
/// when nothing was pinned there.
pub fn cleanup(dir: &std::path::Path) -> anyhow::Result<bool> {
    let removed = bpf::pins::remove_all(dir)?;
    if removed {
        tracing::info!(bpffs = %dir.display(), "datapath removed");
    }
    Ok(removed)
}

/// Runs the file source: sends everything now, then what changed after every change.
fn spawn_file_source(path: PathBuf, tx: mpsc::UnboundedSender<Delta>) {
    tokio::spawn(async move {
        let mut src = FileSource::new(&path);
        let mut watch = Watch::new(&path, Duration::from_secs(2));
        let mut noticed = Instant::now();
        loop {
            let mut delta = src.load();
            delta.noticed = Some(noticed);
            if tx.send(delta).is_err() {
                return;
            }
            noticed = watch.changed().await;
            tracing::debug!(path = %path.display(), "services changed");
        }
    });
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(mut cfg: AgentConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let pins = bpf::pins::resolve(&cfg.bpffs)?;
    if pins.via == lb_common::pins_via::HOST {
        tracing::info!(
            bpffs = %pins.shown.display(),
            "running in a private mount namespace (e.g. `ip netns exec`): pinning in the host's bpffs, so the datapath outlives the agent"
        );
    }
    // Every syscall from here on goes through the resolved path.
    cfg.bpffs = pins.path.clone();
    // A datapath of the previous layout is upgraded in place, its flows kept.
    let mut migration = bpf::migrate::prepare(&cfg.bpffs)?;
    let mut ebpf = bpf::load(&cfg.bpffs, cfg.capacities, false)?;
    let mut maps = Maps::open(&cfg.bpffs)?;
    if let Some(m) = migration.as_mut() {
        m.copy()?;
    }
    // Keep the events a running `xlb monitor` asked for across agent restarts.
    let monitor = maps
        .read_config()
        .map_or(0, |c| c.flags & lb_common::config_flags::MONITOR_MASK);
    let mut dp = cfg.datapath_config();
    dp.flags |= monitor;
    maps.write_config(&dp)?;
    maps.write_config6(&cfg.datapath_config6())?;
    let recovered = maps.read_all()?;
    // Before any program of this agent is attached: its filters may be new (an upgrade).
    maps.adopt_filters(&recovered)?;
    let adopted = recovered.infos.len();
    let sync_cfg = SyncConfig {
        maglev_size: cfg.maglev_size,
        hash_seed: cfg.hash_seed,
        limits: maps.limits(),
    };
    let mut sync = MapSync::recover(maps, sync_cfg, recovered);
    tracing::info!(bpffs = %pins.shown.display(), adopted_services = adopted, "datapath loaded");
    let mut record = StatusRecord::new(pins.via);
    let cgroup = attach::attach_sockets(&cfg.cgroup, &cfg.bpffs, &mut ebpf)?;
    record.set_cgroup(cgroup.as_deref());
    record.warn(
        lb_common::agent_warn::NO_SOCKET_LB,
        cgroup.is_none() && cfg.cgroup != CgroupOpt::Off,
    );
    if let Err(e) = bpf::attach_txerr(&mut ebpf, &cfg.bpffs) {
        tracing::warn!(error = %e, "XDP_TX errors cannot be counted");
    }

    let metrics = Metrics::new(&cfg.bpffs);
    let health = Arc::new(Health::default());
    let _servers = serve_endpoints(&cfg, &metrics, &health).await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Delta>();
    // The first sync waits until every source has reported its whole state once: syncing
    // earlier would remove what a previous agent programmed from a source not heard yet.
    let mut waiting: BTreeSet<SourceId> = BTreeSet::new();
    if let Some(path) = &cfg.services {
        waiting.insert(SourceId::Files);
        spawn_file_source(path.clone(), tx.clone());
    }
    if let Some(access) = &cfg.kubernetes {
        waiting.insert(SourceId::Kubernetes);
        let client = kube_source::client(access).await?;
        tracing::info!(via = %kube_source::describe(access), "watching the Kubernetes API");
        let opts = kube_source::Options {
            node_name: cfg.node_name.clone(),
            proxy_name: cfg.proxy_name.clone(),
            ..kube_source::Options::default()
        };
        let (tx, m) = (tx.clone(), metrics.clone());
        tokio::spawn(kube_source::run(client, opts, tx, move |r| {
            m.source_errors
                .get_or_create(&vec![
                    ("source", "kubernetes".to_owned()),
                    ("resource", r.as_str().to_owned()),
                ])
                .inc();
        }));
    }
    if waiting.is_empty() {
        tracing::warn!("no --services or Kubernetes source: keeping the programmed state as is");
        health.mark_synced();
    }
    drop(tx);

    let mut devs = attach::Devices::new(&cfg.bpffs, &cfg.devices, &cfg.pod_devices, cfg.xdp_mode);
    let mut link_events = match devices::watch_links() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "netlink link watch unavailable; rescanning every 2s");
            None
        }
    };
    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut translator = Translator::new(cfg.node_context());
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut prober = crate::probe::Prober::new(probe_tx);
    let mut state = SyncState::default();
    let mut hc_ports = crate::http::HealthChecks::default();
    let obs = Observers {
        metrics: &metrics,
        health: &health,
    };
    let mut sources_open = true;
    devs.reconcile(&mut ebpf, sync.writer_mut());
    // Every attached entry program is this agent's now: its stages take over the pins.
    bpf::pin_stages(&ebpf, &cfg.bpffs)?;
    record.set_devices(devs.attached());
    if devs.count() == 0 {
        tracing::warn!(
            devices = ?cfg.devices,
            pod_devices = ?cfg.pod_devices,
            "no device has an xlb program: only socket-level translation works until one is attached (check --devices / --pod-devices)"
        );
    }
    publish(&mut record, &mut devs, &mut sync);
    // The previous layout's programs are detached now: the last of their flows, then their
    // table goes.
    if let Some(m) = migration.take()
        && let Err(e) = m.finish()
    {
        tracing::warn!(error = %e, "finishing the layout migration");
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "agent ready"
    );

    loop {
        tokio::select! {
            delta = rx.recv(), if sources_open => {
                let Some(delta) = delta else {
                    sources_open = false;
                    continue;
                };
                // Coalesce a burst: everything queued goes into one sync.
                let mut noticed = None;
                let mut next = Some(delta);
                while let Some(d) = next {
                    noticed = noticed.or(d.noticed);
                    waiting.remove(&d.source);
                    if let Some(ips) = &d.node_ips {
                        adopt_node_ips(&cfg, ips, &mut translator, &mut sync);
                    }
                    if let Some(leaving) = d.node_leaving {
                        tracing::info!(leaving, "node deletion or autoscaler drain: /healthz follows");
                        health.set_node_leaving(leaving);
                    }
                    if let Some(zone) = &d.node_zone
                        && cfg.node_zone.is_none()
                    {
                        let zone = (!zone.is_empty()).then(|| zone.clone());
                        tracing::info!(zone = ?zone, "node zone from the Node object");
                        translator.set_node(NodeContext {
                            zone,
                            ..translator.node().clone()
                        });
                    }
                    d.apply_to(&mut translator);
                    state.source_problems.insert(d.source, d.problems);
                    next = rx.try_recv().ok();
                }
                if !waiting.is_empty() {
                    continue;
                }
                sync_now(&mut sync, &mut translator, &mut state, noticed, &obs);
                if reconcile_probes(&mut prober, &mut translator, &metrics) {
                    sync_now(&mut sync, &mut translator, &mut state, None, &obs);
                }
                state.publish_to(&mut record, &sync);
                publish(&mut record, &mut devs, &mut sync);
                hc_ports.update(translator.health_checks()).await;
            }
            Some(change) = probe_rx.recv() => {
                if !prober.is_current(&change) {
                    continue;
                }
                let (service, addr, port) = &change.key;
                let backend = format!("{addr}:{port}");
                metrics
                    .backend_healthy
                    .get_or_create(&backend_labels(&change.key))
                    .set(i64::from(change.healthy));
                if change.healthy {
                    tracing::info!(service, backend, "backend passes its health check again: back in its service");
                } else {
                    tracing::warn!(service, backend, reason = %change.reason, "backend failed its health check: left out of its service");
                }
                if translator.set_healthy(&change.key, change.healthy) {
                    sync_now(&mut sync, &mut translator, &mut state, None, &obs);
                    state.publish_to(&mut record, &sync);
                    publish(&mut record, &mut devs, &mut sync);
                }
            }
            Some(()) = async { match link_events.as_mut() { Some(r) => r.recv().await, None => None } } => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if devs.reconcile(&mut ebpf, sync.writer_mut()) {
                    record.set_devices(devs.attached());
                    publish(&mut record, &mut devs, &mut sync);
                }
            }
            _ = rescan.tick() => {
                if devs.reconcile(&mut ebpf, sync.writer_mut()) {
                    record.set_devices(devs.attached());
                }
                // The heartbeat, XDP_TX errors and the rest of the status.
                publish(&mut record, &mut devs, &mut sync);
            }
            _ = retry.tick(), if state.failing => {
                state.full = true;
                sync_now(&mut sync, &mut translator, &mut state, None, &obs);
                state.publish_to(&mut record, &sync);
                publish(&mut record, &mut devs, &mut sync);
                hc_ports.update(translator.health_checks()).await;
            }
            _ = sighup.recv() => {
                // Re-read the maps as a restarted agent would and repair any drift (entries
                // changed or deleted behind the agent's back, e.g. with bpftool).
                match sync.writer().read_all() {
                    Ok(recovered) => {
                        if let Err(e) = sync.writer_mut().adopt_filters(&recovered) {
                            tracing::error!(error = %e, "SIGHUP: recomputing the address filters failed");
                        }
                        sync = MapSync::recover(sync.into_writer(), sync_cfg, recovered);
                        tracing::info!("SIGHUP: re-read the maps; repairing drift");
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reading the maps failed"),
                }
                state.full = true;
                sync_now(&mut sync, &mut translator, &mut state, None, &obs);
                state.publish_to(&mut record, &sync);
                publish(&mut record, &mut devs, &mut sync);
                hc_ports.update(translator.health_checks()).await;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    record.stop();
    if let Err(e) = sync.writer_mut().write_agent(record.get()) {
        tracing::warn!(error = %e, "writing the status failed");
    }
    // Say what the pins show, not what was meant.
    let links = bpf::pinned_links(&cfg.bpffs);
    if links == 0 {
        tracing::warn!(
            bpffs = %pins.shown.display(),
            "stopping; no program link is pinned there: nothing keeps forwarding without the agent"
        );
    } else {
        tracing::info!(
            bpffs = %pins.shown.display(),
            links,
            "stopping; the datapath stays pinned and keeps forwarding"
        );
    }
    Ok(())
}

/// Refreshes the status record (heartbeat, devices' XDP_TX errors) and writes it.
fn publish(record: &mut StatusRecord, devs: &mut attach::Devices, sync: &mut MapSync<Maps>) {
    let any = devs.check_tx_errors(sync.writer());
    record.warn(lb_common::agent_warn::XDP_TX_ERRORS, any);
    record.warn(
        lb_common::agent_warn::NATIVE_MAY_DROP,
        devs.attached()
            .any(|d| d.reason == lb_common::dev_reason::REQUESTED_MAY_DROP),
    );
    record.beat();
    if let Err(e) = sync.writer_mut().write_agent(record.get()) {
        tracing::warn!(error = %e, "writing the status failed");
    }
}

/// Serves `/metrics` and `/healthz` + `/livez` (on one listener when the addresses are equal).
/// A listen address that cannot be bound is a start-up error naming its flag.
async fn serve_endpoints(
    cfg: &AgentConfig,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let handler = |with_metrics: bool, with_health: bool| {
        let (metrics, health) = (metrics.clone(), health.clone());
        Arc::new(move |path: &str| match path {
            "/metrics" if with_metrics => match metrics.encode() {
                Ok(body) => Response {
                    status: 200,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                },
                Err(_) => Response::text(500, "encoding failed\n"),
            },
            "/healthz" | "/readyz" if with_health => {
                let (ok, body) = health.healthz();
                Response {
                    status: if ok { 200 } else { 503 },
                    content_type: "application/json",
                    body,
                }
            }
            "/livez" if with_health => Response::text(200, "ok\n"),
            _ => Response::text(404, "not found\n"),
        }) as Arc<dyn Fn(&str) -> Response + Send + Sync>
    };
    let mut out = Vec::new();
    let same = cfg.metrics_addr.is_some() && cfg.metrics_addr == cfg.healthz_addr;
    for (flag, addr, m, h) in [
        ("--metrics-addr", cfg.metrics_addr, true, same),
        (
            "--healthz-addr",
            cfg.healthz_addr.filter(|_| !same),
            false,
            true,
        ),
    ] {
        let Some(addr) = addr else { continue };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{flag} {addr}: cannot listen"))?;
        tracing::info!(%addr, flag, "serving");
        out.push(crate::http::serve(l, handler(m, h)));
    }
    Ok(out)
}

/// The first IPv4 address of `ips`.
fn first_v4(ips: &[IpAddr]) -> Option<Ipv4Addr> {
    ips.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// The first IPv6 address of `ips`.
fn first_v6(ips: &[IpAddr]) -> Option<Ipv6Addr> {
    ips.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    })
}

/// Takes this node's addresses from a source (the Node object) when `--node-ip` was not given:
/// NodePort frontends, and the SNAT source unless `--snat-addr` is set.
fn adopt_node_ips(
    cfg: &AgentConfig,
    ips: &[IpAddr],
    translator: &mut Translator,
    sync: &mut MapSync<Maps>,
) {
    if !cfg.node_ips.is_empty() {
        return;
    }
    tracing::info!(node_ips = ?ips, "node addresses from the Node object");
    translator.set_node(NodeContext {
        node_ips: ips.to_vec(),
        ..translator.node().clone()
    });
    let maps = sync.writer_mut();
    if cfg.snat_addr.is_none() {
        let result = maps
            .read_config()
            .map_err(anyhow::Error::from)
            .and_then(|mut c| {
                c.snat_addr = first_v4(ips).unwrap_or(Ipv4Addr::UNSPECIFIED).octets();
                maps.write_config(&c).map_err(anyhow::Error::from)
            });
        if let Err(e) = result {
            tracing::error!(error = %e, "updating the SNAT address failed");
        }
    }
    if cfg.snat_addr6.is_none() {
        let c6 = AgentConfig {
            node_ips: ips.to_vec(),
            ..cfg.clone()
        }
        .datapath_config6();
        if let Err(e) = maps.write_config6(&c6) {
            tracing::error!(error = %e, "updating the IPv6 SNAT address failed");
        }
    }
}

/// The metric labels of a probed backend.
fn backend_labels(key: &crate::probe::Key) -> Vec<(&'static str, String)> {
    vec![
        ("service", key.0.clone()),
        ("backend", format!("{}:{}", key.1, key.2)),
    ]
}

/// Probes the backends the compact services' health checks name. A backend no longer probed
/// counts as healthy again; true if that changes a service (sync again).
fn reconcile_probes(
    prober: &mut crate::probe::Prober,
    translator: &mut Translator,
    metrics: &Metrics,
) -> bool {
    let targets = translator.probe_targets();
    let mut changed = false;
    for key in prober.reconcile(targets.clone()) {
        metrics.backend_healthy.remove(&backend_labels(&key));
        changed |= translator.set_healthy(&key, true);
    }
    for t in &targets {
        let key = (t.service.clone(), t.addr, t.port);
        let healthy = !translator.unhealthy().contains(&key);
        metrics
            .backend_healthy
            .get_or_create(&backend_labels(&key))
            .set(i64::from(healthy));
    }
    changed
}

/// Where sync passes are reported.
struct Observers<'a> {
    metrics: &'a Metrics,
    health: &'a Health,
}

/// What the sync loop remembers between passes.
#[derive(Default)]
struct SyncState {
    /// The next pass compares everything (first pass after adoption, retries).
    full: bool,
    /// Some service failed: retry periodically.
    failing: bool,
    /// Every problem each source has now.
    source_problems: BTreeMap<SourceId, Vec<crate::problem::Problem>>,
    logged_problems: Vec<String>,
    synced_once: bool,
    /// Services that failed at the last pass.
    failures: usize,
    /// Active backends of UDP ClusterIPs (to abort the sockets of those that leave).
    udp: stale::UdpBackends,
}

impl SyncState {
    /// Copies the last pass's outcome into the status record.
    fn publish_to(&self, record: &mut StatusRecord, sync: &MapSync<Maps>) {
        let t = sync.totals();
        record.set_sync(
            self.failures,
            &self.logged_problems,
            t.services as u64,
            t.backends as u64,
        );
    }
}

/// Translates what changed and programs it.
fn sync_now(
    sync: &mut MapSync<Maps>,
    translator: &mut Translator,
    st: &mut SyncState,
    noticed: Option<Instant>,
    obs: &Observers<'_>,
) {
    let changed = translator.flush();
    let problems: Vec<String> = st
        .source_problems
        .values()
        .flatten()
        .cloned()
        .chain(translator.problems())
        .map(|p| p.to_string())
        .collect();
    if problems != st.logged_problems {
        for p in &problems {
            tracing::warn!("{p}");
        }
        st.logged_problems = problems;
    }
    // The first pass diffs everything against what a previous agent left in the maps.
    let full = st.full || !st.synced_once;
    let report = if full {
        st.full = false;
        sync.apply(translator.desired())
    } else {
        sync.apply_changes(translator.desired(), &changed)
    };
    st.synced_once = true;
    let gone = st
        .udp
        .update(translator.desired(), (!full).then_some(&changed));
    if !gone.is_empty() {
        match stale::abort_sockets(&sync.writer().dir, &gone) {
            Ok(0) => {}
            Ok(n) => {
                obs.metrics.udp_sockets_aborted.inc_by(n as u64);
                tracing::info!(
                    sockets = n,
                    backends = gone.len(),
                    "aborted host-network UDP sockets connected to backends that left"
                );
            }
            Err(e) => tracing::warn!(error = %e, "aborting UDP sockets of backends that left"),
        }
    }
    if report.writes > 1000 {
        // A big sync (start-up, mass change) leaves parse and table buffers in the allocator's
        // free lists: hand them back to the kernel.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }
    for (name, err) in &report.failed {
        tracing::error!(service = %name, error = %err, "programming failed; will retry");
    }
    st.failing = !report.failed.is_empty();
    st.failures = report.failed.len();
    obs.health.record(!st.failing);
    obs.metrics.observe_sync(&report, noticed, &sync.totals());
    obs.metrics
        .source_problems
        .set(st.logged_problems.len() as i64);
    if report.writes > 0 {
        let totals = sync.totals();
        tracing::info!(
            added = report.added,
            changed = report.changed,
            removed = report.removed,
            writes = report.writes,
            services = totals.services,
            backends = totals.backends,
            sync_us = report.duration.as_micros() as u64,
            latency_us = noticed.map_or(0, |n| n.elapsed().as_micros() as u64),
            "maps synced"
        );
    }
}
