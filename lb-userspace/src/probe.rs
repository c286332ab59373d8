//! Active health checks of standalone backends (the compact format's `healthCheck`): the agent
//! probes each backend of a service that has one — a TCP connect, an HTTP GET expecting a
//! status, or a UDP datagram expecting an answer — every `interval`, each probe bounded by
//! `timeout`. A backend starts healthy, turns unhealthy after `unhealthy_threshold` failures in
//! a row and healthy again after `healthy_threshold` successes in a row. An unhealthy backend
//! is left out of its service as if it had been removed from the file (no new flows; existing
//! ones as for a removed backend), and comes back when healthy.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
    task::JoinHandle,
};

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP connect that completes.
    Tcp,
    /// `GET path` over HTTP/1.1 answered with `status`.
    Http { path: String, status: u16 },
    /// A datagram `send` answered (with `expect` in the answer, when given).
    Udp {
        send: Vec<u8>,
        expect: Option<String>,
    },
}

/// A service's health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kind: Kind,
    /// The port probed (the backend's own when None).
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// One backend of one service, probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub addr: IpAddr,
    /// The backend's port (its identity; `Check::port` may probe another).
    pub port: u16,
    pub check: Check,
}

/// (service, backend address, backend port).
pub type Key = (String, IpAddr, u16);

/// A backend that turned healthy or unhealthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Key,
    pub healthy: bool,
    /// Why the last probe failed (empty when healthy).
    pub reason: String,
    /// The probe task that saw it (`Prober::is_current`: a stopped task's late word is
    /// dropped).
    pub generation: u64,
}

/// Runs one probe of `kind` against `to`.
pub async fn probe(kind: &Kind, to: SocketAddr) -> Result<(), String> {
    match kind {
        Kind::Tcp => tokio::net::TcpStream::connect(to)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        Kind::Http { path, status } => {
            let mut s = tokio::net::TcpStream::connect(to)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.contains(&b'\n') && head.len() < 4096 {
                let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&head);
            let line = line.lines().next().unwrap_or_default();
            let got = line
                .strip_prefix("HTTP/1.")
                .and_then(|r| r.get(2..5))
                .and_then(|c| c.parse::<u16>().ok());
            match got {
                Some(c) if c == *status => Ok(()),
                Some(c) => Err(format!("HTTP status {c}, expected {status}")),
                None => Err(format!("not an HTTP answer: {line:?}")),
            }
        }
        Kind::Udp { send, expect } => {
            let s = tokio::net::UdpSocket::bind("0.0.0.0:0")
                .await
                .map_err(|e| format!("bind: {e}"))?;
            s.connect(to).await.map_err(|e| format!("connect: {e}"))?;
            s.send(send).await.map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 2048];
            let n = s
                .recv(&mut buf)
                .await
                .map_err(|e| format!("receive: {e}"))?;
            match expect {
                Some(x) if !String::from_utf8_lossy(&buf[..n]).contains(x.as_str()) => {
                    Err(format!("answer without {x:?}"))
                }
                _ => Ok(()),
            }
        }
    }
}

/// Probes `t` forever, reporting each change of its health.
async fn run(t: Target, generation: u64, tx: mpsc::UnboundedSender<Change>) {
    let c = &t.check;
    let to = SocketAddr::from((t.addr, c.port.unwrap_or(t.port)));
    let key: Key = (t.service.clone(), t.addr, t.port);
    let (mut healthy, mut ok_run, mut fail_run) = (true, 0u32, 0u32);
    let mut tick = tokio::time::interval(c.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = match tokio::time::timeout(c.timeout, probe(&c.kind, to)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", c.timeout)),
        };
        let change = match r {
            Ok(()) => {
                (ok_run, fail_run) = (ok_run + 1, 0);
                (!healthy && ok_run >= c.healthy_threshold).then(String::new)
            }
            Err(reason) => {
                (ok_run, fail_run) = (0, fail_run + 1);
                (healthy && fail_run >= c.unhealthy_threshold).then_some(reason)
            }
        };
        if let Some(reason) = change {
            healthy = !healthy;
            let change = Change {
                key: key.clone(),
                healthy,
                reason,
                generation,
            };
            if tx.send(change).is_err() {
                return;
            }
        }
    }
}

