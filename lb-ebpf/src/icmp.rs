//! ICMP errors, both ways.
//!
//! Errors about translated flows (port/host unreachable, fragmentation needed, time exceeded)
//! are rewritten so that each end sees them about the packet it sent: an error about a
//! client → backend packet reaches the client about the frontend it dialled (found by the
//! flow's reply entry), and an error about a backend's reply (a router between the node and
//! the client finding it too big, say) reaches the backend about the packet it sent (found by
//! the forward entry). That makes connection errors and path-MTU discovery work through the
//! balancer in both directions.
//!
//! Rewriting an address of the quoted IPv4 header together with that header's checksum leaves
//! the ICMP checksum unchanged (a valid header always sums to the same value); only quoted
//! ports need the ICMP checksum adjusted. The quoted L4 checksum is left alone, as receivers
//! ignore it. ICMPv6 errors (packet too big among them) are translated the same way, at tc:
//! the quoted IPv6 header has no checksum, so every quoted rewrite adjusts the ICMPv6
//! checksum, which also covers the outer addresses (its pseudo-header).
//!
//! And errors the datapath sends itself, as a router does (`send_error`, tc only): time
//! exceeded for a packet whose TTL runs out, fragmentation needed for one too big for the next
//! hop with DF set, port unreachable for a Service without endpoints (kube-proxy's reject),
//! rate-limited per CPU; for IPv6 their ICMPv6 counterparts (time exceeded, packet too big,
//! destination unreachable / port unreachable).

use lb_common::{CtKey, CtValue, Ipv4, Ipv6, counter, ct_dir, ct_flags, drop_reason, proto};

use crate::{
    conntrack,
    ctx::{End, ICMP_HDRS, ICMP6_HDRS, L3_OFF, L4, Packet, RewriteError, ptr_at},
    family::Family,
    maps::{self, SCRATCH},
    parse::{self, IcmpError, IcmpHead, Quoted, Skip},
    route, stats,
    verdict::{Verdict, count_skip, finish},
};

/// What the ICMP path needs of an address family.
trait IcmpFamily: Family {
    /// Offsets of the quoted header's source and destination addresses from its start.
    const SRC: usize;
    const DST: usize;
    /// The protocol of the message's ICMP header.
    const PROTO: u8;
    /// Replaces the address at `off` of the quoted header, keeping the message's checksums
    /// valid.
    fn store_quoted<P: Packet>(
        pkt: &mut P,
        e: &IcmpError<Self>,
        off: usize,
        old: &Self,
        new: &Self,
    ) -> Result<(), RewriteError>;
}

impl IcmpFamily for Ipv4 {
    const SRC: usize = 12;
    const DST: usize = 16;
    const PROTO: u8 = proto::ICMP;
    #[inline(always)]
    fn store_quoted<P: Packet>(
        pkt: &mut P,
        e: &IcmpError<Self>,
        off: usize,
        old: &Self,
        new: &Self,
    ) -> Result<(), RewriteError> {
        // With the quoted header's checksum: the ICMP checksum stays valid.
        pkt.store4_fix(off, e.inner_ip_off + 10, *old, *new)
    }
}

impl IcmpFamily for Ipv6 {
    const SRC: usize = 8;
    const DST: usize = 24;
    const PROTO: u8 = proto::ICMPV6;
    #[inline(always)]
    fn store_quoted<P: Packet>(
        pkt: &mut P,
        e: &IcmpError<Self>,
        off: usize,
        old: &Self,
        new: &Self,
    ) -> Result<(), RewriteError> {
        pkt.store16_fix(off, e.icmp_csum_off, old, new)
    }
}

/// The ICMP stage of the pipeline: parses the message's body and translates an error about a
/// tracked flow; anything else passes, counted.
#[inline(always)]
pub fn translate<P: Packet>(pkt: &mut P, head: &IcmpHead) -> Verdict {
    let e = parse::icmp_error(pkt, head);
    parsed(pkt, e)
}

