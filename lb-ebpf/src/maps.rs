//! Every map of the datapath. Types come from `lb-common`; capacities here are defaults that the
//! loader overrides from agent flags. All maps are BTF-defined so `bpftool` prints field names.

use aya_ebpf::{
    bindings::{
        BPF_F_INNER_MAP, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG,
        bpf_fib_lookup as FibParams,
    },
    btf_maps::{
        Array, HashMap, HashOfMaps, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    macros::btf_map,
};
use lb_common::{
    Address, AffinityKey, AffinityValue, AgentStatus, Backend, Config, Config6, CtKey, CtValue,
    DEVICE_SLOTS, DevState, FragKey, FragKey6, FragPorts, Ipv4, Ipv6, LutChunk, ServiceKey,
    ServiceValue, SockRevKey, SockRevValue, SockXlate, SrcRangeKey, SvcInfo, SvcStats, Trace,
    capacity, counter, filter, hook, stage,
};

use crate::ctx::{TcPacket, XdpPacket};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
/// Filters: mmapable, so the agent sets and clears bits with atomic stores, no syscall.
const FILTER: usize = BPF_F_MMAPABLE as usize;
/// Inner tables: mmapable (written by one copy) and of any length (BPF_F_INNER_MAP).
const INNER_LUT: usize = (BPF_F_MMAPABLE | BPF_F_INNER_MAP) as usize;

/// One service's table: an array of chunks (the template's length is only a default).
pub type Table = Array<LutChunk, { capacity::LUT_TEMPLATE_CHUNKS as usize }, INNER_LUT>;

/// A frontends map of a family: (addr, port, proto, scope) → service. Not preallocated (as
/// every map only the agent writes): memory follows the entries, not the capacity; lookups
/// cost the same.
pub type Services<A> =
    HashMap<ServiceKey<A>, ServiceValue, { capacity::SERVICES as usize }, NO_PREALLOC>;
/// A backends map of a family, by id (u32, never 0; one id space for both families).
pub type Backends<A> = HashMap<u32, Backend<A>, { capacity::BACKENDS as usize }, NO_PREALLOC>;

/// IPv4 frontends.
#[btf_map(name = "xlb_services")]
pub static SERVICES: Services<Ipv4> = HashMap::new();

/// IPv4 backends.
#[btf_map(name = "xlb_backends")]
pub static BACKENDS: Backends<Ipv4> = HashMap::new();

/// Lookup tables: service id → its own table, replaced as a whole when it changes.
#[btf_map(name = "xlb_lut")]
pub static LUT: HashOfMaps<u32, Table, { capacity::SVC_IDS as usize }, NO_PREALLOC> =
    HashOfMaps::new();

/// A conntrack table of a family (the loader sets each one's capacity).
pub type CtTable<A = Ipv4> = LruHashMap<CtKey<A>, CtValue<A>, { capacity::CONNTRACK as usize }>;

/// Connection tracking of confirmed flows (a reply was seen), both directions (LRU: the least
/// recently used go first, and only confirmed flows compete for it).
#[btf_map(name = "xlb_ct")]
pub static CONNTRACK: CtTable = LruHashMap::new();

/// Connection tracking of flows not answered yet, both directions: a flood of new flows
/// churns this table only. A flow moves to `CONNTRACK` with its first reply.
#[btf_map(name = "xlb_ct_new")]
pub static CT_NEW: CtTable = LruHashMap::new();

/// Fragmented datagrams: the ports of each first fragment, for the later fragments (LRU).
#[btf_map(name = "xlb_frags")]
pub static FRAGS: LruHashMap<FragKey, FragPorts, { capacity::FRAGS as usize }> = LruHashMap::new();

/// The same for IPv6 datagrams (fragment header identification, 32 bits).
#[btf_map(name = "xlb_frags6")]
pub static FRAGS6: LruHashMap<FragKey6, FragPorts, { capacity::FRAGS as usize }> =
    LruHashMap::new();

/// ClientIP session affinity (LRU).
#[btf_map(name = "xlb_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

/// loadBalancerSourceRanges: (svc_id, client CIDR) → allowed.
#[btf_map(name = "xlb_srcranges")]
pub static SRC_RANGES: LpmTrie<SrcRangeKey, u8, { capacity::SRC_RANGES as usize }> = LpmTrie::new();

/// IPv6 frontends.
#[btf_map(name = "xlb_services6")]
pub static SERVICES6: Services<Ipv6> = HashMap::new();

/// IPv6 backends.
#[btf_map(name = "xlb_backends6")]
pub static BACKENDS6: Backends<Ipv6> = HashMap::new();

/// IPv6 connection tracking of confirmed flows: as `CONNTRACK`.
#[btf_map(name = "xlb_ct6")]
pub static CONNTRACK6: CtTable<Ipv6> = LruHashMap::new();

/// IPv6 connection tracking of flows not answered yet: as `CT_NEW`.
#[btf_map(name = "xlb_ct6_new")]
pub static CT_NEW6: CtTable<Ipv6> = LruHashMap::new();

/// IPv6 ClientIP session affinity (LRU).
#[btf_map(name = "xlb_affinity6")]
pub static AFFINITY6: LruHashMap<
    AffinityKey<Ipv6>,
    AffinityValue,
    { capacity::AFFINITY as usize },
> = LruHashMap::new();

/// IPv6 loadBalancerSourceRanges.
#[btf_map(name = "xlb_srcranges6")]
pub static SRC_RANGES6: LpmTrie<SrcRangeKey<Ipv6>, u8, { capacity::SRC_RANGES as usize }> =
    LpmTrie::new();

/// The IPv6 hairpin and SNAT addresses, one entry; read-only for programs.
#[btf_map(name = "xlb_config6")]
pub static CONFIG6: Array<Config6, 1, { BPF_F_RDONLY_PROG as usize }> = Array::new();

/// Global counters by reason, per CPU.
#[btf_map(name = "xlb_counters")]
pub static COUNTERS: PerCpuArray<u64, { counter::SLOTS as usize }> = PerCpuArray::new();

/// Per-service counters, per CPU, indexed by service id.
#[btf_map(name = "xlb_svc_stats")]
pub static SVC_STATS: PerCpuArray<SvcStats, { capacity::SVC_IDS as usize }> = PerCpuArray::new();

/// Service names for the CLI; never read by the datapath (kept here so it is pinned with BTF).
#[btf_map(name = "xlb_svc_info")]
pub static SVC_INFO: HashMap<u32, SvcInfo, { capacity::SVC_IDS as usize }, NO_PREALLOC> =
    HashMap::new();

/// Agent configuration, one entry; read-only for programs.
#[btf_map(name = "xlb_config")]
pub static CONFIG: Array<Config, 1, { BPF_F_RDONLY_PROG as usize }> = Array::new();

/// The agent's configuration; `None` until the agent has written it (nothing is translated
/// before).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|cfg| cfg.layout_version != 0)
}

