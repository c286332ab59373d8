//! The only contract between the xlb datapath (`lb-ebpf`) and user space (`lb-userspace`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, no `bool`/`Option`/enum fields,
//! and a compile-time size assertion. Byte order is fixed per field:
//! - IPv4 addresses are `[u8; 4]` in network order (the packet's own bytes), so `bpftool` prints
//!   them as `[10,96,0,10]`;
//! - ports are `u16` in **host** order, so `bpftool` prints `80`, and the datapath converts once.
//!
//! Changing any type here changes [`LAYOUT_VERSION`]; the agent refuses to adopt pinned maps whose
//! version or sizes differ (see `lb-userspace/src/bpf/pins.rs`).
#![no_std]

/// Version of the map layout below. Bump on any change to a key, value, map kind or meaning.
pub const LAYOUT_VERSION: u32 = 3;

/// An IPv4 address as the bytes found in the packet (network order).
pub type Ipv4 = [u8; 4];

/// Map names as the kernel sees them (at most 15 characters) and as they are pinned.
pub mod map_names {
    /// Frontends: (address, port, protocol, scope) → service.
    pub const SERVICES: &str = "xlb_services";
    /// Backends by id.
    pub const BACKENDS: &str = "xlb_backends";
    /// Backend lookup tables (Maglev or random): service id → that service's own table.
    pub const LUT: &str = "xlb_lut";
    /// Connection tracking, both directions of every translated flow.
    pub const CONNTRACK: &str = "xlb_ct";
    /// ClientIP session affinity.
    pub const AFFINITY: &str = "xlb_affinity";
    /// loadBalancerSourceRanges (LPM trie).
    pub const SRC_RANGES: &str = "xlb_srcranges";
    /// Global counters by reason (per CPU).
    pub const COUNTERS: &str = "xlb_counters";
    /// Per-service packet/byte/flow counters (per CPU).
    pub const SVC_STATS: &str = "xlb_svc_stats";
    /// Service names for the CLI, written by the agent only.
    pub const SVC_INFO: &str = "xlb_svc_info";
    /// Agent-set configuration (one entry).
    pub const CONFIG: &str = "xlb_config";
    /// Datapath events for `xlb monitor`.
    pub const EVENTS: &str = "xlb_events";
    /// Decision trace of the last `xlb explain` run (per CPU, one entry).
    pub const TRACE: &str = "xlb_trace";
    /// Socket-level translations: the Service a TCP socket dialled, in the slot of its cookie.
    pub const SOCK: &str = "xlb_sock";
    /// Bitmap of frontend (address, port, protocol) hashes, tested before the services lookup.
    pub const FE_FILTER: &str = "xlb_fe_filter";
    /// Bitmap of backend (address, port) hashes, tested before the conntrack reply lookup.
    pub const BE_FILTER: &str = "xlb_be_filter";
    /// Backends that may have translated flows (set by the datapath), tested after the backend
    /// filter: a backend only ever reached through socket-level load balancing has no reply
    /// to look up.
    pub const BE_NAT: &str = "xlb_be_nat";

    /// Every map, in the order the loader pins them.
    pub const ALL: [&str; 16] = [
        SERVICES, BACKENDS, LUT, CONNTRACK, AFFINITY, SRC_RANGES, COUNTERS, SVC_STATS, SVC_INFO,
        CONFIG, EVENTS, TRACE, SOCK, FE_FILTER, BE_FILTER, BE_NAT,
    ];
}

