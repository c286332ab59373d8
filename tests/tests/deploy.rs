//! The shipped Kubernetes manifests (deploy/kubernetes): every document loads into its
//! k8s-openapi type and serializes back to exactly what was written (so a misspelt or misplaced
//! field fails here, not at `kubectl apply`), and the DaemonSet, RBAC and Dockerfile say what
//! the agent needs: the capabilities the kubernetes test runs it with, the flags it knows, the
//! probe paths it serves, read-only access to the three resources it watches.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use serde_json::Value;
use xlb_tests::agent::{DAEMONSET_CAPS, xlb_bin};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// Every YAML document of deploy/kubernetes, as (file, JSON value).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

/// `v` as a `T`, which must serialize back to `v` exactly (unknown fields are dropped by the
/// typed model, so they show up as a difference).
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).expect("serialize");
    if &back != v {
        panic!(
            "{file}: fields lost in the typed round trip (misspelt or misplaced?)\nwritten: {}\ntyped:   {}",
            serde_json::to_string_pretty(v).expect("json"),
            serde_json::to_string_pretty(&back).expect("json")
        );
    }
    t
}

struct Manifests {
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
}

/// The value of `<flag>VALUE` among the container's arguments.
fn args_value(c: &k8s_openapi::api::core::v1::Container, flag: &str) -> Option<String> {
    c.args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|a| a.strip_prefix(flag).map(str::to_owned))
}

fn load() -> Manifests {
    let mut m = Manifests {
        accounts: vec![],
        roles: vec![],
        bindings: vec![],
        daemonsets: vec![],
    };
    for (file, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        let api = v["apiVersion"].as_str().unwrap_or_default().to_owned();
        match (api.as_str(), kind.as_str()) {
            ("v1", "ServiceAccount") => m.accounts.push(typed(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.roles.push(typed(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                m.bindings.push(typed(&file, &v));
            }
            ("apps/v1", "DaemonSet") => m.daemonsets.push(typed(&file, &v)),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
                let listed: BTreeSet<&str> = v["resources"]
                    .as_array()
                    .expect("resources")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let present: BTreeSet<String> = std::fs::read_dir(manifest_dir())
                    .expect("dir")
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
                    .collect();
                assert_eq!(
                    listed,
                    present.iter().map(String::as_str).collect(),
                    "{file}: resources must list every manifest"
                );
            }
            _ => panic!("{file}: unexpected {api} {kind}"),
        }
    }
    m
}

#[test]
fn every_manifest_loads_into_its_kubernetes_type_without_losing_a_field() {
    let m = load();
    assert_eq!(m.accounts.len(), 1);
    assert_eq!(m.roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.daemonsets.len(), 1);
}

#[test]
fn the_round_trip_catches_a_misspelt_field() {
    let (file, mut v) = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .expect("daemonset");
    let c = &mut v["spec"]["template"]["spec"]["containers"][0];
    let probe = c["livenessProbe"].take();
    c["livenesProbe"] = probe;
    let r = std::panic::catch_unwind(|| typed::<DaemonSet>(&file, &v));
    assert!(r.is_err(), "a misspelt field must fail");
}

#[test]
fn rbac_grants_list_and_watch_on_services_endpointslices_and_nodes_only() {
    let m = load();
    let role = &m.roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        assert_eq!(
            verbs,
            ["list", "watch"].map(String::from).into(),
            "read-only access"
        );
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in &groups {
            for r in rule.resources.as_deref().unwrap_or_default() {
                granted.insert(format!("{g}/{r}"));
            }
        }
    }
    assert_eq!(
        granted,
        ["/services", "/nodes", "discovery.k8s.io/endpointslices"]
            .map(String::from)
            .into()
    );
    let sa = &m.accounts[0];
    let b = &m.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subject = &b.subjects.as_deref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    let pod = m.daemonsets[0]
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .clone();
    assert_eq!(
        pod.expect("pod spec").service_account_name,
        sa.metadata.name
    );
}

#[test]
fn daemonset_runs_the_agent_as_a_host_network_pod_with_only_the_capabilities_it_needs() {
    let m = load();
    let ds = &m.daemonsets[0];
    let spec = ds.spec.as_ref().expect("spec");
    let labels = spec.selector.match_labels.clone().expect("selector");
    let tpl_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    assert!(
        labels
            .iter()
            .all(|(k, v)| tpl_labels.as_ref().and_then(|t| t.get(k)) == Some(v)),
        "the selector matches the template"
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];

    // Capabilities: exactly those the kubernetes test runs the agent with.
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let names = |n: u32| match n {
        12 => "NET_ADMIN",
        38 => "PERFMON",
        39 => "BPF",
        _ => "?",
    };
    let added: BTreeSet<String> = caps.add.clone().unwrap_or_default().into_iter().collect();
    let tested: BTreeSet<String> = DAEMONSET_CAPS
        .iter()
        .map(|c| names(*c).to_owned())
        .collect();
    assert_eq!(added, tested);

    // NODE_NAME from the downward API.
    let env = c.env.as_deref().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // The host path behind the container's mount at `path`.
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host_path = |path: &str| -> String {
        let mount = mounts
            .iter()
            .find(|v| v.mount_path == path)
            .unwrap_or_else(|| panic!("no mount at {path}"));
        let vol = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} not declared", mount.name));
        vol.host_path.as_ref().expect("hostPath").path.clone()
    };
    // bpffs from the host, so pins outlive the pod.
    assert_eq!(host_path("/sys/fs/bpf"), "/sys/fs/bpf");
    // Socket-level load balancing attaches to the host's cgroup v2 root, not the pod's own.
    let cgroup = args_value(c, "--cgroup=").expect("--cgroup");
    assert_eq!(host_path(&cgroup), "/sys/fs/cgroup");
    for m in mounts {
        assert!(
            volumes.iter().any(|v| v.name == m.name),
            "volume {} is declared",
            m.name
        );
    }

    // Probes on the health port, on paths the agent serves.
    let args = c.args.clone().unwrap_or_default();
    let healthz = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-addr="))
        .expect("--healthz-addr");
    let port: i32 = healthz
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port number");
    for (probe, path) in [
        (&c.liveness_probe, "/livez"),
        (&c.readiness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(port));
    }

    // Every flag is one `xlb agent` knows.
    assert_eq!(args.first().map(String::as_str), Some("agent"));
    let help = std::process::Command::new(xlb_bin())
        .args(["agent", "--help"])
        .output()
        .expect("xlb agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for a in &args[1..] {
        let flag = a.split('=').next().expect("flag");
        let known = [" ", "\n", ","]
            .iter()
            .any(|end| help.contains(&format!("{flag}{end}")));
        assert!(
            flag.starts_with("--") && known,
            "{flag}: not an `xlb agent` flag"
        );
    }
}

