//! The datapath loaded into a private pin directory and driven with BPF_PROG_TEST_RUN: for
//! fixture tests and the datapath benchmark. Nothing is attached to any device.

use aya::{
    Ebpf,
    programs::{Program, ProgramError, TestRun, TestRunOptions, TestRunResult},
};
use lb_common::{Config, prog_names};
use lb_userspace::{
    agent::AgentConfig,
    bpf::{self, Capacities, maps::Maps},
    maglev::MaglevSize,
    model::DesiredState,
    sync::{MapSync, SyncConfig, SyncReport},
};

use crate::{agent::PinDir, netns::Netns};

/// The fixture namespace's uplink: every test packet arrives on it.
pub const UPLINK: &str = "d0";
/// Next hop of every routed test prefix (a permanent neighbour, MAC `NEXT_HOP_MAC`).
pub const NEXT_HOP: &str = "192.168.0.2";
/// MAC of `NEXT_HOP`.
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];
/// Prefixes routed through `UPLINK` in the fixture namespace.
pub const ROUTED: [&str; 5] = [
    "10.244.0.0/16",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "10.96.0.0/12",
    "10.94.0.0/15",
];

/// IPv6 next hop of every routed IPv6 test prefix (MAC `NEXT_HOP_MAC` too).
pub const NEXT_HOP6: &str = "fd00:192:168::2";
/// The fixture namespace's IPv6 address on `UPLINK` (its node address).
pub const UPLINK_ADDR6: &str = "fd00:192:168::1";
/// IPv6 prefixes routed through `UPLINK`.
pub const ROUTED6: [&str; 3] = ["fd00:10:244::/48", "fd00:10:96::/108", "2001:db8::/32"];

/// Repeats per run of `Datapath::time_routed`: a TTL of 255 lasts 254 hops.
pub const ROUTED_RUN: u32 = 250;

/// A loaded, unattached datapath with its own maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    /// Objects whose programs run next to the datapath's (`add_object`).
    extra: Vec<Ebpf>,
    /// Read handle on the maps.
    pub maps: Maps,
    pub sync: MapSync<Maps>,
    pub config: Config,
    /// Ifindex of `UPLINK`, the ingress device of every run.
    pub ifindex: u32,
    _pins: PinDir,
    _ns: Netns,
}

/// Settings of the fixture datapath.
pub const MAGLEV_SIZE: u32 = 1021;
/// Hash seed of the fixture datapath.
pub const SEED: u32 = 42;

/// The agent's default datapath configuration (what `xlb agent` writes), with `hairpin` and
/// `snat` addresses set.
pub fn default_config() -> Config {
    let mut c = AgentConfig {
        services: None,
        kubernetes: None,
        node_name: None,
        node_ips: vec!["192.168.0.1".parse().expect("ip")],
        node_zone: None,
        external_ip_cidrs: None,
        devices: Vec::new(),
        pod_devices: Vec::new(),
        bpffs: "/nonexistent".into(),
        xdp_mode: bpf::XdpModeOpt::Off,
        cgroup: lb_userspace::bpf::sock::CgroupOpt::Off,
        proxy_name: None,
        maglev_size: MaglevSize::Fixed(MAGLEV_SIZE),
        hash_seed: SEED,
        capacities: Capacities::default(),
        hairpin_addr: "169.254.42.1".parse().expect("ip"),
        hairpin_addr6: "fd00:786c:62::1".parse().expect("ip"),
        snat_addr6: None,
        snat_addr: None,
        snat_ports: (61000, 65535),
        timeouts: Default::default(),
        metrics_addr: None,
        healthz_addr: None,
    }
    .datapath_config();
    c.hash_seed = SEED;
    c
}

impl Datapath {
    /// Loads the datapath into `/sys/fs/bpf/xlbt-<tag>` with `maglev_size`-slot tables, and
    /// moves the calling thread into a namespace of its own where test packets arrive on a
    /// dummy uplink with routes (so routing decisions are the same on every machine).
    pub fn new(tag: &str, maglev_size: u32) -> Self {
        Self::with_capacities(tag, maglev_size, Capacities::default())
    }

