//! The benchmarks' kernel object (`lb-ebpf/src/bench.rs`): the tc and XDP floors every
//! datapath figure is read against, and the live-frames generator and sink of the XDP
//! throughput run. The agent's object does not contain them.

use aya::{Ebpf, EbpfError, EbpfLoader};

/// The object, built with the datapath (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XLB_BENCH_OBJECT"));

/// Program names (function names in `lb-ebpf/src/bench.rs`).
pub mod prog {
    /// Parse-and-pass tc program: the tc floor.
    pub const FLOOR: &str = "xlb_floor";
    /// XDP floor: parse, swap MACs, transmit back.
    pub const FLOOR_XDP: &str = "xlb_floor_xdp";
    /// XDP live-frames generator of the throughput run.
    pub const GEN: &str = "xlb_gen";
    /// Drops what returns to the generator's device.
    pub const SINK: &str = "xlb_sink";
}

/// Length of the generator's frame template.
pub const TEMPLATE_LEN: usize = 64;

/// Opens the object (programs not loaded yet), with the generator writing `template` over the
/// head of every frame it sends.
pub fn open(template: [u8; TEMPLATE_LEN]) -> Result<Ebpf, EbpfError> {
    EbpfLoader::new()
        .override_global("GEN_TEMPLATE", &template, true)
        .load(OBJECT)
}