/// Drop and new-flow events for `xlb monitor` (only written while a monitor asks for them).
#[btf_map(name = "xlb_events")]
pub static EVENTS: RingBuf<lb_common::Event, { capacity::EVENTS_BYTES as usize }> = RingBuf::new();

/// Decision of the last packet run by `xlb explain` (only its private program copy writes here).
#[btf_map(name = "xlb_trace")]
pub static TRACE: PerCpuArray<Trace, 1> = PerCpuArray::new();

/// TCP sockets translated at connect(): the ClusterIP each dialled, in the slot of its cookie's
/// low bits (direct-mapped: no allocation at connect and nothing to free at close, which socket
/// storage costs — ~4% of a short connection's CPU time, measured). A later socket with the
/// same low bits takes the slot over; the record's tag (`SockXlate::seal`) tells the two apart.
#[btf_map(name = "xlb_sock")]
pub static SOCK: Array<SockXlate, { capacity::SOCK_SLOTS as usize }, 0> = Array::new();

/// Host-network UDP sockets' datagrams to ClusterIPs, by (socket cookie, backend): the address
/// `recvmsg4` gives their replies (LRU: nothing frees an entry when the socket closes).
#[btf_map(name = "xlb_sock_rev")]
pub static SOCK_REV: LruHashMap<SockRevKey, SockRevValue, { capacity::SOCK_REV as usize }> =
    LruHashMap::new();

/// IPv6 sockets translated at connect() to IPv6 ClusterIPs (as `SOCK`; IPv4-mapped dials use
/// `SOCK`).
#[btf_map(name = "xlb_sock6")]
pub static SOCK6: Array<SockXlate<Ipv6>, { capacity::SOCK6_SLOTS as usize }, 0> = Array::new();

/// Host-network IPv6 UDP sockets' datagrams to IPv6 ClusterIPs (as `SOCK_REV`).
#[btf_map(name = "xlb_sock6_rev")]
pub static SOCK_REV6: LruHashMap<
    SockRevKey<Ipv6>,
    SockRevValue<Ipv6>,
    { capacity::SOCK_REV as usize },
> = LruHashMap::new();

