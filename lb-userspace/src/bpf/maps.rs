//! Typed handles to the pinned maps. The agent writes service maps through them (as MapSync's
//! `MapWriter`); the CLI reads every map through them, with or without a running agent.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{
    Array, HashMap, HashOfMaps, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    lpm_trie::Key,
};
use lb_common::{
    AffinityKey, AffinityValue, AgentStatus, Backend, Config, Config6, CtKey, CtValue, DevState,
    Ipv6, LUT_CHUNK_SLOTS, LutChunk, ServiceKey, ServiceValue, SrcRangeKey, SvcInfo, SvcStats,
    device_slot, map_names as names,
};

use super::{filter::Filters, mmap::Mapping};
use crate::{
    addr::{self, WideBackend, WideKey},
    model::IpNet,
    sync::{MapReader, MapWriter, Recovered, WriteError},
};

/// Failure to open or read a pinned map.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// No pin at the path (is the agent installed with this `--bpffs`?).
    #[error("{path}: not pinned (no xlb agent ever ran with this --bpffs?)")]
    NotPinned { path: PathBuf },
    /// The pin exists but is not the expected map.
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// A raw syscall failed.
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading failed.
    #[error("reading {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// A conntrack entry and whether its flow is confirmed (`Maps::conntrack_tables`).
pub type CtRow<A> = (CtKey<A>, CtValue<A>, bool);

/// Every map, opened from its pin.
pub struct Maps {
    pub dir: PathBuf,
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    /// The IPv6 twins (absent in a datapath an older agent pinned, until an agent loads).
    pub v6: Option<Maps6>,
    /// Service id → its table (an inner array of `LutChunk`).
    pub lut: HashOfMaps<MapData, u32, MapData>,
    /// The same map, for batch operations aya does not wrap.
    lut_raw: MapData,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub src_ranges: LpmTrie<MapData, SrcRangeKey, u8>,
    pub counters: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, SvcStats>,
    pub svc_info: HashMap<MapData, u32, SvcInfo>,
    pub config: Array<MapData, Config>,
    /// Uplinks with XDP: their XDP_TX errors (`xlb_devices`).
    pub devices: Array<MapData, DevState>,
    /// The agent's status (`xlb_agent`).
    pub agent: Array<MapData, AgentStatus>,
    /// The frontend and backend address filters (mapped on the first write).
    fe_filter: MapData,
    be_filter: MapData,
    /// The NAT'd-backends slots (mapped with the filters).
    be_nat: MapData,
    /// The filters and the keys behind their bits, once this handle writes.
    filters: Option<Filters>,
    nr_cpus: usize,
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, MapsError> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(MapsError::NotPinned { path });
    }
    MapData::from_pin(&path).map_err(|source| MapsError::Open { path, source })
}

macro_rules! typed {
    ($dir:expr, $name:expr, $variant:ident, $ty:ident) => {{
        let data = open($dir, $name)?;
        $ty::try_from(Map::$variant(data)).map_err(|source| MapsError::Open {
            path: $dir.join($name),
            source,
        })?
    }};
}

/// The IPv6 service maps.
pub struct Maps6 {
    pub services: HashMap<MapData, ServiceKey<Ipv6>, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend<Ipv6>>,
    pub src_ranges: LpmTrie<MapData, SrcRangeKey<Ipv6>, u8>,
    pub config: Array<MapData, Config6>,
}

impl Maps6 {
    fn open(dir: &Path) -> Result<Option<Self>, MapsError> {
        if !dir.join(names::SERVICES6).exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            services: typed!(dir, names::SERVICES6, HashMap, HashMap),
            backends: typed!(dir, names::BACKENDS6, HashMap, HashMap),
            src_ranges: typed!(dir, names::SRC_RANGES6, LpmTrie, LpmTrie),
            config: typed!(dir, names::CONFIG6, Array, Array),
        }))
    }
}

fn write_err(map: &'static str, op: &'static str, e: &MapError) -> WriteError {
    WriteError {
        map,
        op,
        reason: e.to_string(),
    }
}

