//! Adoption after a restart: what a previous agent left in the maps becomes `MapSync`'s state
//! (names, ids, frontends, backends, ranges), so the first sync only writes differences.

use std::collections::HashMap;

use lb_common::SvcInfo;

use super::{Applied, MapSync, MapWriter, Recovered, SyncConfig};

impl<W: MapWriter> MapSync<W> {
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
            s.applied
                .insert(name.clone(), Applied::empty(id, &name, info));
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
                    .entry((crate::addr::ip(&key.addr), key.port, key.proto))
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
                    .insert((crate::addr::ip(&be.addr), be.port), (id, be));
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
}
