//! The agent's configuration entry (`xlb_config`) and the hook kinds.

use crate::Ipv4;

/// Value of `xlb_config` (index 0), written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `LAYOUT_VERSION` of the agent that created the maps.
    pub layout_version: u32,
    /// Seed of the flow hash; equal on every node so that Maglev picks agree.
    pub hash_seed: u32,
    /// Source address for hairpin flows (a pod reaching itself through a Service).
    pub hairpin_addr: Ipv4,
    /// Source address for SNAT of north-south flows to remote backends.
    pub snat_addr: Ipv4,
    /// First SNAT port, host order.
    pub snat_port_min: u16,
    /// Last SNAT port, host order.
    pub snat_port_max: u16,
    /// Conntrack timeout after a lone SYN, seconds.
    pub ct_tcp_syn: u32,
    /// Conntrack timeout of an established TCP flow, seconds.
    pub ct_tcp_established: u32,
    /// Conntrack timeout after one FIN, seconds.
    pub ct_tcp_fin: u32,
    /// Conntrack timeout after RST or both FINs, seconds.
    pub ct_tcp_closed: u32,
    /// Conntrack timeout of UDP/SCTP flows, seconds.
    pub ct_udp: u32,
    /// `config_flags::*`.
    pub flags: u32,
}

/// Value of `xlb_config6` (index 0), written by the agent: what `Config` holds for IPv4,
/// for IPv6 flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config6 {
    /// Source address for hairpin flows (`::` until the agent knows one).
    pub hairpin_addr: crate::Ipv6,
    /// Source address for SNAT of north-south flows to remote backends (`::`: none).
    pub snat_addr: crate::Ipv6,
}

/// `Config::flags`.
pub mod config_flags {
    /// Emit drop events to `xlb_events`.
    pub const MONITOR_DROPS: u32 = 1 << 0;
    /// Emit new-flow decisions to `xlb_events`.
    pub const MONITOR_FLOWS: u32 = 1 << 1;
    /// Every monitor flag.
    pub const MONITOR_MASK: u32 = MONITOR_DROPS | MONITOR_FLOWS;
}

/// Hook a packet was seen at (`CtValue::hook`, `Event::hook`).
pub mod hook {
    /// tc ingress on a pod-facing device.
    pub const POD: u8 = 1;
    /// tc ingress on an uplink.
    pub const HOST: u8 = 2;
    /// XDP on an uplink.
    pub const XDP: u8 = 3;
}