/// Per-CPU room for what the entry program hands to a stage (its tail call runs on the same
/// CPU, at once) and for the largest temporaries of a new flow, kept off the stack. Not
/// pinned: nothing outside one packet's programs reads it. Only the tc and XDP programs use
/// it, which run in softirq context and do not interleave on one CPU (a PREEMPT_RT kernel,
/// where they can be preempted, is not supported).
#[btf_map(name = "xlb_scratch")]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// `SCRATCH`'s value.
pub struct Scratch {
    /// The parsed flow the entry program hands to a stage (see `lb::process`).
    pub flow: crate::parse::Flow<Ipv4>,
    /// The same for an IPv6 packet.
    pub flow6: crate::parse::Flow<Ipv6>,
    /// The ICMP header the entry program hands to the ICMP stage.
    pub icmp: crate::parse::IcmpHead,
    /// The same for an ICMPv6 error; `icmp_v6` says which of the two the stage is given.
    pub icmp6: crate::parse::IcmpHead<Ipv6>,
    pub icmp_v6: u8,
    /// Conntrack keys a new flow works on: IPv6 ones here, off the stack (see
    /// `Family::FLOW_IN_SCRATCH`); the IPv4 ones are the trait's formality, never used.
    pub keys6: [CtKey<Ipv6>; 2],
    pub keys4: [CtKey; 2],
    /// For the IPv6 new-flow stage: the frontend.
    pub svc: ServiceValue,
    /// For the backend stage: the packet may be a tracked flow's reply / a SYN reusing one's
    /// tuple.
    pub reply: u8,
    pub reuse: u8,
    /// For the error stage: the next-hop MTU (0: time exceeded).
    pub error_mtu: u16,
    /// The FIB query of `route::lookup`.
    pub fib: FibParams,
    /// The reply entry `conntrack::create` builds.
    pub ct: CtValue,
    /// The same for an IPv6 flow.
    pub ct6: CtValue<Ipv6>,
    /// An IPv6 new flow's forward entry, and the copy of a tracked one's entry it decides on
    /// (off the stack: see `Family::FLOW_IN_SCRATCH`).
    pub fwd6: CtValue<Ipv6>,
    /// `icmp::send_error`'s rate limit on this CPU: the second counted, and errors sent in it
    /// (these two persist from run to run).
    pub icmp_sec: u32,
    pub icmp_sent: u32,
    /// The next-hop MTU of the last too-big packet `route::decide` saw (see `route::Out`).
    pub too_big_mtu: u16,
    /// Set by a translation path: `lb::process` confirms the packet's flow (see
    /// `conntrack::confirm_asked`).
    pub confirm: u8,
}

/// The stage programs of the tc entry programs (`lb_common::stage`): filled by the loader,
/// every load its own (stages hand over through this load's `SCRATCH`), pinned by the agent
/// once its entry programs are attached (the kernel empties a program array no pin or
/// descriptor refers to).
#[btf_map(name = "xlb_tc_stages")]
pub static TC_STAGES: ProgramArray<{ (2 * stage::PER_HOOK) as usize }> = ProgramArray::new();

/// The stage programs of the XDP entry program.
#[btf_map(name = "xlb_xdp_stages")]
pub static XDP_STAGES: ProgramArray<{ stage::XDP_STAGES as usize }> = ProgramArray::new();

/// A packet whose hook has stage programs (`TC_STAGES`, `XDP_STAGES`).
pub trait Staged {
    /// Tail-calls this hook's program of `stage` (`lb_common::stage`); returns only if there
    /// is none.
    fn tail_call(&self, stage: u32);
}

impl<const H: u8> Staged for TcPacket<H> {
    #[inline(always)]
    fn tail_call(&self, stage: u32) {
        let base = if H == hook::POD {
            stage::POD_BASE
        } else {
            stage::HOST_BASE
        };
        // SAFETY: the context is this program's; the slot's program is of the same type.
        unsafe { TC_STAGES.tail_call(&self.ctx, base + stage) };
    }
}

impl Staged for XdpPacket {
    #[inline(always)]
    fn tail_call(&self, stage: u32) {
        // SAFETY: the context is this program's; the slot's program is of the same type.
        unsafe { XDP_STAGES.tail_call(&self.ctx, stage::XDP_BASE + stage) };
    }
}

/// Uplinks running XDP, in the slot `device_slot(ifindex)`: their XDP_TX errors (written by
/// the tracepoint programs) and whether XDP must leave their flows to tc (read by the route
/// lookup). The agent claims a slot when it attaches XDP.
#[btf_map(name = "xlb_devices")]
pub static DEVICES: Array<DevState, { DEVICE_SLOTS as usize }, 0> = Array::new();

