//! The batch pipeline of `MapSync::apply_changes`: plan the tables of a batch of services
//! (ids for new backends, the tables to build), then per service write the backends and the
//! table (`prepare_service`), the grown tables together, and the info, ranges and frontends
//! that announce them (`finish_service`), in the order `mod.rs` describes.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{ServiceValue, SvcInfo, svc_flags};

use super::{
    Applied, MapSync, MapWriter, SyncError, SyncReport,
    encode::{Job, Table, backend_value, frontend_key, name_bytes, slots},
};
use crate::{
    maglev::TableBackend,
    model::{DesiredState, EndpointState, IpNet, LbService, Scope},
};

/// Backend ids allocated while planning, by (service, address, port), not yet written.
pub(super) type PendingIds = HashMap<(String, IpAddr, u16), u32>;

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
pub(super) struct TablePlan {
    pub(super) fingerprint: u64,
    /// The table as indexes into `active`.
    pub(super) table: Table,
}

impl<W: MapWriter> MapSync<W> {
    /// Programs one batch of services whose tables are built.
    pub(super) fn write_batch(
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
    pub(super) fn plan_jobs(
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
            self.applied
                .insert(name.to_owned(), Applied::empty(id, name, None));
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
        let ranges: BTreeSet<IpNet> = svc.source_ranges.iter().copied().collect();
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
        let desired_keys: HashSet<(IpAddr, u16)> =
            svc.endpoints.iter().map(|e| (e.addr, e.port)).collect();
        let stale: Vec<((IpAddr, u16), u32)> = a
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
}
