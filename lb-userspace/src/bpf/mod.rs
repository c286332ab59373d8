//! Loading and attaching the datapath. Maps are pinned (with BTF) under the bpffs directory and
//! adopted when already there; program links are pinned under `<dir>/links`, so the datapath
//! keeps running when the agent stops, and a new agent swaps its programs in atomically
//! (BPF_LINK_UPDATE) without ever detaching.

pub mod btf;
pub mod devices;
pub mod filter;
pub mod maps;
pub mod migrate;
pub mod mmap;
pub mod pins;
pub mod sock;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use lb_common::{capacity, map_names as names, prog_names};

pub use devices::Iface;

/// The datapath object, built by `build.rs` from `lb-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error("the datapath object is empty: this xlb was built with AYA_BUILD_SKIP=1")]
    NoObject,
    #[error("loading the datapath: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("stage program {name}: {reason}")]
    Stage { name: &'static str, reason: String },
    #[error("attaching {prog} to {iface}: {reason}")]
    Attach {
        prog: &'static str,
        iface: String,
        reason: String,
    },
}

/// Map capacities chosen by the agent (only applied when a map is created).
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    /// Entries of confirmed flows (`xlb_ct`).
    pub conntrack: u32,
    /// Entries of flows not answered yet (`xlb_ct_new`).
    pub ct_new: u32,
    /// Session-affinity entries (`xlb_affinity`).
    pub affinity: u32,
    /// Services, i.e. backend sets (`xlb_lut`, `xlb_svc_stats`, `xlb_svc_info`).
    pub services: u32,
    /// Frontend entries (`xlb_services`).
    pub frontends: u32,
    /// Backend entries (`xlb_backends`).
    pub backends: u32,
    /// Service CIDRs whose unowned addresses the datapath drops (`--service-cidrs`; set at
    /// load like the sizes, not a map).
    pub service_cidrs: ServiceCidrs,
    /// Socket-level translation for host-network sockets only (`--socket-lb-scope host`; set
    /// at load like the sizes).
    pub socket_lb_host_only: bool,
}

/// Service CIDRs as the datapath takes them (`Capacities::service_cidrs`), per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidrs {
    /// IPv4: (network, mask), network order; `v4_count` of them.
    pub v4: [[u32; 2]; capacity::SERVICE_CIDR_SLOTS],
    pub v4_count: u32,
    /// IPv6: the network's 4 words then the mask's, as memory holds them; `v6_count` of them.
    pub v6: [[u32; 8]; capacity::SERVICE_CIDR_SLOTS],
    pub v6_count: u32,
}

/// The 4 words of an IPv6 address as memory holds them.
fn words6(a: std::net::Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The first `capacity::SERVICE_CIDR_SLOTS` service CIDRs of each family of `nets` (callers
/// check the counts: `service_cidrs_over`).
pub fn service_cidr_slots(nets: &[crate::model::IpNet]) -> ServiceCidrs {
    let mut out = ServiceCidrs::default();
    for n in nets {
        match n.addr {
            std::net::IpAddr::V4(a) => {
                let Some(slot) = out.v4.get_mut(out.v4_count as usize) else {
                    continue;
                };
                let mask = u32::MAX.checked_shl(32 - u32::from(n.len)).unwrap_or(0);
                *slot = [(u32::from(a) & mask).to_be(), mask.to_be()];
                out.v4_count += 1;
            }
            std::net::IpAddr::V6(a) => {
                let Some(slot) = out.v6.get_mut(out.v6_count as usize) else {
                    continue;
                };
                let mask = u128::MAX.checked_shl(128 - u32::from(n.len)).unwrap_or(0);
                let net = words6(std::net::Ipv6Addr::from(u128::from(a) & mask));
                let m = words6(std::net::Ipv6Addr::from(mask));
                slot[..4].copy_from_slice(&net);
                slot[4..].copy_from_slice(&m);
                out.v6_count += 1;
            }
        }
    }
    out
}

/// The family of `nets` with more service CIDRs than the datapath has slots, if any.
pub fn service_cidrs_over(nets: &[crate::model::IpNet]) -> Option<&'static str> {
    let v4 = nets.iter().filter(|n| n.addr.is_ipv4()).count();
    if v4 > capacity::SERVICE_CIDR_SLOTS {
        return Some("IPv4");
    }
    (nets.len() - v4 > capacity::SERVICE_CIDR_SLOTS).then_some("IPv6")
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            conntrack: capacity::CONNTRACK,
            ct_new: capacity::CT_NEW,
            affinity: capacity::AFFINITY,
            services: capacity::SVC_IDS,
            frontends: capacity::SERVICES,
            backends: capacity::BACKENDS,
            service_cidrs: ServiceCidrs::default(),
            socket_lb_host_only: false,
        }
    }
}

