//! The Kubernetes source against the fake API server: in-process (watchers → deltas →
//! translation, for every Service type and endpoint condition, paging, selectors, bookmarks,
//! 410 re-lists), and the real agent binary with `--kubeconfig` forwarding real traffic while
//! objects change and the API server is killed and restarted.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_userspace::{
    model::{EndpointState, FrontendKind, LbService},
    source::{Delta, kube as source},
    translate::{NodeContext, Translator},
};
use tokio::sync::mpsc;
use xlb_tests::{
    agent::{Agent, DAEMONSET_CAPS, PinDir},
    fakeapi::{FakeApi, Res},
    files::WorkDir,
    manifests::{Ep, Port, docs, service, slice},
    netns::{require_root, unique_tag},
    topology::Node,
    traffic::{Conn, Servers, eventually, http_get, spread, tcp_ping_once},
};

fn http(node_port: Option<u16>) -> Vec<Port<'static>> {
    vec![Port {
        name: "http",
        port: 80,
        proto: "TCP",
        target: "8080",
        node_port,
    }]
}

fn node_object(name: &str, internal: Ipv4Addr, external: Option<Ipv4Addr>) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  addresses:\n  - {{type: Hostname, address: {name}}}\n  - {{type: InternalIP, address: \"{internal}\"}}\n"
    );
    if let Some(e) = external {
        s.push_str(&format!("  - {{type: ExternalIP, address: \"{e}\"}}\n"));
    }
    s
}

fn ep(addr: [u8; 4], node: &str, ready: bool, serving: bool, terminating: bool) -> Ep<'_> {
    Ep {
        addr: Ipv4Addr::from(addr).into(),
        ready,
        serving,
        terminating,
        node,
    }
}

/// The in-process watcher side: deltas from the source applied to a translator.
struct Feed {
    rx: mpsc::UnboundedReceiver<Delta>,
    t: Translator,
    deltas: usize,
    changes: usize,
}

impl Feed {
    /// Waits for the next delta and applies it.
    async fn next(&mut self) -> Delta {
        let d = tokio::time::timeout(Duration::from_secs(15), self.rx.recv())
            .await
            .expect("a delta within 15 s")
            .expect("source running");
        if let Some(ips) = &d.node_ips {
            let mut ctx = self.t.node().clone();
            ctx.node_ips.clone_from(ips);
            self.t.set_node(ctx);
        }
        d.apply_to(&mut self.t);
        self.t.flush();
        self.deltas += 1;
        self.changes += d.changes.len();
        d
    }

    /// Applies deltas until `f` holds on the desired state.
    async fn until(&mut self, what: &str, f: impl Fn(&Translator) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f(&self.t) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.next().await;
        }
    }

    /// Applies whatever arrives within `d`.
    async fn drain(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(delta)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.changes += delta.changes.len();
            self.deltas += 1;
            delta.apply_to(&mut self.t);
            self.t.flush();
        }
    }

    fn svc(&self, name: &str) -> Option<&LbService> {
        self.t.desired().services.get(name)
    }
}

fn start_feed(api: &FakeApi, node: &str, page_size: u32, errors: Arc<AtomicU64>) -> Feed {
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = source::Options {
        node_name: Some(node.to_owned()),
        proxy_name: None,
        page_size,
    };
    tokio::spawn(source::run(api.client(), opts, tx, move |_| {
        errors.fetch_add(1, Ordering::Relaxed);
    }));
    Feed {
        rx,
        t: Translator::new(NodeContext {
            node_name: Some(node.to_owned()),
            ..NodeContext::default()
        }),
        deltas: 0,
        changes: 0,
    }
}

fn frontends(s: &LbService) -> BTreeSet<(String, FrontendKind)> {
    s.frontends
        .iter()
        .map(|f| (format!("{}:{}", f.addr, f.port), f.kind))
        .collect()
}

fn states(s: &LbService) -> Vec<(String, EndpointState)> {
    s.endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.state))
        .collect()
}