/// Program names (function names in `lb-ebpf`, at most 15 characters).
pub mod prog_names {
    /// tc ingress on pod-facing devices: pod → Service (east-west), replies from local backends.
    pub const POD_INGRESS: &str = "xlb_pod_ingress";
    /// tc ingress on uplinks: what XDP passed or could not finish (replies, fallback frontends).
    pub const HOST_INGRESS: &str = "xlb_host_ingres";
    /// XDP on uplinks: north-south frontends and their replies.
    pub const XDP: &str = "xlb_xdp";
    /// Parse-and-pass program: the benchmark floor (never attached).
    pub const FLOOR: &str = "xlb_floor";
    /// XDP benchmark floor: parse, swap MACs, transmit back.
    pub const FLOOR_XDP: &str = "xlb_floor_xdp";
    /// XDP live-frames generator of the throughput benchmark.
    pub const GEN: &str = "xlb_gen";
    /// Drops what returns to the generator's device (throughput benchmark).
    pub const SINK: &str = "xlb_sink";
    /// cgroup connect4: a TCP connect() to a ClusterIP goes to a backend (socket-level LB).
    pub const CONNECT4: &str = "xlb_connect4";
    /// cgroup getpeername4: a socket translated at connect() reports the ClusterIP as its peer.
    pub const PEERNAME4: &str = "xlb_peername4";
}

/// Default capacities (each overridable by agent flags at load time).
pub mod capacity {
    /// Frontend entries.
    pub const SERVICES: u32 = 65_536;
    /// Service ids (backend sets); also the size of the per-service stats array.
    pub const SVC_IDS: u32 = 65_536;
    /// Backend entries.
    pub const BACKENDS: u32 = 262_144;
    /// Chunks of the inner-table template; tables of any size are accepted (BPF_F_INNER_MAP).
    pub const LUT_TEMPLATE_CHUNKS: u32 = 16;
    /// Conntrack entries (two per flow).
    pub const CONNTRACK: u32 = 524_288;
    /// Session-affinity entries.
    pub const AFFINITY: u32 = 65_536;
    /// Source-range prefixes.
    pub const SRC_RANGES: u32 = 16_384;
    /// Ring buffer bytes for events.
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Slots of socket-level translations (a power of two: a socket's slot is its cookie's low
    /// bits). A record may be overwritten once the node's cookie counter moved this far past it.
    pub const SOCK_SLOTS: u32 = 1 << 19;
}

/// The address filters (`xlb_fe_filter`, `xlb_be_filter`): one bit per hash of a frontend's
/// (address, port, protocol) or a backend's (address, port, 0). A clear bit proves there is no
/// such key, so a packet skips the hash lookup; a set bit may be a collision (one lookup more).
pub mod filter {
    use super::Ipv4;

    /// log2 of the bits per filter: 2^20 bits (128 KiB), ~1% false positives at 10,000 keys.
    pub const BITS_LOG2: u32 = 20;
    /// u64 words per filter.
    pub const WORDS: u32 = 1 << (BITS_LOG2 - 6);
    /// log2 of the bits of an address's region (512 bytes, eight cache lines): every key of an
    /// address is in its region, the port picking the bit.
    pub const REGION_LOG2: u32 = 12;

    /// The bit of (`addr` as packet bytes, `port` host order, `proto`; 0 for backends).
    ///
    /// Address-major: the address alone picks a region, so the packets between two addresses
    /// read the same few cache lines whatever their (ephemeral) ports, and those lines stay
    /// warm from one connection to the next; a filter bit keyed on the port as well lands on
    /// a cold line at every new port. A region of eight lines, not one, keeps an address with
    /// many keys (a node address with its NodePorts) from filling its bits.
    #[inline(always)]
    pub fn bit(addr: Ipv4, port: u16, proto: u8) -> u32 {
        let mut a = u32::from_be_bytes(addr).wrapping_mul(0x9e37_79b1);
        a ^= a >> 15;
        a = a.wrapping_mul(0xc2b2_ae3d);
        a ^= a >> 13;
        let region = a >> (32 - (BITS_LOG2 - REGION_LOG2));
        // The port and protocol, mixed with the address hash so that two addresses sharing a
        // region do not collide on every port alike.
        let mut p = (u32::from(port) | (u32::from(proto) << 16)).wrapping_mul(0x85eb_ca77) ^ a;
        p ^= p >> 16;
        p = p.wrapping_mul(0x7feb_352d);
        p ^= p >> 15;
        (region << REGION_LOG2) | (p >> (32 - REGION_LOG2))
    }

