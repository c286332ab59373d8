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

/// An IPv6 address as the packet carries it (network order).
pub type Ipv6 = [u8; 16];

/// An address family's address as map keys and values hold it (packet bytes). The map types
/// are generic over it (`ServiceKey<Ipv6>` is the key of `xlb_services6`); the IPv4 ones are
/// the default.
pub trait Address: Copy + PartialEq + Eq + core::fmt::Debug + 'static {
    /// The unspecified address.
    const ZERO: Self;
    /// 4 for IPv4, 6 for IPv6.
    const FAMILY: u8;
    /// The address folded to 32 bits (the XOR of its words): what the filters and the flow
    /// hash take, so one function serves both families.
    fn folded(&self) -> Ipv4;
    /// The explicit tail padding of an `Event` of this family (its size, a multiple of 8).
    type EventPad: Copy + PartialEq + Eq + core::fmt::Debug + Default;
    /// 32-bit word `i` (0..4) of the address as memory holds it (IPv4: word 0, then zeros).
    fn word(&self, i: usize) -> u32;
}

impl Address for Ipv4 {
    const ZERO: Self = [0; 4];
    const FAMILY: u8 = 4;
    type EventPad = [u8; 6];
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        if i == 0 { u32::from_ne_bytes(*self) } else { 0 }
    }
    #[inline(always)]
    fn folded(&self) -> Ipv4 {
        *self
    }
}

impl Address for Ipv6 {
    const ZERO: Self = [0; 16];
    const FAMILY: u8 = 6;
    type EventPad = [u8; 2];
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        let i = (i & 3) * 4;
        u32::from_ne_bytes([self[i], self[i + 1], self[i + 2], self[i + 3]])
    }
    #[inline(always)]
    fn folded(&self) -> Ipv4 {
        let a = self;
        [
            a[0] ^ a[4] ^ a[8] ^ a[12],
            a[1] ^ a[5] ^ a[9] ^ a[13],
            a[2] ^ a[6] ^ a[10] ^ a[14],
            a[3] ^ a[7] ^ a[11] ^ a[15],
        ]
    }
}

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
