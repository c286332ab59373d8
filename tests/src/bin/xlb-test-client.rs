//! A client as its own process, for tests that need the client in a given cgroup (socket-level
//! load balancing acts on processes, by cgroup). `xlb-test-client [MODE] <addr:port> <n>`
//! makes `n` requests to a `traffic::Servers` server and prints one line per request:
//! `<backend> <address the server saw> <address the answer came from>` or `error <text>`.
//! Modes: `--tcp` (default; the last field is `getpeername()`), `--udp` (each request from a
//! new unconnected socket, `sendto`/`recvfrom`), `--udp-connected` (one connected socket for
//! all requests; after an error, a new one connects), paced 50 ms apart. `--udp-redial
//! <addr:port> <backend:port>`: one socket connects to `addr`, asks once, then connects
//! straight to `backend` and asks again; prints `<getpeername()> <answer's source>` after each.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use xlb_tests::traffic::{any_port, tcp_request, udp_request};

/// One request over the connected socket `s` (made by `connect` when None).
fn connected_udp(s: &mut Option<UdpSocket>, to: SocketAddr) -> std::io::Result<String> {
    if s.is_none() {
        let n = UdpSocket::bind(any_port(to))?;
        n.connect(to)?;
        n.set_read_timeout(Some(Duration::from_millis(500)))?;
        *s = Some(n);
    }
    let sock = s.as_ref().expect("connected");
    let mut buf = [0u8; 2048];
    let r = sock.send(b"ping").and_then(|_| sock.recv_from(&mut buf));
    match r {
        Ok((n, from)) => Ok(format!("{} {from}", String::from_utf8_lossy(&buf[..n]))),
        Err(e) => {
            // The next request connects again (the datapath picks a backend afresh).
            *s = None;
            Err(e)
        }
    }
}

/// `--udp-redial`: the peer and the answer's source after a connect to `to`, then after one
/// to `backend` on the same socket. `--udp-sendto-direct`: one unconnected socket sends to
/// `to`, then to `backend`; prints `<to> <answer's source>` for each.
fn redial(to: SocketAddr, backend: SocketAddr, connected: bool) -> std::io::Result<()> {
    let s = UdpSocket::bind(any_port(to))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 2048];
    for dial in [to, backend] {
        let peer = if connected {
            s.connect(dial)?;
            s.send(b"ping")?;
            s.peer_addr()?
        } else {
            s.send_to(b"ping", dial)?;
            dial
        };
        let (_, from) = s.recv_from(&mut buf)?;
        println!("{peer} {from}");
    }
    Ok(())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(mode) = args
        .first()
        .filter(|a| *a == "--udp-redial" || *a == "--udp-sendto-direct")
        .cloned()
    {
        let addr = |i: usize| args.get(i).and_then(|a| a.parse::<SocketAddr>().ok());
        let (Some(to), Some(backend)) = (addr(1), addr(2)) else {
            eprintln!("usage: xlb-test-client {mode} <addr:port> <backend:port>");
            std::process::exit(2);
        };
        if let Err(e) = redial(to, backend, mode == "--udp-redial") {
            println!("error {e}");
        }
        return;
    }
    let mode = if args.first().is_some_and(|a| a.starts_with("--")) {
        args.remove(0)
    } else {
        "--tcp".to_owned()
    };
    let (Some(to), Some(n)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: xlb-test-client [--tcp|--udp|--udp-connected] <addr:port> <count>");
        std::process::exit(2);
    };
    let mut sock = None;
    for _ in 0..n.min(10_000) {
        let line = match mode.as_str() {
            "--tcp" => tcp_request(to, Duration::from_secs(2))
                .map(|r| format!("{} {} {}", r.backend, r.seen_from, r.from)),
            "--udp" => udp_request(to, Duration::from_millis(500), 3)
                .map(|r| format!("{} {} {}", r.backend, r.seen_from, r.from)),
            "--udp-connected" => {
                let r = connected_udp(&mut sock, to);
                std::thread::sleep(Duration::from_millis(50));
                r
            }
            m => {
                eprintln!("unknown mode {m}");
                std::process::exit(2);
            }
        };
        match line {
            Ok(l) => println!("{l}"),
            Err(e) => println!("error {e}"),
        }
    }
}
