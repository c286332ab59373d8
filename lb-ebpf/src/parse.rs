//! Header parsing: Ethernet → IPv4 → TCP/UDP/SCTP, into one `Flow` built once per packet.
//!
//! Every read goes through `ptr_at` (bounds-checked against `data_end`); nothing is read as a Rust
//! enum from packet memory. Truncated or malformed headers are reported, never translated.

use lb_common::{Ipv4, proto};

use crate::ctx::{L3_OFF, L4, Packet, ptr_at};

const ETH_P_IP: u16 = 0x0800;

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// The packet's 5-tuple and where its L4 header is.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    /// Host order.
    pub sport: u16,
    /// Host order.
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    pub l4: L4,
}

impl Flow {
    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == proto::TCP
            && self.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }
}

/// Why a packet has no `Flow`.
pub enum Skip {
    NotIpv4,
    Malformed,
    Fragment,
    /// An L4 protocol the balancer does not translate.
    OtherProto,
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    saddr: Ipv4,
    daddr: Ipv4,
}

/// Returns a pointer to a `T` at `off`, making the headers linear first if the hook needs it.
#[inline(always)]
fn header<P: Packet, T>(pkt: &mut P, off: usize) -> Option<*const T> {
    if let Some(p) = ptr_at::<P, T>(pkt, off) {
        return Some(p as *const T);
    }
    if !pkt.pull((off + core::mem::size_of::<T>()) as u32) {
        return None;
    }
    ptr_at::<P, T>(pkt, off).map(|p| p as *const T)
}

/// Parses the packet's headers. Values are copied out at once: a later `pull` moves the data.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &mut P) -> Result<Flow, Skip> {
    let eth_type: *const u16 = header(pkt, 12).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    if u16::from_be(unsafe { eth_type.read_unaligned() }) != ETH_P_IP {
        return Err(Skip::NotIpv4);
    }
    let ip: *const Ipv4Hdr = header(pkt, L3_OFF).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (ver_ihl, frag_off, l4_proto, saddr, daddr) = unsafe {
        (
            (*ip).ver_ihl,
            (*ip).frag_off,
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let ihl = usize::from(ver_ihl & 0x0f);
    if ver_ihl >> 4 != 4 || ihl < 5 {
        return Err(Skip::Malformed);
    }
    // More-fragments flag or a fragment offset: no usable L4 header in every piece.
    if u16::from_be(frag_off) & 0x3fff != 0 {
        return Err(Skip::Fragment);
    }
    let l4_off = L3_OFF + ihl * 4;
    let l4 = L4 {
        proto: l4_proto,
        off: l4_off,
    };
    let (ports, flags) = match l4_proto {
        proto::TCP => {
            // Whole fixed header: ports, flags (byte 13) and checksum (bytes 16-17).
            let h: *const [u8; 20] = header(pkt, l4_off).ok_or(Skip::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let h = unsafe { &*h };
            ([h[0], h[1], h[2], h[3]], h[13])
        }
        proto::UDP => {
            let h: *const [u8; 8] = header(pkt, l4_off).ok_or(Skip::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let h = unsafe { &*h };
            ([h[0], h[1], h[2], h[3]], 0)
        }
        proto::SCTP => {
            // Common header: ports, verification tag, CRC32c.
            let h: *const [u8; 12] = header(pkt, l4_off).ok_or(Skip::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let h = unsafe { &*h };
            ([h[0], h[1], h[2], h[3]], 0)
        }
        _ => return Err(Skip::OtherProto),
    };
    Ok(Flow {
        saddr,
        daddr,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto: l4_proto,
        tcp_flags: flags,
        l4,
    })
}
