//! Map entries from the model: names, backend values, frontend keys, and the lookup tables
//! (Maglev or weighted random, each followed by the socket hook's pick list). Pure functions.

use lb_common::{Backend, SVC_NAME_LEN, ServiceKey, SvcInfo, backend_flags};

use crate::addr::{WideBackend, WideKey, wide};

use super::SyncConfig;
use crate::{
    maglev::{self, TableBackend},
    model::{Algorithm, EndpointState, Scope},
};

pub(super) fn name_bytes(name: &str) -> [u8; SVC_NAME_LEN] {
    let mut out = [0u8; SVC_NAME_LEN];
    let b = name.as_bytes();
    let n = b.len().min(SVC_NAME_LEN);
    out[..n].copy_from_slice(&b[..n]);
    out
}

pub(super) fn backend_value(svc_id: u32, ep: &crate::model::Endpoint) -> WideBackend {
    let mut flags = 0;
    if ep.local {
        flags |= backend_flags::LOCAL;
    }
    match ep.state {
        EndpointState::Active => {}
        EndpointState::Terminating => flags |= backend_flags::DRAINING | backend_flags::TERMINATING,
        EndpointState::NotReady => flags |= backend_flags::DRAINING,
    }
    Backend {
        addr: wide(ep.addr),
        port: ep.port,
        flags,
        zone: 0,
        svc_id,
        weight: ep.weight,
        _pad: [0; 2],
    }
}

/// A service's table: the selection table (Maglev or weighted random), then, for a Maglev
/// table of more than one chunk, a weighted list of the same backends from the next chunk on,
/// which the socket hook picks from (`ServiceValue::pick_len`).
#[derive(Default)]
pub(super) struct Table {
    /// Every slot written (padding before the pick list repeats entry 0).
    pub(super) entries: Vec<u32>,
    /// Slots of the selection table (`ServiceValue::lut_size`).
    pub(super) lut_len: u32,
    /// Slots of the pick list (`ServiceValue::pick_len`).
    pub(super) pick_len: u16,
}

/// A table to build: (service name, algorithm, active backends, fingerprint of the inputs).
pub(super) type Job = (String, Algorithm, Vec<TableBackend>, u64);

/// Builds the tables of `jobs` using every CPU (Maglev is the costly part of a full sync).
pub(super) fn build_tables(cfg: SyncConfig, jobs: &[Job]) -> Vec<Table> {
    crate::par::par_map(jobs, 16, |(_, alg, tbs, _)| build_table(&cfg, *alg, tbs))
}

fn build_table(cfg: &SyncConfig, algorithm: Algorithm, active: &[TableBackend]) -> Table {
    match algorithm {
        Algorithm::Maglev => {
            let m = cfg.maglev_size.for_backends(active.len());
            let mut entries = maglev::maglev(active, m, cfg.hash_seed);
            let lut_len = entries.len() as u32;
            if lut_len == 0 {
                return Table::default();
            }
            // A table of one chunk is one page: a random slot of it is as warm as a list.
            if lut_len as usize <= lb_common::LUT_CHUNK_SLOTS {
                return Table {
                    entries,
                    lut_len,
                    pick_len: 0,
                };
            }
            let pick = maglev::random_capped(active, maglev::MAX_PICK_LIST);
            // Over 65,535 backends (each is listed once at least): no list, picks use the table.
            let Ok(pick_len) = u16::try_from(pick.len()) else {
                return Table {
                    entries,
                    lut_len,
                    pick_len: 0,
                };
            };
            entries.resize(lb_common::pick_base(lut_len) as usize, entries[0]);
            entries.extend_from_slice(&pick);
            Table {
                entries,
                lut_len,
                pick_len,
            }
        }
        Algorithm::Random => {
            let entries = maglev::random(active);
            Table {
                lut_len: entries.len() as u32,
                entries,
                pick_len: 0,
            }
        }
    }
}

/// Slots of the table `info` describes, as written to `xlb_lut`.
pub(super) fn slots(info: &SvcInfo) -> u32 {
    lb_common::table_slots(info.lut_len, info.pick_len)
}

/// The map key of a frontend (wide: see `crate::addr`).
pub fn frontend_key(f: &crate::model::Frontend) -> WideKey {
    ServiceKey {
        addr: wide(f.addr),
        port: f.port,
        proto: f.proto.number(),
        scope: match f.scope {
            Scope::External => lb_common::scope::EXTERNAL,
            Scope::Internal => lb_common::scope::INTERNAL,
        },
    }
}
