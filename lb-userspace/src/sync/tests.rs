//! MapSync against an in-memory map set that checks, after every single write, what a packet
//! could observe: every frontend's table exists and every slot names a live backend of that
//! service. A write order that exposes a half-built service fails these tests.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use lb_common::{ServiceKey, ServiceValue, SvcInfo, backend_flags};

use super::*;
use crate::model::{
    Algorithm, Endpoint, EndpointState, Frontend, FrontendKind, LbService, Protocol, Scope,
};

#[derive(Default)]
struct Fake {
    services: BTreeMap<WideKey, ServiceValue>,
    backends: BTreeMap<u32, WideBackend>,
    tables: BTreeMap<u32, Vec<u32>>,
    info: BTreeMap<u32, SvcInfo>,
    ranges: BTreeMap<(u32, IpNet), ()>,
    ops: Vec<String>,
    /// `del_tables` calls (each one waits for running programs in the kernel).
    table_delete_calls: usize,
}

impl Fake {
    /// What any packet could see right now must be consistent.
    fn check(&self) {
        for (k, v) in &self.services {
            if v.lut_size == 0 {
                continue;
            }
            let table = self
                .tables
                .get(&v.svc_id)
                .unwrap_or_else(|| panic!("frontend {k:?}: no table"));
            let base = lb_common::pick_base(v.lut_size);
            let picks = base..base + u32::from(v.pick_len);
            for slot in (0..v.lut_size).chain(picks) {
                let id = *table
                    .get(slot as usize)
                    .unwrap_or_else(|| panic!("frontend {k:?} slot {slot}: past the table"));
                let be = self
                    .backends
                    .get(&id)
                    .unwrap_or_else(|| panic!("frontend {k:?} slot {slot}: backend {id} missing"));
                assert_eq!(
                    be.svc_id, v.svc_id,
                    "slot {slot} names another service's backend"
                );
            }
        }
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "the recorder answers every write as the map writer does"
    )]
    fn op(&mut self, s: String) -> Result<(), WriteError> {
        self.ops.push(s);
        self.check();
        Ok(())
    }
}

impl MapWriter for Fake {
    fn put_service(&mut self, key: &WideKey, value: &ServiceValue) -> Result<(), WriteError> {
        self.services.insert(*key, *value);
        self.op(format!("put_service {}", value.svc_id))
    }
    fn del_service(&mut self, key: &WideKey) -> Result<(), WriteError> {
        let v = self.services.remove(key);
        self.op(format!("del_service {}", v.map_or(0, |v| v.svc_id)))
    }
    fn put_backend(&mut self, id: u32, value: &WideBackend) -> Result<(), WriteError> {
        self.backends.insert(id, *value);
        self.op(format!("put_backend {id}"))
    }
    fn del_backend(&mut self, id: u32) -> Result<(), WriteError> {
        self.backends.remove(&id);
        self.op(format!("del_backend {id}"))
    }
    fn put_tables(&mut self, tables: &[(u32, Vec<u32>)]) -> Result<(), WriteError> {
        for (svc_id, ids) in tables {
            self.tables.insert(*svc_id, ids.clone());
            self.op(format!("put_table {svc_id}"))?;
        }
        Ok(())
    }
    fn del_tables(&mut self, svc_ids: &[u32]) -> Result<(), WriteError> {
        self.table_delete_calls += 1;
        for svc_id in svc_ids {
            self.tables.remove(svc_id);
            self.op(format!("del_table {svc_id}"))?;
        }
        Ok(())
    }
    fn put_info(&mut self, svc_id: u32, info: &SvcInfo) -> Result<(), WriteError> {
        self.info.insert(svc_id, *info);
        self.op(format!("put_info {svc_id}"))
    }
    fn del_info(&mut self, svc_id: u32) -> Result<(), WriteError> {
        self.info.remove(&svc_id);
        self.op(format!("del_info {svc_id}"))
    }
    fn put_range(&mut self, svc_id: u32, net: &IpNet) -> Result<(), WriteError> {
        self.ranges.insert((svc_id, *net), ());
        self.op(format!("put_range {svc_id} {net}"))
    }
    fn del_range(&mut self, svc_id: u32, net: &IpNet) -> Result<(), WriteError> {
        self.ranges.remove(&(svc_id, *net));
        self.op(format!("del_range {svc_id} {net}"))
    }
    fn reset_stats(&mut self, svc_id: u32) -> Result<(), WriteError> {
        self.op(format!("reset_stats {svc_id}"))
    }
}

