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
//!     healthCheck:                   # optional active checks of every backend (`probe`)
//!       type: http                   # tcp (connect, default), http (GET) or udp
//!       path: /healthz               # http: the path (default /) and the status expected
//!       expectStatus: 200            #   (default 200)
//!       # send: ping / expect: pong  # udp: the datagram sent, a text the answer contains
//!       port: 8081                   # default: the backend's port
//!       intervalSeconds: 5           # defaults: 5, 1, 3, 2
//!       timeoutSeconds: 1
//!       unhealthyThreshold: 3
//!       healthyThreshold: 2
//! ```
//!
//! Same semantics as a LoadBalancer Service with `externalTrafficPolicy: Cluster` (or `Local`
//! for `clientIP: preserve`). Problems name the file and line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::{
    model::{
        Algorithm, Endpoint, EndpointState, Frontend, FrontendKind, IpNet, LbService, Protocol,
        Scope,
    },
    probe::{Check, Kind},
    problem::Problem,
    translate::Compact,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Entries, each deserialized on its own so one bad entry skips only itself.
    services: Vec<serde_yaml_ng::Value>,
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
    /// `address:port` strings or `{address, weight}` maps, read by `backend_entry`.
    #[serde(default)]
    backends: Vec<serde_yaml_ng::Value>,
    health_check: Option<HealthSpec>,
}

/// `healthCheck` of an entry, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    expect_status: Option<u16>,
    send: Option<String>,
    expect: Option<String>,
    interval_seconds: Option<u32>,
    timeout_seconds: Option<u32>,
    unhealthy_threshold: Option<u32>,
    healthy_threshold: Option<u32>,
}

/// `healthCheck`, checked: the check, or every problem as (field, message).
fn health_check(h: HealthSpec) -> Result<Check, Vec<(&'static str, String)>> {
    let mut errs = Vec::new();
    let kind = h.kind.as_deref().unwrap_or("tcp");
    let only = |errs: &mut Vec<(&'static str, String)>, set: bool, field, for_kind: &str| {
        if set && kind != for_kind {
            errs.push((field, format!("only for type {for_kind}")));
        }
    };
    only(&mut errs, h.path.is_some(), "path", "http");
    only(&mut errs, h.expect_status.is_some(), "expectStatus", "http");
    only(&mut errs, h.send.is_some(), "send", "udp");
    only(&mut errs, h.expect.is_some(), "expect", "udp");
    let kind = match kind {
        "tcp" => Kind::Tcp,
        "http" => {
            let path = h.path.unwrap_or_else(|| "/".to_owned());
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                errs.push((
                    "path",
                    format!("{path:?} is not an absolute path without spaces"),
                ));
            }
            let status = h.expect_status.unwrap_or(200);
            if !(100..=599).contains(&status) {
                errs.push(("expectStatus", format!("{status} is not an HTTP status")));
            }
            Kind::Http { path, status }
        }
        "udp" => Kind::Udp {
            send: h.send.unwrap_or_else(|| "ping".to_owned()).into_bytes(),
            expect: h.expect,
        },
        other => {
            errs.push(("type", format!("{other:?} is not tcp, http or udp")));
            Kind::Tcp
        }
    };
    let interval = h.interval_seconds.unwrap_or(5);
    let timeout = h.timeout_seconds.unwrap_or(1);
    if interval == 0 {
        errs.push(("intervalSeconds", "must be at least 1".to_owned()));
    }
    if timeout == 0 || timeout > interval {
        errs.push((
            "timeoutSeconds",
            format!("must be 1..=intervalSeconds ({interval})"),
        ));
    }
    for (field, v) in [
        ("unhealthyThreshold", h.unhealthy_threshold),
        ("healthyThreshold", h.healthy_threshold),
    ] {
        if v == Some(0) {
            errs.push((field, "must be at least 1".to_owned()));
        }
    }
    if h.port == Some(0) {
        errs.push(("port", "must be 1..=65535".to_owned()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Check {
        kind,
        port: h.port,
        interval: std::time::Duration::from_secs(u64::from(interval)),
        timeout: std::time::Duration::from_secs(u64::from(timeout)),
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
        healthy_threshold: h.healthy_threshold.unwrap_or(2),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullBackend {
    address: String,
    weight: Option<serde_yaml_ng::Value>,
}

/// A backend entry as (address:port text, weight), or what is wrong with it.
fn backend_entry(v: &serde_yaml_ng::Value) -> Result<(String, u16), String> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => Ok((s.clone(), 1)),
        Value::Mapping(_) => {
            let b: FullBackend = serde_yaml_ng::from_value(v.clone()).map_err(|e| {
                let msg = e.to_string();
                msg.split(" at line ").next().unwrap_or(&msg).to_owned()
            })?;
            let weight = match &b.weight {
                None => 1,
                Some(w) => w
                    .as_u64()
                    .and_then(|w| u16::try_from(w).ok())
                    .filter(|w| *w >= 1)
                    .ok_or_else(|| {
                        format!(
                            "weight must be a whole number from 1 to 65535, got {}",
                            yaml_text(w)
                        )
                    })?,
            };
            Ok((b.address, weight))
        }
        other => Err(format!(
            "{} is not a backend: write address:port or {{address: address:port, weight: 1-65535}}",
            yaml_text(other)
        )),
    }
}

/// A YAML value as written, for messages.
fn yaml_text(v: &serde_yaml_ng::Value) -> String {
    serde_yaml_ng::to_string(v).map_or_else(|_| format!("{v:?}"), |s| s.trim().to_owned())
}

/// Parses `a.b.c.d:port[/proto]` (protocol defaults to TCP).
pub fn parse_frontend(s: &str) -> Result<(IpAddr, u16, Protocol), String> {
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

/// Parses `a.b.c.d:port` or `[2001:db8::10]:port`.
pub fn parse_addr_port(s: &str) -> Result<(IpAddr, u16), String> {
    let (addr, p) = if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{s:?} is not [IPv6 address]:port"))?;
        let addr = a
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("{a:?} is not an IPv6 address"))?;
        (IpAddr::V6(addr), p)
    } else {
        let (a, p) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not address:port"))?;
        if a.contains(':') {
            return Err(format!(
                "{s:?}: an IPv6 address takes brackets, as in [{a}]:{p}"
            ));
        }
        let addr = a
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        (IpAddr::V4(addr), p)
    };
    if let IpAddr::V6(a) = addr
        && a.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{a}: an IPv4-mapped address; write the IPv4 address itself"
        ));
    }
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?;
    Ok((addr, port))
}

