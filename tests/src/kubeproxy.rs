//! The same services as kube-proxy would program them, for side-by-side benchmarks:
//! - iptables mode: KUBE-SERVICES → KUBE-SVC-* with `statistic --mode random` per endpoint →
//!   KUBE-SEP-* (masquerade mark + DNAT), loaded with `iptables-legacy-restore`; one endpoint
//!   change is kube-proxy's partial sync (`--noflush` with the changed chains);
//! - nftables mode: a `service-ips` verdict map on daddr . proto . dport → per-service chain
//!   with `numgen random mod N` → per-endpoint chain, loaded with `nft -f`; one endpoint change
//!   is one transaction rewriting the service chain.
//!
//! Services of one set share a family: IPv6 services go to ip6tables / an `ip6` table, as
//! kube-proxy's IPv6 proxier writes them.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use lb_userspace::maglev::hash64;

/// Pod CIDR used for kube-proxy's "masquerade off-cluster traffic" rule.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 pod CIDR (the test topology's pods are in `fd00:10:244:<node>::/64`).
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";

/// The node every endpoint of `manifests` runs on (the benchmarks' one node, `--node-name`).
pub const NODE_NAME: &str = "n";

/// A ClusterIP service port with its endpoints.
#[derive(Clone, Debug)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub vip: IpAddr,
    /// An externalIP of the service (clients outside the cluster dial it), with
    /// `externalTrafficPolicy: Local` (the client's address is kept); kube-proxy's rules then
    /// match it instead of the ClusterIP.
    pub external: Option<IpAddr>,
    pub port: u16,
    pub target: u16,
    pub endpoints: Vec<IpAddr>,
}

impl Svc {
    /// `namespace/name:http`.
    pub fn port_name(&self) -> String {
        format!("{}/{}:http", self.namespace, self.name)
    }

    /// The address clients dial: the externalIP if there is one, else the ClusterIP.
    pub fn dialled(&self) -> IpAddr {
        self.external.unwrap_or(self.vip)
    }

    /// The pod CIDR of the service's family.
    fn cluster_cidr(&self) -> &'static str {
        if self.vip.is_ipv6() {
            CLUSTER_CIDR6
        } else {
            CLUSTER_CIDR
        }
    }

    /// nftables' family of the service's table: `ip` or `ip6`.
    fn nft_family(&self) -> &'static str {
        if self.vip.is_ipv6() { "ip6" } else { "ip" }
    }
}

/// `addr/32` or `addr/128`.
fn host(a: IpAddr) -> String {
    format!("{a}/{}", if a.is_ipv6() { 128 } else { 32 })
}

/// kube-proxy's chain-name hash: 16 base32 characters of a hash of the inputs.
fn chain_hash(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h1 = hash64(1, parts.join("|").as_bytes());
    let h2 = hash64(2, parts.join("|").as_bytes());
    let bits = (u128::from(h1) << 64) | u128::from(h2);
    (0..16)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

fn svc_chain(s: &Svc) -> String {
    format!("KUBE-SVC-{}", chain_hash(&[&s.port_name(), "tcp"]))
}

fn sep_chain(s: &Svc, ep: IpAddr) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&[
            &s.port_name(),
            "tcp",
            &SocketAddr::from((ep, s.target)).to_string()
        ])
    )
}

fn iptables_service_rules(out: &mut String, s: &Svc) {
    let svc = svc_chain(s);
    let pn = s.port_name();
    let n = s.endpoints.len();
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{pn} cluster IP\" ! -s {} -d {} -p tcp -m tcp --dport {} -j KUBE-MARK-MASQ",
        s.cluster_cidr(),
        host(s.dialled()),
        s.port
    );
    for (i, ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, *ep);
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{pn} -> {ep}:{}\" -m statistic --mode random --probability {p:.10} -j {sep}",
                s.target
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{pn} -> {ep}:{}\" -j {sep}",
                s.target
            );
        }
    }
}

