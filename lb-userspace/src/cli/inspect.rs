//! `xlb backend list`, `xlb conntrack list`, `xlb stats`, `xlb maps`: read-only views of the
//! pinned maps, each gathered into plain data, then rendered as a table or JSON.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{MapData, MapInfo};
use lb_common::{
    CtKey, CtValue, backend_flags, counter, ct_dir, ct_flags, ct_state, drop_reason,
    map_names as names,
};
use serde::Serialize;

use super::{Format, service::endpoint_text, table::Table};
use crate::bpf::{
    maps::{Maps, backend_state, info_name},
    pins::expected_layout,
};

fn names_by_id(maps: &Maps) -> anyhow::Result<BTreeMap<u32, String>> {
    Ok(maps
        .infos()?
        .into_iter()
        .map(|(id, info)| (id, info_name(&info)))
        .collect())
}

/// A backend as listed.
#[derive(Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    /// `xlb_backends`, or `xlb_backends6` for IPv6.
    pub map: &'static str,
    pub service: String,
    pub service_id: u32,
    pub state: &'static str,
    pub local: bool,
    pub weight: u16,
}

/// `xlb backend list`.
pub fn backends(maps: &Maps, format: Format) -> anyhow::Result<String> {
    let names = names_by_id(maps)?;
    let mut rows: Vec<BackendRow> = maps
        .wide_backends()?
        .into_iter()
        .map(|(id, b)| BackendRow {
            id,
            address: SocketAddr::new(crate::addr::ip(&b.addr), b.port).to_string(),
            map: super::service::family_map(
                crate::addr::ip(&b.addr),
                names::BACKENDS,
                names::BACKENDS6,
            ),
            service: names
                .get(&b.svc_id)
                .cloned()
                .unwrap_or_else(|| format!("#{}", b.svc_id)),
            service_id: b.svc_id,
            state: backend_state(b.flags),
            local: b.flags & backend_flags::LOCAL != 0,
            weight: b.weight,
        })
        .collect();
    rows.sort_by(|a, b| (&a.address, &a.service).cmp(&(&b.address, &b.service)));
    format.render(&rows, |style| {
        let mut t = Table::new(&["BACKEND", "ID", "STATE", "LOCAL", "WEIGHT", "SERVICE"]).wide(&[
            "SERVICE-ID",
            "MAP",
            "BPFTOOL KEY",
        ]);
        for r in &rows {
            t.row(vec![
                r.address.clone(),
                r.id.to_string(),
                r.state.to_owned(),
                if r.local { "yes" } else { "no" }.to_owned(),
                r.weight.to_string(),
                r.service.clone(),
                r.service_id.to_string(),
                r.map.to_owned(),
                hex_key(&r.id.to_ne_bytes()),
            ]);
        }
        t.render(style)
    })
}

/// Filters of `xlb conntrack list`.
#[derive(Debug, Default, Clone)]
pub struct CtFilter {
    /// Service name (exact) or substring.
    pub service: Option<String>,
    /// Backend `addr[:port]`.
    pub backend: Option<String>,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Show expired entries too.
    pub all: bool,
}

/// A tracked flow as listed (one per forward entry).
#[derive(Serialize)]
pub struct FlowRow {
    pub proto: String,
    /// As the client sent it.
    pub original: String,
    /// As the backend receives it.
    pub translated: String,
    pub service: String,
    pub backend_id: u32,
    pub state: &'static str,
    /// Answered by its backend (in `xlb_ct`); false while only the client has spoken
    /// (`xlb_ct_new`).
    pub confirmed: bool,
    /// The table holding it (`xlb_ct`, `xlb_ct_new`, or their IPv6 `xlb_ct6`, `xlb_ct6_new`).
    #[serde(skip)]
    pub map: &'static str,
    pub flags: Vec<&'static str>,
    pub age_seconds: u32,
    pub expires_in_seconds: i64,
}

fn state_name(s: u8) -> &'static str {
    match s {
        ct_state::SYN_SENT => "syn-sent",
        ct_state::ESTABLISHED => "established",
        ct_state::FIN_WAIT => "fin-wait",
        ct_state::CLOSED => "closed",
        _ => "?",
    }
}

fn flag_names(f: u8) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (bit, name) in [
        (ct_flags::HAIRPIN, "hairpin"),
        (ct_flags::SNAT, "snat"),
        (ct_flags::FIN_FWD, "fin-client"),
        (ct_flags::FIN_REPLY, "fin-backend"),
    ] {
        if f & bit != 0 {
            v.push(name);
        }
    }
    v
}