/// Line (1-based, within the file) of the first line of `lines` holding `needle`, or `dflt`.
fn line_of(lines: &[(usize, &str)], needle: &str, dflt: usize) -> usize {
    lines
        .iter()
        .find(|(_, l)| l.contains(needle))
        .map_or(dflt, |(n, _)| *n)
}

/// The lines of each entry of the `services:` list (numbered within the file), in order: block
/// entries start at the list's own indentation with `- `; a flow list is one line.
fn entry_spans(text: &str, first_line: usize) -> Vec<Vec<(usize, &str)>> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (first_line + i, l))
        .collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_item = |l: &str| {
        let t = l.trim_start();
        t.starts_with("- ") || t == "-"
    };
    let Some(list_indent) = lines
        .iter()
        .find(|(_, l)| is_item(l))
        .map(|(_, l)| indent(l))
    else {
        return Vec::new();
    };
    let mut spans: Vec<Vec<(usize, &str)>> = Vec::new();
    for &(n, l) in &lines {
        if is_item(l) && indent(l) == list_indent {
            spans.push(Vec::new());
        }
        if let Some(span) = spans.last_mut() {
            span.push((n, l));
        }
    }
    spans
}

/// Services of a compact document, each with the line it starts at.
pub type Parsed = Vec<(usize, Compact)>;

