//! Kubernetes objects → desired state: the semantics the file source and the watcher share.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{NodeContext, service_spec, slice_spec, translate};
use crate::model::{EndpointState, FrontendKind, Scope};

fn svc(yaml: &str) -> Service {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn node() -> NodeContext {
    NodeContext {
        node_name: Some("n1".into()),
        node_ips: vec![IpAddr::from([192, 168, 0, 1])],
        proxy_name: None,
        zone: Some("z1".into()),
        external_ip_cidrs: None,
    }
}

fn run(svcs: &[&str], slices: &[&str]) -> super::Translation {
    run_on(svcs, slices, &node())
}

fn run_on(svcs: &[&str], slices: &[&str], node: &NodeContext) -> super::Translation {
    let s: Vec<_> = svcs
        .iter()
        .map(|y| service_spec(&svc(y)).unwrap().0)
        .collect();
    let e: Vec<_> = slices
        .iter()
        .map(|y| slice_spec(&slice(y)).unwrap().0)
        .collect();
    translate(&s, &e, node)
}

const WEB: &str = "
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
";

#[test]
fn named_target_port_resolves_per_slice_and_slices_merge() {
    let a = "
metadata: {name: web-a, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.0.1]
  nodeName: n1
";
    let b = "
metadata: {name: web-b, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: [10.244.0.2]
  nodeName: n2
";
    let t = run(&[WEB], &[a, b]);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let http = &t.state.services["default/web:http/TCP"];
    let ports: Vec<(IpAddr, u16, bool)> = http
        .endpoints
        .iter()
        .map(|e| (e.addr, e.port, e.local))
        .collect();
    assert_eq!(
        ports,
        vec![
            (IpAddr::from([10, 244, 0, 1]), 8080, true),
            (IpAddr::from([10, 244, 0, 2]), 9090, false)
        ]
    );
    // Slice b has no dns port: only a's endpoint serves it.
    let dns = &t.state.services["default/web:dns/UDP"];
    assert_eq!(dns.endpoints.len(), 1);
    assert_eq!(dns.frontends[0].port, 53);
    assert_eq!(dns.frontends[0].kind, FrontendKind::ClusterIp);
}

#[test]
fn readiness_and_terminating_fallback() {
    let eps = |body: &str| {
        format!(
            "
metadata: {{name: web-a, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{body}"
        )
    };
    // One ready, one not ready, one terminating: only the ready one serves.
    let s = eps("
- addresses: [10.0.0.1]
  conditions: {ready: true}
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
");
    let t = run(&[WEB], &[&s]);
    let st: Vec<EndpointState> = t.state.services["default/web:http/TCP"]
        .endpoints
        .iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(
        st,
        vec![
            EndpointState::Active,
            EndpointState::NotReady,
            EndpointState::Terminating
        ]
    );
    // None ready: serving-and-terminating endpoints take new flows (ProxyTerminatingEndpoints).
    let s = eps("
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.4]
  conditions: {ready: false, serving: false, terminating: true}
");
    let t = run(&[WEB], &[&s]);
    let st: Vec<EndpointState> = t.state.services["default/web:http/TCP"]
        .endpoints
        .iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(
        st,
        vec![
            EndpointState::NotReady,
            EndpointState::Active,
            EndpointState::Terminating
        ]
    );
    // Unknown readiness counts as ready.
    let s = eps("
- addresses: [10.0.0.5]
");
    let t = run(&[WEB], &[&s]);
    assert_eq!(
        t.state.services["default/web:http/TCP"].endpoints[0].state,
        EndpointState::Active
    );
}

#[test]
fn invalid_services_name_the_field() {
    let cases = [
        (
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}",
            "spec.ports[0].port",
        ),
        (
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: ICMP}]}",
            "spec.ports[0].protocol",
        ),
        (
            "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
            "spec.clusterIP[0]",
        ),
        ("spec: {ports: [{port: 80}]}", "spec.clusterIP"),
        (
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 81}]}",
            "spec.ports[0].name",
        ),
        (
            "spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}",
            "spec.ports[1].port",
        ),
        (
            "spec: {clusterIP: 10.96.0.1, type: NodePort, ports: [{port: 80}]}",
            "spec.ports[0].nodePort",
        ),
        (
            "spec: {clusterIP: 10.96.0.1, externalTrafficPolicy: Maybe, ports: [{port: 80}]}",
            "spec.externalTrafficPolicy",
        ),
        (
            "spec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (
            "spec: {clusterIP: 10.96.0.1, loadBalancerSourceRanges: [10.0.0.0/33], ports: [{port: 80}]}",
            "spec.loadBalancerSourceRanges[0]",
        ),
        (
            "metadata: {name: web, annotations: {xlb.io/lb-algorithm: roundrobin}}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
            "metadata.annotations[xlb.io/lb-algorithm]",
        ),
    ];
    for (yaml, field) in cases {
        let yaml = if yaml.starts_with("metadata") {
            yaml.to_owned()
        } else {
            format!("metadata: {{name: web}}\n{yaml}")
        };
        let problems = service_spec(&svc(&yaml)).expect_err(&yaml);
        assert!(
            problems
                .iter()
                .any(|p| p.field == field && p.object == "Service default/web"),
            "{yaml}: expected a problem at {field}, got {problems:?}"
        );
    }
    let bad_slice = "
