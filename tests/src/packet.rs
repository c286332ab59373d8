//! Crafted packets for BPF_PROG_TEST_RUN fixtures and a parser that checks them, including
//! full checksum recomputation (not the incremental arithmetic under test).

use std::net::Ipv4Addr;

use lb_common::csum;

/// TCP flag bits.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

const ETH: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> Vec<u8> {
    let total = (20 + l4_len) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = !csum::fold(csum::sum_be(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    csum::sum_be(&p, 0)
}

/// An Ethernet/IPv4/TCP packet with valid checksums (sequence number 1000, no ACK number).
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_seq(src, dst, tcp_flags, 1000, 0, payload)
}

/// An Ethernet/IPv4/TCP packet with valid checksums, sequence and acknowledgment numbers.
pub fn tcp_seq(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = tcp_flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    let c = !csum::fold(csum::sum_be(&t, pseudo(src.0, dst.0, 6, t.len())));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = ETH.to_vec();
    p.extend(ipv4_header(src.0, dst.0, 6, t.len()));
    p.extend(t);
    p
}

/// An Ethernet/IPv4/UDP packet; `with_csum: false` leaves the UDP checksum 0 ("none").
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8], with_csum: bool) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.1.to_be_bytes());
    u[2..4].copy_from_slice(&dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(payload);
    if with_csum {
        let mut c = !csum::fold(csum::sum_be(&u, pseudo(src.0, dst.0, 17, len)));
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = ETH.to_vec();
    p.extend(ipv4_header(src.0, dst.0, 17, len));
    p.extend(u);
    p
}

/// What a packet says, and whether its checksums are right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub ip_csum_ok: bool,
    /// L4 checksum verifies (or is absent: UDP 0).
    pub l4_csum_ok: bool,
    /// The raw UDP checksum field (0 = none).
    pub udp_csum: Option<u16>,
}

/// Parses an Ethernet/IPv4/TCP-or-UDP packet and recomputes every checksum.
pub fn parse(p: &[u8]) -> Parsed {
    let ip = &p[14..34];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &p[14 + ihl..14 + total];
    let ip_csum_ok = csum::fold(csum::sum_be(&p[14..14 + ihl], 0)) == 0xffff;
    let sum = csum::fold(csum::sum_be(l4, pseudo(src, dst, proto, l4.len())));
    let udp_csum = (proto == 17).then(|| u16::from_be_bytes([l4[6], l4[7]]));
    let l4_csum_ok = udp_csum == Some(0) || sum == 0xffff;
    Parsed {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        proto,
        ip_csum_ok,
        l4_csum_ok,
        udp_csum,
    }
}

/// An ICMP error (`icmp_type`/`code`) from `src` to `dst` quoting the first 28 bytes (IPv4
/// header + 8 bytes of L4) of `quoted` (an Ethernet frame as built above).
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    if icmp_type == 3 && code == 4 {
        icmp[6..8].copy_from_slice(&1400u16.to_be_bytes()); // next-hop MTU
    }
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let c = !csum::fold(csum::sum_be(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = ETH.to_vec();
    p.extend(ipv4_header(src, dst, 1, icmp.len()));
    p.extend(icmp);
    p
}

/// An ICMP error as seen by its receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedIcmp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub icmp_type: u8,
    pub code: u8,
    pub ip_csum_ok: bool,
    pub icmp_csum_ok: bool,
    pub inner_csum_ok: bool,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
    pub inner_sport: u16,
    pub inner_dport: u16,
}

/// Parses an ICMP error built by `icmp_error` (after translation) and checks its checksums.
pub fn parse_icmp(p: &[u8]) -> ParsedIcmp {
    let ip = &p[14..34];
    let icmp = &p[34..];
    let inner = &icmp[8..28];
    let l4 = &icmp[28..36];
    ParsedIcmp {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        icmp_type: icmp[0],
        code: icmp[1],
        ip_csum_ok: csum::fold(csum::sum_be(ip, 0)) == 0xffff,
        icmp_csum_ok: csum::fold(csum::sum_be(icmp, 0)) == 0xffff,
        inner_csum_ok: csum::fold(csum::sum_be(inner, 0)) == 0xffff,
        inner_src: Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
        inner_dst: Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
        inner_sport: u16::from_be_bytes([l4[0], l4[1]]),
        inner_dport: u16::from_be_bytes([l4[2], l4[3]]),
    }
}