impl MapReader for Fake {
    fn read_all(&self) -> Result<Recovered, WriteError> {
        Ok(Recovered {
            infos: self.info.iter().map(|(k, v)| (*k, *v)).collect(),
            frontends: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.iter().map(|(k, v)| (*k, *v)).collect(),
            ranges: self.ranges.keys().copied().collect(),
        })
    }
}

const CFG: SyncConfig = SyncConfig {
    maglev_size: MaglevSize::Fixed(1021),
    hash_seed: 0,
    limits: Limits {
        services: 1000,
        frontends: 65_536,
        backends: 262_144,
    },
};

fn ep(last: u8, port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::from([10, 244, 0, last]),
        port,
        weight: 1,
        local: false,
        state: EndpointState::Active,
        node: None,
    }
}

fn svc(name: &str, vip: u8, eps: Vec<Endpoint>, algorithm: Algorithm) -> LbService {
    LbService {
        name: name.to_owned(),
        frontends: vec![Frontend {
            addr: IpAddr::from([10, 96, 0, vip]),
            port: 80,
            proto: Protocol::Tcp,
            scope: Scope::External,
            kind: FrontendKind::ClusterIp,
            source_ranges: false,
        }],
        endpoints: eps,
        algorithm,
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

fn positions(ops: &[String], prefix: &str) -> Vec<usize> {
    ops.iter()
        .enumerate()
        .filter(|(_, o)| o.starts_with(prefix))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn add_writes_backends_and_table_before_the_frontend() {
    let mut s = MapSync::new(Fake::default(), CFG);
    let r = s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80), ep(2, 80)],
        Algorithm::Maglev,
    )]));
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.added, 1);
    let ops = &s.writer().ops;
    let fe = positions(ops, "put_service")[0];
    assert!(positions(ops, "put_backend").iter().all(|p| *p < fe));
    assert!(positions(ops, "put_table").iter().all(|p| *p < fe));
    assert_eq!(ops.last().map(String::as_str), Some("put_service 1"));
}

#[test]
fn unchanged_state_writes_nothing() {
    let mut s = MapSync::new(Fake::default(), CFG);
    let d = state(vec![
        svc("a", 1, vec![ep(1, 80), ep(2, 80)], Algorithm::Maglev),
        svc("b", 2, vec![ep(3, 8080)], Algorithm::Random),
    ]);
    s.apply(&d);
    let r = s.apply(&d);
    assert_eq!(r.writes, 0, "{:?}", s.writer().ops);
    assert_eq!((r.added, r.changed, r.removed), (0, 0, 0));
}

#[test]
fn removing_an_endpoint_rewrites_the_table_then_deletes_the_backend() {
    let mut s = MapSync::new(Fake::default(), CFG);
    s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80), ep(2, 80), ep(3, 80)],
        Algorithm::Random,
    )]));
    let gone = s
        .backend_id("a", IpAddr::from([10, 244, 0, 2]), 80)
        .unwrap();
    let kept = s
        .backend_id("a", IpAddr::from([10, 244, 0, 1]), 80)
        .unwrap();
    let before = s.writer().ops.len();
    let r = s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80), ep(3, 80)],
        Algorithm::Random,
    )]));
    assert_eq!(r.changed, 1);
    let ops = &s.writer().ops[before..];
    let del = positions(ops, &format!("del_backend {gone}"))[0];
    assert!(
        positions(ops, "put_lut").iter().all(|p| *p < del),
        "{ops:?}"
    );
    assert!(
        positions(ops, "put_service").iter().all(|p| *p < del),
        "{ops:?}"
    );
    // Ids of the others never change.
    assert_eq!(
        s.backend_id("a", IpAddr::from([10, 244, 0, 1]), 80),
        Some(kept)
    );
}

#[test]
fn removing_a_service_deletes_its_frontend_first_and_everything_else() {
    let mut s = MapSync::new(Fake::default(), CFG);
    s.apply(&state(vec![
        svc("a", 1, vec![ep(1, 80)], Algorithm::Maglev),
        svc("b", 2, vec![ep(2, 80)], Algorithm::Maglev),
    ]));
    let a_id = s.service_id("a").unwrap();
    let b_id = s.service_id("b").unwrap();
    let before = s.writer().ops.len();
    let r = s.apply(&state(vec![svc(
        "b",
        2,
        vec![ep(2, 80)],
        Algorithm::Maglev,
    )]));
    assert_eq!(r.removed, 1);
    let ops = &s.writer().ops[before..];
    assert_eq!(ops[0], format!("del_service {a_id}"));
    let f = s.writer();
    assert!(f.tables.keys().all(|k| *k == b_id));
    assert!(f.backends.values().all(|b| b.svc_id == b_id));
    assert!(!f.info.contains_key(&a_id));
    assert_eq!(s.service_id("b"), Some(b_id));
}