/// Capacities the sync keeps within, each named after the agent flag that raises it: a service
/// that does not fit is not programmed (the others are) and says which flag to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Service ids are in `[1, services)` (`--max-services`: the per-service tables' size).
    pub services: u64,
    /// Entries of `xlb_services` (`--max-frontends`).
    pub frontends: usize,
    /// Entries of `xlb_backends` (`--max-backends`).
    pub backends: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            services: u64::from(lb_common::capacity::SVC_IDS),
            frontends: lb_common::capacity::SERVICES as usize,
            backends: lb_common::capacity::BACKENDS as usize,
        }
    }
}

/// XDP attachment mode requested for uplinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeOpt {
    /// Per device: native XDP where the driver runs it and it cannot lose frames; tc
    /// elsewhere (veth, bridges, tunnels and other virtual devices, drivers without native
    /// XDP). Every decision is logged with its reason and shown by `xlb status`.
    Auto,
    /// Driver mode everywhere; falls back to generic with a warning. On a veth whose peer
    /// runs no XDP, XDP_TX loses frames: warned, counted, and XDP leaves those flows to tc.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// No XDP: tc handles uplink traffic.
    Off,
}

/// How XDP goes on one uplink, and why (`lb_common::dev_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpPlan {
    /// The mode to try first (None: tc only).
    pub mode: Option<XdpMode>,
    /// If the driver has no native XDP: fall back to generic (an explicit `native`) or to tc
    /// only (`auto`).
    pub generic_fallback: bool,
    /// `dev_reason::*`.
    pub reason: u8,
}

/// Decides XDP on device `ifindex` for `opt`: from its link kind and, for a veth, its peer.
pub fn plan_xdp(opt: XdpModeOpt, ifindex: u32) -> XdpPlan {
    use lb_common::dev_reason;
    let (kind, peer) = devices::classify(ifindex).unwrap_or((None, devices::Peer::None));
    let tc_only = |reason| XdpPlan {
        mode: None,
        generic_fallback: false,
        reason,
    };
    match opt {
        XdpModeOpt::Off => tc_only(dev_reason::REQUESTED),
        XdpModeOpt::Generic => XdpPlan {
            mode: Some(XdpMode::Skb),
            generic_fallback: false,
            reason: dev_reason::REQUESTED,
        },
        XdpModeOpt::Native => XdpPlan {
            mode: Some(XdpMode::Driver),
            generic_fallback: true,
            reason: if matches!(peer, devices::Peer::WithoutXdp | devices::Peer::Unknown) {
                dev_reason::REQUESTED_MAY_DROP
            } else {
                dev_reason::REQUESTED
            },
        },
        XdpModeOpt::Auto if peer != devices::Peer::None => tc_only(dev_reason::VETH),
        XdpModeOpt::Auto if kind.is_some() => tc_only(dev_reason::VIRTUAL),
        XdpModeOpt::Auto => XdpPlan {
            mode: Some(XdpMode::Driver),
            generic_fallback: false,
            reason: dev_reason::NATIVE_DRIVER,
        },
    }
}

