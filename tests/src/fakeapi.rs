//! A small fake Kubernetes API server for Services, EndpointSlices and Nodes. It speaks enough
//! of the real protocol for kube-rs watchers:
//!
//! - list with label selectors (`k`, `!k`, `k=v`, `k==v`, `k!=v`), field selectors
//!   (`metadata.name`, `metadata.namespace`), paging (`limit` + `continue`) and the list's
//!   resourceVersion;
//! - watch from a resourceVersion, replaying history, with objects that enter or leave a
//!   selector turned into ADDED/DELETED, `allowWatchBookmarks` (a BOOKMARK every
//!   `bookmark_every`), `timeoutSeconds`, and `410 Gone` for a resourceVersion or continue token
//!   older than the last compaction.
//!
//! It serves in-process (`client()`: a `kube::Client` over a tower service, no socket) or over
//! TCP on 127.0.0.1 inside a network namespace, with a kubeconfig for the real agent. `stop` and
//! `start` kill and restart the TCP server, dropping every connection, while the stored objects
//! and history survive, as they would with etcd behind a restarted API server.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// Response body: a stream of frames (a watch never ends on its own).
pub type Body = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// A resource the fake server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Services,
    EndpointSlices,
    Nodes,
}

impl Res {
    fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Service" => Some(Self::Services),
            "EndpointSlice" => Some(Self::EndpointSlices),
            "Node" => Some(Self::Nodes),
            _ => None,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Nodes => "Node",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
    fn namespaced(self) -> bool {
        self != Self::Nodes
    }
}

type Key = (Res, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EvType {
    Added,
    Modified,
    Deleted,
}

struct LogEntry {
    rv: u64,
    res: Res,
    ty: EvType,
    old: Option<Value>,
    new: Value,
}

/// Request counters, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// List calls per resource (every page counts).
    pub lists: HashMap<Res, u64>,
    /// Watch calls per resource.
    pub watches: HashMap<Res, u64>,
    /// BOOKMARK events sent.
    pub bookmarks: u64,
    /// `410 Gone` answers (list, continue or watch).
    pub gone: u64,
    /// Label selectors seen, per resource.
    pub selectors: HashMap<Res, String>,
}

struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<LogEntry>,
    /// A watch or continue token from before this resourceVersion gets 410 Gone.
    compacted: u64,
    stats: Stats,
}

struct Shared {
    state: Mutex<State>,
    /// Latest resourceVersion, for open watches to wake up.
    changed: watch::Sender<u64>,
    /// (generation, gone): a new generation ends every open watch, with a 410 when `gone`.
    end: watch::Sender<(u64, bool)>,
    bookmark_every: Duration,
}

