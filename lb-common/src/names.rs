//! Map and program names: as the kernel sees them (at most 15 characters) and as they are
//! pinned.

/// Map names as the kernel sees them (at most 15 characters) and as they are pinned.
pub mod map_names {
    /// Frontends: (address, port, protocol, scope) → service.
    pub const SERVICES: &str = "xlb_services";
    /// Backends by id.
    pub const BACKENDS: &str = "xlb_backends";
    /// Backend lookup tables (Maglev or random): service id → that service's own table.
    pub const LUT: &str = "xlb_lut";
    /// Connection tracking of confirmed flows (a reply was seen), both directions.
    pub const CONNTRACK: &str = "xlb_ct";
    /// Connection tracking of flows not answered yet (SYN sent, one-way UDP), both directions.
    pub const CT_NEW: &str = "xlb_ct_new";
    /// Fragmented datagrams: the ports of their first fragment, for the later ones.
    pub const FRAGS: &str = "xlb_frags";
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
    /// Host-network UDP sockets: (socket cookie, backend) → the ClusterIP their replies show.
    pub const SOCK_REV: &str = "xlb_sock_rev";
    /// Bitmap of frontend (address, port, protocol) hashes, tested before the services lookup.
    pub const FE_FILTER: &str = "xlb_fe_filter";
    /// Bitmap of backend (address, port) hashes, tested before the conntrack reply lookup.
    pub const BE_FILTER: &str = "xlb_be_filter";
    /// Backends that may have translated flows (set by the datapath), tested after the backend
    /// filter: a backend only ever reached through socket-level load balancing has no reply
    /// to look up.
    pub const BE_NAT: &str = "xlb_be_nat";
    /// Uplinks running XDP: their XDP_TX errors and whether XDP must leave them to tc.
    pub const DEVICES: &str = "xlb_devices";
    /// The agent's status (one entry, written by the agent only): `xlb status` reads it.
    pub const AGENT: &str = "xlb_agent";
    /// Stage programs of the tc entry programs (every load its own, pinned by the agent once
    /// attached).
    pub const TC_STAGES: &str = "xlb_tc_stages";
    /// Stage programs of the XDP entry program.
    pub const XDP_STAGES: &str = "xlb_xdp_stages";

    /// IPv6 frontends (`ServiceKey<Ipv6>`).
    pub const SERVICES6: &str = "xlb_services6";
    /// IPv6 backends by id (the same id space as `xlb_backends`).
    pub const BACKENDS6: &str = "xlb_backends6";
    /// IPv6 connection tracking of confirmed flows.
    pub const CONNTRACK6: &str = "xlb_ct6";
    /// IPv6 connection tracking of flows not answered yet.
    pub const CT_NEW6: &str = "xlb_ct6_new";
    /// IPv6 ClientIP session affinity.
    pub const AFFINITY6: &str = "xlb_affinity6";
    /// IPv6 loadBalancerSourceRanges (LPM trie).
    pub const SRC_RANGES6: &str = "xlb_srcranges6";
    /// IPv6 hairpin and SNAT addresses (one entry).
    pub const CONFIG6: &str = "xlb_config6";
    /// Socket-level translations of IPv6 sockets to IPv6 ClusterIPs (`SockXlate<Ipv6>`).
    pub const SOCK6: &str = "xlb_sock6";
    /// Host-network IPv6 UDP sockets: (socket cookie, backend) → the ClusterIP replies show.
    pub const SOCK_REV6: &str = "xlb_sock6_rev";
    /// IPv6 fragmented datagrams' ports, for their later fragments (`FragKey6`).
    pub const FRAGS6: &str = "xlb_frags6";

