//! Kubernetes semantics: validated Services + EndpointSlices (+ this node) → `DesiredState`.
//!
//! One `LbService` per service port and backend set. Under `externalTrafficPolicy: Local` the
//! external frontends (NodePort, LoadBalancer, externalIPs) get their own node-local set, and
//! this node's pods reaching them are sent to the cluster-wide set through internal-scope entries
//! (kube-proxy's short-circuit). Under `internalTrafficPolicy: Local` the ClusterIP set is
//! node-local. Endpoint conditions follow ProxyTerminatingEndpoints.
//!
//! `Translator` keeps the result per Service and re-translates only the Services whose
//! objects changed, so one EndpointSlice update costs one Service's work however many
//! Services exist. A frontend claimed by two services goes to the first by name; the other
//! is reported.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::spec::{Compact, PortSpec, ServiceSpec, ServiceType, SliceSpec};
use crate::{
    model::{
        DesiredState, Endpoint, EndpointState, Frontend, FrontendKind, LbService, Protocol, Scope,
    },
    probe,
    problem::Problem,
};

/// What the translation needs to know about this node and proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// EndpointSlice `nodeName` of endpoints on this node.
    pub node_name: Option<String>,
    /// Addresses NodePorts are served on.
    pub node_ips: Vec<IpAddr>,
    /// This proxy's name for the `service.kubernetes.io/service-proxy-name` label.
    pub proxy_name: Option<String>,
    /// This node's `topology.kubernetes.io/zone` (topology-aware routing).
    pub zone: Option<String>,
    /// CIDRs externalIPs may be in (`--external-ip-cidrs`; `None`: any, as kube-proxy).
    pub external_ip_cidrs: Option<Vec<crate::model::IpNet>>,
}

/// A healthCheckNodePort to serve (externalTrafficPolicy Local).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `namespace/name`.
    pub service: String,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// The full result of a translation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    pub state: DesiredState,
    /// healthCheckNodePort → what it reports.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// Cross-object problems (conflicting frontends, unsupported combinations).
    pub problems: Vec<Problem>,
}

fn port_label(p: &PortSpec) -> String {
    if p.name.is_empty() {
        p.port.to_string()
    } else {
        p.name.clone()
    }
}

/// An endpoint of one service port, before policy filtering.
#[derive(Clone)]
struct Candidate {
    addr: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    node: Option<String>,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// Which endpoints new cluster-wide flows of this node may use, from the slices' hints
/// (topology-aware routing, as kube-proxy decides it): only when every ready endpoint carries
/// hints of that kind and at least one is meant for this node (or its zone); else all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every endpoint.
    Any,
    /// Endpoints hinted for this node (`hints.forNodes`, `PreferSameNode`).
    Node,
    /// Endpoints hinted for this node's zone (`hints.forZones`).
    Zone,
}

fn topology(cands: &[Candidate], node: &NodeContext) -> Topology {
    let ready: Vec<&Candidate> = cands.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let hinted = |hints: fn(&Candidate) -> &Vec<String>, mine: &Option<String>| {
        mine.as_ref().is_some_and(|m| {
            ready.iter().all(|c| !hints(c).is_empty()) && ready.iter().any(|c| hints(c).contains(m))
        })
    };
    if hinted(|c| &c.node_hints, &node.node_name) {
        Topology::Node
    } else if hinted(|c| &c.zone_hints, &node.zone) {
        Topology::Zone
    } else {
        Topology::Any
    }
}

/// The candidates as seen by this node's cluster-wide flows: those the topology leaves out
/// count as not ready (kept for established flows, given no new ones).
fn for_topology(cands: &[Candidate], node: &NodeContext) -> Vec<Candidate> {
    let mode = topology(cands, node);
    cands
        .iter()
        .map(|c| {
            let mine = match mode {
                Topology::Any => true,
                Topology::Node => node
                    .node_name
                    .as_ref()
                    .is_some_and(|n| c.node_hints.contains(n)),
                Topology::Zone => node.zone.as_ref().is_some_and(|z| c.zone_hints.contains(z)),
            };
            let mut c = c.clone();
            if !mine {
                c.ready = false;
                c.serving = false;
            }
            c
        })
        .collect()
}