/// Loads the programs against the maps pinned under `dir` (creating and pinning missing ones).
/// `trace` loads the private copy `xlb explain` runs: it records its decision and writes no
/// live state.
pub fn load(dir: &Path, caps: Capacities, trace: bool) -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    pins::ensure_dir(dir)?;
    pins::check_layout(dir)?;
    // The stage arrays are this load's own (never adopted): a stage hands over through the
    // per-CPU scratch, which is the load's own too, so entry programs and stages of two agents
    // must never mix. `pin_stages` pins them once this load's programs are attached.
    let paths: Vec<(&'static str, PathBuf)> =
        names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
    let trace_mode = u8::from(trace);
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .map_max_entries(names::CONNTRACK, caps.conntrack)
        .map_max_entries(names::CT_NEW, caps.ct_new)
        .map_max_entries(names::AFFINITY, caps.affinity)
        .map_max_entries(names::SERVICES, caps.frontends)
        .map_max_entries(names::BACKENDS, caps.backends)
        .map_max_entries(names::LUT, caps.services)
        .map_max_entries(names::SVC_STATS, caps.services)
        .map_max_entries(names::SVC_INFO, caps.services)
        // IPv6 tables take the same capacities as their IPv4 twins.
        .map_max_entries(names::CONNTRACK6, caps.conntrack)
        .map_max_entries(names::CT_NEW6, caps.ct_new)
        .map_max_entries(names::AFFINITY6, caps.affinity)
        .map_max_entries(names::SERVICES6, caps.frontends)
        .map_max_entries(names::BACKENDS6, caps.backends)
        .override_global("TRACE_MODE", &trace_mode, true)
        .override_global("SERVICE_CIDRS", &caps.service_cidrs.v4, true)
        .override_global("SERVICE_CIDR_COUNT", &caps.service_cidrs.v4_count, true)
        .override_global("SERVICE_CIDRS6", &caps.service_cidrs.v6, true)
        .override_global("SERVICE_CIDR6_COUNT", &caps.service_cidrs.v6_count, true);
    // Where the tracepoint programs find a device's ifindex and namespace (zero offsets: they
    // count nothing, and the agent says so).
    let offsets = btf::Btf::from_kernel()
        .and_then(|b| btf::NetdevOffsets::from_btf(&b))
        .ok();
    let (ifx, net, inum) = offsets.map_or((0, 0, 0), |o| (o.ifindex, o.nd_net, o.net_inum));
    let netns = netns_inum();
    let host_cookie = netns_cookie();
    let sock_host_only = u8::from(caps.socket_lb_host_only);
    loader
        .override_global("NETDEV_IFINDEX_OFF", &ifx, true)
        .override_global("NETDEV_NET_OFF", &net, true)
        .override_global("NET_INUM_OFF", &inum, true)
        .override_global("NETNS_INUM", &netns, true)
        .override_global("HOST_NETNS_COOKIE", &host_cookie, true)
        .override_global("SOCK_HOST_ONLY", &sock_host_only, true);
    let mut ebpf = loader.load(OBJECT)?;
    for name in [prog_names::POD_INGRESS, prog_names::HOST_INGRESS] {
        let prog = classifier(&mut ebpf, name)?;
        load_program(name, || prog.load())?;
    }
    let prog = xdp(&mut ebpf)?;
    load_program(prog_names::XDP, || prog.load())?;
    load_stages(&mut ebpf)?;
    sock::load(&mut ebpf)?;
    for (name, _, _) in TXERR_PROGRAMS {
        let prog: &mut RawTracePoint = program(&mut ebpf, name)?;
        load_program(name, || prog.load())?;
    }
    Ok(ebpf)
}

/// Loads the stage programs and puts each in its slot of its hook's program array (the
/// entry programs tail-call them; see `lb_common::stage`). The arrays are this load's own.
fn load_stages(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    use aya::maps::ProgramArray;
    use std::os::fd::AsFd as _;
    let mut fds = Vec::new();
    for name in prog_names::TC_STAGES {
        let prog = classifier(ebpf, name)?;
        load_program(name, || prog.load())?;
        fds.push((
            names::TC_STAGES,
            name,
            prog.fd()
                .map_err(|source| LoadError::Program { name, source })?
                .try_clone(),
        ));
    }
    let mut xdp = Vec::new();
    for (name, slot) in prog_names::XDP_STAGES {
        let prog: &mut Xdp = program(ebpf, name)?;
        load_program(name, || prog.load())?;
        xdp.push((
            slot,
            name,
            prog.fd()
                .map_err(|source| LoadError::Program { name, source })?
                .try_clone(),
        ));
    }
    // The tc stages take their slots in order; the XDP ones the slots they name.
    let tc = fds
        .into_iter()
        .zip(0u32..)
        .map(|((map, name, fd), slot)| (map, slot, name, fd));
    let xdp = xdp
        .into_iter()
        .map(|(slot, name, fd)| (names::XDP_STAGES, slot, name, fd));
    for (map, slot, name, fd) in tc.chain(xdp) {
        let fd = fd.map_err(|e| LoadError::Stage {
            name,
            reason: e.to_string(),
        })?;
        let data = ebpf.map_mut(map).ok_or(LoadError::Stage {
            name,
            reason: format!("no map {map} in the object"),
        })?;
        let mut arr = ProgramArray::try_from(data).map_err(|e| LoadError::Stage {
            name,
            reason: e.to_string(),
        })?;
        arr.set(slot, &fd, 0).map_err(|e| LoadError::Stage {
            name,
            reason: e.to_string(),
        })?;
        let _ = fd.as_fd();
    }
    Ok(())
}

