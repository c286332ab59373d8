//! Header parsing: Ethernet → IPv4 or IPv6 (its extension headers walked, up to a bound) →
//! TCP/UDP/SCTP, into one `Flow` built once per packet.
//! A first fragment parses like a whole datagram (its ports are recorded, `frag`); a later
//! fragment has no L4 header and gets its ports from that record (`lb::process`).
//!
//! Every read goes through `ptr_at` (bounds-checked against `data_end`); nothing is read as a Rust
//! enum from packet memory. Truncated or malformed headers are reported, never translated.

use lb_common::{Ipv4, Ipv6, proto};

use crate::ctx::{L3_OFF, L4, Packet, ptr_at};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Bytes of the IPv6 fixed header.
pub const IPV6_HDR: usize = 40;
/// Extension headers walked before the L4 header; a packet with more is not translated.
const IPV6_MAX_EXT: usize = 4;

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// `Flow::frag`: where the packet is in its datagram.
pub mod frag {
    /// A whole datagram.
    pub const NONE: u8 = 0;
    /// The first fragment: it has the L4 header.
    pub const FIRST: u8 = 1;
    /// A later fragment: no L4 header; its ports come from the first's record.
    pub const LATER: u8 = 2;
}

/// The packet's 5-tuple and where its L4 header is (`A`: the address family's address).
#[derive(Clone, Copy)]
pub struct Flow<A = Ipv4> {
    pub saddr: A,
    pub daddr: A,
    /// Host order.
    pub sport: u16,
    /// Host order.
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Where the L4 header is; for a later fragment `proto` is 0 (no header to rewrite).
    pub l4: L4,
    /// IP total length (IPv6: payload and fixed header), host order (for the route's MTU
    /// check).
    pub ip_len: u16,
    /// IPv4 identification or the IPv6 fragment header's, host order (fragments).
    pub ip_id: u32,
    /// `frag::*`.
    pub frag: u8,
    /// TCP: the sequence number after this segment (seq + payload, SYN and FIN counting one).
    pub seq_end: u32,
    /// IPv4 TTL, IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 don't-fragment set; always for IPv6 (routers never fragment it).
    pub df: bool,
}

impl<A> Flow<A> {
    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == proto::TCP
            && self.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }
}