/// Applies readiness rules to a subset: ready endpoints serve; when none is ready,
/// serving-and-terminating ones do; the rest are kept only for established flows.
fn with_conditions<'a>(subset: impl Iterator<Item = &'a Candidate> + Clone) -> Vec<Endpoint> {
    let any_ready = subset.clone().any(|c| c.ready);
    let mut out: Vec<Endpoint> = subset
        .map(|c| {
            let active = if any_ready {
                c.ready
            } else {
                c.serving && c.terminating
            };
            let state = if active {
                EndpointState::Active
            } else if c.terminating {
                EndpointState::Terminating
            } else {
                EndpointState::NotReady
            };
            Endpoint {
                addr: c.addr,
                port: c.port,
                weight: 1,
                local: c.local,
                state,
                node: c.node.clone(),
            }
        })
        .collect();
    out.sort();
    out
}

/// Endpoints of one service port across all slices of the service (deduplicated by addr:port,
/// the readiest copy wins).
fn candidates(port: &PortSpec, slices: &[&SliceSpec], node: &NodeContext) -> Vec<Candidate> {
    let mut by_addr: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        // The slice's port with the Service port's name carries the resolved target port.
        let Some(&(_, _, num)) = slice
            .ports
            .iter()
            .find(|(n, p, _)| *n == port.name && *p == port.proto)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let local = node.node_name.is_some() && ep.node_name == node.node_name;
            let c = Candidate {
                addr: ep.addr,
                port: num,
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                local,
                node: ep.node_name.clone(),
                zone_hints: ep.zone_hints.clone(),
                node_hints: ep.node_hints.clone(),
            };
            let better = |old: &Candidate| (c.ready, c.serving) > (old.ready, old.serving);
            match by_addr.get(&(c.addr, c.port)) {
                Some(old) if !better(old) => {}
                _ => {
                    by_addr.insert((c.addr, c.port), c);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// Raw translation of one Service: its backend sets before frontend conflicts are resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Raw {
    sets: Vec<LbService>,
    problems: Vec<Problem>,
    health: Option<(u16, HealthCheck)>,
}

fn sctp_problem(svc: &ServiceSpec, port: &PortSpec, f: &Frontend, ep_port: u16) -> Problem {
    Problem::field(
        &svc.object(),
        format!("spec.ports[{}]", port_label(port)),
        format!(
            "SCTP frontend {f} would need its port rewritten to {ep_port} (SCTP's CRC32c \
             covers ports): not programmed; use targetPort = port{}",
            if f.kind == FrontendKind::NodePort {
                " and reach it through the ClusterIP"
            } else {
                ""
            }
        ),
    )
}

/// Translates one Service with its slices (no cross-service checks).
fn translate_service(svc: &ServiceSpec, slices: &[&SliceSpec], node: &NodeContext) -> Raw {
    let mut raw = Raw::default();
    if svc.kind == ServiceType::Nothing || svc.proxy_name != node.proxy_name {
        return raw;
    }
    let mut health_local = 0usize;
    for port in &svc.ports {
        let base = format!(
            "{}/{}:{}/{}",
            svc.namespace,
            svc.name,
            port_label(port),
            port.proto
        );
        let cands = candidates(port, slices, node);
        let cluster = with_conditions(for_topology(&cands, node).iter());
        let local = with_conditions(cands.iter().filter(|c| c.local));
        health_local = health_local.max(
            local
                .iter()
                .filter(|e| e.state == EndpointState::Active)
                .count(),
        );
        let fe = |addr, port_no, kind, ranges| Frontend {
            addr,
            port: port_no,
            proto: port.proto,
            scope: Scope::External,
            kind,
            source_ranges: ranges,
        };
        let cluster_fes: Vec<Frontend> = svc
            .cluster_ips
            .iter()
            .map(|a| fe(*a, port.port, FrontendKind::ClusterIp, false))
            .collect();
        let mut external_fes = Vec::new();
        // As kube-proxy (one proxier per family): a Service is served in the families of its
        // cluster IPs only, NodePorts on node addresses of those families.
        let has_family = |a: &IpAddr| svc.cluster_ips.iter().any(|c| c.is_ipv4() == a.is_ipv4());
        if let Some(np) = port.node_port
            && svc.kind != ServiceType::ClusterIp
        {
            for a in node.node_ips.iter().filter(|a| has_family(a)) {
                external_fes.push(fe(*a, np, FrontendKind::NodePort, false));
            }
        }
        let other_family = |field: &str, a: &IpAddr| {
            Problem::field(
                &svc.object(),
                field,
                format!("{a}: the Service has no cluster IP of its family: not programmed"),
            )
            .warning()
        };
        let ranges = !svc.source_ranges.is_empty();
        for a in &svc.lb_ips {
            if !has_family(a) {
                push_once(
                    &mut raw.problems,
                    other_family("status.loadBalancer.ingress", a),
                );
                continue;
            }
            external_fes.push(fe(*a, port.port, FrontendKind::LoadBalancer, ranges));
        }
        for a in &svc.external_ips {
            if !has_family(a) {
                push_once(&mut raw.problems, other_family("spec.externalIPs", a));
                continue;
            }
            if let Some(allowed) = &node.external_ip_cidrs
                && !allowed.iter().any(|n| n.contains(*a))
            {
                // CVE-2020-8554: whoever can create Services could take over any address.
                let p = Problem::field(
                    &svc.object(),
                    "spec.externalIPs",
                    format!("{a} is outside --external-ip-cidrs: not programmed"),
                )
                .warning();
                push_once(&mut raw.problems, p);
                continue;
            }
            external_fes.push(fe(*a, port.port, FrontendKind::ExternalIp, false));
        }
        let internal_eps = if svc.int_local {
            local.clone()
        } else {
            cluster.clone()
        };
        let template = |name: String, frontends: Vec<Frontend>, endpoints, ext_local| LbService {
            name,
            frontends,
            endpoints,
            algorithm: svc.algorithm,
            affinity_timeout: svc.affinity.unwrap_or(0),
            source_ranges: svc.source_ranges.clone(),
            ext_local,
        };
        let mut sets = Vec::new();
        if svc.ext_local && !external_fes.is_empty() {
            // This node's pods reaching an external frontend use the cluster-wide set.
            let mut main = cluster_fes.clone();
            main.extend(external_fes.iter().map(|f| Frontend {
                scope: Scope::Internal,
                ..*f
            }));
            sets.push(template(base.clone(), main, internal_eps, false));
            sets.push(template(
                format!("{base} (local)"),
                external_fes,
                local,
                true,
            ));
        } else if svc.int_local && !external_fes.is_empty() {
            sets.push(template(base.clone(), cluster_fes, internal_eps, false));
            sets.push(template(
                format!("{base} (external)"),
                external_fes,
                cluster,
                false,
            ));
        } else {
            let mut all = cluster_fes;
            all.extend(external_fes);
            sets.push(template(base, all, internal_eps, false));
        }
        for mut set in sets {
            let mut seen = BTreeSet::new();
            set.frontends.retain(|f| {
                if f.proto == Protocol::Sctp
                    && let Some(ep) = set.endpoints.iter().find(|e| e.port != f.port)
                {
                    raw.problems.push(sctp_problem(svc, port, f, ep.port));
                    return false;
                }
                seen.insert(*f)
            });
            if !set.frontends.is_empty() {
                raw.sets.extend(by_family(set));
            }
        }
    }
    if svc.ext_local
        && let Some(hc) = svc.health_check_node_port
    {
        raw.health = Some((
            hc,
            HealthCheck {
                service: format!("{}/{}", svc.namespace, svc.name),
                local_endpoints: health_local,
            },
        ));
    }
    raw
}

/// Adds `p` unless it is there (one per object and field, not one per port).
fn push_once(problems: &mut Vec<Problem>, p: Problem) {
    if !problems.contains(&p) {
        problems.push(p);
    }
}

/// A backend set's frontends and endpoints of one address family each: a set with frontends
/// of both (a dual-stack Service) becomes two, each with its own service id and table.
/// The family of the first frontend (a Service's primary family: `clusterIPs[0]`, which
/// Kubernetes never changes) keeps the set's name, the other is `… (IPv6)` / `… (IPv4)`: a
/// Service that turns dual-stack keeps its primary half's identity, flows and counters.
/// Endpoints reach only the frontends of their family, and source ranges apply to the clients
/// of theirs.
pub fn by_family(set: LbService) -> Vec<LbService> {
    let keep = |mut s: LbService, v6: bool| {
        s.frontends.retain(|f| f.addr.is_ipv6() == v6);
        s.endpoints.retain(|e| e.addr.is_ipv6() == v6);
        s.source_ranges.retain(|n| n.is_ipv4() != v6);
        s
    };
    let has = |v6: bool| set.frontends.iter().any(|f| f.addr.is_ipv6() == v6);
    let (v4, v6) = (has(false), has(true));
    if !v4 && !v6 {
        return Vec::new();
    }
    if !(v4 && v6) {
        return vec![keep(set, v6)];
    }
    let primary_v6 = set.frontends.first().is_some_and(|f| f.addr.is_ipv6());
    let mut secondary = keep(set.clone(), !primary_v6);
    secondary.name = format!(
        "{} ({})",
        set.name,
        if primary_v6 { "IPv4" } else { "IPv6" }
    );
    vec![keep(set, primary_v6), secondary]
}

/// Who defined a set of backend sets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A Kubernetes Service (namespace, name).
    Service(String, String),
    /// A compact-format service (name).
    Compact(String),
}

/// A frontend key as conflicts see it.
type FeKey = (IpAddr, u16, Protocol, Scope);

fn fe_key(f: &Frontend) -> FeKey {
    (f.addr, f.port, f.proto, f.scope)
}

/// Incremental translation: objects in, changed backend sets out.
#[derive(Debug, Default)]
pub struct Translator {
    node: NodeContext,
    services: HashMap<(String, String), ServiceSpec>,
    /// Slices by (namespace, service) then slice name.
    slices: HashMap<(String, String), BTreeMap<String, SliceSpec>>,
    /// (namespace, slice name) → the service its label names.
    slice_owner: HashMap<(String, String), String>,
    compact: HashMap<String, Compact>,
    /// Backends of compact services their health check found unhealthy: left out.
    unhealthy: HashSet<probe::Key>,
    raw: HashMap<Origin, Raw>,
    /// Backend-set name → its origin.
    origin_of: HashMap<String, Origin>,
    /// Frontend → every backend set claiming it; the first by name owns it.
    claims: HashMap<FeKey, BTreeSet<String>>,
    /// The resolved state.
    desired: DesiredState,
    conflicts: HashMap<String, Vec<Problem>>,
    dirty: BTreeSet<Origin>,
    /// Where each object is defined (`file:line`), by its display name (`Service ns/name`,
    /// `service name`), when its source knows: conflicts name both places.
    locations: HashMap<String, String>,
}

impl Translator {
    /// An empty translator for this node.
    pub fn new(node: NodeContext) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    /// Records where an object (by display name) is defined, or forgets it.
    pub fn set_location(&mut self, object: String, location: Option<String>) {
        match location {
            Some(l) => {
                self.locations.insert(object, l);
            }
            None => {
                self.locations.remove(&object);
            }
        }
    }

    /// Changes the node context (every Service is translated again on the next flush).
    pub fn set_node(&mut self, node: NodeContext) {
        if node != self.node {
            self.node = node;
            self.dirty.extend(self.raw.keys().cloned());
            for k in self.services.keys() {
                self.dirty.insert(Origin::Service(k.0.clone(), k.1.clone()));
            }
        }
    }

    /// The node context in use.
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, spec: ServiceSpec) {
        let key = (spec.namespace.clone(), spec.name.clone());
        if self.services.get(&key) != Some(&spec) {
            self.dirty
                .insert(Origin::Service(key.0.clone(), key.1.clone()));
            self.services.insert(key, spec);
        }
    }

    /// Removes a Service.
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if self.services.remove(&key).is_some() {
            self.dirty.insert(Origin::Service(key.0, key.1));
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn upsert_slice(&mut self, spec: SliceSpec) {
        let skey = (spec.namespace.clone(), spec.name.clone());
        if let Some(prev) = self.slice_owner.get(&skey).cloned()
            && prev != spec.service
        {
            self.remove_slice(&skey.0, &skey.1);
        }
        let svc = (spec.namespace.clone(), spec.service.clone());
        let slot = self.slices.entry(svc.clone()).or_default();
        if slot.get(&spec.name) != Some(&spec) {
            self.slice_owner.insert(skey, spec.service.clone());
            slot.insert(spec.name.clone(), spec);
            self.dirty.insert(Origin::Service(svc.0, svc.1));
        }
    }

    /// Removes an EndpointSlice.
    pub fn remove_slice(&mut self, namespace: &str, name: &str) {
        let skey = (namespace.to_owned(), name.to_owned());
        if let Some(service) = self.slice_owner.remove(&skey) {
            let svc = (namespace.to_owned(), service);
            if let Some(slot) = self.slices.get_mut(&svc) {
                slot.remove(name);
                if slot.is_empty() {
                    self.slices.remove(&svc);
                }
            }
            self.dirty.insert(Origin::Service(svc.0, svc.1));
        }
    }

    /// Adds or replaces a compact-format service.
    pub fn upsert_compact(&mut self, c: Compact) {
        let name = c.service.name.clone();
        if self.compact.get(&name) != Some(&c) {
            // (Health states stay until the prober stops the backend's probe: `set_healthy`.)
            self.dirty.insert(Origin::Compact(name.clone()));
            self.compact.insert(name, c);
        }
    }

    /// Removes a compact-format service.
    pub fn remove_compact(&mut self, name: &str) {
        if self.compact.remove(name).is_some() {
            self.dirty.insert(Origin::Compact(name.to_owned()));
        }
    }

    /// Every backend a health check probes (compact services with `healthCheck`).
    pub fn probe_targets(&self) -> Vec<probe::Target> {
        let mut out = Vec::new();
        for c in self.compact.values() {
            let Some(check) = &c.health else { continue };
            out.extend(c.service.endpoints.iter().map(|e| probe::Target {
                service: c.service.name.clone(),
                addr: e.addr,
                port: e.port,
                check: check.clone(),
            }));
        }
        out
    }

    /// Records a backend's health; true if that changes its service (flush to apply).
    pub fn set_healthy(&mut self, key: &probe::Key, healthy: bool) -> bool {
        let changed = if healthy {
            self.unhealthy.remove(key)
        } else {
            self.compact.contains_key(&key.0) && self.unhealthy.insert(key.clone())
        };
        if changed {
            self.dirty.insert(Origin::Compact(key.0.clone()));
        }
        changed
    }

    /// The backends left out as unhealthy.
    pub fn unhealthy(&self) -> &HashSet<probe::Key> {
        &self.unhealthy
    }

    fn raw_of(&self, origin: &Origin) -> Raw {
        match origin {
            Origin::Service(ns, name) => {
                let Some(spec) = self.services.get(&(ns.clone(), name.clone())) else {
                    return Raw::default();
                };
                let slices: Vec<&SliceSpec> = self
                    .slices
                    .get(&(ns.clone(), name.clone()))
                    .map(|m| m.values().collect())
                    .unwrap_or_default();
                translate_service(spec, &slices, &self.node)
            }
            Origin::Compact(name) => Raw {
                sets: self
                    .compact
                    .get(name)
                    .map(|c| {
                        let mut s = c.service.clone();
                        s.endpoints
                            .retain(|e| !self.unhealthy.contains(&(name.clone(), e.addr, e.port)));
                        s
                    })
                    .into_iter()
                    .flat_map(by_family)
                    .collect(),
                ..Raw::default()
            },
        }
    }

    /// Re-translates what changed. Returns the names of backend sets whose desired entry
    /// changed (added, updated or removed).
    pub fn flush(&mut self) -> BTreeSet<String> {
        let mut touched_names: BTreeSet<String> = BTreeSet::new();
        let mut touched_keys: HashSet<FeKey> = HashSet::new();
        for origin in std::mem::take(&mut self.dirty) {
            let new = self.raw_of(&origin);
            let old = self.raw.remove(&origin).unwrap_or_default();
            if new == old {
                if !old.sets.is_empty() || !old.problems.is_empty() || old.health.is_some() {
                    self.raw.insert(origin, old);
                }
                continue;
            }
            for set in &old.sets {
                touched_names.insert(set.name.clone());
                self.origin_of.remove(&set.name);
                for f in &set.frontends {
                    let k = fe_key(f);
                    touched_keys.insert(k);
                    if let Some(c) = self.claims.get_mut(&k) {
                        c.remove(&set.name);
                        if c.is_empty() {
                            self.claims.remove(&k);
                        }
                    }
                }
            }
            for set in &new.sets {
                touched_names.insert(set.name.clone());
                self.origin_of.insert(set.name.clone(), origin.clone());
                for f in &set.frontends {
                    let k = fe_key(f);
                    touched_keys.insert(k);
                    self.claims.entry(k).or_default().insert(set.name.clone());
                }
            }
            self.raw.insert(origin, new);
        }
        // Every claimant of a touched frontend may gain or lose it.
        for k in &touched_keys {
            if let Some(c) = self.claims.get(k) {
                touched_names.extend(c.iter().cloned());
            }
        }
        let mut changed = BTreeSet::new();
        for name in touched_names {
            let resolved = self.resolve(&name);
            let current = self.desired.services.get(&name);
            if resolved.as_ref() != current {
                match resolved {
                    Some(s) => {
                        self.desired.services.insert(name.clone(), s);
                    }
                    None => {
                        self.desired.services.remove(&name);
                    }
                }
                changed.insert(name);
            }
        }
        changed
    }

    /// A backend set with only the frontends it owns; `None` if it has none.
    fn resolve(&mut self, name: &str) -> Option<LbService> {
        self.conflicts.remove(name);
        let origin = self.origin_of.get(name)?;
        let raw = self.raw.get(origin)?;
        let mut set = raw.sets.iter().find(|s| s.name == name)?.clone();
        let display = |o: &Origin| match o {
            Origin::Service(ns, n) => format!("Service {ns}/{n}"),
            Origin::Compact(n) => format!("service {n}"),
        };
        let object = display(origin);
        let mut lost = Vec::new();
        set.frontends.retain(|f| {
            let owner = self
                .claims
                .get(&fe_key(f))
                .and_then(|c| c.iter().next())
                .cloned()
                .unwrap_or_default();
            if owner == name {
                return true;
            }
            let owner_at = self
                .origin_of
                .get(&owner)
                .and_then(|o| self.locations.get(&display(o)))
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            let mut p = Problem::field(
                &object,
                "",
                format!("frontend {f} is already used by {owner}{owner_at}: not programmed"),
            );
            if let Some(l) = self.locations.get(&object) {
                p.origin = l.clone();
            }
            lost.push(p);
            false
        });
        if !lost.is_empty() {
            self.conflicts.insert(name.to_owned(), lost);
        }
        (!set.frontends.is_empty()).then_some(set)
    }

    /// The resolved desired state.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Every translation problem (SCTP port rewrites, frontend conflicts), sorted.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self
            .raw
            .values()
            .flat_map(|r| r.problems.iter().cloned())
            .chain(self.conflicts.values().flatten().cloned())
            .collect();
        out.sort_by(|a, b| {
            (&a.object, &a.field, &a.message).cmp(&(&b.object, &b.field, &b.message))
        });
        out
    }

    /// healthCheckNodePorts to serve.
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        self.raw.values().filter_map(|r| r.health.clone()).collect()
    }
}

/// Translates validated objects into the desired state for this node (all at once).
pub fn translate(
    services: &[ServiceSpec],
    slices: &[SliceSpec],
    node: &NodeContext,
) -> Translation {
    let mut t = Translator::new(node.clone());
    for s in services {
        t.upsert_service(s.clone());
    }
    for s in slices {
        t.upsert_slice(s.clone());
    }
    t.flush();
    Translation {
        state: t.desired().clone(),
        health_checks: t.health_checks(),
        problems: t.problems(),
    }
}
