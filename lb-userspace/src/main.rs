//! `xlb`: the agent and the operator CLI in one binary.

use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use lb_userspace::{
    agent::{self, AgentConfig, Timeouts},
    bpf::{Capacities, XdpModeOpt, maps::Maps, pins, sock::CgroupOpt},
    cli::{self, Output},
    maglev,
    model::Protocol,
    source::kube::{Access as KubeAccess, in_cluster_available},
    translate::NodeContext,
};

/// `--version`: the release, the commit it was built from and the pinned-map layout it speaks.
static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| cli::BuildInfo::this().to_string());

#[derive(Parser)]
#[command(
    name = "xlb",
    version = VERSION.as_str(),
    about = "eBPF/XDP layer-4 service load balancer"
)]
struct Cli {
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `lb_userspace=debug`.
    #[arg(long, global = true, env = "XLB_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: load the datapath, attach it, keep it in sync with the sources.
    Agent(Box<AgentArgs>),
    /// Programmed services.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Backends of every service.
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Tracked flows.
    Conntrack {
        #[command(subcommand)]
        cmd: ConntrackCmd,
    },
    /// Every datapath counter and drop reason.
    Stats(ReadArgs),
    /// Each pinned map: fill level against capacity, and the bpftool command that dumps it.
    Maps(ReadArgs),
    /// Run a described packet through the loaded datapath (BPF_PROG_TEST_RUN against the live
    /// maps, without touching them) and show every decision.
    Explain(ExplainArgs),
    /// Stream datapath events: drops with their reason, optionally new-flow decisions.
    Monitor(MonitorArgs),
    /// Validate service files without touching the kernel. Problems go to stderr, the summary
    /// to stdout. Exit code: 0 clean, 1 errors (entries the agent would skip or keep at their
    /// last good version), 3 warnings only (input read and deliberately ignored).
    Check(CheckArgs),
    /// Is it working? The agent (running, stopped, never started), its last sync, every
    /// device with its attach mode and why, socket hooks, map fill, drops, warnings.
    /// Exit code: 0 running and fine, 1 running with warnings, 3 no agent running, 4 no
    /// datapath.
    Status(StatusArgs),
    /// This build: release, commit, and the pinned-map layout version it reads and writes.
    Version {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print a shell completion script (e.g. `xlb completions bash > /etc/bash_completion.d/xlb`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with `--dir` write xlb.1 and a page per subcommand
    /// (xlb-agent.1, ...) there.
    Man {
        /// Directory to write every page to (e.g. /usr/local/share/man/man1).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// Seconds to watch the drop counters for (0: do not wait).
    #[arg(long, default_value_t = 1.0)]
    sample: f64,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// List backends with their service, state, locality and weight.
    List(ReadArgs),
}

#[derive(Subcommand)]
enum ConntrackCmd {
    /// List tracked flows: original and translated tuple, state, age.
    List(ConntrackArgs),
}

#[derive(Args)]
struct ConntrackArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// Only flows of services whose name (namespace/name:port) contains this.
    #[arg(long)]
    service: Option<String>,
    /// Only flows to this backend (ADDR or ADDR:PORT).
    #[arg(long)]
    backend: Option<String>,
    /// Only flows from this client address.
    #[arg(long)]
    client: Option<std::net::IpAddr>,
    /// Include expired entries not yet evicted.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// Protocol of the packet.
    #[arg(long, value_parser = parse_proto, default_value = "tcp")]
    proto: Protocol,
    /// Source IP or IP:PORT, [IPv6]:PORT (without a port: 40000; the port only feeds the
    /// backend hash).
    #[arg(long, value_parser = parse_src)]
    src: std::net::SocketAddr,
    /// Destination IP:PORT or [IPv6]:PORT (of the source's family).
    #[arg(long)]
    dst: std::net::SocketAddr,
    /// Device the packet arrives on (decides the hook: an uplink runs XDP then tc, a pod device
    /// tc). Default: the first attached pod device.
    #[arg(long)]
    device: Option<String>,
    /// TCP: a packet of an established connection (ACK) instead of a SYN.
    #[arg(long)]
    established: bool,
}

#[derive(Args)]
struct MonitorArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// Also stream new-flow decisions (client → frontend → backend).
    #[arg(long)]
    flows: bool,
    /// Do not stream drops.
    #[arg(long)]
    no_drops: bool,
    /// Only events of services whose name contains this.
    #[arg(long)]
    service: Option<String>,
    /// Only events from this client address.
    #[arg(long)]
    client: Option<std::net::IpAddr>,
    /// Only events to this frontend address.
    #[arg(long)]
    frontend: Option<std::net::IpAddr>,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

fn parse_src(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, EXPLAIN_SRC_PORT));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not IP, IP:PORT or [IPv6]:PORT"))
}