fn iptables_endpoint_rules(out: &mut String, s: &Svc, ep: IpAddr) {
    let sep = sep_chain(s, ep);
    let pn = s.port_name();
    let _ = writeln!(
        out,
        "-A {sep} -m comment --comment {pn} -s {} -j KUBE-MARK-MASQ",
        host(ep)
    );
    let _ = writeln!(
        out,
        "-A {sep} -m comment --comment {pn} -m tcp -p tcp -j DNAT --to-destination {}",
        SocketAddr::from((ep, s.target))
    );
}

/// The full `iptables-restore` input kube-proxy writes for these services.
pub fn iptables_full(services: &[Svc]) -> String {
    let mut out = String::new();
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n");
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("COMMIT\n");
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    for s in services {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
        for ep in &s.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, *ep));
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for s in services {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -d {} -p tcp -m tcp --dport {} -j {}",
            s.port_name(),
            host(s.dialled()),
            s.port,
            svc_chain(s)
        );
    }
    for s in services {
        iptables_service_rules(&mut out, s);
        for ep in &s.endpoints {
            iptables_endpoint_rules(&mut out, s, *ep);
        }
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's partial sync (`iptables-restore --noflush`) when `before` became `after`.
pub fn iptables_change(before: &Svc, after: &Svc) -> String {
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(after));
    let added: Vec<IpAddr> = after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
        .copied()
        .collect();
    let removed: Vec<IpAddr> = before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
        .copied()
        .collect();
    for ep in &added {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(after, *ep));
    }
    for ep in &removed {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(before, *ep));
    }
    iptables_service_rules(&mut out, after);
    for ep in &added {
        iptables_endpoint_rules(&mut out, after, *ep);
    }
    for ep in &removed {
        let _ = writeln!(out, "-X {}", sep_chain(before, *ep));
    }
    out.push_str("COMMIT\n");
    out
}

fn nft_svc_chain(s: &Svc) -> String {
    format!(
        "service-{}-{}-{}-tcp-http",
        &chain_hash(&[&s.port_name(), "tcp"])[..8],
        s.namespace,
        s.name
    )
}

fn nft_ep_chain(s: &Svc, ep: IpAddr) -> String {
    format!(
        "endpoint-{}-{}-{}-tcp-http__{}-{}",
        &chain_hash(&[
            &s.port_name(),
            "tcp",
            &SocketAddr::from((ep, s.target)).to_string()
        ])[..8],
        s.namespace,
        s.name,
        ep.to_string().replace(['.', ':'], "-"),
        s.target
    )
}

fn nft_service_rules(out: &mut String, s: &Svc) {
    let chain = nft_svc_chain(s);
    let f = s.nft_family();
    let _ = writeln!(
        out,
        "add rule {f} kube-proxy {chain} {f} daddr {} tcp dport {} {f} saddr != {} jump mark-for-masquerade",
        s.dialled(),
        s.port,
        s.cluster_cidr()
    );
    let map: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_ep_chain(s, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {f} kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        map.join(" , ")
    );
}

fn nft_endpoint(out: &mut String, s: &Svc, ep: IpAddr) {
    let chain = nft_ep_chain(s, ep);
    let f = s.nft_family();
    let _ = writeln!(out, "add chain {f} kube-proxy {chain}");
    let _ = writeln!(
        out,
        "add rule {f} kube-proxy {chain} {f} saddr {ep} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule {f} kube-proxy {chain} meta l4proto tcp dnat to {}",
        SocketAddr::from((ep, s.target))
    );
}

