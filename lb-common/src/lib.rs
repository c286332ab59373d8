//! The only contract between the xlb datapath (`lb-ebpf`) and user space (`lb-userspace`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, no `bool`/`Option`/enum fields,
//! and a compile-time size assertion. Byte order is fixed per field:
//! - IPv4 addresses are `[u8; 4]` in network order (the packet's own bytes), so `bpftool` prints
//!   them as `[10,96,0,10]`;
//! - ports are `u16` in **host** order, so `bpftool` prints `80`, and the datapath converts once.
//!
//! Changing any type here changes [`LAYOUT_VERSION`]; the agent refuses to adopt pinned maps whose
//! version or sizes differ (see `lb-userspace/src/bpf/pins.rs`).
#![no_std]

/// Version of the map layout below. Bump on any change to a key, value, map kind or meaning.
pub const LAYOUT_VERSION: u32 = 5;

/// An IPv4 address as the bytes found in the packet (network order).
pub type Ipv4 = [u8; 4];

mod config;
mod conntrack;
pub mod csum;
mod device;
pub mod filter;
mod hash;
mod layout;
mod names;
mod observe;
mod service;
mod sock;

pub use config::*;
pub use conntrack::*;
pub use device::*;
pub use hash::*;
pub use layout::*;
pub use names::*;
pub use observe::*;
pub use service::*;
pub use sock::*;
