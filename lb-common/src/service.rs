//! Frontends, backends and their lookup tables: keys and values of `xlb_services`,
//! `xlb_backends`, `xlb_lut`, `xlb_svc_info`, `xlb_affinity` and `xlb_srcranges`.

use crate::{Ipv4, Ipv6};

/// IP protocol numbers the datapath handles.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Frontend scope: which traffic a `ServiceKey` entry serves.
pub mod scope {
    /// Default entry: traffic from outside the node (and from pods unless an internal entry exists).
    pub const EXTERNAL: u8 = 0;
    /// Entry used for traffic from this node's pods when the frontend has `SVC_F_TWO_SCOPES`.
    pub const INTERNAL: u8 = 1;
}

/// Kind of frontend, for display and policy.
pub mod kind {
    /// `spec.clusterIP`.
    pub const CLUSTER_IP: u8 = 1;
    /// A node address with `spec.ports[].nodePort`.
    pub const NODE_PORT: u8 = 2;
    /// `status.loadBalancer.ingress[].ip`.
    pub const LOAD_BALANCER: u8 = 3;
    /// `spec.externalIPs[]`.
    pub const EXTERNAL_IP: u8 = 4;
}

/// Backend selection algorithm of a service.
pub mod algorithm {
    /// A random slot per new flow.
    pub const RANDOM: u8 = 1;
    /// Maglev consistent hashing of the flow's 5-tuple.
    pub const MAGLEV: u8 = 2;
}

/// `ServiceValue::flags`.
pub mod svc_flags {
    /// Traffic from this node's pods must use the `scope::INTERNAL` entry of this frontend.
    pub const TWO_SCOPES: u16 = 1 << 0;
    /// Check the client against `xlb_srcranges` (loadBalancerSourceRanges).
    pub const SRC_RANGES: u16 = 1 << 1;
    /// externalTrafficPolicy: Local — never SNAT, the backend set holds node-local endpoints only.
    pub const EXT_LOCAL: u16 = 1 << 2;
}

/// `Backend::flags`.
pub mod backend_flags {
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 0;
    /// Kept for its established flows, never chosen for new ones (terminating or not ready).
    pub const DRAINING: u8 = 1 << 1;
    /// The endpoint is terminating (display; implies `DRAINING` unless it serves as fallback).
    pub const TERMINATING: u8 = 1 << 2;
}

/// Frontend key of `xlb_services` (`xlb_services6` with `A = Ipv6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey<A = Ipv4> {
    /// Frontend address (VIP, node IP, LB IP or external IP), network order.
    pub addr: A,
    /// Frontend port, host order.
    pub port: u16,
    /// IP protocol (`proto::*`).
    pub proto: u8,
    /// `scope::*`.
    pub scope: u8,
}

impl ServiceKey<Ipv4> {
    /// The key's bytes as the map holds them (what `bpftool map lookup ... key hex` takes).
    pub fn to_bytes(&self) -> [u8; 8] {
        let p = self.port.to_ne_bytes();
        [
            self.addr[0],
            self.addr[1],
            self.addr[2],
            self.addr[3],
            p[0],
            p[1],
            self.proto,
            self.scope,
        ]
    }
}

impl ServiceKey<Ipv6> {
    /// The key's bytes as `xlb_services6` holds them (what `bpftool map lookup ... key hex`
    /// takes).
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&self.addr);
        b[16..18].copy_from_slice(&self.port.to_ne_bytes());
        b[18] = self.proto;
        b[19] = self.scope;
        b
    }
}

/// Frontend value of `xlb_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Backend set (service) id, never 0; indexes `xlb_lut`, `xlb_svc_stats`, `Backend::svc_id`.
    pub svc_id: u32,
    /// Number of slots of this service's lookup table; 0 means no backend can take new flows.
    pub lut_size: u32,
    /// sessionAffinity ClientIP timeout in seconds; 0 disables affinity.
    pub affinity_timeout: u32,
    /// `svc_flags::*`.
    pub flags: u16,
    /// `kind::*`.
    pub kind: u8,
    /// `algorithm::*`.
    pub algorithm: u8,
    /// Backends that may take new flows (display only).
    pub backend_count: u16,
    /// Slots of the weighted list of the same backends that follows a Maglev table, from slot
    /// `pick_base(lut_size)`: the socket hook picks one of these at random (a line or two,
    /// warm from the last connect) rather than a random slot of the whole table (a cold line
    /// of 64 KiB at every connect). 0: picks use the table itself (a random-algorithm table
    /// is that list).
    pub pick_len: u16,
}

