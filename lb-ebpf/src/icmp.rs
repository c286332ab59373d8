//! ICMP errors about translated flows (port/host unreachable, fragmentation needed, time
//! exceeded): rewritten so the client sees them about the frontend it dialled, which makes
//! connection errors and path-MTU discovery work through the balancer.
//!
//! The quoted packet went client → backend, so the flow is found by its reply entry. Rewriting
//! an address of the quoted IPv4 header together with that header's checksum leaves the ICMP
//! checksum unchanged (a valid header always sums to the same value); only quoted ports need
//! the ICMP checksum adjusted. The quoted L4 checksum is left alone, as receivers ignore it.

use lb_common::{Ipv4, counter, ct_dir, ct_flags, proto};

use crate::{
    conntrack,
    ctx::{End, L4, Packet},
    lb::{self, Verdict},
    maps::{self, CONNTRACK},
    parse::{self, IcmpError, IcmpHead},
    route, stats,
};

/// The ICMP path of the pipeline: parses the message's body and translates an error about a
/// tracked flow; anything else passes, counted. A BPF subprogram (not inlined) returning
/// `Verdict::to_raw`: its parsing and rewriting stay out of the common path's program. The
/// header comes in registers, not as a reference: the caller's stack frame stays small (the
/// verifier bounds the frames of a call chain together, 512 bytes).
#[inline(never)]
pub fn translate<P: Packet>(pkt: &mut P, saddr: Ipv4, daddr: Ipv4, off: u32, ip_len: u32) -> u64 {
    let head = IcmpHead {
        saddr,
        daddr,
        // At most 14 + 60; the mask gives the verifier that bound back (lost in the call).
        off: (off & 0xff) as usize,
        ip_len: ip_len as u16,
    };
    message(pkt, &head).to_raw()
}

#[inline(always)]
fn message<P: Packet>(pkt: &mut P, head: &IcmpHead) -> Verdict {
    let e = match parse::icmp_error(pkt, head) {
        Ok(e) => e,
        Err(skip) => {
            lb::count_skip(skip);
            return Verdict::Pass;
        }
    };
    if maps::config().is_none() {
        return Verdict::Pass;
    }
    if let Some(v) = translate_error(pkt, &e, conntrack::now_secs()) {
        return v;
    }
    stats::count(counter::NOT_SERVICE);
    Verdict::Pass
}

/// Translates an ICMP error about a tracked flow; `None` if it is about no flow of ours (or,
/// at XDP, if tc must deliver it).
#[inline(always)]
fn translate_error<P: Packet>(pkt: &mut P, e: &IcmpError, now: u32) -> Option<Verdict> {
    let q = e.quoted;
    let rkey = lb_common::CtKey {
        saddr: q.daddr,
        daddr: q.saddr,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let rev = *unsafe { CONNTRACK.get(rkey) }?;
    if rev.expires < now {
        return None;
    }
    let outer = L4 {
        proto: proto::ICMP,
        // The outer ICMP header follows an IPv4 header: at most 14 + 60.
        off: (e.icmp_csum_off - 2) as u8,
    };
    // Where the error goes once translated; XDP leaves what it cannot deliver to tc.
    let new_dst = if rev.flags & ct_flags::XLATE_DST != 0 {
        rev.nat_daddr
    } else {
        e.daddr
    };
    let new_src = if e.saddr == q.daddr {
        rev.nat_saddr
    } else {
        e.saddr
    };
    let out = route::plan(pkt, new_src, new_dst, e.ip_len, None).0?;
    let inner_csum = e.inner_ip_off + 10;
    let r = (|| {
        // The quoted destination was the backend: make it the frontend.
        if rev.nat_saddr != q.daddr {
            pkt.store4_fix(e.inner_ip_off + 16, inner_csum, q.daddr, rev.nat_saddr)?;
        }
        if rev.nat_sport != q.dport {
            pkt.store2_fix(e.inner_l4_off + 2, e.icmp_csum_off, q.dport, rev.nat_sport)?;
        }
        if rev.flags & ct_flags::XLATE_DST != 0 {
            // The client's source was rewritten (SNAT, hairpin): restore it everywhere.
            if rev.nat_daddr != q.saddr {
                pkt.store4_fix(e.inner_ip_off + 12, inner_csum, q.saddr, rev.nat_daddr)?;
            }
            if rev.nat_dport != q.sport {
                pkt.store2_fix(e.inner_l4_off, e.icmp_csum_off, q.sport, rev.nat_dport)?;
            }
            if rev.nat_daddr != e.daddr {
                pkt.set_addr(outer, End::Dst, e.daddr, rev.nat_daddr)?;
            }
        }
        // Sent by the backend itself: it comes from the frontend now.
        if e.saddr == q.daddr && rev.nat_saddr != e.saddr {
            pkt.set_addr(outer, End::Src, e.saddr, rev.nat_saddr)?;
        }
        Ok::<(), crate::ctx::RewriteError>(())
    })();
    if r.is_err() {
        stats::drop_reason(lb_common::drop_reason::XLATE_ERROR);
        return Some(Verdict::Drop);
    }
    stats::count(counter::ICMP_XLATE);
    stats::trace(|t| {
        t.reply = 1;
        t.svc_id = rev.svc_id;
        t.backend_id = rev.backend_id;
    });
    Some(lb::finish(pkt, out))
}
