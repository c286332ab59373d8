//! Operability through the real agent and real traffic: the inspection CLI (`backend list`,
//! `conntrack list`, `stats`, `maps`), `xlb explain` against the live maps, `xlb monitor`,
//! the Prometheus endpoint and health checks, and bpftool reading every pinned map by field
//! name.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{Conn, Reply, Servers, eventually, http_get, tcp_ping_once},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A service without endpoints: its packets are rejected (`no_backend`, ICMP port unreachable).
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const WEB: &str = "default/web:http/TCP";

fn http() -> Vec<Port<'static>> {
    vec![Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port: None,
    }]
}

/// A node with a client pod (p0, 10.244.1.10) and two backends (p1, p2) serving `web`, plus
/// the endpoint-less `empty` service; `extra` is appended to the service file.
struct Env {
    node: Node,
    agent: Agent,
    _pins: PinDir,
    _servers: Servers,
    _dir: WorkDir,
}

fn env(extra: &str) -> Env {
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=2 {
        node.add_pod(i);
    }
    let mut servers = Servers::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
    }
    let eps: Vec<Ep> = node.pods[1..]
        .iter()
        .map(|p| Ep::ready(p.ip, "n1"))
        .collect();
    let mut yaml = docs(&[
        service("web", VIP, &http(), ""),
        slice("web-1", "web", &[("http", 8080, "TCP")], &eps),
        service("empty", EMPTY_VIP, &http(), ""),
    ]);
    yaml.push_str(extra);
    let dir = WorkDir::new(&tag);
    let path = dir.write("services.yaml", &yaml);
    let pins = PinDir::new(&tag);
    let agent = Agent::start_on_node(&node.ns, &pins, &path, "n1");
    agent.wait_active(WEB, 2);
    Env {
        node,
        agent,
        _pins: pins,
        _servers: servers,
        _dir: dir,
    }
}

impl Env {
    fn json(&self, args: &[&str]) -> Value {
        self.agent.json(args)
    }

    /// `n` short connections from the client pod to `to` (each a new flow).
    fn short(&self, to: SocketAddr, n: usize) -> Vec<std::io::Result<Reply>> {
        self.node.pods[0].ns.run(move || {
            (0..n)
                .map(|_| tcp_ping_once(to, Duration::from_secs(2)))
                .collect()
        })
    }

    /// Connection attempts to the endpoint-less service (each one SYN, dropped).
    fn refused(&self, n: usize) {
        let to = SocketAddr::from((EMPTY_VIP, 80));
        let ok = self.node.pods[0].ns.run(move || {
            (0..n)
                .filter(|_| Conn::open(to, Duration::from_millis(300)).is_ok())
                .count()
        });
        assert_eq!(
            ok, 0,
            "connections to a service without endpoints must fail"
        );
    }

    fn scrape(&self, path: &'static str) -> (u16, String) {
        self.node.ns.run(move || {
            http_get("127.0.0.1:10249".parse().expect("addr"), path).expect("metrics endpoint")
        })
    }

    fn explain(&self, args: &[&str]) -> Value {
        let mut all = vec!["explain", "--device", "xp0"];
        all.extend_from_slice(args);
        self.json(&all)
    }

    fn counter(&self, name: &str) -> u64 {
        self.agent.counter(name)
    }
}

fn backend_addrs(e: &Env) -> BTreeSet<String> {
    e.node.pods[1..]
        .iter()
        .map(|p| format!("{}:8080", p.ip))
        .collect()
}

/// The value of one sample of a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let matches = n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels)
        .unwrap_or_else(|| panic!("{name}{labels:?} missing from /metrics:\n{text}"))
}

