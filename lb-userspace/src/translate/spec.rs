//! Validation of Kubernetes `Service` and `EndpointSlice` objects into checked, xlb-relevant
//! specs. Every rejection names the object and field. Used by the file source and the watcher.

use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{
    model::{Algorithm, IpNet, Protocol},
    problem::{Checked, Problem},
};

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label selecting which proxy implements a Service.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Annotation choosing the backend selection algorithm.
pub const ALGORITHM_ANNOTATION: &str = "xlb.io/lb-algorithm";
/// Default ClientIP affinity timeout (Kubernetes' default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// What a Service asks of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// ExternalName or headless: nothing to program.
    Nothing,
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name ("" when unnamed).
    pub name: String,
    pub port: u16,
    pub proto: Protocol,
    pub node_port: Option<u16>,
    /// Target port as written (number or name); endpoints carry the resolved number.
    pub target: TargetPort,
}

/// `targetPort` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A validated Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceType,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    pub external_ips: Vec<IpAddr>,
    pub lb_ips: Vec<IpAddr>,
    pub ext_local: bool,
    pub int_local: bool,
    /// ClientIP affinity timeout, if enabled.
    pub affinity: Option<u32>,
    pub source_ranges: Vec<IpNet>,
    pub algorithm: Algorithm,
    /// Value of the service-proxy-name label, if any.
    pub proxy_name: Option<String>,
    pub health_check_node_port: Option<u16>,
}

impl ServiceSpec {
    /// `Service ns/name`, as used in problems.
    pub fn object(&self) -> String {
        format!("Service {}/{}", self.namespace, self.name)
    }
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `hints.forZones`: the zones whose nodes should use this endpoint (topology-aware
    /// routing, set by the EndpointSlice controller for `trafficDistribution: PreferClose` /
    /// `PreferSameZone` or the topology-mode annotation).
    pub zone_hints: Vec<String>,
    /// `hints.forNodes` (`trafficDistribution: PreferSameNode`).
    pub node_hints: Vec<String>,
}

/// A validated EndpointSlice (IPv4 or IPv6; FQDN slices yield no endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to.
    pub service: String,
    /// (port name, protocol) → resolved port number.
    pub ports: Vec<(String, Protocol, u16)>,
    pub endpoints: Vec<EndpointSpec>,
}

fn port_u16(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

fn ip_list<'a>(
    values: impl IntoIterator<Item = &'a String>,
    object: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        match v.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) if a.to_ipv4_mapped().is_some() => problems.push(Problem::field(
                object,
                format!("{field}[{i}]"),
                format!("{v}: an IPv4-mapped IPv6 address is not a Service address"),
            )),
            Ok(a) => out.push(a),
            Err(_) => problems.push(Problem::field(
                object,
                format!("{field}[{i}]"),
                format!("{v:?} is not an IP address"),
            )),
        }
    }
    out
}

/// `spec.ipFamilies` (as the API server allocates clusterIPs: one per family, in that order)
/// must name every cluster IP's family; `ipFamilyPolicy: SingleStack` allows one.
fn ip_families_agree(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    cluster_ips: &[IpAddr],
    object: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    for (i, f) in families.iter().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            problems.push(Problem::field(
                object,
                format!("spec.ipFamilies[{i}]"),
                format!("{f:?} is not IPv4 or IPv6"),
            ));
        }
    }
    if !families.is_empty() {
        for (i, a) in cluster_ips.iter().enumerate() {
            let family = if a.is_ipv4() { "IPv4" } else { "IPv6" };
            if families.get(i).map(String::as_str) != Some(family) {
                problems.push(Problem::field(
                    object,
                    format!("{field}[{i}]"),
                    format!("{a} is {family} but spec.ipFamilies is {families:?}"),
                ));
            }
        }
    }
    if spec.ip_family_policy.as_deref() == Some("SingleStack") && cluster_ips.len() > 1 {
        problems.push(Problem::field(
            object,
            field,
            "ipFamilyPolicy SingleStack allows one cluster IP",
        ));
    }
}

