//! Connection tracking: keys and values of `xlb_ct` (confirmed flows) and `xlb_ct_new`
//! (flows not yet answered), and of `xlb_frags` (the ports of fragmented datagrams).
//!
//! A flow starts in `xlb_ct_new` and moves to `xlb_ct` when the client speaks again after a
//! reply (the TCP handshake's ACK, UDP both ways), so a flood of new flows (SYNs, spoofed or
//! one-way UDP) only churns `xlb_ct_new`: it cannot evict a confirmed flow.

use crate::Ipv4;

/// Conntrack direction (`CtKey::dir`).
pub mod ct_dir {
    /// Client → frontend, as the client sent it.
    pub const FORWARD: u8 = 1;
    /// Backend → client (or → SNAT address), as the backend sent it.
    pub const REPLY: u8 = 2;
}

/// Key of `xlb_ct` and `xlb_ct_new` (`xlb_ct6`, `xlb_ct6_new` with `A = Ipv6`): the packet's
/// own 5-tuple before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey<A = Ipv4> {
    /// Source address, network order.
    pub saddr: A,
    /// Destination address, network order.
    pub daddr: A,
    /// Source port, host order (0 for ICMP).
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// `ct_dir::*`.
    pub dir: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// TCP connection state (`CtValue::state`).
pub mod ct_state {
    /// Only a SYN seen.
    pub const SYN_SENT: u8 = 1;
    /// Data flowing (and every non-TCP flow).
    pub const ESTABLISHED: u8 = 2;
    /// A FIN seen in one direction.
    pub const FIN_WAIT: u8 = 3;
    /// An accepted RST (its sequence number the one the receiver expects), or FIN in both
    /// directions: expires fast; a new SYN starts a new flow.
    pub const CLOSED: u8 = 4;
}

/// `CtValue::flags`.
pub mod ct_flags {
    /// Rewrite the source to `nat_saddr:nat_sport`.
    pub const XLATE_SRC: u8 = 1 << 0;
    /// Rewrite the destination to `nat_daddr:nat_dport`.
    pub const XLATE_DST: u8 = 1 << 1;
    /// The client is its own backend (source rewritten to the hairpin address).
    pub const HAIRPIN: u8 = 1 << 2;
    /// North-south flow SNATed to a node address (eTP=Cluster, remote backend).
    pub const SNAT: u8 = 1 << 3;
    /// FIN seen from the client.
    pub const FIN_FWD: u8 = 1 << 4;
    /// FIN seen from the backend.
    pub const FIN_REPLY: u8 = 1 << 5;
    /// Forward entry of an unanswered flow (`xlb_ct_new`): the backend answered (not with an
    /// RST). The client's next packet confirms the flow: a TCP handshake completed, or UDP
    /// traffic both ways. A spoofed flood never gets that far.
    pub const SEEN_REPLY: u8 = 1 << 6;
}

/// Value of `xlb_ct` (and its siblings, see `CtKey`): what to rewrite for packets matching
/// the key, and the flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue<A = Ipv4> {
    /// Service id at selection time.
    pub svc_id: u32,
    /// Selected backend id.
    pub backend_id: u32,
    /// Creation time, seconds of CLOCK_MONOTONIC.
    pub created: u32,
    /// Expiry time, seconds of CLOCK_MONOTONIC; an expired entry counts as absent.
    pub expires: u32,
    /// New source address when `XLATE_SRC`.
    pub nat_saddr: A,
    /// New destination address when `XLATE_DST`.
    pub nat_daddr: A,
    /// New source port when `XLATE_SRC`, host order.
    pub nat_sport: u16,
    /// New destination port when `XLATE_DST`, host order.
    pub nat_dport: u16,
    /// `ct_state::*`.
    pub state: u8,
    /// `ct_flags::*`.
    pub flags: u8,
    /// Ingress ifindex class of the flow's first packet (`hook::*`), for display.
    pub hook: u8,
    /// `route_flags::*` of the cached next hop below.
    pub route_flags: u8,
    /// Cached next hop: the egress device (0: the stack delivers).
    pub route_ifindex: u32,
    /// Second (CLOCK_MONOTONIC) the next hop was looked up; it is used during that second only.
    pub route_at: u32,
    /// Cached next hop's Ethernet destination then source (valid with `route_flags::MACS`).
    pub route_macs: [u8; 12],
    /// TCP: the sequence number after the last segment sent in this direction (seq + length,
    /// SYN and FIN counting one): an RST of this direction is accepted only with exactly this
    /// sequence number (RFC 5961's rule for a reset, which the endpoint applies too). While a
    /// reply entry is `SYN_SENT` it holds the number an RST answering the SYN must acknowledge
    /// instead. 0: unknown.
    pub seq_end: u32,
    /// MTU of the cached next hop's device: a larger packet (or a GSO one at tc) looks the
    /// route up again, which checks its size.
    pub route_mtu: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Key of `xlb_frags6`: an IPv6 datagram's fragments as they arrive (before translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    /// Source address, network order.
    pub saddr: crate::Ipv6,
    /// Destination address, network order.
    pub daddr: crate::Ipv6,
    /// The fragment header's identification, host order.
    pub id: u32,
    /// The fragmented datagram's L4 protocol.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// Key of `xlb_frags`: a datagram's fragments as they arrive (before translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address, network order.
    pub saddr: Ipv4,
    /// Destination address, network order.
    pub daddr: Ipv4,
    /// IP identification, host order.
    pub id: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: u8,
}

/// Value of `xlb_frags`: the ports the first fragment carried, host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// `CtValue::route_flags`.
pub mod route_flags {
    /// The route fields hold a lookup result.
    pub const CACHED: u8 = 1 << 0;
    /// The neighbour was resolved: `route_macs` are valid.
    pub const MACS: u8 = 1 << 1;
}