/// Value of `xlb_backends` (`xlb_backends6` with `A = Ipv6`; key: backend id, `u32`, never
/// 0, one id space for both).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend<A = Ipv4> {
    /// Endpoint address, network order.
    pub addr: A,
    /// Endpoint port (resolved targetPort), host order.
    pub port: u16,
    /// `backend_flags::*`.
    pub flags: u8,
    /// Zone index (0 = unknown), for topology-aware routing.
    pub zone: u8,
    /// The service this backend belongs to; a conntrack entry whose backend no longer carries
    /// its `svc_id` re-selects.
    pub svc_id: u32,
    /// Relative weight (display; weights are already folded into the lookup table).
    pub weight: u16,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Slots per lookup-table chunk (a power of two, so the in-chunk index is a mask).
pub const LUT_CHUNK_SLOTS: usize = 1024;

/// Element of a service's table (an inner array of `xlb_lut`, indexed by slot /
/// `LUT_CHUNK_SLOTS`): backend ids for `LUT_CHUNK_SLOTS` consecutive slots. The inner arrays
/// are mmapable, so the agent writes a whole table with one copy and swaps it in atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LutChunk {
    /// Backend id per slot (0 = unused slot past `lut_size`).
    pub backend_ids: [u32; LUT_CHUNK_SLOTS],
}

/// Key of `xlb_affinity` (`xlb_affinity6` with `A = Ipv6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey<A = Ipv4> {
    /// Service id.
    pub svc_id: u32,
    /// Client address, network order.
    pub client: A,
}

/// Value of `xlb_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    /// Backend the client is bound to.
    pub backend_id: u32,
    /// Last use, seconds of CLOCK_MONOTONIC.
    pub last_used: u32,
}

/// Data part of an `xlb_srcranges` LPM key; the prefix length covers all 32 bits of `svc_id`
/// plus the CIDR's own length (`xlb_srcranges6` with `A = Ipv6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrcRangeKey<A = Ipv4> {
    /// Service id, big-endian so that it forms the leading bits of the prefix.
    pub svc_id_be: u32,
    /// Client network, network order.
    pub addr: A,
}

/// Maximum length of a service name in `xlb_svc_info`.
pub const SVC_NAME_LEN: usize = 112;

/// Value of `xlb_svc_info` (key: service id): what the agent programmed, for the CLI and for
/// the next agent to adopt without rewriting what did not change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcInfo {
    /// Fingerprint of the lookup table's inputs (algorithm, size, seed, backends and ids).
    pub lut_fingerprint: u64,
    /// `namespace/name:port/PROTO[ (variant)]`, NUL padded (truncated if longer).
    pub name: [u8; SVC_NAME_LEN],
    /// Frontends of this service (display).
    pub frontends: u16,
    /// `ServiceValue::pick_len` of the table.
    pub pick_len: u16,
    /// `ServiceValue::lut_size` of the table in `xlb_lut` (0 = none); the table holds
    /// `table_slots(lut_len, pick_len)` slots.
    pub lut_len: u32,
}

/// First slot of the pick list that follows a table of `lut_size` slots (the next chunk).
#[inline(always)]
pub const fn pick_base(lut_size: u32) -> u32 {
    lut_size.div_ceil(LUT_CHUNK_SLOTS as u32) * LUT_CHUNK_SLOTS as u32
}

/// Slots written to `xlb_lut` for a table of `lut_size` slots and a pick list of `pick_len`.
pub const fn table_slots(lut_size: u32, pick_len: u16) -> u32 {
    if pick_len == 0 {
        lut_size
    } else {
        pick_base(lut_size) + pick_len as u32
    }
}
