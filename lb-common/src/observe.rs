//! What the datapath reports: counters and drop reasons, per-service statistics, monitor
//! events and the `xlb explain` trace.

use crate::{Address, Ipv4};

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
    /// Frames an uplink's XDP_TX could not send (counted by the tracepoint programs; the
    /// device falls back to tc, see `dev_flags::TX_FALLBACK`).
    pub const XDP_TX_ERROR: u32 = 9;
    /// A packet with TTL 1 would have been forwarded: an ICMP time exceeded went back.
    pub const TTL_EXCEEDED: u32 = 10;
    /// A packet with DF set too big for the next hop's MTU: an ICMP fragmentation needed went
    /// back.
    pub const FRAG_NEEDED: u32 = 11;
    /// An address in a service CIDR (`--service-cidrs`) that no Service owns, as kube-proxy's
    /// nftables mode drops it.
    pub const UNOWNED_SERVICE_IP: u32 = 12;
    /// Number of reasons (exclusive bound).
    pub const MAX: u32 = 13;

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
            XDP_TX_ERROR => "xdp_tx_error",
            TTL_EXCEEDED => "ttl_exceeded",
            FRAG_NEEDED => "frag_needed",
            UNOWNED_SERVICE_IP => "unowned_service_ip",
            _ => "unknown",
        }
    }
}

/// Indexes of `xlb_counters` (a per-CPU array of `u64`).
pub mod counter {
    /// Packets seen by any xlb program.
    pub const PACKETS: u32 = 0;
    /// Neither IPv4 nor IPv6 (passed).
    pub const NOT_IP: u32 = 1;
    /// Not for a frontend nor a reply of a translated flow (passed).
    pub const NOT_SERVICE: u32 = 2;
    /// Truncated or malformed headers (passed untouched).
    pub const MALFORMED: u32 = 3;
    /// Later fragments of a datagram whose first fragment was not seen (passed untouched:
    /// nothing says which flow they belong to).
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
    /// Flows confirmed by their first reply (moved from `xlb_ct_new` to `xlb_ct`).
    pub const CT_CONFIRMED: u32 = 16;
    /// Packets of a flow in mid-stream (a TCP segment without SYN) that had no conntrack
    /// entry: the flow's state was lost (evicted, or the flow predates the datapath). The
    /// flow is picked up again (Maglev gives the same backend while the backends are the
    /// same); this counts how often state is lost.
    pub const CT_MISSING: u32 = 17;
    /// RSTs whose sequence number is not the one the receiver expects: forwarded (the endpoint
    /// decides, and answers a challenge ACK) but the flow is not closed.
    pub const RST_IGNORED: u32 = 18;
    /// Fragments translated: first fragments (their ports recorded) and later ones.
    pub const FRAG_XLATE: u32 = 19;
    /// ICMP errors the datapath sent itself (fragmentation needed, time exceeded) about a
    /// packet it would have forwarded.
    pub const ICMP_SENT: u32 = 20;
    /// A stage program could not be tail-called (a datapath not fully loaded): the packet
    /// passed untranslated.
    pub const STAGE_MISSING: u32 = 21;
    /// First drop counter; drop reason `r` is counted at `DROP_BASE + r`. Counters below it
    /// may be added without moving any other.
    pub const DROP_BASE: u32 = 32;
    /// Entries of `xlb_counters` (room for new counters and reasons without a layout change).
    pub const SLOTS: u32 = 64;
    /// Number of counters.
    pub const MAX: u32 = DROP_BASE + super::drop_reason::MAX;

    /// Human-readable name of a counter index.
    pub const fn name(index: u32) -> &'static str {
        match index {
            PACKETS => "packets",
            NOT_IP => "not_ip",
            NOT_SERVICE => "not_service",
            MALFORMED => "malformed",
            FRAGMENT => "fragment_untracked",
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
            CT_CONFIRMED => "ct_confirmed",
            CT_MISSING => "ct_missing",
            RST_IGNORED => "rst_ignored",
            FRAG_XLATE => "frag_xlate",
            ICMP_SENT => "icmp_sent",
            STAGE_MISSING => "stage_missing",
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

/// A record in `xlb_events`: `Event` (48 bytes) for an IPv4 flow, `Event<Ipv6>` (80 bytes)
/// for an IPv6 one; a reader tells them apart by the record's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<A: Address = Ipv4> {
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
    pub saddr: A,
    /// Frontend address.
    pub daddr: A,
    /// Client port.
    pub sport: u16,
    /// Frontend port.
    pub dport: u16,
    /// Service id (0 if unknown).
    pub svc_id: u32,
    /// Backend id (0 if none).
    pub backend_id: u32,
    /// Backend address.
    pub backend_addr: A,
    /// Backend port.
    pub backend_port: u16,
    /// Explicit padding.
    pub _pad: A::EventPad,
}

/// What the datapath decided for one packet; written to `xlb_trace` only by the `xlb explain`
/// instance of the programs (their `TRACE` global is set), never by the attached ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Set when the packet parsed as IPv4 or IPv6 TCP/UDP/SCTP, or ICMP.
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

#[cfg(test)]
mod tests {
    use super::*;

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
