//! Addresses of both families as user space keeps them: 16 bytes, an IPv4 address in its
//! IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so that the sync logic has one key and one
//! backend type. The map layer (`bpf::maps`) writes each entry to its family's map, in that
//! map's own form; no mapped address ever reaches the datapath.

use std::net::{IpAddr, Ipv6Addr};

use lb_common::{Address as _, Backend, Ipv4, Ipv6, ServiceKey};

/// A frontend key of either family (see the module doc).
pub type WideKey = ServiceKey<Ipv6>;
/// A backend of either family (see the module doc).
pub type WideBackend = Backend<Ipv6>;

/// `a` in its 16-byte form.
pub fn wide(a: IpAddr) -> Ipv6 {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a 16-byte form.
pub fn ip(a: &Ipv6) -> IpAddr {
    Ipv6Addr::from(*a).to_canonical()
}

/// The IPv4 address of a 16-byte form, if it is one.
pub fn v4(a: &Ipv6) -> Option<Ipv4> {
    Ipv6Addr::from(*a).to_ipv4_mapped().map(|a| a.octets())
}

/// The address the datapath's filters hash for a 16-byte form (`lb_common::Address::folded`
/// of the family's own address).
pub fn filter_addr(a: &Ipv6) -> Ipv4 {
    v4(a).unwrap_or_else(|| a.folded())
}

/// An IPv4 map key in the wide form.
pub fn widen_key(k: &ServiceKey) -> WideKey {
    ServiceKey {
        addr: wide(IpAddr::from(k.addr)),
        port: k.port,
        proto: k.proto,
        scope: k.scope,
    }
}

/// An IPv4 backend in the wide form.
pub fn widen_backend(b: &Backend) -> WideBackend {
    Backend {
        addr: wide(IpAddr::from(b.addr)),
        port: b.port,
        flags: b.flags,
        zone: b.zone,
        svc_id: b.svc_id,
        weight: b.weight,
        _pad: b._pad,
    }
}

/// A wide key as the IPv4 map's key, if its address is IPv4.
pub fn narrow_key(k: &WideKey) -> Option<ServiceKey> {
    Some(ServiceKey {
        addr: v4(&k.addr)?,
        port: k.port,
        proto: k.proto,
        scope: k.scope,
    })
}

/// A wide backend as the IPv4 map's value, if its address is IPv4.
pub fn narrow_backend(b: &WideBackend) -> Option<Backend> {
    Some(Backend {
        addr: v4(&b.addr)?,
        port: b.port,
        flags: b.flags,
        zone: b.zone,
        svc_id: b.svc_id,
        weight: b.weight,
        _pad: b._pad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_round_trip_and_filter_like_the_datapath() {
        let a4: IpAddr = "10.96.0.10".parse().unwrap();
        let a6: IpAddr = "fd00::10".parse().unwrap();
        assert_eq!(ip(&wide(a4)), a4);
        assert_eq!(ip(&wide(a6)), a6);
        assert_eq!(v4(&wide(a4)), Some([10, 96, 0, 10]));
        assert_eq!(v4(&wide(a6)), None);
        assert_eq!(filter_addr(&wide(a4)), [10, 96, 0, 10]);
        let IpAddr::V6(v6) = a6 else { unreachable!() };
        assert_eq!(filter_addr(&wide(a6)), v6.octets().folded());
    }
}