#[test]
fn dockerfile_builds_the_binary_the_daemonset_runs() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    // The build goes through the project's own set-up and builds the `xlb` binary.
    assert!(text.contains("cargo xtask setup --toolchain-only"));
    assert!(text.contains("-p lb-userspace --bin xlb"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/xlb\"]"));
    let ds = &load().daemonsets[0];
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    // The DaemonSet passes arguments only: the image's entrypoint is the binary.
    assert!(pod.containers[0].command.is_none());
}

/// A YAML file of deploy/kubernetes as JSON.
fn yaml_file(rel: &str) -> Value {
    let text = std::fs::read_to_string(manifest_dir().join(rel)).expect(rel);
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn kustomization_holds_every_value_to_edit_and_the_daemonset_reads_them() {
    let text = std::fs::read_to_string(manifest_dir().join("kustomization.yaml")).expect("read");
    let k = yaml_file("kustomization.yaml");
    // The header counts the EDIT markers; the manifests themselves have none left.
    let marks = text.matches("# EDIT").count();
    assert_eq!(marks, 4, "kustomization.yaml");
    assert!(text.contains("marked EDIT (four places)"));
    for f in ["daemonset.yaml", "rbac.yaml", "serviceaccount.yaml"] {
        let t = std::fs::read_to_string(manifest_dir().join(f)).expect("read");
        assert!(
            !t.contains("# EDIT"),
            "{f}: values to edit belong in kustomization.yaml"
        );
    }
    let ds = &load().daemonsets[0];
    let c = &ds
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    // The image transformer names the DaemonSet's image.
    let image = c.image.as_deref().expect("image");
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    assert_eq!(k["images"][0]["name"], repo);
    assert!(k["images"][0]["newTag"].is_string());
    // The generated ConfigMap reaches the container, and every key is an environment variable
    // the agent reads (or the API server address the Kubernetes client reads).
    let generator = &k["configMapGenerator"][0];
    let from = c.env_from.as_deref().unwrap_or_default();
    assert!(
        from.iter()
            .any(|e| e.config_map_ref.as_ref().map(|r| r.name.as_str())
                == generator["name"].as_str()),
        "the DaemonSet does not read {}",
        generator["name"]
    );
    let help = std::process::Command::new(xlb_bin())
        .args(["agent", "--help"])
        .output()
        .expect("xlb agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let mut keys = BTreeSet::new();
    for lit in generator["literals"].as_array().expect("literals") {
        let (key, value) = lit
            .as_str()
            .expect("literal")
            .split_once('=')
            .expect("KEY=VALUE");
        assert!(!value.is_empty(), "{key} is empty");
        assert!(
            key.starts_with("KUBERNETES_SERVICE_") || help.contains(&format!("[env: {key}=")),
            "{key}: not an environment variable of `xlb agent`"
        );
        keys.insert(key.to_owned());
    }
    for key in [
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "XLB_DEVICES",
        "XLB_POD_DEVICES",
    ] {
        assert!(keys.contains(key), "{key} missing from the ConfigMap");
    }
}

#[test]
fn the_podmonitor_scrapes_the_metrics_port_the_agent_serves() {
    let pm = yaml_file("monitoring/podmonitor.yaml");
    assert_eq!(pm["kind"], "PodMonitor");
    let ds = &load().daemonsets[0];
    let spec = ds.spec.as_ref().expect("spec");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            pod_labels.get(k).map(String::as_str),
            v.as_str(),
            "selector {k}"
        );
    }
    let c = &spec.template.spec.as_ref().expect("pod").containers[0];
    let port_name = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port");
    let port = c
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some(port_name))
        .unwrap_or_else(|| panic!("no container port named {port_name}"));
    let addr = args_value(c, "--metrics-addr=").expect("--metrics-addr");
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    assert_eq!(i32::from(addr.port()), port.container_port);
    assert!(!addr.ip().is_loopback(), "Prometheus cannot reach {addr}");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    let k = yaml_file("monitoring/kustomization.yaml");
    assert_eq!(k["resources"][0], "podmonitor.yaml");
    let file = k["configMapGenerator"][0]["files"][0]
        .as_str()
        .expect("file");
    let (_, path) = file.split_once('=').expect("KEY=FILE");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir().join("monitoring").join(path)).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}
