//! The benchmark's flags (`cargo xtask bench e2e -- --help`).

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// The datapaths compared: no load balancer (the ceiling), kube-proxy's two modes, xlb.
pub const MODES: [&str; 4] = ["no-LB", "iptables", "nftables", "xlb"];

/// xlb against kube-proxy (iptables, nftables) and no load balancer, end to end, as ratios
/// to the no-LB ceiling measured in the same round.
#[derive(Parser)]
#[command(name = "xlb-bench-e2e")]
pub struct Opts {
    /// Modes to run (no-LB is required: it is the ceiling every ratio needs).
    #[arg(long, value_delimiter = ',', value_parser = mode, default_values_t = MODES)]
    pub modes: Vec<&'static str>,
    /// Numbers of services (N), each with three endpoints.
    #[arg(long, value_delimiter = ',', value_parser = count::<1>, default_values_t = [1, 1000, 10_000])]
    pub sizes: Vec<usize>,
    /// Rounds per N (each starts with another mode).
    #[arg(long, value_parser = count::<1>, default_value_t = 3)]
    pub reps: usize,
    /// connect() times per latency figure.
    #[arg(long, value_parser = count::<10>, default_value_t = 2000)]
    pub connects: usize,
    /// IPv6 throughout: the pods' IPv6 addresses, IPv6 ClusterIPs (`ipFamilies: [IPv6]`,
    /// `addressType: IPv6` slices), kube-proxy's rules in ip6tables and an `ip6` nftables
    /// table.
    #[arg(long)]
    pub ipv6: bool,
    /// North-south: the client is outside the node (its veth is an uplink, `--devices`, and
    /// its processes are not the node's, so nothing is translated at the socket); every
    /// packet takes the per-packet path of NodePort/LoadBalancer traffic.
    #[arg(long)]
    pub north_south: bool,
    /// Parallel iperf3 streams (`iperf3 -P`).
    #[arg(long, value_parser = count::<1>, default_value_t = 1)]
    pub streams: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub seconds: u32,
    /// Side-by-side runs per pattern, mode and round.
    #[arg(long, value_parser = count::<1>, default_value_t = 4)]
    pub pairs: usize,
    /// Record a `perf record -a -g` of each mode's in-turn wrk run of each pattern into
    /// `target/bench/perf-<mode>-<N>-<spread|pinned>.data`.
    #[arg(long)]
    pub perf: bool,
    /// Confine everything the benchmark starts to these CPUs (side by side on one CPU, the
    /// two beds' processes take turns on it and the ratio is purely one of CPU time per
    /// connection).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// No traffic: render the report and charts of a finished run's JSON again.
    #[arg(long, value_name = "E2E_JSON")]
    pub render: Option<PathBuf>,
    /// Child mode (run by the benchmark inside a client pod): print `N` connect() times to
    /// `ADDR` after `WARMUP` untimed ones.
    #[arg(long, num_args = 3, value_names = ["ADDR", "N", "WARMUP"], hide = true)]
    pub connect_times: Option<Vec<String>>,
}

/// What `--connect-times` asks for.
pub struct ConnectTimes {
    pub to: SocketAddr,
    pub n: usize,
    pub warmup: usize,
}

impl Opts {
    /// The beds' shape these flags ask for.
    pub fn shape(&self) -> crate::bed::Shape {
        crate::bed::Shape {
            ipv6: self.ipv6,
            north_south: self.north_south,
        }
    }

    /// The name of the report, JSON and charts (`e2e`, `e2e6`, `e2e-ns`, `e2e6-ns`).
    pub fn stem(&self) -> String {
        format!(
            "e2e{}{}",
            if self.ipv6 { "6" } else { "" },
            if self.north_south { "-ns" } else { "" }
        )
    }

    /// Parses the command line; exits with clap's message (naming the flag) on bad input.
    pub fn get() -> Self {
        let o = Self::parse();
        if o.render.is_none() && o.connect_times.is_none() && !o.modes.contains(&"no-LB") {
            use clap::CommandFactory as _;
            Self::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    "--modes: no-LB is the ceiling every ratio needs",
                )
                .exit();
        }
        o
    }

    /// `--connect-times`, parsed.
    pub fn connect_times(&self) -> Option<Result<ConnectTimes, String>> {
        let v = self.connect_times.as_ref()?;
        let parse = || -> Result<ConnectTimes, String> {
            let num = |s: &str| s.parse().map_err(|e| format!("--connect-times {s}: {e}"));
            Ok(ConnectTimes {
                to: v[0]
                    .parse()
                    .map_err(|e| format!("--connect-times {}: {e}", v[0]))?,
                n: num(&v[1])?,
                warmup: num(&v[2])?,
            })
        };
        Some(parse())
    }
}

/// A `--modes` entry, checked.
fn mode(s: &str) -> Result<&'static str, String> {
    MODES
        .iter()
        .copied()
        .find(|m| *m == s)
        .ok_or_else(|| format!("{s} is not one of {}", MODES.join(", ")))
}

/// A count of at least `MIN`.
fn count<const MIN: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(n) => Err(format!("{n} is below the minimum of {MIN}")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}