    /// log2 of the slots of the NAT'd-backends map (`xlb_be_nat`): one u64 per word (64 bits)
    /// of the backend filter, 128 KiB.
    pub const NAT_SLOTS_LOG2: u32 = 14;
    /// Slots per map value (one 64-byte value).
    pub const NAT_SLOTS_PER_VALUE: u32 = 8;
    /// Values of the NAT'd-backends map.
    pub const NAT_VALUES: u32 = (1 << NAT_SLOTS_LOG2) / NAT_SLOTS_PER_VALUE;
    /// Backend-filter bits per NAT slot.
    pub const BITS_PER_NAT_SLOT: u32 = 1 << (BITS_LOG2 - NAT_SLOTS_LOG2);

    /// The NAT slot of backend-filter bit `bit`.
    #[inline(always)]
    pub fn nat_slot(bit: u32) -> u32 {
        bit / BITS_PER_NAT_SLOT
    }

    /// The NAT slot of backend (`addr` as packet bytes, `port` host order).
    #[inline(always)]
    pub fn backend_nat_slot(addr: Ipv4, port: u16) -> u32 {
        nat_slot(bit(addr, port, 0))
    }
}

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

/// Frontend key of `xlb_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend address (VIP, node IP, LB IP or external IP), network order.
    pub addr: Ipv4,
    /// Frontend port, host order.
    pub port: u16,
    /// IP protocol (`proto::*`).
    pub proto: u8,
    /// `scope::*`.
    pub scope: u8,
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

/// Value of `xlb_backends` (key: backend id, `u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Endpoint address, network order.
    pub addr: Ipv4,
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

/// Conntrack direction (`CtKey::dir`).
pub mod ct_dir {
    /// Client → frontend, as the client sent it.
    pub const FORWARD: u8 = 1;
    /// Backend → client (or → SNAT address), as the backend sent it.
    pub const REPLY: u8 = 2;
}

/// Key of `xlb_ct`: the packet's own 5-tuple before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// Source address, network order.
    pub saddr: Ipv4,
    /// Destination address, network order.
    pub daddr: Ipv4,
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
    /// RST, or FIN in both directions: expires fast; a new SYN starts a new flow.
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
}

/// Value of `xlb_ct`: what to rewrite for packets matching the key, and the flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    /// Service id at selection time.
    pub svc_id: u32,
    /// Selected backend id.
    pub backend_id: u32,
    /// Creation time, seconds of CLOCK_MONOTONIC.
    pub created: u32,
    /// Expiry time, seconds of CLOCK_MONOTONIC; an expired entry counts as absent.
    pub expires: u32,
    /// New source address when `XLATE_SRC`.
    pub nat_saddr: Ipv4,
    /// New destination address when `XLATE_DST`.
    pub nat_daddr: Ipv4,
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
}

/// `CtValue::route_flags`.
pub mod route_flags {
    /// The route fields hold a lookup result.
    pub const CACHED: u8 = 1 << 0;
    /// The neighbour was resolved: `route_macs` are valid.
    pub const MACS: u8 = 1 << 1;
}

/// Key of `xlb_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Service id.
    pub svc_id: u32,
    /// Client address, network order.
    pub client: Ipv4,
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
/// plus the CIDR's own length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrcRangeKey {
    /// Service id, big-endian so that it forms the leading bits of the prefix.
    pub svc_id_be: u32,
    /// Client network, network order.
    pub addr: Ipv4,
}

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

/// `Config::flags`.
pub mod config_flags {
    /// Emit drop events to `xlb_events`.
    pub const MONITOR_DROPS: u32 = 1 << 0;
    /// Emit new-flow decisions to `xlb_events`.
    pub const MONITOR_FLOWS: u32 = 1 << 1;
    /// Every monitor flag.
    pub const MONITOR_MASK: u32 = MONITOR_DROPS | MONITOR_FLOWS;
}

