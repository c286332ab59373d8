//! xlb user space: the agent (sources → desired state → map sync), the loader and the CLI.

pub mod agent;
pub mod bpf;
pub mod cli;
pub mod http;
pub mod k8s;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod par;
pub mod problem;
pub mod source;
pub mod status;
pub mod sync;
