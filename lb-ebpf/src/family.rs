//! The address families: what the pipeline (`lb`, `conntrack`, `lookup`, `route`, `nat`)
//! needs of IPv4 and IPv6, so that it is written once, generic over the address type, and
//! compiled once per family. Each family has its own maps (a key of one family never meets
//! the other's); the lookup tables, service ids, counters and filters are shared.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    btf_maps::{LpmTrie, LruHashMap},
};
use lb_common::{
    Address, AffinityKey, AffinityValue, Config, CtKey, CtValue, FragKey, FragKey6, FragPorts,
    Ipv4, Ipv6, SrcRangeKey, capacity, stage,
};

use crate::{
    ctx::{End, L4, Packet, RewriteError},
    maps::{
        AFFINITY, AFFINITY6, BACKENDS, BACKENDS6, Backends, CONFIG6, CONNTRACK, CONNTRACK6, CT_NEW,
        CT_NEW6, CtTable, FRAGS, FRAGS6, SERVICES, SERVICES6, SRC_RANGES, SRC_RANGES6, Scratch,
        Services,
    },
    parse::Flow,
};

/// An affinity map of a family.
pub type Affinity<A> = LruHashMap<AffinityKey<A>, AffinityValue, { capacity::AFFINITY as usize }>;
/// A fragments map of a family.
pub type Frags<K> = LruHashMap<K, FragPorts, { capacity::FRAGS as usize }>;
/// A source-ranges map of a family.
pub type SrcRanges<A> = LpmTrie<SrcRangeKey<A>, u8, { capacity::SRC_RANGES as usize }>;

/// An address family the pipeline runs on.
pub trait Family: Address {
    /// `bpf_fib_lookup`'s family (`AF_INET`, `AF_INET6`).
    const AF: u8;
    /// Bits of a source-range key's address (its LPM prefix adds 32 for the service id).
    const BITS: u32;
    /// The stages this family's packets go to (`lb_common::stage`).
    const FRONT: u32;
    const BACK: u32;
    /// A stage reads the flow in place in scratch rather than copying it to its stack (the
    /// IPv6 flow's 40-byte keys and 84-byte entries leave no room for a copy in 512 bytes).
    const FLOW_IN_SCRATCH: bool;

    fn services() -> &'static Services<Self>;
    fn backends() -> &'static Backends<Self>;
    /// Confirmed flows.
    fn ct() -> &'static CtTable<Self>;
    /// Flows not answered yet.
    fn ct_new() -> &'static CtTable<Self>;
    fn affinity() -> &'static Affinity<Self>;
    fn src_ranges() -> &'static SrcRanges<Self>;
    /// The source of hairpin flows (zero: none known).
    fn hairpin_addr(cfg: &Config) -> Self;
    /// The source of SNATed north-south flows (zero: none).
    fn snat_addr(cfg: &Config) -> Self;

    /// This family's flow in a CPU's scratch (what the entry program hands to a stage).
    fn flow_mut(s: &mut Scratch) -> &mut Flow<Self>;
    /// This family's room for the reply entry a new flow builds (`conntrack::create`).
    fn ct_mut(s: &mut Scratch) -> &mut CtValue<Self>;
    /// This family's room for a new flow's forward entry (IPv6 only: IPv4 builds it on the
    /// stack, see `FLOW_IN_SCRATCH`).
    fn fwd_mut(s: &mut Scratch) -> &mut CtValue<Self>;
    /// This family's room for conntrack key `i` (0 or 1) of a new flow (as `fwd_mut`).
    fn key_mut(s: &mut Scratch, i: usize) -> &mut CtKey<Self>;

    /// Replaces the source or destination address, fixing the checksums that cover it.
    fn set_addr<P: Packet>(
        pkt: &mut P,
        l4: L4,
        end: End,
        old: &Self,
        new: &Self,
    ) -> Result<(), RewriteError>;
    /// Decrements the TTL / hop limit of a packet routed on (the caller checked it is above 1).
    fn decrement_ttl<P: Packet>(pkt: &mut P) -> Result<(), RewriteError>;
    /// Fills the addresses of a FIB query.
    fn fib_addrs(p: &mut FibParams, saddr: &Self, daddr: &Self);
    /// The key of a fragmented datagram in `frags`.
    type FragKey: 'static;
    fn frag_key(flow: &Flow<Self>) -> Self::FragKey;
    /// First fragments' ports, for the later fragments of their datagrams.
    fn frags() -> &'static Frags<Self::FragKey>;
}

impl Family for Ipv4 {
    const AF: u8 = 2;
    const BITS: u32 = 32;
    const FRONT: u32 = stage::FRONT;
    const BACK: u32 = stage::BACK;
    const FLOW_IN_SCRATCH: bool = false;

