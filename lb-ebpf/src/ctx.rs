//! Packet access for both hooks: bounds-checked reads, and rewrites that keep checksums right.
//!
//! tc rewrites go through the skb helpers (`bpf_skb_store_bytes`, `bpf_l3/l4_csum_replace` with
//! the pseudo-header flag), which also handle `CHECKSUM_PARTIAL` skbs from local sockets. XDP has
//! no skb: it writes directly and updates checksums incrementally (RFC 1624).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    programs::{TcContext, XdpContext},
};
use lb_common::{Ipv4, Ipv6, csum, hook, proto};

/// Offset of the IPv4 header (no VLAN support: tagged frames pass untouched).
pub const L3_OFF: usize = 14;
pub const IP_CSUM_OFF: usize = L3_OFF + 10;
const IP_SADDR_OFF: usize = L3_OFF + 12;
const IP_DADDR_OFF: usize = L3_OFF + 16;
const IP6_HOP_LIMIT_OFF: usize = L3_OFF + 7;
const IP6_SADDR_OFF: usize = L3_OFF + 8;
const IP6_DADDR_OFF: usize = L3_OFF + 24;

/// Which end of the packet a rewrite touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Rewrite failed (a helper returned an error, or the packet shrank under us).
#[derive(Clone, Copy)]
pub struct RewriteError;

/// A packet at one of the hooks.
#[expect(
    clippy::len_without_is_empty,
    reason = "a packet the programs see always has its headers"
)]
pub trait Packet: Sized {
    /// `hook::*` of this context.
    const HOOK: u8;
    /// The hook may leave a packet it cannot deliver itself untouched for the next one
    /// (XDP → tc on the same device).
    const DEFERS: bool;
    /// The program context, for helpers.
    fn ctx_ptr(&self) -> *mut core::ffi::c_void;
    /// The device the packet arrived on.
    fn ifindex(&self) -> u32;
    /// Sets the Ethernet source and destination (before `XDP_TX`).
    fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) -> Result<(), RewriteError>;
    /// Start of packet data.
    fn data(&self) -> usize;
    /// End of linear packet data.
    fn data_end(&self) -> usize;
    /// Whole packet length in bytes (for byte counters).
    fn len(&self) -> u32;
    /// Makes at least `len` bytes linear if the hook needs that (tc); returns false if impossible.
    fn pull(&mut self, len: u32) -> bool;
    /// Replaces the IPv4 source or destination address, fixing IP and L4 checksums.
    fn set_addr(&mut self, l4: L4, end: End, old: Ipv4, new: Ipv4) -> Result<(), RewriteError>;
    /// Replaces the IPv6 source or destination address, fixing the L4 checksum (IPv6 has no
    /// header checksum).
    fn set_addr6(&mut self, l4: L4, end: End, old: &Ipv6, new: &Ipv6) -> Result<(), RewriteError>;
    /// Replaces the L4 source or destination port (host order), fixing the L4 checksum.
    fn set_port(&mut self, l4: L4, end: End, old: u16, new: u16) -> Result<(), RewriteError>;
    /// Replaces the 4 bytes at `off` (e.g. an address quoted in an ICMP error) and adjusts the
    /// plain 16-bit checksum at `csum_off` that covers them.
    fn store4_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: Ipv4,
        new: Ipv4,
    ) -> Result<(), RewriteError>;
    /// Replaces the 2 bytes at `off` (a port, host order) and adjusts the checksum at
    /// `csum_off` that covers them.
    fn store2_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), RewriteError>;
    /// Replaces the IPv6 address at `off` (one quoted in an ICMPv6 error) and adjusts the
    /// checksum at `csum_off` that covers it.
    fn store16_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: &Ipv6,
        new: &Ipv6,
    ) -> Result<(), RewriteError>;
    /// True for an aggregate (GSO) packet: the stack segments it on the way out.
    fn is_gso(&self) -> bool;
    /// Replaces the packet by `hdr` (new IP and ICMP headers: `ICMP_HDRS` bytes for IPv4,
    /// `ICMP6_HDRS` for IPv6) followed by its own first `Q` bytes from the IP header on (tc
    /// only; XDP leaves errors to tc).
    fn make_icmp_error<const N: usize, const Q: usize>(
        &mut self,
        hdr: &[u8; N],
    ) -> Result<(), RewriteError>;

    /// The IPv4 header's TTL.
    #[inline(always)]
    fn ttl(&self) -> Option<u8> {
        let p: *const u8 = ptr_at(self, L3_OFF + 8)?;
        // SAFETY: bounds-checked by `ptr_at`.
        Some(unsafe { *p })
    }

    /// A big-endian u32 of the packet (e.g. a TCP acknowledgment number).
    #[inline(always)]
    fn load_be32(&self, off: usize) -> Option<u32> {
        let p: *const [u8; 4] = ptr_at(self, off)?;
        // SAFETY: bounds-checked by `ptr_at`.
        Some(u32::from_be_bytes(unsafe { *p }))
    }

    /// Decrements an IPv6 packet's hop limit (the caller checked it is above 1).
    #[inline(always)]
    fn decrement_hop_limit(&mut self) -> Result<(), RewriteError> {
        decrement_hop(self)
    }

    /// Decrements the TTL (the caller checked it is above 1), fixing the IPv4 checksum: a
    /// router's duty, so a routing loop through the balancer dies out.
    #[inline(always)]
    fn decrement_ttl(&mut self) -> Result<(), RewriteError> {
        let Some(ttl) = self.ttl() else {
            return Err(RewriteError);
        };
        let word = ptr_at::<Self, [u8; 2]>(self, L3_OFF + 8).ok_or(RewriteError)?;
        // SAFETY: bounds-checked by `ptr_at`.
        let old = u16::from_ne_bytes(unsafe { *word });
        let new = u16::from_ne_bytes([ttl - 1, (old.to_ne_bytes())[1]]);
        self.store2_fix(
            L3_OFF + 8,
            IP_CSUM_OFF,
            u16::from_be(old),
            u16::from_be(new),
        )
    }
}