/// The running probes, one task per target.
pub struct Prober {
    tx: mpsc::UnboundedSender<Change>,
    /// Per target: its check, its task and the task's generation.
    tasks: HashMap<Key, (Check, JoinHandle<()>, u64)>,
    next_generation: u64,
}

impl Prober {
    /// Probes report to `tx`.
    pub fn new(tx: mpsc::UnboundedSender<Change>) -> Self {
        Self {
            tx,
            tasks: HashMap::new(),
            next_generation: 0,
        }
    }

    /// True if `change` comes from the task probing its key now (not from one stopped since,
    /// whose last word may still be queued).
    pub fn is_current(&self, change: &Change) -> bool {
        self.tasks
            .get(&change.key)
            .is_some_and(|(_, _, g)| *g == change.generation)
    }

    /// Probes exactly `targets`: new ones start (healthy), changed checks restart, the rest
    /// stop. Returns the keys that stopped.
    pub fn reconcile(&mut self, targets: Vec<Target>) -> Vec<Key> {
        let mut wanted: HashMap<Key, Target> = targets
            .into_iter()
            .map(|t| ((t.service.clone(), t.addr, t.port), t))
            .collect();
        let mut stopped = Vec::new();
        self.tasks.retain(|key, (check, task, _)| {
            let keep = wanted.get(key).is_some_and(|t| t.check == *check);
            if keep {
                wanted.remove(key);
            } else {
                task.abort();
                stopped.push(key.clone());
            }
            keep
        });
        for (key, t) in wanted {
            let check = t.check.clone();
            self.next_generation += 1;
            let generation = self.next_generation;
            let task = tokio::spawn(run(t, generation, self.tx.clone()));
            self.tasks.insert(key, (check, task, generation));
        }
        stopped
    }

    /// How many backends are probed.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when nothing is probed.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, task, _) in self.tasks.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: Kind) -> Check {
        Check {
            kind,
            port: None,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }

    #[tokio::test]
    async fn probes_tell_a_serving_backend_from_a_closed_port() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
        assert_eq!(probe(&Kind::Tcp, at).await, Ok(()));
        let http = |status| Kind::Http {
            path: "/healthz".into(),
            status,
        };
        assert_eq!(probe(&http(204), at).await, Ok(()));
        assert!(
            probe(&http(200), at)
                .await
                .is_err_and(|e| e.contains("204"))
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_at = closed.local_addr().expect("addr");
        drop(closed);
        assert!(probe(&Kind::Tcp, closed_at).await.is_err());
        let u = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let uat = u.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = u.recv_from(&mut buf).await {
                let _ = u.send_to(b"pong", from).await;
            }
        });
        let udp = |expect: &str| Kind::Udp {
            send: b"ping".to_vec(),
            expect: Some(expect.into()),
        };
        assert_eq!(probe(&udp("pong"), uat).await, Ok(()));
        assert!(probe(&udp("ok"), uat).await.is_err());
    }

    #[tokio::test]
    async fn a_backend_turns_unhealthy_after_the_threshold_and_back() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let at = l.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut p = Prober::new(tx);
        let target = Target {
            service: "web".into(),
            addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: at.port(),
            check: check(Kind::Tcp),
        };
        p.reconcile(vec![target.clone()]);
        assert_eq!(p.len(), 1);
        drop(l);
        let down = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        let down = down.expect("a change").expect("open");
        assert!(!down.healthy && !down.reason.is_empty(), "{down:?}");
        assert!(p.is_current(&down));
        let _back = std::net::TcpListener::bind(at).expect("rebind");
        let up = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        let up = up.expect("a change").expect("open");
        assert!(up.healthy);
        assert_eq!(
            p.reconcile(Vec::new()),
            vec![(
                "web".into(),
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                at.port()
            )]
        );
        assert!(p.is_empty());
        assert!(!p.is_current(&up), "a stopped task's word is not current");
    }
}
