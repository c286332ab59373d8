//! A minimal HTTP/1.1 responder for the agent's own endpoints: `/healthz`, `/livez`,
//! `/metrics` and the `healthCheckNodePort`s. One request per connection (`Connection:
//! close`), GET/HEAD only, bounded request size and time.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use std::sync::RwLock;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::translate::HealthCheck;

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Reads one request head; returns (method, path).
async fn read_head(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 8192 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next()?.split_whitespace();
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

async fn respond(mut s: TcpStream, handler: Arc<dyn Fn(&str) -> Response + Send + Sync>) {
    let Ok(Some((method, path))) =
        tokio::time::timeout(Duration::from_secs(5), read_head(&mut s)).await
    else {
        return;
    };
    let path = path.split('?').next().unwrap_or("/").to_owned();
    let r = if method == "GET" || method == "HEAD" {
        handler(&path)
    } else {
        Response::text(405, "only GET\n")
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if method != "HEAD" {
        out.push_str(&r.body);
    }
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Serves `handler` on `listener` until the task is aborted.
pub fn serve(
    listener: TcpListener,
    handler: Arc<dyn Fn(&str) -> Response + Send + Sync>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(respond(s, handler.clone()));
            }
        }
    })
}

/// The body and status kube-proxy's health check node port answers with.
pub fn health_check_response(hc: &HealthCheck) -> Response {
    let (namespace, name) = hc.service.split_once('/').unwrap_or(("", &hc.service));
    Response {
        status: if hc.local_endpoints > 0 { 200 } else { 503 },
        content_type: "application/json",
        body: format!(
            "{{\"service\":{{\"namespace\":\"{namespace}\",\"name\":\"{name}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}\n",
            hc.local_endpoints
        ),
    }
}

/// The `healthCheckNodePort` listeners (externalTrafficPolicy: Local services), kept equal to
/// what the translation says: one listener per port on every address.
#[derive(Default)]
pub struct HealthChecks {
    state: Arc<RwLock<BTreeMap<u16, HealthCheck>>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthChecks {
    /// Opens and closes listeners and updates their answers.
    pub async fn update(&mut self, checks: BTreeMap<u16, HealthCheck>) {
        if let Ok(mut state) = self.state.write() {
            *state = checks.clone();
        }
        let gone: Vec<u16> = self
            .listeners
            .keys()
            .filter(|p| !checks.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(h) = self.listeners.remove(&port) {
                h.abort();
            }
        }
        for port in checks.keys() {
            if self.listeners.contains_key(port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], *port))).await {
                Ok(l) => {
                    let state = self.state.clone();
                    let port = *port;
                    let handler = Arc::new(move |_: &str| {
                        let snapshot = state.read().ok().and_then(|m| m.get(&port).cloned());
                        snapshot.map_or_else(
                            || Response::text(503, "no such health check\n"),
                            |hc| health_check_response(&hc),
                        )
                    });
                    self.listeners.insert(port, serve(l, handler));
                    tracing::info!(port, "health check node port listening");
                }
                Err(e) => {
                    tracing::error!(port, error = %e, "health check node port unavailable; retrying on the next sync");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_check_answers_like_kube_proxy() {
        let up = health_check_response(&HealthCheck {
            service: "default/web".into(),
            local_endpoints: 2,
        });
        assert_eq!(up.status, 200);
        assert!(up.body.contains("\"localEndpoints\":2"));
        assert!(
            up.body
                .contains("\"namespace\":\"default\",\"name\":\"web\"")
        );
        let down = health_check_response(&HealthCheck {
            service: "default/web".into(),
            local_endpoints: 0,
        });
        assert_eq!(down.status, 503);
    }
}
