//! Host-network UDP sockets connected to a backend that left. `connect()` to a UDP ClusterIP
//! from a host-network process connects the socket to a backend (socket-level translation), and
//! nothing on the packet path moves it later. After each sync the agent finds the backends no
//! UDP service has active any more and aborts the sockets the datapath connected to them
//! (`sockdiag`): the application's next `send()` fails and its reconnect picks a live backend.
//! Sockets connected to those addresses directly (not through a service) are left alone: only a
//! socket whose `xlb_sock` record or `xlb_sock_rev` entry (`xlb_sock6`, `xlb_sock6_rev` for
//! IPv6 backends) names that backend is aborted.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::Path,
};

use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use lb_common::{Address, Ipv4, Ipv6, SockRevKey, SockRevValue, SockXlate, capacity, map_names};

use crate::{
    model::{DesiredState, EndpointState, LbService, Protocol},
    sockdiag,
};

/// Active backends of services with a UDP frontend: per service, and how many services each
/// has.
#[derive(Default)]
pub struct UdpBackends {
    by_service: HashMap<String, Vec<(IpAddr, u16)>>,
    refs: HashMap<(IpAddr, u16), u32>,
}

/// `svc`'s active backends if it has a UDP frontend (a host-network socket may be connected
/// through any kind: ClusterIP, NodePort, LoadBalancer IP, externalIP).
fn udp_backends(svc: &LbService) -> Vec<(IpAddr, u16)> {
    if !svc.frontends.iter().any(|f| f.proto == Protocol::Udp) {
        return Vec::new();
    }
    svc.endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Active)
        .map(|e| (e.addr, e.port))
        .collect()
}

impl UdpBackends {
    /// Follows `desired` for the services `names` (every service if None); returns the
    /// backends that no service with a UDP frontend has active any more.
    pub fn update(
        &mut self,
        desired: &DesiredState,
        names: Option<&BTreeSet<String>>,
    ) -> HashSet<(IpAddr, u16)> {
        let all: BTreeSet<String>;
        let names = if let Some(n) = names {
            n
        } else {
            all = self
                .by_service
                .keys()
                .chain(desired.services.keys())
                .cloned()
                .collect();
            &all
        };
        let mut dropped = Vec::new();
        for name in names {
            let new = desired
                .services
                .get(name)
                .map(udp_backends)
                .unwrap_or_default();
            for b in &new {
                *self.refs.entry(*b).or_default() += 1;
            }
            let old = if new.is_empty() {
                self.by_service.remove(name)
            } else {
                self.by_service.insert(name.clone(), new)
            };
            for b in old.unwrap_or_default() {
                if let Some(n) = self.refs.get_mut(&b) {
                    *n -= 1;
                    if *n == 0 {
                        self.refs.remove(&b);
                        dropped.push(b);
                    }
                }
            }
        }
        dropped
            .into_iter()
            .filter(|b| !self.refs.contains_key(b))
            .collect()
    }
}

/// The socket records of one family: `xlb_sock` and `xlb_sock_rev` (or their IPv6 maps).
struct Records<A>
where
    SockXlate<A>: Pod,
    SockRevKey<A>: Pod,
    SockRevValue<A>: Pod,
{
    sock: Array<MapData, SockXlate<A>>,
    rev: BpfHashMap<MapData, SockRevKey<A>, SockRevValue<A>>,
    slots: u32,
}

impl<A: Address> Records<A>
where
    SockXlate<A>: Pod,
    SockRevKey<A>: Pod,
    SockRevValue<A>: Pod,
{
    fn open(bpffs: &Path, sock: &str, rev: &str, slots: u32) -> anyhow::Result<Self> {
        let data = MapData::from_pin(bpffs.join(sock))?;
        let sock = Array::try_from(aya::maps::Map::Array(data))?;
        let data = MapData::from_pin(bpffs.join(rev))?;
        let rev = BpfHashMap::try_from(aya::maps::Map::LruHashMap(data))?;
        Ok(Self { sock, rev, slots })
    }

    /// True if the datapath sent the socket `cookie` to `addr:port`: its record in its slot
    /// (which a later socket may have taken over), or the exact (socket, backend) entry its
    /// replies are rewritten by.
    fn names(&self, cookie: u64, addr: A, port: u16) -> bool {
        let slot = (cookie & u64::from(self.slots - 1)) as u32;
        let in_slot = self.sock.get(&slot, 0).is_ok_and(|r| {
            r.cookie() == cookie && r.backend == addr && r.backend_port_be == port.to_be()
        });
        let key = SockRevKey {
            cookie,
            backend: addr,
            backend_port_be: port.to_be(),
            _pad: 0,
        };
        in_slot || self.rev.get(&key, 0).is_ok()
    }
}

