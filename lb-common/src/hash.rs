//! The flow hash shared by the datapath and user space.

use crate::Ipv4;

/// The flow hash of a 5-tuple: Jenkins' lookup3 final mix (the kernel's `jhash_3words`).
///
/// Used by the datapath for Maglev slots and by user space (`xlb explain`, tests) to predict
/// them. `saddr`/`daddr` are the packet's bytes; ports are host order. Every node computes the
/// same value for the same flow when `seed` is equal.
#[inline(always)]
pub fn flow_hash(saddr: Ipv4, daddr: Ipv4, sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    const JHASH_INITVAL: u32 = 0xdead_beef;
    let init = seed
        .wrapping_add(JHASH_INITVAL)
        .wrapping_add(3 << 2)
        .wrapping_add(u32::from(proto));
    let mut a = u32::from_be_bytes(saddr).wrapping_add(init);
    let mut b = u32::from_be_bytes(daddr).wrapping_add(init);
    let mut c = ((u32::from(sport) << 16) | u32::from(dport)).wrapping_add(init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn flow_hash_depends_on_every_field_and_seed() {
        let base = flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::TCP, 7);
        assert_eq!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 2], [10, 96, 0, 10], 40000, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 11], 40000, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40001, 80, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 81, proto::TCP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::UDP, 7)
        );
        assert_ne!(
            base,
            flow_hash([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, proto::TCP, 8)
        );
    }
}