/// Parses one compact document. Returns its services and the problems of entries that were
/// skipped (every problem of each, with the line of the field); `Err` if the document does not
/// have the format.
pub fn parse(text: &str, file: &str, first_line: usize) -> Result<(Parsed, Vec<Problem>), Problem> {
    let doc: File = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e
            .location()
            .map_or(first_line, |l| first_line + l.line() - 1);
        let msg = e.to_string();
        Problem::file(
            format!("{file}:{line}"),
            msg.split(" at line ").next().unwrap_or(&msg),
        )
    })?;
    let spans = entry_spans(text, first_line);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, value) in doc.services.into_iter().enumerate() {
        let lines: &[(usize, &str)] = spans.get(i).map_or(&[], Vec::as_slice);
        let entry_line = lines.first().map_or(first_line, |(n, _)| *n);
        let label = value
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("services[{i}]"), str::to_owned);
        let object = format!("service {label}");
        let mut found = Vec::new();
        let mut bad = |field: String, needle: &str, msg: String| {
            let mut p = Problem::field(&object, field, msg + "; skipped");
            p.origin = format!("{file}:{}", line_of(lines, needle, entry_line));
            found.push(p);
        };
        let svc: Svc = match serde_yaml_ng::from_value(value) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                // `unknown field `frontnd`, expected …`: point at the field's line.
                let needle = msg.split('`').nth(1).unwrap_or(&label).to_owned();
                bad(format!("services[{i}]"), &needle, msg);
                problems.append(&mut found);
                continue;
            }
        };
        if let Some(service) = entry(svc, i, &label, &mut bad) {
            out.push((entry_line, service));
        }
        problems.append(&mut found);
    }
    Ok((out, problems))
}

