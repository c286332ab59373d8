//! Prometheus metrics (`--metrics-addr`, path `/metrics`) and the agent's health (`/healthz`,
//! `/livez` on `--healthz-addr`).
//!
//! Control-plane metrics (sync durations, programming latency, failures) are recorded by the
//! agent as it works. Datapath metrics are read from the pinned maps at scrape time: per-service
//! and global counters are cheap per-CPU array reads; map fill levels need a walk of the
//! conntrack table (batched: ~130 syscalls for a full 512k table), so they are recounted at
//! most every `FILL_MAX_AGE` and scrapes in between reuse the figures.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    Backend, CtKey, CtValue, counter, ct_dir, ct_flags, dev_mode, drop_reason, map_names as names,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

use crate::{
    bpf::{maps::Maps, pins::expected_layout},
    sync::{SyncReport, Totals},
};

/// Map fill levels older than this are recounted at the next scrape.
pub const FILL_MAX_AGE: Duration = Duration::from_secs(5);

/// Labels of a per-source counter.
type SourceLabels = Vec<(&'static str, String)>;

/// Metrics the agent records as it works.
pub struct Metrics {
    registry: Registry,
    /// Duration of each map sync pass.
    pub sync_duration: Histogram,
    /// Time from a source change being noticed to the datapath being programmed.
    pub programming_latency: Histogram,
    /// Services that failed to program (per pass).
    pub sync_failures: Counter,
    /// Unix time of the last sync pass that wrote something, seconds.
    pub last_sync: Gauge<f64, AtomicU64>,
    /// Programmed services.
    pub services: Gauge,
    /// Programmed backends.
    pub backends: Gauge,
    /// Source objects currently rejected as invalid (their last good state stays in force).
    pub source_problems: Gauge,
    /// Errors talking to a source (e.g. a failed watch), by source.
    pub source_errors: Family<SourceLabels, Counter>,
    /// Host-network UDP sockets aborted because the backend they were connected to left.
    pub udp_sockets_aborted: Counter,
    /// Health of each probed backend (1 healthy, 0 not), by service and backend.
    pub backend_healthy: Family<SourceLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Builds the registry; datapath metrics are read from the maps pinned under `dir`.
    pub fn new(dir: &Path) -> Arc<Self> {
        let mut registry = Registry::with_prefix("xlb");
        let sync_duration = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        let programming_latency = Histogram::new(exponential_buckets(0.001, 2.5, 12));
        let m = Self {
            sync_duration: sync_duration.clone(),
            programming_latency: programming_latency.clone(),
            sync_failures: Counter::default(),
            last_sync: Gauge::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            source_problems: Gauge::default(),
            source_errors: Family::default(),
            udp_sockets_aborted: Counter::default(),
            backend_healthy: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "xlb build information",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("layout_version", lb_common::LAYOUT_VERSION.to_string()),
            ]),
        );
        registry.register_with_unit(
            "sync_duration",
            "Duration of map sync passes",
            Unit::Seconds,
            sync_duration,
        );
        registry.register_with_unit(
            "programming_latency",
            "Time from a source change being noticed to the datapath being programmed",
            Unit::Seconds,
            programming_latency,
        );
        registry.register(
            "sync_failures",
            "Services that could not be programmed, per sync pass (retried)",
            m.sync_failures.clone(),
        );
        registry.register_with_unit(
            "last_sync_timestamp",
            "Unix time of the last sync pass that changed the maps",
            Unit::Seconds,
            m.last_sync.clone(),
        );
        registry.register("services", "Programmed services", m.services.clone());
        registry.register("backends", "Programmed backends", m.backends.clone());
        registry.register(
            "source_problems",
            "Source objects rejected as invalid (their last good state stays in force)",
            m.source_problems.clone(),
        );
        registry.register(
            "source_errors",
            "Errors reading a source (failed list/watch, unreadable file)",
            m.source_errors.clone(),
        );
        registry.register(
            "udp_sockets_aborted",
            "Host-network UDP sockets connected to a ClusterIP's backend that left, aborted so they reconnect",
            m.udp_sockets_aborted.clone(),
        );
        registry.register(
            "backend_healthy",
            "Health check state of each probed backend (1 healthy, 0 unhealthy: left out)",
            m.backend_healthy.clone(),
        );
        registry.register_collector(Box::new(Datapath {
            dir: dir.to_owned(),
            fill: Mutex::new(None),
        }));
        Arc::new(Self { registry, ..m })
    }

    /// Records one sync pass.
    pub fn observe_sync(&self, report: &SyncReport, noticed: Option<Instant>, totals: &Totals) {
        self.sync_duration.observe(report.duration.as_secs_f64());
        if report.writes > 0 {
            if let Some(n) = noticed {
                self.programming_latency.observe(n.elapsed().as_secs_f64());
            }
            self.last_sync.set(unix_now());
        }
        self.sync_failures.inc_by(report.failed.len() as u64);
        self.services.set(totals.services as i64);
        self.backends.set(totals.backends as i64);
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)?;
        Ok(s)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Map fill levels, refreshed in the background.
