//! Capacities of the maps and the compile-time layout checks of every shared type (a change
//! here is a contract change: bump `LAYOUT_VERSION`).

use crate::*;

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
    /// Conntrack entries of confirmed flows (two per flow).
    pub const CONNTRACK: u32 = 524_288;
    /// Conntrack entries of flows not answered yet (two per flow).
    pub const CT_NEW: u32 = 131_072;
    /// Service CIDRs the datapath guards (`--service-cidrs`).
    pub const SERVICE_CIDR_SLOTS: usize = 4;
    /// Fragmented datagrams in flight.
    pub const FRAGS: u32 = 8_192;
    /// Session-affinity entries.
    pub const AFFINITY: u32 = 65_536;
    /// Source-range prefixes.
    pub const SRC_RANGES: u32 = 16_384;
    /// Ring buffer bytes for events.
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Slots of socket-level translations (a power of two: a socket's slot is its cookie's low
    /// bits). A record may be overwritten once the node's cookie counter moved this far past it.
    pub const SOCK_SLOTS: u32 = 1 << 19;
    /// Slots of `xlb_sock6` (a power of two; IPv6 records are twice the size).
    pub const SOCK6_SLOTS: u32 = 1 << 17;
    /// Host-network UDP sockets' (socket, backend) pairs whose replies are given the ClusterIP
    /// back (LRU).
    pub const SOCK_REV: u32 = 65_536;
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
        FragKey,
        FragPorts,
        AffinityKey,
        AffinityValue,
        SrcRangeKey,
        Config,
        SvcStats,
        SvcInfo,
        Event,
        Trace,
        SockXlate,
        SockRevKey,
        SockRevValue,
        DevState,
        AgentStatus,
        ServiceKey<Ipv6>,
        Backend<Ipv6>,
        CtKey<Ipv6>,
        CtValue<Ipv6>,
        AffinityKey<Ipv6>,
        SrcRangeKey<Ipv6>,
        Config6,
        SockXlate<Ipv6>,
        SockRevKey<Ipv6>,
        SockRevValue<Ipv6>,
        Event<Ipv6>,
        FragKey6,
    );
}

// Layout checks: a change here is a contract change (bump LAYOUT_VERSION).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<SockXlate>() == 24);
    assert!(size_of::<SockRevKey>() == 16);
    assert!(size_of::<SockRevValue>() == 12);
    assert!(size_of::<SockXlate<Ipv6>>() == 48);
    assert!(size_of::<SockRevKey<Ipv6>>() == 28);
    assert!(size_of::<SockRevValue<Ipv6>>() == 24);
    assert!(size_of::<ServiceValue>() == 20);
    assert!(size_of::<Backend>() == 16);
    assert!(size_of::<LutChunk>() == 4 * LUT_CHUNK_SLOTS);
    assert!(LUT_CHUNK_SLOTS.is_power_of_two());
    assert!(size_of::<CtKey>() == 16);
    assert!(offset_of!(CtKey, proto) == 12);
    assert!(size_of::<CtValue>() == 60);
    assert!(size_of::<FragKey>() == 12);
    assert!(size_of::<FragPorts>() == 4);
    assert!(offset_of!(CtValue, state) == 28);
    assert!(offset_of!(CtValue, route_ifindex) == 32);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 8);
    assert!(size_of::<SrcRangeKey>() == 8);
    assert!(size_of::<Config>() == 44);
    assert!(size_of::<ServiceKey<Ipv6>>() == 20);
    assert!(size_of::<Backend<Ipv6>>() == 28);
    assert!(offset_of!(Backend<Ipv6>, svc_id) == 20);
    assert!(size_of::<CtKey<Ipv6>>() == 40);
    assert!(size_of::<CtValue<Ipv6>>() == 84);
    assert!(offset_of!(CtValue<Ipv6>, route_ifindex) == 56);
    assert!(size_of::<AffinityKey<Ipv6>>() == 20);
    assert!(size_of::<SrcRangeKey<Ipv6>>() == 20);
    assert!(size_of::<Config6>() == 32);
    assert!(size_of::<SvcStats>() == 48);
    assert!(size_of::<SvcInfo>() == 8 + SVC_NAME_LEN + 8);
    assert!(size_of::<Event>() == 48);
    assert!(size_of::<Event<Ipv6>>() == 80);
    assert!(size_of::<FragKey6>() == 40);
    assert!(size_of::<Trace>() == 36);
    assert!(super::drop_reason::MAX <= counter::SLOTS - counter::DROP_BASE);
    assert!(size_of::<DevState>() == 24);
    assert!(size_of::<DeviceStatus>() == 24);
    assert!(size_of::<AgentStatus>() == 64 + 32 + 2 * STATUS_TEXT + 24 * STATUS_DEVICES);
};
