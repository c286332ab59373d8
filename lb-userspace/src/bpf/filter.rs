//! The address filters (`xlb_fe_filter`, `xlb_be_filter`): bitmaps the datapath tests before
//! its hash lookups, so a packet that is neither to a frontend nor from a backend (most of a
//! node's traffic) costs two array reads instead of two hash misses.
//!
//! A set bit with nothing behind it (a collision, a key just removed) only costs a lookup; a
//! clear bit with a key behind it would hide a Service. So a key's bit is set before the key is
//! written and cleared only after the last key behind it is deleted: this module counts keys
//! per bit. The bitmap is shared with the kernel through a mapping of the (mmapable) array and
//! changed with atomic or/and, so a concurrent reader sees every other bit as it was.
//!
//! Behind the backend filter, the NAT'd-backends slots (`xlb_be_nat`, one per word of the
//! backend filter): the datapath raises a slot before it records a translated flow to a backend
//! of that word, and tests it before the reply lookup, so a backend only ever reached through
//! socket-level load balancing (its packets carry no translation) skips that lookup too. This
//! module zeroes a slot only when its backend-filter word is empty: with no backend behind it,
//! the backend filter already stops the lookup.

use crate::addr::{WideBackend, WideKey, filter_addr};
use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use lb_common::filter;

use super::mmap::Mapping;

/// One filter: its shared words and the number of keys behind each set bit.
pub struct AddrFilter {
    /// `filter::WORDS` words mapped from the array.
    words: Mapping,
    /// Keys per bit (absent = 0).
    counts: HashMap<u32, u32>,
}

impl AddrFilter {
    /// Maps `map` (an mmapable array of `filter::WORDS` u64). The bits are left as they are.
    pub fn open(map: &MapData) -> std::io::Result<Self> {
        Ok(Self {
            words: Mapping::array(map, filter::WORDS, 8, "address filter")?,
            counts: HashMap::new(),
        })
    }

    fn word(&self, bit: u32) -> (&AtomicU64, u64) {
        // SAFETY: u64 words at page alignment, changed by nobody but through these atomics.
        let words = unsafe { self.words.slice::<AtomicU64>() };
        (
            &words[(bit >> 6) as usize % words.len()],
            1u64 << (bit & 63),
        )
    }

    /// One more key behind `bit` (set it before writing the key).
    pub fn add(&mut self, bit: u32) {
        let n = self.counts.entry(bit).or_insert(0);
        *n += 1;
        if *n == 1 {
            let (w, m) = self.word(bit);
            w.fetch_or(m, Ordering::SeqCst);
        }
    }