/// Every Service type and endpoint condition, through list + watch.
fn cluster_objects() -> String {
    let n1 = "n1";
    let mut parts = vec![
        node_object(n1, Ipv4Addr::new(192, 168, 100, 1), Some(Ipv4Addr::new(203, 0, 113, 100))),
        service("web", Ipv4Addr::new(10, 96, 0, 10), &http(None), ""),
        slice("web-1", "web", &[("http", 8080, "TCP")], &[
            ep([10, 244, 1, 11], n1, true, true, false),
            ep([10, 244, 2, 11], "n2", true, true, false),
        ]),
        service("np", Ipv4Addr::new(10, 96, 0, 11), &http(Some(30080)), "  type: NodePort\n"),
        slice("np-1", "np", &[("http", 8080, "TCP")], &[ep([10, 244, 1, 12], n1, true, true, false)]),
        service(
            "lb",
            Ipv4Addr::new(10, 96, 0, 12),
            &http(Some(30081)),
            "  type: LoadBalancer\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.50}]\n",
        ),
        slice("lb-1", "lb", &[("http", 8080, "TCP")], &[ep([10, 244, 1, 13], n1, true, true, false)]),
        service(
            "ext",
            Ipv4Addr::new(10, 96, 0, 13),
            &http(None),
            "  externalIPs: [198.51.100.7]\n",
        ),
        slice("ext-1", "ext", &[("http", 8080, "TCP")], &[ep([10, 244, 1, 14], n1, true, true, false)]),
        // Ready and terminating together: only the ready one takes new flows.
        service("roll", Ipv4Addr::new(10, 96, 0, 14), &http(None), ""),
        slice("roll-1", "roll", &[("http", 8080, "TCP")], &[
            ep([10, 244, 1, 15], n1, true, true, false),
            ep([10, 244, 1, 16], n1, false, true, true),
            ep([10, 244, 1, 17], n1, false, false, false),
        ]),
        // Nothing ready: serving-and-terminating endpoints take the traffic.
        service("drain", Ipv4Addr::new(10, 96, 0, 15), &http(None), ""),
        slice("drain-1", "drain", &[("http", 8080, "TCP")], &[
            ep([10, 244, 1, 18], n1, false, true, true),
            ep([10, 244, 1, 19], n1, false, false, true),
        ]),
        // Programmed as nothing.
        "apiVersion: v1\nkind: Service\nmetadata: {name: headless, namespace: default}\nspec:\n  clusterIP: None\n  ports: [{name: http, port: 80}]\n".to_owned(),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: headless-1\n  namespace: default\n  labels: {kubernetes.io/service-name: headless, service.kubernetes.io/headless: \"\"}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [\"10.244.1.20\"], conditions: {ready: true}}]\n".to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: dns-alias, namespace: default}\nspec: {type: ExternalName, externalName: example.org}\n".to_owned(),
        // Another proxy's Service.
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: theirs\n  namespace: default\n  labels: {service.kubernetes.io/service-proxy-name: other}\nspec: {clusterIP: 10.96.0.16, ports: [{name: http, port: 80}]}\n".to_owned(),
    ];
    // Enough Services for the list to come in pages.
    for i in 0..30u8 {
        parts.push(service(
            &format!("bulk-{i}"),
            Ipv4Addr::new(10, 96, 1, i),
            &http(None),
            "",
        ));
    }
    docs(&parts)
}