/// Value of `xlb_svc_stats` (index: service id), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcStats {
    /// Client → backend packets translated.
    pub fwd_packets: u64,
    /// Client → backend bytes translated.
    pub fwd_bytes: u64,
    /// Backend → client packets reverse-translated.
    pub rev_packets: u64,
    /// Backend → client bytes reverse-translated.
    pub rev_bytes: u64,
    /// New flows (backend selections).
    pub new_flows: u64,
    /// Packets dropped for this service (no backend, source range, …).
    pub drops: u64,
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

/// Hook a packet was seen at (`CtValue::hook`, `Event::hook`).
pub mod hook {
    /// tc ingress on a pod-facing device.
    pub const POD: u8 = 1;
    /// tc ingress on an uplink.
    pub const HOST: u8 = 2;
    /// XDP on an uplink.
    pub const XDP: u8 = 3;
}

/// Why a packet was dropped. Counted under `counter::DROP_BASE + reason`.
pub mod drop_reason {
    /// The service has no backend that may take a new flow.
    pub const NO_BACKEND: u32 = 1;
    /// The client is outside loadBalancerSourceRanges.
    pub const SOURCE_RANGE: u32 = 2;
    /// externalTrafficPolicy Local and no endpoint on this node.
    pub const NO_LOCAL_BACKEND: u32 = 3;
    /// No free SNAT port.
    pub const SNAT_EXHAUSTED: u32 = 4;
    /// A packet rewrite helper failed.
    pub const XLATE_ERROR: u32 = 5;
    /// A conntrack entry could not be written.
    pub const CT_INSERT: u32 = 6;
    /// A rewritten SCTP port (the CRC32c would be wrong).
    pub const SCTP_PORT_REWRITE: u32 = 7;
    /// SNAT needed but the agent has no node address to use (`--node-ip`/`--snat-addr`).
    pub const NO_SNAT_ADDRESS: u32 = 8;
    /// Number of reasons (exclusive bound).
    pub const MAX: u32 = 9;

    /// Human-readable name of a reason.
    pub const fn name(reason: u32) -> &'static str {
        match reason {
            NO_BACKEND => "no_backend",
            SOURCE_RANGE => "source_range",
            NO_LOCAL_BACKEND => "no_local_backend",
            SNAT_EXHAUSTED => "snat_exhausted",
            XLATE_ERROR => "xlate_error",
            CT_INSERT => "ct_insert",
            SCTP_PORT_REWRITE => "sctp_port_rewrite",
            NO_SNAT_ADDRESS => "no_snat_address",
            _ => "unknown",
        }
    }
}

/// Indexes of `xlb_counters` (a per-CPU array of `u64`).
pub mod counter {
    /// Packets seen by any xlb program.
    pub const PACKETS: u32 = 0;
    /// Not IPv4 (passed).
    pub const NOT_IPV4: u32 = 1;
    /// Not for a frontend nor a reply of a translated flow (passed).
    pub const NOT_SERVICE: u32 = 2;
    /// Truncated or malformed headers (passed untouched).
    pub const MALFORMED: u32 = 3;
    /// IP fragments (passed untouched).
    pub const FRAGMENT: u32 = 4;
    /// Conntrack hit for a frontend packet.
    pub const CT_HIT: u32 = 5;
    /// New flow: backend selected.
    pub const CT_NEW: u32 = 6;
    /// Conntrack entry whose backend left the service: re-selected.
    pub const CT_RESELECT: u32 = 7;
    /// Client → backend translations.
    pub const XLATE_FWD: u32 = 8;
    /// Backend → client reverse translations.
    pub const XLATE_REV: u32 = 9;
    /// Hairpin flows created.
    pub const HAIRPIN: u32 = 10;
    /// SNAT flows created.
    pub const SNAT: u32 = 11;
    /// New flows that followed session affinity.
    pub const AFFINITY_HIT: u32 = 12;
    /// ICMP errors translated back to the frontend.
    pub const ICMP_XLATE: u32 = 13;
    /// Packets handed to the kernel stack after translation.
    pub const PASS: u32 = 14;
    /// TCP connects to a ClusterIP translated at the socket (cgroup connect4).
    pub const SOCK_XLATE: u32 = 15;
    /// First drop counter; drop reason `r` is counted at `DROP_BASE + r`.
    pub const DROP_BASE: u32 = 16;
    /// Number of counters.
    pub const MAX: u32 = DROP_BASE + super::drop_reason::MAX;