/// Sets the IPv4 TTL of a frame (checksum fixed), or an IPv6 frame's hop limit (no checksum
/// covers it).
pub fn with_ttl(mut p: Vec<u8>, ttl: u8) -> Vec<u8> {
    if p[12..14] == [0x86, 0xdd] {
        p[21] = ttl;
        return p;
    }
    p[22] = ttl;
    p[24..26].copy_from_slice(&[0, 0]);
    let c = !csum::fold(csum::sum_be(&p[14..34], 0));
    p[24..26].copy_from_slice(&c.to_be_bytes());
    p
}

/// The IPv4 TTL of a frame.
pub fn ttl(p: &[u8]) -> u8 {
    p[22]
}

/// Splits an IPv4 frame (20-byte header) into fragments carrying at most `chunk` bytes of
/// payload each (a multiple of 8), as a sender does; `id` is their identification.
pub fn fragment(p: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    assert!(chunk.is_multiple_of(8) && p[14] == 0x45);
    let payload = &p[34..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let mut f = p[..34].to_vec();
        f[16..18].copy_from_slice(&((20 + end - off) as u16).to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        let mf = if end < payload.len() { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&(mf | (off / 8) as u16).to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !csum::fold(csum::sum_be(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&payload[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// Reassembles fragments (in any order) into one frame, as a receiver does; checks that every
/// fragment's IPv4 checksum verifies and that all carry the same addresses.
pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut first = None;
    for f in frags {
        assert_eq!(
            csum::fold(csum::sum_be(&f[14..34], 0)),
            0xffff,
            "fragment IPv4 checksum"
        );
        let off = usize::from(u16::from_be_bytes([f[20], f[21]]) & 0x1fff) * 8;
        let body = &f[34..];
        if payload.len() < off + body.len() {
            payload.resize(off + body.len(), 0);
        }
        payload[off..off + body.len()].copy_from_slice(body);
        if off == 0 {
            first = Some(f.clone());
        }
        let a = first.as_ref().map_or(&f[26..34], |x| &x[26..34]);
        assert_eq!(&f[26..34], a, "fragments with different addresses");
    }
    let mut p = first.expect("no first fragment")[..34].to_vec();
    p[16..18].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[20..22].copy_from_slice(&[0, 0]);
    p[24..26].copy_from_slice(&[0, 0]);
    let c = !csum::fold(csum::sum_be(&p[14..34], 0));
    p[24..26].copy_from_slice(&c.to_be_bytes());
    p.extend(payload);
    p
}

/// An SCTP common header (ports, verification tag, a zero CRC32c) and an INIT-like chunk.
pub fn sctp_l4(sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = vec![0u8; 12];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    l4.extend_from_slice(&[
        1, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1,
    ]);
    l4
}

/// An Ethernet/IPv4/SCTP packet: the common header (ports, verification tag, a CRC32c left
/// as is: it does not cover the IP header, and address-only translation keeps it) and an
/// INIT-like chunk.
pub fn sctp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let l4 = sctp_l4(src.1, dst.1);
    let mut p = ETH.to_vec();
    p.extend(ipv4_header(src.0, dst.0, 132, l4.len()));
    p.extend(l4);
    p
}

/// The addresses and ports of a frame (any L4 with ports): (src, sport, dst, dport).
pub fn parse_addrs(p: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let l4 = 14 + usize::from(p[14] & 0x0f) * 4;
    (
        Ipv4Addr::new(p[26], p[27], p[28], p[29]),
        u16::from_be_bytes([p[l4], p[l4 + 1]]),
        Ipv4Addr::new(p[30], p[31], p[32], p[33]),
        u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]),
    )
}