#[test]
fn watchers_feed_the_translation_for_every_service_type_and_condition() {
    let api = FakeApi::with_bookmarks(Duration::from_millis(200));
    api.apply(&cluster_objects());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let errors = Arc::new(AtomicU64::new(0));
        let mut feed = start_feed(&api, "n1", 10, errors.clone());
        let first = feed.next().await;
        assert!(
            first.node_ips.as_deref()
                == Some(&[Ipv4Addr::new(192, 168, 100, 1).into(), Ipv4Addr::new(203, 0, 113, 100).into()][..]),
            "node addresses from Node.status.addresses: {:?}",
            first.node_ips
        );
        // The first delta is the whole state, not a trickle.
        assert!(feed.t.desired().services.len() >= 36, "{:?}", feed.t.desired().services.keys());

        let web = feed.svc("default/web:http/TCP").expect("web");
        assert_eq!(
            frontends(web),
            [("10.96.0.10:80".to_owned(), FrontendKind::ClusterIp)].into()
        );
        assert_eq!(web.endpoints.len(), 2);
        let np = feed.svc("default/np:http/TCP").expect("np");
        assert_eq!(
            frontends(np),
            [
                ("10.96.0.11:80".to_owned(), FrontendKind::ClusterIp),
                ("192.168.100.1:30080".to_owned(), FrontendKind::NodePort),
                ("203.0.113.100:30080".to_owned(), FrontendKind::NodePort),
            ]
            .into()
        );
        let lb = feed.svc("default/lb:http/TCP").expect("lb");
        assert!(frontends(lb).contains(&("203.0.113.50:80".to_owned(), FrontendKind::LoadBalancer)));
        assert!(frontends(lb).contains(&("192.168.100.1:30081".to_owned(), FrontendKind::NodePort)));
        let ext = feed.svc("default/ext:http/TCP").expect("ext");
        assert!(frontends(ext).contains(&("198.51.100.7:80".to_owned(), FrontendKind::ExternalIp)));
        assert_eq!(
            states(feed.svc("default/roll:http/TCP").expect("roll")),
            vec![
                ("10.244.1.15".to_owned(), EndpointState::Active),
                ("10.244.1.16".to_owned(), EndpointState::Terminating),
                ("10.244.1.17".to_owned(), EndpointState::NotReady),
            ]
        );
        assert_eq!(
            states(feed.svc("default/drain:http/TCP").expect("drain")),
            vec![
                ("10.244.1.18".to_owned(), EndpointState::Active),
                ("10.244.1.19".to_owned(), EndpointState::Terminating),
            ]
        );
        let names: Vec<&String> = feed.t.desired().services.keys().collect();
        for absent in ["headless", "dns-alias", "theirs"] {
            assert!(
                !names.iter().any(|n| n.contains(&format!("/{absent}:"))),
                "{absent} must not be programmed: {names:?}"
            );
        }
        let stats = api.stats();
        assert!(stats.lists[&Res::Services] >= 4, "paged list: {stats:?}");
        assert_eq!(
            stats.selectors[&Res::Services],
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );

        // Changes arrive through the watch: an endpoint becomes ready, a Service goes away,
        // the LoadBalancer gets another ingress IP, the Node another address.
        api.apply(&slice("roll-1", "roll", &[("http", 8080, "TCP")], &[
            ep([10, 244, 1, 15], "n1", true, true, false),
            ep([10, 244, 1, 17], "n1", true, true, false),
        ]));
        api.delete("Service", "default", "web");
        api.apply(&service(
            "lb",
            Ipv4Addr::new(10, 96, 0, 12),
            &http(Some(30081)),
            "  type: LoadBalancer\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.50}, {ip: 203.0.113.51}]\n",
        ));
        api.apply(&node_object("n1", Ipv4Addr::new(192, 168, 100, 1), None));
        feed.until("the watched changes", |t| {
            let d = &t.desired().services;
            !d.contains_key("default/web:http/TCP")
                && d["default/roll:http/TCP"].endpoints.iter().all(|e| e.state == EndpointState::Active)
                && frontends(&d["default/lb:http/TCP"])
                    .contains(&("203.0.113.51:80".to_owned(), FrontendKind::LoadBalancer))
                && !frontends(&d["default/np:http/TCP"])
                    .contains(&("203.0.113.100:30080".to_owned(), FrontendKind::NodePort))
        })
        .await;
        let lists = api.stats().lists[&Res::Services];

        // Watches that end (timeoutSeconds) resume from their resourceVersion: no new list.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(api.stats().bookmarks > 0, "bookmarks were sent");
        api.end_watches();
        api.apply(&service("late", Ipv4Addr::new(10, 96, 0, 20), &http(None), ""));
        feed.until("a Service created after the watch resumed", |t| {
            t.desired().services.contains_key("default/late:http/TCP")
        })
        .await;
        assert_eq!(api.stats().lists[&Res::Services], lists, "resumed without listing");

        // A burst of changes is coalesced: far fewer deltas than events.
        let deltas = feed.deltas;
        let burst: Vec<String> = (0..40)
            .map(|i| service(&format!("burst-{i}"), Ipv4Addr::new(10, 96, 9, i), &http(None), ""))
            .collect();
        api.apply(&docs(&burst));
        feed.until("the burst", |t| {
            (0..40).all(|i| t.desired().services.contains_key(&format!("default/burst-{i}:http/TCP")))
        })
        .await;
        let burst_deltas = feed.deltas - deltas;
        assert!(burst_deltas < 10, "40 Services in a burst came in {burst_deltas} deltas");

        // 410 Gone: the history is compacted, every watcher lists again. Nothing changed, so
        // nothing is fed on.
        feed.drain(Duration::from_millis(300)).await;
        let changes = feed.changes;
        api.expire();
        let deadline = Instant::now() + Duration::from_secs(15);
        while api.stats().lists[&Res::Services] == lists && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(api.stats().lists[&Res::Services] > lists, "re-listed after 410");
        feed.drain(Duration::from_secs(2)).await;
        assert_eq!(feed.changes, changes, "an unchanged re-list feeds nothing");
        // A change made while the watchers were re-listing still arrives.
        api.delete("Service", "default", "late");
        feed.until("the deletion after the re-list", |t| {
            !t.desired().services.contains_key("default/late:http/TCP")
        })
        .await;
        assert!(api.stats().gone > 0);
    });
}