    #[inline(always)]
    fn services() -> &'static Services<Self> {
        &SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static Backends<Self> {
        &BACKENDS
    }
    #[inline(always)]
    fn ct() -> &'static CtTable<Self> {
        &CONNTRACK
    }
    #[inline(always)]
    fn ct_new() -> &'static CtTable<Self> {
        &CT_NEW
    }
    #[inline(always)]
    fn affinity() -> &'static Affinity<Self> {
        &AFFINITY
    }
    #[inline(always)]
    fn src_ranges() -> &'static SrcRanges<Self> {
        &SRC_RANGES
    }
    #[inline(always)]
    fn hairpin_addr(cfg: &Config) -> Self {
        cfg.hairpin_addr
    }
    #[inline(always)]
    fn snat_addr(cfg: &Config) -> Self {
        cfg.snat_addr
    }
    #[inline(always)]
    fn flow_mut(s: &mut Scratch) -> &mut Flow<Self> {
        &mut s.flow
    }
    #[inline(always)]
    fn ct_mut(s: &mut Scratch) -> &mut CtValue<Self> {
        &mut s.ct
    }
    #[inline(always)]
    fn fwd_mut(s: &mut Scratch) -> &mut CtValue<Self> {
        // Unused (IPv4 builds it on the stack): the same room as the reply entry.
        &mut s.ct
    }
    #[inline(always)]
    fn key_mut(s: &mut Scratch, i: usize) -> &mut CtKey<Self> {
        &mut s.keys4[i & 1]
    }
    #[inline(always)]
    fn set_addr<P: Packet>(
        pkt: &mut P,
        l4: L4,
        end: End,
        old: &Self,
        new: &Self,
    ) -> Result<(), RewriteError> {
        pkt.set_addr(l4, end, *old, *new)
    }
    #[inline(always)]
    fn decrement_ttl<P: Packet>(pkt: &mut P) -> Result<(), RewriteError> {
        pkt.decrement_ttl()
    }
    #[inline(always)]
    fn fib_addrs(p: &mut FibParams, saddr: &Self, daddr: &Self) {
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*saddr);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*daddr);
    }
    type FragKey = FragKey;
    #[inline(always)]
    fn frag_key(flow: &Flow<Self>) -> FragKey {
        FragKey {
            saddr: flow.saddr,
            daddr: flow.daddr,
            // An IPv4 identification is 16 bits.
            id: flow.ip_id as u16,
            proto: flow.proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn frags() -> &'static Frags<FragKey> {
        &FRAGS
    }
}

/// The IPv6 addresses of `xlb_config6`, zero until the agent wrote them.
#[inline(always)]
fn config6() -> lb_common::Config6 {
    CONFIG6.get(0).copied().unwrap_or(lb_common::Config6 {
        hairpin_addr: [0; 16],
        snat_addr: [0; 16],
    })
}

impl Family for Ipv6 {
    const AF: u8 = 10;
    const BITS: u32 = 128;
    const FRONT: u32 = stage::FRONT6;
    const BACK: u32 = stage::BACK6;
    const FLOW_IN_SCRATCH: bool = true;

    #[inline(always)]
    fn services() -> &'static Services<Self> {
        &SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static Backends<Self> {
        &BACKENDS6
    }
    #[inline(always)]
    fn ct() -> &'static CtTable<Self> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn ct_new() -> &'static CtTable<Self> {
        &CT_NEW6
    }
    #[inline(always)]
    fn affinity() -> &'static Affinity<Self> {
        &AFFINITY6
    }
    #[inline(always)]
    fn src_ranges() -> &'static SrcRanges<Self> {
        &SRC_RANGES6
    }
    #[inline(always)]
    fn hairpin_addr(_cfg: &Config) -> Self {
        config6().hairpin_addr
    }
    #[inline(always)]
    fn snat_addr(_cfg: &Config) -> Self {
        config6().snat_addr
    }
    #[inline(always)]
    fn flow_mut(s: &mut Scratch) -> &mut Flow<Self> {
        &mut s.flow6
    }
    #[inline(always)]
    fn ct_mut(s: &mut Scratch) -> &mut CtValue<Self> {
        &mut s.ct6
    }
    #[inline(always)]
    fn fwd_mut(s: &mut Scratch) -> &mut CtValue<Self> {
        &mut s.fwd6
    }
    #[inline(always)]
    fn key_mut(s: &mut Scratch, i: usize) -> &mut CtKey<Self> {
        &mut s.keys6[i & 1]
    }
    #[inline(always)]
    fn set_addr<P: Packet>(
        pkt: &mut P,
        l4: L4,
        end: End,
        old: &Self,
        new: &Self,
    ) -> Result<(), RewriteError> {
        pkt.set_addr6(l4, end, old, new)
    }
    #[inline(always)]
    fn decrement_ttl<P: Packet>(pkt: &mut P) -> Result<(), RewriteError> {
        pkt.decrement_hop_limit()
    }
    #[inline(always)]
    fn fib_addrs(p: &mut FibParams, saddr: &Self, daddr: &Self) {
        // SAFETY: the union's IPv6 members are 16 bytes, as the addresses are.
        unsafe {
            core::ptr::write_unaligned((&raw mut p.__bindgen_anon_3).cast::<Ipv6>(), *saddr);
            core::ptr::write_unaligned((&raw mut p.__bindgen_anon_4).cast::<Ipv6>(), *daddr);
        }
    }
    type FragKey = FragKey6;
    #[inline(always)]
    fn frag_key(flow: &Flow<Self>) -> FragKey6 {
        FragKey6 {
            saddr: flow.saddr,
            daddr: flow.daddr,
            id: flow.ip_id,
            proto: flow.proto,
            _pad: [0; 3],
        }
    }
    #[inline(always)]
    fn frags() -> &'static Frags<FragKey6> {
        &FRAGS6
    }
}