    /// Human-readable name of a counter index.
    pub const fn name(index: u32) -> &'static str {
        match index {
            PACKETS => "packets",
            NOT_IPV4 => "not_ipv4",
            NOT_SERVICE => "not_service",
            MALFORMED => "malformed",
            FRAGMENT => "fragment",
            CT_HIT => "ct_hit",
            CT_NEW => "ct_new",
            CT_RESELECT => "ct_reselect",
            XLATE_FWD => "xlate_fwd",
            XLATE_REV => "xlate_rev",
            HAIRPIN => "hairpin",
            SNAT => "snat",
            AFFINITY_HIT => "affinity_hit",
            ICMP_XLATE => "icmp_xlate",
            PASS => "pass",
            SOCK_XLATE => "sock_xlate",
            i if i > DROP_BASE && i < MAX => super::drop_reason::name(i - DROP_BASE),
            _ => "",
        }
    }
}

/// Kind of `Event`.
pub mod event_kind {
    /// A packet was dropped (`reason`).
    pub const DROP: u8 = 1;
    /// A new flow got a backend.
    pub const NEW_FLOW: u8 = 2;
}

/// How a backend was chosen (`Event::selection`, `Trace::selection`).
pub mod selection {
    /// Existing conntrack entry.
    pub const CONNTRACK: u8 = 1;
    /// Session affinity entry.
    pub const AFFINITY: u8 = 2;
    /// Maglev slot of the flow hash.
    pub const MAGLEV: u8 = 3;
    /// Random slot.
    pub const RANDOM: u8 = 4;
}

/// A record in `xlb_events`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Monotonic time, nanoseconds.
    pub ts_ns: u64,
    /// `event_kind::*`.
    pub kind: u8,
    /// `hook::*`.
    pub hook: u8,
    /// IP protocol.
    pub proto: u8,
    /// `selection::*` for new flows.
    pub selection: u8,
    /// `drop_reason::*` for drops.
    pub reason: u32,
    /// Client address.
    pub saddr: Ipv4,
    /// Frontend address.
    pub daddr: Ipv4,
    /// Client port.
    pub sport: u16,
    /// Frontend port.
    pub dport: u16,
    /// Service id (0 if unknown).
    pub svc_id: u32,
    /// Backend id (0 if none).
    pub backend_id: u32,
    /// Backend address.
    pub backend_addr: Ipv4,
    /// Backend port.
    pub backend_port: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
}

/// What the datapath decided for one packet; written to `xlb_trace` only by the `xlb explain`
/// instance of the programs (their `TRACE` global is set), never by the attached ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Set when the packet parsed as IPv4 TCP/UDP/SCTP/ICMP.
    pub parsed: u8,
    /// `scope::*` of the frontend entry that matched, 0xff when none.
    pub scope: u8,
    /// `selection::*` (0 if no backend was chosen).
    pub selection: u8,
    /// 1 when the packet matched the reply side of a tracked flow.
    pub reply: u8,
    /// Service id of the matching frontend.
    pub svc_id: u32,
    /// Backend id chosen.
    pub backend_id: u32,
    /// Lookup-table slot used (Maglev or random).
    pub slot: u32,
    /// Flow hash.
    pub hash: u32,
    /// `drop_reason::*` if dropped.
    pub drop_reason: u32,
    /// Program return code.
    pub verdict: i32,
    /// `ct_flags::*` of the (would-be) conntrack entry.
    pub ct_flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// Device the packet leaves through (redirect or XDP_TX); 0 when handed to the stack.
    pub out_ifindex: u32,
}

