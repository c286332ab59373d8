//! Kubernetes semantics: validated Services + EndpointSlices (+ this node) → `DesiredState`.
//!
//! One `LbService` per service port and backend set. Under `externalTrafficPolicy: Local` the
//! external frontends (NodePort, LoadBalancer, externalIPs) get their own node-local set, and
//! this node's pods reaching them are sent to the cluster-wide set through internal-scope entries
//! (kube-proxy's short-circuit). Under `internalTrafficPolicy: Local` the ClusterIP set is
//! node-local. Endpoint conditions follow ProxyTerminatingEndpoints.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::spec::{PortSpec, ServiceSpec, ServiceType, SliceSpec};
use crate::{
    model::{
        DesiredState, Endpoint, EndpointState, Frontend, FrontendKind, LbService, Protocol, Scope,
    },
    problem::Problem,
};

/// What the translation needs to know about this node and proxy.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    /// EndpointSlice `nodeName` of endpoints on this node.
    pub node_name: Option<String>,
    /// Addresses NodePorts are served on.
    pub node_ips: Vec<Ipv4Addr>,
    /// This proxy's name for the `service.kubernetes.io/service-proxy-name` label.
    pub proxy_name: Option<String>,
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
struct Candidate {
    addr: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    node: Option<String>,
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
    let mut by_addr: BTreeMap<(Ipv4Addr, u16), Candidate> = BTreeMap::new();
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

/// Translates validated objects into the desired state for this node.
pub fn translate(
    services: &[ServiceSpec],
    slices: &[SliceSpec],
    node: &NodeContext,
) -> Translation {
    let mut out = Translation::default();
    let mut slices_by_svc: HashMap<(&str, &str), Vec<&SliceSpec>> = HashMap::new();
    for s in slices {
        slices_by_svc
            .entry((s.namespace.as_str(), s.service.as_str()))
            .or_default()
            .push(s);
    }
    let mut ordered: Vec<&ServiceSpec> = services.iter().collect();
    ordered.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // Frontend → owning service name, to report conflicts deterministically (first name wins).
    let mut owners: HashMap<(Ipv4Addr, u16, Protocol, Scope), String> = HashMap::new();

    for svc in ordered {
        if svc.kind == ServiceType::Nothing || svc.proxy_name != node.proxy_name {
            continue;
        }
        let svc_slices = slices_by_svc
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .cloned()
            .unwrap_or_default();
        let mut health_local = 0usize;
        for port in &svc.ports {
            let base = format!(
                "{}/{}:{}/{}",
                svc.namespace,
                svc.name,
                port_label(port),
                port.proto
            );
            let cands = candidates(port, &svc_slices, node);
            let cluster = with_conditions(cands.iter());
            let local = with_conditions(cands.iter().filter(|c| c.local));
            health_local = health_local.max(
                local
                    .iter()
                    .filter(|e| e.state == EndpointState::Active)
                    .count(),
            );

            let fe = |addr, port_no, kind, scope, ranges| Frontend {
                addr,
                port: port_no,
                proto: port.proto,
                scope,
                kind,
                source_ranges: ranges,
            };
            let cluster_fes: Vec<Frontend> = svc
                .cluster_ips
                .iter()
                .map(|a| {
                    fe(
                        *a,
                        port.port,
                        FrontendKind::ClusterIp,
                        Scope::External,
                        false,
                    )
                })
                .collect();
            let mut external_fes = Vec::new();
            if let Some(np) = port.node_port
                && svc.kind != ServiceType::ClusterIp
            {
                for a in &node.node_ips {
                    external_fes.push(fe(*a, np, FrontendKind::NodePort, Scope::External, false));
                }
            }
            let ranges = !svc.source_ranges.is_empty();
            for a in &svc.lb_ips {
                external_fes.push(fe(
                    *a,
                    port.port,
                    FrontendKind::LoadBalancer,
                    Scope::External,
                    ranges,
                ));
            }
            for a in &svc.external_ips {
                external_fes.push(fe(
                    *a,
                    port.port,
                    FrontendKind::ExternalIp,
                    Scope::External,
                    false,
                ));
            }
            let internal_eps = if svc.int_local {
                local.clone()
            } else {
                cluster.clone()
            };
            let template =
                |name: String, frontends: Vec<Frontend>, endpoints, ext_local| LbService {
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
                    local.clone(),
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
                sets.push(template(base.clone(), all, internal_eps, false));
            }
            for mut set in sets {
                set.frontends.retain(|f| {
                    if f.proto == Protocol::Sctp
                        && let Some(ep) = set.endpoints.iter().find(|e| e.port != f.port)
                    {
                        out.problems.push(Problem::field(
                            &svc.object(),
                            format!("spec.ports[{}]", port_label(port)),
                            format!(
                                "SCTP frontend {f} would need its port rewritten to {} \
                                 (SCTP's CRC32c covers ports): not programmed; use \
                                 targetPort = port{}",
                                ep.port,
                                if f.kind == FrontendKind::NodePort {
                                    " and reach it through the ClusterIP"
                                } else {
                                    ""
                                }
                            ),
                        ));
                        return false;
                    }
                    let key = (f.addr, f.port, f.proto, f.scope);
                    match owners.get(&key) {
                        Some(owner) if *owner != set.name => {
                            out.problems.push(Problem::field(
                                &svc.object(),
                                format!("spec.ports[{}]", port_label(port)),
                                format!("frontend {f} is already used by {owner}: not programmed"),
                            ));
                            false
                        }
                        _ => {
                            owners.insert(key, set.name.clone());
                            true
                        }
                    }
                });
                let mut seen = BTreeSet::new();
                set.frontends.retain(|f| seen.insert(*f));
                if !set.frontends.is_empty() {
                    out.state.services.insert(set.name.clone(), set);
                }
            }
        }
        if svc.ext_local
            && let Some(hc) = svc.health_check_node_port
        {
            out.health_checks.insert(
                hc,
                HealthCheck {
                    service: format!("{}/{}", svc.namespace, svc.name),
                    local_endpoints: health_local,
                },
            );
        }
    }
    out
}