metadata: {name: s, namespace: default}
addressType: IPv4
endpoints: [{addresses: [not-an-ip]}]
";
    let problems = slice_spec(&slice(bad_slice)).unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "metadata.labels[kubernetes.io/service-name]",
            "endpoints[0].addresses[0]"
        ]
    );
}

#[test]
fn headless_external_name_and_other_proxies_program_nothing() {
    let headless = "metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}";
    let ext = "metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}";
    let other = "metadata: {name: o, labels: {service.kubernetes.io/service-proxy-name: other}}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}";
    let t = run(&[headless, ext, other], &[]);
    assert!(t.state.services.is_empty(), "{:?}", t.state.services.keys());
}

#[test]
fn every_frontend_kind_and_external_traffic_policy_local() {
    let lb = "
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalIPs: [203.0.113.5]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.10}]
";
    let eps = "
metadata: {name: lb-a, namespace: default, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.1], nodeName: n1}
- {addresses: [10.244.1.1], nodeName: n2}
";
    let t = run(&[lb], &[eps]);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let main = &t.state.services["default/lb:80/TCP"];
    let local = &t.state.services["default/lb:80/TCP (local)"];
    // External frontends: local endpoints only, no SNAT.
    assert!(local.ext_local);
    assert_eq!(local.endpoints.len(), 1);
    assert!(local.endpoints[0].local);
    let kinds: Vec<(FrontendKind, Scope, bool)> = local
        .frontends
        .iter()
        .map(|f| (f.kind, f.scope, f.source_ranges))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (FrontendKind::NodePort, Scope::External, false),
            (FrontendKind::LoadBalancer, Scope::External, true),
            (FrontendKind::ExternalIp, Scope::External, false),
        ]
    );
    assert_eq!(local.frontends[0].addr, IpAddr::from([192, 168, 0, 1]));
    assert_eq!(local.frontends[0].port, 30080);
    // This node's pods reaching the same addresses use every endpoint.
    assert_eq!(main.endpoints.len(), 2);
    assert_eq!(main.frontends.len(), 4);
    assert!(
        main.frontends[1..]
            .iter()
            .all(|f| f.scope == Scope::Internal)
    );
    assert_eq!(t.health_checks[&32000].local_endpoints, 1);
}

#[test]
fn internal_traffic_policy_local_and_affinity() {
    let s = "
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports: [{port: 80}]
";
    let eps = "
metadata: {name: web-a, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- {addresses: [10.244.0.1], nodeName: n1}
- {addresses: [10.244.1.1], nodeName: n2}
";
    let t = run(&[s], &[eps]);
    let web = &t.state.services["default/web:80/TCP"];
    assert_eq!(web.endpoints.len(), 1);
    assert_eq!(web.endpoints[0].addr, IpAddr::from([10, 244, 0, 1]));
    assert_eq!(web.affinity_timeout, 10_800);
}

#[test]
fn conflicting_frontends_and_sctp_port_rewrite_are_reported() {
    let a = "metadata: {name: a, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}";
    let b = "metadata: {name: b, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}";
    let sctp = "metadata: {name: s, namespace: default}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80, protocol: SCTP, targetPort: 8080}]}";
    let eps = "
metadata: {name: s-a, namespace: default, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080, protocol: SCTP}]
endpoints: [{addresses: [10.244.0.1]}]
";
    let t = run(&[a, b, sctp], &[eps]);
    assert!(t.state.services.contains_key("default/a:80/TCP"));
    assert!(!t.state.services.contains_key("default/b:80/TCP"));
    assert!(!t.state.services.contains_key("default/s:80/SCTP"));
    let msgs: Vec<String> = t.problems.iter().map(ToString::to_string).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("Service default/b") && m.contains("already used by default/a")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("Service default/s") && m.contains("SCTP")),
        "{msgs:?}"
    );
}