/// The listed row of a forward conntrack entry of either family, if `filter` keeps it.
fn flow_row<A: Copy + Into<IpAddr>>(
    k: &CtKey<A>,
    v: &CtValue<A>,
    confirmed: bool,
    names: &BTreeMap<u32, String>,
    filter: &CtFilter,
    now: u32,
) -> Option<FlowRow> {
    if k.dir != ct_dir::FORWARD || (!filter.all && v.expires < now) {
        return None;
    }
    let at = |a: A, port: u16| SocketAddr::new(a.into(), port).to_string();
    let service = names
        .get(&v.svc_id)
        .cloned()
        .unwrap_or_else(|| format!("#{}", v.svc_id));
    let src = if v.flags & ct_flags::XLATE_SRC != 0 {
        (v.nat_saddr, v.nat_sport)
    } else {
        (k.saddr, k.sport)
    };
    let backend = at(v.nat_daddr, v.nat_dport);
    let backend_ip: IpAddr = v.nat_daddr.into();
    if let Some(s) = &filter.service
        && !service.contains(s.as_str())
    {
        return None;
    }
    if let Some(b) = &filter.backend
        && !(backend == *b || backend_ip.to_string() == *b)
    {
        return None;
    }
    if let Some(c) = filter.client
        && k.saddr.into() != c
    {
        return None;
    }
    let proto = crate::model::Protocol::from_number(k.proto)
        .map_or_else(|| k.proto.to_string(), |p| p.to_string());
    Some(FlowRow {
        proto,
        original: format!("{} -> {}", at(k.saddr, k.sport), at(k.daddr, k.dport)),
        translated: format!("{} -> {backend}", at(src.0, src.1)),
        service,
        backend_id: v.backend_id,
        state: state_name(v.state),
        confirmed,
        map: match (backend_ip.is_ipv4(), confirmed) {
            (true, true) => names::CONNTRACK,
            (true, false) => names::CT_NEW,
            (false, true) => names::CONNTRACK6,
            (false, false) => names::CT_NEW6,
        },
        flags: flag_names(v.flags),
        age_seconds: now.saturating_sub(v.created),
        expires_in_seconds: i64::from(v.expires) - i64::from(now),
    })
}

/// `xlb conntrack list`: the flows of both families.
pub fn conntrack(maps: &Maps, filter: &CtFilter, format: Format) -> anyhow::Result<String> {
    let names = names_by_id(maps)?;
    let now = crate::status::monotonic_secs();
    let mut rows: Vec<FlowRow> = maps
        .conntrack_tables()?
        .iter()
        .filter_map(|(k, v, c)| flow_row(k, v, *c, &names, filter, now))
        .collect();
    rows.extend(
        maps.conntrack6_tables()?
            .iter()
            .filter_map(|(k, v, c)| flow_row(k, v, *c, &names, filter, now)),
    );
    rows.sort_by(|a, b| (&a.service, &a.original).cmp(&(&b.service, &b.original)));
    format.render(&rows, |style| {
        let mut t = Table::new(&[
            "PROTO",
            "CLIENT -> FRONTEND",
            "TRANSLATED",
            "STATE",
            "AGE",
            "EXPIRES",
            "SERVICE",
            "FLAGS",
        ])
        .wide(&["BACKEND-ID", "MAP"]);
        for r in &rows {
            t.row(vec![
                r.proto.clone(),
                r.original.clone(),
                r.translated.clone(),
                if r.confirmed {
                    r.state.to_owned()
                } else {
                    format!("{} (unanswered)", r.state)
                },
                format!("{}s", r.age_seconds),
                format!("{}s", r.expires_in_seconds),
                r.service.clone(),
                r.flags.join(","),
                r.backend_id.to_string(),
                r.map.to_owned(),
            ]);
        }
        let mut s = t.render(style);
        s.push_str(&format!("{} flow(s)\n", rows.len()));
        s
    })
}

/// A counter as listed.
#[derive(Serialize)]
pub struct CounterRow {
    pub name: String,
    pub value: u64,
    pub drop: bool,
}

/// Every global counter and drop reason by name.
pub fn counter_rows(maps: &Maps) -> anyhow::Result<Vec<CounterRow>> {
    let sums = maps.counters_sum()?;
    Ok((0..counter::MAX)
        .filter(|i| !counter::name(*i).is_empty())
        .map(|i| CounterRow {
            name: if i > counter::DROP_BASE {
                format!("drop_{}", drop_reason::name(i - counter::DROP_BASE))
            } else {
                counter::name(i).to_owned()
            },
            value: sums.get(i as usize).copied().unwrap_or(0),
            drop: i > counter::DROP_BASE,
        })
        .collect())
}