/// Validates one entry, reporting every problem through `bad(field, needle, message)` (the
/// needle finds the line); `None` if any.
fn entry(
    svc: Svc,
    i: usize,
    label: &str,
    bad: &mut impl FnMut(String, &str, String),
) -> Option<Compact> {
    let mut ok = true;
    let health = match svc.health_check.map(health_check) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(errs)) => {
            for (field, msg) in errs {
                bad(format!("services[{i}].healthCheck.{field}"), field, msg);
            }
            ok = false;
            None
        }
    };
    let mut fe_strings: Vec<String> = svc.frontend.into_iter().collect();
    fe_strings.extend(svc.frontends);
    if fe_strings.is_empty() {
        bad(
            format!("services[{i}].frontends"),
            label,
            "required".to_owned(),
        );
        ok = false;
    }
    let mut ranges = Vec::new();
    for (j, r) in svc.source_ranges.iter().enumerate() {
        if let Some(n) = IpNet::parse(r) {
            ranges.push(n);
        } else {
            bad(
                format!("services[{i}].sourceRanges[{j}]"),
                r,
                format!("{r:?} is not a CIDR"),
            );
            ok = false;
        }
    }
    let mut frontends = Vec::new();
    for (j, f) in fe_strings.iter().enumerate() {
        match parse_frontend(f) {
            Ok((addr, port, proto)) => frontends.push(Frontend {
                addr,
                port,
                proto,
                scope: Scope::External,
                kind: FrontendKind::LoadBalancer,
                source_ranges: !svc.source_ranges.is_empty(),
            }),
            Err(e) => {
                bad(format!("services[{i}].frontends[{j}]"), f, e);
                ok = false;
            }
        }
    }
    let algorithm = match svc.algorithm.as_deref() {
        None => Algorithm::default(),
        Some(a) => Algorithm::parse(a).unwrap_or_else(|| {
            bad(
                format!("services[{i}].algorithm"),
                a,
                format!("{a:?} is not maglev or random"),
            );
            ok = false;
            Algorithm::default()
        }),
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
            ok = false;
            false
        }
    };
    let mut endpoints = Vec::new();
    for (j, b) in svc.backends.iter().enumerate() {
        let needle = match b {
            serde_yaml_ng::Value::String(s) => s.clone(),
            other => other
                .get("address")
                .and_then(|a| a.as_str())
                .unwrap_or("backends")
                .to_owned(),
        };
        let (s, weight) = match backend_entry(b) {
            Ok(e) => e,
            Err(e) => {
                bad(format!("services[{i}].backends[{j}]"), &needle, e);
                ok = false;
                continue;
            }
        };
        match parse_addr_port(&s) {
            Ok((addr, port)) => endpoints.push(Endpoint {
                addr,
                port,
                weight,
                local: false,
                state: EndpointState::Active,
                node: None,
            }),
            Err(e) => {
                bad(format!("services[{i}].backends[{j}]"), &s, e);
                ok = false;
            }
        }
    }
    if let Some(f) = frontends
        .iter()
        .find(|f| f.proto == Protocol::Sctp && endpoints.iter().any(|e| e.port != f.port))
    {
        bad(
            format!("services[{i}].backends"),
            "backends",
            format!(
                "SCTP frontend {f} needs backends on the same port (SCTP's CRC32c covers \
                 ports, so xlb does not rewrite them)"
            ),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
    let name = svc.name.unwrap_or_else(|| frontends[0].to_string());
    let service = LbService {
        name,
        frontends,
        endpoints,
        algorithm,
        affinity_timeout: svc.session_affinity_seconds.unwrap_or(0),
        source_ranges: ranges,
        ext_local,
    };
    Some(Compact { service, health })
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
        let web = &web.service;
        assert_eq!(*line, 2);
        assert_eq!(web.name, "web");
        assert_eq!(web.algorithm, Algorithm::Random);
        assert_eq!(web.endpoints[1].weight, 3);
        assert_eq!(svcs[1].1.service.name, "192.0.2.10:53/UDP");
        assert_eq!(svcs[1].1.service.algorithm, Algorithm::Maglev);
        assert_eq!(svcs[1].1.health, None);
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
    fn unknown_field_skips_only_its_entry_and_names_its_line() {
        let text = "services:\n  - name: web\n    frontnd: 192.0.2.10:80\n  - name: ok\n    frontend: 192.0.2.11:80\n    backends: [10.0.1.1:80]\n";
        let (svcs, problems) = parse(text, "lb.yaml", 1).unwrap();
        assert_eq!(svcs.len(), 1, "{problems:?}");
        assert_eq!(svcs[0].1.service.name, "ok");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].origin, "lb.yaml:3");
        assert_eq!(problems[0].object, "service web");
        assert!(problems[0].message.contains("frontnd"), "{}", problems[0]);
    }

    #[test]
    fn every_problem_of_an_entry_is_reported_at_its_own_line() {
        let text = "services:
  - name: web
    frontend: 192.0.2.10:80/tcpx
    algorithm: roundrobin
    backends:
      - 10.0.1.1:8080
      - {address: 10.0.1.2:8080, weight: 70000}
      - {address: 10.0.1.3:8080, weight: many}
      - 10.0.1.4
";
        let (svcs, problems) = parse(text, "lb.yaml", 1).unwrap();
        assert!(svcs.is_empty());
        let got: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.origin.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("lb.yaml:3", "services[0].frontends[0]"),
                ("lb.yaml:4", "services[0].algorithm"),
                ("lb.yaml:7", "services[0].backends[1]"),
                ("lb.yaml:8", "services[0].backends[2]"),
                ("lb.yaml:9", "services[0].backends[3]"),
            ],
            "{problems:#?}"
        );
        assert!(
            problems[2].message.contains("from 1 to 65535, got 70000"),
            "{}",
            problems[2]
        );
        assert!(problems[3].message.contains("got many"), "{}", problems[3]);
        assert!(!problems.iter().any(|p| p.message.contains("untagged")));
    }

    #[test]
    fn a_backend_that_is_neither_text_nor_a_map_says_what_is_accepted() {
        let text = "services:\n  - frontend: 192.0.2.10:80\n    backends: [[1, 2]]\n";
        let (_, problems) = parse(text, "lb.yaml", 1).unwrap();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("write address:port or {address"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn health_checks_have_defaults_and_every_bad_field_is_named() {
        let text = "services:\n  - name: web\n    frontend: 192.0.2.10:80\n    backends: [10.0.1.1:80]\n    healthCheck: {type: http, path: /healthz}\n  - name: bad\n    frontend: 192.0.2.11:80\n    backends: [10.0.1.1:80]\n    healthCheck:\n      type: tcp\n      path: /x\n      intervalSeconds: 2\n      timeoutSeconds: 3\n      unhealthyThreshold: 0\n";
        let (svcs, problems) = parse(text, "lb.yaml", 1).unwrap();
        assert_eq!(svcs.len(), 1, "{problems:?}");
        let check = svcs[0].1.health.clone().expect("a check");
        assert_eq!(
            check.kind,
            Kind::Http {
                path: "/healthz".into(),
                status: 200
            }
        );
        assert_eq!((check.interval.as_secs(), check.timeout.as_secs()), (5, 1));
        assert_eq!((check.unhealthy_threshold, check.healthy_threshold), (3, 2));
        let fields: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.origin.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("services[1].healthCheck.path", "lb.yaml:11"),
                ("services[1].healthCheck.timeoutSeconds", "lb.yaml:13"),
                ("services[1].healthCheck.unhealthyThreshold", "lb.yaml:14"),
            ],
            "{problems:?}"
        );
    }
}