#[test]
fn incremental_translation_matches_a_fresh_one() {
    use super::Translator;
    let svc_a = "metadata: {name: a, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}";
    let svc_b = "metadata: {name: b, namespace: default}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}";
    // c takes a's VIP: it loses while a exists, wins once a is gone.
    let svc_c = "metadata: {name: c, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}";
    let sl = |name: &str, svc: &str, ip: &str| {
        slice_spec(&slice(&format!(
            "metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{port: 80}}]\nendpoints: [{{addresses: [{ip}]}}]"
        )))
        .unwrap()
        .0
    };
    let mut t = Translator::new(node());
    let mut services = vec![
        service_spec(&svc(svc_a)).unwrap().0,
        service_spec(&svc(svc_b)).unwrap().0,
    ];
    let mut slices = vec![sl("a-1", "a", "10.244.0.1"), sl("b-1", "b", "10.244.0.2")];
    for s in &services {
        t.upsert_service(s.clone());
    }
    for s in &slices {
        t.upsert_slice(s.clone());
    }
    let changed = t.flush();
    assert_eq!(changed.len(), 2);
    let check = |t: &Translator, services: &[super::ServiceSpec], slices: &[super::SliceSpec]| {
        let fresh = translate(services, slices, &node());
        assert_eq!(t.desired(), &fresh.state);
        assert_eq!(t.problems(), fresh.problems);
    };
    check(&t, &services, &slices);

    // One endpoint changes: only that service is reported.
    slices[1] = sl("b-1", "b", "10.244.0.3");
    t.upsert_slice(slices[1].clone());
    assert_eq!(
        t.flush().into_iter().collect::<Vec<_>>(),
        vec!["default/b:80/TCP".to_owned()]
    );
    check(&t, &services, &slices);

    // A conflicting service appears, then the owner goes away.
    services.push(service_spec(&svc(svc_c)).unwrap().0);
    slices.push(sl("c-1", "c", "10.244.0.4"));
    t.upsert_service(services[2].clone());
    t.upsert_slice(slices[2].clone());
    t.flush();
    check(&t, &services, &slices);
    assert!(
        t.problems()
            .iter()
            .any(|p| p.message.contains("already used by default/a"))
    );
    services.remove(0);
    slices.remove(0);
    t.remove_service("default", "a");
    t.remove_slice("default", "a-1");
    let changed = t.flush();
    assert!(changed.contains("default/a:80/TCP") && changed.contains("default/c:80/TCP"));
    check(&t, &services, &slices);
    assert_eq!(t.desired().services["default/c:80/TCP"].frontends.len(), 1);

    // A slice relabelled to another service moves its endpoint.
    let moved = sl("b-1", "c", "10.244.0.3");
    slices.retain(|s| s.name != "b-1");
    slices.push(moved.clone());
    t.upsert_slice(moved);
    t.flush();
    check(&t, &services, &slices);
    assert!(
        t.desired().services["default/b:80/TCP"]
            .endpoints
            .is_empty()
    );
}

/// The active endpoints (last octets) of `name`.
fn active(t: &super::Translation, name: &str) -> Vec<u8> {
    t.state.services[name]
        .endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Active)
        .map(|e| match e.addr {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(a) => a.octets()[15],
        })
        .collect()
}