#[test]
fn an_invalid_object_keeps_its_last_good_version_and_is_reported() {
    let api = FakeApi::new();
    api.apply(&docs(&[
        node_object("n1", Ipv4Addr::new(192, 168, 100, 1), None),
        service("web", Ipv4Addr::new(10, 96, 0, 10), &http(None), ""),
        slice(
            "web-1",
            "web",
            &[("http", 8080, "TCP")],
            &[ep([10, 244, 1, 11], "n1", true, true, false)],
        ),
    ]));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut feed = start_feed(&api, "n1", 500, Arc::new(AtomicU64::new(0)));
        feed.next().await;
        assert!(feed.svc("default/web:http/TCP").is_some());
        // An invalid port: reported, the last good version stays.
        api.apply(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 0, targetPort: 8080}]}\n",
        );
        let d = feed.next().await;
        assert!(d.changes.is_empty());
        assert!(
            d.problems.iter().any(|p| p.to_string().contains("Service default/web")),
            "{:?}",
            d.problems
        );
        assert!(feed.svc("default/web:http/TCP").is_some(), "last good version kept");
        api.apply(&service("web", Ipv4Addr::new(10, 96, 0, 10), &http(None), ""));
        let d = feed.next().await;
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    });
}

/// The real agent against the fake API server over TCP: traffic follows Services and
/// EndpointSlices as they change, and survives the API server going away.
#[test]
fn agent_with_kubeconfig_follows_the_api_server_and_survives_its_restart() {
    const WEB: &str = "default/web:http/TCP";
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=3 {
        node.add_pod(i);
    }
    // The node's InternalIP, for NodePorts (no --node-ip: it comes from the Node object).
    let node_ip = Ipv4Addr::new(192, 168, 77, 1);
    node.ns
        .ip(&["addr", "add", &format!("{node_ip}/32"), "dev", "lo"]);
    let mut servers = Servers::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
    }
    let pods: Vec<Ipv4Addr> = node.pods.iter().map(|p| p.ip).collect();
    let eps = |n: usize| -> Vec<Ep<'static>> {
        pods[1..=n].iter().map(|ip| Ep::ready(*ip, "n1")).collect()
    };
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let web = |n: usize| {
        docs(&[
            service("web", vip, &http(Some(30080)), "  type: NodePort\n"),
            slice("web-1", "web", &[("http", 8080, "TCP")], &eps(n)),
        ])
    };

    let mut api = FakeApi::new();
    api.apply(&node_object("n1", node_ip, None));
    api.apply(&web(2));
    api.serve_in(node.ns.handle());
    let dir = WorkDir::new(&tag);
    let kubeconfig = api.kubeconfig(&dir.path);
    let pins = PinDir::new(&tag);
    // Only the capabilities the DaemonSet grants (deploy/kubernetes/daemonset.yaml).
    let agent = Agent::start_with_caps(
        &node.ns,
        &pins,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
        ],
        DAEMONSET_CAPS,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("pid")))
        .expect("agent status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    let want: u64 = DAEMONSET_CAPS.iter().map(|c| 1u64 << c).sum();
    assert_eq!(
        u64::from_str_radix(eff.trim(), 16).expect("hex"),
        want,
        "agent capabilities"
    );
    agent.wait_active(WEB, 2);
    let client = &node.pods[0].ns;
    let to_vip = SocketAddr::from((vip, 80));
    let to_np = SocketAddr::from((node_ip, 30080));
    let served = |to: SocketAddr, n: usize| -> std::collections::BTreeMap<String, usize> {
        spread(&client.run(move || {
            (0..n)
                .map(|_| tcp_ping_once(to, Duration::from_secs(2)))
                .collect::<Vec<_>>()
        }))
    };
    let s = served(to_vip, 40);
    assert_eq!(s.keys().cloned().collect::<Vec<_>>(), ["b1", "b2"], "{s:?}");
    let s = served(to_np, 20);
    assert!(
        !s.contains_key("<error>"),
        "NodePort on the Node's InternalIP: {s:?}"
    );

    // A third endpoint, then the first one terminating: traffic follows.
    api.apply(&web(3));
    agent.wait_active(WEB, 3);
    assert_eq!(served(to_vip, 60).len(), 3);
    api.apply(&docs(&[slice(
        "web-1",
        "web",
        &[("http", 8080, "TCP")],
        &[
            Ep {
                terminating: true,
                ready: false,
                ..Ep::ready(pods[1], "n1")
            },
            Ep::ready(pods[2], "n1"),
            Ep::ready(pods[3], "n1"),
        ],
    )]));
    agent.wait_active(WEB, 2);
    let s = served(to_vip, 40);
    assert!(!s.contains_key("b1") && !s.contains_key("<error>"), "{s:?}");

    // Kill the API server while a connection is open and new ones keep coming.
    let mut conn = client
        .run(move || Conn::open(to_vip, Duration::from_secs(2)))
        .expect("connect");
    let before = conn.ping().expect("ping").backend;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, failures) = (stop.clone(), failures.clone());
        client.spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                if tcp_ping_once(to_vip, Duration::from_secs(2)).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    api.stop();
    // While it is down the cluster changes; the agent cannot know yet.
    api.apply(&web(3));
    api.expire();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        conn.ping()
            .expect("established flow during the outage")
            .backend,
        before
    );
    assert!(
        agent.logs().contains("Kubernetes watch failed"),
        "{}",
        agent.logs()
    );
    api.start();
    // Converges: b1 is ready again.
    agent.wait_active(WEB, 3);
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no new connection failed"
    );
    assert_eq!(
        conn.ping()
            .expect("established flow after the restart")
            .backend,
        before
    );
    assert_eq!(served(to_vip, 60).len(), 3);

    // A Service created while the agent runs is programmed.
    let api_vip = Ipv4Addr::new(10, 96, 0, 11);
    api.apply(&docs(&[
        service("api", api_vip, &http(None), ""),
        slice(
            "api-1",
            "api",
            &[("http", 8080, "TCP")],
            &[Ep::ready(pods[3], "n1")],
        ),
    ]));
    agent.wait_active("default/api:http/TCP", 1);
    let s = served(SocketAddr::from((api_vip, 80)), 10);
    assert_eq!(s.keys().cloned().collect::<Vec<_>>(), ["b3"], "{s:?}");

    // Deleting the Service removes its frontends.
    api.delete("Service", "default", "web");
    let gone = eventually(Duration::from_secs(15), || {
        let v = agent.services();
        (!v.as_array()?.iter().any(|s| s["name"] == WEB)).then_some(())
    });
    assert!(gone.is_some(), "{}", agent.cli(&["service", "list"]));
    assert!(
        client
            .run(move || tcp_ping_once(to_vip, Duration::from_millis(500)))
            .is_err()
    );

    // Metrics count the watch errors of the outage; health is fine.
    let (code, text) = node
        .ns
        .run(|| http_get("127.0.0.1:10249".parse().expect("addr"), "/metrics").expect("metrics"));
    assert_eq!(code, 200);
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("xlb_source_errors_total{") && l.contains("kubernetes"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "{text}");
    let (code, _) = node
        .ns
        .run(|| http_get("127.0.0.1:10256".parse().expect("addr"), "/healthz").expect("healthz"));
    assert_eq!(code, 200);
    drop(servers);
}

