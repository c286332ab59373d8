//! Input objects → desired state. Kubernetes Services and EndpointSlices (from the file source
//! and the API watcher alike) go through `spec` (validation) and `state` (semantics), and so do
//! the compact format's services: one code path for every source.

pub mod spec;
pub mod state;

pub use spec::{Compact, ServiceSpec, SliceSpec, service_spec, slice_spec};
pub use state::{HealthCheck, NodeContext, Origin, Translation, Translator, translate};

#[cfg(test)]
mod tests;