/// The start of kube-proxy's nftables transaction (`FAMILY`: ip or ip6, `ADDR_TYPE`: the
/// element type of `service-ips`).
const NFT_HEADER: &str = "add table FAMILY kube-proxy
add chain FAMILY kube-proxy mark-for-masquerade
add rule FAMILY kube-proxy mark-for-masquerade mark set mark or 0x4000
add chain FAMILY kube-proxy masquerading
add rule FAMILY kube-proxy masquerading mark and 0x4000 == 0 return
add rule FAMILY kube-proxy masquerading mark set mark xor 0x4000
add rule FAMILY kube-proxy masquerading masquerade fully-random
add chain FAMILY kube-proxy services
add chain FAMILY kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }
add rule FAMILY kube-proxy nat-prerouting jump services
add chain FAMILY kube-proxy nat-output { type nat hook output priority -100 ; }
add rule FAMILY kube-proxy nat-output jump services
add chain FAMILY kube-proxy nat-postrouting { type nat hook postrouting priority srcnat ; }
add rule FAMILY kube-proxy nat-postrouting jump masquerading
add map FAMILY kube-proxy service-ips { type ADDR_TYPE . inet_proto . inet_service : verdict ; }
add rule FAMILY kube-proxy services FAMILY daddr . meta l4proto . th dport vmap @service-ips
";

/// The full `nft -f` transaction kube-proxy's nftables mode writes for these services.
pub fn nft_full(services: &[Svc]) -> String {
    let v6 = services.first().is_some_and(|s| s.vip.is_ipv6());
    let (f, addr_type) = if v6 {
        ("ip6", "ipv6_addr")
    } else {
        ("ip", "ipv4_addr")
    };
    let mut out = NFT_HEADER
        .replace("FAMILY", f)
        .replace("ADDR_TYPE", addr_type);
    for s in services {
        for ep in &s.endpoints {
            nft_endpoint(&mut out, s, *ep);
        }
        let _ = writeln!(out, "add chain {f} kube-proxy {}", nft_svc_chain(s));
        nft_service_rules(&mut out, s);
        let _ = writeln!(
            out,
            "add element {f} kube-proxy service-ips {{ {} . tcp . {} : goto {} }}",
            s.dialled(),
            s.port,
            nft_svc_chain(s)
        );
    }
    out
}

/// kube-proxy's nftables transaction when `before` became `after`.
pub fn nft_change(before: &Svc, after: &Svc) -> String {
    let f = after.nft_family();
    let mut out = String::new();
    for ep in after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
    {
        nft_endpoint(&mut out, after, *ep);
    }
    let _ = writeln!(out, "flush chain {f} kube-proxy {}", nft_svc_chain(after));
    nft_service_rules(&mut out, after);
    for ep in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let _ = writeln!(
            out,
            "delete chain {f} kube-proxy {}",
            nft_ep_chain(before, *ep)
        );
    }
    out
}

/// `n` services with `endpoints` endpoints each: VIPs from 10.96.0.0/16-ish, endpoints from
/// 10.128.0.0/10, port 80 → 8080.
pub fn service_set(n: usize, endpoints: usize) -> Vec<Svc> {
    (0..n)
        .map(|i| Svc {
            namespace: format!("ns{}", i / 100),
            name: format!("svc{i}"),
            vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32).into(),
            external: None,
            port: 80,
            target: 8080,
            endpoints: (0..endpoints)
                .map(|e| {
                    Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 64 + e) as u32 + 1,
                    )
                    .into()
                })
                .collect(),
        })
        .collect()
}

/// The services as Kubernetes manifests (Service + EndpointSlice), one document each.
pub fn manifests(services: &[Svc]) -> String {
    let mut out = String::new();
    for s in services {
        let family = if s.vip.is_ipv6() { "IPv6" } else { "IPv4" };
        let external = s
            .external
            .map(|e| format!("  externalIPs: [\"{e}\"]\n  externalTrafficPolicy: Local\n"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  clusterIP: \"{}\"\n  ipFamilies: [{family}]\n{external}  ports:\n  - name: http\n    port: {}\n    targetPort: {}\n",
            s.name, s.namespace, s.vip, s.port, s.target
        );
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-1\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\naddressType: {family}\nports:\n- name: http\n  port: {}\nendpoints:\n",
            s.name, s.namespace, s.name, s.target
        );
        for ep in &s.endpoints {
            let _ = writeln!(out, "- addresses: [\"{ep}\"]\n  nodeName: {NODE_NAME}");
        }
    }
    out
}