/// Pins this load's stage arrays in place of a previous agent's, once its entry programs are
/// attached everywhere: the kernel empties a program array no pin or descriptor refers to, so
/// unpinned they would stop every stage when the agent exits. The previous arrays, no longer
/// used, empty then.
pub fn pin_stages(ebpf: &Ebpf, dir: &Path) -> Result<(), LoadError> {
    for name in [names::TC_STAGES, names::XDP_STAGES] {
        let err = |reason: String| LoadError::Stage { name, reason };
        let map = ebpf
            .map(name)
            .ok_or_else(|| err("no such map in the object".into()))?;
        // bpffs names cannot contain dots.
        let tmp = dir.join(format!("new-{name}"));
        let _ = std::fs::remove_file(&tmp);
        map.pin(&tmp).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// The inode number of this process's network namespace (what `struct net`'s `ns.inum` holds).
/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`; 0 if unknown): the
/// socket hooks tell host-network sockets by it.
pub fn netns_cookie() -> u64 {
    /// `SO_NETNS_COOKIE` (Linux 5.14).
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket, closed below; getsockopt writes at most `len` bytes to `cookie`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        );
        libc::close(fd);
        if rc == 0 { cookie } else { 0 }
    }
}

pub fn netns_inum() -> u32 {
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt as _;
        m.ino() as u32
    })
}

/// The XDP_TX error counters: (program, tracepoint, pin name under `<dir>/links`).
const TXERR_PROGRAMS: [(&str, &str, &str); 2] = [
    (prog_names::TXERR_BULK, "xdp_bulk_tx", "txerr-bulk"),
    (prog_names::TXERR_EXCEPTION, "xdp_exception", "txerr-exc"),
];

/// True if the loaded object can tell which device an XDP_TX error is on (the kernel's BTF
/// gave the offsets it needs).
pub fn txerr_supported() -> bool {
    btf::Btf::from_kernel()
        .and_then(|b| btf::NetdevOffsets::from_btf(&b))
        .is_ok()
}

/// Attaches the XDP_TX error counters and pins their links in place of a previous agent's
/// (raw tracepoint links cannot be updated in place: the rename drops the old link).
pub fn attach_txerr(ebpf: &mut Ebpf, dir: &Path) -> Result<(), LoadError> {
    for (name, tp, pin) in TXERR_PROGRAMS {
        let prog: &mut RawTracePoint = program(ebpf, name)?;
        let err = |e: &dyn std::fmt::Display| LoadError::Attach {
            prog: name,
            iface: format!("tracepoint {tp}"),
            reason: e.to_string(),
        };
        let id = prog.attach(tp).map_err(|e| err(&e))?;
        let link = prog.take_link(id).map_err(|e| err(&e))?;
        let link = FdLink::from(link);
        let links = dir.join("links");
        let tmp = links.join(format!("new-{pin}"));
        let _ = std::fs::remove_file(&tmp);
        link.pin(&tmp).map_err(|e| err(&e))?;
        std::fs::rename(&tmp, links.join(pin)).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// Verifications interrupted by a signal (one of the process's children exiting, say) fail
/// with EAGAIN: the kernel checks for pending signals while it verifies, and these programs
/// take ~0.2 s. Tried again, as libbpf does, up to this many times in all.
const LOAD_ATTEMPTS: u32 = 5;

/// Runs `load` (one program's `load()`), again while the verifier was interrupted.
pub fn load_program(
    name: &'static str,
    load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), LoadError> {
    retry_interrupted(load, |e| match e {
        aya::programs::ProgramError::LoadError { io_error, .. } => Some(io_error),
        _ => None,
    })
    .map_err(|source| LoadError::Program { name, source })
}

/// Runs `load` up to `LOAD_ATTEMPTS` times while it fails with EAGAIN (`io` finds the
/// system error in `E`, if any).
fn retry_interrupted<E>(
    mut load: impl FnMut() -> Result<(), E>,
    io: impl Fn(&E) -> Option<&std::io::Error>,
) -> Result<(), E> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(e)
                if attempt < LOAD_ATTEMPTS
                    && io(&e).and_then(std::io::Error::raw_os_error) == Some(libc::EAGAIN) =>
            {
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    #[test]
    fn service_cidrs_of_both_families_fill_their_own_slots() {
        let nets: Vec<crate::model::IpNet> = ["10.96.0.0/12", "fd00:10:96::/112"]
            .iter()
            .map(|n| crate::model::IpNet::parse(n).expect("cidr"))
            .collect();
        let c = service_cidr_slots(&nets);
        assert_eq!((c.v4_count, c.v6_count), (1, 1));
        assert_eq!(
            c.v4[0],
            [
                u32::from_ne_bytes([10, 96, 0, 0]),
                u32::from_ne_bytes([255, 240, 0, 0])
            ]
        );
        // fd00:10:96::/112: the first three words whole, the last one's upper half.
        assert_eq!(c.v6[0][0], u32::from_ne_bytes([0xfd, 0, 0, 0x10]));
        assert_eq!(
            c.v6[0][4..],
            [
                u32::MAX,
                u32::MAX,
                u32::MAX,
                u32::from_ne_bytes([0xff, 0xff, 0, 0])
            ]
        );
        let five6: Vec<_> = (1..=5)
            .map(|i| crate::model::IpNet::parse(&format!("fd00:{i}::/64")).expect("cidr"))
            .collect();
        assert_eq!(service_cidrs_over(&five6), Some("IPv6"));
        assert_eq!(service_cidrs_over(&nets), None);
    }

    /// `retry_interrupted` over a load failing with `errno` `fails` times: (result, attempts).
    fn attempts(errno: i32, fails: u32) -> (bool, u32) {
        let mut n = 0;
        let r = retry_interrupted(
            || {
                n += 1;
                if n <= fails {
                    Err(std::io::Error::from_raw_os_error(errno))
                } else {
                    Ok(())
                }
            },
            |e: &std::io::Error| Some(e),
        );
        (r.is_ok(), n)
    }

    #[test]
    fn interrupted_verifications_are_retried_a_bounded_number_of_times() {
        assert_eq!(attempts(libc::EAGAIN, 0), (true, 1));
        assert_eq!(attempts(libc::EAGAIN, 2), (true, 3));
        assert_eq!(attempts(libc::EAGAIN, 100), (false, LOAD_ATTEMPTS));
        // A real rejection is reported at once.
        assert_eq!(attempts(libc::EACCES, 100), (false, 1));
        assert_eq!(attempts(libc::E2BIG, 100), (false, 1));
    }
}

/// The program `name` of the loaded object, as its kind `T`.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// A tc program of the loaded object.
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    program(ebpf, name)
}

/// The XDP program of the loaded object.
pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    program(ebpf, prog_names::XDP)
}

fn attach_err(prog: &'static str, iface: &Iface, e: impl std::fmt::Display) -> LoadError {
    LoadError::Attach {
        prog,
        iface: iface.name.clone(),
        reason: e.to_string(),
    }
}

/// Role of an attachment, part of its pin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// tc ingress on a pod-facing device.
    Pod,
    /// tc ingress on an uplink.
    Host,
    /// XDP on an uplink.
    Xdp,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Host => "host",
            Self::Xdp => "xdp",
        }
    }
}

/// Pin path of an attachment.
pub fn link_pin(dir: &Path, role: Role, ifindex: u32) -> PathBuf {
    dir.join("links")
        .join(format!("{}-{ifindex}", role.prefix()))
}

/// Attaches (or re-points an existing pinned link to) a tc ingress program on `iface`.
pub fn attach_tc(ebpf: &mut Ebpf, dir: &Path, role: Role, iface: &Iface) -> Result<(), LoadError> {
    let name = match role {
        Role::Pod => prog_names::POD_INGRESS,
        _ => prog_names::HOST_INGRESS,
    };
    let pin = link_pin(dir, role, iface.index);
    let prog = classifier(ebpf, name)?;
    if pin.exists() {
        let updated = PinnedLink::from_pin(&pin)
            .map_err(|e| e.to_string())
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
        match updated {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::info!(iface = %iface.name, error = %e, "stale link pin replaced");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let id = prog
        .attach_with_options(
            &iface.name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(|e| attach_err(name, iface, e))?;
    let link = prog.take_link(id).map_err(|e| attach_err(name, iface, e))?;
    let fd = FdLink::try_from(link).map_err(|e| attach_err(name, iface, e))?;
    fd.pin(&pin).map_err(|e| attach_err(name, iface, e))?;
    Ok(())
}

/// Attaches (or re-points) XDP on an uplink as `plan` says. Returns the mode in use
/// (`dev_mode::*`; `TC` when XDP is off there, after removing any XDP a previous agent left).
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    dir: &Path,
    iface: &Iface,
    plan: XdpPlan,
) -> Result<u8, LoadError> {
    use lb_common::dev_mode;
    let name = prog_names::XDP;
    let pin = link_pin(dir, Role::Xdp, iface.index);
    let Some(first) = plan.mode else {
        detach(dir, Role::Xdp, iface.index);
        return Ok(dev_mode::TC);
    };
    let prog = xdp(ebpf)?;
    let mode_of = |m: XdpMode| {
        if m == XdpMode::Driver {
            dev_mode::XDP_NATIVE
        } else {
            dev_mode::XDP_GENERIC
        }
    };
    if pin.exists() {
        // The previous agent's link, if in the mode wanted: re-pointed to this agent's program.
        let mode = attached_xdp_mode(iface.index);
        let updated = PinnedLink::from_pin(&pin)
            .map_err(|e| e.to_string())
            .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|link| {
                if mode != Some(first) {
                    return Err(format!("attached in {mode:?}, {first:?} wanted"));
                }
                prog.attach_to_link(link).map_err(|e| e.to_string())
            });
        match updated {
            Ok(_) => return Ok(mode_of(first)),
            Err(e) => {
                tracing::info!(iface = %iface.name, error = %e, "XDP link pin replaced");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let (id, used) = match prog.attach(&iface.name, first) {
        Ok(id) => (id, first),
        Err(e) if plan.generic_fallback && first == XdpMode::Driver => {
            tracing::warn!(iface = %iface.name, error = %e, "native XDP unavailable, using generic XDP");
            (
                prog.attach(&iface.name, XdpMode::Skb)
                    .map_err(|e| attach_err(name, iface, e))?,
                XdpMode::Skb,
            )
        }
        Err(e) if first == XdpMode::Driver => {
            tracing::debug!(iface = %iface.name, error = %e, "no native XDP");
            return Ok(dev_mode::TC);
        }
        Err(e) => return Err(attach_err(name, iface, e)),
    };
    let link = prog.take_link(id).map_err(|e| attach_err(name, iface, e))?;
    let fd = FdLink::try_from(link).map_err(|e| attach_err(name, iface, e))?;
    fd.pin(&pin).map_err(|e| attach_err(name, iface, e))?;
    Ok(mode_of(used))
}

/// The mode of the XDP program attached to `ifindex` (rtnetlink `IFLA_XDP_ATTACHED`).
fn attached_xdp_mode(ifindex: u32) -> Option<XdpMode> {
    match devices::link_info(ifindex, None).ok()?.xdp_attached {
        1 => Some(XdpMode::Driver),
        2 => Some(XdpMode::Skb),
        _ => None,
    }
}

/// Removes link pins of devices that no longer exist (their links are already defunct).
pub fn prune_links(dir: &Path, live: &[Iface]) {
    let Ok(rd) = std::fs::read_dir(dir.join("links")) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let index = name
            .rsplit_once('-')
            .and_then(|(_, i)| i.parse::<u32>().ok());
        if let Some(index) = index
            && !live.iter().any(|i| i.index == index)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Detaches one attachment (device no longer selected) by removing its pin.
pub fn detach(dir: &Path, role: Role, ifindex: u32) {
    let _ = std::fs::remove_file(link_pin(dir, role, ifindex));
}

/// Program links pinned under `<dir>/links` that still hold a live link.
pub fn pinned_links(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir.join("links")) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .filter(|e| PinnedLink::from_pin(e.path()).is_ok())
        .count()
}

/// Ifindexes with an attachment of `role`.
pub fn attached(dir: &Path, role: Role) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir.join("links")) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&format!("{}-", role.prefix()))
                .and_then(|i| i.parse().ok())
        })
        .collect()
}