/// Value of `xlb_sock`: a TCP socket translated at connect(), in slot
/// `cookie & (capacity::SOCK_SLOTS - 1)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockXlate {
    /// The writing socket's cookie XOR a mix of the other fields (`seal`, `cookie`): a record
    /// torn between two sockets writing the slot at once names neither. Zero: never written.
    pub tag: u64,
    /// The ClusterIP the socket dialled.
    pub vip: Ipv4,
    /// The backend it was sent to.
    pub backend: Ipv4,
    /// The dialled port, network order (as in `bpf_sock_addr::user_port`).
    pub vip_port_be: u16,
    /// The backend's port, network order.
    pub backend_port_be: u16,
    /// Service id at connect() time.
    pub svc_id: u32,
}

impl SockXlate {
    /// The other fields mixed into 64 bits (0 for a zeroed record).
    #[inline(always)]
    fn mix(&self) -> u64 {
        let a = u64::from(u32::from_ne_bytes(self.vip))
            | (u64::from(u32::from_ne_bytes(self.backend)) << 32);
        let b = u64::from(self.vip_port_be)
            | (u64::from(self.backend_port_be) << 16)
            | (u64::from(self.svc_id) << 32);
        let h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        h ^ (h >> 29)
    }

    /// Sets `tag` for the socket with `cookie`.
    #[inline(always)]
    pub fn seal(&mut self, cookie: u64) {
        self.tag = cookie ^ self.mix();
    }

    /// The cookie of the socket that wrote this record; 0 if none did, and no socket's cookie
    /// (almost surely) if the record is torn.
    #[inline(always)]
    pub fn cookie(&self) -> u64 {
        self.tag ^ self.mix()
    }
}

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for every map type, user space only.
    use super::*;
    macro_rules! pod {
        ($($t:ty),* $(,)?) => { $(
            // SAFETY: `#[repr(C)]`, only integer fields and arrays, explicit padding: every bit
            // pattern is valid and there are no implicit padding bytes.
            unsafe impl aya::Pod for $t {}
        )* };
    }
    pod!(
        ServiceKey,
        ServiceValue,
        Backend,
        LutChunk,
        CtKey,
        CtValue,
        AffinityKey,
        AffinityValue,
        SrcRangeKey,
        Config,
        SvcStats,
        SvcInfo,
        Event,
        Trace,
        SockXlate,
    );
}

// Layout checks: a change here is a contract change (bump LAYOUT_VERSION).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<SockXlate>() == 24);
    assert!(size_of::<ServiceValue>() == 20);
    assert!(size_of::<Backend>() == 16);
    assert!(size_of::<LutChunk>() == 4 * LUT_CHUNK_SLOTS);
    assert!(LUT_CHUNK_SLOTS.is_power_of_two());
    assert!(size_of::<CtKey>() == 16);
    assert!(offset_of!(CtKey, proto) == 12);
    assert!(size_of::<CtValue>() == 52);
    assert!(offset_of!(CtValue, state) == 28);
    assert!(offset_of!(CtValue, route_ifindex) == 32);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 8);
    assert!(size_of::<SrcRangeKey>() == 8);
    assert!(size_of::<Config>() == 44);
    assert!(size_of::<SvcStats>() == 48);
    assert!(size_of::<SvcInfo>() == 8 + SVC_NAME_LEN + 8);
    assert!(size_of::<Event>() == 48);
    assert!(size_of::<Trace>() == 36);
    assert!(counter::MAX <= 32);
};