/// Validates a Service. Returns the spec with the warnings about what it ignores, or every
/// problem found if it cannot be programmed as written.
pub fn service_spec(svc: &Service) -> Checked<ServiceSpec> {
    let meta = &svc.metadata;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = meta.name.clone().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push(Problem::field(&object, "metadata.name", "required"));
    }
    let Some(spec) = svc.spec.as_ref() else {
        problems.push(Problem::field(&object, "spec", "required"));
        return Err(problems);
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let mut kind = match type_ {
        "ClusterIP" => ServiceType::ClusterIp,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::Nothing,
        other => {
            problems.push(Problem::field(
                &object,
                "spec.type",
                format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
            ));
            ServiceType::Nothing
        }
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if headless {
        kind = ServiceType::Nothing;
    }
    let mut cluster_ip_strings: Vec<&String> = Vec::new();
    if !headless {
        match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => cluster_ip_strings.extend(ips.iter()),
            (_, Some(ip)) if !ip.is_empty() => cluster_ip_strings.push(ip),
            _ => {}
        }
    }
    let cluster_field = if spec.cluster_ips.as_ref().is_some_and(|v| !v.is_empty()) {
        "spec.clusterIPs"
    } else {
        "spec.clusterIP"
    };
    let cluster_ips = ip_list(cluster_ip_strings, &object, cluster_field, &mut problems);
    ip_families_agree(spec, &cluster_ips, &object, cluster_field, &mut problems);
    let external_ips = ip_list(
        spec.external_ips.iter().flatten(),
        &object,
        "spec.externalIPs",
        &mut problems,
    );
    let lb_ips: Vec<IpAddr> = if kind == ServiceType::LoadBalancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        // `ipMode: Proxy`: the load balancer proxies (to NodePorts or pods) rather than
        // delivering packets for its IP, so in-cluster traffic to that IP must reach it: not
        // programmed here (as kube-proxy).
        let ips: Vec<&String> = ingress
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_ref())
            .collect();
        ip_list(
            ips,
            &object,
            "status.loadBalancer.ingress[].ip",
            &mut problems,
        )
    } else {
        Vec::new()
    };

    let raw_ports = spec.ports.as_deref().unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, p) in raw_ports.iter().enumerate() {
        match service_port(i, p, kind, raw_ports.len() > 1, &mut seen, &object) {
            Ok(port) => ports.push(port),
            Err(e) => problems.push(e),
        }
    }

    // Files have no allocator: a ClusterIP Service must say its address.
    let any_cluster_ip = spec.cluster_ip.as_deref().is_some_and(|s| !s.is_empty())
        || spec.cluster_ips.iter().flatten().any(|s| !s.is_empty());
    if kind == ServiceType::ClusterIp && !any_cluster_ip && external_ips.is_empty() {
        problems.push(Problem::field(
            &object,
            "spec.clusterIP",
            "required (xlb does not allocate cluster IPs)",
        ));
    }

    let policy = |field: &str, value: &Option<String>, problems: &mut Vec<Problem>| -> bool {
        match value.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                problems.push(Problem::field(
                    &object,
                    field,
                    format!("{other:?} is not Cluster or Local"),
                ));
                false
            }
        }
    };
    let ext_local = policy(
        "spec.externalTrafficPolicy",
        &spec.external_traffic_policy,
        &mut problems,
    );
    let int_local = policy(
        "spec.internalTrafficPolicy",
        &spec.internal_traffic_policy,
        &mut problems,
    );

    let affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) if (1..=86_400).contains(&t) => Some(t as u32),
                Some(t) => {
                    problems.push(Problem::field(
                        &object,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("must be 1-86400, got {t}"),
                    ));
                    None
                }
            }
        }
        Some(other) => {
            problems.push(Problem::field(
                &object,
                "spec.sessionAffinity",
                format!("{other:?} is not None or ClientIP"),
            ));
            None
        }
    };

    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match IpNet::parse(r) {
            Some(n) => source_ranges.push(n),
            None => problems.push(Problem::field(
                &object,
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{r:?} is not a CIDR"),
            )),
        }
    }

    let annotations = meta.annotations.as_ref();
    let algorithm = match annotations.and_then(|a| a.get(ALGORITHM_ANNOTATION)) {
        None => Algorithm::default(),
        Some(v) => {
            if let Some(a) = Algorithm::parse(v) {
                a
            } else {
                problems.push(Problem::field(
                    &object,
                    format!("metadata.annotations[{ALGORITHM_ANNOTATION}]"),
                    format!("{v:?} is not maglev or random"),
                ));
                Algorithm::default()
            }
        }
    };
    let proxy_name = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(PROXY_NAME_LABEL))
        .cloned();
    let health_check_node_port = spec.health_check_node_port.and_then(port_u16);

    if problems.iter().any(Problem::is_error) {
        return Err(problems);
    }
    let spec = ServiceSpec {
        namespace,
        name,
        kind,
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        ext_local,
        int_local,
        affinity,
        source_ranges,
        algorithm,
        proxy_name,
        health_check_node_port,
    };
    Ok((spec, problems))
}

