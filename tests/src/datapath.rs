//! The datapath loaded into a private pin directory and driven with BPF_PROG_TEST_RUN: for
//! fixture tests and the datapath benchmark. Nothing is attached to any device.

use aya::{
    Ebpf,
    programs::{ProgramError, TestRun, TestRunOptions, TestRunResult},
};
use lb_common::{Config, prog_names};
use lb_userspace::{
    agent::AgentConfig,
    bpf::{self, Capacities, maps::Maps},
    model::DesiredState,
    sync::{MapSync, SyncConfig, SyncReport},
};

use crate::agent::PinDir;

/// A loaded, unattached datapath with its own maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    /// Read handle on the maps.
    pub maps: Maps,
    pub sync: MapSync<Maps>,
    pub config: Config,
    _pins: PinDir,
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
        kubeconfig: None,
        node_name: None,
        node_ips: vec!["192.168.0.1".parse().expect("ip")],
        devices: Vec::new(),
        pod_devices: Vec::new(),
        bpffs: "/nonexistent".into(),
        xdp_mode: bpf::XdpModeOpt::Off,
        proxy_name: None,
        maglev_size: MAGLEV_SIZE,
        hash_seed: SEED,
        capacities: Capacities::default(),
        hairpin_addr: "169.254.42.1".parse().expect("ip"),
        snat_addr: None,
        snat_ports: (61000, 65535),
        timeouts: Default::default(),
    }
    .datapath_config();
    c.hash_seed = SEED;
    c
}

impl Datapath {
    /// Loads the datapath into `/sys/fs/bpf/xlbt-<tag>` with `maglev_size`-slot tables.
    pub fn new(tag: &str, maglev_size: u32) -> Self {
        let pins = PinDir::new(tag);
        let ebpf = bpf::load(&pins.path, Capacities::default(), false).expect("load datapath");
        let mut maps = Maps::open(&pins.path).expect("open maps");
        let config = default_config();
        maps.write_config(&config).expect("config");
        let sync = MapSync::new(
            Maps::open(&pins.path).expect("open maps"),
            SyncConfig {
                maglev_size,
                hash_seed: SEED,
                svc_id_limit: u64::from(lb_common::capacity::SVC_IDS),
            },
        );
        Self {
            ebpf,
            maps,
            sync,
            config,
            _pins: pins,
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

    fn run(
        &mut self,
        name: &'static str,
        pkt: &[u8],
        repeat: u32,
    ) -> Result<(TestRunResult, Vec<u8>), ProgramError> {
        let mut out = vec![0u8; pkt.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        let r = if name == prog_names::XDP {
            bpf::xdp(&mut self.ebpf).expect("xdp").test_run(opts)?
        } else {
            let p = bpf::classifier(&mut self.ebpf, name).expect("classifier");
            if name == prog_names::FLOOR && p.fd().is_err() {
                p.load().expect("load floor");
            }
            p.test_run(opts)?
        };
        out.truncate(r.data_size_out as usize);
        Ok((r, out))
    }

    /// Runs a tc program once: (return code, packet after).
    pub fn tc(&mut self, name: &'static str, pkt: &[u8]) -> (i32, Vec<u8>) {
        let (r, out) = self.run(name, pkt, 1).expect("test run");
        (r.return_value as i32, out)
    }

    /// Runs the XDP program once: (action, packet after).
    pub fn xdp(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let (r, out) = self.run(prog_names::XDP, pkt, 1).expect("test run");
        (r.return_value, out)
    }

    /// Average nanoseconds per run over `repeat` runs (the kernel's own measurement).
    pub fn time(&mut self, name: &'static str, pkt: &[u8], repeat: u32) -> f64 {
        let (r, _) = self.run(name, pkt, repeat).expect("test run");
        r.duration.as_secs_f64() * 1e9
    }

    /// Global counters summed over CPUs.
    pub fn counters(&self) -> Vec<u64> {
        self.maps.counters_sum().expect("counters")
    }
}
