//! `xlb service list`: the programmed services, their frontends, backends and counters, read
//! from the pinned maps (works with the agent stopped).

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::{backend_flags, scope, svc_flags};
use serde::Serialize;

use super::{Output, table::Table};
use crate::{
    bpf::maps::{Maps, MapsError},
    model::{FrontendKind, Protocol},
    sync::info_name,
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
    pub kind: String,
    pub scope: &'static str,
    pub source_ranges: bool,
}

/// A backend as shown.
#[derive(Serialize, Debug, Clone)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
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

/// `address:port/PROTO` of a key.
pub fn endpoint_text(addr: [u8; 4], port: u16, proto: u8) -> String {
    let p = Protocol::from_number(proto).map_or_else(|| proto.to_string(), |p| p.to_string());
    format!("{}:{port}/{p}", Ipv4Addr::from(addr))
}

/// State word of a backend.
pub fn backend_state(flags: u8) -> &'static str {
    if flags & backend_flags::TERMINATING != 0 {
        "terminating"
    } else if flags & backend_flags::DRAINING != 0 {
        "not-ready"
    } else {
        "active"
    }
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
    for (k, v) in maps.frontends()? {
        let s = by_id.entry(v.svc_id).or_insert_with(|| blank(v.svc_id));
        s.algorithm = if v.algorithm == lb_common::algorithm::RANDOM {
            "random"
        } else {
            "maglev"
        };
        s.session_affinity_seconds = v.affinity_timeout;
        s.external_traffic_local = v.flags & svc_flags::EXT_LOCAL != 0;
        s.table_slots = v.lut_size;
        s.frontends.push(FrontendView {
            address: endpoint_text(k.addr, k.port, k.proto),
            kind: FrontendKind::from_code(v.kind)
                .map_or_else(|| v.kind.to_string(), |k| k.to_string()),
            scope: scope_text(k.scope, v.flags),
            source_ranges: v.flags & svc_flags::SRC_RANGES != 0,
        });
    }
    for (id, b) in maps.all_backends()? {
        let s = by_id.entry(b.svc_id).or_insert_with(|| blank(b.svc_id));
        s.backends.push(BackendView {
            id,
            address: format!("{}:{}", Ipv4Addr::from(b.addr), b.port),
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
pub fn render(services: &[ServiceView]) -> String {
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
        out.push_str(&format!(
            "{}  (id {}, {}, {active}/{} backends active{})\n",
            s.name,
            s.id,
            s.algorithm,
            s.backends.len(),
            if policy.is_empty() {
                String::new()
            } else {
                format!(", {}", policy.join(", "))
            }
        ));
        let mut t = Table::new(&["  FRONTEND", "KIND", "SCOPE", "SOURCE-RANGES"]);
        for f in &s.frontends {
            t.row(vec![
                format!("  {}", f.address),
                f.kind.clone(),
                f.scope.to_owned(),
                if f.source_ranges { "checked" } else { "-" }.to_owned(),
            ]);
        }
        out.push_str(&t.render());
        let mut t = Table::new(&["  BACKEND", "ID", "STATE", "LOCAL", "WEIGHT"]);
        for b in &s.backends {
            t.row(vec![
                format!("  {}", b.address),
                b.id.to_string(),
                b.state.to_owned(),
                if b.local { "yes" } else { "no" }.to_owned(),
                b.weight.to_string(),
            ]);
        }
        out.push_str(&t.render());
        let tr = &s.traffic;
        out.push_str(&format!(
            "  traffic: {} flows, {} pkts / {} B to backends, {} pkts / {} B back, {} drops\n\n",
            tr.new_flows, tr.fwd_packets, tr.fwd_bytes, tr.rev_packets, tr.rev_bytes, tr.drops
        ));
    }
    out
}

/// `xlb service list`.
pub fn list(maps: &Maps, output: Output) -> anyhow::Result<String> {
    let services = gather(maps)?;
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&services)? + "\n",
        Output::Table => render(&services),
    })
}