/// Source port of `xlb explain --src IP`.
const EXPLAIN_SRC_PORT: u16 = 40000;

fn parse_proto(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        _ => Err(format!("{s:?}: expected tcp, udp or sctp")),
    }
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// List services, frontends, backends and counters from the pinned maps.
    List {
        /// Only this service: NAME (any namespace), NAMESPACE/NAME[:PORT], or a frontend
        /// VIP[:PORT].
        filter: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
    },
}

/// Options of commands that read the pinned maps.
#[derive(Args)]
struct ReadArgs {
    /// Pin directory of the agent.
    #[arg(long, env = "XLB_BPFFS", default_value = "/sys/fs/bpf/xlb")]
    bpffs: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Tables without their title row.
    #[arg(long)]
    no_headers: bool,
}

impl ReadArgs {
    fn format(&self) -> cli::Format {
        cli::Format {
            output: self.output,
            headers: !self.no_headers,
        }
    }

    /// The pin directory as this process reaches it, or the one "no agent" error.
    fn datapath(&self) -> anyhow::Result<PathBuf> {
        let dir = pins::resolve_read(&self.bpffs);
        if pins::has_datapath(&dir) {
            Ok(dir)
        } else {
            Err(NoDatapath(self.bpffs.clone()).into())
        }
    }
}

/// No datapath is pinned where a read command looks: one message and exit code for all.
#[derive(Debug, thiserror::Error)]
#[error("{}", pins::no_datapath_message(.0))]
struct NoDatapath(PathBuf);

/// Exit code of a read command that found no datapath (as `xlb status`).
const EXIT_NO_DATAPATH: u8 = 4;

/// How Services are read for this node, shared by the agent and `xlb check`.
#[derive(Args)]
struct PolicyArgs {
    /// This node's zone, for topology-aware routing (`hints.forZones`); default: the Node's
    /// `topology.kubernetes.io/zone` label.
    #[arg(long, env = "XLB_NODE_ZONE")]
    node_zone: Option<String>,
    /// Only externalIPs within these CIDRs are served (comma-separated); others are reported
    /// and not programmed. Without it any address is (as kube-proxy): whoever may create
    /// Services can then take over any address for the cluster (CVE-2020-8554).
    #[arg(long, env = "XLB_EXTERNAL_IP_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    external_ip_cidrs: Option<Vec<lb_userspace::model::IpNet>>,
}

fn parse_cidr(s: &str) -> Result<lb_userspace::model::IpNet, String> {
    lb_userspace::model::IpNet::parse(s)
        .ok_or_else(|| format!("{s:?} is not a CIDR (IPv4 or IPv6)"))
}

