//! The address filters (`xlb_fe_filter`, `xlb_be_filter`): one bit per hash of a frontend's
//! (address, port, protocol) or a backend's (address, port, 0). A clear bit proves there is no
//! such key, so a packet skips the hash lookup; a set bit may be a collision (one lookup more).

use super::Ipv4;

/// log2 of the bits per filter: 2^20 bits (128 KiB), ~1% false positives at 10,000 keys.
pub const BITS_LOG2: u32 = 20;
/// u64 words per filter.
pub const WORDS: u32 = 1 << (BITS_LOG2 - 6);
/// log2 of the bits of an address's region (512 bytes, eight cache lines): every key of an
/// address is in its region, the port picking the bit.
pub const REGION_LOG2: u32 = 12;

/// The bit of (`addr` as packet bytes, `port` host order, `proto`; 0 for backends).
///
/// Address-major: the address alone picks a region, so the packets between two addresses
/// read the same few cache lines whatever their (ephemeral) ports, and those lines stay
/// warm from one connection to the next; a filter bit keyed on the port as well lands on
/// a cold line at every new port. A region of eight lines, not one, keeps an address with
/// many keys (a node address with its NodePorts) from filling its bits.
#[inline(always)]
pub fn bit(addr: Ipv4, port: u16, proto: u8) -> u32 {
    let mut a = u32::from_be_bytes(addr).wrapping_mul(0x9e37_79b1);
    a ^= a >> 15;
    a = a.wrapping_mul(0xc2b2_ae3d);
    a ^= a >> 13;
    let region = a >> (32 - (BITS_LOG2 - REGION_LOG2));
    // The port and protocol, mixed with the address hash so that two addresses sharing a
    // region do not collide on every port alike.
    let mut p = (u32::from(port) | (u32::from(proto) << 16)).wrapping_mul(0x85eb_ca77) ^ a;
    p ^= p >> 16;
    p = p.wrapping_mul(0x7feb_352d);
    p ^= p >> 15;
    (region << REGION_LOG2) | (p >> (32 - REGION_LOG2))
}

/// log2 of the slots of the NAT'd-backends map (`xlb_be_nat`): one u64 per word (64 bits)
/// of the backend filter, 128 KiB.
pub const NAT_SLOTS_LOG2: u32 = 14;
/// Slots per map value (one 64-byte value).
pub const NAT_SLOTS_PER_VALUE: u32 = 8;
/// Values of the NAT'd-backends map.
pub const NAT_VALUES: u32 = (1 << NAT_SLOTS_LOG2) / NAT_SLOTS_PER_VALUE;
/// Backend-filter bits per NAT slot.
pub const BITS_PER_NAT_SLOT: u32 = 1 << (BITS_LOG2 - NAT_SLOTS_LOG2);

/// The NAT slot of backend-filter bit `bit`.
#[inline(always)]
pub fn nat_slot(bit: u32) -> u32 {
    bit / BITS_PER_NAT_SLOT
}

/// The NAT slot of backend (`addr` as packet bytes, `port` host order).
#[inline(always)]
pub fn backend_nat_slot(addr: Ipv4, port: u16) -> u32 {
    nat_slot(bit(addr, port, 0))
}

#[cfg(test)]
mod tests {
    use crate::filter;
    use crate::proto;

    #[test]
    fn filter_bits_spread_sequential_addresses_and_ports() {
        // 10,000 ClusterIPs in a row on port 80, and 30,000 pod endpoints (3 ports each): the
        // shape of a real cluster. Collisions must stay near what a random hash gives.
        // A bitmap of the filter's size (no std here).
        let mut seen = [0u64; filter::WORDS as usize];
        let (mut keys, mut set) = (0, 0);
        let mut put = |b: u32| {
            let (w, m) = ((b >> 6) as usize, 1u64 << (b & 63));
            if seen[w] & m == 0 {
                set += 1;
            }
            seen[w] |= m;
        };
        for i in 0..10_000u32 {
            let vip = (u32::from_be_bytes([10, 96, 0, 0]) + i).to_be_bytes();
            put(filter::bit(vip, 80, proto::TCP));
            keys += 1;
            for port in [8080, 8443, 9090] {
                let pod = (u32::from_be_bytes([10, 244, 0, 0]) + i).to_be_bytes();
                put(filter::bit(pod, port, 0));
                keys += 1;
            }
        }
        // A random hash of 40k keys into 2^20 bits leaves ~760 collisions; allow twice that.
        assert!(keys - set < 1_600, "{} collisions", keys - set);
        // An address's keys stay in its region (the lines its packets read).
        let region = |b: u32| b >> filter::REGION_LOG2;
        let pod = [10, 244, 1, 7];
        for port in [1u16, 80, 32768, 45000, 60999, 65535] {
            assert_eq!(
                region(filter::bit(pod, port, 0)),
                region(filter::bit(pod, 8080, 0))
            );
        }
        // A node address with 300 NodePorts fills well under half of its region's bits.
        let mut region_bits = [0u64; 1 << (filter::REGION_LOG2 - 6)];
        let node = [192, 168, 1, 10];
        for port in 30000..30300u16 {
            let b = filter::bit(node, port, proto::TCP) & ((1 << filter::REGION_LOG2) - 1);
            region_bits[(b >> 6) as usize] |= 1 << (b & 63);
        }
        let filled: u32 = region_bits.iter().map(|w| w.count_ones()).sum();
        assert!(
            filled > 270 && filled < 1 << (filter::REGION_LOG2 - 3),
            "{filled} bits"
        );
        // Each field matters.
        let b = filter::bit([10, 96, 0, 1], 80, proto::TCP);
        assert_ne!(b, filter::bit([10, 96, 0, 2], 80, proto::TCP));
        assert_ne!(b, filter::bit([10, 96, 0, 1], 81, proto::TCP));
        assert_ne!(b, filter::bit([10, 96, 0, 1], 80, proto::UDP));
    }
}
