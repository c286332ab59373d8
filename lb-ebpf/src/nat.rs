//! Applies a conntrack entry's rewrite to the packet (addresses and ports, both ends). A later
//! fragment has no L4 header: only its addresses are rewritten (the first fragment's checksum
//! covers the whole datagram and was adjusted with it).

use lb_common::{CtValue, ct_flags};

use crate::{
    ctx::{End, Packet, RewriteError},
    family::Family,
    parse::{Flow, frag},
};

/// Rewrites destination and/or source as `ct` says; fields that already match are left alone.
#[inline(always)]
pub fn apply<P: Packet, A: Family>(
    pkt: &mut P,
    flow: &Flow<A>,
    ct: &CtValue<A>,
) -> Result<(), RewriteError> {
    let ports = flow.frag != frag::LATER;
    if ct.flags & ct_flags::XLATE_DST != 0 {
        if ct.nat_daddr != flow.daddr {
            A::set_addr(pkt, flow.l4, End::Dst, &flow.daddr, &ct.nat_daddr)?;
        }
        if ports && ct.nat_dport != flow.dport {
            pkt.set_port(flow.l4, End::Dst, flow.dport, ct.nat_dport)?;
        }
    }
    if ct.flags & ct_flags::XLATE_SRC != 0 {
        if ct.nat_saddr != flow.saddr {
            A::set_addr(pkt, flow.l4, End::Src, &flow.saddr, &ct.nat_saddr)?;
        }
        if ports && ct.nat_sport != flow.sport {
            pkt.set_port(flow.l4, End::Src, flow.sport, ct.nat_sport)?;
        }
    }
    Ok(())
}