/// What the maps hold: the agent sizes them, `xlb check` compares the files against them.
#[derive(Args)]
struct MaxArgs {
    /// Services (backend sets) the maps hold. Applies when the maps are created; a service
    /// beyond it is not programmed and says so.
    #[arg(long, env = "XLB_MAX_SERVICES", default_value_t = lb_common::capacity::SVC_IDS,
          value_parser = clap::value_parser!(u32).range(2..))]
    max_services: u32,
    /// Frontend entries (address, port, protocol) the maps hold. Applies when the maps are
    /// created.
    #[arg(long, env = "XLB_MAX_FRONTENDS", default_value_t = lb_common::capacity::SERVICES,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_frontends: u32,
    /// Backend entries the maps hold (every endpoint of every service). Applies when the maps
    /// are created.
    #[arg(long, env = "XLB_MAX_BACKENDS", default_value_t = lb_common::capacity::BACKENDS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_backends: u32,
}

impl MaxArgs {
    fn limits(&self) -> lb_userspace::bpf::Limits {
        lb_userspace::bpf::Limits {
            services: u64::from(self.max_services),
            frontends: self.max_frontends as usize,
            backends: self.max_backends as usize,
        }
    }
}

#[derive(Args)]
struct CheckArgs {
    /// A file or directory of service files.
    path: PathBuf,
    /// Node name, to evaluate node-local endpoints as the agent would.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Node addresses of either family (NodePort frontends).
    #[arg(long = "node-ip", env = "XLB_NODE_IP", value_delimiter = ',')]
    node_ips: Vec<std::net::IpAddr>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    max: MaxArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let a: u16 = a.parse().map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b.parse().map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

/// A listen address, or none (`off`).
#[derive(Clone, Copy, Debug)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is not IP:PORT (or `off`)"))
}

