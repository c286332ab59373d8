//! A TCP client as its own process, for tests that need the client in a given cgroup (socket-
//! level load balancing acts on processes, by cgroup): `xlb-test-client <addr:port> <n>` makes
//! `n` requests to a `traffic::Servers` TCP server and prints one line per request:
//! `<backend> <address the server saw> <getpeername()>` or `error <text>`.

use std::{net::SocketAddr, time::Duration};

use xlb_tests::traffic::tcp_request;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(to), Some(n)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: xlb-test-client <addr:port> <count>");
        std::process::exit(2);
    };
    for _ in 0..n.min(10_000) {
        match tcp_request(to, Duration::from_secs(2)) {
            Ok(r) => println!("{} {} {}", r.backend, r.seen_from, r.from),
            Err(e) => println!("error {e}"),
        }
    }
}