#[test]
fn topology_hints_pick_this_zone_or_node_and_fall_back_as_kube_proxy() {
    let hinted = |eps: &str| {
        format!(
            "
metadata: {{name: web-a, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{eps}"
        )
    };
    // Every ready endpoint hinted, one for this zone: only it takes new flows, the others stay
    // for established ones.
    let zonal = hinted(
        "- {addresses: [10.244.0.1], zone: z1, hints: {forZones: [{name: z1}]}}
- {addresses: [10.244.0.2], zone: z2, hints: {forZones: [{name: z2}]}}
- {addresses: [10.244.0.3], zone: z2, hints: {forZones: [{name: z2}]}}
",
    );
    let t = run(&[WEB], &[&zonal]);
    assert_eq!(active(&t, "default/web:http/TCP"), [1]);
    assert_eq!(t.state.services["default/web:http/TCP"].endpoints.len(), 3);
    // Another zone's node gets the other two; a node without a zone label gets all.
    let z2 = NodeContext {
        zone: Some("z2".into()),
        ..node()
    };
    assert_eq!(
        active(&run_on(&[WEB], &[&zonal], &z2), "default/web:http/TCP"),
        [2, 3]
    );
    let nozone = NodeContext {
        zone: None,
        ..node()
    };
    assert_eq!(
        active(&run_on(&[WEB], &[&zonal], &nozone), "default/web:http/TCP"),
        [1, 2, 3]
    );
    // No endpoint hinted for this zone (it emptied), or one ready endpoint without hints: all.
    let emptied = hinted(
        "- {addresses: [10.244.0.2], zone: z2, hints: {forZones: [{name: z2}]}}
- {addresses: [10.244.0.3], zone: z2, hints: {forZones: [{name: z2}]}}
",
    );
    assert_eq!(
        active(&run(&[WEB], &[&emptied]), "default/web:http/TCP"),
        [2, 3]
    );
    let partial = hinted(
        "- {addresses: [10.244.0.1], zone: z1, hints: {forZones: [{name: z1}]}}
- {addresses: [10.244.0.2], zone: z2}
",
    );
    assert_eq!(
        active(&run(&[WEB], &[&partial]), "default/web:http/TCP"),
        [1, 2]
    );
    // A not-ready endpoint's missing hints do not matter.
    let unready = hinted(
        "- {addresses: [10.244.0.1], zone: z1, hints: {forZones: [{name: z1}]}}
- {addresses: [10.244.0.2], zone: z2, hints: {forZones: [{name: z2}]}}
- {addresses: [10.244.0.4], zone: z1, conditions: {ready: false}}
",
    );
    assert_eq!(
        active(&run(&[WEB], &[&unready]), "default/web:http/TCP"),
        [1]
    );
    // PreferSameNode: node hints win over zone hints.
    let nodes = hinted(
        "- {addresses: [10.244.0.1], nodeName: n2, zone: z1, hints: {forNodes: [{name: n2}], forZones: [{name: z1}]}}
- {addresses: [10.244.0.2], nodeName: n1, zone: z1, hints: {forNodes: [{name: n1}], forZones: [{name: z1}]}}
",
    );
    assert_eq!(active(&run(&[WEB], &[&nodes]), "default/web:http/TCP"), [2]);
    // externalTrafficPolicy / internalTrafficPolicy Local ignore topology (they are local).
    let local = WEB.replace(
        "clusterIP: 10.96.0.10",
        "clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local",
    );
    let t = run(&[&local], &[&nodes]);
    assert_eq!(active(&t, "default/web:http/TCP"), [2]);
}

#[test]
fn externalips_outside_the_allowed_cidrs_and_proxy_mode_lb_ips_are_not_programmed() {
    let svc = "
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalIPs: [203.0.113.5, 198.51.100.7]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress:
    - {ip: 192.0.2.50}
    - {ip: 192.0.2.51, ipMode: Proxy}
    - {ip: 192.0.2.52, ipMode: VIP}
";
    let eps = "
metadata: {name: lb-a, namespace: default, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.1]}]
";
    let guarded = NodeContext {
        external_ip_cidrs: Some(vec![crate::model::IpNet::parse("203.0.113.0/24").unwrap()]),
        ..node()
    };
    let t = run_on(&[svc], &[eps], &guarded);
    let fes: Vec<(IpAddr, FrontendKind)> = t.state.services["default/lb:http/TCP"]
        .frontends
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                FrontendKind::ExternalIp | FrontendKind::LoadBalancer
            )
        })
        .map(|f| (f.addr, f.kind))
        .collect();
    assert_eq!(
        fes,
        [
            (IpAddr::from([192, 0, 2, 50]), FrontendKind::LoadBalancer),
            (IpAddr::from([192, 0, 2, 52]), FrontendKind::LoadBalancer),
            (IpAddr::from([203, 0, 113, 5]), FrontendKind::ExternalIp),
        ]
    );
    assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    assert!(
        t.problems[0]
            .message
            .contains("198.51.100.7 is outside --external-ip-cidrs")
    );
    assert!(!t.problems[0].is_error());
    // Without the flag every externalIP is served.
    let t = run(&[svc], &[eps]);
    let n = t.state.services["default/lb:http/TCP"]
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::ExternalIp)
        .count();
    assert_eq!(n, 2);
}

#[test]
fn a_dual_stack_service_becomes_one_service_per_family_with_its_own_endpoints() {
    let web = "
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: ['2001:db8::5']
  loadBalancerSourceRanges: [198.51.100.0/24, '2001:db8:1::/48']
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.10}, {ip: '2001:db8::10'}]
";
    let v4 = "