#[derive(Debug, Default, Clone)]
struct Fill {
    /// Map name → (entries, capacity).
    maps: BTreeMap<&'static str, (u64, u32)>,
    /// Live SNAT flows.
    snat_flows: u64,
    /// Highest share of the SNAT port range in use towards one backend (0..1).
    snat_max_ratio: f64,
    /// Backends by service id and state.
    backends: BTreeMap<(u32, &'static str), u64>,
}

/// Counts entries of every hash-type map, SNAT port use and backends by state.
fn count_fill(dir: &Path) -> anyhow::Result<Fill> {
    let maps = Maps::open(dir)?;
    let cfg = maps.read_config()?;
    let range = u64::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1;
    let now = crate::status::monotonic_secs();
    let mut fill = Fill::default();
    let mut snat_per_dest: HashMap<([u8; 4], u16, u8), u64> = HashMap::new();
    for (name, ty, _, _) in expected_layout() {
        use aya::maps::MapType;
        if !matches!(ty, MapType::Hash | MapType::LruHash | MapType::HashOfMaps) {
            continue;
        }
        let cap = aya::maps::MapInfo::from_pin(dir.join(name))?.max_entries();
        let n = if name == names::CONNTRACK || name == names::CT_NEW {
            maps.walk(name, |k, v| {
                if k.len() != size_of::<CtKey>() || v.len() != size_of::<CtValue>() {
                    return;
                }
                // SAFETY: lengths checked; plain #[repr(C)] integer structs.
                let (k, v) = unsafe {
                    (
                        std::ptr::read_unaligned(k.as_ptr().cast::<CtKey>()),
                        std::ptr::read_unaligned(v.as_ptr().cast::<CtValue>()),
                    )
                };
                if k.dir == ct_dir::FORWARD && v.flags & ct_flags::SNAT != 0 && v.expires >= now {
                    *snat_per_dest
                        .entry((v.nat_daddr, v.nat_dport, k.proto))
                        .or_default() += 1;
                }
            })?
        } else if name == names::BACKENDS {
            let backends = &mut fill.backends;
            maps.walk(name, |_, v| {
                if v.len() == size_of::<Backend>() {
                    // SAFETY: length checked; plain #[repr(C)] struct.
                    let b = unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<Backend>()) };
                    *backends
                        .entry((b.svc_id, crate::bpf::maps::backend_state(b.flags)))
                        .or_default() += 1;
                }
            })?
        } else {
            maps.walk(name, |_, _| {})?
        };
        fill.maps.insert(name, (n as u64, cap));
    }
    fill.snat_flows = snat_per_dest.values().sum();
    fill.snat_max_ratio = snat_per_dest
        .values()
        .map(|n| *n as f64 / range as f64)
        .fold(0.0, f64::max);
    Ok(fill)
}

