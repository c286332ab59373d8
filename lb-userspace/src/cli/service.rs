//! `xlb service list`: the programmed services, their frontends, backends and counters, read
//! from the pinned maps (works with the agent stopped).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{backend_flags, map_names, scope, svc_flags};
use serde::Serialize;

use super::{
    Format,
    inspect::hex_key,
    table::{Style, Table},
};
use crate::{
    addr,
    bpf::maps::{Maps, MapsError, backend_state, info_name},
    model::{FrontendKind, Protocol},
};

/// Who a frontend entry serves: `all` (one entry for everyone), or, when internal and external
/// traffic policies differ, `internal` (this node's pods) / `external` (everyone else).
pub fn scope_text(entry_scope: u8, flags: u16) -> &'static str {
    if entry_scope == scope::INTERNAL {
        "internal"
    } else if flags & svc_flags::TWO_SCOPES != 0 {
        "external"
    } else {
        "all"
    }
}

/// A frontend as shown.
#[derive(Serialize, Debug, Clone)]
pub struct FrontendView {
    pub address: String,
    /// The map holding the frontend: `xlb_services`, or `xlb_services6` for IPv6.
    pub map: &'static str,
    /// The frontend's key in that map, as `bpftool map lookup ... key hex ...` takes it.
    pub bpftool_key: String,
    pub kind: String,
    pub scope: &'static str,
    pub source_ranges: bool,
}

/// A backend as shown.
#[derive(Serialize, Debug, Clone)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    /// The map holding the backend: `xlb_backends`, or `xlb_backends6` for IPv6.
    pub map: &'static str,
    pub state: &'static str,
    pub local: bool,
    pub weight: u16,
}

/// Per-service counters.
#[derive(Serialize, Debug, Clone, Default)]
pub struct TrafficView {
    pub new_flows: u64,
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub drops: u64,
}

/// A service as shown.
#[derive(Serialize, Debug, Clone)]
pub struct ServiceView {
    pub id: u32,
    pub name: String,
    pub algorithm: &'static str,
    pub session_affinity_seconds: u32,
    pub external_traffic_local: bool,
    pub table_slots: u32,
    pub frontends: Vec<FrontendView>,
    pub backends: Vec<BackendView>,
    pub traffic: TrafficView,
}

/// `address:port/PROTO` of a key (`[address]:port/PROTO` for IPv6).
pub fn endpoint_text(addr: impl Into<IpAddr>, port: u16, proto: u8) -> String {
    let p = Protocol::from_number(proto).map_or_else(|| proto.to_string(), |p| p.to_string());
    format!("{}/{p}", SocketAddr::new(addr.into(), port))
}

/// The map of a family (`v4` or `v6`).
pub fn family_map(ip: IpAddr, v4: &'static str, v6: &'static str) -> &'static str {
    if ip.is_ipv4() { v4 } else { v6 }
}

