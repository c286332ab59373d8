//! The same services as kube-proxy would program them, for side-by-side benchmarks:
//! - iptables mode: KUBE-SERVICES → KUBE-SVC-* with `statistic --mode random` per endpoint →
//!   KUBE-SEP-* (masquerade mark + DNAT), loaded with `iptables-legacy-restore`; one endpoint
//!   change is kube-proxy's partial sync (`--noflush` with the changed chains);
//! - nftables mode: a `service-ips` verdict map on daddr . proto . dport → per-service chain
//!   with `numgen random mod N` → per-endpoint chain, loaded with `nft -f`; one endpoint change
//!   is one transaction rewriting the service chain.

use std::{fmt::Write as _, net::Ipv4Addr};

use lb_userspace::maglev::hash64;

/// Pod CIDR used for kube-proxy's "masquerade off-cluster traffic" rule.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// A ClusterIP service port with its endpoints.
#[derive(Clone, Debug)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Svc {
    /// `namespace/name:http`.
    pub fn port_name(&self) -> String {
        format!("{}/{}:http", self.namespace, self.name)
    }
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

fn sep_chain(s: &Svc, ep: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&[&s.port_name(), "tcp", &format!("{ep}:{}", s.target)])
    )
}

fn iptables_service_rules(out: &mut String, s: &Svc) {
    let svc = svc_chain(s);
    let pn = s.port_name();
    let n = s.endpoints.len();
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{pn} cluster IP\" ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m tcp --dport {} -j KUBE-MARK-MASQ",
        s.vip, s.port
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

fn iptables_endpoint_rules(out: &mut String, s: &Svc, ep: Ipv4Addr) {
    let sep = sep_chain(s, ep);
    let pn = s.port_name();
    let _ = writeln!(
        out,
        "-A {sep} -m comment --comment {pn} -s {ep}/32 -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(
        out,
        "-A {sep} -m comment --comment {pn} -m tcp -p tcp -j DNAT --to-destination {ep}:{}",
        s.target
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
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -d {}/32 -p tcp -m tcp --dport {} -j {}",
            s.port_name(),
            s.vip,
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
    let added: Vec<Ipv4Addr> = after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
        .copied()
        .collect();
    let removed: Vec<Ipv4Addr> = before
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

fn nft_ep_chain(s: &Svc, ep: Ipv4Addr) -> String {
    format!(
        "endpoint-{}-{}-{}-tcp-http__{}-{}",
        &chain_hash(&[&s.port_name(), "tcp", &format!("{ep}:{}", s.target)])[..8],
        s.namespace,
        s.name,
        ep.to_string().replace('.', "-"),
        s.target
    )
}

fn nft_service_rules(out: &mut String, s: &Svc) {
    let chain = nft_svc_chain(s);
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.vip, s.port
    );
    let map: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_ep_chain(s, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        map.join(" , ")
    );
}

fn nft_endpoint(out: &mut String, s: &Svc, ep: Ipv4Addr) {
    let chain = nft_ep_chain(s, ep);
    let _ = writeln!(out, "add chain ip kube-proxy {chain}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} ip saddr {ep} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} meta l4proto tcp dnat to {ep}:{}",
        s.target
    );
}

/// The full `nft -f` transaction kube-proxy's nftables mode writes for these services.
pub fn nft_full(services: &[Svc]) -> String {
    let mut out = String::new();
    out.push_str("add table ip kube-proxy\n");
    out.push_str("add chain ip kube-proxy mark-for-masquerade\n");
    out.push_str("add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n");
    out.push_str("add chain ip kube-proxy masquerading\n");
    out.push_str("add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n");
    out.push_str("add rule ip kube-proxy masquerading mark set mark xor 0x4000\n");
    out.push_str("add rule ip kube-proxy masquerading masquerade fully-random\n");
    out.push_str("add chain ip kube-proxy services\n");
    out.push_str(
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }\n",
    );
    out.push_str("add rule ip kube-proxy nat-prerouting jump services\n");
    out.push_str("add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n");
    out.push_str("add rule ip kube-proxy nat-output jump services\n");
    out.push_str(
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority srcnat ; }\n",
    );
    out.push_str("add rule ip kube-proxy nat-postrouting jump masquerading\n");
    out.push_str("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n");
    out.push_str(
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n",
    );
    for s in services {
        for ep in &s.endpoints {
            nft_endpoint(&mut out, s, *ep);
        }
        let _ = writeln!(out, "add chain ip kube-proxy {}", nft_svc_chain(s));
        nft_service_rules(&mut out, s);
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} . tcp . {} : goto {} }}",
            s.vip,
            s.port,
            nft_svc_chain(s)
        );
    }
    out
}

/// kube-proxy's nftables transaction when `before` became `after`.
pub fn nft_change(before: &Svc, after: &Svc) -> String {
    let mut out = String::new();
    for ep in after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
    {
        nft_endpoint(&mut out, after, *ep);
    }
    let _ = writeln!(out, "flush chain ip kube-proxy {}", nft_svc_chain(after));
    nft_service_rules(&mut out, after);
    for ep in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let _ = writeln!(
            out,
            "delete chain ip kube-proxy {}",
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
            vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32),
            port: 80,
            target: 8080,
            endpoints: (0..endpoints)
                .map(|e| {
                    Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 64 + e) as u32 + 1,
                    )
                })
                .collect(),
        })
        .collect()
}

/// The services as Kubernetes manifests (Service + EndpointSlice), one document each.
pub fn manifests(services: &[Svc]) -> String {
    let mut out = String::new();
    for s in services {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  clusterIP: {}\n  ports:\n  - name: http\n    port: {}\n    targetPort: {}\n",
            s.name, s.namespace, s.vip, s.port, s.target
        );
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-1\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\naddressType: IPv4\nports:\n- name: http\n  port: {}\nendpoints:\n",
            s.name, s.namespace, s.name, s.target
        );
        for ep in &s.endpoints {
            let _ = writeln!(out, "- addresses: [\"{ep}\"]");
        }
    }
    out
}
