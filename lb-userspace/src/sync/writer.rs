//! The map operations MapSync needs, as a trait: implemented by the pinned BPF maps
//! (`bpf::maps::Maps`) and by an in-memory recorder in tests (which checks write order).

use lb_common::{ServiceValue, SvcInfo};

use crate::addr::{WideBackend, WideKey};

use crate::model::IpNet;

/// A map write that failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{op} {map}: {reason}")]
pub struct WriteError {
    /// Map name.
    pub map: &'static str,
    /// `update` or `delete`.
    pub op: &'static str,
    /// What the kernel (or the fake) said.
    pub reason: String,
}

/// Writes to the service maps.
pub trait MapWriter {
    fn put_service(&mut self, key: &WideKey, value: &ServiceValue) -> Result<(), WriteError>;
    fn del_service(&mut self, key: &WideKey) -> Result<(), WriteError>;
    fn put_backend(&mut self, id: u32, value: &WideBackend) -> Result<(), WriteError>;
    fn del_backend(&mut self, id: u32) -> Result<(), WriteError>;
    /// Writes services' whole lookup tables (slot → backend id). A table keeps its place
    /// when its size is unchanged (rewritten in place), otherwise it is swapped in whole.
    fn put_tables(&mut self, tables: &[(u32, Vec<u32>)]) -> Result<(), WriteError>;
    /// Removes these services' tables (absent ones are skipped).
    fn del_tables(&mut self, svc_ids: &[u32]) -> Result<(), WriteError>;
    fn put_info(&mut self, svc_id: u32, info: &SvcInfo) -> Result<(), WriteError>;
    fn del_info(&mut self, svc_id: u32) -> Result<(), WriteError>;
    fn put_range(&mut self, svc_id: u32, net: &IpNet) -> Result<(), WriteError>;
    fn del_range(&mut self, svc_id: u32, net: &IpNet) -> Result<(), WriteError>;
    /// Zeroes a service id's counters (ids are reused eventually).
    fn reset_stats(&mut self, svc_id: u32) -> Result<(), WriteError>;
}

/// What a previous agent left in the maps.
#[derive(Debug, Default)]
pub struct Recovered {
    pub infos: Vec<(u32, SvcInfo)>,
    pub frontends: Vec<(WideKey, ServiceValue)>,
    pub backends: Vec<(u32, WideBackend)>,
    pub ranges: Vec<(u32, IpNet)>,
}

/// Reads the service maps back (for adoption after a restart).
pub trait MapReader {
    /// Everything MapSync writes, as it is now.
    fn read_all(&self) -> Result<Recovered, WriteError>;
}