#[test]
fn ids_survive_a_restart_and_adoption_writes_nothing() {
    let d = state(vec![
        svc("a", 1, vec![ep(1, 80), ep(2, 80)], Algorithm::Maglev),
        svc("b", 2, vec![ep(3, 80)], Algorithm::Random),
    ]);
    let mut s = MapSync::new(Fake::default(), CFG);
    s.apply(&d);
    let ids = (
        s.service_id("a"),
        s.service_id("b"),
        s.backend_id("a", IpAddr::from([10, 244, 0, 2]), 80),
    );
    let fake = std::mem::take(&mut s.w);
    let rec = fake.read_all().unwrap();
    let mut s2 = MapSync::recover(fake, CFG, rec);
    let before = s2.writer().ops.len();
    let r = s2.apply(&d);
    assert_eq!(r.writes, 0, "{:?}", &s2.writer().ops[before..]);
    assert_eq!(
        (
            s2.service_id("a"),
            s2.service_id("b"),
            s2.backend_id("a", IpAddr::from([10, 244, 0, 2]), 80)
        ),
        ids
    );
    // A new service after the restart gets a fresh id, not a recycled one.
    s2.apply(&state(vec![
        svc("a", 1, vec![ep(1, 80), ep(2, 80)], Algorithm::Maglev),
        svc("c", 3, vec![ep(4, 80)], Algorithm::Maglev),
    ]));
    let c = s2.service_id("c").unwrap();
    assert!(
        c > ids.1.unwrap(),
        "service c got id {c}, b had {:?}",
        ids.1
    );
}

#[test]
fn orphans_left_by_a_crash_are_removed() {
    let mut fake = Fake::default();
    fake.services.insert(
        ServiceKey {
            addr: crate::addr::wide(IpAddr::from([10, 96, 0, 9])),
            port: 80,
            proto: 6,
            scope: 0,
        },
        ServiceValue {
            svc_id: 9,
            lut_size: 0,
            affinity_timeout: 0,
            flags: 0,
            kind: 1,
            algorithm: 2,
            backend_count: 0,
            pick_len: 0,
        },
    );
    let rec = fake.read_all().unwrap();
    let mut s = MapSync::recover(fake, CFG, rec);
    s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80)],
        Algorithm::Maglev,
    )]));
    assert!(s.writer().services.values().all(|v| v.svc_id != 9));
    assert_ne!(s.service_id("a"), Some(9));
}

#[test]
fn a_frontend_can_move_between_services() {
    let mut s = MapSync::new(Fake::default(), CFG);
    s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80)],
        Algorithm::Maglev,
    )]));
    let r = s.apply(&state(vec![svc(
        "b",
        1,
        vec![ep(2, 80)],
        Algorithm::Maglev,
    )]));
    assert!(r.failed.is_empty());
    let b = s.service_id("b").unwrap();
    let f = s.writer();
    assert_eq!(f.services.len(), 1);
    assert_eq!(f.services.values().next().map(|v| v.svc_id), Some(b));
}

#[test]
fn draining_endpoints_stay_as_backends_but_not_in_the_table() {
    let mut s = MapSync::new(Fake::default(), CFG);
    let mut e2 = ep(2, 80);
    e2.state = EndpointState::Terminating;
    s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80), e2],
        Algorithm::Random,
    )]));
    let id2 = s
        .backend_id("a", IpAddr::from([10, 244, 0, 2]), 80)
        .unwrap();
    let f = s.writer();
    let be = f.backends[&id2];
    assert_ne!(be.flags & backend_flags::DRAINING, 0);
    assert!(f.tables.values().all(|t| !t.contains(&id2)));
    assert_eq!(f.services.values().next().map(|v| v.backend_count), Some(1));
}

#[test]
fn no_active_endpoint_means_lut_size_zero() {
    let mut s = MapSync::new(Fake::default(), CFG);
    s.apply(&state(vec![svc(
        "a",
        1,
        vec![ep(1, 80)],
        Algorithm::Maglev,
    )]));
    s.apply(&state(vec![svc("a", 1, vec![], Algorithm::Maglev)]));
    let f = s.writer();
    assert_eq!(f.services.values().next().map(|v| v.lut_size), Some(0));
    assert!(f.tables.is_empty() && f.backends.is_empty());
}

