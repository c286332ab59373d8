//! Kubernetes manifests for tests, as YAML text.

use std::net::{IpAddr, Ipv4Addr};

/// One service port: (name, port, protocol, targetPort as written).
pub struct Port<'a> {
    pub name: &'a str,
    pub port: u16,
    pub proto: &'a str,
    pub target: &'a str,
    pub node_port: Option<u16>,
}

impl Port<'static> {
    /// `http`: TCP 80 → 8080, the tests' TCP servers.
    pub const HTTP: Self = Self {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    };
    /// `dns`: UDP 53 → 5353, the tests' UDP servers.
    pub const DNS: Self = Self {
        name: "dns",
        port: 53,
        proto: "UDP",
        target: "5353",
        node_port: None,
    };
}

/// A `v1/Service`.
pub fn service(name: &str, cluster_ip: Ipv4Addr, ports: &[Port<'_>], extra_spec: &str) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n"
    );
    for p in ports {
        s.push_str(&format!(
            "  - name: {}\n    port: {}\n    protocol: {}\n    targetPort: {}\n",
            p.name, p.port, p.proto, p.target
        ));
        if let Some(np) = p.node_port {
            s.push_str(&format!("    nodePort: {np}\n"));
        }
    }
    s.push_str(extra_spec);
    s
}

/// An endpoint: address, ready, serving, terminating, node name.
pub struct Ep<'a> {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: &'a str,
}

impl<'a> Ep<'a> {
    /// A ready endpoint on `node`.
    pub fn ready(addr: impl Into<IpAddr>, node: &'a str) -> Self {
        Self {
            addr: addr.into(),
            ready: true,
            serving: true,
            terminating: false,
            node,
        }
    }
}

/// A `discovery.k8s.io/v1/EndpointSlice` for `service` with ports (name, port, protocol); its
/// `addressType` is the family of the first endpoint (IPv4 when there is none).
pub fn slice(name: &str, service: &str, ports: &[(&str, u16, &str)], eps: &[Ep<'_>]) -> String {
    let family = if eps.first().is_some_and(|e| e.addr.is_ipv6()) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nports:\n"
    );
    for (n, p, proto) in ports {
        s.push_str(&format!("- name: {n}\n  port: {p}\n  protocol: {proto}\n"));
    }
    s.push_str("endpoints:\n");
    for e in eps {
        s.push_str(&format!(
            "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n",
            e.addr, e.node, e.ready, e.serving, e.terminating
        ));
    }
    if eps.is_empty() {
        s = s.replace("endpoints:\n", "endpoints: []\n");
    }
    s
}

/// The `spec` lines that make a `service` dual-stack: `clusterIPs` (its `clusterIP` first, then
/// `ipv6`), `ipFamilies` in that order, `RequireDualStack`.
pub fn dual_stack_spec(cluster_ip: Ipv4Addr, ipv6: std::net::Ipv6Addr) -> String {
    format!(
        "  clusterIPs: [\"{cluster_ip}\", \"{ipv6}\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n"
    )
}

/// Joins documents into one multi-document YAML text.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}