    /// Every map, in the order the loader pins them.
    pub const ALL: [&str; 31] = [
        SERVICES,
        BACKENDS,
        LUT,
        CONNTRACK,
        CT_NEW,
        FRAGS,
        AFFINITY,
        SRC_RANGES,
        COUNTERS,
        SVC_STATS,
        SVC_INFO,
        CONFIG,
        EVENTS,
        TRACE,
        SOCK,
        SOCK_REV,
        FE_FILTER,
        BE_FILTER,
        BE_NAT,
        DEVICES,
        AGENT,
        SERVICES6,
        BACKENDS6,
        CONNTRACK6,
        CT_NEW6,
        AFFINITY6,
        SRC_RANGES6,
        CONFIG6,
        SOCK6,
        SOCK_REV6,
        FRAGS6,
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
    /// cgroup connect4: a TCP connect() to a ClusterIP goes to a backend (socket-level LB).
    pub const CONNECT4: &str = "xlb_connect4";
    /// cgroup getpeername4: a socket translated at connect() reports the ClusterIP as its peer.
    pub const PEERNAME4: &str = "xlb_peername4";
    /// cgroup sendmsg4: a host-network UDP datagram to a ClusterIP goes to a backend.
    pub const SENDMSG4: &str = "xlb_sendmsg4";
    /// cgroup recvmsg4: its replies show the ClusterIP as their source.
    pub const RECVMSG4: &str = "xlb_recvmsg4";
    /// Stages (tail-called from the entry programs above; see `stage`).
    pub const POD_FRONT: &str = "xlb_pod_front";
    pub const POD_BACK: &str = "xlb_pod_back";
    pub const POD_ICMP: &str = "xlb_pod_icmp";
    pub const POD_ERROR: &str = "xlb_pod_error";
    pub const HOST_FRONT: &str = "xlb_host_front";
    pub const HOST_BACK: &str = "xlb_host_back";
    pub const HOST_ICMP: &str = "xlb_host_icmp";
    pub const HOST_ERROR: &str = "xlb_host_error";
    pub const XDP_FRONT: &str = "xlb_xdp_front";
    pub const XDP_BACK: &str = "xlb_xdp_back";
    pub const XDP_ICMP: &str = "xlb_xdp_icmp";
    /// Stage programs of the tc entry programs, in `xlb_tc_stages` slot order.
    pub const TC_STAGES: [&str; 14] = [
        POD_FRONT,
        POD_BACK,
        POD_ICMP,
        POD_ERROR,
        POD_FRONT6,
        POD_BACK6,
        POD_NEW6,
        HOST_FRONT,
        HOST_BACK,
        HOST_ICMP,
        HOST_ERROR,
        HOST_FRONT6,
        HOST_BACK6,
        HOST_NEW6,
    ];
    pub const XDP_FRONT6: &str = "xlb_xdp_front6";
    pub const XDP_BACK6: &str = "xlb_xdp_back6";
    pub const XDP_NEW6: &str = "xlb_xdp_new6";
    /// Stage programs of the XDP entry program and their `xlb_xdp_stages` slots (XDP has no
    /// error stage: it leaves such packets to tc).
    pub const XDP_STAGES: [(&str, u32); 6] = [
        (XDP_FRONT, super::stage::FRONT),
        (XDP_BACK, super::stage::BACK),
        (XDP_ICMP, super::stage::ICMP),
        (XDP_FRONT6, super::stage::FRONT6),
        (XDP_BACK6, super::stage::BACK6),
        (XDP_NEW6, super::stage::NEW6),
    ];
    /// cgroup connect6: a TCP connect() to an IPv6 ClusterIP (or an IPv4 one from an
    /// IPv4-mapped address) goes to a backend.
    pub const CONNECT6: &str = "xlb_connect6";
    /// cgroup getpeername6: such a socket reports the ClusterIP as its peer.
    pub const PEERNAME6: &str = "xlb_peername6";
    /// cgroup sendmsg6: a host-network UDP datagram to an IPv6 ClusterIP goes to a backend
    /// (one to an IPv4-mapped address takes sendmsg4).
    pub const SENDMSG6: &str = "xlb_sendmsg6";
    /// cgroup recvmsg6: replies to those datagrams show the ClusterIP as their source.
    pub const RECVMSG6: &str = "xlb_recvmsg6";
    /// IPv6 stages of the tc entry programs.
    pub const POD_FRONT6: &str = "xlb_pod_front6";
    pub const POD_BACK6: &str = "xlb_pod_back6";
    pub const HOST_FRONT6: &str = "xlb_host_front6";
    pub const HOST_BACK6: &str = "xlb_host_back6";
    pub const POD_NEW6: &str = "xlb_pod_new6";
    pub const HOST_NEW6: &str = "xlb_host_new6";
    /// Raw tracepoint `xdp_bulk_tx`: frames a device's XDP_TX could not send.
    pub const TXERR_BULK: &str = "xlb_txerr_bulk";
    /// Raw tracepoint `xdp_exception`: an XDP_TX a driver refused.
    pub const TXERR_EXCEPTION: &str = "xlb_txerr_exc";
}

/// The stages of the pipeline, each its own program, tail-called by the entry program of a
/// hook: the verifier checks each program on its own (its paths and its 512-byte stack), so
/// the stages' paths add up rather than multiply. A stage's slot in its hook's program array
/// (`xlb_tc_stages`, `xlb_xdp_stages`; not pinned: every load has its own) is the hook's
/// base plus the stage.
pub mod stage {
    /// A packet to a frontend: follow its flow or start one.
    pub const FRONT: u32 = 0;
    /// A backend's reply, or a SYN reusing a tracked flow's tuple.
    pub const BACK: u32 = 1;
    /// An ICMP error about a tracked flow.
    pub const ICMP: u32 = 2;
    /// Send an ICMP error (time exceeded, fragmentation needed) instead of forwarding (tc).
    pub const ERROR: u32 = 3;
    /// An IPv6 packet to a frontend (as `FRONT`).
    pub const FRONT6: u32 = 4;
    /// An IPv6 backend's reply (as `BACK`).
    pub const BACK6: u32 = 5;
    /// An IPv6 packet that starts a flow (its frontend and the flow's old entry already
    /// looked up by `FRONT6`): the IPv6 keys and entries are too big for one program's stack.
    pub const NEW6: u32 = 6;
    /// Slots per tc hook.
    pub const PER_HOOK: u32 = 7;
    /// Slots of the XDP hook (`ERROR`'s stays empty).
    pub const XDP_STAGES: u32 = 7;
    /// Base slot of the pod tc hook in `xlb_tc_stages`.
    pub const POD_BASE: u32 = 0;
    /// Base slot of the uplink tc hook in `xlb_tc_stages`.
    pub const HOST_BASE: u32 = PER_HOOK;
    /// Base slot of the XDP hook in `xlb_xdp_stages`.
    pub const XDP_BASE: u32 = 0;
}