#[test]
fn a_maglev_table_is_followed_by_a_weighted_pick_list_from_the_next_chunk() {
    let mut eps = vec![ep(1, 80), ep(2, 80), ep(3, 80)];
    eps[0].weight = 4;
    eps[1].weight = 2;
    let cfg = SyncConfig {
        maglev_size: MaglevSize::Fixed(2039),
        ..CFG
    };
    let mut s = MapSync::new(Fake::default(), cfg);
    s.apply(&state(vec![
        svc("m", 1, eps.clone(), Algorithm::Maglev),
        svc("r", 2, eps, Algorithm::Random),
    ]));
    let f = s.writer();
    let by_vip = |last: u8| {
        *f.services
            .iter()
            .find(|(k, _)| k.addr == crate::addr::wide(IpAddr::from([10, 96, 0, last])))
            .map(|(_, v)| v)
            .expect("frontend")
    };
    let counts = |ids: &[u32]| {
        let mut c: BTreeMap<[u8; 16], usize> = BTreeMap::new();
        for id in ids {
            *c.entry(f.backends[id].addr).or_default() += 1;
        }
        c.into_values().collect::<Vec<_>>()
    };
    // Maglev: the table, padding to the next chunk, then the list in proportion 4:2:1.
    let m = by_vip(1);
    assert_eq!((m.lut_size, m.pick_len), (2039, 7));
    let base = lb_common::pick_base(m.lut_size) as usize;
    assert_eq!(
        base,
        2 * lb_common::LUT_CHUNK_SLOTS,
        "2039 slots: the list starts at 2048"
    );
    let table = &f.tables[&m.svc_id];
    assert_eq!(table.len(), base + 7);
    assert_eq!(counts(&table[base..]), vec![4, 2, 1]);
    assert_eq!(f.info[&m.svc_id].pick_len, 7);
    // Random: the table is the list; nothing follows it.
    let r = by_vip(2);
    assert_eq!((r.lut_size, r.pick_len), (7, 0));
    assert_eq!(counts(&f.tables[&r.svc_id]), vec![4, 2, 1]);
}

#[test]
fn a_table_of_one_chunk_has_no_pick_list_and_auto_sizes_from_the_backends() {
    let cfg = SyncConfig {
        maglev_size: MaglevSize::Auto,
        ..CFG
    };
    let mut s = MapSync::new(Fake::default(), cfg);
    let eps = |n: u8| (1..=n).map(|i| ep(i, 80)).collect::<Vec<_>>();
    s.apply(&state(vec![
        svc("three", 1, eps(3), Algorithm::Maglev),
        svc("thirty", 2, eps(30), Algorithm::Maglev),
    ]));
    let f = s.writer();
    let sizes: BTreeMap<u32, (u32, u16, usize)> = f
        .services
        .values()
        .map(|v| {
            (
                v.backend_count.into(),
                (v.lut_size, v.pick_len, f.tables[&v.svc_id].len()),
            )
        })
        .collect();
    // Three backends: 1,021 slots, one chunk, the hook picks from the table itself.
    assert_eq!(sizes[&3], (1021, 0, 1021));
    // Thirty: 4,093 slots, then the list from slot 4,096.
    assert_eq!(sizes[&30], (4093, 30, 4096 + 30));
}

#[test]
fn a_shrinking_table_is_never_indexed_past_its_end() {
    // Random tables change length with the backend count; the per-write check in `Fake`
    // fails if a frontend's size ever exceeds the table in place.
    let mut s = MapSync::new(Fake::default(), CFG);
    let many: Vec<Endpoint> = (1..=6).map(|i| ep(i, 80)).collect();
    s.apply(&state(vec![svc("a", 1, many.clone(), Algorithm::Random)]));
    s.apply(&state(vec![svc(
        "a",
        1,
        many[..2].to_vec(),
        Algorithm::Random,
    )]));
    s.apply(&state(vec![svc("a", 1, many.clone(), Algorithm::Random)]));
    s.apply(&state(vec![svc("a", 1, vec![], Algorithm::Random)]));
    assert!(s.writer().tables.is_empty());
}

