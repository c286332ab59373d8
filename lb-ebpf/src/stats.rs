//! Counting (never logging) on the hot path: global per-reason counters, per-service counters,
//! opt-in events for `xlb monitor`, and the decision trace of the `xlb explain` program copy.

use aya_ebpf::{Global, helpers::bpf_ktime_get_ns};
use lb_common::{Config, Event, Trace, config_flags, counter, event_kind};

use crate::{
    family::Family,
    maps::{COUNTERS, EVENTS, SVC_STATS, TRACE},
    parse::Flow,
};

/// Set to 1 by the loader only in the private program copy that `xlb explain` runs with
/// BPF_PROG_TEST_RUN: that copy records its decision in `xlb_trace` and writes no other map
/// (conntrack, affinity, counters), so explaining a packet never disturbs live state. In the
/// attached programs it is 0 and the verifier prunes every branch that depends on it.
#[unsafe(no_mangle)]
static TRACE_MODE: Global<u8> = Global::new(0);

/// True in the attached programs, false in the `xlb explain` copy.
#[inline(always)]
pub fn live() -> bool {
    TRACE_MODE.load() == 0
}

/// Adds one to a global counter.
#[inline(always)]
pub fn count(index: u32) {
    count_n(index, 1);
}

/// Adds `n` to a global counter.
#[inline(always)]
pub fn count_n(index: u32, n: u64) {
    if !live() {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += n };
    }
}

/// Which per-service counter to bump.
#[derive(Clone, Copy)]
pub enum SvcCounter {
    Fwd,
    Rev,
    NewFlow,
    Drop,
}

/// Adds a packet (and its bytes) to a service's counters.
#[inline(always)]
pub fn svc(svc_id: u32, which: SvcCounter, bytes: u32) {
    if !live() {
        return;
    }
    if let Some(s) = SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let s = unsafe { &mut *s };
        match which {
            SvcCounter::Fwd => {
                s.fwd_packets += 1;
                s.fwd_bytes += u64::from(bytes);
            }
            SvcCounter::Rev => {
                s.rev_packets += 1;
                s.rev_bytes += u64::from(bytes);
            }
            SvcCounter::NewFlow => s.new_flows += 1,
            SvcCounter::Drop => s.drops += 1,
        }
    }
}

/// Emits an event if a monitor asked for this kind (one flag test when nobody watches).
#[inline(always)]
pub fn event<A: Family>(
    cfg: &Config,
    hook: u8,
    kind: u8,
    flow: &Flow<A>,
    fill: impl FnOnce(&mut Event<A>),
) {
    let wanted = match kind {
        event_kind::DROP => config_flags::MONITOR_DROPS,
        _ => config_flags::MONITOR_FLOWS,
    };
    if cfg.flags & wanted == 0 || !live() {
        return;
    }
    // Written straight into the ring buffer (no copy of the event on the stack); a full
    // ring buffer loses the event, never the packet.
    let Some(mut entry) = EVENTS.reserve_untyped::<Event<A>>(0) else {
        return;
    };
    let ev = entry.write(Event {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        kind,
        hook,
        proto: flow.proto,
        selection: 0,
        reason: 0,
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        svc_id: 0,
        backend_id: 0,
        backend_addr: A::ZERO,
        backend_port: 0,
        _pad: Default::default(),
    });
    fill(ev);
    entry.submit(0);
}

/// Updates the explain trace (only in the `xlb explain` program copy).
#[inline(always)]
pub fn trace(update: impl FnOnce(&mut Trace)) {
    if live() {
        return;
    }
    if let Some(t) = TRACE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of the explain run.
        update(unsafe { &mut *t });
    }
}

/// Counts a drop under its reason.
#[inline(always)]
pub fn drop_reason(reason: u32) {
    count(counter::DROP_BASE + reason);
}