/// Reads every service from the maps.
pub fn gather(maps: &Maps) -> Result<Vec<ServiceView>, MapsError> {
    let mut by_id: BTreeMap<u32, ServiceView> = BTreeMap::new();
    let blank = |id: u32| ServiceView {
        id,
        name: format!("#{id}"),
        algorithm: "",
        session_affinity_seconds: 0,
        external_traffic_local: false,
        table_slots: 0,
        frontends: Vec::new(),
        backends: Vec::new(),
        traffic: TrafficView::default(),
    };
    for (id, info) in maps.infos()? {
        by_id.entry(id).or_insert_with(|| blank(id)).name = info_name(&info);
    }
    for (k, v) in maps.wide_frontends()? {
        let s = by_id.entry(v.svc_id).or_insert_with(|| blank(v.svc_id));
        s.algorithm = if v.algorithm == lb_common::algorithm::RANDOM {
            "random"
        } else {
            "maglev"
        };
        s.session_affinity_seconds = v.affinity_timeout;
        s.external_traffic_local = v.flags & svc_flags::EXT_LOCAL != 0;
        s.table_slots = v.lut_size;
        let ip = addr::ip(&k.addr);
        s.frontends.push(FrontendView {
            address: endpoint_text(ip, k.port, k.proto),
            map: family_map(ip, map_names::SERVICES, map_names::SERVICES6),
            bpftool_key: addr::narrow_key(&k)
                .map_or_else(|| hex_key(&k.to_bytes()), |k4| hex_key(&k4.to_bytes())),
            kind: FrontendKind::from_code(v.kind)
                .map_or_else(|| v.kind.to_string(), |k| k.to_string()),
            scope: scope_text(k.scope, v.flags),
            source_ranges: v.flags & svc_flags::SRC_RANGES != 0,
        });
    }
    for (id, b) in maps.wide_backends()? {
        let s = by_id.entry(b.svc_id).or_insert_with(|| blank(b.svc_id));
        let ip = addr::ip(&b.addr);
        s.backends.push(BackendView {
            id,
            address: SocketAddr::new(ip, b.port).to_string(),
            map: family_map(ip, map_names::BACKENDS, map_names::BACKENDS6),
            state: backend_state(b.flags),
            local: b.flags & backend_flags::LOCAL != 0,
            weight: b.weight,
        });
    }
    let mut out: Vec<ServiceView> = by_id.into_values().collect();
    for s in &mut out {
        s.frontends.sort_by(|a, b| a.address.cmp(&b.address));
        s.backends.sort_by(|a, b| a.address.cmp(&b.address));
        if let Ok(st) = maps.svc_stats_sum(s.id) {
            s.traffic = TrafficView {
                new_flows: st.new_flows,
                fwd_packets: st.fwd_packets,
                fwd_bytes: st.fwd_bytes,
                rev_packets: st.rev_packets,
                rev_bytes: st.rev_bytes,
                drops: st.drops,
            };
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Renders services for humans.
pub fn render(services: &[ServiceView], style: Style) -> String {
    if services.is_empty() {
        return "no services programmed\n".to_owned();
    }
    let mut out = String::new();
    for s in services {
        let active = s.backends.iter().filter(|b| b.state == "active").count();
        let mut policy = Vec::new();
        if s.session_affinity_seconds > 0 {
            policy.push(format!("affinity {}s", s.session_affinity_seconds));
        }
        if s.external_traffic_local {
            policy.push("eTP=Local".to_owned());
        }
        let algorithm = if style.wide && s.algorithm == "maglev" {
            format!("maglev, {} slots", s.table_slots)
        } else {
            s.algorithm.to_owned()
        };
        out.push_str(&format!(
            "{}  (id {}, {algorithm}, {active}/{} backends active{})\n",
            s.name,
            s.id,
            s.backends.len(),
            if policy.is_empty() {
                String::new()
            } else {
                format!(", {}", policy.join(", "))
            }
        ));
        let mut t = Table::new(&["  FRONTEND", "KIND", "SCOPE", "SOURCE-RANGES"])
            .wide(&["MAP", "BPFTOOL KEY"]);
        for f in &s.frontends {
            t.row(vec![
                format!("  {}", f.address),
                f.kind.clone(),
                f.scope.to_owned(),
                if f.source_ranges { "checked" } else { "-" }.to_owned(),
                f.map.to_owned(),
                f.bpftool_key.clone(),
            ]);
        }
        out.push_str(&t.render(style));
        let mut t = Table::new(&["  BACKEND", "ID", "STATE", "LOCAL", "WEIGHT"])
            .wide(&["MAP", "BPFTOOL KEY"]);
        for b in &s.backends {
            t.row(vec![
                format!("  {}", b.address),
                b.id.to_string(),
                b.state.to_owned(),
                if b.local { "yes" } else { "no" }.to_owned(),
                b.weight.to_string(),
                b.map.to_owned(),
                hex_key(&b.id.to_ne_bytes()),
            ]);
        }
        out.push_str(&t.render(style));
        let tr = &s.traffic;
        out.push_str(&format!(
            "  traffic: {} flows, {} pkts / {} B to backends, {} pkts / {} B back, {} drops\n\n",
            tr.new_flows, tr.fwd_packets, tr.fwd_bytes, tr.rev_packets, tr.rev_bytes, tr.drops
        ));
    }
    out
}

/// Whether `s` is what `filter` names: a frontend address (`VIP`, `VIP:PORT`, `[VIP6]:PORT`),
/// or a name as `NAME` (any namespace), `NAMESPACE/NAME`, `NAMESPACE/NAME:PORT` or the full
/// name.
fn matches(s: &ServiceView, filter: &str) -> bool {
    let frontend = |f: &FrontendView| {
        let (a, _proto) = f.address.rsplit_once('/').unwrap_or((&f.address, ""));
        a.parse::<SocketAddr>().ok()
    };
    if let Ok(ip) = filter.parse::<IpAddr>() {
        return s
            .frontends
            .iter()
            .any(|f| frontend(f).is_some_and(|a| a.ip() == ip));
    }
    if let Ok(sa) = filter.parse::<SocketAddr>() {
        return s.frontends.iter().any(|f| frontend(f) == Some(sa));
    }
    // `namespace/name:port/PROTO`.
    let (full, port_proto) = s.name.rsplit_once(':').unwrap_or((&s.name, ""));
    let (_ns, bare) = full.split_once('/').unwrap_or(("", full));
    let port = port_proto.split_once('/').map_or(port_proto, |(p, _)| p);
    s.name == filter || full == filter || bare == filter || format!("{full}:{port}") == filter
}

/// `xlb service list [NAME|VIP]`: every service, or those the filter names (an error when none).
pub fn list(maps: &Maps, filter: Option<&str>, format: Format) -> anyhow::Result<String> {
    let mut services = gather(maps)?;
    if let Some(f) = filter {
        services.retain(|s| matches(s, f));
        if services.is_empty() {
            anyhow::bail!("no programmed service matches {f:?} (a name, namespace/name, or VIP)");
        }
    }
    format.render(&services, |style| render(&services, style))
}
