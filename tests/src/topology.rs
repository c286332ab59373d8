//! Test topologies: a "node" namespace with "pod" namespaces attached by veth pairs
//! (Calico-style /32 routes, pods route everything via 169.254.1.1 on their veth), and
//! uplinks between nodes and external clients. `Node::dual_stack` adds IPv6 the same way
//! (/128 routes, pods route via `fe80::1`).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

/// Gateway address every pod routes through (assigned to each node-side veth).
pub const POD_GATEWAY: &str = "169.254.1.1";

/// IPv6 gateway of every pod (on each node-side veth, as `POD_GATEWAY`).
pub const POD_GATEWAY6: &str = "fe80::1";

/// A pod: its namespace, addresses and the node-side device name.
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// `fd00:10:244:<subnet>::<10+idx>`, configured by `Node::dual_stack`.
    pub ip6: Ipv6Addr,
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
        // Full checksums from this pod: its packets may meet XDP on another node's uplink
        // (real NICs deliver full checksums; veth from a local socket does not).
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        let ip6 = Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            self.subnet.into(),
            0,
            0,
            0,
            10 + u16::from(idx),
        );
        self.pods.push(Pod {
            ns,
            ip,
            ip6,
            host_if,
        });
        self.pods.last().expect("just pushed")
    }

    /// The node's own IPv6 address (on `lo`, once `dual_stack` ran):
    /// `fd00:10:100::<subnet>`.
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x100, 0, 0, 0, 0, self.subnet.into())
    }

    /// Gives the node (`ip6`) and its pods (`Pod::ip6`) IPv6 addresses and routes, forwarding
    /// on. Call after the pods are added.
    pub fn dual_stack(&self) {
        self.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        self.ns.ip(&["link", "set", "lo", "up"]);
        self.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", self.ip6()),
            "dev",
            "lo",
        ]);
        for pod in &self.pods {
            let gw = format!("{POD_GATEWAY6}/64");
            self.ns
                .ip(&["-6", "addr", "add", &gw, "dev", &pod.host_if, "nodad"]);
            self.ns.ip(&[
                "-6",
                "route",
                "add",
                &format!("{}/128", pod.ip6),
                "dev",
                &pod.host_if,
            ]);
            pod.ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/128", pod.ip6),
                "dev",
                "eth0",
                "nodad",
            ]);
            pod.ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                POD_GATEWAY6,
                "dev",
                "eth0",
            ]);
        }
    }
}

/// IPv6 address of node `i` (0-based) on the shared segment (`Cluster::dual_stack`).
pub fn node_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x100, 0, 0, 0, 1 + i as u16)
}

/// IPv6 address of external client `c` (`Cluster::dual_stack`).
pub fn client_ip6(c: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x100, 0, 0, 0, 0x100 + c as u16)
}

/// Address of node `i` (0-based) on the shared segment.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 1 + i as u8)
}

/// Several nodes and external clients on one L2 segment (a bridge in its own namespace).
/// Node `i` has uplink `eth0` at `node_ip(i)` and pods in 10.244.<i+1>.0/24, routed from every
/// other node; clients are at 192.168.100.100+ and reach `routed` prefixes through node 0.
pub struct Cluster {
    pub switch: Netns,
    pub nodes: Vec<Node>,
    pub clients: Vec<(Netns, Ipv4Addr)>,
    /// XDP pass programs on the switch ports (see `Cluster::with_xdp_peers`).
    _switch_xdp: Option<(aya::Ebpf, crate::agent::PinDir)>,
}

impl Cluster {
    /// `nodes` nodes (named n1, n2, …) and `clients` external clients. The switch ports (the
    /// peers of every uplink) run no XDP program, as in kind clusters, containers and netns
    /// labs: native XDP_TX on an uplink loses its frames there.
    pub fn new(tag: &str, nodes: usize, clients: usize, routed: &[&str]) -> Self {
        Self::build(tag, nodes, clients, routed, false)
    }

    /// Like `new`, with an XDP program (passing every frame) on each switch port: a veth
    /// delivers frames its peer sent with XDP_TX only through the receiving side's XDP NAPI,
    /// so native XDP_TX on the uplinks works.
    pub fn with_xdp_peers(tag: &str, nodes: usize, clients: usize, routed: &[&str]) -> Self {
        Self::build(tag, nodes, clients, routed, true)
    }

