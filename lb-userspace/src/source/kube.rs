//! The Kubernetes source: Services and EndpointSlices from the API server, and this node's
//! addresses from its Node object, as `Delta`s for the same translation the file source feeds.
//!
//! Services and EndpointSlices come from kube-rs watchers: a paged list, then a watch from its
//! resourceVersion with bookmarks, a new list after `410 Gone`, and backoff on errors. The
//! validated specs live in the translator, so no reflector store keeps a second copy of every
//! object. The Node is kept in a reflector store, whose addresses are read on every change.
//!
//! Each object's last fed resourceVersion is remembered, so a re-list (after a 410, a restarted
//! API server or an expired watch) yields only what really changed. Objects missing from the
//! new list become deletions. A re-list that changed nothing yields nothing, and the maps see no
//! write. While the API server is unreachable, nothing is sent, and the datapath keeps the last
//! programmed state. An invalid object is reported, and its last good version stays.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::sync::mpsc::UnboundedSender;

use super::{Delta, Object, ObjectKey, SourceId, Spec};
use crate::{problem::Problem, translate::spec::PROXY_NAME_LABEL};

/// Label the EndpointSlice controller puts on slices of headless Services.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// How the agent reaches the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`).
    InCluster,
}

/// Errors setting up the Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for `access`.
pub async fn client(access: &Access) -> Result<Client, KubeError> {
    let config = match access {
        Access::Kubeconfig(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        Access::InCluster => Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node (its Node object gives the NodePort addresses). Without it, no Node is watched.
    pub node_name: Option<String>,
    /// Only Services labelled `service-proxy-name=NAME`; without it, only unlabelled ones.
    pub proxy_name: Option<String>,
    /// Objects per list page.
    pub page_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_name: None,
            proxy_name: None,
            page_size: 500,
        }
    }
}

/// The label selector kube-proxy uses for Services and EndpointSlices: this proxy's objects,
/// not headless.
pub fn label_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        Some(name) => format!("{PROXY_NAME_LABEL}={name},!{HEADLESS_LABEL}"),
        None => format!("!{PROXY_NAME_LABEL},!{HEADLESS_LABEL}"),
    }
}

/// Resources watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    /// Plural name, as in the API path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Nodes => "nodes",
        }
    }
}

/// One event of any watched resource.
enum Ev {
    Obj(watcher::Event<Object>),
    /// The Node store changed; `settled` once its list is complete.
    Node {
        settled: bool,
    },
}

