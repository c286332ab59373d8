//! What a stage decides for a packet (`Verdict`), and the last steps every translation path
//! shares: sending a translated packet as planned, counting a packet the parser left alone.

use lb_common::{counter, drop_reason};

use crate::{
    ctx::Packet,
    parse::Skip,
    route::{Out, how},
    stats,
};

/// What the hook should do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet to the stack (or the next program) as it is now.
    Pass,
    /// Drop it; the reason was counted.
    Drop,
    /// tc: send it out of this device through `bpf_redirect_neigh`.
    Redirect(u32),
    /// XDP: transmit it back out of the device it came in on.
    Tx,
    /// tc: answer the sender with an ICMP error instead of forwarding (`mtu` 0: time exceeded;
    /// `icmp::PORT_UNREACHABLE`: port unreachable, a Service without endpoints; else
    /// fragmentation needed, next-hop MTU `mtu`). The packet is still untranslated.
    Error { mtu: u16 },
}

/// Sends a translated packet on as planned (a `TOO_BIG` that reaches here is one without DF:
/// the stack fragments it).
#[inline(always)]
pub fn finish<P: Packet>(pkt: &mut P, out: Out) -> Verdict {
    stats::trace(|t| {
        t.out_ifindex = match out.how {
            how::REDIRECT => out.ifindex,
            how::TX => pkt.ifindex(),
            _ => 0,
        }
    });
    match out.how {
        how::REDIRECT => Verdict::Redirect(out.ifindex),
        how::TX => {
            let (mut src, mut dst) = ([0u8; 6], [0u8; 6]);
            src.copy_from_slice(&out.macs[..6]);
            dst.copy_from_slice(&out.macs[6..]);
            if pkt.set_macs(src, dst).is_err() {
                stats::drop_reason(drop_reason::XLATE_ERROR);
                return Verdict::Drop;
            }
            Verdict::Tx
        }
        _ => Verdict::Pass,
    }
}

/// Counts a packet the parser left alone, under why.
#[inline(always)]
pub fn count_skip(skip: Skip) {
    stats::count(match skip {
        Skip::NotIp => counter::NOT_IP,
        Skip::Malformed => counter::MALFORMED,
        Skip::Fragment => counter::FRAGMENT,
        Skip::OtherProto => counter::NOT_SERVICE,
    });
}