/// The agent's status for `xlb status`; never read by the datapath (kept here so it is pinned
/// with BTF).
#[btf_map(name = "xlb_agent")]
pub static AGENT: Array<AgentStatus, 1, 0> = Array::new();

/// `SOCK`'s slot of the socket with `cookie`.
#[inline(always)]
pub fn sock_slot(cookie: u64) -> u32 {
    (cookie & u64::from(capacity::SOCK_SLOTS - 1)) as u32
}

/// `SOCK6`'s slot of the socket with `cookie`.
#[inline(always)]
pub fn sock6_slot(cookie: u64) -> u32 {
    (cookie & u64::from(capacity::SOCK6_SLOTS - 1)) as u32
}

/// An address filter's map type.
pub type Filter = Array<u64, { filter::WORDS as usize }, FILTER>;

/// Frontend filter: bit `filter::bit(addr, port, proto)` set for every frontend key. A clear
/// bit means no frontend: the packet skips the services lookup.
#[btf_map(name = "xlb_fe_filter")]
pub static FE_FILTER: Filter = Array::new();

/// Backend filter: bit `filter::bit(addr, port, 0)` set for every backend. A clear bit means
/// the packet cannot be a backend's reply: it skips the conntrack reply lookup.
#[btf_map(name = "xlb_be_filter")]
pub static BE_FILTER: Filter = Array::new();

/// NAT'd backends: slot `filter::nat_slot(bit(addr, port, 0))` is non-zero once a translated
/// flow to a backend behind it was recorded. The datapath raises it (atomic add) before it
/// writes the flow's conntrack entries; the agent zeroes it only when no backend is behind it.
/// Zero: no reply of these backends can be tracked, they skip the reply lookup.
#[btf_map(name = "xlb_be_nat")]
pub static BE_NAT: Array<
    [u64; filter::NAT_SLOTS_PER_VALUE as usize],
    { filter::NAT_VALUES as usize },
    FILTER,
> = Array::new();

/// The NAT slot behind backend-filter bit `bit`.
#[inline(always)]
fn nat_slot(bit: u32) -> Option<*mut u64> {
    let slot = filter::nat_slot(bit);
    let value = BE_NAT.get_ptr_mut(slot / filter::NAT_SLOTS_PER_VALUE)?;
    // The mask keeps the index inside the value for the verifier.
    let idx = (slot & (filter::NAT_SLOTS_PER_VALUE - 1)) as usize;
    // SAFETY: `idx` < NAT_SLOTS_PER_VALUE, inside the map value.
    Some(unsafe { value.cast::<u64>().add(idx) })
}

/// False only if no translated flow of the backend with filter bit `bit` can exist.
#[inline(always)]
fn may_have_nat(bit: u32) -> bool {
    match nat_slot(bit) {
        // SAFETY: a slot of the map value; another CPU may raise it concurrently.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

/// Records that backend (`addr`, `port`) may have translated flows (before their entries).
#[inline(always)]
pub fn mark_nat<A: Address>(addr: A, port: u16) {
    let Some(p) = nat_slot(filter::bit(addr.folded(), port, 0)) else {
        return;
    };
    // SAFETY: as in `may_have_nat`. An atomic add (the one atomic every BPF CPU version has):
    // two CPUs raising the slot at once leave it at 2, still non-zero.
    unsafe {
        if core::ptr::read_volatile(p) == 0 {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, 1,
            );
        }
    }
}

/// False only if (`addr`, `port`) is no backend with translated flows (backend filter, then
/// NAT slot; the bit hashed once for both): then no conntrack reply entry can have it as its
/// source.
#[inline(always)]
pub fn may_be_tracked_backend<A: Address>(addr: A, port: u16) -> bool {
    let bit = filter::bit(addr.folded(), port, 0);
    bit_set(&BE_FILTER, bit) && may_have_nat(bit)
}

/// False only if (`addr`, `port`) is no backend (backend filter).
#[inline(always)]
pub fn may_be_backend<A: Address>(addr: A, port: u16) -> bool {
    bit_set(&BE_FILTER, filter::bit(addr.folded(), port, 0))
}

/// True unless `map`'s bit for (`addr`, `port`, `proto`) is clear (a missing word counts as set).
#[inline(always)]
pub fn may_hold<A: Address>(map: &Filter, addr: A, port: u16, proto: u8) -> bool {
    bit_set(map, filter::bit(addr.folded(), port, proto))
}

/// True unless bit `bit` of `map` is clear (a missing word counts as set).
#[inline(always)]
fn bit_set(map: &Filter, bit: u32) -> bool {
    match map.get(bit >> 6) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}