/// Aborts the host-network UDP sockets the datapath (pins under `bpffs`) connected to one of
/// `gone`; returns how many.
pub fn abort_sockets(bpffs: &Path, gone: &HashSet<(IpAddr, u16)>) -> anyhow::Result<usize> {
    let v4 = Records::<Ipv4>::open(
        bpffs,
        map_names::SOCK,
        map_names::SOCK_REV,
        capacity::SOCK_SLOTS,
    )?;
    // Pins of a release without IPv6 sockets have no such maps: only IPv4 sockets then.
    let v6 = if bpffs.join(map_names::SOCK6).exists() {
        Some(Records::<Ipv6>::open(
            bpffs,
            map_names::SOCK6,
            map_names::SOCK_REV6,
            capacity::SOCK6_SLOTS,
        )?)
    } else {
        None
    };
    let n = sockdiag::abort_connected_udp(|cookie, addr, port| {
        if !gone.contains(&(addr, port)) {
            return false;
        }
        match addr {
            IpAddr::V4(a) => v4.names(cookie, a.octets(), port),
            IpAddr::V6(a) => v6
                .as_ref()
                .is_some_and(|r| r.names(cookie, a.octets(), port)),
        }
    })?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Frontend, FrontendKind, Scope};

    fn svc(name: &str, proto: Protocol, eps: &[(u8, EndpointState)]) -> LbService {
        LbService {
            name: name.into(),
            frontends: vec![Frontend {
                addr: IpAddr::from([10, 96, 0, 10]),
                port: 53,
                proto,
                scope: Scope::External,
                kind: FrontendKind::ClusterIp,
                source_ranges: false,
            }],
            endpoints: eps
                .iter()
                .map(|(last, state)| Endpoint {
                    addr: IpAddr::from([10, 244, 0, *last]),
                    port: 53,
                    weight: 1,
                    local: true,
                    state: *state,
                    node: None,
                })
                .collect(),
            algorithm: crate::model::Algorithm::Maglev,
            affinity_timeout: 0,
            source_ranges: Vec::new(),
            ext_local: false,
        }
    }

    fn state(svcs: Vec<LbService>) -> DesiredState {
        DesiredState {
            services: svcs.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    #[test]
    fn a_backend_is_gone_once_no_udp_cluster_ip_has_it_active() {
        use EndpointState::{Active, Terminating};
        let ip = |l| (IpAddr::from([10, 244, 0, l]), 53);
        let mut t = UdpBackends::default();
        let d = state(vec![
            svc("dns/udp", Protocol::Udp, &[(1, Active), (2, Active)]),
            svc("other/udp", Protocol::Udp, &[(2, Active)]),
            svc("dns/tcp", Protocol::Tcp, &[(3, Active)]),
        ]);
        assert!(t.update(&d, None).is_empty());
        // 1 terminates, 2 leaves dns/udp but other/udp still has it.
        let d = state(vec![
            svc("dns/udp", Protocol::Udp, &[(1, Terminating)]),
            svc("other/udp", Protocol::Udp, &[(2, Active)]),
            svc("dns/tcp", Protocol::Tcp, &[]),
        ]);
        let names: BTreeSet<String> = ["dns/udp".into(), "dns/tcp".into()].into();
        assert_eq!(t.update(&d, Some(&names)), HashSet::from([ip(1)]));
        // other/udp deleted: 2 goes too; TCP backends never count.
        let d = state(vec![svc("dns/udp", Protocol::Udp, &[])]);
        assert_eq!(t.update(&d, None), HashSet::from([ip(2)]));
    }
}
