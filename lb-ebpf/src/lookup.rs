//! Service lookups: frontend match (with scopes), backend validity, and backend selection for a
//! new flow (session affinity, then the service's lookup table by Maglev hash or at random).

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_prandom_u32, maps::lpm_trie::Key};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Config, LUT_CHUNK_SLOTS, ServiceKey, ServiceValue,
    SrcRangeKey, algorithm, backend_flags, drop_reason, flow_hash, hook, pick_base, scope,
    selection, svc_flags,
};

use crate::{
    family::Family,
    maps::{FE_FILTER, LUT, may_hold},
    parse::Flow,
    stats,
};

/// False only if no frontend is at `addr:port` (host order) for `l4_proto` (the frontend
/// filter's bit is clear): then `frontend` need not be asked.
#[inline(always)]
pub fn may_be_frontend<A: Family>(addr: A, port: u16, l4_proto: u8) -> bool {
    may_hold(&FE_FILTER, addr, port, l4_proto)
}

/// The frontend at `addr:port` (host order) for `l4_proto`, with the scope of the entry that
/// matched: clients on this node (`hook::POD`) use the internal entry when there is one.
/// Callers ask `may_be_frontend` first.
#[inline(always)]
pub fn frontend<A: Family>(
    addr: A,
    port: u16,
    l4_proto: u8,
    hook_kind: u8,
) -> Option<(ServiceValue, u8)> {
    let mut key = ServiceKey {
        addr,
        port,
        proto: l4_proto,
        scope: scope::EXTERNAL,
    };
    // SAFETY: the value is copied out at once; the agent may replace it concurrently.
    let svc = *unsafe { A::services().get(key) }?;
    if hook_kind == hook::POD && svc.flags & svc_flags::TWO_SCOPES != 0 {
        key.scope = scope::INTERNAL;
        // SAFETY: as above.
        if let Some(internal) = unsafe { A::services().get(key) } {
            return Some((*internal, scope::INTERNAL));
        }
    }
    Some((svc, scope::EXTERNAL))
}

/// The backend `id` if it still belongs to service `svc_id`.
#[inline(always)]
pub fn backend<A: Family>(id: u32, svc_id: u32) -> Option<Backend<A>> {
    // SAFETY: copied out at once.
    let be = *unsafe { A::backends().get(id) }?;
    if be.svc_id != svc_id {
        return None;
    }
    Some(be)
}

/// True if the client may reach this frontend (loadBalancerSourceRanges).
#[inline(always)]
pub fn source_allowed<A: Family>(svc: &ServiceValue, flow: &Flow<A>) -> bool {
    if svc.flags & svc_flags::SRC_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        32 + A::BITS,
        SrcRangeKey {
            svc_id_be: svc.svc_id.to_be(),
            addr: flow.saddr,
        },
    );
    A::src_ranges().get(&key).is_some()
}

/// A backend chosen for a new flow.
pub struct Selected<A> {
    pub id: u32,
    pub backend: Backend<A>,
    /// `selection::*`.
    pub how: u8,
    pub slot: u32,
    pub hash: u32,
}

/// Chooses a backend for a new flow of `svc`, or the drop reason. Writes nothing: the caller
/// records the flow (and the affinity) once it knows the packet can be delivered.
#[inline(always)]
pub fn select<A: Family>(
    svc: &ServiceValue,
    flow: &Flow<A>,
    cfg: &Config,
    now: u32,
) -> Result<Selected<A>, u32> {
    if svc.lut_size == 0 {
        return Err(if svc.flags & svc_flags::EXT_LOCAL != 0 {
            drop_reason::NO_LOCAL_BACKEND
        } else {
            drop_reason::NO_BACKEND
        });
    }
    let hash = flow_hash(
        flow.saddr.folded(),
        flow.daddr.folded(),
        flow.sport,
        flow.dport,
        flow.proto,
        cfg.hash_seed,
    );
    let aff_key = AffinityKey {
        svc_id: svc.svc_id,
        client: flow.saddr,
    };
    if svc.affinity_timeout != 0 {
        // SAFETY: copied out at once.
        if let Some(aff) = unsafe { A::affinity().get(aff_key) }.copied()
            && aff.last_used.wrapping_add(svc.affinity_timeout) >= now
            && let Some(be) = backend::<A>(aff.backend_id, svc.svc_id)
            && be.flags & backend_flags::DRAINING == 0
        {
            return Ok(Selected {
                id: aff.backend_id,
                backend: be,
                how: selection::AFFINITY,
                slot: 0,
                hash,
            });
        }
    }
    let (slot, how) = if svc.algorithm == algorithm::MAGLEV {
        (hash % svc.lut_size, selection::MAGLEV)
    } else {
        (random_slot(svc), selection::RANDOM)
    };
    let (id, be) = slot_backend::<A>(svc, slot).ok_or(drop_reason::NO_BACKEND)?;
    Ok(Selected {
        id,
        backend: be,
        how,
        slot,
        hash,
    })
}

/// A random slot of `svc`'s table (`lut_size` must not be 0).
#[inline(always)]
pub fn random_slot(svc: &ServiceValue) -> u32 {
    // SAFETY: helper without preconditions.
    (unsafe { bpf_get_prandom_u32() }) % svc.lut_size
}

/// A weighted random slot for the socket hook: from the pick list after a Maglev table when
/// there is one (a line or two that stay warm), else from the table (`lut_size` must not be 0).
#[inline(always)]
pub fn pick_slot(svc: &ServiceValue) -> u32 {
    if svc.pick_len == 0 {
        return random_slot(svc);
    }
    // SAFETY: helper without preconditions.
    pick_base(svc.lut_size) + (unsafe { bpf_get_prandom_u32() }) % u32::from(svc.pick_len)
}

/// The backend in `slot` of `svc`'s table, with its id.
#[inline(always)]
pub fn slot_backend<A: Family>(svc: &ServiceValue, slot: u32) -> Option<(u32, Backend<A>)> {
    let chunk_idx = slot / LUT_CHUNK_SLOTS as u32;
    // SAFETY: one u32 is read out of the chunk at once; tables are replaced, never edited.
    let chunk = unsafe { LUT.get_value(&svc.svc_id, &chunk_idx) }?;
    // The mask keeps the index provably inside the chunk for the verifier.
    let idx = (slot as usize) & (LUT_CHUNK_SLOTS - 1);
    let id = *chunk.backend_ids.get(idx)?;
    Some((id, backend::<A>(id, svc.svc_id)?))
}

/// Records (or refreshes) a client's affinity to a backend.
#[inline(always)]
pub fn touch_affinity<A: Family>(key: &AffinityKey<A>, backend_id: u32, now: u32) {
    if !stats::live() {
        return;
    }
    let v = AffinityValue {
        backend_id,
        last_used: now,
    };
    let _ = A::affinity().insert(key, v, u64::from(BPF_ANY));
}
