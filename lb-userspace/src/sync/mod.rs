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

mod admit;
mod encode;
pub mod ids;
mod writer;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{Backend, ServiceKey, ServiceValue, SvcInfo, svc_flags};
pub use writer::{MapReader, MapWriter, Recovered, WriteError};

use crate::{
    maglev::{self, TableBackend},
    model::{DesiredState, EndpointState, Ipv4Net, LbService, Scope},
};
pub use encode::frontend_key;
use encode::{Job, Table, backend_value, build_tables, name_bytes, slots};
use ids::IdAlloc;

/// Settings shared by every service's table.
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Maglev table size (prime).
    pub maglev_size: u32,
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
    frontends: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<(Ipv4Addr, u16), (u32, Backend)>,
    ranges: BTreeSet<Ipv4Net>,
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
    fe_owner: HashMap<ServiceKey, String>,
    /// Internal-scope frontends in the maps (addr, port, proto) → how many.
    internal: HashMap<(Ipv4Addr, u16, u8), usize>,
    svc_ids: IdAlloc,
    backend_ids: IdAlloc,
}

/// Services programmed together: their tables are computed in parallel and new ones enter
/// the kernel in one batch. Also bounds the memory of tables held at once.
const SYNC_BATCH: usize = 256;

/// Backend ids allocated while planning, by (service, address, port), not yet written.
type PendingIds = HashMap<(String, Ipv4Addr, u16), u32>;

/// A service between `prepare_service` and `finish_service`.
struct Staged {
    svc_id: u32,
    is_new: bool,
    changed: bool,
    /// The new table is at least as long as the old one (written before the frontends).
    grows: bool,
    /// The new table, if its inputs changed.
    table: Option<Vec<u32>>,
    new_info: SvcInfo,
}

