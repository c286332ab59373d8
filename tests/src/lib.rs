//! Privileged test support for xlb: network namespaces, topologies, real traffic and the real
//! agent binary. Used by the integration tests in `tests/tests/`, `cargo xtask demo` and the
//! end-to-end benchmarks.

pub mod agent;
pub mod datapath;
pub mod fakeapi;
pub mod files;
pub mod fixture;
pub mod fuzz;
pub mod kubeproxy;
pub mod manifests;
pub mod model;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod topology;
pub mod traffic;
