//! Socket-level translations: the values of `xlb_sock`/`xlb_sock6` and the keys and values of
//! `xlb_sock_rev`/`xlb_sock6_rev`, generic over the address family (`Ipv4` by default).

use crate::{Address, Ipv4};

/// Value of `xlb_sock` (`xlb_sock6` for `Ipv6`): a socket translated at connect(), in slot
/// `cookie & (capacity::SOCK_SLOTS - 1)` (`SOCK6_SLOTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockXlate<A = Ipv4> {
    /// The writing socket's cookie XOR a mix of the other fields (`seal`, `cookie`): a record
    /// torn between two sockets writing the slot at once names neither. Zero: never written.
    pub tag: u64,
    /// The ClusterIP the socket dialled.
    pub vip: A,
    /// The backend it was sent to.
    pub backend: A,
    /// The dialled port, network order (as in `bpf_sock_addr::user_port`).
    pub vip_port_be: u16,
    /// The backend's port, network order.
    pub backend_port_be: u16,
    /// Service id at connect() time.
    pub svc_id: u32,
}

impl<A: Address> SockXlate<A> {
    /// A record that names no socket.
    pub const EMPTY: Self = Self {
        tag: 0,
        vip: A::ZERO,
        backend: A::ZERO,
        vip_port_be: 0,
        backend_port_be: 0,
        svc_id: 0,
    };

    /// The other fields mixed into 64 bits (0 for a zeroed record).
    #[inline(always)]
    fn mix(&self) -> u64 {
        let a = u64::from(u32::from_ne_bytes(self.vip.folded()))
            | (u64::from(u32::from_ne_bytes(self.backend.folded())) << 32);
        let b = u64::from(self.vip_port_be)
            | (u64::from(self.backend_port_be) << 16)
            | (u64::from(self.svc_id) << 32);
        let h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        h ^ (h >> 29)
    }

    /// Sets `tag` for the socket with `cookie`.
    #[inline(always)]
    pub fn seal(&mut self, cookie: u64) {
        self.tag = cookie ^ self.mix();
    }

    /// The cookie of the socket that wrote this record; 0 if none did, and no socket's cookie
    /// (almost surely) if the record is torn.
    #[inline(always)]
    pub fn cookie(&self) -> u64 {
        self.tag ^ self.mix()
    }
}

/// Key of `xlb_sock_rev` (`xlb_sock6_rev`): a host-network UDP socket's datagrams to a
/// backend, addressed to a ClusterIP (sendmsg, connect). Aligned to 4 so that the IPv6 key has
/// no hidden padding (a hash key is compared byte by byte); the IPv4 layout is unchanged.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevKey<A = Ipv4> {
    /// The socket's cookie.
    pub cookie: u64,
    /// The backend the datagrams went to.
    pub backend: A,
    /// Its port, network order.
    pub backend_port_be: u16,
    pub _pad: u16,
}

/// Value of `xlb_sock_rev` (`xlb_sock6_rev`): the address the socket's replies from that
/// backend come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevValue<A = Ipv4> {
    /// The ClusterIP the socket addressed.
    pub vip: A,
    /// The addressed port, network order.
    pub vip_port_be: u16,
    pub _pad: u16,
    /// Service id at send time.
    pub svc_id: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity;

    #[test]
    fn a_sock_record_names_its_writer_and_a_torn_one_nobody() {
        let rec = |vip: u8, backend: u8, cookie| {
            let mut r = SockXlate {
                tag: 0,
                vip: [10, 96, 0, vip],
                backend: [10, 244, 0, backend],
                vip_port_be: 80u16.to_be(),
                backend_port_be: 8080u16.to_be(),
                svc_id: u32::from(vip),
            };
            r.seal(cookie);
            r
        };
        let zeroed = SockXlate::<Ipv4>::EMPTY;
        assert_eq!(zeroed.cookie(), 0, "a slot never written names no socket");
        let (s, t) = (rec(1, 5, 7), rec(2, 5, 7 + u64::from(capacity::SOCK_SLOTS)));
        assert_eq!(s.cookie(), 7);
        assert_eq!(t.cookie(), 7 + u64::from(capacity::SOCK_SLOTS));
        // S's tag with T's fields (two writers at once, or a read while T takes the slot).
        let torn = SockXlate { tag: s.tag, ..t };
        assert_ne!(torn.cookie(), s.cookie());
        assert_ne!(torn.cookie(), t.cookie());
        let torn = SockXlate {
            tag: s.tag,
            vip: t.vip,
            ..s
        };
        assert_ne!(torn.cookie(), s.cookie());
    }
}