/// A slice of `web` whose endpoints (last octet of 10.244.1.x, zone) carry zone hints.
fn zoned_slice(eps: &[(u8, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for (last, zone) in eps {
        s.push_str(&format!(
            "- {{addresses: [10.244.1.{last}], nodeName: n1, zone: {zone}, conditions: {{ready: true}}, hints: {{forZones: [{{name: {zone}}}]}}}}\n"
        ));
    }
    s
}

#[test]
fn topology_hints_keep_new_flows_in_the_nodes_zone_and_fall_back_when_it_empties() {
    const WEB: &str = "default/web:http/TCP";
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    for i in 0..=3 {
        node.add_pod(i);
    }
    let mut servers = Servers::new();
    for (i, pod) in node.pods.iter().enumerate().skip(1) {
        servers.tcp_persistent(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("b{i}"));
    }
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut api = FakeApi::new();
    // The node is in zone-a (its label); b1 is hinted for zone-a, b2 and b3 for zone-b.
    api.apply(
        &node_object("n1", Ipv4Addr::new(192, 168, 77, 1), None).replace(
            "metadata: {name: n1}",
            "metadata: {name: n1, labels: {topology.kubernetes.io/zone: zone-a}}",
        ),
    );
    api.apply(&docs(&[service("web", vip, &http(None), "")]));
    api.apply(&zoned_slice(&[
        (11, "zone-a"),
        (12, "zone-b"),
        (13, "zone-b"),
    ]));
    api.serve_in(node.ns.handle());
    let dir = WorkDir::new(&tag);
    let kubeconfig = api.kubeconfig(&dir.path);
    let pins = PinDir::new(&tag);
    let mut agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
            // Through tc, where every new flow picks (the socket path picks the same way).
            "--cgroup",
            "off",
        ],
    );
    agent.wait_for_log("node zone from the Node object", 1);
    agent.wait_active(WEB, 1);
    let client = &node.pods[0].ns;
    let to = SocketAddr::from((vip, 80));
    let served = |n: usize| -> std::collections::BTreeMap<String, usize> {
        spread(&client.run(move || {
            (0..n)
                .map(|_| tcp_ping_once(to, Duration::from_secs(2)))
                .collect::<Vec<_>>()
        }))
    };
    // Every new flow stays in zone-a.
    let s = served(30);
    assert_eq!(s.keys().cloned().collect::<Vec<_>>(), ["b1"], "{s:?}");
    // zone-a empties: new flows fall back to every endpoint.
    api.apply(&zoned_slice(&[(12, "zone-b"), (13, "zone-b")]));
    agent.wait_active(WEB, 2);
    let s = served(40);
    assert_eq!(s.keys().cloned().collect::<Vec<_>>(), ["b2", "b3"], "{s:?}");
    // An endpoint without hints: topology is off, all ready endpoints serve.
    api.apply(&zoned_slice(&[(11, "zone-a"), (12, "zone-b"), (13, "zone-b")]).replace(
        "- {addresses: [10.244.1.13], nodeName: n1, zone: zone-b, conditions: {ready: true}, hints: {forZones: [{name: zone-b}]}}",
        "- {addresses: [10.244.1.13], nodeName: n1, zone: zone-b, conditions: {ready: true}}",
    ));
    agent.wait_active(WEB, 3);
    assert_eq!(served(60).len(), 3);
    drop(servers);
}