/// The fake API server.
pub struct FakeApi {
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    netns: Option<File>,
    addr: Option<SocketAddr>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn body_of(bytes: Vec<u8>) -> Body {
    let once = futures::stream::once(async move { Ok(Frame::data(Bytes::from(bytes))) });
    StreamBody::new(Box::pin(once))
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(body_of(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn labels_of(v: &Value) -> serde_json::Map<String, Value> {
    v["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// Whether `v` matches a label selector; `Err` for syntax this server does not implement.
fn label_match(sel: &str, v: &Value) -> Result<bool, String> {
    let labels = labels_of(v);
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
            return Err(format!("unsupported selector term {term:?}"));
        }
        let ok = if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else if let Some((k, val)) = term.split_once("!=") {
            get(k.trim()) != Some(val.trim())
        } else if let Some((k, val)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(val.trim())
        } else {
            get(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn field_match(sel: &str, v: &Value) -> Result<bool, String> {
    for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, val) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| format!("unsupported field selector {term:?}"))?;
        let field = match k {
            "metadata.name" => &v["metadata"]["name"],
            "metadata.namespace" => &v["metadata"]["namespace"],
            _ => return Err(format!("unsupported field {k:?}")),
        };
        if field.as_str() != Some(val) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a request asks for.
struct Query {
    res: Res,
    namespace: Option<String>,
    labels: String,
    fields: String,
    watch: bool,
    rv: String,
    limit: Option<usize>,
    cont: Option<String>,
    timeout: Option<u64>,
    bookmarks: bool,
}

impl Query {
    fn matches(&self, v: &Value) -> Result<bool, String> {
        if let Some(ns) = &self.namespace
            && v["metadata"]["namespace"].as_str() != Some(ns)
        {
            return Ok(false);
        }
        Ok(label_match(&self.labels, v)? && field_match(&self.fields, v)?)
    }
}

fn parse(req_path: &str, query: &str) -> Option<Query> {
    let segs: Vec<&str> = req_path.trim_matches('/').split('/').collect();
    let (res, namespace) = match segs.as_slice() {
        ["api", "v1", "services"] => (Res::Services, None),
        ["api", "v1", "namespaces", ns, "services"] => (Res::Services, Some(*ns)),
        ["api", "v1", "nodes"] => (Res::Nodes, None),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => (Res::EndpointSlices, None),
        [
            "apis",
            "discovery.k8s.io",
            "v1",
            "namespaces",
            ns,
            "endpointslices",
        ] => (Res::EndpointSlices, Some(*ns)),
        _ => return None,
    };
    let mut q = Query {
        res,
        namespace: namespace.map(str::to_owned),
        labels: String::new(),
        fields: String::new(),
        watch: false,
        rv: String::new(),
        limit: None,
        cont: None,
        timeout: None,
        bookmarks: false,
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "labelSelector" => q.labels = v.into_owned(),
            "fieldSelector" => q.fields = v.into_owned(),
            "watch" => q.watch = v == "true" || v == "1",
            "resourceVersion" => q.rv = v.into_owned(),
            "limit" => q.limit = v.parse().ok().filter(|n| *n > 0),
            "continue" => q.cont = Some(v.into_owned()).filter(|c| !c.is_empty()),
            "timeoutSeconds" => q.timeout = v.parse().ok(),
            "allowWatchBookmarks" => q.bookmarks = v == "true" || v == "1",
            _ => {}
        }
    }
    Some(q)
}

impl Shared {
    fn handle(self: &Arc<Self>, path: &str, query: &str) -> Response<Body> {
        let Some(q) = parse(path, query) else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(
                    404,
                    "NotFound",
                    &format!("the server could not find {path}"),
                ),
            );
        };
        if q.watch {
            self.watch(q)
        } else {
            self.list(&q)
        }
    }

    fn list(&self, q: &Query) -> Response<Body> {
        let mut st = self.state.lock().expect("state");
        *st.stats.lists.entry(q.res).or_default() += 1;
        st.stats.selectors.insert(q.res, q.labels.clone());
        let (list_rv, offset) = match &q.cont {
            None => (st.rv, 0),
            Some(c) => {
                let parsed = c
                    .split_once('/')
                    .and_then(|(r, o)| Some((r.parse::<u64>().ok()?, o.parse::<usize>().ok()?)));
                match parsed {
                    Some((r, o)) if r >= st.compacted => (r, o),
                    _ => {
                        st.stats.gone += 1;
                        return json_response(
                            StatusCode::GONE,
                            &status(410, "Expired", "The provided continue parameter is too old"),
                        );
                    }
                }
            }
        };
        let mut items = Vec::new();
        for ((res, _, _), v) in &st.objects {
            if *res != q.res {
                continue;
            }
            match q.matches(v) {
                Ok(true) => items.push(v.clone()),
                Ok(false) => {}
                Err(e) => {
                    return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &e));
                }
            }
        }
        let total = items.len();
        let end = q.limit.map_or(total, |l| (offset + l).min(total));
        let page: Vec<Value> = items.into_iter().skip(offset).take(end - offset).collect();
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if end < total {
            meta["continue"] = json!(format!("{list_rv}/{end}"));
            meta["remainingItemCount"] = json!(total - end);
        }
        json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", q.res.kind()), "apiVersion": q.res.api_version(),
                    "metadata": meta, "items": page}),
        )
    }

    /// Events for one watch after `from`, as (rv, type, object) with selector transitions.
    fn events_after(&self, q: &Query, from: u64) -> (Vec<Value>, u64) {
        let st = self.state.lock().expect("state");
        let mut out = Vec::new();
        for e in st.log.iter().filter(|e| e.rv > from && e.res == q.res) {
            let new_m = q.matches(&e.new).unwrap_or(false);
            let old_m = e
                .old
                .as_ref()
                .is_some_and(|o| q.matches(o).unwrap_or(false));
            let ty = match (e.ty, old_m, new_m) {
                (EvType::Deleted, true, _) => "DELETED",
                (EvType::Added, _, true) => "ADDED",
                (EvType::Modified, true, true) => "MODIFIED",
                (EvType::Modified, false, true) => "ADDED",
                (EvType::Modified, true, false) => "DELETED",
                _ => continue,
            };
            out.push(json!({"type": ty, "object": e.new}));
        }
        (out, st.rv)
    }

    fn watch(self: &Arc<Self>, q: Query) -> Response<Body> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        let start = {
            let mut st = self.state.lock().expect("state");
            *st.stats.watches.entry(q.res).or_default() += 1;
            st.stats.selectors.insert(q.res, q.labels.clone());
            let rv = q.rv.parse::<u64>().unwrap_or(0);
            if q.rv.is_empty() || rv == 0 {
                // "Any" version: start with the current objects as ADDED.
                let initial: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((res, _, _), v)| *res == q.res && q.matches(v).unwrap_or(false))
                    .map(|(_, v)| json!({"type": "ADDED", "object": v}))
                    .collect();
                Some((st.rv, initial))
            } else if rv < st.compacted {
                st.stats.gone += 1;
                None
            } else {
                Some((rv, Vec::new()))
            }
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let Some((mut sent, initial)) = start else {
                let ev = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                let _ = tx.send(line(&ev)).await;
                return;
            };
            for ev in &initial {
                if tx.send(line(ev)).await.is_err() {
                    return;
                }
            }
            let mut changed = shared.changed.subscribe();
            let mut end = shared.end.subscribe();
            end.borrow_and_update();
            let deadline =
                tokio::time::Instant::now() + Duration::from_secs(q.timeout.unwrap_or(1800).max(1));
            let mut bookmark = tokio::time::interval(shared.bookmark_every);
            bookmark.tick().await;
            loop {
                changed.borrow_and_update();
                let (events, now) = shared.events_after(&q, sent);
                for ev in &events {
                    if tx.send(line(ev)).await.is_err() {
                        return;
                    }
                }
                sent = now;
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = bookmark.tick(), if q.bookmarks => {
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": q.res.kind(),
                            "apiVersion": q.res.api_version(),
                            "metadata": {"resourceVersion": sent.to_string()}}});
                        if tx.send(line(&bm)).await.is_err() {
                            return;
                        }
                        shared.state.lock().expect("state").stats.bookmarks += 1;
                    }
                    _ = tokio::time::sleep_until(deadline) => return,
                    r = end.changed() => {
                        let gone = r.is_ok() && end.borrow().1;
                        if gone {
                            shared.state.lock().expect("state").stats.gone += 1;
                            let ev = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                            let _ = tx.send(line(&ev)).await;
                        }
                        return;
                    }
                    () = tx.closed() => return,
                }
            }
        });
        let stream = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(
                Box::pin(stream) as Pin<Box<dyn Stream<Item = _> + Send>>
            ))
            .expect("response")
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("json");
    b.push(b'\n');
    Bytes::from(b)
}