#[derive(Args)]
struct AgentArgs {
    /// Service files: a file or directory of YAML (Kubernetes Service/EndpointSlice manifests
    /// and/or the compact format); reloaded on change.
    #[arg(long, env = "XLB_SERVICES")]
    services: Option<PathBuf>,
    /// Kubernetes source: kubeconfig path. In a pod without `--services`, the pod's service
    /// account is used (see `--in-cluster`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes source through the pod's service account (the default in a pod when neither
    /// `--services` nor `--kubeconfig` is given).
    #[arg(long, env = "XLB_IN_CLUSTER")]
    in_cluster: bool,
    /// This node's name (EndpointSlice `nodeName` of local endpoints).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Node addresses of either family: NodePort frontends and SNAT source (repeatable or
    /// comma-separated).
    #[arg(long = "node-ip", env = "XLB_NODE_IP", value_delimiter = ',')]
    node_ips: Vec<std::net::IpAddr>,
    /// Uplinks (XDP + tc): names or globs such as `eth*`, comma-separated.
    #[arg(long, env = "XLB_DEVICES", value_delimiter = ',')]
    devices: Vec<String>,
    /// Pod-facing device globs (tc), comma-separated; devices appearing later are attached.
    #[arg(long, env = "XLB_POD_DEVICES", value_delimiter = ',')]
    pod_devices: Vec<String>,
    /// Pin directory (one per agent).
    #[arg(long, env = "XLB_BPFFS", default_value = "/sys/fs/bpf/xlb")]
    bpffs: PathBuf,
    /// XDP mode on uplinks.
    #[arg(long, env = "XLB_XDP_MODE", value_enum, default_value_t = XdpModeOpt::Auto)]
    xdp_mode: XdpModeOpt,
    /// cgroup v2 directory whose processes' connects (and host-network processes' UDP
    /// datagrams) to Services are translated at the socket (no per-packet NAT): `auto` (the
    /// first cgroup2 mount: the whole node), a path, or `off` (every connection takes the tc
    /// path).
    #[arg(long, env = "XLB_CGROUP", default_value = "auto")]
    cgroup: CgroupOpt,
    /// Whose sockets are translated: `all` (pods and host-network processes), or `host`
    /// (host-network processes only; pods' connects then go through tc, for service meshes,
    /// KubeVirt or Kata that must see the ClusterIP). Applies when the programs are loaded.
    #[arg(long, env = "XLB_SOCKET_LB_SCOPE", default_value = "all", value_parser = ["all", "host"])]
    socket_lb_scope: String,
    /// Prometheus metrics address (`/metrics`); `off` disables.
    #[arg(long, env = "XLB_METRICS_ADDR", default_value = "127.0.0.1:10249", value_parser = parse_listen)]
    metrics_addr: Listen,
    /// Health check address (`/healthz`, `/livez`); `off` disables.
    #[arg(long, env = "XLB_HEALTHZ_ADDR", default_value = "0.0.0.0:10256", value_parser = parse_listen)]
    healthz_addr: Listen,
    /// Only Services labelled service.kubernetes.io/service-proxy-name=NAME (default: only
    /// Services without the label).
    #[arg(long, env = "XLB_PROXY_NAME")]
    proxy_name: Option<String>,
    /// Maglev table size: `auto` (from each service's backend count: 1021 slots up to 10
    /// backends, doubling from there) or one prime for every service (e.g. 16381 or 65537).
    #[arg(long, env = "XLB_MAGLEV_TABLE_SIZE", default_value = "auto")]
    maglev_table_size: maglev::MaglevSize,
    /// Seed of the flow and Maglev hashes; must be equal on every node.
    #[arg(long, env = "XLB_HASH_SEED", default_value_t = 0x786c_6221)]
    hash_seed: u32,
    /// Conntrack capacity of confirmed flows (entries; two per flow). Applies when the map is
    /// created.
    #[arg(long, env = "XLB_CT_MAX", default_value_t = lb_common::capacity::CONNTRACK,
          value_parser = clap::value_parser!(u32).range(2..))]
    ct_max: u32,
    /// Conntrack capacity of flows not answered yet (entries; two per flow): a flood of new
    /// flows churns only these. Applies when the map is created.
    #[arg(long, env = "XLB_CT_NEW_MAX", default_value_t = lb_common::capacity::CT_NEW,
          value_parser = clap::value_parser!(u32).range(2..))]
    ct_new_max: u32,
    #[command(flatten)]
    max: MaxArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Service CIDRs (comma-separated, IPv4 and IPv6, at most 4 of each): packets to an address in them that no
    /// Service owns are dropped and counted (`unowned_service_ip`), as kube-proxy's nftables
    /// mode does. Default: none.
    #[arg(long, env = "XLB_SERVICE_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    service_cidrs: Vec<lb_userspace::model::IpNet>,
    /// Source address of hairpin flows (a pod reaching itself through a Service).
    #[arg(long, env = "XLB_HAIRPIN_ADDR", default_value = "169.254.42.1")]
    hairpin_addr: Ipv4Addr,
    /// Source address of IPv6 hairpin flows.
    #[arg(long, env = "XLB_HAIRPIN_ADDR6", default_value = "fd00:786c:62::1")]
    hairpin_addr6: std::net::Ipv6Addr,
    /// SNAT source for north-south flows to remote backends (default: the first IPv4
    /// --node-ip).
    #[arg(long, env = "XLB_SNAT_ADDR")]
    snat_addr: Option<Ipv4Addr>,
    /// SNAT source of IPv6 north-south flows (default: the first IPv6 --node-ip).
    #[arg(long, env = "XLB_SNAT_ADDR6")]
    snat_addr6: Option<std::net::Ipv6Addr>,
    /// SNAT source port range MIN-MAX.
    #[arg(long, env = "XLB_SNAT_PORTS", default_value = "61000-65535", value_parser = parse_ports)]
    snat_ports: (u16, u16),
    /// Conntrack timeout of established TCP flows, seconds.
    #[arg(long, env = "XLB_CT_TCP_TIMEOUT", default_value_t = Timeouts::default().tcp_established)]
    ct_tcp_timeout: u32,
    /// Conntrack timeout of UDP/SCTP flows, seconds.
    #[arg(long, env = "XLB_CT_UDP_TIMEOUT", default_value_t = Timeouts::default().udp)]
    ct_udp_timeout: u32,
    /// Remove the datapath (detach, drop every map including conntrack) and exit.
    #[arg(long)]
    cleanup: bool,
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn agent_config(a: AgentArgs) -> AgentConfig {
    let no_files = a.services.is_none();
    AgentConfig {
        services: a.services,
        kubernetes: match a.kubeconfig {
            Some(path) => Some(KubeAccess::Kubeconfig(path)),
            None if a.in_cluster => Some(KubeAccess::InCluster),
            None if no_files && in_cluster_available() => Some(KubeAccess::InCluster),
            None => None,
        },
        node_name: a.node_name,
        node_ips: a.node_ips,
        node_zone: a.policy.node_zone,
        external_ip_cidrs: a.policy.external_ip_cidrs,
        devices: a.devices.into_iter().filter(|d| !d.is_empty()).collect(),
        pod_devices: a
            .pod_devices
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect(),
        bpffs: a.bpffs,
        xdp_mode: a.xdp_mode,
        cgroup: a.cgroup,
        proxy_name: a.proxy_name,
        maglev_size: a.maglev_table_size,
        hash_seed: a.hash_seed,
        capacities: Capacities {
            conntrack: a.ct_max,
            ct_new: a.ct_new_max,
            services: a.max.max_services,
            frontends: a.max.max_frontends,
            backends: a.max.max_backends,
            service_cidrs: lb_userspace::bpf::service_cidr_slots(&a.service_cidrs),
            socket_lb_host_only: a.socket_lb_scope == "host",
            ..Capacities::default()
        },
        hairpin_addr: a.hairpin_addr,
        hairpin_addr6: a.hairpin_addr6,
        snat_addr6: a.snat_addr6,
        snat_addr: a.snat_addr,
        snat_ports: a.snat_ports,
        timeouts: Timeouts {
            tcp_established: a.ct_tcp_timeout,
            udp: a.ct_udp_timeout,
            ..Timeouts::default()
        },
        metrics_addr: a.metrics_addr.0,
        healthz_addr: a.healthz_addr.0,
    }
}