#[test]
fn inspection_cli_and_explain_show_what_the_datapath_does() {
    let e = env("");
    let backends = backend_addrs(&e);
    let client = e.node.pods[0].ip;
    let vip = SocketAddr::from((VIP, 80));

    // One long-lived connection and a few short ones.
    let (conn, conn_reply) = e.node.pods[0].ns.run(move || {
        let mut c = Conn::open(vip, Duration::from_secs(2)).expect("connect");
        let r = c.ping().expect("ping");
        (c, r)
    });
    let conn_local = conn.local_addr().expect("local addr");
    assert!(e.short(vip, 10).iter().all(Result::is_ok));
    e.refused(3);

    // backend list: both backends, active, of web.
    let rows = e.json(&["backend", "list"]);
    let rows = rows.as_array().expect("rows");
    assert_eq!(
        rows.iter()
            .filter(|r| r["service"] == WEB && r["state"] == "active")
            .map(|r| r["address"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>(),
        backends
    );

    // conntrack list: the long-lived flow, with its translation and state.
    let flows = e.json(&["conntrack", "list", "--client", &client.to_string()]);
    let flows = flows.as_array().expect("rows");
    let original = format!("{conn_local} -> {VIP}:80");
    let row = flows
        .iter()
        .find(|r| r["original"] == original.as_str())
        .unwrap_or_else(|| panic!("{original} not in {flows:?}"));
    assert_eq!(row["state"], "established");
    assert_eq!(row["service"], WEB);
    let conn_backend = row["translated"]
        .as_str()
        .unwrap()
        .rsplit(" -> ")
        .next()
        .unwrap()
        .to_owned();
    assert!(backends.contains(&conn_backend), "{row}");
    let seen = conn_reply.backend.trim_start_matches('b');
    assert_eq!(
        conn_backend,
        format!("{}:8080", e.node.pods[seen.parse::<usize>().unwrap()].ip),
        "conntrack shows the backend that actually answered"
    );
    // Filters narrow the list.
    let by_backend = e.json(&["conntrack", "list", "--backend", &conn_backend]);
    let by_backend = by_backend.as_array().unwrap();
    assert!(!by_backend.is_empty());
    assert!(
        by_backend
            .iter()
            .all(|r| r["translated"].as_str().unwrap().ends_with(&conn_backend))
    );
    let none = e.json(&["conntrack", "list", "--service", "no-such-service"]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    assert!(
        e.agent
            .cli(&["conntrack", "list"])
            .contains(&format!("{VIP}:80")),
        "table output lists the flow"
    );

    // stats: counters and drop reasons by name.
    assert!(e.counter("ct_new") >= 11);
    assert!(e.counter("drop_no_backend") >= 3);

    // maps: fill levels and bpftool commands.
    let maps = e.json(&["maps"]);
    let map = |name: &str| {
        maps.as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
            .clone()
    };
    let ct = map("xlb_ct");
    assert!(ct["entries"].as_u64().unwrap() >= 2, "{ct}");
    // The flows above were translated by tc: their backends' NAT slots are raised.
    let nat = map("xlb_be_nat");
    assert_eq!(
        nat["capacity"].as_u64().unwrap(),
        1 << lb_common::filter::NAT_SLOTS_LOG2
    );
    assert!(nat["entries"].as_u64().unwrap() >= 1, "{nat}");
    assert_eq!(
        ct["capacity"].as_u64().unwrap(),
        u64::from(lb_common::capacity::CONNTRACK)
    );
    assert!(
        ct["bpftool"]
            .as_str()
            .unwrap()
            .starts_with("bpftool map dump pinned /sys/fs/bpf/")
    );

    // explain: a new flow gets a Maglev slot; the answer is stable and nothing is recorded.
    let ct_new = e.counter("ct_new");
    let src = format!("{client}:40000");
    let dst = format!("{VIP}:80");
    let x = e.explain(&["--src", &src, "--dst", &dst]);
    let step = &x["steps"][0];
    assert_eq!(step["program"], "xlb_pod_ingress", "{x}");
    assert_eq!(step["service"], WEB, "{x}");
    assert_eq!(step["frontend"], format!("{VIP}:80/TCP"), "{x}");
    assert!(
        step["decision"]
            .as_str()
            .unwrap()
            .starts_with("new flow: Maglev slot"),
        "{x}"
    );
    let chosen = step["backend"].as_str().unwrap().to_owned();
    assert!(backends.contains(&chosen), "{x}");
    assert_eq!(
        step["packet_after"],
        format!("TCP {client}:40000 -> {chosen}"),
        "{x}"
    );
    assert!(
        step["translation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("destination")),
        "{x}"
    );
    let again = e.explain(&["--src", &src, "--dst", &dst]);
    assert_eq!(again["steps"][0]["backend"], chosen.as_str());
    assert_eq!(again["steps"][0]["slot"], step["slot"]);
    assert_eq!(e.counter("ct_new"), ct_new, "explain must not create flows");
    let probe = e.json(&["conntrack", "list", "--client", &client.to_string()]);
    assert!(
        !probe
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["original"].as_str().unwrap().contains(":40000 ")),
        "explain must not write conntrack"
    );

    // explain: the established flow is a conntrack hit on the backend it really uses.
    let x = e.explain(&[
        "--src",
        &conn_local.to_string(),
        "--dst",
        &dst,
        "--established",
    ]);
    assert!(
        x["steps"][0]["decision"]
            .as_str()
            .unwrap()
            .starts_with("conntrack hit"),
        "{x}"
    );
    assert_eq!(x["steps"][0]["backend"], conn_backend.as_str(), "{x}");

    // explain: no endpoints → rejected with the reason (the answer goes back to the client);
    // no service → untouched.
    let x = e.explain(&["--src", &src, "--dst", &format!("{EMPTY_VIP}:80")]);
    assert_eq!(x["steps"][0]["drop_reason"], "no_backend", "{x}");
    assert!(
        x["steps"][0]["decision"]
            .as_str()
            .unwrap()
            .starts_with("rejected: no endpoint"),
        "{x}"
    );
    assert_eq!(
        x["steps"][0]["packet_after"],
        format!(
            "ICMP port unreachable {EMPTY_VIP} -> {src_ip}",
            src_ip = e.node.pods[0].ip
        ),
        "{x}"
    );
    let x = e.explain(&[
        "--src",
        &src,
        "--dst",
        &format!("{}:8080", e.node.pods[1].ip),
    ]);
    assert!(
        x["steps"][0]["decision"]
            .as_str()
            .unwrap()
            .starts_with("no frontend"),
        "{x}"
    );
    // The table rendering names the same facts.
    let text = e
        .agent
        .cli(&["explain", "--device", "xp0", "--src", &src, "--dst", &dst]);
    assert!(text.contains(&chosen) && text.contains("Maglev"), "{text}");
    drop(conn);
}

#[test]
fn metrics_and_health_move_with_real_traffic() {
    let e = env("");
    let vip = SocketAddr::from((VIP, 80));
    let web = [("service", WEB)];
    let (status, before) = e.scrape("/metrics");
    assert_eq!(status, 200);
    assert!(before.contains("xlb_build_info{"), "{before}");
    assert!(must(&before, "xlb_sync_duration_seconds_count", &[]) >= 1.0);
    assert!(must(&before, "xlb_last_sync_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(must(&before, "xlb_services", &[]), 2.0);
    assert_eq!(must(&before, "xlb_backends", &[]), 2.0);
    assert_eq!(
        must(
            &before,
            "xlb_service_backends",
            &[("service", WEB), ("state", "active")]
        ),
        2.0
    );
    let conns0 = must(&before, "xlb_service_new_connections_total", &web);
    let pkts0 = must(
        &before,
        "xlb_service_packets_total",
        &[("service", WEB), ("direction", "original")],
    );
    let drops0 = must(
        &before,
        "xlb_datapath_drops_total",
        &[("reason", "no_backend")],
    );

    assert!(e.short(vip, 10).iter().all(Result::is_ok));
    e.refused(2);
    // A flow kept open so conntrack holds live entries at scrape time.
    let _conn = e.node.pods[0]
        .ns
        .run(move || Conn::open(vip, Duration::from_secs(2)).expect("connect"));
    // Fill levels are cached for up to 5 s.
    std::thread::sleep(Duration::from_millis(5200));

    let (_, after) = e.scrape("/metrics");
    assert_eq!(
        must(&after, "xlb_service_new_connections_total", &web) - conns0,
        11.0
    );
    // Each short connection: SYN, ACK, data, FIN and ACKs from the client.
    assert!(
        must(
            &after,
            "xlb_service_packets_total",
            &[("service", WEB), ("direction", "original")]
        ) - pkts0
            >= 40.0,
        "{after}"
    );
    assert!(
        must(
            &after,
            "xlb_service_packets_total",
            &[("service", WEB), ("direction", "reply")]
        ) >= 30.0
    );
    assert!(
        must(
            &after,
            "xlb_service_bytes_total",
            &[("service", WEB), ("direction", "original")]
        ) > 0.0
    );
    assert!(
        must(
            &after,
            "xlb_datapath_drops_total",
            &[("reason", "no_backend")]
        ) - drops0
            >= 2.0
    );
    assert!(
        must(
            &after,
            "xlb_datapath_operations_total",
            &[("operation", "ct_hit")]
        ) > 0.0
    );
    assert!(
        must(&after, "xlb_map_entries", &[("map", "xlb_ct")]) >= 2.0,
        "{after}"
    );
    assert_eq!(
        must(&after, "xlb_map_capacity", &[("map", "xlb_ct")]),
        f64::from(lb_common::capacity::CONNTRACK)
    );
    assert!(sample(&after, "xlb_map_entries", &[("map", "xlb_affinity")]).is_some());
    assert!(sample(&after, "xlb_snat_port_utilization_ratio", &[]).is_some());
    assert!(after.contains("# TYPE xlb_programming_latency_seconds histogram"));

    // Health, kube-proxy style.
    let (status, body) = e
        .node
        .ns
        .run(|| http_get("127.0.0.1:10256".parse().expect("addr"), "/healthz").expect("healthz"));
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).expect("healthz json");
    assert!(h["lastUpdated"].as_str().unwrap().ends_with('Z'), "{h}");
    let (status, _) = e
        .node
        .ns
        .run(|| http_get("127.0.0.1:10256".parse().expect("addr"), "/livez").expect("livez"));
    assert_eq!(status, 200);
}

/// The `flags` field of `xlb_config`, read with bpftool through BTF.
fn config_flags(e: &Env) -> u64 {
    let dump = bpftool_dump(&e.agent.bpffs.join("xlb_config"));
    dump[0]["value"]["flags"].as_u64().expect("flags")
}

fn bpftool_dump(path: &std::path::Path) -> Value {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "bpftool map dump pinned {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    // With BTF, bpftool prints each entry's fields under "formatted".
    Value::Array(
        v.as_array()
            .expect("entries")
            .iter()
            .map(|en| en.get("formatted").cloned().unwrap_or_else(|| en.clone()))
            .collect(),
    )
}

#[test]
fn monitor_streams_drops_and_new_flows_then_turns_events_off() {
    let e = env("");
    let client = e.node.pods[0].ip;
    assert_eq!(config_flags(&e), 0, "events are off while nobody watches");
    let mut child = e
        .agent
        .cli_command(&[
            "monitor",
            "--flows",
            "-o",
            "json",
            "--client",
            &client.to_string(),
            "--count",
            "5",
            "--duration",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xlb monitor");
    assert!(
        eventually(Duration::from_secs(10), || (config_flags(&e) == 3)
            .then_some(()))
        .is_some(),
        "monitor turns drop and flow events on"
    );
    // Another client's flow is filtered out.
    let vip = SocketAddr::from((VIP, 80));
    let other = e.node.pods[1]
        .ns
        .run(move || tcp_ping_once(vip, Duration::from_secs(2)));
    assert!(other.is_ok());
    assert!(e.short(vip, 3).iter().all(Result::is_ok));
    e.refused(2);

    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<Value> = e.node.ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|_| Instant::now() < deadline)
            .map(|l| serde_json::from_str(&l).expect("json line"))
            .collect()
    });
    let status = child.wait().expect("monitor exit");
    assert!(status.success(), "monitor failed: {status}");
    assert_eq!(lines.len(), 5, "{lines:?}");
    let backends = backend_addrs(&e);
    for l in &lines[..3] {
        assert_eq!(l["kind"], "flow", "{l}");
        assert_eq!(l["hook"], "pod");
        assert_eq!(l["service"], WEB);
        assert_eq!(l["selection"], "maglev");
        assert!(
            l["client"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{client}:"))
        );
        assert_eq!(l["frontend"], format!("{VIP}:80"));
        assert!(backends.contains(l["backend"].as_str().unwrap()), "{l}");
    }
    for l in &lines[3..] {
        assert_eq!(l["kind"], "drop", "{l}");
        assert_eq!(l["reason"], "no_backend");
        assert_eq!(l["frontend"], format!("{EMPTY_VIP}:80"));
    }
    assert_eq!(config_flags(&e), 0, "the last monitor turns events off");
}

#[test]
fn bpftool_dumps_every_pinned_map_with_field_names() {
    let extra = format!(
        "---\n{}---\n{}",
        service(
            "sticky",
            Ipv4Addr::new(10, 96, 0, 30),
            &http(),
            "  type: LoadBalancer\n  sessionAffinity: ClientIP\n  loadBalancerSourceRanges: [10.244.0.0/16]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.30}]\n"
        ),
        slice(
            "sticky-1",
            "sticky",
            &[("http", 8080, "TCP")],
            &[Ep::ready(Ipv4Addr::new(10, 244, 1, 11), "n1")]
        )
    );
    let e = env(&extra);
    e.agent.wait_active("default/sticky:http/TCP", 1);
    assert!(
        e.short(SocketAddr::from((Ipv4Addr::new(10, 96, 0, 30), 80)), 2)
            .iter()
            .all(Result::is_ok)
    );
    let _conn = e.node.pods[0].ns.run(move || {
        Conn::open(SocketAddr::from((VIP, 80)), Duration::from_secs(2)).expect("connect")
    });
    // explain names the policy decisions too: affinity for a returning client, and the
    // source-range drop for a client outside loadBalancerSourceRanges.
    let sticky = "10.96.0.30:80";
    let x = e.explain(&["--src", "10.244.1.10:41000", "--dst", sticky]);
    assert_eq!(
        x["steps"][0]["decision"], "new flow: ClientIP session affinity",
        "{x}"
    );
    assert_eq!(x["steps"][0]["backend"], "10.244.1.11:8080", "{x}");
    let lb_ip = "203.0.113.30:80";
    let x = e.explain(&["--src", "192.0.2.1:41000", "--dst", lb_ip]);
    assert_eq!(x["steps"][0]["drop_reason"], "source_range", "{x}");
    let x = e.explain(&["--src", "10.244.1.10:41000", "--dst", lb_ip]);
    assert_eq!(x["steps"][0]["backend"], "10.244.1.11:8080", "{x}");
    // Each map: fields that must appear by name in its first entry.
    let expect: &[(&str, &[&str])] = &[
        (
            "xlb_services",
            &["addr", "port", "proto", "scope", "svc_id", "lut_size"],
        ),
        (
            "xlb_backends",
            &["addr", "port", "weight", "flags", "svc_id"],
        ),
        (
            "xlb_ct",
            &[
                "saddr",
                "daddr",
                "sport",
                "dport",
                "dir",
                "backend_id",
                "nat_daddr",
                "state",
            ],
        ),
        ("xlb_affinity", &["client", "svc_id", "backend_id"]),
        ("xlb_srcranges", &["prefix_len", "svc_id_be", "addr"]),
        ("xlb_svc_info", &["lut_fingerprint", "name"]),
        ("xlb_svc_stats", &["fwd_packets", "rev_bytes", "new_flows"]),
        (
            "xlb_config",
            &["layout_version", "hash_seed", "snat_port_min", "flags"],
        ),
        ("xlb_counters", &["values"]),
    ];
    for (map, fields) in expect {
        let path = e.agent.bpffs.join(map);
        let dump = bpftool_dump(&path);
        let entries = dump.as_array().unwrap();
        assert!(!entries.is_empty(), "{map}: no entries");
        let text = serde_json::to_string(&entries[0]).unwrap();
        for f in *fields {
            assert!(
                text.contains(&format!("\"{f}\"")),
                "{map}: field {f:?} missing in bpftool output {text}"
            );
        }
    }
    assert!(
        bpftool_show(&e, "xlb_trace")["btf_id"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    // The kernel takes no BTF for a map of maps: xlb_lut's values are inner map ids (u32, host
    // order), and each names a per-service table bpftool can dump by id.
    let lut = bpftool_dump(&e.agent.bpffs.join("xlb_lut"));
    let entry = &lut.as_array().unwrap()[0];
    let bytes: Vec<u8> = entry["value"]
        .as_array()
        .expect("raw value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let inner = u32::from_ne_bytes(bytes[..4].try_into().unwrap());
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "id", &inner.to_string()])
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["type"], "array", "{v}");
    assert!(v["name"].as_str().unwrap().starts_with("xlb_lut_"), "{v}");
    assert_eq!(bpftool_show(&e, "xlb_events")["type"], "ringbuf");
}

fn bpftool_show(e: &Env, map: &str) -> Value {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(e.agent.bpffs.join(map))
        .output()
        .expect("bpftool");
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

/// Looks up in `map` (with bpftool) the key an `-o wide` row ends with (`hex …`): the entry
/// must exist.
fn lookup_wide_key(map: &std::path::Path, row: &str) {
    let key = &row[row.find("hex ").expect("key column")..];
    let mut cmd = vec![
        "map",
        "lookup",
        "pinned",
        map.to_str().expect("path"),
        "key",
    ];
    cmd.extend(key.split_whitespace());
    let out = std::process::Command::new("bpftool")
        .args(&cmd)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `xlb <args>` with a pin directory no agent ever used: (exit code, stdout, stderr).
fn without_agent(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = args.to_vec();
    all.extend(["--bpffs", "/sys/fs/bpf/xlbt-never-started"]);
    xlb(&all)
}

/// `xlb <args>` on the host: (exit code, stdout, stderr).
fn xlb(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(xlb_tests::agent::xlb_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xlb");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_filters_formats_and_one_no_agent_message() {
    let e = env("");
    let pins = e.agent.bpffs.clone();

    // `service list NAME|VIP`: by bare name, namespace/name, full name, VIP and VIP:PORT.
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["service", "list"];
        all.extend_from_slice(args);
        e.json(&all)
            .as_array()
            .expect("services")
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names(&[]).len(), 2);
    for f in [
        "web",
        "default/web",
        "default/web:http",
        WEB,
        "10.96.0.10",
        "10.96.0.10:80",
    ] {
        assert_eq!(names(&[f]), [WEB], "filter {f}");
    }
    assert_eq!(names(&["10.96.0.20"]), ["default/empty:http/TCP"]);
    let miss = e.agent.cli_output(&["service", "list", "nosuch"]);
    assert_eq!(miss.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&miss.stderr).contains("no programmed service matches \"nosuch\"")
    );

    // `-o yaml` is the JSON document.
    for args in [
        &["service", "list"][..],
        &["backend", "list"],
        &["stats"],
        &["maps"],
    ] {
        let mut y = args.to_vec();
        y.extend(["-o", "yaml"]);
        let yaml: Value = serde_yaml_ng::from_str(&e.agent.cli(&y)).expect("yaml");
        let mut json = e.json(args);
        if args == ["stats"] || args == ["maps"] {
            // Counters and fill levels move between the two reads; compare the shape.
            let keys = |v: &Value| -> Vec<String> {
                v.as_array()
                    .expect("rows")
                    .iter()
                    .map(|r| r["name"].to_string())
                    .collect()
            };
            assert_eq!(keys(&yaml), keys(&json), "{args:?}");
            json = yaml.clone();
        }
        assert_eq!(yaml, json, "{args:?}");
    }

    // `-o wide` adds bpftool keys that really look the entries up; `--no-headers` drops titles.
    let wide = e.agent.cli(&["backend", "list", "-o", "wide"]);
    assert!(wide.starts_with("BACKEND "), "{wide}");
    let narrow = e.agent.cli(&["backend", "list"]);
    assert!(!narrow.contains("BPFTOOL KEY"), "{narrow}");
    let rows: Vec<&str> = wide.lines().filter(|l| l.contains(WEB)).collect();
    assert_eq!(rows.len(), 2, "{wide}");
    for row in rows {
        lookup_wide_key(&pins.join("xlb_backends"), row);
    }
    let svc_wide = e.agent.cli(&["service", "list", "web", "-o", "wide"]);
    let key_line = svc_wide
        .lines()
        .find(|l| l.contains("10.96.0.10:80/TCP"))
        .expect("frontend row");
    lookup_wide_key(&pins.join("xlb_services"), key_line);
    let bare = e.agent.cli(&["backend", "list", "--no-headers"]);
    assert_eq!(bare.lines().count(), 2, "{bare}");
    assert!(!bare.contains("BACKEND"), "{bare}");

    // `explain --src` takes an address without a port.
    let x = e.json(&[
        "explain",
        "--device",
        "xp0",
        "--src",
        "10.244.1.10",
        "--dst",
        "10.96.0.10:80",
    ]);
    assert!(
        x["packet"]
            .as_str()
            .expect("packet")
            .contains("10.244.1.10:40000"),
        "{x}"
    );

    // Every read command without a datapath: the same one line, exit code 4 (as `xlb status`).
    let reads: [&[&str]; 8] = [
        &["service", "list"],
        &["backend", "list"],
        &["conntrack", "list"],
        &["stats"],
        &["maps"],
        &["explain", "--src", "10.0.0.1", "--dst", "10.96.0.10:80"],
        &["monitor", "--count", "1"],
        &["service", "list", "web", "-o", "yaml"],
    ];
    let mut messages = BTreeSet::new();
    for args in reads {
        let (code, out, err) = without_agent(args);
        assert_eq!(code, Some(4), "xlb {args:?}: {err}");
        assert!(out.is_empty(), "xlb {args:?} printed {out}");
        assert!(
            err.contains("no xlb datapath is pinned under /sys/fs/bpf/xlbt-never-started"),
            "{err}"
        );
        messages.insert(err);
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
    let (code, _, _) = without_agent(&["status", "--sample", "0"]);
    assert_eq!(code, Some(4));
    let (code, out, _) = without_agent(&["agent", "--cleanup"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing to remove"), "{out}");

    // The version names the commit (built from git here) and the map layout.
    let (code, out, _) = xlb(&["version", "-o", "json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["layout_version"], lb_common::LAYOUT_VERSION);
    let (_, long, _) = xlb(&["--version"]);
    assert!(
        long.contains(&format!("map layout v{}", lb_common::LAYOUT_VERSION)),
        "{long}"
    );
    let commit = v["commit"].as_str().expect("commit");
    assert!(commit.len() >= 7 && long.contains(commit), "{long} / {v}");
}

#[test]
fn completions_and_man_pages_are_generated_and_valid() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = xlb(&["completions", shell]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            script.contains("service") && script.contains("bpffs"),
            "{shell}"
        );
        if shell == "bash" {
            let dir = WorkDir::new(&unique_tag());
            let ok = std::process::Command::new("bash")
                .arg("-n")
                .arg(dir.write("xlb.bash", &script))
                .status()
                .expect("bash");
            assert!(ok.success(), "the bash completion does not parse");
        }
    }
    let dir = WorkDir::new(&unique_tag());
    let (code, _, err) = xlb(&["man", "--dir", dir.path.to_str().expect("path")]);
    assert_eq!(code, Some(0), "{err}");
    let page = dir.path.join("xlb-agent.1");
    let out = std::process::Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(&page)
        .env("MANWIDTH", "200")
        .output()
        .expect("man");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("--ct-max"), "{text}");
    assert!(dir.path.join("xlb-service-list.1").exists());
}

/// Metrics that exist only with the Kubernetes source (tests/kubernetes.rs scrapes them).
const KUBERNETES_SOURCE_ONLY: [&str; 1] = ["xlb_source_errors_total"];

#[test]
fn every_grafana_dashboard_query_names_an_exported_metric() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/monitoring/grafana-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            queries.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = v["query"]["query"].as_str() {
            queries.push(q.to_owned());
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");

    // The families a live agent exports after real traffic (histograms as their series).
    let e = env("");
    assert!(
        e.short(SocketAddr::from((VIP, 80)), 3)
            .iter()
            .all(Result::is_ok)
    );
    e.refused(1);
    let (_, text) = e.scrape("/metrics");
    let mut exported = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().expect("name"), it.next().unwrap_or(""));
            let series: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "counter" => &["_total"],
                _ => &[""],
            };
            for s in series {
                let full = if name.ends_with(s) {
                    name.to_owned()
                } else {
                    format!("{name}{s}")
                };
                exported.insert(full);
            }
        }
    }
    let mut unknown = Vec::new();
    for q in &queries {
        let names: Vec<&str> = q
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("xlb_"))
            .collect();
        assert!(!names.is_empty(), "{q}: no xlb metric");
        unknown.extend(
            names
                .into_iter()
                .filter(|n| !exported.contains(*n) && !KUBERNETES_SOURCE_ONLY.contains(n))
                .map(|n| format!("{n} in {q}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:#?}\nexported: {exported:?}"
    );
}