/// `xlb stats`.
pub fn stats(maps: &Maps, format: Format) -> anyhow::Result<String> {
    let rows = counter_rows(maps)?;
    format.render(&rows, |style| {
        let mut t = Table::new(&["COUNTER", "VALUE"]).wide(&["KIND"]);
        for r in &rows {
            t.row(vec![
                r.name.clone(),
                r.value.to_string(),
                if r.drop { "drop" } else { "event" }.to_owned(),
            ]);
        }
        t.render(style)
    })
}

/// A pinned map as listed.
#[derive(Serialize)]
pub struct MapRow {
    pub name: &'static str,
    pub kind: String,
    pub entries: Option<usize>,
    pub capacity: u32,
    pub fill_percent: Option<f64>,
    pub key_bytes: u32,
    pub value_bytes: u32,
    pub bpftool: String,
}

/// `xlb maps`: each pinned map, its fill level against capacity and how to dump it.
pub fn maps(dir: &Path, format: Format) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for (name, ty, _, _) in expected_layout() {
        let path = dir.join(name);
        let info =
            MapInfo::from_pin(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let is_filter = name == names::FE_FILTER || name == names::BE_FILTER;
        let counts_entries = matches!(
            ty,
            aya::maps::MapType::Hash | aya::maps::MapType::LruHash | aya::maps::MapType::HashOfMaps
        );
        let entries = if counts_entries {
            let data = MapData::from_pin(&path)?;
            Some(crate::bpf::maps::count_entries(&data)?)
        } else if is_filter {
            // Bits set of all bits: the fill is the share of other traffic that still pays a
            // hash lookup.
            let data = MapData::from_pin(&path)?;
            let f = crate::bpf::filter::AddrFilter::open(&data)
                .map_err(|e| anyhow::anyhow!("{}: mmap: {e}", path.display()))?;
            Some(f.set_bits() as usize)
        } else if name == names::BE_NAT {
            // Slots raised of all slots: the share of backend words whose replies are looked up.
            let data = MapData::from_pin(&path)?;
            let n = crate::bpf::filter::NatSlots::open(&data)
                .map_err(|e| anyhow::anyhow!("{}: mmap: {e}", path.display()))?;
            Some(n.set_slots() as usize)
        } else if name == names::SRC_RANGES {
            Some(Maps::open(dir).map_or(0, |m| m.ranges().map_or(0, |r| r.len())))
        } else {
            None
        };
        let capacity = if is_filter {
            lb_common::filter::WORDS * 64
        } else if name == names::BE_NAT {
            1 << lb_common::filter::NAT_SLOTS_LOG2
        } else {
            info.max_entries()
        };
        rows.push(MapRow {
            name,
            kind: format!("{ty:?}"),
            entries,
            capacity,
            fill_percent: entries.map(|e| e as f64 * 100.0 / f64::from(capacity.max(1))),
            key_bytes: info.key_size(),
            value_bytes: info.value_size(),
            // A ring buffer cannot be dumped (`xlb monitor` reads it).
            bpftool: if ty == aya::maps::MapType::RingBuf {
                format!("bpftool map show pinned {}", path.display())
            } else {
                format!("bpftool map dump pinned {}", path.display())
            },
        });
    }
    format.render(&rows, |style| {
        let mut t = Table::new(&["MAP", "KIND", "ENTRIES", "CAPACITY", "FILL", "DUMP WITH"])
            .wide(&["KEY B", "VALUE B"]);
        for r in &rows {
            t.row(vec![
                r.name.to_owned(),
                r.kind.clone(),
                r.entries.map_or_else(|| "-".to_owned(), |e| e.to_string()),
                r.capacity.to_string(),
                r.fill_percent
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
                r.bpftool.clone(),
                r.key_bytes.to_string(),
                r.value_bytes.to_string(),
            ]);
        }
        t.render(style)
    })
}

/// A map key as `bpftool ... key hex` takes it.
pub fn hex_key(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("hex {}", hex.join(" "))
}

/// The frontends of the service a name matches, for display.
pub fn frontend_text(key: &lb_common::ServiceKey) -> String {
    endpoint_text(key.addr, key.port, key.proto)
}
