//! Capacity admission: which services of a pass fit the maps (`Limits`), each refusal naming
//! the flag that raises the capacity.

use std::collections::BTreeSet;

use super::{MapSync, MapWriter, SyncError, SyncReport};
use crate::model::DesiredState;

impl<W: MapWriter> MapSync<W> {
    /// The services of `work` to program, in order: those that fit the maps' capacities once
    /// this pass's removals are done (services already programmed first). The others are
    /// reported as failed, naming the flag that raises the capacity, and retried later.
    pub(super) fn admit(
        &self,
        work: &BTreeSet<String>,
        desired: &DesiredState,
        report: &mut SyncReport,
    ) -> Vec<String> {
        let mut frontends = self.fe_owner.len();
        let mut backends: usize = self.applied.values().map(|a| a.backends.len()).sum();
        let mut services = self.applied.len();
        for n in work.iter().filter(|n| !desired.services.contains_key(*n)) {
            if let Some(a) = self.applied.get(n) {
                frontends -= a.frontends.len().min(frontends);
                backends -= a.backends.len().min(backends);
                services -= 1;
            }
        }
        let (old, new): (Vec<&String>, Vec<&String>) = work
            .iter()
            .filter(|n| desired.services.contains_key(*n))
            .partition(|n| self.applied.contains_key(*n));
        let max_services = (self.cfg.limits.services.saturating_sub(1)) as usize;
        let mut admitted = Vec::with_capacity(old.len() + new.len());
        for name in old.into_iter().chain(new) {
            let (Some(svc), a) = (desired.services.get(name), self.applied.get(name)) else {
                continue;
            };
            let f = svc.frontends.len();
            let b = svc.endpoints.len();
            let (f0, b0) = a.map_or((0, 0), |a| (a.frontends.len(), a.backends.len()));
            let refusal = if a.is_none() && services + 1 > max_services {
                Some(format!(
                    "{max_services} services are programmed, the most the \
                     per-service maps hold (raise --max-services)"
                ))
            } else if f > f0 && frontends + (f - f0) > self.cfg.limits.frontends {
                Some(format!(
                    "its {f} frontends would take {} of the {} entries of \
                     {} (raise --max-frontends)",
                    frontends + (f - f0),
                    self.cfg.limits.frontends,
                    lb_common::map_names::SERVICES
                ))
            } else if b > b0 && backends + (b - b0) > self.cfg.limits.backends {
                Some(format!(
                    "its {b} backends would take {} of the {} entries of \
                     {} (raise --max-backends)",
                    backends + (b - b0),
                    self.cfg.limits.backends,
                    lb_common::map_names::BACKENDS
                ))
            } else {
                None
            };
            if let Some(why) = refusal {
                report.failed.push((name.clone(), SyncError::Capacity(why)));
                continue;
            }
            frontends = (frontends + f).saturating_sub(f0);
            backends = (backends + b).saturating_sub(b0);
            services += usize::from(a.is_none());
            admitted.push(name.clone());
        }
        admitted
    }
}
