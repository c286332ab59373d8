//! What xlb's benchmark binaries share: the benchmarks' own kernel object (`object`), removal
//! of everything a run created when it is interrupted (`cleanup`), and summary statistics
//! (`stats`). The binaries: `xlb-bench-datapath`, `xlb-bench-sync`, `xlb-bench-e2e`, run by
//! `cargo xtask bench datapath|sync|e2e`.

pub mod cleanup;
pub mod object;
pub mod stats;