/// A delete of a key that is already gone is not an error (idempotent cleanup).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The LPM key of a source range, in its family's map.
enum RangeKey {
    V4(Key<SrcRangeKey>),
    V6(Key<SrcRangeKey<Ipv6>>),
}

fn range_key(svc_id: u32, net: &IpNet) -> RangeKey {
    let prefix = 32 + u32::from(net.len);
    let svc_id_be = svc_id.to_be();
    match net.addr {
        IpAddr::V4(a) => RangeKey::V4(Key::new(
            prefix,
            SrcRangeKey {
                svc_id_be,
                addr: a.octets(),
            },
        )),
        IpAddr::V6(a) => RangeKey::V6(Key::new(
            prefix,
            SrcRangeKey {
                svc_id_be,
                addr: a.octets(),
            },
        )),
    }
}

/// The error of a write to an IPv6 map a datapath of an older agent does not have.
fn no_v6(map: &'static str) -> WriteError {
    WriteError {
        map,
        op: "update",
        reason: "not pinned: this datapath was loaded by an agent without IPv6 maps".into(),
    }
}

/// The service name stored in an info entry.
pub fn info_name(info: &lb_common::SvcInfo) -> String {
    let end = info
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(lb_common::SVC_NAME_LEN);
    String::from_utf8_lossy(&info.name[..end]).into_owned()
}

/// State word of a backend (`xlb_backends` flags), as the CLI and metrics show it.
pub fn backend_state(flags: u8) -> &'static str {
    if flags & lb_common::backend_flags::TERMINATING != 0 {
        "terminating"
    } else if flags & lb_common::backend_flags::DRAINING != 0 {
        "not-ready"
    } else {
        "active"
    }
}

impl Maps {
    /// The capacities of the pinned maps (those they were created with, whatever this agent's
    /// flags say: a pinned map keeps its size); the defaults where one cannot be read.
    pub fn limits(&self) -> crate::bpf::Limits {
        let d = crate::bpf::Limits::default();
        let cap = |name: &str| {
            aya::maps::MapInfo::from_pin(self.dir.join(name))
                .map(|i| i.max_entries())
                .ok()
        };
        crate::bpf::Limits {
            services: cap(names::SVC_INFO).map_or(d.services, u64::from),
            frontends: cap(names::SERVICES).map_or(d.frontends, |c| c as usize),
            backends: cap(names::BACKENDS).map_or(d.backends, |c| c as usize),
        }
    }