/// `spec.ports[i]` as a port of the Service, or the problem with it (`several`: the Service has
/// more than one port, so each needs a name; `seen`: the (port, protocol) pairs before it).
fn service_port(
    i: usize,
    p: &k8s_openapi::api::core::v1::ServicePort,
    kind: ServiceType,
    several: bool,
    seen: &mut BTreeSet<(u16, Protocol)>,
    object: &str,
) -> Result<PortSpec, Problem> {
    let f = |leaf: &str| format!("spec.ports[{i}].{leaf}");
    let Some(port) = port_u16(p.port) else {
        return Err(Problem::field(
            object,
            f("port"),
            format!("must be 1-65535, got {}", p.port),
        ));
    };
    let proto_s = p.protocol.as_deref().unwrap_or("TCP");
    let Some(proto) = Protocol::parse(proto_s) else {
        return Err(Problem::field(
            object,
            f("protocol"),
            format!("{proto_s:?} is not TCP, UDP or SCTP"),
        ));
    };
    let pname = p.name.clone().unwrap_or_default();
    if several && pname.is_empty() {
        return Err(Problem::field(
            object,
            f("name"),
            "required when a Service has more than one port",
        ));
    }
    if !seen.insert((port, proto)) {
        return Err(Problem::field(
            object,
            f("port"),
            format!("{port}/{proto} is listed twice"),
        ));
    }
    let node_port = match p.node_port {
        None | Some(0) => None,
        Some(n) => match port_u16(n) {
            Some(n) => Some(n),
            None => {
                return Err(Problem::field(
                    object,
                    f("nodePort"),
                    format!("must be 1-65535, got {n}"),
                ));
            }
        },
    };
    if kind == ServiceType::NodePort && node_port.is_none() {
        return Err(Problem::field(
            object,
            f("nodePort"),
            "required for type NodePort (xlb does not allocate node ports)",
        ));
    }
    // A number (also as a numeric string) must be a port; any other string names one.
    let number = match &p.target_port {
        None => None,
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => s.parse::<i32>().ok(),
    };
    let target = match (number, &p.target_port) {
        (Some(n), _) => TargetPort::Number(port_u16(n).ok_or_else(|| {
            Problem::field(object, f("targetPort"), format!("must be 1-65535, got {n}"))
        })?),
        (None, Some(IntOrString::String(s))) if !s.is_empty() => TargetPort::Name(s.clone()),
        (None, _) => TargetPort::Number(port),
    };
    Ok(PortSpec {
        name: pname,
        port,
        proto,
        node_port,
        target,
    })
}

/// Validates an EndpointSlice.
pub fn slice_spec(slice: &EndpointSlice) -> Checked<SliceSpec> {
    let meta = &slice.metadata;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = meta.name.clone().unwrap_or_default();
    let object = format!("EndpointSlice {namespace}/{name}");
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push(Problem::field(&object, "metadata.name", "required"));
    }
    let service = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .unwrap_or_default();
    if service.is_empty() {
        problems.push(Problem::field(
            &object,
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "required: names the Service this slice belongs to",
        ));
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => {
            problems.push(
                Problem::field(
                    &object,
                    "addressType",
                    "FQDN endpoints are not served (no proxy resolves names); ignored",
                )
                .warning(),
            );
            None
        }
        other => {
            problems.push(Problem::field(
                &object,
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            ));
            None
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let proto_s = p.protocol.as_deref().unwrap_or("TCP");
        let Some(proto) = Protocol::parse(proto_s) else {
            problems.push(Problem::field(
                &object,
                format!("ports[{i}].protocol"),
                format!("{proto_s:?} is not TCP, UDP or SCTP"),
            ));
            continue;
        };
        let Some(port) = p.port.and_then(port_u16) else {
            problems.push(Problem::field(
                &object,
                format!("ports[{i}].port"),
                format!("must be 1-65535, got {:?}", p.port),
            ));
            continue;
        };
        ports.push((p.name.clone().unwrap_or_default(), proto, port));
    }
    let mut endpoints = Vec::new();
    if let Some(want_v4) = family {
        for (i, ep) in slice.endpoints.iter().enumerate() {
            // Consumers use the first address (EndpointSlice API contract).
            let Some(first) = ep.addresses.first() else {
                problems.push(Problem::field(
                    &object,
                    format!("endpoints[{i}].addresses"),
                    "must hold at least one address",
                ));
                continue;
            };
            let addr = match first.parse::<IpAddr>() {
                Ok(a) if a.is_ipv4() == want_v4 => a,
                _ => {
                    problems.push(Problem::field(
                        &object,
                        format!("endpoints[{i}].addresses[0]"),
                        format!("{first:?} is not an {} address", slice.address_type),
                    ));
                    continue;
                }
            };
            let c = ep.conditions.clone().unwrap_or_default();
            // Unknown readiness counts as ready; serving defaults to ready (API contract).
            let ready = c.ready.unwrap_or(true);
            endpoints.push(EndpointSpec {
                addr,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                zone_hints: ep
                    .hints
                    .iter()
                    .flat_map(|h| h.for_zones.iter().flatten())
                    .map(|z| z.name.clone())
                    .collect(),
                node_hints: ep
                    .hints
                    .iter()
                    .flat_map(|h| h.for_nodes.iter().flatten())
                    .map(|n| n.name.clone())
                    .collect(),
            });
        }
    }
    if problems.iter().any(Problem::is_error) {
        return Err(problems);
    }
    let spec = SliceSpec {
        namespace,
        name,
        service,
        ports,
        endpoints,
    };
    Ok((spec, problems))
}

/// A compact-format entry (`source::compact`): the service, and its backends' health check if
/// it has one (`probe`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compact {
    pub service: crate::model::LbService,
    pub health: Option<crate::probe::Check>,
}