/// Reads the datapath's counters at scrape time.
#[derive(Debug)]
struct Datapath {
    dir: PathBuf,
    /// The last count and when it was taken.
    fill: Mutex<Option<(Instant, Fill)>>,
}

impl Datapath {
    /// The cached fill levels, recounted when older than `FILL_MAX_AGE`.
    fn fill(&self) -> Fill {
        let Ok(mut g) = self.fill.lock() else {
            return Fill::default();
        };
        if let Some((at, f)) = g.as_ref()
            && at.elapsed() < FILL_MAX_AGE
        {
            return f.clone();
        }
        match count_fill(&self.dir) {
            Ok(f) => {
                *g = Some((Instant::now(), f.clone()));
                f
            }
            Err(e) => {
                tracing::debug!(error = %e, "map fill not counted");
                g.as_ref().map(|(_, f)| f.clone()).unwrap_or_default()
            }
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// A counter family (names get the registry's `xlb_` prefix). A single unlabelled row is
/// written as a plain sample.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    if let [(labels, v)] = rows
        && labels.is_empty()
    {
        return ConstCounter::new(*v).encode(m);
    }
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A gauge family, like `counter`.
fn gauge<N: Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(Labels, N)],
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: prometheus_client::encoding::EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    if let [(labels, v)] = rows
        && labels.is_empty()
    {
        return ConstGauge::new(*v).encode(m);
    }
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Datapath {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A datapath that is not (yet) pinned has no datapath metrics; never fail the scrape.
        let Ok(maps) = Maps::open(&self.dir) else {
            return Ok(());
        };
        let infos = maps.infos().unwrap_or_default();
        let mut pkts: Vec<(Labels, u64)> = Vec::new();
        let mut bytes: Vec<(Labels, u64)> = Vec::new();
        let mut new_flows: Vec<(Labels, u64)> = Vec::new();
        let mut drops: Vec<(Labels, u64)> = Vec::new();
        let mut names_by_id = BTreeMap::new();
        for (id, info) in &infos {
            let name = crate::bpf::maps::info_name(info);
            names_by_id.insert(*id, name.clone());
            let Ok(s) = maps.svc_stats_sum(*id) else {
                continue;
            };
            let svc = |dir: Option<&'static str>| {
                let mut l = vec![("service", name.clone())];
                if let Some(d) = dir {
                    l.push(("direction", d.to_owned()));
                }
                l
            };
            pkts.push((svc(Some("original")), s.fwd_packets));
            pkts.push((svc(Some("reply")), s.rev_packets));
            bytes.push((svc(Some("original")), s.fwd_bytes));
            bytes.push((svc(Some("reply")), s.rev_bytes));
            new_flows.push((svc(None), s.new_flows));
            drops.push((svc(None), s.drops));
        }
        counter(
            &mut enc,
            "service_packets",
            "Packets translated for a service (original: client to backend; reply: back)",
            None,
            &pkts,
        )?;
        counter(
            &mut enc,
            "service",
            "Bytes translated for a service (original: client to backend; reply: back)",
            Some(&Unit::Bytes),
            &bytes,
        )?;
        counter(
            &mut enc,
            "service_new_connections",
            "New flows given a backend",
            None,
            &new_flows,
        )?;
        counter(
            &mut enc,
            "service_drops",
            "Packets of a service dropped (no backend, source range, ...)",
            None,
            &drops,
        )?;

        let sums = maps.counters_sum().unwrap_or_default();
        let get = |i: u32| sums.get(i as usize).copied().unwrap_or(0);
        counter(
            &mut enc,
            "datapath_packets",
            "Packets seen by the xlb programs",
            None,
            &[(vec![], get(counter::PACKETS))],
        )?;
        let ops: Vec<(Labels, u64)> = (0..counter::DROP_BASE)
            .filter(|i| *i != counter::PACKETS && !counter::name(*i).is_empty())
            .map(|i| (vec![("operation", counter::name(i).to_owned())], get(i)))
            .collect();
        counter(
            &mut enc,
            "datapath_operations",
            "Datapath outcomes by kind (conntrack hits, new flows, translations, passes)",
            None,
            &ops,
        )?;
        let drop_rows: Vec<(Labels, u64)> = (1..drop_reason::MAX)
            .map(|r| {
                (
                    vec![("reason", drop_reason::name(r).to_owned())],
                    get(counter::DROP_BASE + r),
                )
            })
            .collect();
        counter(
            &mut enc,
            "datapath_drops",
            "Packets dropped by the datapath, by reason",
            None,
            &drop_rows,
        )?;
        let mut tx_errors: Vec<(Labels, u64)> = Vec::new();
        let mut fallback: Vec<(Labels, i64)> = Vec::new();
        for d in maps
            .read_agent()
            .map_or([Default::default(); lb_common::STATUS_DEVICES], |a| {
                a.devices
            })
        {
            if !matches!(d.mode, dev_mode::XDP_NATIVE | dev_mode::XDP_GENERIC) {
                continue;
            }
            let Ok(Some(st)) = maps.device(d.ifindex) else {
                continue;
            };
            let l = vec![("device", crate::status::from_text(&d.name))];
            tx_errors.push((l.clone(), st.tx_errors));
            fallback.push((
                l,
                i64::from(st.flags & lb_common::dev_flags::TX_FALLBACK != 0),
            ));
        }
        counter(
            &mut enc,
            "xdp_tx_errors",
            "Frames an uplink's XDP_TX could not send (the device then falls back to tc)",
            None,
            &tx_errors,
        )?;
        gauge(
            &mut enc,
            "xdp_tx_fallback",
            "1 when XDP leaves an uplink's flows to tc after XDP_TX errors",
            None,
            &fallback,
        )?;

        let fill = self.fill();
        let entries: Vec<(Labels, u64)> = fill
            .maps
            .iter()
            .map(|(n, (e, _))| (vec![("map", (*n).to_owned())], *e))
            .collect();
        let caps: Vec<(Labels, i64)> = fill
            .maps
            .iter()
            .map(|(n, (_, c))| (vec![("map", (*n).to_owned())], i64::from(*c)))
            .collect();
        gauge(
            &mut enc,
            "map_entries",
            "Entries in a pinned map (recounted at most every 5s; compare with xlb_map_capacity)",
            None,
            &entries
                .iter()
                .map(|(l, v)| (l.clone(), *v as i64))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut enc,
            "map_capacity",
            "Maximum entries of a pinned map",
            None,
            &caps,
        )?;
        gauge::<i64>(
            &mut enc,
            "snat_flows",
            "Live SNAT flows (each holds one source port towards its backend)",
            None,
            &[(vec![], fill.snat_flows as i64)],
        )?;
        gauge::<f64>(
            &mut enc,
            "snat_port_utilization",
            "Highest share of the SNAT port range in use towards any one backend (1 = exhausted)",
            Some(&Unit::Other("ratio".to_owned())),
            &[(vec![], fill.snat_max_ratio)],
        )?;
        let be: Vec<(Labels, i64)> = fill
            .backends
            .iter()
            .map(|((id, state), n)| {
                (
                    vec![
                        (
                            "service",
                            names_by_id
                                .get(id)
                                .cloned()
                                .unwrap_or_else(|| format!("#{id}")),
                        ),
                        ("state", (*state).to_owned()),
                    ],
                    *n as i64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "service_backends",
            "Backends of a service by state (active, not-ready, terminating)",
            None,
            &be,
        )?;
        Ok(())
    }
}

/// What `/healthz` reports: healthy once the first sync is done, as long as programming has
/// not been failing for longer than `UNHEALTHY_AFTER`.
#[derive(Debug, Default)]
pub struct Health {
    synced: AtomicBool,
    /// Unix seconds of the last successful sync pass (0: none).
    last_ok: AtomicU64,
    /// Unix seconds since which passes fail (0: not failing).
    failing_since: AtomicU64,
    /// This node is being deleted or drained by the cluster autoscaler (KEP-3836): load
    /// balancers in front of NodePorts should stop sending new connections here.
    node_leaving: AtomicBool,
}

/// How long programming may fail before `/healthz` turns 503.
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(60);

impl Health {
    /// Records the outcome of a sync pass.
    pub fn record(&self, ok: bool) {
        let now = unix_now() as u64;
        if ok {
            self.synced.store(true, Ordering::Relaxed);
            self.last_ok.store(now, Ordering::Relaxed);
            self.failing_since.store(0, Ordering::Relaxed);
        } else {
            let _ =
                self.failing_since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Marks the agent as synced without a pass (no source configured: the adopted state is
    /// what is wanted).
    pub fn mark_synced(&self) {
        self.record(true);
    }

    /// Records whether this node is leaving (its Node has a deletionTimestamp or the
    /// `ToBeDeletedByClusterAutoscaler` taint).
    pub fn set_node_leaving(&self, leaving: bool) {
        self.node_leaving.store(leaving, Ordering::Relaxed);
    }

    /// (healthy, JSON body) in kube-proxy's shape: unhealthy before the first sync, after a
    /// minute of failing syncs, and while the node is leaving (`nodeEligible: false`).
    pub fn healthz(&self) -> (bool, String) {
        let now = unix_now() as u64;
        let failing = self.failing_since.load(Ordering::Relaxed);
        let eligible = !self.node_leaving.load(Ordering::Relaxed);
        let healthy = self.synced.load(Ordering::Relaxed)
            && eligible
            && (failing == 0 || now.saturating_sub(failing) < UNHEALTHY_AFTER.as_secs());
        let last = self.last_ok.load(Ordering::Relaxed);
        let body = format!(
            "{{\"lastUpdated\":\"{}\",\"currentTime\":\"{}\",\"nodeEligible\":{eligible},\"synced\":{},\"failingSince\":{}}}\n",
            rfc3339(last),
            rfc3339(now),
            self.synced.load(Ordering::Relaxed),
            if failing == 0 {
                "null".to_owned()
            } else {
                format!("\"{}\"", rfc3339(failing))
            }
        );
        (healthy, body)
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_392_000), "2026-11-23T00:00:00Z");
    }

    #[test]
    fn health_needs_a_sync_and_tolerates_short_failures() {
        let h = Health::default();
        assert!(!h.healthz().0, "not healthy before the first sync");
        h.record(true);
        assert!(h.healthz().0);
        h.set_node_leaving(true);
        let (ok, body) = h.healthz();
        assert!(!ok && body.contains("\"nodeEligible\":false"), "{body}");
        h.set_node_leaving(false);
        assert!(h.healthz().0);
        h.record(false);
        assert!(h.healthz().0, "a fresh failure is tolerated");
        h.failing_since.store(1, Ordering::Relaxed);
        assert!(!h.healthz().0, "long failures are not");
        h.record(true);
        assert!(h.healthz().0);
    }

    #[test]
    fn control_plane_metrics_follow_prometheus_names() {
        let m = Metrics::new(Path::new("/nonexistent/xlb"));
        m.sync_duration.observe(0.002);
        m.sync_failures.inc();
        let text = m.encode().expect("encode");
        for needle in [
            "xlb_build_info{version=",
            "xlb_sync_duration_seconds_bucket{le=",
            "xlb_programming_latency_seconds_count 0",
            "xlb_sync_failures_total 1",
            "xlb_last_sync_timestamp_seconds ",
            "services 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
    }
}