    /// `new`, with the given map capacities (small conntrack tables for flood tests).
    pub fn with_capacities(tag: &str, maglev_size: u32, caps: Capacities) -> Self {
        let ns = Netns::new(&format!("xlbt-{tag}-fx"));
        // A veth pair (no dummy driver on every kernel); the peer only provides carrier.
        ns.ip(&[
            "link", "add", UPLINK, "type", "veth", "peer", "name", "d0peer",
        ]);
        ns.ip(&["addr", "add", "192.168.0.1/24", "dev", UPLINK]);
        ns.ip(&["link", "set", "d0peer", "up"]);
        ns.ip(&["link", "set", UPLINK, "up"]);
        let mac = NEXT_HOP_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ns.ip(&[
            "neigh",
            "add",
            NEXT_HOP,
            "lladdr",
            &mac,
            "dev",
            UPLINK,
            "nud",
            "permanent",
        ]);
        for prefix in ROUTED {
            ns.ip(&["route", "add", prefix, "via", NEXT_HOP, "dev", UPLINK]);
        }
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{UPLINK_ADDR6}/64"),
            "dev",
            UPLINK,
            "nodad",
        ]);
        ns.ip(&[
            "-6",
            "neigh",
            "add",
            NEXT_HOP6,
            "lladdr",
            &mac,
            "dev",
            UPLINK,
            "nud",
            "permanent",
        ]);
        for prefix in ROUTED6 {
            ns.ip(&[
                "-6", "route", "add", prefix, "via", NEXT_HOP6, "dev", UPLINK,
            ]);
        }
        crate::netns::enter(&ns.handle());
        let c = std::ffi::CString::new(UPLINK).expect("name");
        // SAFETY: a valid C string; the call only reads it.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(ifindex, 0, "no {UPLINK} in the fixture namespace");
        let pins = PinDir::new(tag);
        let ebpf = bpf::load(&pins.path, caps, false).expect("load datapath");
        let mut maps = Maps::open(&pins.path).expect("open maps");
        let config = default_config();
        maps.write_config(&config).expect("config");
        let hairpin6: std::net::Ipv6Addr = "fd00:786c:62::1".parse().expect("ip");
        let node6: std::net::Ipv6Addr = UPLINK_ADDR6.parse().expect("ip");
        maps.write_config6(&lb_common::Config6 {
            hairpin_addr: hairpin6.octets(),
            snat_addr: node6.octets(),
        })
        .expect("config6");
        let sync = MapSync::new(
            Maps::open(&pins.path).expect("open maps"),
            SyncConfig {
                maglev_size: MaglevSize::Fixed(maglev_size),
                hash_seed: SEED,
                limits: lb_userspace::sync::Limits::default(),
            },
        );
        Self {
            ebpf,
            extra: Vec::new(),
            maps,
            sync,
            config,
            ifindex,
            _pins: pins,
            _ns: ns,
        }
    }

    /// Rewrites the configuration entry.
    pub fn set_config(&mut self, f: impl FnOnce(&mut Config)) {
        f(&mut self.config);
        let c = self.config;
        self.maps.write_config(&c).expect("config");
    }

    /// Programs services through MapSync, as the agent does.
    pub fn program(&mut self, desired: &DesiredState) -> SyncReport {
        let r = self.sync.apply(desired);
        assert!(r.failed.is_empty(), "programming failed: {:?}", r.failed);
        r
    }

    /// Makes the programs of another object (the benchmarks' floors) runnable by name next
    /// to the datapath's, on the same uplink. They are loaded on first use.
    pub fn add_object(&mut self, ebpf: Ebpf) {
        self.extra.push(ebpf);
    }

    /// The program `name` of the datapath or of an added object, loaded.
    fn loaded(&mut self, name: &'static str) -> &mut Program {
        let ebpf = std::iter::once(&mut self.ebpf)
            .chain(self.extra.iter_mut())
            .find(|e| e.program(name).is_some())
            .unwrap_or_else(|| panic!("no program {name}"));
        let prog = ebpf.program_mut(name).expect("program");
        if prog.fd().is_err() {
            let loaded = match prog {
                Program::Xdp(p) => bpf::load_program(name, || p.load()),
                Program::SchedClassifier(p) => bpf::load_program(name, || p.load()),
                _ => panic!("{name}: neither XDP nor tc"),
            };
            loaded.unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        prog
    }

    fn run(
        &mut self,
        name: &'static str,
        pkt: &[u8],
        repeat: u32,
    ) -> Result<(TestRunResult, Vec<u8>), ProgramError> {
        let ifindex = self.ifindex;
        let prog = self.loaded(name);
        let xdp = matches!(prog, Program::Xdp(_));
        let mut out = vec![0u8; pkt.len() + 256];
        // The ingress device: `struct xdp_md.ingress_ifindex` (offset 12) for XDP,
        // `struct __sk_buff.ifindex` (offset 40) for tc.
        let mut ctx = vec![0u8; if xdp { 24 } else { 44 }];
        let off = if xdp { 12 } else { 40 };
        ctx[off..off + 4].copy_from_slice(&ifindex.to_ne_bytes());
        if xdp {
            // `xdp_md.data_end` (offset 4): the packet's length.
            ctx[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        };
        let r = match prog {
            Program::Xdp(p) => p.test_run(opts)?,
            Program::SchedClassifier(p) => p.test_run(opts)?,
            _ => unreachable!("checked by `program`"),
        };
        out.truncate(r.data_size_out as usize);
        Ok((r, out))
    }

    /// Runs a tc program once: (return code, packet after).
    pub fn tc(&mut self, name: &'static str, pkt: &[u8]) -> (i32, Vec<u8>) {
        let (r, out) = self
            .run(name, pkt, 1)
            .unwrap_or_else(|e| panic!("test run {pkt:02x?}: {e}"));
        (r.return_value as i32, out)
    }

    /// Runs the XDP program once: (action, packet after).
    pub fn xdp(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let (r, out) = self.run(prog_names::XDP, pkt, 1).expect("test run");
        (r.return_value, out)
    }

    /// Writes a conntrack entry (benchmarks build steady states with these).
    pub fn put_ct(&mut self, key: lb_common::CtKey, value: lb_common::CtValue) {
        self.maps
            .conntrack
            .insert(key, value, 0)
            .expect("conntrack entry");
    }

    /// Average nanoseconds per run over `repeat` runs (the kernel's own measurement).
    pub fn time(&mut self, name: &'static str, pkt: &[u8], repeat: u32) -> f64 {
        let (r, _) = self.run(name, pkt, repeat).expect("test run");
        r.duration.as_secs_f64() * 1e9
    }

    /// `time` for a packet the program forwards as a router would, decrementing its TTL at
    /// every repeat (BPF_PROG_TEST_RUN runs the repeats on the same buffer): runs of
    /// `ROUTED_RUN` repeats, each from TTL 255, averaged over `repeat` in all.
    pub fn time_routed(&mut self, name: &'static str, pkt: &[u8], repeat: u32) -> f64 {
        self.time_runs(name, repeat, |_| pkt.to_vec())
    }

    /// `time_routed` with a packet per run (`make(run)`), e.g. a new flow for every run.
    pub fn time_runs(
        &mut self,
        name: &'static str,
        repeat: u32,
        mut make: impl FnMut(u32) -> Vec<u8>,
    ) -> f64 {
        let runs = repeat.div_ceil(ROUTED_RUN);
        (0..runs)
            .map(|i| {
                let pkt = crate::packet::with_ttl(make(i), 255);
                self.time(name, &pkt, ROUTED_RUN)
            })
            .sum::<f64>()
            / f64::from(runs)
    }

    /// Global counters summed over CPUs.
    pub fn counters(&self) -> Vec<u64> {
        self.maps.counters_sum().expect("counters")
    }
}