#[test]
fn healthz_fails_while_the_node_is_deleted_or_drained_by_the_autoscaler() {
    require_root();
    let tag = unique_tag();
    let mut node = Node::new(&tag, "n1", 1);
    node.add_pod(0);
    let node_ip = Ipv4Addr::new(192, 168, 77, 1);
    let plain = node_object("n1", node_ip, None);
    let with_spec = |spec_or_meta: &str| -> String { format!("{plain}{spec_or_meta}") };
    let mut api = FakeApi::new();
    api.apply(&plain);
    api.apply(&docs(&[service(
        "web",
        Ipv4Addr::new(10, 96, 0, 10),
        &http(None),
        "",
    )]));
    api.serve_in(node.ns.handle());
    let dir = WorkDir::new(&tag);
    let kubeconfig = api.kubeconfig(&dir.path);
    let pins = PinDir::new(&tag);
    let _agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "n1",
            "--pod-devices",
            "xp*",
        ],
    );
    let get = |path: &'static str| -> (u16, String) {
        node.ns
            .run(move || http_get("127.0.0.1:10256".parse().expect("addr"), path).expect(path))
    };
    let wait_for = |code: u16| {
        let ok = eventually(Duration::from_secs(10), || {
            (get("/healthz").0 == code).then_some(())
        });
        assert!(
            ok.is_some(),
            "/healthz never answered {code}: {:?}",
            get("/healthz")
        );
    };
    wait_for(200);
    // The cluster autoscaler taints the node before deleting it.
    api.apply(&with_spec(
        "spec:\n  taints:\n  - {key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}\n",
    ));
    wait_for(503);
    let (_, body) = get("/healthz");
    assert!(body.contains("\"nodeEligible\":false"), "{body}");
    assert_eq!(
        get("/livez").0,
        200,
        "liveness does not follow the node's fate"
    );
    // Scale-down cancelled: the taint goes, so does the failure.
    api.apply(&plain);
    wait_for(200);
    // The Node is being deleted.
    api.apply(&plain.replace(
        "metadata: {name: n1}",
        "metadata: {name: n1, deletionTimestamp: \"2026-01-01T00:00:00Z\", finalizers: [example.com/hold]}",
    ));
    wait_for(503);
    assert_eq!(get("/livez").0, 200);
}
