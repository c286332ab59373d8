//! `xlb`: the agent and the operator CLI in one binary.

use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lb_userspace::{
    agent::{self, AgentConfig, Timeouts},
    bpf::{Capacities, XdpModeOpt, maps::Maps},
    cli::{self, Output},
    k8s::NodeContext,
    maglev,
};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
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
    /// Validate service files without touching the kernel.
    Check(CheckArgs),
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// List services, frontends, backends and counters from the pinned maps.
    List(ReadArgs),
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
}

#[derive(Args)]
struct CheckArgs {
    /// A file or directory of service files.
    path: PathBuf,
    /// Node name, to evaluate node-local endpoints as the agent would.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Node addresses (NodePort frontends).
    #[arg(long = "node-ip", env = "XLB_NODE_IP", value_delimiter = ',')]
    node_ips: Vec<Ipv4Addr>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
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

fn parse_table_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    maglev::check_size(n).map_err(|e| e.to_string())
}

#[derive(Args)]
struct AgentArgs {
    /// Service files: a file or directory of YAML (Kubernetes Service/EndpointSlice manifests
    /// and/or the compact format); reloaded on change.
    #[arg(long, env = "XLB_SERVICES")]
    services: Option<PathBuf>,
    /// Kubernetes source: kubeconfig path (in-cluster config when running in a pod).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (EndpointSlice `nodeName` of local endpoints).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Node addresses: NodePort frontends and SNAT source (repeatable or comma-separated).
    #[arg(long = "node-ip", env = "XLB_NODE_IP", value_delimiter = ',')]
    node_ips: Vec<Ipv4Addr>,
    /// Uplinks (XDP + tc), comma-separated.
    #[arg(long, env = "XLB_DEVICES", value_delimiter = ',')]
    devices: Vec<String>,
    /// Pod-facing device globs (tc), comma-separated; devices appearing later are attached.
    #[arg(long, env = "XLB_POD_DEVICES", value_delimiter = ',')]
    pod_devices: Vec<String>,
    /// Pin directory (one per agent).
    #[arg(long, env = "XLB_BPFFS", default_value = "/sys/fs/bpf/xlb")]
    bpffs: PathBuf,
    /// XDP mode on uplinks.
    #[arg(long, env = "XLB_XDP_MODE", value_enum, default_value_t = XdpModeOpt::Native)]
    xdp_mode: XdpModeOpt,
    /// Prometheus metrics address.
    #[arg(long, env = "XLB_METRICS_ADDR", default_value = "127.0.0.1:10249")]
    metrics_addr: String,
    /// Health check address (/healthz, /livez).
    #[arg(long, env = "XLB_HEALTHZ_ADDR", default_value = "0.0.0.0:10256")]
    healthz_addr: String,
    /// Only Services labelled service.kubernetes.io/service-proxy-name=NAME (default: only
    /// Services without the label).
    #[arg(long, env = "XLB_PROXY_NAME")]
    proxy_name: Option<String>,
    /// Maglev table size (a prime; e.g. 16381 or 65537).
    #[arg(long, env = "XLB_MAGLEV_TABLE_SIZE", default_value = "16381", value_parser = parse_table_size)]
    maglev_table_size: u32,
    /// Seed of the flow and Maglev hashes; must be equal on every node.
    #[arg(long, env = "XLB_HASH_SEED", default_value_t = 0x786c_6221)]
    hash_seed: u32,
    /// Conntrack capacity (entries; two per flow). Applies when the map is created.
    #[arg(long, env = "XLB_CT_MAX", default_value_t = lb_common::capacity::CONNTRACK)]
    ct_max: u32,
    /// Source address of hairpin flows (a pod reaching itself through a Service).
    #[arg(long, env = "XLB_HAIRPIN_ADDR", default_value = "169.254.42.1")]
    hairpin_addr: Ipv4Addr,
    /// SNAT source for north-south flows to remote backends (default: the first --node-ip).
    #[arg(long, env = "XLB_SNAT_ADDR")]
    snat_addr: Option<Ipv4Addr>,
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
    AgentConfig {
        services: a.services,
        kubeconfig: a.kubeconfig,
        node_name: a.node_name,
        node_ips: a.node_ips,
        devices: a.devices.into_iter().filter(|d| !d.is_empty()).collect(),
        pod_devices: a
            .pod_devices
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect(),
        bpffs: a.bpffs,
        xdp_mode: a.xdp_mode,
        proxy_name: a.proxy_name,
        maglev_size: a.maglev_table_size,
        hash_seed: a.hash_seed,
        capacities: Capacities {
            conntrack: a.ct_max,
            ..Capacities::default()
        },
        hairpin_addr: a.hairpin_addr,
        snat_addr: a.snat_addr,
        snat_ports: a.snat_ports,
        timeouts: Timeouts {
            tcp_established: a.ct_tcp_timeout,
            udp: a.ct_udp_timeout,
            ..Timeouts::default()
        },
    }
}

fn open_maps(bpffs: &std::path::Path) -> anyhow::Result<Maps> {
    Maps::open(bpffs)
        .with_context(|| format!("reading the datapath pinned under {}", bpffs.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result: anyhow::Result<bool> = match cli.cmd {
        Cmd::Agent(a) => {
            if a.cleanup {
                agent::cleanup(&a.bpffs).map(|()| true)
            } else {
                let cfg = agent_config(*a);
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
            cmd: ServiceCmd::List(r),
        } => open_maps(&r.bpffs)
            .and_then(|m| cli::service::list(&m, r.output))
            .map(|s| {
                print!("{s}");
                true
            }),
        Cmd::Check(c) => {
            let node = NodeContext {
                node_name: c.node_name,
                node_ips: c.node_ips,
                proxy_name: None,
            };
            cli::check::run(&c.path, &node, c.output).map(|(s, ok)| {
                print!("{s}");
                ok
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