impl FakeApi {
    /// An empty server (not listening: use `client()` or `serve_in`).
    pub fn new() -> Self {
        Self::with_bookmarks(Duration::from_secs(1))
    }

    /// An empty server sending bookmarks at this interval.
    pub fn with_bookmarks(bookmark_every: Duration) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rv: 1,
                    objects: BTreeMap::new(),
                    log: Vec::new(),
                    compacted: 0,
                    stats: Stats::default(),
                }),
                changed: watch::channel(1).0,
                end: watch::channel((0, false)).0,
                bookmark_every,
            }),
            rt,
            netns: None,
            addr: None,
            server: None,
        }
    }

    /// A `kube::Client` talking to this server in-process (call from within a tokio runtime).
    pub fn client(&self) -> kube::Client {
        let shared = self.shared.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let shared = shared.clone();
            async move {
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or("").to_owned();
                Ok::<_, Infallible>(shared.handle(&path, &query))
            }
        });
        kube::Client::new(svc, "default")
    }

    /// Listens on 127.0.0.1 (a free port) inside the namespace behind `netns`.
    pub fn serve_in(&mut self, netns: File) -> SocketAddr {
        self.netns = Some(netns);
        self.start();
        self.addr.expect("listening")
    }

    /// (Re)starts listening, on the same port as before if there was one.
    pub fn start(&mut self) {
        let ns = self
            .netns
            .as_ref()
            .expect("serve_in first")
            .try_clone()
            .expect("netns handle");
        let want = self
            .addr
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
        let std_listener = std::thread::spawn(move || {
            crate::netns::enter(&ns);
            // The port may linger briefly after a stop.
            let mut last = None;
            for _ in 0..50 {
                match std::net::TcpListener::bind(want) {
                    Ok(l) => return l,
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("bind {want}: {last:?}");
        })
        .join()
        .expect("bind thread");
        std_listener.set_nonblocking(true).expect("nonblocking");
        self.addr = Some(std_listener.local_addr().expect("addr"));
        let shared = self.shared.clone();
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        self.server = Some(self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let shared = shared.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let query = req.uri().query().unwrap_or("").to_owned();
                                Ok::<_, Infallible>(shared.handle(&path, &query))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    /// Kills the server: stops listening and drops every connection (open watches included).
    /// Stored objects and history stay.
    pub fn stop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
            let _ = self.rt.block_on(h);
        }
    }

    /// Writes a kubeconfig for the TCP server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let addr = self.addr.expect("serve_in first");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
        );
        crate::files::write_atomic(&dir.join("kubeconfig"), &text)
    }

    fn bump(st: &mut State) -> u64 {
        st.rv += 1;
        st.rv
    }

    /// Creates or replaces every object of a (multi-document) YAML text. An unchanged object
    /// keeps its resourceVersion, as with a real API server.
    pub fn apply(&self, yaml: &str) {
        use serde::Deserialize as _;
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let mut v = serde_json::to_value(serde_yaml_ng::Value::deserialize(doc).expect("yaml"))
                .expect("json");
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let res = Res::from_kind(&kind).unwrap_or_else(|| panic!("fake API: kind {kind:?}"));
            let name = v["metadata"]["name"]
                .as_str()
                .expect("metadata.name")
                .to_owned();
            let ns = if res.namespaced() {
                let ns = v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned();
                v["metadata"]["namespace"] = json!(ns);
                ns
            } else {
                String::new()
            };
            let key = (res, ns, name);
            let mut st = self.shared.state.lock().expect("state");
            let old = st.objects.get(&key).cloned();
            if let Some(o) = &old {
                let mut cmp = o.clone();
                cmp["metadata"]["resourceVersion"] = v["metadata"]["resourceVersion"].clone();
                cmp["metadata"]["uid"] = v["metadata"]["uid"].clone();
                if cmp == v {
                    continue;
                }
            }
            let rv = Self::bump(&mut st);
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            let uid = old.as_ref().map_or_else(
                || json!(format!("uid-{rv}")),
                |o| o["metadata"]["uid"].clone(),
            );
            v["metadata"]["uid"] = uid;
            let ty = if old.is_some() {
                EvType::Modified
            } else {
                EvType::Added
            };
            st.objects.insert(key, v.clone());
            st.log.push(LogEntry {
                rv,
                res,
                ty,
                old,
                new: v,
            });
            drop(st);
            self.shared.changed.send_replace(rv);
        }
    }

    /// Deletes an object (`kind` as in YAML); a missing object is ignored.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let res = Res::from_kind(kind).expect("kind");
        let ns = if res.namespaced() { namespace } else { "" };
        let mut st = self.shared.state.lock().expect("state");
        let Some(mut old) = st.objects.remove(&(res, ns.to_owned(), name.to_owned())) else {
            return;
        };
        let rv = Self::bump(&mut st);
        let prev = old.clone();
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(LogEntry {
            rv,
            res,
            ty: EvType::Deleted,
            old: Some(prev),
            new: old,
        });
        drop(st);
        self.shared.changed.send_replace(rv);
    }

    /// Ends every open watch cleanly (as `timeoutSeconds` would): watchers resume from their
    /// last resourceVersion.
    pub fn end_watches(&self) {
        self.shared.end.send_modify(|(g, gone)| {
            *g += 1;
            *gone = false;
        });
    }

    /// Compacts all history and ends every open watch with `410 Gone`: watchers must list
    /// again.
    pub fn expire(&self) {
        {
            let mut st = self.shared.state.lock().expect("state");
            st.compacted = st.rv + 1;
            st.log.clear();
        }
        self.shared.end.send_modify(|(g, gone)| {
            *g += 1;
            *gone = true;
        });
    }

    /// Request counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.state.lock().expect("state").stats.clone()
    }

    /// Objects stored of one kind.
    pub fn count(&self, kind: &str) -> usize {
        let res = Res::from_kind(kind).expect("kind");
        let st = self.shared.state.lock().expect("state");
        st.objects.keys().filter(|k| k.0 == res).count()
    }
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let v = json!({"metadata": {"name": "a", "namespace": "x", "labels": {"k": "v"}}});
        assert_eq!(label_match("k", &v), Ok(true));
        assert_eq!(label_match("!k", &v), Ok(false));
        assert_eq!(label_match("k=v,!other", &v), Ok(true));
        assert_eq!(label_match("k!=v", &v), Ok(false));
        assert_eq!(label_match("k==w", &v), Ok(false));
        assert!(label_match("k in (v)", &v).is_err());
        assert_eq!(field_match("metadata.name=a", &v), Ok(true));
        assert_eq!(field_match("metadata.namespace=y", &v), Ok(false));
    }
}