    /// One key fewer behind `bit` (after the key is deleted); the last one clears it.
    pub fn remove(&mut self, bit: u32) {
        let Some(n) = self.counts.get_mut(&bit) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.counts.remove(&bit);
            let (w, m) = self.word(bit);
            w.fetch_and(!m, Ordering::SeqCst);
        }
    }

    /// Makes the filter hold exactly `bits` (each counted once per occurrence): set what is
    /// missing first, then clear the bits nothing is behind (left by a crash, say).
    pub fn reset(&mut self, bits: impl IntoIterator<Item = u32>) {
        self.counts.clear();
        for b in bits {
            self.add_count(b);
        }
        let mut want = vec![0u64; filter::WORDS as usize];
        for b in self.counts.keys() {
            want[(*b >> 6) as usize % filter::WORDS as usize] |= 1u64 << (b & 63);
        }
        for (i, m) in want.iter().enumerate() {
            let (w, _) = self.word((i as u32) << 6);
            w.fetch_or(*m, Ordering::SeqCst);
        }
        for (i, m) in want.iter().enumerate() {
            let (w, _) = self.word((i as u32) << 6);
            w.fetch_and(*m, Ordering::SeqCst);
        }
    }

    fn add_count(&mut self, bit: u32) {
        *self.counts.entry(bit).or_insert(0) += 1;
    }

    /// True if `bit` is set in the shared map.
    pub fn is_set(&self, bit: u32) -> bool {
        let (w, m) = self.word(bit);
        w.load(Ordering::SeqCst) & m != 0
    }

    /// True if any bit of `bit`'s word is set in the shared map.
    pub fn word_set(&self, bit: u32) -> bool {
        self.word(bit).0.load(Ordering::SeqCst) != 0
    }

    /// Bits set in the shared map.
    pub fn set_bits(&self) -> u32 {
        (0..filter::WORDS)
            .map(|i| self.word(i << 6).0.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}

/// The NAT'd-backends slots: slot `i` covers word `i` of the backend filter.
pub struct NatSlots {
    /// `filter::NAT_VALUES` values of `filter::NAT_SLOTS_PER_VALUE` u64, mapped.
    slots: Mapping,
}

// `Filters::forget_nat` zeroes a slot when its one backend-filter word is empty: a slot
// covering several words would need all of them checked.
const _: () = assert!(filter::BITS_PER_NAT_SLOT == 64);

impl NatSlots {
    /// Maps `map` (an mmapable array of `filter::NAT_VALUES` 64-byte values).
    pub fn open(map: &MapData) -> std::io::Result<Self> {
        Ok(Self {
            slots: Mapping::array(map, filter::NAT_VALUES, 64, "NAT slots map")?,
        })
    }

    fn slot(&self, slot: u32) -> &AtomicU64 {
        // SAFETY: u64 slots at page alignment, changed only through atomics (here and by the
        // datapath's atomic add).
        let slots = unsafe { self.slots.slice::<AtomicU64>() };
        &slots[slot as usize % slots.len()]
    }

    /// True if `slot` is raised.
    pub fn is_set(&self, slot: u32) -> bool {
        self.slot(slot).load(Ordering::SeqCst) != 0
    }

    /// Raises `slot` (a backend behind it may have translated flows).
    pub fn mark(&self, slot: u32) {
        self.slot(slot).fetch_or(1, Ordering::SeqCst);
    }

    /// Zeroes `slot`.
    pub fn clear(&self, slot: u32) {
        self.slot(slot).store(0, Ordering::SeqCst);
    }

    /// Slots raised.
    pub fn set_slots(&self) -> u32 {
        (0..1u32 << filter::NAT_SLOTS_LOG2)
            .filter(|s| self.is_set(*s))
            .count() as u32
    }
}

/// The two filters, the NAT'd-backends slots behind the second, and the keys behind the bits,
/// as the agent wrote them.
pub struct Filters {
    pub frontends: AddrFilter,
    pub backends: AddrFilter,
    pub nat: NatSlots,
    /// Frontend keys written (several scopes share a bit).
    fe_keys: HashMap<WideKey, u32>,
    /// Backend id → its bit.
    be_keys: HashMap<u32, u32>,
}

/// A backend write in progress (see `Filters::backend_coming`).
#[must_use]
pub struct PendingBackend {
    id: u32,
    /// Its bit once written.
    bit: u32,
    /// Its bit before, if it was in the map.
    old: Option<u32>,
    /// Whether `bit` was counted for it now.
    added: bool,
}

/// The bit of a frontend key.
pub fn frontend_bit(key: &WideKey) -> u32 {
    filter::bit(filter_addr(&key.addr), key.port, key.proto)
}

/// The bit of a backend.
pub fn backend_bit(be: &WideBackend) -> u32 {
    filter::bit(filter_addr(&be.addr), be.port, 0)
}

impl Filters {
    /// Opens both filters and makes them hold exactly the keys now in the maps; zeroes the
    /// NAT slots with no backend behind them.
    pub fn adopt(
        fe_map: &MapData,
        be_map: &MapData,
        nat_map: &MapData,
        frontends: impl IntoIterator<Item = WideKey>,
        backends: impl IntoIterator<Item = (u32, WideBackend)>,
    ) -> std::io::Result<Self> {
        let mut f = Self {
            frontends: AddrFilter::open(fe_map)?,
            backends: AddrFilter::open(be_map)?,
            nat: NatSlots::open(nat_map)?,
            fe_keys: frontends
                .into_iter()
                .map(|k| (k, frontend_bit(&k)))
                .collect(),
            be_keys: backends
                .into_iter()
                .map(|(id, b)| (id, backend_bit(&b)))
                .collect(),
        };
        f.frontends.reset(f.fe_keys.values().copied());
        f.backends.reset(f.be_keys.values().copied());
        for slot in 0..1u32 << filter::NAT_SLOTS_LOG2 {
            f.forget_nat(slot * filter::BITS_PER_NAT_SLOT);
        }
        Ok(f)
    }

    /// After backend-filter bit `bit` was cleared: its NAT slot goes with the last bit of it.
    fn forget_nat(&mut self, bit: u32) {
        if !self.backends.word_set(bit) {
            self.nat.clear(filter::nat_slot(bit));
        }
    }

    /// One backend key fewer behind `bit`.
    fn drop_backend_bit(&mut self, bit: u32) {
        self.backends.remove(bit);
        self.forget_nat(bit);
    }

    /// Before writing frontend `key`: its bit is set. Returns whether the key is new (to undo
    /// with `frontend_gone` if the write fails).
    pub fn frontend_coming(&mut self, key: &WideKey) -> bool {
        if self.fe_keys.contains_key(key) {
            return false;
        }
        let bit = frontend_bit(key);
        self.fe_keys.insert(*key, bit);
        self.frontends.add(bit);
        true
    }

    /// After deleting frontend `key`.
    pub fn frontend_gone(&mut self, key: &WideKey) {
        if let Some(bit) = self.fe_keys.remove(key) {
            self.frontends.remove(bit);
        }
    }

    /// Before writing backend `id`: its bit is set. Hand the result to `backend_written`.
    pub fn backend_coming(&mut self, id: u32, be: &WideBackend) -> PendingBackend {
        let bit = backend_bit(be);
        let old = self.be_keys.insert(id, bit);
        let added = old != Some(bit);
        if added {
            self.backends.add(bit);
        }
        PendingBackend {
            id,
            bit,
            old,
            added,
        }
    }

    /// After backend `p.id`'s write: on success its previous bit (if another) goes; on failure
    /// everything is as before.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the pending write is used up: it cannot be completed twice"
    )]
    pub fn backend_written(&mut self, p: PendingBackend, ok: bool) {
        if !p.added {
            return;
        }
        if ok {
            if let Some(old) = p.old {
                self.drop_backend_bit(old);
            }
            return;
        }
        self.drop_backend_bit(p.bit);
        match p.old {
            Some(old) => self.be_keys.insert(p.id, old),
            None => self.be_keys.remove(&p.id),
        };
    }

    /// After deleting backend `id`.
    pub fn backend_gone(&mut self, id: u32) {
        if let Some(bit) = self.be_keys.remove(&id) {
            self.drop_backend_bit(bit);
        }
    }
}