fn convert<K>(ev: watcher::Event<K>, wrap: fn(K) -> Object) -> watcher::Event<Object> {
    match ev {
        watcher::Event::Apply(k) => watcher::Event::Apply(wrap(k)),
        watcher::Event::Delete(k) => watcher::Event::Delete(wrap(k)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(k) => watcher::Event::InitApply(wrap(k)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn resource_version(o: &Object) -> String {
    let meta = match o {
        Object::Service(s) => &s.metadata,
        Object::Slice(s) => &s.metadata,
        Object::Compact(_) => return String::new(),
    };
    meta.resource_version.clone().unwrap_or_default()
}

/// What one resource's watcher has delivered.
#[derive(Default)]
struct Tracker {
    /// Objects fed on: key → resourceVersion (also for rejected objects, so an unchanged
    /// invalid object is not re-validated).
    known: HashMap<ObjectKey, String>,
    /// During a list: the objects listed so far.
    listing: Option<HashMap<ObjectKey, (String, Object)>>,
    /// Objects rejected now; their last good version (if any) stays in force.
    problems: BTreeMap<ObjectKey, Vec<Problem>>,
    /// The first list completed.
    synced: bool,
}

impl Tracker {
    fn apply(&mut self, key: ObjectKey, rv: String, obj: &Object, out: &mut Changes) {
        if !rv.is_empty() && self.known.get(&key) == Some(&rv) {
            return;
        }
        match obj.validate() {
            Ok((spec, warnings)) => {
                if warnings.is_empty() {
                    self.problems.remove(&key);
                } else {
                    let ws = warnings.into_iter().map(|p| p.at("kubernetes")).collect();
                    self.problems.insert(key.clone(), ws);
                }
                out.push((key.clone(), Some(spec)));
            }
            Err(ps) => {
                let ps = ps.into_iter().map(|p| p.at("kubernetes")).collect();
                self.problems.insert(key.clone(), ps);
            }
        }
        self.known.insert(key, rv);
    }

    fn delete(&mut self, key: &ObjectKey, out: &mut Changes) {
        self.problems.remove(key);
        if self.known.remove(key).is_some() {
            out.push((key.clone(), None));
        }
    }

    /// Handles one event; returns whether a list just completed.
    fn event(&mut self, ev: watcher::Event<Object>, out: &mut Changes) -> bool {
        match ev {
            watcher::Event::Apply(o) => self.apply(o.key(), resource_version(&o), &o, out),
            watcher::Event::Delete(o) => self.delete(&o.key(), out),
            watcher::Event::Init => self.listing = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let listing = self.listing.get_or_insert_with(HashMap::new);
                listing.insert(o.key(), (resource_version(&o), o));
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<ObjectKey> = self
                    .known
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for k in &gone {
                    self.delete(k, out);
                }
                for (k, (rv, o)) in listed {
                    self.apply(k, rv, &o, out);
                }
                self.synced = true;
                return true;
            }
        }
        false
    }
}

type Changes = Vec<(ObjectKey, Option<Spec>)>;

/// Addresses of a Node, both families: InternalIP first, then ExternalIP.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out: Vec<IpAddr> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        for a in addrs.iter().filter(|a| a.type_ == kind) {
            if let Ok(ip) = a.address.parse::<IpAddr>()
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
    }
    out
}

/// Whether `node` is on its way out: deleted (a deletionTimestamp) or tainted by the cluster
/// autoscaler for deletion.
pub fn leaving(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == AUTOSCALER_TAINT))
}

/// The cluster autoscaler's taint on a node it is about to delete.
const AUTOSCALER_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The Node label naming its zone (topology-aware routing).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Quiet time that ends a burst of watch events.
const COALESCE_QUIET: Duration = Duration::from_millis(10);
/// Longest a burst is held back before it is fed on.
const COALESCE_MAX: Duration = Duration::from_millis(200);