/// `translate` for an ICMPv6 error.
#[inline(always)]
pub fn translate6<P: Packet>(pkt: &mut P, head: &IcmpHead<Ipv6>) -> Verdict {
    let e = parse::icmp_error6(pkt, head);
    parsed(pkt, e)
}

/// Translates a parsed error; a message that did not parse as one passes, counted.
#[inline(always)]
fn parsed<P: Packet, A: IcmpFamily>(pkt: &mut P, e: Result<IcmpError<A>, Skip>) -> Verdict {
    match e {
        Ok(e) => message(pkt, &e),
        Err(skip) => {
            count_skip(skip);
            Verdict::Pass
        }
    }
}

#[inline(always)]
fn message<P: Packet, A: IcmpFamily>(pkt: &mut P, e: &IcmpError<A>) -> Verdict {
    if maps::config().is_none() {
        return Verdict::Pass;
    }
    let now = conntrack::now_secs();
    if let Some(v) = about_client_packet(pkt, e, now) {
        return v;
    }
    if let Some(v) = about_reply(pkt, e, now) {
        return v;
    }
    stats::count(counter::NOT_SERVICE);
    Verdict::Pass
}

/// The outer ICMP header's place, for address rewrites (ICMPv4: no pseudo-header checksum;
/// ICMPv6: its checksum covers the addresses).
#[inline(always)]
fn outer<A: IcmpFamily>(e: &IcmpError<A>) -> L4 {
    L4 {
        proto: A::PROTO,
        // The ICMP header follows an IPv4 header (at most 14 + 60) or an IPv6 one and its
        // extension headers (the parser keeps that under 200).
        off: (e.icmp_csum_off - 2) as u8,
    }
}

/// The conntrack entry in direction `dir` of the flow the quoted packet belongs to (it went
/// the other way), copied to this CPU's scratch with its key: an IPv6 key and entry do not
/// fit on the stack next to the error being translated.
#[inline(always)]
fn tracked<A: IcmpFamily>(q: &Quoted<A>, dir: u8) -> Option<&'static CtValue<A>> {
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else of this packet's programs uses these fields now.
    let s = unsafe { &mut *s };
    let k = A::key_mut(s, 0);
    k.saddr = q.daddr;
    k.daddr = q.saddr;
    k.sport = q.dport;
    k.dport = q.sport;
    k.proto = q.proto;
    k.dir = dir;
    k._pad = [0; 2];
    let k: &CtKey<A> = k;
    let p = A::ct().get_ptr(k).or_else(|| A::ct_new().get_ptr(k))?;
    let v = A::ct_mut(s);
    conntrack::copy_ct(v, p);
    Some(v)
}

/// Counts a translated error and sends it on.
#[inline(always)]
fn done<P: Packet>(
    pkt: &mut P,
    r: Result<(), RewriteError>,
    out: route::Out,
    svc: u32,
    be: u32,
) -> Verdict {
    if r.is_err() {
        stats::drop_reason(drop_reason::XLATE_ERROR);
        return Verdict::Drop;
    }
    stats::count(counter::ICMP_XLATE);
    stats::trace(|t| {
        t.reply = 1;
        t.svc_id = svc;
        t.backend_id = be;
    });
    finish(pkt, out)
}