#[test]
fn removing_many_services_deletes_their_tables_in_one_call_after_their_frontends() {
    let svcs: Vec<LbService> = (0..50u8)
        .map(|i| {
            svc(
                &format!("s{i:02}"),
                i + 1,
                vec![ep(1, 80)],
                Algorithm::Maglev,
            )
        })
        .collect();
    let mut s = MapSync::new(Fake::default(), CFG);
    s.apply(&state(svcs.clone()));
    let before = s.writer().ops.len();
    let r = s.apply(&state(svcs[..10].to_vec()));
    assert_eq!((r.removed, r.failed.len()), (40, 0));
    let f = s.writer();
    assert_eq!(f.table_delete_calls, 1, "one batched delete for 40 tables");
    assert_eq!(f.tables.len(), 10);
    let ops = &f.ops[before..];
    let last_frontend = positions(ops, "del_service").into_iter().max().unwrap();
    assert!(
        positions(ops, "del_table")
            .into_iter()
            .all(|p| p > last_frontend)
    );
}

#[test]
fn many_services_go_through_several_pipelined_batches_consistently() {
    // More services than one batch: tables of the next batch are built while one is written;
    // every write is still checked for consistency by `Fake`.
    let n = super::SYNC_BATCH * 2 + 17;
    let mk = |shift: u8| {
        state(
            (0..n)
                .map(|i| {
                    let mut s = svc(
                        &format!("s{i:04}"),
                        1,
                        vec![ep(1, 80 + u16::from(shift)), ep(2, 80)],
                        Algorithm::Maglev,
                    );
                    s.frontends[0].addr = IpAddr::from(Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32,
                    ));
                    s
                })
                .collect(),
        )
    };
    // Small tables: `Fake` re-checks every slot of every frontend after each write.
    let cfg = SyncConfig {
        maglev_size: MaglevSize::Fixed(13),
        ..CFG
    };
    let mut s = MapSync::new(Fake::default(), cfg);
    let r = s.apply(&mk(0));
    assert_eq!((r.added, r.failed.len()), (n, 0));
    assert_eq!(s.writer().tables.len(), n);
    let r = s.apply(&mk(1));
    assert_eq!((r.changed, r.failed.len()), (n, 0));
    assert_eq!(s.apply(&mk(1)).writes, 0);
}

#[test]
fn services_beyond_a_capacity_are_refused_naming_the_flag_and_the_rest_stays() {
    let cfg = SyncConfig {
        limits: Limits {
            services: 3, // ids 1 and 2
            frontends: 2,
            backends: 3,
        },
        ..CFG
    };
    let mut s = MapSync::new(Fake::default(), cfg);
    let a = svc("a", 1, vec![ep(1, 80), ep(2, 80)], Algorithm::Maglev);
    let b = svc("b", 2, vec![ep(3, 80)], Algorithm::Maglev);
    let c = svc("c", 3, vec![ep(4, 80)], Algorithm::Maglev);
    // Three services, room for two: the third is refused and names --max-services.
    let r = s.apply(&state(vec![a.clone(), b.clone(), c.clone()]));
    assert_eq!(r.added, 2);
    assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
    assert_eq!(r.failed[0].0, "c");
    assert!(
        r.failed[0].1.to_string().contains("--max-services"),
        "{:?}",
        r.failed
    );
    // An existing service growing past the backend capacity keeps what it had.
    let mut a2 = a.clone();
    a2.endpoints.push(ep(5, 80));
    let r = s.apply(&state(vec![a2.clone(), b.clone()]));
    assert!(
        r.failed
            .iter()
            .any(|(n, e)| n == "a" && e.to_string().contains("--max-backends")),
        "{:?}",
        r.failed
    );
    assert_eq!(s.writer().backends.len(), 3);
    // A second frontend on b would exceed the frontend capacity.
    let mut b2 = b.clone();
    b2.frontends.push(Frontend {
        port: 81,
        ..b.frontends[0]
    });
    let r = s.apply(&state(vec![a.clone(), b2]));
    assert!(
        r.failed
            .iter()
            .any(|(n, e)| n == "b" && e.to_string().contains("--max-frontends")),
        "{:?}",
        r.failed
    );
    assert_eq!(s.writer().services.len(), 2);
    // Removing a makes room for c: its id is free once the pass that removes a is done, so the
    // retry programs c.
    let d = state(vec![b.clone(), c.clone()]);
    let r = s.apply(&d);
    assert!(
        r.failed
            .iter()
            .all(|(n, e)| n == "c" && e.to_string().contains("--max-services")),
        "{:?}",
        r.failed
    );
    let r = s.apply(&d);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(s.totals().services, 2);
    assert!(s.service_id("c").is_some());
}
