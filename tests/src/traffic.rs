//! Real traffic for tests: small TCP/UDP servers that answer with their name and the client
//! address they saw, and bounded clients. Every loop is bounded in count and time.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// What a server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The server's name.
    pub backend: String,
    /// The client address the server saw.
    pub seen_from: SocketAddr,
    /// The address the client got the answer from (must be what it dialled).
    pub from: SocketAddr,
}

/// Servers that run until dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    /// Connections/datagrams served, per server in start order.
    pub served: Vec<Arc<AtomicU64>>,
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

impl Servers {
    /// No servers yet.
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
            served: Vec::new(),
        }
    }

    /// A TCP server in `ns` on `bind` answering `"<name> <client>\n"` and closing. Returns once
    /// it listens.
    pub fn tcp(&mut self, ns: &Netns, bind: SocketAddr, name: &str) -> Arc<AtomicU64> {
        let stop = self.stop.clone();
        let name = name.to_owned();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.handles.push(ns.spawn(move || {
            let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        self.served.push(count.clone());
        count
    }

    /// A long-lived TCP server: every connection gets a thread that answers each line
    /// `ping` with `"<name> <client>\n"` until the client closes.
    pub fn tcp_persistent(&mut self, ns: &Netns, bind: SocketAddr, name: &str) -> Arc<AtomicU64> {
        let stop = self.stop.clone();
        let name = name.to_owned();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.handles.push(ns.spawn(move || {
            let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let name = name.clone();
                        let stop = stop.clone();
                        std::thread::spawn(move || serve_lines(s, peer, &name, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        self.served.push(count.clone());
        count
    }

    /// A UDP server answering every datagram with `"<name> <client>"`.
    pub fn udp(&mut self, ns: &Netns, bind: SocketAddr, name: &str) -> Arc<AtomicU64> {
        let stop = self.stop.clone();
        let name = name.to_owned();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.handles.push(ns.spawn(move || {
            let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let _ = tx.send(());
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    c.fetch_add(1, Ordering::Relaxed);
                    let _ = s.send_to(format!("{name} {peer}").as_bytes(), peer);
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        self.served.push(count.clone());
        count
    }
}

fn serve_lines(mut s: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if s.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn parse_reply(text: &str, from: SocketAddr) -> std::io::Result<Reply> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("reply {text:?}"));
    let mut it = text.split_whitespace();
    let backend = it.next().ok_or_else(bad)?.to_owned();
    let seen_from = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    Ok(Reply {
        backend,
        seen_from,
        from,
    })
}

/// One TCP request (connect, read the answer). Call inside the client's namespace.
pub fn tcp_request(to: SocketAddr, timeout: Duration) -> std::io::Result<Reply> {
    read_reply(TcpStream::connect_timeout(&to, timeout)?, timeout)
}

/// `tcp_request` from local port `port` (bound with `SO_REUSEADDR`, so a port whose last
/// connection is in TIME_WAIT can be bound again). Call inside the client's namespace.
pub fn tcp_request_from_port(
    port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<Reply> {
    tcp_request_from(SocketAddr::from(([0, 0, 0, 0], port)), to, timeout)
}

/// `tcp_request` from `src` (address and port; bound with `SO_REUSEADDR`). Call inside the
/// client's namespace.
pub fn tcp_request_from(
    src: SocketAddr,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<Reply> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&src.into())?;
    s.connect_timeout(&to.into(), timeout)?;
    read_reply(s.into(), timeout)
}

/// Reads a server's answer on a connected stream, to its end.
fn read_reply(mut s: TcpStream, timeout: Duration) -> std::io::Result<Reply> {
    s.set_read_timeout(Some(timeout))?;
    let peer = s.peer_addr()?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    parse_reply(&text, peer)
}

/// The wildcard address of `to`'s family, port 0 (what a client binds before it sends to `to`).
pub fn any_port(to: SocketAddr) -> SocketAddr {
    if to.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// One UDP request from an ephemeral port, retried up to `tries` times.
pub fn udp_request(to: SocketAddr, timeout: Duration, tries: u32) -> std::io::Result<Reply> {
    let s = UdpSocket::bind(any_port(to))?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    let mut last = None;
    for _ in 0..tries {
        s.send_to(b"ping", to)?;
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                return parse_reply(&String::from_utf8_lossy(&buf[..n]), from);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no reply")))
}

/// The backends that answered `replies` in order (`<error>` for a failure).
fn backends_in_order(replies: &[std::io::Result<Reply>]) -> Vec<String> {
    replies
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or_else(|_| "<error>".to_owned(), |r| r.backend.clone())
        })
        .collect()
}

/// Asserts that a connected socket's requests went to `gone` first and, from its first answer
/// from `live` on, only to `live` (at least 10 of them): it left the backend that left.
pub fn assert_moved_off(replies: &[std::io::Result<Reply>], gone: &str, live: &str) {
    let names = backends_in_order(replies);
    let first_live = names.iter().position(|n| n == live);
    assert!(
        names.first().is_some_and(|n| n == gone) && first_live.is_some(),
        "the socket stayed on the gone backend: {names:?}"
    );
    let after = &names[first_live.unwrap_or(0)..];
    assert!(
        after.iter().all(|n| n == live) && after.len() >= 10,
        "after the reconnect only the live backend: {names:?}"
    );
}

/// Runs `n` TCP requests from `ns` to `to`; returns the replies (errors included).
pub fn tcp_requests(ns: &Netns, to: SocketAddr, n: usize) -> Vec<std::io::Result<Reply>> {
    ns.run(move || {
        (0..n)
            .map(|_| tcp_request(to, Duration::from_secs(2)))
            .collect()
    })
}

/// Runs `n` UDP requests (each from a new source port) from `ns` to `to`.
pub fn udp_requests(ns: &Netns, to: SocketAddr, n: usize) -> Vec<std::io::Result<Reply>> {
    ns.run(move || {
        (0..n)
            .map(|_| udp_request(to, Duration::from_millis(500), 3))
            .collect()
    })
}

/// Retries `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts replies per backend name; errors are counted under `"<error>"`.
pub fn spread(replies: &[std::io::Result<Reply>]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in replies {
        let k = match r {
            Ok(r) => r.backend.clone(),
            Err(_) => "<error>".to_owned(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// A long-lived TCP connection to a `tcp_persistent` server.
pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
}

impl Conn {
    /// Connects (call inside the client's namespace; the socket keeps that namespace).
    pub fn open(to: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let peer = stream.peer_addr()?;
        Ok(Self { stream, peer })
    }

    /// The client side of the connection.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Sends one ping and reads the answer line.
    pub fn ping(&mut self) -> std::io::Result<Reply> {
        self.stream.write_all(b"ping\n")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            let n = self.stream.read(&mut byte)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            line.push(byte[0]);
        }
        parse_reply(&String::from_utf8_lossy(&line), self.peer)
    }
}

/// One short connection to a `tcp_persistent` server: connect, ping, read, close.
pub fn tcp_ping_once(to: SocketAddr, timeout: Duration) -> std::io::Result<Reply> {
    Conn::open(to, timeout)?.ping()
}

/// `GET path` over HTTP/1.1 from inside the caller's namespace: (status, body).
pub fn http_get(to: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {to}\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone()))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// Runs `n` TCP requests from a separate process (`bin`: `xlb-test-client`) in `ns`, placed in
/// `cgroup` before it starts; returns the replies as `tcp_request` would.
pub fn tcp_requests_from_cgroup(
    bin: &std::path::Path,
    ns: &Netns,
    cgroup: &std::path::Path,
    to: SocketAddr,
    n: usize,
) -> Vec<std::io::Result<Reply>> {
    requests_from_cgroup(bin, "--tcp", ns, cgroup, to, n)
}

/// `tcp_requests_from_cgroup` in another of `xlb-test-client`'s modes (`--udp`,
/// `--udp-connected`).
pub fn requests_from_cgroup(
    bin: &std::path::Path,
    mode: &str,
    ns: &Netns,
    cgroup: &std::path::Path,
    to: SocketAddr,
    n: usize,
) -> Vec<std::io::Result<Reply>> {
    let mut cmd = std::process::Command::new(bin);
    cmd.args([mode.to_owned(), to.to_string(), n.to_string()])
        .stdin(std::process::Stdio::null());
    crate::agent::in_netns(&mut cmd, &ns.path());
    crate::agent::in_cgroup(&mut cmd, cgroup);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(out.status.success(), "{}: {out:?}", bin.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // "<backend> <seen from> <peer>", or "error <text>".
            let bad = || std::io::Error::other(l.to_owned());
            let (reply, peer) = l.rsplit_once(' ').ok_or_else(bad)?;
            if l.starts_with("error ") {
                return Err(bad());
            }
            parse_reply(reply, peer.parse().map_err(|_| bad())?)
        })
        .collect()
}