/// An error about a client → backend packet (it quotes what the backend was sent): to the
/// client, about the frontend it dialled. `None` if no flow of ours (or, at XDP, if tc must
/// deliver it).
#[inline(always)]
fn about_client_packet<P: Packet, A: IcmpFamily>(
    pkt: &mut P,
    e: &IcmpError<A>,
    now: u32,
) -> Option<Verdict> {
    let q = &e.quoted;
    let rev = tracked(q, ct_dir::REPLY)?;
    if rev.expires < now {
        return None;
    }
    // Where the error goes once translated; XDP leaves what it cannot deliver to tc.
    let new_dst = if rev.flags & ct_flags::XLATE_DST != 0 {
        &rev.nat_daddr
    } else {
        &e.daddr
    };
    let new_src = if e.saddr == q.daddr {
        &rev.nat_saddr
    } else {
        &e.saddr
    };
    let out = route::plan(pkt, new_src, new_dst, e.ip_len, None).0?;
    let (src, dst) = (e.inner_ip_off + A::SRC, e.inner_ip_off + A::DST);
    let r = (|| {
        // The quoted destination was the backend: make it the frontend.
        if rev.nat_saddr != q.daddr {
            A::store_quoted(pkt, e, dst, &q.daddr, &rev.nat_saddr)?;
        }
        if rev.nat_sport != q.dport {
            pkt.store2_fix(e.inner_l4_off + 2, e.icmp_csum_off, q.dport, rev.nat_sport)?;
        }
        if rev.flags & ct_flags::XLATE_DST != 0 {
            // The client's source was rewritten (SNAT, hairpin): restore it everywhere.
            if rev.nat_daddr != q.saddr {
                A::store_quoted(pkt, e, src, &q.saddr, &rev.nat_daddr)?;
            }
            if rev.nat_dport != q.sport {
                pkt.store2_fix(e.inner_l4_off, e.icmp_csum_off, q.sport, rev.nat_dport)?;
            }
            if rev.nat_daddr != e.daddr {
                A::set_addr(pkt, outer(e), End::Dst, &e.daddr, &rev.nat_daddr)?;
            }
        }
        // Sent by the backend itself: it comes from the frontend now.
        if e.saddr == q.daddr && rev.nat_saddr != e.saddr {
            A::set_addr(pkt, outer(e), End::Src, &e.saddr, &rev.nat_saddr)?;
        }
        Ok::<(), RewriteError>(())
    })();
    Some(done(pkt, r, out, rev.svc_id, rev.backend_id))
}

/// An error about a backend's reply (it quotes frontend → client, as the reply left this
/// node): to the backend, about the packet it sent, so its path-MTU discovery works.
#[inline(always)]
fn about_reply<P: Packet, A: IcmpFamily>(
    pkt: &mut P,
    e: &IcmpError<A>,
    now: u32,
) -> Option<Verdict> {
    let q = &e.quoted;
    let fwd = tracked(q, ct_dir::FORWARD)?;
    if fwd.expires < now || fwd.flags & ct_flags::XLATE_DST == 0 {
        return None;
    }
    let out = route::plan(pkt, &e.saddr, &fwd.nat_daddr, e.ip_len, None).0?;
    let (src, dst) = (e.inner_ip_off + A::SRC, e.inner_ip_off + A::DST);
    let r = (|| {
        // The quoted source was the frontend: the backend sent it.
        if fwd.nat_daddr != q.saddr {
            A::store_quoted(pkt, e, src, &q.saddr, &fwd.nat_daddr)?;
        }
        if fwd.nat_dport != q.sport {
            pkt.store2_fix(e.inner_l4_off, e.icmp_csum_off, q.sport, fwd.nat_dport)?;
        }
        if fwd.flags & ct_flags::XLATE_SRC != 0 {
            // The backend sent it to the rewritten client (SNAT, hairpin).
            if fwd.nat_saddr != q.daddr {
                A::store_quoted(pkt, e, dst, &q.daddr, &fwd.nat_saddr)?;
            }
            if fwd.nat_sport != q.dport {
                pkt.store2_fix(e.inner_l4_off + 2, e.icmp_csum_off, q.dport, fwd.nat_sport)?;
            }
        }
        if fwd.nat_daddr != e.daddr {
            A::set_addr(pkt, outer(e), End::Dst, &e.daddr, &fwd.nat_daddr)?;
        }
        Ok::<(), RewriteError>(())
    })();
    Some(done(pkt, r, out, fwd.svc_id, fwd.backend_id))
}

/// `send_error`'s "MTU" for a port unreachable (no next hop has an MTU of 1).
pub const PORT_UNREACHABLE: u16 = 1;

/// Errors one CPU may send per second (a flood of TTL-1 packets must not become a flood of
/// errors; the kernel limits its own the same way).
const ERRORS_PER_SEC: u32 = 100;

