//! Sources of desired state. A source only produces validated objects and their changes
//! (`Delta`); translation is shared (`translate::Translator`) and only `sync` writes maps.

pub mod compact;
pub mod files;
pub mod kube;
pub mod locate;
pub mod watch;

use std::fmt;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    problem::{Checked, Problem},
    translate::{self, ServiceSpec, SliceSpec, Translator},
};

/// An input object as parsed.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    /// A service of the compact standalone format (already in model form), with its health
    /// check.
    Compact(Box<translate::Compact>),
}

/// Identity of an object, to keep its last good version and to detect duplicates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Service { namespace: String, name: String },
    Slice { namespace: String, name: String },
    Compact { name: String },
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { namespace, name } => write!(f, "Service {namespace}/{name}"),
            Self::Slice { namespace, name } => write!(f, "EndpointSlice {namespace}/{name}"),
            Self::Compact { name } => write!(f, "service {name}"),
        }
    }
}

impl Object {
    /// The object's identity.
    pub fn key(&self) -> ObjectKey {
        let ns_name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_else(|| "default".to_owned()),
                m.name.clone().unwrap_or_default(),
            )
        };
        match self {
            Self::Service(s) => {
                let (namespace, name) = ns_name(&s.metadata);
                ObjectKey::Service { namespace, name }
            }
            Self::Slice(s) => {
                let (namespace, name) = ns_name(&s.metadata);
                ObjectKey::Slice { namespace, name }
            }
            Self::Compact(s) => ObjectKey::Compact {
                name: s.service.name.clone(),
            },
        }
    }

    /// Validates the object: its spec and warnings, or its problems.
    pub fn validate(&self) -> Checked<Spec> {
        match self {
            Self::Service(s) => translate::service_spec(s).map(|(s, w)| (Spec::Service(s), w)),
            Self::Slice(s) => translate::slice_spec(s).map(|(s, w)| (Spec::Slice(s), w)),
            Self::Compact(s) => Ok((Spec::Compact((**s).clone()), Vec::new())),
        }
    }
}

/// A validated object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Service(ServiceSpec),
    Slice(SliceSpec),
    Compact(translate::Compact),
}

/// Which source a delta comes from (each keeps its own list of problems).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceId {
    #[default]
    Files,
    Kubernetes,
}

/// What changed in a source since its previous report.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// The reporting source.
    pub source: SourceId,
    /// This node's addresses as the source knows them (Kubernetes: the Node object), when
    /// they changed.
    pub node_ips: Option<Vec<std::net::IpAddr>>,
    /// This node's `topology.kubernetes.io/zone` label when it changed (empty: none).
    pub node_zone: Option<String>,
    /// Whether this node is leaving (deleted, or tainted `ToBeDeletedByClusterAutoscaler`),
    /// when that changed.
    pub node_leaving: Option<bool>,
    /// Objects added or replaced (`Some`) or removed (`None`).
    pub changes: Vec<(ObjectKey, Option<Spec>)>,
    /// Every problem the source has now (already handled: objects skipped or kept).
    pub problems: Vec<Problem>,
    /// When the source noticed the change (for change-to-programmed latency).
    pub noticed: Option<std::time::Instant>,
    /// Where the changed objects are defined (`file:line`; `None`: removed or unknown).
    pub locations: Vec<(ObjectKey, Option<String>)>,
}

impl Delta {
    /// Feeds the changes to a translator.
    pub fn apply_to(&self, t: &mut Translator) {
        for (key, at) in &self.locations {
            t.set_location(key.to_string(), at.clone());
        }
        for (key, spec) in &self.changes {
            match (key, spec) {
                (_, Some(Spec::Service(s))) => t.upsert_service(s.clone()),
                (_, Some(Spec::Slice(s))) => t.upsert_slice(s.clone()),
                (_, Some(Spec::Compact(s))) => t.upsert_compact(s.clone()),
                (ObjectKey::Service { namespace, name }, None) => t.remove_service(namespace, name),
                (ObjectKey::Slice { namespace, name }, None) => t.remove_slice(namespace, name),
                (ObjectKey::Compact { name }, None) => t.remove_compact(name),
            }
        }
    }
}