/// The flow hash of a 5-tuple: Jenkins' lookup3 final mix (the kernel's `jhash_3words`).
///
/// Used by the datapath for Maglev slots and by user space (`xlb explain`, tests) to predict
/// them. `saddr`/`daddr` are the packet's bytes; ports are host order. Every node computes the
/// same value for the same flow when `seed` is equal.
#[inline(always)]
pub fn flow_hash(saddr: Ipv4, daddr: Ipv4, sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    const JHASH_INITVAL: u32 = 0xdead_beef;
    let init = seed
        .wrapping_add(JHASH_INITVAL)
        .wrapping_add(3 << 2)
        .wrapping_add(u32::from(proto));
    let mut a = u32::from_be_bytes(saddr).wrapping_add(init);
    let mut b = u32::from_be_bytes(daddr).wrapping_add(init);
    let mut c = ((u32::from(sport) << 16) | u32::from(dport)).wrapping_add(init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Internet checksum arithmetic shared by the XDP datapath and user-space tests.
pub mod csum {
    /// Folds a 32-bit one's-complement accumulator into 16 bits.
    #[inline(always)]
    pub fn fold(mut s: u32) -> u16 {
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        s as u16
    }

    /// Incrementally updates checksum `sum` when a 32-bit field changes from `from` to `to`
    /// (RFC 1624: HC' = ~(~HC + ~m + m')). All three values are as loaded from packet memory;
    /// the one's-complement sum is byte-order independent.
    #[inline(always)]
    pub fn replace4(sum: u16, from: u32, to: u32) -> u16 {
        let mut s = u32::from(!sum);
        s += (!from >> 16) & 0xffff;
        s += !from & 0xffff;
        s += to >> 16;
        s += to & 0xffff;
        !fold(s)
    }

    /// One's-complement sum of `data` as big-endian 16-bit words, added to `init`.
    pub fn sum_be(data: &[u8], init: u32) -> u32 {
        let mut s = init;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            s = s.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
            s = (s & 0xffff) + (s >> 16);
        }
        if let [last] = chunks.remainder() {
            s = s.wrapping_add(u32::from(*last) << 8);
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sock_record_names_its_writer_and_a_torn_one_nobody() {
        let rec = |vip: u8, backend: u8, cookie| {
            let mut r = SockXlate {
                tag: 0,
                vip: [10, 96, 0, vip],
                backend: [10, 244, 0, backend],
                vip_port_be: 80u16.to_be(),
                backend_port_be: 8080u16.to_be(),
                svc_id: u32::from(vip),
            };
            r.seal(cookie);
            r
        };
        let zeroed = SockXlate {
            tag: 0,
            vip: [0; 4],
            backend: [0; 4],
            vip_port_be: 0,
            backend_port_be: 0,
            svc_id: 0,
        };
        assert_eq!(zeroed.cookie(), 0, "a slot never written names no socket");
        let (s, t) = (rec(1, 5, 7), rec(2, 5, 7 + u64::from(capacity::SOCK_SLOTS)));
        assert_eq!(s.cookie(), 7);
        assert_eq!(t.cookie(), 7 + u64::from(capacity::SOCK_SLOTS));
        // S's tag with T's fields (two writers at once, or a read while T takes the slot).
        let torn = SockXlate { tag: s.tag, ..t };
        assert_ne!(torn.cookie(), s.cookie());
        assert_ne!(torn.cookie(), t.cookie());
        let torn = SockXlate {
            tag: s.tag,
            vip: t.vip,
            ..s
        };
        assert_ne!(torn.cookie(), s.cookie());
    }

    #[test]
    fn flow_hash_depends_on_every_field_and_seed() {
        let base = flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::TCP, 7);
        assert_eq!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 2], [10, 96, 0, 10], 40000, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 11], 40000, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40001, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 81, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::UDP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::TCP, 8)
        );
    }

    #[test]
    fn filter_bits_spread_sequential_addresses_and_ports() {
        // 10,000 ClusterIPs in a row on port 80, and 30,000 pod endpoints (3 ports each): the
        // shape of a real cluster. Collisions must stay near what a random hash gives.
        // A bitmap of the filter's size (no std here).
        let mut seen = [0u64; filter::WORDS as usize];
        let (mut keys, mut set) = (0, 0);
        let mut put = |b: u32| {
            let (w, m) = ((b >> 6) as usize, 1u64 << (b & 63));
            if seen[w] & m == 0 {
                set += 1;
            }
            seen[w] |= m;
        };
        for i in 0..10_000u32 {
            let vip = (u32::from_be_bytes([10, 96, 0, 0]) + i).to_be_bytes();
            put(filter::bit(vip, 80, proto::TCP));
            keys += 1;
            for port in [8080, 8443, 9090] {
                let pod = (u32::from_be_bytes([10, 244, 0, 0]) + i).to_be_bytes();
                put(filter::bit(pod, port, 0));
                keys += 1;
            }
        }
        // A random hash of 40k keys into 2^20 bits leaves ~760 collisions; allow twice that.
        assert!(keys - set < 1_600, "{} collisions", keys - set);
        // An address's keys stay in its region (the lines its packets read).
        let region = |b: u32| b >> filter::REGION_LOG2;
        let pod = [10, 244, 1, 7];
        for port in [1u16, 80, 32768, 45000, 60999, 65535] {
            assert_eq!(
                region(filter::bit(pod, port, 0)),
                region(filter::bit(pod, 8080, 0))
            );
        }
        // A node address with 300 NodePorts fills well under half of its region's bits.
        let mut region_bits = [0u64; 1 << (filter::REGION_LOG2 - 6)];
        let node = [192, 168, 1, 10];
        for port in 30000..30300u16 {
            let b = filter::bit(node, port, proto::TCP) & ((1 << filter::REGION_LOG2) - 1);
            region_bits[(b >> 6) as usize] |= 1 << (b & 63);
        }
        let filled: u32 = region_bits.iter().map(|w| w.count_ones()).sum();
        assert!(
            filled > 270 && filled < 1 << (filter::REGION_LOG2 - 3),
            "{filled} bits"
        );
        // Each field matters.
        let b = filter::bit([10, 96, 0, 1], 80, proto::TCP);
        assert_ne!(b, filter::bit([10, 96, 0, 2], 80, proto::TCP));
        assert_ne!(b, filter::bit([10, 96, 0, 1], 81, proto::TCP));
        assert_ne!(b, filter::bit([10, 96, 0, 1], 80, proto::UDP));
    }

    #[test]
    fn incremental_checksum_matches_full_recompute() {
        // An IPv4 header, checksum field zeroed.
        let mut hdr = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 96, 0, 10,
        ];
        let full = |h: &[u8]| !csum::fold(csum::sum_be(h, 0));
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u32::from_ne_bytes([10, 96, 0, 10]);
        let new = u32::from_ne_bytes([10, 244, 1, 7]);
        let stored = u16::from_ne_bytes([hdr[10], hdr[11]]);
        let updated = csum::replace4(stored, old, new);
        hdr[16..20].copy_from_slice(&[10, 244, 1, 7]);
        hdr[10..12].copy_from_slice(&updated.to_ne_bytes());
        // A valid header sums to 0xffff.
        assert_eq!(csum::fold(csum::sum_be(&hdr, 0)), 0xffff);
    }

    #[test]
    fn counter_names_are_unique_and_cover_drops() {
        for i in 0..counter::MAX {
            let n = counter::name(i);
            for j in 0..i {
                if !n.is_empty() {
                    assert_ne!(n, counter::name(j), "counter {i} and {j}");
                }
            }
        }
        for r in 1..drop_reason::MAX {
            assert_eq!(counter::name(counter::DROP_BASE + r), drop_reason::name(r));
        }
    }
}