/// Decrements an IPv6 packet's hop limit (the caller checked it is above 1; no checksum
/// covers it).
#[inline(always)]
fn decrement_hop<P: Packet>(pkt: &mut P) -> Result<(), RewriteError> {
    let p: *mut u8 = ptr_at(pkt, IP6_HOP_LIMIT_OFF).ok_or(RewriteError)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe { *p = (*p).saturating_sub(1) };
    Ok(())
}

#[inline(always)]
fn addr6_off(end: End) -> usize {
    match end {
        End::Src => IP6_SADDR_OFF,
        End::Dst => IP6_DADDR_OFF,
    }
}

/// The checksum difference of replacing IPv6 address `old` by `new` (tc's csum helpers take
/// it as their `to` with size 0). Read straight from where the addresses are (scratch or a map
/// value: memory the helper may read; copies to the stack would not fit the IPv6 paths'
/// frames).
#[inline(always)]
fn csum_diff6(old: &Ipv6, new: &Ipv6) -> Result<u64, RewriteError> {
    let from = core::ptr::from_ref(old).cast::<u32>().cast_mut();
    let to = core::ptr::from_ref(new).cast::<u32>().cast_mut();
    // SAFETY: two 16-byte buffers the helper only reads, of the sizes given.
    let diff = unsafe { aya_ebpf::helpers::bpf_csum_diff(from, 16, to, 16, 0) };
    if diff < 0 {
        return Err(RewriteError);
    }
    Ok(diff as u64)
}

/// The 32-bit words of an IPv6 address, as the packet holds them.
#[inline(always)]
fn words6(a: Ipv6) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Bytes of the IPv4 and ICMP headers of an ICMP error.
pub const ICMP_HDRS: usize = 28;
/// Bytes of the IPv6 and ICMPv6 headers of an ICMPv6 error.
pub const ICMP6_HDRS: usize = 48;

