//! Crafted IPv6 packets for BPF_PROG_TEST_RUN fixtures and a parser that checks them (the
//! L4 checksum recomputed from scratch over the 128-bit pseudo-header).

use std::net::Ipv6Addr;

use lb_common::csum;

const ETH: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
/// Hop limit of every crafted packet.
pub const HOP_LIMIT: u8 = 64;
/// Hop-by-hop options extension header.
const HOP_BY_HOP: u8 = 0;

fn pseudo(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    csum::sum_be(&p, 0)
}

/// Ethernet + IPv6 header (`ext`: extension header bytes, each starting with its next-header
/// byte; the first one's type in `first`) + `l4`.
fn frame(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, ext: Option<&[u8]>, l4: &[u8]) -> Vec<u8> {
    let ext_len = ext.map_or(0, <[u8]>::len);
    let mut p = ETH.to_vec();
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
    p.push(if ext.is_some() { HOP_BY_HOP } else { proto });
    p.push(HOP_LIMIT);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    if let Some(e) = ext {
        p.extend_from_slice(e);
    }
    p.extend_from_slice(l4);
    p
}

fn tcp_l4(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = tcp_flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    let c = !csum::fold(csum::sum_be(&t, pseudo(src.0, dst.0, 6, t.len())));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An Ethernet/IPv6/TCP packet with a valid checksum (sequence number 1000).
pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(src.0, dst.0, 6, None, &tcp_l4(src, dst, tcp_flags, payload))
}

/// An Ethernet/IPv6/SCTP packet (`packet::sctp_l4`; the CRC32c does not cover the IP header).
pub fn sctp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Vec<u8> {
    frame(
        src.0,
        dst.0,
        132,
        None,
        &crate::packet::sctp_l4(src.1, dst.1),
    )
}

/// `tcp` behind an 8-byte hop-by-hop options header (padding only).
pub fn tcp_hop_by_hop(
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    // Next header TCP, length 0 (8 bytes), a PadN option of 4 bytes.
    let hbh = [6u8, 0, 1, 4, 0, 0, 0, 0];
    frame(
        src.0,
        dst.0,
        6,
        Some(&hbh),
        &tcp_l4(src, dst, tcp_flags, payload),
    )
}

/// An Ethernet/IPv6/UDP packet (its checksum is mandatory in IPv6).
pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.1.to_be_bytes());
    u[2..4].copy_from_slice(&dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let mut c = !csum::fold(csum::sum_be(&u, pseudo(src.0, dst.0, 17, len)));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    frame(src.0, dst.0, 17, None, &u)
}

/// An ICMPv6 neighbour solicitation for `target` (checksum not computed: the datapath must
/// never look at it).
pub fn neighbour_solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    let dst: Ipv6Addr = "ff02::1:ff00:0".parse().expect("solicited-node address");
    frame(src, dst, 58, None, &icmp)
}

/// What an IPv6 packet says, and whether its L4 checksum is right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub hop_limit: u8,
    pub l4_csum_ok: bool,
}

/// Parses an Ethernet/IPv6 packet (with at most one hop-by-hop header) and recomputes its
/// L4 checksum.
pub fn parse(p: &[u8]) -> Parsed {
    assert_eq!(&p[12..14], &[0x86, 0xdd], "not IPv6");
    let ip = &p[14..54];
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let mut next = ip[6];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let mut off = 54;
    if next == HOP_BY_HOP {
        next = p[off];
        off += (usize::from(p[off + 1]) + 1) * 8;
    }
    let l4 = &p[off..54 + payload];
    let sum = csum::fold(csum::sum_be(l4, pseudo(src, dst, next, l4.len())));
    Parsed {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        proto: next,
        hop_limit: ip[7],
        l4_csum_ok: sum == 0xffff,
    }
}