/// Sends an ICMP error back to the packet's source, from its destination (where it was
/// sending to), in place of the packet (still untranslated): time exceeded if `mtu` is 0,
/// port unreachable if it is `PORT_UNREACHABLE` (the drop was counted as `no_backend`), else
/// fragmentation needed with that next-hop MTU; for an IPv6 packet their ICMPv6 counterparts
/// (`send_error6`). tc only: XDP leaves such packets to tc.
#[inline(always)]
pub fn send_error<P: Packet>(pkt: &mut P, mtu: u16) -> Verdict {
    match mtu {
        0 => stats::drop_reason(drop_reason::TTL_EXCEEDED),
        PORT_UNREACHABLE => {}
        _ => stats::drop_reason(drop_reason::FRAG_NEEDED),
    }
    let Some(v) = ptr_at::<P, [u8; 2]>(pkt, L3_OFF) else {
        return Verdict::Drop;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if unsafe { (*v)[0] } >> 4 == 6 {
        return send_error6(pkt, mtu);
    }
    let Some(ip) = ptr_at::<P, [u8; 20]>(pkt, L3_OFF) else {
        return Verdict::Drop;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = unsafe { *ip };
    // Errors quote the IPv4 header and the L4 header's first bytes: only whole headers
    // without IP options are quoted (an error with options is dropped, counted), and no error
    // answers a later fragment (RFC 1812).
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    if P::DEFERS || ip[0] != 0x45 || later_fragment || !allowed() {
        return Verdict::Drop;
    }
    let from = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let to = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let r = match ip[9] {
        proto::TCP => build::<P, 40>(pkt, from, to, mtu),
        proto::SCTP => build::<P, 32>(pkt, from, to, mtu),
        _ => build::<P, 28>(pkt, from, to, mtu),
    };
    let Some(len) = r else {
        return Verdict::Drop;
    };
    let (from, to) = (from.to_ne_bytes(), to.to_ne_bytes());
    send_built(pkt, &from, &to, len)
}

/// Routes an error built in place of the packet back to its source.
#[inline(always)]
fn send_built<P: Packet, A: Family>(pkt: &mut P, from: &A, to: &A, len: u16) -> Verdict {
    match route::plan(pkt, from, to, len, None).0 {
        Some(out) if out.how == route::how::REDIRECT || out.how == route::how::STACK => {
            stats::count(counter::ICMP_SENT);
            finish(pkt, out)
        }
        _ => Verdict::Drop,
    }
}

/// `send_error` for an IPv6 packet: ICMPv6 time exceeded, port unreachable or packet too big
/// (RFC 4443), quoting the IPv6 header and the L4 header's first bytes.
#[inline(always)]
fn send_error6<P: Packet>(pkt: &mut P, mtu: u16) -> Verdict {
    let Some(ip) = ptr_at::<P, [u8; 40]>(pkt, L3_OFF) else {
        return Verdict::Drop;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let mut from = [0u8; 16];
    let mut to = [0u8; 16];
    from.copy_from_slice(&ip[24..40]);
    to.copy_from_slice(&ip[8..24]);
    let next = ip[6];
    // No error answers a packet from a multicast or unspecified source (RFC 4443 2.4).
    if P::DEFERS || to[0] == 0xff || to == [0; 16] || !allowed() {
        return Verdict::Drop;
    }
    let r = match next {
        proto::TCP => build6::<P, 60>(pkt, &from, &to, mtu),
        proto::SCTP => build6::<P, 52>(pkt, &from, &to, mtu),
        _ => build6::<P, 48>(pkt, &from, &to, mtu),
    };
    let Some(len) = r else {
        return Verdict::Drop;
    };
    send_built(pkt, &from, &to, len)
}

/// Turns the IPv6 packet into the ICMPv6 error quoting its first `Q` bytes from the IPv6
/// header on; returns the error's length with its IPv6 header.
#[inline(always)]
fn build6<P: Packet, const Q: usize>(pkt: &mut P, from: &Ipv6, to: &Ipv6, mtu: u16) -> Option<u16> {
    use lb_common::csum::{fold, sum_be};
    let quoted: *const [u8; Q] = ptr_at(pkt, L3_OFF)?;
    let mut hdr = [0u8; ICMP6_HDRS];
    let icmp_len = (ICMP6_HDRS - 40 + Q) as u16;
    // IPv6: version 6, payload length, next header ICMPv6, hop limit 64.
    hdr[0] = 0x60;
    hdr[4..6].copy_from_slice(&icmp_len.to_be_bytes());
    hdr[6] = proto::ICMPV6;
    hdr[7] = 64;
    hdr[8..24].copy_from_slice(from);
    hdr[24..40].copy_from_slice(to);
    // ICMPv6: time exceeded / hop limit exceeded in transit, destination unreachable / port
    // unreachable, or packet too big with the next-hop MTU.
    if mtu == 0 {
        hdr[40] = 3;
    } else if mtu == PORT_UNREACHABLE {
        hdr[40] = 1;
        hdr[41] = 4;
    } else {
        hdr[40] = 2;
        hdr[44..48].copy_from_slice(&u32::from(mtu).to_be_bytes());
    }
    // The checksum covers the pseudo-header: addresses, upper-layer length, next header.
    let pseudo = sum_be(&hdr[8..40], u32::from(icmp_len) + u32::from(proto::ICMPV6));
    // SAFETY: bounds-checked by `ptr_at`.
    let sum = sum_be(unsafe { &*quoted }, sum_be(&hdr[40..], pseudo));
    hdr[42..44].copy_from_slice(&(!fold(sum)).to_be_bytes());
    pkt.make_icmp_error::<ICMP6_HDRS, Q>(&hdr).ok()?;
    Some(40 + icmp_len)
}

/// True if this CPU may send one more error this second.
#[inline(always)]
fn allowed() -> bool {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let now = conntrack::now_secs();
    // SAFETY: this CPU's slot; the two fields persist across runs on this CPU.
    unsafe {
        if (*s).icmp_sec != now {
            (*s).icmp_sec = now;
            (*s).icmp_sent = 0;
        }
        (*s).icmp_sent += 1;
        (*s).icmp_sent <= ERRORS_PER_SEC
    }
}

/// Turns the packet into the ICMP error quoting its first `Q` bytes from the IPv4 header on;
/// returns the error's IPv4 length.
#[inline(always)]
fn build<P: Packet, const Q: usize>(pkt: &mut P, from: u32, to: u32, mtu: u16) -> Option<u16> {
    let quoted: *const [u8; Q] = ptr_at(pkt, L3_OFF)?;
    let mut hdr = [0u8; ICMP_HDRS];
    let total = (ICMP_HDRS + Q) as u16;
    // IPv4: version 4, IHL 5, TOS internetwork control (as the kernel's own errors), no DF.
    hdr[0] = 0x45;
    hdr[1] = 0xc0;
    hdr[2..4].copy_from_slice(&total.to_be_bytes());
    hdr[8] = 64;
    hdr[9] = proto::ICMP;
    hdr[12..16].copy_from_slice(&from.to_ne_bytes());
    hdr[16..20].copy_from_slice(&to.to_ne_bytes());
    let ip = !lb_common::csum::fold(lb_common::csum::sum_be(&hdr[..20], 0));
    hdr[10..12].copy_from_slice(&ip.to_be_bytes());
    // ICMP: time exceeded in transit, destination unreachable / port unreachable, or
    // destination unreachable / fragmentation needed with the next-hop MTU (RFC 1191).
    if mtu == 0 {
        hdr[20] = 11;
    } else if mtu == PORT_UNREACHABLE {
        hdr[20] = 3;
        hdr[21] = 3;
    } else {
        hdr[20] = 3;
        hdr[21] = 4;
        hdr[26..28].copy_from_slice(&mtu.to_be_bytes());
    }
    // SAFETY: bounds-checked by `ptr_at`.
    let sum = lb_common::csum::sum_be(unsafe { &*quoted }, lb_common::csum::sum_be(&hdr[20..], 0));
    hdr[22..24].copy_from_slice(&(!lb_common::csum::fold(sum)).to_be_bytes());
    pkt.make_icmp_error::<ICMP_HDRS, Q>(&hdr).ok()?;
    Some(total)
}
