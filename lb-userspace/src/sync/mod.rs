//! MapSync: the only writer of the service maps. It turns a `DesiredState` into map entries,
//! diffing against what it applied before and writing only the changes, in an order that never
//! lets a packet see a half-built service:
//!
//! 1. frontends nobody wants any more are deleted first (no new flows reach a dying service);
//! 2. per service: backends, then the lookup table, then source ranges and info, then the
//!    frontends that point at them;
//! 3. backends, table chunks and ranges that are no longer referenced are deleted last;
//! 4. removed services' ids are released (and reused as late as possible).
//!
//! Ids are stable: adopted from the pinned maps on start (`recover`), never renumbered.
//!
//! Files: this one holds the state and the ordered apply (`apply_changes`, removals);
//! `batch` plans and writes a batch of services; `encode` turns them into map values;
//! `admit` checks capacities; `recover` adopts a previous agent's maps; `ids` allocates ids;
//! `writer` is the map interface (the real maps, or the recorder of the tests).

mod admit;
mod batch;
mod encode;
pub mod ids;
mod recover;
mod writer;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{ServiceKey, ServiceValue, SvcInfo};

use crate::addr::{WideBackend, WideKey};
pub use writer::{MapReader, MapWriter, Recovered, WriteError};

use crate::{
    maglev::{self, TableBackend},
    model::{DesiredState, IpNet, LbService, Scope},
};
use batch::TablePlan;
use encode::build_tables;
pub use encode::frontend_key;
use ids::IdAlloc;

use crate::maglev::MaglevSize;

/// Settings shared by every service's table.
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Maglev table size.
    pub maglev_size: MaglevSize,
    /// Seed of the Maglev permutations (equal on every node).
    pub hash_seed: u32,
    /// What the maps hold.
    pub limits: Limits,
}

pub use crate::bpf::Limits;

/// Why a service could not be (fully) programmed in a pass; it is retried on the next.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A map write failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Every service id is taken.
    #[error(
        "no service id free ({0}; ids of removed services return after this pass; raise --max-services)"
    )]
    ServiceIds(ids::Exhausted),
    /// Every backend id is taken.
    #[error("no backend id free ({0})")]
    BackendIds(ids::Exhausted),
    /// The service does not fit the maps; the message names the flag to raise.
    #[error("not programmed: {0}")]
    Capacity(String),
    /// The sync's own bookkeeping disagrees with itself (a bug; the service is retried).
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// What one `apply` did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Map writes and deletes issued.
    pub writes: usize,
    /// Services that could not be (fully) programmed; retried on the next apply.
    pub failed: Vec<(String, SyncError)>,
    pub duration: Duration,
}

/// What is in the maps for one service.
#[derive(Debug, Clone)]
struct Applied {
    id: u32,
    info: SvcInfo,
    /// The desired service these entries implement (`None` if adopted from the maps: it
    /// compares unequal, so the first apply checks it).
    model: Option<LbService>,
    frontends: BTreeMap<WideKey, ServiceValue>,
    backends: BTreeMap<(IpAddr, u16), (u32, WideBackend)>,
    ranges: BTreeSet<IpNet>,
}

impl Applied {
    /// Service `id` named `name` with nothing written yet (`info`, if the maps had one).
    fn empty(id: u32, name: &str, info: Option<SvcInfo>) -> Self {
        Self {
            id,
            info: info.unwrap_or(SvcInfo {
                lut_fingerprint: 0,
                name: encode::name_bytes(name),
                frontends: 0,
                pick_len: 0,
                lut_len: 0,
            }),
            model: None,
            frontends: BTreeMap::new(),
            backends: BTreeMap::new(),
            ranges: BTreeSet::new(),
        }
    }
}

/// Summary of the applied state, for metrics and the CLI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
}

/// The map writer with its memory of what it wrote.
pub struct MapSync<W> {
    w: W,
    cfg: SyncConfig,
    applied: BTreeMap<String, Applied>,
    /// Frontend key → the applied service it belongs to.
    fe_owner: HashMap<WideKey, String>,
    /// Internal-scope frontends in the maps (addr, port, proto) → how many.
    internal: HashMap<(IpAddr, u16, u8), usize>,
    svc_ids: IdAlloc,
    backend_ids: IdAlloc,
}

/// Services programmed together: their tables are computed in parallel and new ones enter
/// the kernel in one batch. Also bounds the memory of tables held at once.
const SYNC_BATCH: usize = 256;

impl<W: MapWriter> MapSync<W> {
    /// Starts from empty maps.
    pub fn new(w: W, cfg: SyncConfig) -> Self {
        Self {
            w,
            cfg,
            applied: BTreeMap::new(),
            fe_owner: HashMap::new(),
            internal: HashMap::new(),
            svc_ids: IdAlloc::new(cfg.limits.services),
            backend_ids: IdAlloc::new(1 << 32),
        }
    }