/// Where the L4 header and its checksum are.
#[derive(Clone, Copy)]
pub struct L4 {
    /// IP protocol.
    pub proto: u8,
    /// Offset of the L4 header (at most 14 + 60): a byte keeps `Flow` small, and so the stack
    /// frame of the common path that holds it (the verifier bounds a call chain's frames).
    pub off: u8,
}

impl L4 {
    /// Offset of the L4 checksum that covers the pseudo-header, if the protocol has one.
    #[inline(always)]
    fn csum_off(self) -> Option<usize> {
        match self.proto {
            proto::TCP => Some(usize::from(self.off) + 16),
            proto::UDP => Some(usize::from(self.off) + 6),
            // ICMPv6's checksum covers the pseudo-header (ICMPv4's does not).
            proto::ICMPV6 => Some(usize::from(self.off) + 2),
            // SCTP's CRC32c does not cover the IP header; ICMP's checksum has no pseudo-header.
            _ => None,
        }
    }

    #[inline(always)]
    fn port_off(self, end: End) -> usize {
        match end {
            End::Src => usize::from(self.off),
            End::Dst => usize::from(self.off) + 2,
        }
    }
}

#[inline(always)]
fn addr_off(end: End) -> usize {
    match end {
        End::Src => IP_SADDR_OFF,
        End::Dst => IP_DADDR_OFF,
    }
}

