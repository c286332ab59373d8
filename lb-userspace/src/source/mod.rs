//! Sources of desired state. A source only produces objects; translation to `DesiredState` is
//! shared (`k8s::translate`), and only `sync` writes maps.

pub mod compact;
pub mod files;
pub mod watch;

use std::fmt;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    k8s::{self, NodeContext, Translation},
    model::LbService,
    problem::Problem,
};

/// An input object.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    /// A service of the compact standalone format (already in model form).
    Compact(Box<LbService>),
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
                name: s.name.clone(),
            },
        }
    }
}

/// Everything a source holds right now, validated.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<k8s::ServiceSpec>,
    pub slices: Vec<k8s::SliceSpec>,
    pub compact: Vec<LbService>,
    /// Problems found while loading (already handled: objects skipped or kept).
    pub problems: Vec<Problem>,
    /// The source could not be read at all: keep the previously programmed state.
    pub keep_previous: bool,
}

impl Snapshot {
    /// Adds an object that passed validation.
    pub fn add(&mut self, obj: &Object) {
        match obj {
            Object::Service(s) => {
                if let Ok(spec) = k8s::service_spec(s) {
                    self.services.push(spec);
                }
            }
            Object::Slice(s) => {
                if let Ok(spec) = k8s::slice_spec(s) {
                    self.slices.push(spec);
                }
            }
            Object::Compact(s) => self.compact.push((**s).clone()),
        }
    }

    /// Translates the snapshot for this node. Compact services join the Kubernetes ones;
    /// a frontend claimed twice is reported and kept by the Kubernetes Service.
    pub fn translate(&self, node: &NodeContext) -> Translation {
        let mut t = k8s::translate(&self.services, &self.slices, node);
        let mut taken: std::collections::HashSet<_> = t
            .state
            .services
            .values()
            .flat_map(|s| {
                s.frontends
                    .iter()
                    .map(|f| (f.addr, f.port, f.proto, f.scope))
            })
            .collect();
        for svc in &self.compact {
            let mut svc = svc.clone();
            svc.frontends.retain(|f| {
                let clash = taken.contains(&(f.addr, f.port, f.proto, f.scope));
                if clash {
                    t.problems.push(Problem::field(
                        &format!("service {}", svc.name),
                        "frontends",
                        format!("{f} is already used by another service: not programmed"),
                    ));
                }
                !clash
            });
            if t.state.services.contains_key(&svc.name) {
                t.problems.push(Problem::field(
                    &format!("service {}", svc.name),
                    "name",
                    "already used by a Kubernetes Service port: not programmed",
                ));
                continue;
            }
            if !svc.frontends.is_empty() {
                taken.extend(
                    svc.frontends
                        .iter()
                        .map(|f| (f.addr, f.port, f.proto, f.scope)),
                );
                t.state.services.insert(svc.name.clone(), svc);
            }
        }
        t
    }
}