    /// Opens every pinned map under `dir`.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        let nr_cpus = aya::util::nr_cpus().map_or(1, |n| n);
        Ok(Self {
            dir: dir.to_owned(),
            services: typed!(dir, names::SERVICES, HashMap, HashMap),
            backends: typed!(dir, names::BACKENDS, HashMap, HashMap),
            v6: Maps6::open(dir)?,
            lut: typed!(dir, names::LUT, HashOfMaps, HashOfMaps),
            lut_raw: open(dir, names::LUT)?,
            conntrack: typed!(dir, names::CONNTRACK, LruHashMap, HashMap),
            affinity: typed!(dir, names::AFFINITY, LruHashMap, HashMap),
            src_ranges: typed!(dir, names::SRC_RANGES, LpmTrie, LpmTrie),
            counters: typed!(dir, names::COUNTERS, PerCpuArray, PerCpuArray),
            svc_stats: typed!(dir, names::SVC_STATS, PerCpuArray, PerCpuArray),
            svc_info: typed!(dir, names::SVC_INFO, HashMap, HashMap),
            config: typed!(dir, names::CONFIG, Array, Array),
            devices: typed!(dir, names::DEVICES, Array, Array),
            agent: typed!(dir, names::AGENT, Array, Array),
            fe_filter: open(dir, names::FE_FILTER)?,
            be_filter: open(dir, names::BE_FILTER)?,
            be_nat: open(dir, names::BE_NAT)?,
            filters: None,
            nr_cpus,
        })
    }

    /// The address filters, adopted on first use from the maps (see `adopt_filters`).
    pub fn filters(&mut self) -> Result<&mut Filters, WriteError> {
        if self.filters.is_none() {
            let rec = self.read_all()?;
            self.adopt_filters(&rec)?;
        }
        self.filters.as_mut().ok_or_else(|| WriteError {
            map: names::FE_FILTER,
            op: "adopt",
            reason: "not adopted".into(),
        })
    }

    /// Makes both address filters hold exactly the keys of `rec` (the maps as just read):
    /// every key gets its bit, and a bit nothing is behind (left by a crash, or edited by
    /// hand) is cleared. An agent does this before it attaches programs: filters created empty
    /// by an upgrade would otherwise hide every Service until the next write. NAT slots all
    /// zero (created by an upgrade, or never raised) are raised for every reply entry in
    /// conntrack, so no tracked flow's replies go unlooked-up.
    pub fn adopt_filters(&mut self, rec: &Recovered) -> Result<(), WriteError> {
        let f = Filters::adopt(
            &self.fe_filter,
            &self.be_filter,
            &self.be_nat,
            rec.frontends.iter().map(|(k, _)| *k),
            rec.backends.iter().copied(),
        )
        .map_err(|e| WriteError {
            map: names::FE_FILTER,
            op: "adopt",
            reason: format!("mmap: {e}"),
        })?;
        if f.nat.set_slots() == 0 {
            let entries = self.conntrack_entries().map_err(|e| WriteError {
                map: names::CONNTRACK,
                op: "read",
                reason: e.to_string(),
            })?;
            for (k, _) in entries
                .iter()
                .filter(|(k, _)| k.dir == lb_common::ct_dir::REPLY)
            {
                f.nat
                    .mark(lb_common::filter::backend_nat_slot(k.saddr, k.sport));
            }
        }
        self.filters = Some(f);
        Ok(())
    }

    /// The agent's status entry (all zero if no agent ever wrote one).
    pub fn read_agent(&self) -> Result<AgentStatus, MapsError> {
        self.agent.get(&0, 0).map_err(|source| MapsError::Read {
            map: names::AGENT,
            source,
        })
    }

    /// Writes the agent's status entry.
    pub fn write_agent(&mut self, st: &AgentStatus) -> Result<(), WriteError> {
        self.agent
            .set(0, st, 0)
            .map_err(|e| write_err(names::AGENT, "update", &e))
    }

    /// The datapath's state of uplink `ifindex`, if the slot is that device's.
    pub fn device(&self, ifindex: u32) -> Result<Option<DevState>, MapsError> {
        let d = self
            .devices
            .get(&device_slot(ifindex), 0)
            .map_err(|source| MapsError::Read {
                map: names::DEVICES,
                source,
            })?;
        Ok((d.ifindex == ifindex && ifindex != 0).then_some(d))
    }

    /// Claims uplink `ifindex`'s slot for XDP (its error count is kept when the slot is
    /// already its own; the fallback flag is cleared, so XDP_TX is tried again). Returns the
    /// ifindex of another device holding the slot, which keeps it.
    pub fn claim_device(&mut self, ifindex: u32) -> Result<Option<u32>, WriteError> {
        let slot = device_slot(ifindex);
        let cur = self
            .devices
            .get(&slot, 0)
            .map_err(|e| write_err(names::DEVICES, "lookup", &e))?;
        if cur.ifindex != 0 && cur.ifindex != ifindex && crate::bpf::devices::exists(cur.ifindex) {
            return Ok(Some(cur.ifindex));
        }
        let kept = if cur.ifindex == ifindex {
            cur.tx_errors
        } else {
            0
        };
        let st = DevState {
            ifindex,
            flags: 0,
            tx_errors: kept,
            last_error: if cur.ifindex == ifindex {
                cur.last_error
            } else {
                0
            },
            _pad: 0,
        };
        self.devices
            .set(slot, st, 0)
            .map_err(|e| write_err(names::DEVICES, "update", &e))?;
        Ok(None)
    }

    /// Frees uplink `ifindex`'s slot (XDP detached from it).
    pub fn release_device(&mut self, ifindex: u32) -> Result<(), WriteError> {
        let slot = device_slot(ifindex);
        let cur = self
            .devices
            .get(&slot, 0)
            .map_err(|e| write_err(names::DEVICES, "lookup", &e))?;
        if cur.ifindex == ifindex {
            self.devices
                .set(slot, DevState::default(), 0)
                .map_err(|e| write_err(names::DEVICES, "update", &e))?;
        }
        Ok(())
    }

    /// The agent's configuration entry.
    pub fn read_config(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(|source| MapsError::Read {
            map: names::CONFIG,
            source,
        })
    }

    /// Writes the configuration entry.
    pub fn write_config(&mut self, cfg: &Config) -> Result<(), WriteError> {
        self.config
            .set(0, cfg, 0)
            .map_err(|e| write_err(names::CONFIG, "update", &e))
    }

    /// Writes the IPv6 configuration entry.
    pub fn write_config6(&mut self, cfg: &Config6) -> Result<(), WriteError> {
        let v6 = self.v6.as_mut().ok_or_else(|| no_v6(names::CONFIG6))?;
        v6.config
            .set(0, cfg, 0)
            .map_err(|e| write_err(names::CONFIG6, "update", &e))
    }

    /// All IPv4 frontends.
    pub fn frontends(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError> {
        collect(names::SERVICES, self.services.iter())
    }

    /// All IPv4 backends by id.
    pub fn all_backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        collect(names::BACKENDS, self.backends.iter())
    }

    /// All frontends of both families, in the wide form (`crate::addr`).
    pub fn wide_frontends(&self) -> Result<Vec<(WideKey, ServiceValue)>, MapsError> {
        let mut out: Vec<(WideKey, ServiceValue)> = self
            .frontends()?
            .iter()
            .map(|(k, v)| (addr::widen_key(k), *v))
            .collect();
        if let Some(v6) = &self.v6 {
            out.extend(collect(names::SERVICES6, v6.services.iter())?);
        }
        Ok(out)
    }

    /// All backends of both families by id, in the wide form.
    pub fn wide_backends(&self) -> Result<Vec<(u32, WideBackend)>, MapsError> {
        let mut out: Vec<(u32, WideBackend)> = self
            .all_backends()?
            .iter()
            .map(|(id, b)| (*id, addr::widen_backend(b)))
            .collect();
        if let Some(v6) = &self.v6 {
            out.extend(collect(names::BACKENDS6, v6.backends.iter())?);
        }
        Ok(out)
    }

    /// All service infos by id.
    pub fn infos(&self) -> Result<Vec<(u32, SvcInfo)>, MapsError> {
        collect(names::SVC_INFO, self.svc_info.iter())
    }

    /// All conntrack entries of both tables (confirmed flows, then unanswered ones).
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        Ok(self
            .conntrack_tables()?
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect())
    }

    /// All conntrack entries with whether their flow is confirmed (`xlb_ct`) or not yet
    /// answered (`xlb_ct_new`).
    pub fn conntrack_tables(&self) -> Result<Vec<CtRow<lb_common::Ipv4>>, MapsError> {
        self.ct_tables(names::CONNTRACK, names::CT_NEW)
    }

    /// `conntrack_tables` of IPv6 (`xlb_ct6`, `xlb_ct6_new`); none when those maps are not
    /// pinned.
    pub fn conntrack6_tables(&self) -> Result<Vec<CtRow<Ipv6>>, MapsError> {
        if self.v6.is_none() {
            return Ok(Vec::new());
        }
        self.ct_tables(names::CONNTRACK6, names::CT_NEW6)
    }

    fn ct_tables<K: Copy, V: Copy>(
        &self,
        confirmed_map: &'static str,
        new_map: &'static str,
    ) -> Result<Vec<(K, V, bool)>, MapsError> {
        let mut out = Vec::new();
        for (name, confirmed) in [(confirmed_map, true), (new_map, false)] {
            self.walk(name, |k, v| {
                if k.len() == size_of::<K>() && v.len() == size_of::<V>() {
                    // SAFETY: lengths checked; both are plain #[repr(C)] integer structs
                    // (every bit pattern is a value).
                    out.push(unsafe {
                        (
                            std::ptr::read_unaligned(k.as_ptr().cast::<K>()),
                            std::ptr::read_unaligned(v.as_ptr().cast::<V>()),
                            confirmed,
                        )
                    });
                }
            })?;
        }
        Ok(out)
    }

    /// Walks a pinned hash-type map by name (batched, see `walk_entries`); returns the count.
    pub fn walk(
        &self,
        name: &'static str,
        f: impl FnMut(&[u8], &[u8]),
    ) -> Result<usize, MapsError> {
        walk_entries(&open(&self.dir, name)?, f)
    }

    /// All source ranges as (service id, CIDR).
    pub fn ranges(&self) -> Result<Vec<(u32, IpNet)>, MapsError> {
        let mut out = Vec::new();
        for k in self.src_ranges.keys() {
            let k = k.map_err(|source| MapsError::Read {
                map: names::SRC_RANGES,
                source,
            })?;
            let data = k.data();
            out.push((
                u32::from_be(data.svc_id_be),
                IpNet {
                    addr: IpAddr::from(data.addr),
                    len: (k.prefix_len().saturating_sub(32)) as u8,
                },
            ));
        }
        if let Some(v6) = &self.v6 {
            for k in v6.src_ranges.keys() {
                let k = k.map_err(|source| MapsError::Read {
                    map: names::SRC_RANGES6,
                    source,
                })?;
                let data = k.data();
                out.push((
                    u32::from_be(data.svc_id_be),
                    IpNet {
                        addr: IpAddr::from(data.addr),
                        len: (k.prefix_len().saturating_sub(32)) as u8,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Global counters summed over CPUs.
    pub fn counters_sum(&self) -> Result<Vec<u64>, MapsError> {
        let mut out = Vec::new();
        for i in 0..self.counters.len() {
            let v = self.counters.get(&i, 0).map_err(|source| MapsError::Read {
                map: names::COUNTERS,
                source,
            })?;
            out.push(v.iter().sum());
        }
        Ok(out)
    }

    /// One service's counters summed over CPUs.
    pub fn svc_stats_sum(&self, svc_id: u32) -> Result<SvcStats, MapsError> {
        let v = self
            .svc_stats
            .get(&svc_id, 0)
            .map_err(|source| MapsError::Read {
                map: names::SVC_STATS,
                source,
            })?;
        Ok(v.iter().fold(SvcStats::default(), |a, s| SvcStats {
            fwd_packets: a.fwd_packets + s.fwd_packets,
            fwd_bytes: a.fwd_bytes + s.fwd_bytes,
            rev_packets: a.rev_packets + s.rev_packets,
            rev_bytes: a.rev_bytes + s.rev_bytes,
            new_flows: a.new_flows + s.new_flows,
            drops: a.drops + s.drops,
        }))
    }

    /// A service's table as programmed (slot → backend id), or `None` if it has none.
    pub fn table(&self, svc_id: u32) -> Result<Option<Vec<u32>>, MapsError> {
        let inner = match self.lut.get(&svc_id, 0) {
            Ok(m) => m,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(MapsError::Read {
                    map: names::LUT,
                    source,
                });
            }
        };
        let arr: Array<MapData, LutChunk> =
            Array::try_from(Map::Array(inner)).map_err(|source| MapsError::Read {
                map: names::LUT,
                source,
            })?;
        let mut out = Vec::with_capacity(arr.len() as usize * LUT_CHUNK_SLOTS);
        for i in 0..arr.len() {
            let c = arr.get(&i, 0).map_err(|source| MapsError::Read {
                map: names::LUT,
                source,
            })?;
            out.extend_from_slice(&c.backend_ids);
        }
        Ok(Some(out))
    }
}

/// Chunks a table of `len` slots occupies.
fn chunks_of(len: usize) -> usize {
    len.div_ceil(LUT_CHUNK_SLOTS).max(1)
}

/// Writes `ids` into a table map through a shared mapping, repeating them to fill the last
/// chunk (a reader still holding a larger size lands on a live backend).
fn fill_table(map: &MapData, chunks: usize, ids: &[u32]) -> Result<(), String> {
    let len = chunks * std::mem::size_of::<LutChunk>();
    let mut m = Mapping::new(map, len).map_err(|e| format!("mmap table: {e}"))?;
    // SAFETY: u32 slots at page alignment; the datapath only reads them.
    let slots = unsafe { m.slice_mut::<u32>() };
    if ids.is_empty() {
        slots.fill(0);
    } else {
        // Aligned u32 stores: a concurrent reader sees each slot old or new, never torn.
        for (i, s) in slots.iter_mut().enumerate() {
            *s = ids[i % ids.len()];
        }
    }
    Ok(())
}

/// Creates an mmapable table map holding `ids`.
fn create_table(svc_id: u32, ids: &[u32]) -> Result<MapData, String> {
    use aya_obj::generated::{BPF_F_INNER_MAP, BPF_F_MMAPABLE, bpf_map_type};
    let chunks = chunks_of(ids.len());
    let obj = aya_obj::Map::new_from_params(
        bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        std::mem::size_of::<LutChunk>() as u32,
        chunks as u32,
        BPF_F_MMAPABLE | BPF_F_INNER_MAP,
    );
    let name = format!("xlb_lut_{svc_id}");
    let map = MapData::create(obj, &name[..name.len().min(15)], None).map_err(|e| e.to_string())?;
    fill_table(&map, chunks, ids)?;
    Ok(map)
}

/// `union bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Number of entries in a hash-type map (see `walk_entries`).
pub fn count_entries(map: &MapData) -> Result<usize, MapsError> {
    walk_entries(map, |_, _| {})
}

/// Calls `f(key, value)` on every entry of a (non-per-CPU) hash-type map, read with
/// BPF_MAP_LOOKUP_BATCH: 4096 entries per syscall, so a full 512k-entry conntrack costs ~130
/// calls, not a million. Returns the number of entries.
pub fn walk_entries(map: &MapData, mut f: impl FnMut(&[u8], &[u8])) -> Result<usize, MapsError> {
    const BATCH: usize = 4096;
    let read_err = |source: std::io::Error| MapsError::Syscall {
        call: "bpf_map_lookup_batch",
        source,
    };
    let info = map.info().map_err(|source| MapsError::Read {
        map: "map info",
        source,
    })?;
    let (ks, vs) = (info.key_size() as usize, info.value_size() as usize);
    let mut keys = vec![0u8; BATCH * ks];
    let mut values = vec![0u8; BATCH * vs];
    let mut token = [0u8; 8];
    let mut total = 0usize;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        first = false;
        // SAFETY: buffers sized for `count` keys and values, live for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        // The kernel reports how many entries it copied, also on the final ENOENT.
        let n = (attr.count as usize).min(BATCH);
        for i in 0..n {
            f(&keys[i * ks..(i + 1) * ks], &values[i * vs..(i + 1) * vs]);
        }
        total += n;
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(total);
            }
            return Err(read_err(e));
        }
    }
}

/// Inserts `keys[i] → values[i]` with one BPF_MAP_UPDATE_BATCH. For a map of maps the kernel
/// waits for running programs once per call instead of once per element.
fn update_batch(map: &MapData, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` points at live key/value arrays of `count` u32 each, for the syscall only.
    unsafe { batch_call(BPF_MAP_UPDATE_BATCH, &mut attr) }
}

/// One batch map command; the kernel updates `attr.count` with the elements it handled.
///
/// # Safety
/// The pointers in `attr` must be valid for `attr.count` elements during the call.
unsafe fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: per the caller; `attr` is a live BatchAttr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes `keys` with BPF_MAP_DELETE_BATCH (one wait for running programs per call on a map
/// of maps, where one delete per key would wait once each). Keys already absent are skipped.
fn delete_batch(map: &MapData, keys: &[u32]) -> std::io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at a live key array of `count` u32, for the syscall only.
        let Err(e) = (unsafe { batch_call(BPF_MAP_DELETE_BATCH, &mut attr) }) else {
            return Ok(());
        };
        // The kernel stops at the first absent key and reports how many it deleted before it.
        let done = (attr.count as usize).min(rest.len());
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
        rest = &rest[done + 1..];
    }
    Ok(())
}

/// New tables are inserted this many at a time (bounds the map fds held open).
const TABLE_BATCH: usize = 256;

fn collect<K, V>(
    map: &'static str,
    it: impl Iterator<Item = Result<(K, V), MapError>>,
) -> Result<Vec<(K, V)>, MapsError> {
    it.collect::<Result<Vec<_>, _>>()
        .map_err(|source| MapsError::Read { map, source })
}

impl MapWriter for Maps {
    fn put_service(&mut self, key: &WideKey, value: &ServiceValue) -> Result<(), WriteError> {
        // The filter bit first: the datapath never sees a frontend its filter hides.
        let new = self.filters()?.frontend_coming(key);
        let r = match addr::narrow_key(key) {
            Some(k4) => self
                .services
                .insert(k4, value, 0)
                .map_err(|e| write_err(names::SERVICES, "update", &e)),
            None => match &mut self.v6 {
                Some(v6) => v6
                    .services
                    .insert(key, value, 0)
                    .map_err(|e| write_err(names::SERVICES6, "update", &e)),
                None => Err(no_v6(names::SERVICES6)),
            },
        };
        if r.is_err() && new {
            self.filters()?.frontend_gone(key);
        }
        r
    }
    fn del_service(&mut self, key: &WideKey) -> Result<(), WriteError> {
        match addr::narrow_key(key) {
            Some(k4) => ignore_missing(self.services.remove(&k4))
                .map_err(|e| write_err(names::SERVICES, "delete", &e))?,
            None => {
                if let Some(v6) = &mut self.v6 {
                    ignore_missing(v6.services.remove(key))
                        .map_err(|e| write_err(names::SERVICES6, "delete", &e))?;
                }
            }
        }
        self.filters()?.frontend_gone(key);
        Ok(())
    }
    fn put_backend(&mut self, id: u32, value: &WideBackend) -> Result<(), WriteError> {
        let pending = self.filters()?.backend_coming(id, value);
        // A backend id changes family only if it is reused: the other family's entry goes.
        let r = match addr::narrow_backend(value) {
            Some(b4) => {
                if let Some(v6) = &mut self.v6 {
                    let _ = v6.backends.remove(&id);
                }
                self.backends
                    .insert(id, b4, 0)
                    .map_err(|e| write_err(names::BACKENDS, "update", &e))
            }
            None => match &mut self.v6 {
                Some(v6) => {
                    let _ = self.backends.remove(&id);
                    v6.backends
                        .insert(id, value, 0)
                        .map_err(|e| write_err(names::BACKENDS6, "update", &e))
                }
                None => Err(no_v6(names::BACKENDS6)),
            },
        };
        self.filters()?.backend_written(pending, r.is_ok());
        r
    }
    fn del_backend(&mut self, id: u32) -> Result<(), WriteError> {
        ignore_missing(self.backends.remove(&id))
            .map_err(|e| write_err(names::BACKENDS, "delete", &e))?;
        if let Some(v6) = &mut self.v6 {
            ignore_missing(v6.backends.remove(&id))
                .map_err(|e| write_err(names::BACKENDS6, "delete", &e))?;
        }
        self.filters()?.backend_gone(id);
        Ok(())
    }
    fn put_tables(&mut self, tables: &[(u32, Vec<u32>)]) -> Result<(), WriteError> {
        let err = |op, reason: String| WriteError {
            map: names::LUT,
            op,
            reason,
        };
        let mut created: Vec<(u32, MapData)> = Vec::new();
        for (svc_id, ids) in tables {
            // A table of the same size is rewritten in place: no map-of-maps update, so no
            // wait for running programs (a Maglev table keeps its chunks unless its pick list
            // crosses a chunk boundary).
            if let Ok(inner) = self.lut.get(svc_id, 0)
                && inner
                    .info()
                    .is_ok_and(|i| i.max_entries() as usize == chunks_of(ids.len()))
            {
                fill_table(&inner, chunks_of(ids.len()), ids).map_err(|r| err("update", r))?;
                continue;
            }
            created.push((
                *svc_id,
                create_table(*svc_id, ids).map_err(|r| err("create", r))?,
            ));
            if created.len() == TABLE_BATCH {
                self.insert_tables(&mut created)?;
            }
        }
        self.insert_tables(&mut created)
    }
    fn del_tables(&mut self, svc_ids: &[u32]) -> Result<(), WriteError> {
        delete_batch(&self.lut_raw, svc_ids).map_err(|e| WriteError {
            map: names::LUT,
            op: "delete",
            reason: e.to_string(),
        })
    }
    fn put_info(&mut self, svc_id: u32, info: &SvcInfo) -> Result<(), WriteError> {
        self.svc_info
            .insert(svc_id, info, 0)
            .map_err(|e| write_err(names::SVC_INFO, "update", &e))
    }
    fn del_info(&mut self, svc_id: u32) -> Result<(), WriteError> {
        ignore_missing(self.svc_info.remove(&svc_id))
            .map_err(|e| write_err(names::SVC_INFO, "delete", &e))
    }
    fn put_range(&mut self, svc_id: u32, net: &IpNet) -> Result<(), WriteError> {
        match range_key(svc_id, net) {
            RangeKey::V4(k) => self
                .src_ranges
                .insert(&k, 1, 0)
                .map_err(|e| write_err(names::SRC_RANGES, "update", &e)),
            RangeKey::V6(k) => match &mut self.v6 {
                Some(v6) => v6
                    .src_ranges
                    .insert(&k, 1, 0)
                    .map_err(|e| write_err(names::SRC_RANGES6, "update", &e)),
                None => Err(no_v6(names::SRC_RANGES6)),
            },
        }
    }
    fn del_range(&mut self, svc_id: u32, net: &IpNet) -> Result<(), WriteError> {
        match range_key(svc_id, net) {
            RangeKey::V4(k) => ignore_missing(self.src_ranges.remove(&k))
                .map_err(|e| write_err(names::SRC_RANGES, "delete", &e)),
            RangeKey::V6(k) => match &mut self.v6 {
                Some(v6) => ignore_missing(v6.src_ranges.remove(&k))
                    .map_err(|e| write_err(names::SRC_RANGES6, "delete", &e)),
                None => Ok(()),
            },
        }
    }
    fn reset_stats(&mut self, svc_id: u32) -> Result<(), WriteError> {
        let zero =
            PerCpuValues::try_from(vec![SvcStats::default(); self.nr_cpus]).map_err(|e| {
                WriteError {
                    map: names::SVC_STATS,
                    op: "update",
                    reason: e.to_string(),
                }
            })?;
        self.svc_stats
            .set(svc_id, zero, 0)
            .map_err(|e| write_err(names::SVC_STATS, "update", &e))
    }
}

impl Maps {
    /// Swaps newly created tables in (atomically per service), one syscall per batch.
    fn insert_tables(&mut self, created: &mut Vec<(u32, MapData)>) -> Result<(), WriteError> {
        if created.is_empty() {
            return Ok(());
        }
        let keys: Vec<u32> = created.iter().map(|(k, _)| *k).collect();
        let fds: Vec<u32> = created
            .iter()
            .map(|(_, m)| m.fd().as_fd().as_raw_fd() as u32)
            .collect();
        let r = update_batch(&self.lut_raw, &keys, &fds);
        created.clear();
        r.map_err(|e| WriteError {
            map: names::LUT,
            op: "update",
            reason: e.to_string(),
        })
    }
}

impl MapReader for Maps {
    fn read_all(&self) -> Result<Recovered, WriteError> {
        let r = |e: MapsError| WriteError {
            map: "maps",
            op: "read",
            reason: e.to_string(),
        };
        Ok(Recovered {
            infos: self.infos().map_err(r)?,
            frontends: self.wide_frontends().map_err(r)?,
            backends: self.wide_backends().map_err(r)?,
            ranges: self.ranges().map_err(r)?,
        })
    }
}