    fn build(tag: &str, nodes: usize, clients: usize, routed: &[&str], xdp_peers: bool) -> Self {
        let switch = Netns::new(&format!("xlbt-{tag}-sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let attach = |ns: &Netns, port: &str, addr: Ipv4Addr| {
            switch.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            switch.ip(&["link", "set", port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        };
        let mut all = Vec::new();
        for i in 0..nodes {
            let node = Node::new(tag, &format!("n{}", i + 1), (i + 1) as u8);
            attach(&node.ns, &format!("n{}", i + 1), node_ip(i));
            node.ns.sysctl("net.ipv4.conf.all.send_redirects", "0");
            node.ns.sysctl("net.ipv4.conf.eth0.send_redirects", "0");
            all.push(node);
        }
        for (i, node) in all.iter().enumerate() {
            for (j, _) in all.iter().enumerate().filter(|(j, _)| *j != i) {
                node.ns.ip(&[
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", j + 1),
                    "via",
                    &node_ip(j).to_string(),
                ]);
            }
        }
        let mut cls = Vec::new();
        for c in 0..clients {
            let ns = Netns::new(&format!("xlbt-{tag}-c{c}"));
            let addr = Ipv4Addr::new(192, 168, 100, 100 + c as u8);
            attach(&ns, &format!("c{c}"), addr);
            for prefix in routed {
                ns.ip(&["route", "add", prefix, "via", &node_ip(0).to_string()]);
            }
            ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
            cls.push((ns, addr));
        }
        if !xdp_peers {
            return Self {
                switch,
                nodes: all,
                clients: cls,
                _switch_xdp: None,
            };
        }
        // Each switch port runs the xlb XDP program with no configuration, which passes every
        // frame.
        let pins = crate::agent::PinDir::new(&format!("{tag}-sw"));
        let mut ebpf =
            lb_userspace::bpf::load(&pins.path, lb_userspace::bpf::Capacities::default(), false)
                .expect("load pass program");
        let ports: Vec<String> = (0..nodes)
            .map(|i| format!("n{}", i + 1))
            .chain((0..clients).map(|c| format!("c{c}")))
            .collect();
        let handle = switch.handle();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                crate::netns::enter(&handle);
                let prog = lb_userspace::bpf::xdp(&mut ebpf).expect("xdp");
                for port in &ports {
                    prog.attach(port, aya::programs::XdpMode::Driver)
                        .unwrap_or_else(|e| panic!("XDP on switch port {port}: {e}"));
                }
            });
        });
        Self {
            switch,
            nodes: all,
            clients: cls,
            _switch_xdp: Some((ebpf, pins)),
        }
    }

    /// `nodes` nodes whose pod subnets reach each other over a VXLAN overlay as flannel
    /// builds it (device `flannel.1`, VNI 1, port 8472, the node's `10.244.<i+1>.0/32` on it,
    /// a route per remote subnet `via 10.244.<j+1>.0 onlink`, permanent neighbours and FDB
    /// entries to the remote nodes' uplink addresses): replies from remote pods arrive
    /// decapsulated on `flannel.1`, not on the uplink.
    pub fn with_vxlan(tag: &str, nodes: usize) -> Self {
        let c = Self::build(tag, nodes, 0, &[], false);
        let mac = |i: usize| format!("02:00:00:00:{:02x}:01", i + 1);
        for (i, node) in c.nodes.iter().enumerate() {
            let ns = &node.ns;
            ns.ip(&[
                "link",
                "add",
                "flannel.1",
                "address",
                &mac(i),
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &node_ip(i).to_string(),
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("10.244.{}.0/32", i + 1),
                "dev",
                "flannel.1",
            ]);
            ns.ip(&["link", "set", "flannel.1", "up"]);
            for j in (0..nodes).filter(|j| *j != i) {
                let subnet = format!("10.244.{}.0/24", j + 1);
                let gw = format!("10.244.{}.0", j + 1);
                ns.ip(&["route", "del", &subnet]);
                ns.ip(&[
                    "route",
                    "add",
                    &subnet,
                    "via",
                    &gw,
                    "dev",
                    "flannel.1",
                    "onlink",
                ]);
                ns.ip(&[
                    "neigh",
                    "add",
                    &gw,
                    "lladdr",
                    &mac(j),
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ]);
                ns.exec(&[
                    "bridge",
                    "fdb",
                    "append",
                    &mac(j),
                    "dev",
                    "flannel.1",
                    "dst",
                    &node_ip(j).to_string(),
                ]);
            }
        }
        c
    }

    /// IPv6 as well: `node_ip6` and `client_ip6` on the segment (a /64), every node and its
    /// pods dual-stack (`Node::dual_stack`, call after the pods are added), each node's pods
    /// (`fd00:10:244:<i+1>::/64`) routed from the other nodes.
    pub fn dual_stack(&self) {
        let on_segment = |ns: &Netns, a: Ipv6Addr| {
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        };
        for (i, node) in self.nodes.iter().enumerate() {
            node.dual_stack();
            on_segment(&node.ns, node_ip6(i));
            for (j, other) in self.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                node.ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:10:244:{}::/64", other.subnet),
                    "via",
                    &node_ip6(j).to_string(),
                ]);
            }
        }
        for (c, (ns, _)) in self.clients.iter().enumerate() {
            on_segment(ns, client_ip6(c));
        }
    }

    /// Sends client `c`'s traffic for `prefix` through node `i`.
    /// (An IPv6 prefix goes through the node's IPv6 address: `dual_stack` first.)
    pub fn route_via(&self, c: usize, prefix: &str, i: usize) {
        let via = if prefix.contains(':') {
            node_ip6(i).to_string()
        } else {
            node_ip(i).to_string()
        };
        self.clients[c]
            .0
            .ip(&["route", "replace", prefix, "via", &via]);
    }
}