/// A table to write for one service (computed before any write, possibly in parallel).
struct TablePlan {
    fingerprint: u64,
    /// The table as indexes into `active`.
    table: Table,
}

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

    /// Adopts what a previous agent left in the maps: names, ids, frontends, backends and
    /// ranges. Entries without a known service are adopted under a placeholder name, so the
    /// first `apply` removes them in order.
    pub fn recover(w: W, cfg: SyncConfig, rec: Recovered) -> Self {
        let mut s = Self::new(w, cfg);
        let mut by_id: HashMap<u32, String> = HashMap::new();
        let mut entry = |s: &mut Self, id: u32, info: Option<SvcInfo>| -> String {
            if let Some(n) = by_id.get(&id) {
                return n.clone();
            }
            let name = info
                .as_ref()
                .map_or_else(|| format!("#orphan-{id}"), crate::bpf::maps::info_name);
            s.svc_ids.adopt(id);
            s.applied.insert(
                name.clone(),
                Applied {
                    id,
                    info: info.unwrap_or(SvcInfo {
                        lut_fingerprint: 0,
                        name: name_bytes(&name),
                        frontends: 0,
                        pick_len: 0,
                        lut_len: 0,
                    }),
                    model: None,
                    frontends: BTreeMap::new(),
                    backends: BTreeMap::new(),
                    ranges: BTreeSet::new(),
                },
            );
            by_id.insert(id, name.clone());
            name
        };
        for (id, info) in rec.infos {
            entry(&mut s, id, Some(info));
        }
        for (key, value) in rec.frontends {
            let name = entry(&mut s, value.svc_id, None);
            if key.scope == lb_common::scope::INTERNAL {
                *s.internal
                    .entry((Ipv4Addr::from(key.addr), key.port, key.proto))
                    .or_insert(0) += 1;
            }
            s.fe_owner.insert(key, name.clone());
            if let Some(a) = s.applied.get_mut(&name) {
                a.frontends.insert(key, value);
            }
        }
        for (id, be) in rec.backends {
            let name = entry(&mut s, be.svc_id, None);
            s.backend_ids.adopt(id);
            if let Some(a) = s.applied.get_mut(&name) {
                a.backends
                    .insert((Ipv4Addr::from(be.addr), be.port), (id, be));
            }
        }
        for (svc_id, net) in rec.ranges {
            let name = entry(&mut s, svc_id, None);
            if let Some(a) = s.applied.get_mut(&name) {
                a.ranges.insert(net);
            }
        }
        for a in s.applied.values_mut() {
            // A table whose frontends disagree with the recorded length is rewritten.
            if a.frontends.values().any(|v| {
                v.lut_size != 0 && (v.lut_size != a.info.lut_len || v.pick_len != a.info.pick_len)
            }) {
                a.info.lut_fingerprint = 0;
            }
        }
        s
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
    pub fn backend_id(&self, name: &str, addr: Ipv4Addr, port: u16) -> Option<u32> {
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
        let internal_of = |s: &LbService| -> Vec<(Ipv4Addr, u16, u8)> {
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
                        .map(|k| (Ipv4Addr::from(k.addr), k.port, k.proto))
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
                addr: addr.octets(),
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
        let wanted: HashSet<ServiceKey> = work
            .iter()
            .filter_map(|n| desired.services.get(n))
            .flat_map(|s| s.frontends.iter().map(frontend_key))
            .collect();
        for name in &work {
            let Some(a) = self.applied.get_mut(name) else {
                continue;
            };
            let keep: HashSet<ServiceKey> = desired
                .services
                .get(name)
                .map(|s| s.frontends.iter().map(frontend_key).collect())
                .unwrap_or_default();
            let gone: Vec<ServiceKey> = a
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

    /// Programs one batch of services whose tables are built.
    fn write_batch(
        &mut self,
        batch: &[String],
        desired: &DesiredState,
        mut plans: HashMap<String, TablePlan>,
        pending_ids: &mut PendingIds,
        report: &mut SyncReport,
    ) {
        let mut staged: Vec<(&String, &LbService, Staged)> = Vec::new();
        for name in batch {
            let Some(svc) = desired.services.get(name) else {
                continue;
            };
            let plan = plans.remove(name);
            match self.prepare_service(name, svc, plan, pending_ids, report) {
                Ok(st) => staged.push((name, svc, st)),
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        // Ids allocated for backends that were never written go back.
        for id in pending_ids.drain().map(|(_, id)| id) {
            self.backend_ids.release(id);
        }
        let grown: Vec<(u32, Vec<u32>)> = staged
            .iter_mut()
            .filter(|(_, _, st)| st.grows)
            .filter_map(|(_, _, st)| st.table.take().map(|t| (st.svc_id, t)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        if !grown.is_empty() {
            report.writes += grown.len();
            if let Err(e) = self.w.put_tables(&grown) {
                // Their frontends must not announce tables that are not there.
                let ids: HashSet<u32> = grown.iter().map(|(id, _)| *id).collect();
                staged.retain(|(name, _, st)| {
                    let hit = ids.contains(&st.svc_id);
                    if hit {
                        report.failed.push(((*name).clone(), e.clone().into()));
                    }
                    !hit
                });
            }
        }
        for (name, svc, st) in staged {
            if let Err(e) = self.finish_service(name, svc, st, report) {
                report.failed.push((name.clone(), e));
            }
        }
    }

    /// Lists the tables of `batch` whose inputs changed, allocating ids for new backends on
    /// the way (sequential; the tables themselves are built by `build_tables`).
    fn plan_jobs(
        &mut self,
        batch: &[String],
        desired: &DesiredState,
        report: &mut SyncReport,
    ) -> (Vec<Job>, PendingIds) {
        let mut pending_ids = PendingIds::new();
        let mut jobs: Vec<Job> = Vec::new();
        for name in batch {
            let Some(svc) = desired.services.get(name) else {
                continue;
            };
            let prev = self.applied.get(name);
            let mut keyed = Vec::new();
            let mut tbs = Vec::new();
            for ep in svc
                .endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Active)
            {
                let existing = prev.and_then(|a| a.backends.get(&(ep.addr, ep.port)).map(|b| b.0));
                let id = match existing {
                    Some(id) => id,
                    None => match self.backend_ids.alloc() {
                        Ok(id) => {
                            pending_ids.insert((name.clone(), ep.addr, ep.port), id);
                            id
                        }
                        Err(e) => {
                            report.failed.push((name.clone(), SyncError::BackendIds(e)));
                            continue;
                        }
                    },
                };
                keyed.push(id);
                tbs.push(TableBackend {
                    key: format!("{}:{}", ep.addr, ep.port),
                    weight: ep.weight.max(1),
                });
            }
            let pairs: Vec<(u32, &TableBackend)> = keyed.iter().copied().zip(tbs.iter()).collect();
            let fp = self.fingerprint(svc, &pairs);
            if prev.map(|a| a.info.lut_fingerprint) != Some(fp) {
                jobs.push((name.clone(), svc.algorithm, tbs, fp));
            }
        }
        (jobs, pending_ids)
    }

    /// First half of programming a service: its id (if new), its backends, and its new table
    /// (returned for writing, with the info that will describe it).
    fn prepare_service(
        &mut self,
        name: &str,
        svc: &LbService,
        plan: Option<TablePlan>,
        pending_ids: &mut PendingIds,
        report: &mut SyncReport,
    ) -> Result<Staged, SyncError> {
        let is_new = !self.applied.contains_key(name);
        if is_new {
            let id = self.svc_ids.alloc().map_err(SyncError::ServiceIds)?;
            report.writes += 1;
            if let Err(e) = self.w.reset_stats(id) {
                self.svc_ids.release(id);
                return Err(e.into());
            }
            self.applied.insert(
                name.to_owned(),
                Applied {
                    id,
                    info: SvcInfo {
                        lut_fingerprint: 0,
                        name: name_bytes(name),
                        frontends: 0,
                        pick_len: 0,
                        lut_len: 0,
                    },
                    model: None,
                    frontends: BTreeMap::new(),
                    backends: BTreeMap::new(),
                    ranges: BTreeSet::new(),
                },
            );
        }
        let mut changed = false;
        let Some(a) = self.applied.get_mut(name) else {
            return Err(SyncError::Internal("service vanished"));
        };
        let svc_id = a.id;

        // Backends (every desired endpoint, draining ones included: their flows continue).
        for ep in &svc.endpoints {
            let key = (ep.addr, ep.port);
            let (id, fresh) = match a.backends.get(&key) {
                Some((id, _)) => (*id, false),
                None => match pending_ids.remove(&(name.to_owned(), ep.addr, ep.port)) {
                    Some(id) => (id, true),
                    None => (
                        self.backend_ids.alloc().map_err(SyncError::BackendIds)?,
                        true,
                    ),
                },
            };
            let value = backend_value(svc_id, ep);
            if a.backends.get(&key).map(|b| b.1) != Some(value) {
                report.writes += 1;
                if let Err(e) = self.w.put_backend(id, &value) {
                    if fresh {
                        self.backend_ids.release(id);
                    }
                    return Err(e.into());
                }
                a.backends.insert(key, (id, value));
                changed = true;
            }
        }

        // Lookup table (rebuilt only when its inputs changed). A table that grows goes in
        // before the frontends announce its size; one that shrinks after they do, so no
        // packet indexes past the table it finds.
        let mut new_info = a.info;
        new_info.name = name_bytes(name);
        new_info.frontends = svc.frontends.len() as u16;
        let mut table = None;
        if let Some(p) = plan {
            let active: Vec<u32> = svc
                .endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Active)
                .filter_map(|e| a.backends.get(&(e.addr, e.port)).map(|b| b.0))
                .collect();
            let ids: Vec<u32> = p
                .table
                .entries
                .iter()
                .filter_map(|i| active.get(*i as usize).copied())
                .collect();
            if ids.len() != p.table.entries.len() {
                return Err(SyncError::Internal("a table entry names no active backend"));
            }
            new_info.lut_fingerprint = p.fingerprint;
            (new_info.lut_len, new_info.pick_len) = (p.table.lut_len, p.table.pick_len);
            table = Some(ids);
            changed = true;
        }
        Ok(Staged {
            svc_id,
            is_new,
            changed,
            grows: slots(&new_info) >= slots(&a.info),
            table,
            new_info,
        })
    }

    /// Second half: source ranges, info, frontends (now everything they point at exists), a
    /// shrinking table, then the pieces nothing references any more.
    fn finish_service(
        &mut self,
        name: &str,
        svc: &LbService,
        st: Staged,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let Staged {
            svc_id,
            is_new,
            mut changed,
            grows,
            table,
            new_info,
        } = st;
        let Some(a) = self.applied.get_mut(name) else {
            return Err(SyncError::Internal("service vanished"));
        };
        let ranges: BTreeSet<Ipv4Net> = svc.source_ranges.iter().copied().collect();
        for r in ranges.difference(&a.ranges.clone()) {
            report.writes += 1;
            self.w.put_range(svc_id, r)?;
            a.ranges.insert(*r);
            changed = true;
        }
        if new_info != a.info {
            report.writes += 1;
            self.w.put_info(svc_id, &new_info)?;
            a.info = new_info;
        }
        let (lut_len, pick_len) = (new_info.lut_len, new_info.pick_len);
        let active_count = svc
            .endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Active)
            .count();
        for f in &svc.frontends {
            let key = frontend_key(f);
            let mut flags = 0u16;
            if f.scope == Scope::External
                && self.internal.contains_key(&(f.addr, f.port, key.proto))
            {
                flags |= svc_flags::TWO_SCOPES;
            }
            if f.source_ranges && !svc.source_ranges.is_empty() {
                flags |= svc_flags::SRC_RANGES;
            }
            if svc.ext_local {
                flags |= svc_flags::EXT_LOCAL;
            }
            let value = ServiceValue {
                svc_id,
                lut_size: if active_count == 0 { 0 } else { lut_len },
                affinity_timeout: svc.affinity_timeout,
                flags,
                kind: f.kind.code(),
                algorithm: svc.algorithm.code(),
                backend_count: active_count.min(usize::from(u16::MAX)) as u16,
                pick_len: if active_count == 0 { 0 } else { pick_len },
            };
            let Some(a) = self.applied.get_mut(name) else {
                return Err(SyncError::Internal("service vanished"));
            };
            if a.frontends.get(&key) == Some(&value) {
                continue;
            }
            report.writes += 1;
            self.w.put_service(&key, &value)?;
            a.frontends.insert(key, value);
            changed = true;
            if let Some(prev_owner) = self.fe_owner.insert(key, name.to_owned())
                && prev_owner != name
                && let Some(p) = self.applied.get_mut(&prev_owner)
            {
                // The key moved here; its previous owner must not delete it later.
                p.frontends.remove(&key);
            }
        }
        if let Some(ids) = table
            && !grows
        {
            report.writes += 1;
            if ids.is_empty() {
                self.w.del_tables(&[svc_id])?;
            } else {
                self.w.put_tables(&[(svc_id, ids)])?;
            }
        }
        let Some(a) = self.applied.get_mut(name) else {
            return Err(SyncError::Internal("service vanished"));
        };
        let desired_keys: HashSet<(Ipv4Addr, u16)> =
            svc.endpoints.iter().map(|e| (e.addr, e.port)).collect();
        let stale: Vec<((Ipv4Addr, u16), u32)> = a
            .backends
            .iter()
            .filter(|(k, _)| !desired_keys.contains(k))
            .map(|(k, (id, _))| (*k, *id))
            .collect();
        for (k, id) in stale {
            report.writes += 1;
            self.w.del_backend(id)?;
            a.backends.remove(&k);
            self.backend_ids.release(id);
            changed = true;
        }
        for r in a.ranges.clone().difference(&ranges) {
            report.writes += 1;
            self.w.del_range(svc_id, r)?;
            a.ranges.remove(r);
            changed = true;
        }
        a.model = Some(svc.clone());
        if is_new {
            report.added += 1;
        } else if changed {
            report.changed += 1;
        }
        Ok(())
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