/// Returns a pointer to a `T` at `off` if the whole `T` lies inside the linear packet data.
#[inline(always)]
pub fn ptr_at<P: Packet, T>(pkt: &P, off: usize) -> Option<*mut T> {
    let start = pkt.data();
    let end = pkt.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// tc (sk_buff) packets.
pub struct TcPacket<const HOOK: u8> {
    pub ctx: TcContext,
}

impl<const H: u8> Packet for TcPacket<H> {
    const HOOK: u8 = H;
    const DEFERS: bool = false;

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx.skb.skb.cast()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }

    #[inline(always)]
    fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) -> Result<(), RewriteError> {
        self.ctx.store(0, &dst, 0).map_err(|_| RewriteError)?;
        self.ctx.store(6, &src, 0).map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.ctx.len()
    }

    #[inline(always)]
    fn pull(&mut self, len: u32) -> bool {
        let want = if len > self.ctx.len() {
            self.ctx.len()
        } else {
            len
        };
        self.ctx.pull_data(want).is_ok()
    }

    #[inline(always)]
    fn set_addr(&mut self, l4: L4, end: End, old: Ipv4, new: Ipv4) -> Result<(), RewriteError> {
        let from = u64::from(u32::from_ne_bytes(old));
        let to = u64::from(u32::from_ne_bytes(new));
        if let Some(off) = l4.csum_off() {
            let mut flags = u64::from(BPF_F_PSEUDO_HDR) | 4;
            if l4.proto == proto::UDP {
                // A zero UDP checksum means "none": keep it so.
                flags |= u64::from(BPF_F_MARK_MANGLED_0);
            }
            self.ctx
                .l4_csum_replace(off, from, to, flags)
                .map_err(|_| RewriteError)?;
        }
        self.ctx
            .l3_csum_replace(IP_CSUM_OFF, from, to, 4)
            .map_err(|_| RewriteError)?;
        self.ctx
            .store(addr_off(end), &new, 0)
            .map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn set_addr6(&mut self, l4: L4, end: End, old: &Ipv6, new: &Ipv6) -> Result<(), RewriteError> {
        if let Some(off) = l4.csum_off() {
            let diff = csum_diff6(old, new)?;
            let mut flags = u64::from(BPF_F_PSEUDO_HDR);
            if l4.proto == proto::UDP {
                flags |= u64::from(BPF_F_MARK_MANGLED_0);
            }
            // Size 0: `to` is the checksum difference itself.
            self.ctx
                .l4_csum_replace(off, 0, diff, flags)
                .map_err(|_| RewriteError)?;
        }
        self.ctx
            .store(addr6_off(end), new, 0)
            .map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn set_port(&mut self, l4: L4, end: End, old: u16, new: u16) -> Result<(), RewriteError> {
        let from = u64::from(old.to_be());
        let to = u64::from(new.to_be());
        if let Some(off) = l4.csum_off() {
            let mut flags = 2;
            if l4.proto == proto::UDP {
                flags |= u64::from(BPF_F_MARK_MANGLED_0);
            }
            self.ctx
                .l4_csum_replace(off, from, to, flags)
                .map_err(|_| RewriteError)?;
        }
        self.ctx
            .store(l4.port_off(end), &new.to_be(), 0)
            .map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn store4_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: Ipv4,
        new: Ipv4,
    ) -> Result<(), RewriteError> {
        let (from, to) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
        // A plain checksum field: the l3 helper adjusts any 16-bit sum at an offset.
        self.ctx
            .l3_csum_replace(csum_off, u64::from(from), u64::from(to), 4)
            .map_err(|_| RewriteError)?;
        self.ctx.store(off, &new, 0).map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn store2_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), RewriteError> {
        self.ctx
            .l3_csum_replace(csum_off, u64::from(old.to_be()), u64::from(new.to_be()), 2)
            .map_err(|_| RewriteError)?;
        self.ctx
            .store(off, &new.to_be(), 0)
            .map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn store16_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: &Ipv6,
        new: &Ipv6,
    ) -> Result<(), RewriteError> {
        let diff = csum_diff6(old, new)?;
        // Size 0: `to` is the checksum difference itself.
        self.ctx
            .l3_csum_replace(csum_off, 0, diff, 0)
            .map_err(|_| RewriteError)?;
        self.ctx.store(off, new, 0).map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { (*self.ctx.skb.skb).gso_size != 0 }
    }

    #[inline(always)]
    fn make_icmp_error<const N: usize, const Q: usize>(
        &mut self,
        hdr: &[u8; N],
    ) -> Result<(), RewriteError> {
        // Keep the quoted bytes, then room for the new headers before them.
        // SAFETY: the context is the program's; the helper checks the length.
        let rc = unsafe {
            aya_ebpf::helpers::bpf_skb_change_tail(self.ctx.skb.skb, (L3_OFF + Q) as u32, 0)
        };
        if rc != 0 {
            return Err(RewriteError);
        }
        self.ctx
            .adjust_room(N as i32, BPF_ADJ_ROOM_MAC, 0)
            .map_err(|_| RewriteError)?;
        self.ctx.store(L3_OFF, hdr, 0).map_err(|_| RewriteError)
    }
}

/// XDP packets.
pub struct XdpPacket {
    pub ctx: XdpContext,
}

impl XdpPacket {
    /// Applies a 16-bit-word-wise checksum update at `off` (skipped for a zero UDP checksum).
    #[inline(always)]
    fn fix_l4_csum(&self, l4: L4, old: u32, new: u32) -> Result<(), RewriteError> {
        if let Some(off) = l4.csum_off() {
            let p: *mut u16 = ptr_at(self, off).ok_or(RewriteError)?;
            // SAFETY: `ptr_at` checked that the two bytes are inside the packet.
            let sum = unsafe { p.read_unaligned() };
            if l4.proto == proto::UDP && sum == 0 {
                return Ok(());
            }
            let mut new_sum = csum::replace4(sum, old, new);
            if l4.proto == proto::UDP && new_sum == 0 {
                new_sum = 0xffff;
            }
            // SAFETY: as above.
            unsafe { p.write_unaligned(new_sum) };
        }
        Ok(())
    }
}

impl Packet for XdpPacket {
    const HOOK: u8 = hook::XDP;
    const DEFERS: bool = true;

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx.ctx.cast()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) -> Result<(), RewriteError> {
        let eth: *mut [u8; 12] = ptr_at(self, 0).ok_or(RewriteError)?;
        // SAFETY: bounds-checked by `ptr_at`.
        let eth = unsafe { &mut *eth };
        eth[..6].copy_from_slice(&dst);
        eth[6..].copy_from_slice(&src);
        Ok(())
    }

    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.ctx.data_end() - self.ctx.data()) as u32
    }

    #[inline(always)]
    fn pull(&mut self, _len: u32) -> bool {
        // XDP frames are linear (multi-buffer frames are not requested).
        true
    }

    #[inline(always)]
    fn set_addr(&mut self, l4: L4, end: End, old: Ipv4, new: Ipv4) -> Result<(), RewriteError> {
        let from = u32::from_ne_bytes(old);
        let to = u32::from_ne_bytes(new);
        self.fix_l4_csum(l4, from, to)?;
        let ip_csum: *mut u16 = ptr_at(self, IP_CSUM_OFF).ok_or(RewriteError)?;
        let addr: *mut Ipv4 = ptr_at(self, addr_off(end)).ok_or(RewriteError)?;
        // SAFETY: both pointers were bounds-checked by `ptr_at`.
        unsafe {
            ip_csum.write_unaligned(csum::replace4(ip_csum.read_unaligned(), from, to));
            addr.write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn set_addr6(&mut self, l4: L4, end: End, old: &Ipv6, new: &Ipv6) -> Result<(), RewriteError> {
        let (from, to) = (words6(*old), words6(*new));
        let mut i = 0;
        while i < 4 {
            self.fix_l4_csum(l4, from[i], to[i])?;
            i += 1;
        }
        let addr: *mut Ipv6 = ptr_at(self, addr6_off(end)).ok_or(RewriteError)?;
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe { addr.write_unaligned(*new) };
        Ok(())
    }

    #[inline(always)]
    fn set_port(&mut self, l4: L4, end: End, old: u16, new: u16) -> Result<(), RewriteError> {
        self.fix_l4_csum(l4, u32::from(old.to_be()), u32::from(new.to_be()))?;
        let port: *mut u16 = ptr_at(self, l4.port_off(end)).ok_or(RewriteError)?;
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe { port.write_unaligned(new.to_be()) };
        Ok(())
    }

    #[inline(always)]
    fn store4_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: Ipv4,
        new: Ipv4,
    ) -> Result<(), RewriteError> {
        let csum: *mut u16 = ptr_at(self, csum_off).ok_or(RewriteError)?;
        let field: *mut Ipv4 = ptr_at(self, off).ok_or(RewriteError)?;
        let (from, to) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
        // SAFETY: both pointers were bounds-checked by `ptr_at`.
        unsafe {
            csum.write_unaligned(csum::replace4(csum.read_unaligned(), from, to));
            field.write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn store2_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), RewriteError> {
        let csum: *mut u16 = ptr_at(self, csum_off).ok_or(RewriteError)?;
        let field: *mut u16 = ptr_at(self, off).ok_or(RewriteError)?;
        let (from, to) = (u32::from(old.to_be()), u32::from(new.to_be()));
        // SAFETY: both pointers were bounds-checked by `ptr_at`.
        unsafe {
            csum.write_unaligned(csum::replace4(csum.read_unaligned(), from, to));
            field.write_unaligned(new.to_be());
        }
        Ok(())
    }

    #[inline(always)]
    fn store16_fix(
        &mut self,
        off: usize,
        csum_off: usize,
        old: &Ipv6,
        new: &Ipv6,
    ) -> Result<(), RewriteError> {
        let csum: *mut u16 = ptr_at(self, csum_off).ok_or(RewriteError)?;
        let field: *mut Ipv6 = ptr_at(self, off).ok_or(RewriteError)?;
        let (from, to) = (words6(*old), words6(*new));
        // SAFETY: both pointers were bounds-checked by `ptr_at`.
        unsafe {
            let mut sum = csum.read_unaligned();
            let mut i = 0;
            while i < 4 {
                sum = csum::replace4(sum, from[i], to[i]);
                i += 1;
            }
            csum.write_unaligned(sum);
            field.write_unaligned(*new);
        }
        Ok(())
    }

    #[inline(always)]
    fn is_gso(&self) -> bool {
        false
    }

    #[inline(always)]
    fn make_icmp_error<const N: usize, const Q: usize>(
        &mut self,
        _hdr: &[u8; N],
    ) -> Result<(), RewriteError> {
        // XDP defers every packet that needs an error to tc.
        Err(RewriteError)
    }
}