/// The flow an ICMP error is about, as quoted in it (the quoted packet went the other way).
#[derive(Clone, Copy)]
pub struct Quoted<A = Ipv4> {
    pub saddr: A,
    pub daddr: A,
    /// Host order.
    pub sport: u16,
    /// Host order.
    pub dport: u16,
    pub proto: u8,
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem; ICMPv6 also
/// packet too big) and where the fields to translate are.
#[derive(Clone, Copy)]
pub struct IcmpError<A = Ipv4> {
    pub saddr: A,
    pub daddr: A,
    /// Offset of the ICMP checksum.
    pub icmp_csum_off: usize,
    /// Offset of the quoted IP header.
    pub inner_ip_off: usize,
    /// Offset of the quoted L4 header (its ports).
    pub inner_l4_off: usize,
    pub quoted: Quoted<A>,
    /// IP total length (IPv6: with the fixed header), host order.
    pub ip_len: u16,
}

/// An ICMP message's outer header, before its body is parsed (`icmp_error`, `icmp_error6`).
#[derive(Clone, Copy)]
pub struct IcmpHead<A = Ipv4> {
    pub saddr: A,
    pub daddr: A,
    /// Offset of the ICMP header.
    pub off: usize,
    /// IP total length (IPv6: with the fixed header), host order.
    pub ip_len: u16,
}

/// A parsed packet.
pub enum Parsed {
    Flow(Flow),
    /// An IPv6 TCP/UDP/SCTP packet.
    Flow6(Flow<Ipv6>),
    /// ICMP: its body is parsed by the ICMP path (`icmp::translate`), off the common path.
    Icmp(IcmpHead),
    /// An ICMPv6 error (never neighbour discovery or echo, which are not parsed as such).
    Icmp6(IcmpHead<Ipv6>),
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 errors: destination unreachable, packet too big, time exceeded, parameter problem
/// (types 1 to 4; informational messages, neighbour discovery among them, are 128 and up).
const ICMP6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;

/// Why a packet has no `Flow`.
#[derive(Clone, Copy)]
pub enum Skip {
    NotIp,
    Malformed,
    /// A later fragment of a datagram whose first fragment was not seen.
    Fragment,
    /// An L4 protocol the balancer does not translate.
    OtherProto,
}

/// IPv6 extension headers the parser walks past.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: [u8; 4],
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    saddr: Ipv6,
    daddr: Ipv6,
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
pub fn parse<P: Packet>(pkt: &mut P) -> Result<Parsed, Skip> {
    let eth_type: *const u16 = header(pkt, 12).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let eth_type = u16::from_be(unsafe { eth_type.read_unaligned() });
    if eth_type == ETH_P_IPV6 {
        return parse6(pkt);
    }
    if eth_type != ETH_P_IP {
        return Err(Skip::NotIp);
    }
    let ip: *const Ipv4Hdr = header(pkt, L3_OFF).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (ver_ihl, frag_off, l4_proto, saddr, daddr, tot_len, id, ttl) = unsafe {
        (
            (*ip).ver_ihl,
            (*ip).frag_off,
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
            (*ip).tot_len,
            (*ip).id,
            (*ip).ttl,
        )
    };
    let ip_len = u16::from_be(tot_len);
    let ihl = usize::from(ver_ihl & 0x0f);
    if ver_ihl >> 4 != 4 || ihl < 5 {
        return Err(Skip::Malformed);
    }
    let l4_off = L3_OFF + ihl * 4;
    let frag_off = u16::from_be(frag_off);
    let frag = if frag_off & 0x1fff != 0 {
        frag::LATER
    } else if frag_off & 0x2000 != 0 {
        frag::FIRST
    } else {
        frag::NONE
    };
    if frag != frag::LATER && l4_proto == proto::ICMP {
        return Ok(Parsed::Icmp(IcmpHead {
            saddr,
            daddr,
            off: l4_off,
            ip_len,
        }));
    }
    let flow = Flow {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: l4_proto,
        tcp_flags: 0,
        // At most 14 + 15 * 4.
        l4: L4 {
            proto: l4_proto,
            off: l4_off as u8,
        },
        ip_len,
        ip_id: u32::from(u16::from_be(id)),
        frag,
        seq_end: 0,
        ttl,
        df: frag_off & 0x4000 != 0,
    };
    with_l4(pkt, flow, (ihl * 4) as u32).map(Parsed::Flow)
}

/// `flow` (its L4 protocol and offset in `flow.l4`, `l3_hdrs` bytes of IP headers before
/// it) with the ports, TCP flags and sequence end of its L4 header. A later fragment has no
/// L4 header: its ports come from the first fragment's record (`lb::process`), and nothing of
/// L4 is rewritten (`l4.proto` 0).
#[inline(always)]
fn with_l4<P: Packet, A>(pkt: &mut P, mut flow: Flow<A>, l3_hdrs: u32) -> Result<Flow<A>, Skip> {
    if flow.frag == frag::LATER {
        if !matches!(flow.proto, proto::TCP | proto::UDP | proto::SCTP) {
            return Err(Skip::OtherProto);
        }
        flow.l4.proto = 0;
        return Ok(flow);
    }
    let off = usize::from(flow.l4.off);
    let (ports, flags, seq_end) = ports_of(pkt, flow.proto, off, l3_hdrs, flow.ip_len)?;
    flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
    flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
    flow.tcp_flags = flags;
    flow.seq_end = seq_end;
    Ok(flow)
}

/// The ports, TCP flags and TCP sequence end of the L4 header at `l4_off` (`l3_hdrs`: the IP
/// headers' bytes, which `ip_len` counts too).
#[inline(always)]
fn ports_of<P: Packet>(
    pkt: &mut P,
    l4_proto: u8,
    l4_off: usize,
    l3_hdrs: u32,
    ip_len: u16,
) -> Result<([u8; 4], u8, u32), Skip> {
    match l4_proto {
        proto::TCP => {
            // Whole fixed header: ports, seq (4-7), data offset (12), flags (13), checksum.
            let h: *const [u8; 20] = header(pkt, l4_off).ok_or(Skip::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let h = unsafe { &*h };
            let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let hdrs = l3_hdrs + u32::from(h[12] >> 4) * 4;
            let payload = u32::from(ip_len).saturating_sub(hdrs);
            let syn = u32::from(h[13] & tcp_flags::SYN != 0);
            let fin = u32::from(h[13] & tcp_flags::FIN != 0);
            let seq_end = seq.wrapping_add(payload + syn + fin);
            Ok(([h[0], h[1], h[2], h[3]], h[13], seq_end))
        }
        proto::UDP => {
            let h: *const [u8; 8] = header(pkt, l4_off).ok_or(Skip::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let h = unsafe { &*h };
            Ok(([h[0], h[1], h[2], h[3]], 0, 0))
        }
        proto::SCTP => {
            // Common header: ports, verification tag, CRC32c.
            let h: *const [u8; 12] = header(pkt, l4_off).ok_or(Skip::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let h = unsafe { &*h };
            Ok(([h[0], h[1], h[2], h[3]], 0, 0))
        }
        _ => Err(Skip::OtherProto),
    }
}

/// Parses an IPv6 packet: the fixed header, up to `IPV6_MAX_EXT` extension headers, the L4
/// header. A first fragment parses like a whole datagram; a later one has no L4 header (as
/// IPv4's). ICMPv6 errors go to the ICMP path; other ICMPv6 (neighbour discovery among it) is
/// left alone.
#[inline(always)]
fn parse6<P: Packet>(pkt: &mut P) -> Result<Parsed, Skip> {
    let ip: *const Ipv6Hdr = header(pkt, L3_OFF).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (ver, payload_len, mut next, hop_limit, saddr, daddr) = unsafe {
        (
            (*ip).ver_tc_flow[0] >> 4,
            u16::from_be((*ip).payload_len),
            (*ip).next,
            (*ip).hop_limit,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if ver != 6 {
        return Err(Skip::Malformed);
    }
    let mut off = L3_OFF + IPV6_HDR;
    let mut fragment = frag::NONE;
    let mut frag_id = 0;
    let mut i = 0;
    while i < IPV6_MAX_EXT {
        i += 1;
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH => {
                let h: *const [u8; 2] = header(pkt, off).ok_or(Skip::Malformed)?;
                // SAFETY: bounds-checked by `header`.
                let (nh, hlen) = unsafe { ((*h)[0], usize::from((*h)[1])) };
                let len = if next == IPV6_AUTH {
                    (hlen + 2) * 4
                } else {
                    (hlen + 1) * 8
                };
                next = nh;
                len
            }
            _ => break,
        };
        off += len;
        // The L4 offset is kept in a byte (`L4::off`).
        if off > 200 {
            return Err(Skip::OtherProto);
        }
    }
    // A fragment header, after the others (the L4 header follows it in a first fragment).
    if next == IPV6_FRAGMENT {
        // Next header, reserved, offset (13 bits) + M flag, identification.
        let h: *const [u8; 8] = header(pkt, off).ok_or(Skip::Malformed)?;
        // SAFETY: bounds-checked by `header`.
        let h = unsafe { *h };
        let off_m = u16::from_be_bytes([h[2], h[3]]);
        next = h[0];
        frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if off_m & 0xfff8 != 0 {
            fragment = frag::LATER;
        } else if off_m & 1 != 0 {
            fragment = frag::FIRST;
        }
        off += 8;
    }
    let ip_len = payload_len.saturating_add(IPV6_HDR as u16);
    if fragment != frag::LATER && next == proto::ICMPV6 {
        // Type and code: a 1-byte read's bounds check compiles to a form the verifier does not
        // take (`p >= end` instead of `p + 1 > end`).
        let t: *const [u8; 2] = header(pkt, off).ok_or(Skip::Malformed)?;
        // SAFETY: bounds-checked by `header`.
        if !ICMP6_ERRORS.contains(&unsafe { (*t)[0] }) {
            return Err(Skip::OtherProto);
        }
        return Ok(Parsed::Icmp6(IcmpHead {
            saddr,
            daddr,
            off,
            ip_len,
        }));
    }
    let flow = Flow {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: next,
        tcp_flags: 0,
        l4: L4 {
            proto: next,
            off: off as u8,
        },
        ip_len,
        ip_id: frag_id,
        frag: fragment,
        seq_end: 0,
        ttl: hop_limit,
        df: true,
    };
    with_l4(pkt, flow, (off - L3_OFF) as u32).map(Parsed::Flow6)
}

/// Parses an ICMP error and the header it quotes; other ICMP messages are not ours.
#[inline(always)]
pub fn icmp_error<P: Packet>(pkt: &mut P, head: &IcmpHead) -> Result<IcmpError, Skip> {
    let IcmpHead {
        saddr,
        daddr,
        off: icmp_off,
        ip_len,
    } = *head;
    let h: *const [u8; 8] = header(pkt, icmp_off).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let icmp_type = unsafe { (*h)[0] };
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return Err(Skip::OtherProto);
    }
    let inner_ip_off = icmp_off + 8;
    let ip: *const Ipv4Hdr = header(pkt, inner_ip_off).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (ver_ihl, inner_proto, isaddr, idaddr) =
        unsafe { ((*ip).ver_ihl, (*ip).proto, (*ip).saddr, (*ip).daddr) };
    let ihl = usize::from(ver_ihl & 0x0f);
    if ver_ihl >> 4 != 4 || ihl < 5 {
        return Err(Skip::Malformed);
    }
    if !matches!(inner_proto, proto::TCP | proto::UDP | proto::SCTP) {
        return Err(Skip::OtherProto);
    }
    let inner_l4_off = inner_ip_off + ihl * 4;
    // Every ICMP error quotes at least 8 bytes of L4: the ports are there.
    let ports: *const [u8; 4] = header(pkt, inner_l4_off).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let ports = unsafe { *ports };
    Ok(IcmpError {
        saddr,
        daddr,
        icmp_csum_off: icmp_off + 2,
        inner_ip_off,
        inner_l4_off,
        quoted: Quoted {
            saddr: isaddr,
            daddr: idaddr,
            sport: u16::from_be_bytes([ports[0], ports[1]]),
            dport: u16::from_be_bytes([ports[2], ports[3]]),
            proto: inner_proto,
        },
        ip_len,
    })
}

/// Parses an ICMPv6 error (`Parsed::Icmp6`) and the IPv6 header it quotes; a quoted packet
/// with extension headers is not translated.
#[inline(always)]
pub fn icmp_error6<P: Packet>(pkt: &mut P, head: &IcmpHead<Ipv6>) -> Result<IcmpError<Ipv6>, Skip> {
    let icmp_off = head.off;
    let inner_ip_off = icmp_off + 8;
    let ip: *const Ipv6Hdr = header(pkt, inner_ip_off).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (ver, inner_proto, isaddr, idaddr) = unsafe {
        (
            (*ip).ver_tc_flow[0] >> 4,
            (*ip).next,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if ver != 6 {
        return Err(Skip::Malformed);
    }
    if !matches!(inner_proto, proto::TCP | proto::UDP | proto::SCTP) {
        return Err(Skip::OtherProto);
    }
    let inner_l4_off = inner_ip_off + IPV6_HDR;
    let ports: *const [u8; 4] = header(pkt, inner_l4_off).ok_or(Skip::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let ports = unsafe { *ports };
    Ok(IcmpError {
        saddr: head.saddr,
        daddr: head.daddr,
        icmp_csum_off: icmp_off + 2,
        inner_ip_off,
        inner_l4_off,
        quoted: Quoted {
            saddr: isaddr,
            daddr: idaddr,
            sport: u16::from_be_bytes([ports[0], ports[1]]),
            dport: u16::from_be_bytes([ports[2], ports[3]]),
            proto: inner_proto,
        },
        ip_len: head.ip_len,
    })
}
