//! What both kernel objects share: packet access (`ctx`) and header parsing (`parse`). The
//! product object (`main.rs`: the datapath, its maps and stages) and the benchmarks' object
//! (`bench.rs`: floors, a generator and a sink) are separate binaries of this crate, so the
//! object the agent loads holds no benchmark program. Nothing here names a map.
#![no_std]

pub mod ctx;
pub mod parse;