/// Watches until `tx` closes. `on_error` is told of every failed list or watch (for metrics);
/// the watchers retry with backoff.
pub async fn run(
    client: Client,
    opts: Options,
    tx: UnboundedSender<Delta>,
    on_error: impl Fn(Resource) + Send,
) {
    let selector = label_selector(opts.proxy_name.as_deref());
    let cfg = watcher::Config::default()
        .labels(&selector)
        .page_size(opts.page_size);
    let services = watcher(Api::<Service>::all(client.clone()), cfg.clone())
        .default_backoff()
        .map(|r| {
            (
                Resource::Services,
                r.map(|e| Ev::Obj(convert(e, |s| Object::Service(Box::new(s))))),
            )
        });
    let slices = watcher(Api::<EndpointSlice>::all(client.clone()), cfg)
        .default_backoff()
        .map(|r| {
            (
                Resource::EndpointSlices,
                r.map(|e| Ev::Obj(convert(e, |s| Object::Slice(Box::new(s))))),
            )
        });
    let mut streams: Vec<BoxStream<'static, (Resource, Result<Ev, watcher::Error>)>> =
        vec![services.boxed(), slices.boxed()];
    let (node_store, node_ref) = match &opts.node_name {
        Some(name) => {
            let (reader, writer) = reflector::store::<Node>();
            let nodes = reflector::reflector(
                writer,
                watcher(
                    Api::<Node>::all(client.clone()),
                    watcher::Config::default().fields(&format!("metadata.name={name}")),
                )
                .default_backoff(),
            )
            .map(|r| {
                let ev = r.map(|e| Ev::Node {
                    settled: !matches!(e, watcher::Event::Init | watcher::Event::InitApply(_)),
                });
                (Resource::Nodes, ev)
            });
            streams.push(nodes.boxed());
            (Some(reader), Some(ObjectRef::<Node>::new(name)))
        }
        None => (None, None),
    };
    let mut events = futures::stream::select_all(streams);

    let mut svc = Tracker::default();
    let mut eps = Tracker::default();
    let mut node_synced = node_store.is_none();
    let mut node_ips: Option<Vec<IpAddr>> = None;
    let mut sent_node_ips: Option<Vec<IpAddr>> = None;
    let mut node_zone: Option<String> = None;
    let mut sent_node_zone: Option<String> = None;
    let mut node_leaving = false;
    let mut sent_node_leaving = false;
    let mut node_seen = false;
    let mut pending: Changes = Vec::new();
    let mut sent_problems: Vec<Problem> = Vec::new();
    let mut initial_sent = false;
    let mut noticed: Option<Instant> = None;
    while let Some(first) = events.next().await {
        // Coalesce a burst: events arriving within COALESCE_QUIET of each other (for at most
        // COALESCE_MAX) go into one delta.
        let batch_start = Instant::now();
        let mut next = Some(first);
        while let Some((resource, item)) = next.take() {
            next = match events.next().now_or_never() {
                Some(n) => n,
                None if batch_start.elapsed() < COALESCE_MAX => {
                    tokio::time::timeout(COALESCE_QUIET, events.next())
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            let ev = match item {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(resource = resource.as_str(), error = %e, "Kubernetes watch failed; retrying (the datapath keeps its state)");
                    on_error(resource);
                    continue;
                }
            };
            noticed.get_or_insert_with(Instant::now);
            match ev {
                Ev::Obj(ev) => {
                    let t = if resource == Resource::Services {
                        &mut svc
                    } else {
                        &mut eps
                    };
                    if t.event(ev, &mut pending) {
                        tracing::debug!(resource = resource.as_str(), "list complete");
                    }
                }
                Ev::Node { settled } => {
                    if let (Some(store), Some(r), true) = (&node_store, &node_ref, settled) {
                        node_synced = true;
                        let node = store.get(r);
                        // KEP-3836: a node being deleted (or gone after it was seen), or
                        // drained by the cluster autoscaler, fails /healthz.
                        node_leaving = match &node {
                            Some(n) => leaving(n),
                            None => node_seen,
                        };
                        node_seen |= node.is_some();
                        let ips = node.as_ref().map(|n| node_addresses(n));
                        node_zone = node.as_ref().map(|n| {
                            n.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(ZONE_LABEL))
                                .cloned()
                                .unwrap_or_default()
                        });
                        if ips.is_none() && node_ips.is_some() || !initial_sent && ips.is_none() {
                            tracing::warn!(node = %r.name, "Node not found: NodePorts need its addresses (or --node-ip)");
                        }
                        node_ips = ips;
                    }
                }
            }
        }
        // Until every resource is listed once, hold everything back: the first sync must see
        // the whole state, or it would remove what a previous agent programmed.
        if !(svc.synced && eps.synced && node_synced) {
            continue;
        }
        let problems: Vec<Problem> = svc
            .problems
            .values()
            .chain(eps.problems.values())
            .flatten()
            .cloned()
            .collect();
        let ips_changed = node_ips.is_some() && node_ips != sent_node_ips;
        let zone_changed = node_zone.is_some() && node_zone != sent_node_zone;
        let leaving_changed = node_leaving != sent_node_leaving;
        if initial_sent
            && pending.is_empty()
            && problems == sent_problems
            && !ips_changed
            && !zone_changed
            && !leaving_changed
        {
            noticed = None;
            continue;
        }
        let delta = Delta {
            source: SourceId::Kubernetes,
            node_ips: ips_changed.then(|| node_ips.clone().unwrap_or_default()),
            node_zone: if zone_changed {
                node_zone.clone()
            } else {
                None
            },
            node_leaving: leaving_changed.then_some(node_leaving),
            changes: std::mem::take(&mut pending),
            problems: problems.clone(),
            noticed: noticed.take(),
            locations: Vec::new(),
        };
        if ips_changed {
            sent_node_ips.clone_from(&node_ips);
        }
        if zone_changed {
            sent_node_zone.clone_from(&node_zone);
        }
        sent_node_leaving = node_leaving;
        sent_problems = problems;
        initial_sent = true;
        if tx.send(delta).is_err() {
            return;
        }
    }
}