    /// Gives the writer back (to re-adopt what is in the maps with `recover`).
    pub fn into_writer(self) -> W {
        self.w
    }

    /// The writer, for writes outside the service state (the datapath configuration).
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// The writer (for metrics or tests).
    pub fn writer(&self) -> &W {
        &self.w
    }

    /// Ids assigned to a service's name (tests, CLI cross-checks).
    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.applied.get(name).map(|a| a.id)
    }

    /// Backend id of `addr:port` in service `name`.
    pub fn backend_id(&self, name: &str, addr: impl Into<IpAddr>, port: u16) -> Option<u32> {
        let addr = addr.into();
        self.applied
            .get(name)
            .and_then(|a| a.backends.get(&(addr, port)))
            .map(|(id, _)| *id)
    }

    /// Counts of what is programmed.
    pub fn totals(&self) -> Totals {
        Totals {
            services: self.applied.len(),
            frontends: self.applied.values().map(|a| a.frontends.len()).sum(),
            backends: self.applied.values().map(|a| a.backends.len()).sum(),
        }
    }

    fn fingerprint(&self, svc: &LbService, ids: &[(u32, &TableBackend)]) -> u64 {
        let mut text = format!(
            "{}|{}|{}|",
            svc.algorithm, self.cfg.maglev_size, self.cfg.hash_seed
        );
        for (id, b) in ids {
            text.push_str(&format!("{id}={}*{};", b.key, b.weight));
        }
        // Never 0: 0 marks "unknown" (recovered without info).
        maglev::hash64(0x0078_6c62, text.as_bytes()) | 1
    }

    /// Programs `desired`, writing only differences, in safe order. Compares every service
    /// with what was applied; use `apply_changes` when the changed names are known.
    pub fn apply(&mut self, desired: &DesiredState) -> SyncReport {
        let mut changed: BTreeSet<String> = desired
            .services
            .iter()
            .filter(|(n, s)| self.applied.get(*n).and_then(|a| a.model.as_ref()) != Some(*s))
            .map(|(n, _)| n.clone())
            .collect();
        changed.extend(
            self.applied
                .keys()
                .filter(|n| !desired.services.contains_key(*n))
                .cloned(),
        );
        self.apply_changes(desired, &changed)
    }

    /// Programs the services named in `changed` (added, updated or removed) as `desired`
    /// says; every other service is assumed unchanged. Costs O(changed), not O(services).
    pub fn apply_changes(
        &mut self,
        desired: &DesiredState,
        changed: &BTreeSet<String>,
    ) -> SyncReport {
        let start = Instant::now();
        let mut report = SyncReport::default();
        let mut work = changed.clone();

        // Internal-scope entries decide TWO_SCOPES on their external twin: track them by
        // reference count, and revisit the owner of a twin whose flag flips.
        let internal_of = |s: &LbService| -> Vec<(IpAddr, u16, u8)> {
            s.frontends
                .iter()
                .filter(|f| f.scope == Scope::Internal)
                .map(|f| (f.addr, f.port, f.proto.number()))
                .collect()
        };
        let mut flipped = Vec::new();
        for name in changed {
            let before: Vec<_> = self
                .applied
                .get(name)
                .map(|a| {
                    a.frontends
                        .keys()
                        .filter(|k| k.scope == lb_common::scope::INTERNAL)
                        .map(|k| (crate::addr::ip(&k.addr), k.port, k.proto))
                        .collect()
                })
                .unwrap_or_default();
            let after = desired
                .services
                .get(name)
                .map(internal_of)
                .unwrap_or_default();
            for k in before {
                if let Some(n) = self.internal.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.internal.remove(&k);
                        flipped.push(k);
                    }
                }
            }
            for k in after {
                let n = self.internal.entry(k).or_insert(0);
                if *n == 0 {
                    flipped.push(k);
                }
                *n += 1;
            }
        }
        for (addr, port, proto) in flipped {
            let ext = ServiceKey {
                addr: crate::addr::wide(addr),
                port,
                proto,
                scope: lb_common::scope::EXTERNAL,
            };
            if let Some(owner) = self.fe_owner.get(&ext) {
                work.insert(owner.clone());
            }
        }

        // 1. Frontends nobody wants any more: delete first. A frontend moving to another
        //    service in this batch is overwritten in place instead.
        let wanted: HashSet<WideKey> = work
            .iter()
            .filter_map(|n| desired.services.get(n))
            .flat_map(|s| s.frontends.iter().map(frontend_key))
            .collect();
        for name in &work {
            let Some(a) = self.applied.get_mut(name) else {
                continue;
            };
            let keep: HashSet<WideKey> = desired
                .services
                .get(name)
                .map(|s| s.frontends.iter().map(frontend_key).collect())
                .unwrap_or_default();
            let gone: Vec<WideKey> = a
                .frontends
                .keys()
                .filter(|k| !keep.contains(k) && !wanted.contains(k))
                .copied()
                .collect();
            for k in gone {
                report.writes += 1;
                match self.w.del_service(&k) {
                    Ok(()) => {
                        a.frontends.remove(&k);
                        self.fe_owner.remove(&k);
                    }
                    Err(e) => report.failed.push((name.clone(), e.into())),
                }
            }
        }

        // 2./3. In batches of services: tables computed in parallel; per service backends →
        //       table → ranges/info → frontends, then cleanup. New tables of a batch enter
        //       the kernel together.
        let present = self.admit(&work, desired, &mut report);
        // Batch k+1's tables are built on other threads while batch k is written (the
        // writer mostly waits in the kernel).
        let batches: Vec<&[String]> = present.chunks(SYNC_BATCH).collect();
        let cfg = self.cfg;
        let mut next = batches
            .first()
            .map(|b| self.plan_jobs(b, desired, &mut report));
        let mut next_tables = next.as_ref().map(|(jobs, _)| build_tables(cfg, jobs));
        for (k, batch) in batches.iter().enumerate() {
            let Some((jobs, mut pending_ids)) = next.take() else {
                break;
            };
            let tables = next_tables.take().unwrap_or_default();
            let plans: HashMap<String, TablePlan> = jobs
                .into_iter()
                .zip(tables)
                .map(|((name, _, _, fingerprint), table)| (name, TablePlan { fingerprint, table }))
                .collect();
            let following = batches
                .get(k + 1)
                .map(|b| self.plan_jobs(b, desired, &mut report));
            std::thread::scope(|scope| {
                let builder = following
                    .as_ref()
                    .map(|(jobs, _)| scope.spawn(move || build_tables(cfg, jobs)));
                self.write_batch(batch, desired, plans, &mut pending_ids, &mut report);
                next_tables = builder.map(|h| h.join().unwrap_or_default());
            });
            next = following;
        }

        // 4. Services no longer desired: frontends first, then all their tables in one batch
        // (a map-of-maps delete waits for running programs: once per batch, not per service),
        // then everything else, then their ids.
        let mut removing: Vec<&String> = work
            .iter()
            .filter(|n| !desired.services.contains_key(*n) && self.applied.contains_key(*n))
            .collect();
        removing.retain(|name| match self.remove_frontends(name, &mut report) {
            Ok(()) => true,
            Err(e) => {
                report.failed.push(((*name).clone(), e));
                false
            }
        });
        let tables: Vec<u32> = removing
            .iter()
            .filter_map(|n| self.applied.get(*n))
            .filter(|a| a.info.lut_len != 0)
            .map(|a| a.id)
            .collect();
        if !tables.is_empty() {
            report.writes += tables.len();
            match self.w.del_tables(&tables) {
                Ok(()) => {
                    for name in &removing {
                        if let Some(a) = self.applied.get_mut(*name) {
                            a.info.lut_len = 0;
                        }
                    }
                }
                Err(e) => {
                    for name in removing.drain(..) {
                        report.failed.push((name.clone(), e.clone().into()));
                    }
                }
            }
        }
        for name in removing {
            match self.remove_service(name, &mut report) {
                Ok(()) => report.removed += 1,
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        report.duration = start.elapsed();
        report
    }

    /// Removes the frontends left to a service that goes (most went in step 1 or were
    /// handed to another service).
    fn remove_frontends(&mut self, name: &str, report: &mut SyncReport) -> Result<(), SyncError> {
        let Some(a) = self.applied.get_mut(name) else {
            return Ok(());
        };
        for k in a.frontends.keys().copied().collect::<Vec<_>>() {
            report.writes += 1;
            self.w.del_service(&k)?;
            a.frontends.remove(&k);
            self.fe_owner.remove(&k);
        }
        Ok(())
    }

    /// Removes what is left of a service whose frontends are gone: table, backends, source
    /// ranges, info; then releases its ids.
    fn remove_service(&mut self, name: &str, report: &mut SyncReport) -> Result<(), SyncError> {
        self.remove_frontends(name, report)?;
        let Some(a) = self.applied.get_mut(name) else {
            return Ok(());
        };
        let id = a.id;
        if a.info.lut_len != 0 {
            report.writes += 1;
            self.w.del_tables(&[id])?;
            a.info.lut_len = 0;
        }
        for (k, (bid, _)) in a.backends.clone() {
            report.writes += 1;
            self.w.del_backend(bid)?;
            a.backends.remove(&k);
            self.backend_ids.release(bid);
        }
        for r in a.ranges.clone() {
            report.writes += 1;
            self.w.del_range(id, &r)?;
            a.ranges.remove(&r);
        }
        report.writes += 1;
        self.w.del_info(id)?;
        self.applied.remove(name);
        self.svc_ids.release(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
