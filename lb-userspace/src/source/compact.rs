//! xlb's compact standalone format, for hosts without Kubernetes:
//!
//! ```yaml
//! services:
//!   - name: web                      # optional; defaults to the first frontend
//!     frontends: [192.0.2.10:80/tcp] # or `frontend: 192.0.2.10:80/tcp`
//!     algorithm: maglev              # or random (default maglev)
//!     sessionAffinitySeconds: 600    # optional ClientIP affinity
//!     sourceRanges: [10.0.0.0/8]     # optional allowed client CIDRs
//!     clientIP: snat                 # snat (one-arm, default) or preserve (backends route
//!                                    # replies through this host)
//!     backends:
//!       - 10.0.1.1:8080              # weight 1
//!       - {address: 10.0.1.2:8080, weight: 3}
//! ```
//!
//! Same semantics as a LoadBalancer Service with `externalTrafficPolicy: Cluster` (or `Local`
//! for `clientIP: preserve`). Problems name the file and line.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::{
    model::{
        Algorithm, Endpoint, EndpointState, Frontend, FrontendKind, Ipv4Net, LbService, Protocol,
        Scope,
    },
    problem::Problem,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    services: Vec<Svc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Svc {
    name: Option<String>,
    frontend: Option<String>,
    #[serde(default)]
    frontends: Vec<String>,
    algorithm: Option<String>,
    session_affinity_seconds: Option<u32>,
    #[serde(default)]
    source_ranges: Vec<String>,
    #[serde(rename = "clientIP")]
    client_ip: Option<String>,
    #[serde(default)]
    backends: Vec<BackendEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BackendEntry {
    Short(String),
    Full {
        address: String,
        #[serde(default = "one")]
        weight: u16,
    },
}

fn one() -> u16 {
    1
}

/// Parses `a.b.c.d:port[/proto]` (protocol defaults to TCP).
pub fn parse_frontend(s: &str) -> Result<(Ipv4Addr, u16, Protocol), String> {
    let (addr_port, proto) = match s.trim().split_once('/') {
        Some((a, p)) => (
            a,
            Protocol::parse(p).ok_or_else(|| format!("{p:?} is not tcp, udp or sctp"))?,
        ),
        None => (s.trim(), Protocol::Tcp),
    };
    let (addr, port) = parse_addr_port(addr_port)?;
    Ok((addr, port, proto))
}

/// Parses `a.b.c.d:port`.
pub fn parse_addr_port(s: &str) -> Result<(Ipv4Addr, u16), String> {
    let (a, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not address:port"))?;
    let addr = a
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?;
    Ok((addr, port))
}

/// Line (1-based, within the file) of the first occurrence of `needle` at or after `from`.
fn line_of(text: &str, first_line: usize, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(first_line, |i| first_line + i)
}

/// Services of a compact document, each with the line it starts at.
pub type Parsed = Vec<(usize, LbService)>;

/// Parses one compact document. Returns its services and the problems of entries that were
/// skipped; `Err` if the document does not have the format.
pub fn parse(text: &str, file: &str, first_line: usize) -> Result<(Parsed, Vec<Problem>), Problem> {
    let doc: File = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e
            .location()
            .map_or(first_line, |l| first_line + l.line() - 1);
        let msg = e.to_string();
        Problem {
            origin: format!("{file}:{line}"),
            object: String::new(),
            field: String::new(),
            message: msg.split(" at line ").next().unwrap_or(&msg).to_owned(),
        }
    })?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    // Each entry starts at a line "- " under `services:`; find them in order for origins.
    let mut entry_lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- ") && !l.starts_with("      "))
        .map(|(i, _)| first_line + i);
    for (i, svc) in doc.services.into_iter().enumerate() {
        let entry_line = entry_lines.next().unwrap_or(first_line);
        let label = svc.name.clone().unwrap_or_else(|| format!("services[{i}]"));
        let object = format!("service {label}");
        let mut bad = |field: String, needle: &str, msg: String| {
            problems.push(Problem {
                origin: format!("{file}:{}", line_of(text, first_line, needle)),
                object: object.clone(),
                field,
                message: msg + "; skipped",
            });
        };
        let mut fe_strings: Vec<String> = svc.frontend.into_iter().collect();
        fe_strings.extend(svc.frontends);
        if fe_strings.is_empty() {
            bad(
                format!("services[{i}].frontends"),
                &label,
                "required".to_owned(),
            );
            continue;
        }
        let ranges: Result<Vec<Ipv4Net>, (usize, String)> = svc
            .source_ranges
            .iter()
            .enumerate()
            .map(|(j, r)| Ipv4Net::parse(r).ok_or((j, r.clone())))
            .collect();
        let ranges = match ranges {
            Ok(r) => r,
            Err((j, r)) => {
                bad(
                    format!("services[{i}].sourceRanges[{j}]"),
                    &r,
                    format!("{r:?} is not a CIDR"),
                );
                continue;
            }
        };
        let mut frontends = Vec::new();
        let mut ok = true;
        for (j, f) in fe_strings.iter().enumerate() {
            match parse_frontend(f) {
                Ok((addr, port, proto)) => frontends.push(Frontend {
                    addr,
                    port,
                    proto,
                    scope: Scope::External,
                    kind: FrontendKind::LoadBalancer,
                    source_ranges: !ranges.is_empty(),
                }),
                Err(e) => {
                    bad(format!("services[{i}].frontends[{j}]"), f, e);
                    ok = false;
                }
            }
        }
        let algorithm = match svc.algorithm.as_deref() {
            None => Algorithm::default(),
            Some(a) => match Algorithm::parse(a) {
                Some(a) => a,
                None => {
                    bad(
                        format!("services[{i}].algorithm"),
                        a,
                        format!("{a:?} is not maglev or random"),
                    );
                    continue;
                }
            },
        };
        let ext_local = match svc.client_ip.as_deref() {
            None | Some("snat") => false,
            Some("preserve") => true,
            Some(other) => {
                bad(
                    format!("services[{i}].clientIP"),
                    other,
                    format!("{other:?} is not snat or preserve"),
                );
                continue;
            }
        };
        let mut endpoints = Vec::new();
        for (j, b) in svc.backends.iter().enumerate() {
            let (s, weight) = match b {
                BackendEntry::Short(s) => (s, 1),
                BackendEntry::Full { address, weight } => (address, *weight),
            };
            if weight == 0 {
                bad(
                    format!("services[{i}].backends[{j}].weight"),
                    s,
                    "must be at least 1".to_owned(),
                );
                ok = false;
                continue;
            }
            match parse_addr_port(s) {
                Ok((addr, port)) => endpoints.push(Endpoint {
                    addr,
                    port,
                    weight,
                    local: false,
                    state: EndpointState::Active,
                    node: None,
                }),
                Err(e) => {
                    bad(format!("services[{i}].backends[{j}]"), s, e);
                    ok = false;
                }
            }
        }
        if !ok {
            continue;
        }
        if let Some(f) = frontends
            .iter()
            .find(|f| f.proto == Protocol::Sctp && endpoints.iter().any(|e| e.port != f.port))
        {
            bad(
                format!("services[{i}].backends"),
                &label,
                format!(
                    "SCTP frontend {f} needs backends on the same port (SCTP's CRC32c covers \
                     ports, so xlb does not rewrite them)"
                ),
            );
            continue;
        }
        endpoints.sort();
        endpoints.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
        let name = svc.name.unwrap_or_else(|| frontends[0].to_string());
        out.push((
            entry_line,
            LbService {
                name,
                frontends,
                endpoints,
                algorithm,
                affinity_timeout: svc.session_affinity_seconds.unwrap_or(0),
                source_ranges: ranges,
                ext_local,
            },
        ));
    }
    Ok((out, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "services:
  - name: web
    frontend: 192.0.2.10:80/tcp
    algorithm: random
    backends:
      - 10.0.1.1:8080
      - {address: 10.0.1.2:8080, weight: 3}
  - frontends: [192.0.2.10:53/udp]
    backends: [10.0.1.1:53]
";

    #[test]
    fn parses_services_with_weights_and_defaults() {
        let (svcs, problems) = parse(GOOD, "lb.yaml", 1).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(svcs.len(), 2);
        let (line, web) = &svcs[0];
        assert_eq!(*line, 2);
        assert_eq!(web.name, "web");
        assert_eq!(web.algorithm, Algorithm::Random);
        assert_eq!(web.endpoints[1].weight, 3);
        assert_eq!(svcs[1].1.name, "192.0.2.10:53/UDP");
        assert_eq!(svcs[1].1.algorithm, Algorithm::Maglev);
    }

    #[test]
    fn bad_backend_names_file_line_and_field() {
        let text = "services:\n  - name: web\n    frontend: 192.0.2.10:80\n    backends:\n      - 10.0.1.300:8080\n";
        let (svcs, problems) = parse(text, "lb.yaml", 10).unwrap();
        assert!(svcs.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].origin, "lb.yaml:14");
        assert_eq!(problems[0].field, "services[0].backends[0]");
        assert!(problems[0].message.contains("not an IPv4 address"));
    }

    #[test]
    fn unknown_field_is_an_error_with_line() {
        let text = "services:\n  - name: web\n    frontnd: 192.0.2.10:80\n";
        let err = parse(text, "lb.yaml", 1).unwrap_err();
        assert_eq!(err.origin, "lb.yaml:3");
        assert!(err.message.contains("frontnd"), "{}", err.message);
    }
}