metadata: {name: web-4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.1], nodeName: n1}]
";
    let v6 = "
metadata: {name: web-6, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ['fd00:244::1'], nodeName: n1}
- {addresses: ['fd00:244::2'], nodeName: n2}
";
    let mut n = node();
    n.node_ips.push("fd00:100::1".parse().unwrap());
    let t = run_on(&[web], &[v4, v6], &n);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let four = &t.state.services["default/web:http/TCP"];
    let six = &t.state.services["default/web:http/TCP (IPv6)"];
    let addrs = |s: &crate::model::LbService| -> Vec<(String, FrontendKind)> {
        s.frontends
            .iter()
            .map(|f| (f.addr.to_string(), f.kind))
            .collect()
    };
    assert_eq!(
        addrs(six),
        [
            ("fd00:96::10".to_owned(), FrontendKind::ClusterIp),
            ("fd00:100::1".to_owned(), FrontendKind::NodePort),
            ("2001:db8::10".to_owned(), FrontendKind::LoadBalancer),
            ("2001:db8::5".to_owned(), FrontendKind::ExternalIp),
        ]
    );
    assert!(
        addrs(four).iter().all(|(a, _)| !a.contains(':')),
        "{four:?}"
    );
    // Each family's endpoints and source ranges, nothing of the other.
    let eps: Vec<String> = six.endpoints.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(eps, ["fd00:244::1", "fd00:244::2"]);
    assert_eq!(four.endpoints.len(), 1);
    let ranges: Vec<String> = six.source_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(ranges, ["2001:db8:1::/48"]);
    assert_eq!(four.source_ranges.len(), 1);

    // A single-stack IPv6 Service: its NodePort only on the node's IPv6 address, an IPv4
    // externalIP not programmed (as kube-proxy, whose IPv4 proxier does not see the Service),
    // with a warning naming the field.
    let only6 = "
metadata: {name: six, namespace: default}
spec:
  type: NodePort
  clusterIP: 'fd00:96::20'
  ipFamilies: [IPv6]
  externalIPs: [203.0.113.5]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
";
    let t = run_on(&[only6], &[], &n);
    let names: Vec<&String> = t.state.services.keys().collect();
    assert_eq!(names, ["default/six:http/TCP"], "one family: no suffix");
    let six = &t.state.services["default/six:http/TCP"];
    assert_eq!(
        addrs(six),
        [
            ("fd00:96::20".to_owned(), FrontendKind::ClusterIp),
            ("fd00:100::1".to_owned(), FrontendKind::NodePort),
        ]
    );
    assert!(
        t.problems
            .iter()
            .any(|p| p.field == "spec.externalIPs" && p.message.contains("203.0.113.5")),
        "{:?}",
        t.problems
    );

    // IPv6 first (`ipFamilies: [IPv6, IPv4]`): the IPv6 half keeps the name, so a single-stack
    // IPv6 Service that turns dual-stack keeps its identity; the IPv4 half is `… (IPv4)`.
    let six_first = only6.replace(
        "  ipFamilies: [IPv6]\n",
        "  clusterIPs: ['fd00:96::20', 10.96.0.20]\n  ipFamilies: [IPv6, IPv4]\n  ipFamilyPolicy: PreferDualStack\n",
    );
    let t = run_on(&[&six_first], &[], &n);
    let names: Vec<&String> = t.state.services.keys().collect();
    assert_eq!(
        names,
        ["default/six:http/TCP", "default/six:http/TCP (IPv4)"],
        "{:?}",
        t.problems
    );
    assert!(
        t.state.services["default/six:http/TCP"]
            .frontends
            .iter()
            .all(|f| f.addr.is_ipv6())
    );

    // A cluster IP of a family that spec.ipFamilies does not name, and two cluster IPs under
    // SingleStack, are refused with their field.
    for (spec, field) in [
        (
            "clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00:96::10']\n  ipFamilies: [IPv4, IPv4]",
            "spec.clusterIPs[1]",
        ),
        (
            "clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00:96::10']\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: SingleStack",
            "spec.clusterIPs",
        ),
    ] {
        let yaml = format!(
            "metadata: {{name: web, namespace: default}}\nspec:\n  {spec}\n  ports: [{{port: 80}}]\n"
        );
        let problems = service_spec(&svc(&yaml)).expect_err(&yaml);
        assert!(
            problems.iter().any(|p| p.field == field),
            "{yaml}: expected {field}, got {problems:?}"
        );
    }
}
