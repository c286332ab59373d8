//! Test topologies: a "node" namespace with "pod" namespaces attached by veth pairs
//! (Calico-style /32 routes, pods route everything via 169.254.1.1 on their veth), and
//! uplinks between nodes and external clients.

use std::net::Ipv4Addr;

use crate::netns::Netns;

/// Gateway address every pod routes through (assigned to each node-side veth).
pub const POD_GATEWAY: &str = "169.254.1.1";

/// A pod: its namespace, address and the node-side device name.
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub host_if: String,
}

/// A node namespace and its pods.
pub struct Node {
    pub ns: Netns,
    /// Kubernetes node name.
    pub name: String,
    /// Third octet of this node's pod addresses (10.244.<subnet>.x).
    pub subnet: u8,
    pub pods: Vec<Pod>,
    tag: String,
}

impl Node {
    /// A node namespace named `xlbt-<tag>-<name>` with forwarding on.
    pub fn new(tag: &str, name: &str, subnet: u8) -> Self {
        let ns = Netns::new(&format!("xlbt-{tag}-{name}"));
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
        Self {
            ns,
            name: name.to_owned(),
            subnet,
            pods: Vec::new(),
            tag: tag.to_owned(),
        }
    }

    /// Adds pod number `idx` (address 10.244.<subnet>.<10+idx>, node device `xp<idx>`).
    pub fn add_pod(&mut self, idx: u8) -> &Pod {
        let ip = Ipv4Addr::new(10, 244, self.subnet, 10 + idx);
        let ns = Netns::new(&format!("xlbt-{}-{}-p{idx}", self.tag, self.name));
        let host_if = format!("xp{idx}");
        self.ns.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.ns
            .ip(&["addr", "add", &format!("{POD_GATEWAY}/32"), "dev", &host_if]);
        self.ns.ip(&["link", "set", &host_if, "up"]);
        self.ns
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"]);
        // Short-connection tests must not stall on TIME_WAIT collisions.
        ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
        self.pods.push(Pod { ns, ip, host_if });
        self.pods.last().expect("just pushed")
    }
}
