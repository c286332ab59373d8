//! Internet checksum arithmetic shared by the XDP datapath and user-space tests.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Incrementally updates checksum `sum` when a 32-bit field changes from `from` to `to`
/// (RFC 1624: HC' = ~(~HC + ~m + m')). All three values are as loaded from packet memory;
/// the one's-complement sum is byte-order independent.
#[inline(always)]
pub fn replace4(sum: u16, from: u32, to: u32) -> u16 {
    let mut s = u32::from(!sum);
    s += (!from >> 16) & 0xffff;
    s += !from & 0xffff;
    s += to >> 16;
    s += to & 0xffff;
    !fold(s)
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `init`.
pub fn sum_be(data: &[u8], init: u32) -> u32 {
    let mut s = init;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s = s.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        s = (s & 0xffff) + (s >> 16);
    }
    if let [last] = chunks.remainder() {
        s = s.wrapping_add(u32::from(*last) << 8);
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

#[cfg(test)]
mod tests {
    use crate::csum;

    #[test]
    fn incremental_checksum_matches_full_recompute() {
        // An IPv4 header, checksum field zeroed.
        let mut hdr = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 96, 0, 10,
        ];
        let full = |h: &[u8]| !csum::fold(csum::sum_be(h, 0));
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u32::from_ne_bytes([10, 96, 0, 10]);
        let new = u32::from_ne_bytes([10, 244, 1, 7]);
        let stored = u16::from_ne_bytes([hdr[10], hdr[11]]);
        let updated = csum::replace4(stored, old, new);
        hdr[16..20].copy_from_slice(&[10, 244, 1, 7]);
        hdr[10..12].copy_from_slice(&updated.to_ne_bytes());
        // A valid header sums to 0xffff.
        assert_eq!(csum::fold(csum::sum_be(&hdr, 0)), 0xffff);
    }
}