/// The kubeconfig path as given, for messages.
pub fn describe(access: &Access) -> String {
    match access {
        Access::Kubeconfig(p) => format!("kubeconfig {}", p.display()),
        Access::InCluster => "in-cluster service account".to_owned(),
    }
}

/// Whether in-cluster configuration is available (running in a pod).
pub fn in_cluster_available() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, rv: &str, port: i32) -> Object {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, resourceVersion: \"{rv}\"}}\nspec: {{clusterIP: 10.96.0.1, ports: [{{port: {port}}}]}}"
        );
        Object::Service(Box::new(serde_yaml_ng::from_str(&yaml).expect("service")))
    }

    #[test]
    fn a_node_is_leaving_when_deleted_or_tainted_by_the_autoscaler() {
        let node = |extra: &str| -> Node {
            serde_yaml_ng::from_str(&format!("metadata: {{name: n1{extra}}}")).expect("node")
        };
        assert!(!leaving(&node("")));
        assert!(leaving(&node(
            ", deletionTimestamp: \"2026-01-01T00:00:00Z\""
        )));
        let tainted = |key: &str| -> Node {
            serde_yaml_ng::from_str(&format!(
                "metadata: {{name: n1}}\nspec: {{taints: [{{key: {key}, effect: NoSchedule}}]}}"
            ))
            .expect("node")
        };
        assert!(leaving(&tainted("ToBeDeletedByClusterAutoscaler")));
        assert!(!leaving(&tainted("node.kubernetes.io/unschedulable")));
    }

    #[test]
    fn relist_yields_only_real_changes_and_deletions() {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        t.event(watcher::Event::Init, &mut out);
        t.event(watcher::Event::InitApply(svc("a", "1", 80)), &mut out);
        t.event(watcher::Event::InitApply(svc("b", "2", 80)), &mut out);
        assert!(out.is_empty(), "nothing before the list completes");
        assert!(t.event(watcher::Event::InitDone, &mut out));
        assert_eq!(out.len(), 2);
        out.clear();
        // The same list again (a 410 re-list): nothing changed, nothing to write.
        t.event(watcher::Event::Init, &mut out);
        t.event(watcher::Event::InitApply(svc("a", "1", 80)), &mut out);
        t.event(watcher::Event::InitApply(svc("b", "2", 80)), &mut out);
        t.event(watcher::Event::InitDone, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // b changed, a disappeared.
        t.event(watcher::Event::Init, &mut out);
        t.event(watcher::Event::InitApply(svc("b", "3", 81)), &mut out);
        t.event(watcher::Event::InitDone, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|(k, v)| v.is_none()
            && *k
                == ObjectKey::Service {
                    namespace: "default".into(),
                    name: "a".into()
                }));
    }

    #[test]
    fn invalid_objects_are_reported_and_keep_the_last_good_version() {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        t.event(watcher::Event::Apply(svc("a", "1", 80)), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        t.event(watcher::Event::Apply(svc("a", "2", 0)), &mut out);
        assert!(out.is_empty(), "no change fed for an invalid version");
        let p = &t.problems[&svc("a", "2", 0).key()];
        assert!(
            p[0].to_string()
                .starts_with("kubernetes: Service default/a"),
            "{p:?}"
        );
        t.event(watcher::Event::Apply(svc("a", "3", 80)), &mut out);
        assert_eq!(out.len(), 1);
        assert!(t.problems.is_empty());
    }

    #[test]
    fn selectors_follow_kube_proxy() {
        assert_eq!(
            label_selector(None),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert_eq!(
            label_selector(Some("xlb")),
            "service.kubernetes.io/service-proxy-name=xlb,!service.kubernetes.io/headless"
        );
    }
}