fn open_maps(r: &ReadArgs) -> anyhow::Result<Maps> {
    let dir = r.datapath()?;
    Maps::open(&dir)
        .with_context(|| format!("reading the datapath pinned under {}", r.bpffs.display()))
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "called as `Result::map(print_ok)` on each command's output"
)]
fn print_ok(s: String) -> bool {
    print!("{s}");
    true
}

fn monitor(m: MonitorArgs) -> anyhow::Result<bool> {
    let opts = cli::monitor::Options {
        drops: !m.no_drops,
        flows: m.flows,
        service: m.service,
        client: m.client,
        frontend: m.frontend,
        count: m.count,
        duration: m
            .duration
            .map(Duration::try_from_secs_f64)
            .transpose()
            .context("--duration")?,
        output: m.read.output,
    };
    if !opts.drops && !opts.flows {
        anyhow::bail!("--no-drops without --flows leaves nothing to monitor");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let dir = m.read.datapath()?;
    rt.block_on(cli::monitor::run(&dir, &opts, std::io::stdout()))?;
    Ok(true)
}

/// Unblocks SIGINT, SIGTERM and SIGHUP, which the agent handles (stop, stop, resync): a
/// parent may start it with them blocked (the mask is inherited across exec), and a blocked
/// SIGTERM would leave the agent running until it is killed. Called before the runtime starts
/// its threads, so they inherit the mask.
fn unblock_stop_signals() {
    // SAFETY: an empty sigset_t filled by sigemptyset/sigaddset; the calls only write `set`.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&raw mut set, sig);
        }
        set
    };
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut()) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::from_raw_os_error(rc), "could not unblock SIGTERM/SIGINT/SIGHUP");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result: anyhow::Result<bool> = match cli.cmd {
        Cmd::Agent(a) => {
            if let Some(family) = lb_userspace::bpf::service_cidrs_over(&a.service_cidrs) {
                eprintln!(
                    "xlb: --service-cidrs: more than {} {family} CIDRs given (a cluster has one per family, usually)",
                    lb_common::capacity::SERVICE_CIDR_SLOTS
                );
                return ExitCode::from(2);
            }
            if a.cleanup {
                agent::cleanup(&pins::resolve_read(&a.bpffs)).map(|removed| {
                    if !removed {
                        println!(
                            "nothing to remove: no xlb datapath under {}",
                            a.bpffs.display()
                        );
                    }
                    true
                })
            } else {
                let cfg = agent_config(*a);
                unblock_stop_signals();
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("starting the runtime")
                    .and_then(|rt| rt.block_on(agent::run(cfg)))
                    .map(|()| true)
            }
        }
        Cmd::Service {
            cmd: ServiceCmd::List { filter, read: r },
        } => open_maps(&r)
            .and_then(|m| cli::service::list(&m, filter.as_deref(), r.format()))
            .map(print_ok),
        Cmd::Backend {
            cmd: BackendCmd::List(r),
        } => open_maps(&r)
            .and_then(|m| cli::inspect::backends(&m, r.format()))
            .map(print_ok),
        Cmd::Conntrack {
            cmd: ConntrackCmd::List(c),
        } => {
            let filter = cli::inspect::CtFilter {
                service: c.service,
                backend: c.backend,
                client: c.client,
                all: c.all,
            };
            open_maps(&c.read)
                .and_then(|m| cli::inspect::conntrack(&m, &filter, c.read.format()))
                .map(print_ok)
        }
        Cmd::Stats(r) => open_maps(&r)
            .and_then(|m| cli::inspect::stats(&m, r.format()))
            .map(print_ok),
        Cmd::Maps(r) => r
            .datapath()
            .and_then(|dir| cli::inspect::maps(&dir, r.format()))
            .map(print_ok),
        Cmd::Status(a) => {
            let dir = pins::resolve_read(&a.read.bpffs);
            let sample = Duration::try_from_secs_f64(a.sample.max(0.0)).unwrap_or_default();
            let mut view = cli::status::gather(&dir, sample);
            view.bpffs = a.read.bpffs.display().to_string();
            match cli::status::render(&view, a.read.format()) {
                Ok(s) => {
                    print!("{s}");
                    return ExitCode::from(view.exit);
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Explain(e) => {
            let req = cli::explain::Request {
                proto: e.proto,
                src: e.src,
                dst: e.dst,
                device: e.device,
                established: e.established,
            };
            e.read
                .datapath()
                .and_then(|dir| {
                    cli::explain::explain(&dir, &req).with_context(|| {
                        format!(
                            "explaining with the datapath under {}",
                            e.read.bpffs.display()
                        )
                    })
                })
                .and_then(|x| cli::explain::render(&x, e.read.format()))
                .map(print_ok)
        }
        Cmd::Monitor(m) => monitor(m),
        Cmd::Version { output } => cli::Format::from(output)
            .render(&cli::BuildInfo::this(), |_| format!("xlb {}\n", *VERSION))
            .map(print_ok),
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "xlb", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")
                .map(|()| true)
        }
        Cmd::Man { dir: None } => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the man page")
            .map(|()| true),
        Cmd::Man { dir: Some(dir) } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .with_context(|| format!("writing the man pages to {}", dir.display()))
            .map(|()| true),
        Cmd::Check(c) => {
            let node = NodeContext {
                node_name: c.node_name,
                node_ips: c.node_ips,
                proxy_name: None,
                zone: c.policy.node_zone,
                external_ip_cidrs: c.policy.external_ip_cidrs,
            };
            match cli::check::run(&c.path, &node, c.max.limits(), c.output) {
                Ok(r) => {
                    eprint!("{}", r.stderr);
                    print!("{}", r.stdout);
                    return ExitCode::from(r.exit);
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.is::<NoDatapath>() => {
            eprintln!("xlb: {e}");
            ExitCode::from(EXIT_NO_DATAPATH)
        }
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
