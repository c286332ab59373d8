//! Kubernetes objects → desired state. The file source and the API watcher both feed their
//! objects through `spec` (validation) and `translate` (semantics): one code path.

pub mod spec;
pub mod translate;

pub use spec::{ServiceSpec, SliceSpec, service_spec, slice_spec};
pub use translate::{HealthCheck, NodeContext, Origin, Translation, Translator, translate};

#[cfg(test)]
mod tests;
