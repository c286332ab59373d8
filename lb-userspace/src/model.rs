//! The desired state: what the datapath should balance, independent of where it came from
//! (Kubernetes API, files) and of how it is stored in maps. Pure data, no I/O.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::Serialize;

/// L4 protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::proto::TCP,
            Self::Udp => lb_common::proto::UDP,
            Self::Sctp => lb_common::proto::SCTP,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::proto::TCP => Some(Self::Tcp),
            lb_common::proto::UDP => Some(Self::Udp),
            lb_common::proto::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Parses `TCP`/`UDP`/`SCTP` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// Kind of frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    /// `lb_common::kind::*` value.
    pub fn code(self) -> u8 {
        match self {
            Self::ClusterIp => lb_common::kind::CLUSTER_IP,
            Self::NodePort => lb_common::kind::NODE_PORT,
            Self::LoadBalancer => lb_common::kind::LOAD_BALANCER,
            Self::ExternalIp => lb_common::kind::EXTERNAL_IP,
        }
    }

    /// From a `lb_common::kind::*` value.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            lb_common::kind::CLUSTER_IP => Some(Self::ClusterIp),
            lb_common::kind::NODE_PORT => Some(Self::NodePort),
            lb_common::kind::LOAD_BALANCER => Some(Self::LoadBalancer),
            lb_common::kind::EXTERNAL_IP => Some(Self::ExternalIp),
            _ => None,
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIp => "ExternalIP",
        })
    }
}

/// Which traffic a frontend entry serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Scope {
    /// Traffic from outside the node (and from pods, unless an internal entry exists).
    External,
    /// Traffic from this node's pods only.
    Internal,
}

/// An address:port/protocol clients dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
    pub kind: FrontendKind,
    /// Only clients in the service's source ranges may use it (LoadBalancer frontends).
    pub source_ranges: bool,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

/// Whether an endpoint takes new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EndpointState {
    /// Chosen for new flows.
    Active,
    /// Terminating: kept only for its established flows.
    Terminating,
    /// Not ready (and not serving-terminating fallback): kept only for its established flows.
    NotReady,
}

/// A backend of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// Relative weight (1 = default).
    pub weight: u16,
    /// Runs on this node.
    pub local: bool,
    pub state: EndpointState,
    /// Kubernetes node name, if known (display).
    pub node: Option<String>,
}

/// Backend selection algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum Algorithm {
    /// Maglev consistent hashing (default).
    #[default]
    Maglev,
    /// A random backend per new flow.
    Random,
}

impl Algorithm {
    /// Parses `maglev` / `random`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "maglev" => Some(Self::Maglev),
            "random" => Some(Self::Random),
            _ => None,
        }
    }

    /// `lb_common::algorithm::*` value.
    pub fn code(self) -> u8 {
        match self {
            Self::Maglev => lb_common::algorithm::MAGLEV,
            Self::Random => lb_common::algorithm::RANDOM,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Maglev => "maglev",
            Self::Random => "random",
        })
    }
}

/// An IPv4 or IPv6 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpNet {
    /// Parses `a.b.c.d/len` or `2001:db8::/len` (a bare address as /32 or /128); host bits are
    /// cleared.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let len = l.unwrap_or(bits);
        if len > bits {
            return None;
        }
        Some(Self {
            addr: masked(addr, len),
            len,
        })
    }

    /// True if `a` is inside the network (never for an address of the other family).
    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && masked(a, self.len) == self.addr
    }

    /// True for an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

/// `a` with every bit past the first `len` cleared.
fn masked(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One backend set the datapath balances over: a Kubernetes service port (or its node-local
/// variant under a Local traffic policy), with every frontend that leads to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LbService {
    /// Stable identity, e.g. `default/web:http/TCP` or `default/web:http/TCP (local)`.
    pub name: String,
    pub frontends: Vec<Frontend>,
    /// Sorted by (addr, port).
    pub endpoints: Vec<Endpoint>,
    pub algorithm: Algorithm,
    /// sessionAffinity ClientIP timeout, seconds (0 = none).
    pub affinity_timeout: u32,
    /// loadBalancerSourceRanges (applies to frontends with `source_ranges`).
    pub source_ranges: Vec<IpNet>,
    /// externalTrafficPolicy Local: client source preserved, no SNAT; drops count as
    /// "no local backend".
    pub ext_local: bool,
}

/// Everything to program, by service name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub services: BTreeMap<String, LbService>,
}
