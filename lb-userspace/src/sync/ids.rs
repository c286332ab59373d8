//! Id allocation for services and backends. Ids are never 0, never renumbered, and a released
//! id is reused as late as possible: the cursor only moves forward and wraps around, so an id
//! comes back only after the whole range was handed out (for backend ids, 2^32).

use std::collections::HashSet;

/// The id space is full.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {0} ids are in use")]
pub struct Exhausted(pub u64);

/// A cursor allocator over `[1, limit)`.
#[derive(Debug, Clone)]
pub struct IdAlloc {
    used: HashSet<u32>,
    next: u32,
    limit: u64,
}

impl IdAlloc {
    /// Ids in `[1, limit)`.
    pub fn new(limit: u64) -> Self {
        Self {
            used: HashSet::new(),
            next: 1,
            limit,
        }
    }

    /// Marks an id recovered from the maps as used; the cursor moves past it.
    pub fn adopt(&mut self, id: u32) {
        self.used.insert(id);
        if u64::from(id) + 1 < self.limit && id >= self.next {
            self.next = id + 1;
        }
    }

    /// Hands out the next free id.
    pub fn alloc(&mut self) -> Result<u32, Exhausted> {
        let span = self.limit - 1;
        if self.used.len() as u64 >= span {
            return Err(Exhausted(span));
        }
        loop {
            let id = self.next;
            self.next = if u64::from(id) + 1 >= self.limit {
                1
            } else {
                id + 1
            };
            if self.used.insert(id) {
                return Ok(id);
            }
        }
    }

    /// Returns an id to the pool.
    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }

    /// Ids in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_and_released_ids_come_back_last() {
        let mut a = IdAlloc::new(5);
        assert_eq!(a.alloc(), Ok(1));
        assert_eq!(a.alloc(), Ok(2));
        a.release(1);
        // 1 is free again but 3 and 4 are handed out first.
        assert_eq!(a.alloc(), Ok(3));
        assert_eq!(a.alloc(), Ok(4));
        assert_eq!(a.alloc(), Ok(1));
        assert_eq!(a.alloc(), Err(Exhausted(4)));
    }

    #[test]
    fn adopted_ids_are_skipped() {
        let mut a = IdAlloc::new(100);
        a.adopt(7);
        a.adopt(3);
        assert_eq!(a.alloc(), Ok(8));
        assert_eq!(a.in_use(), 3);
    }
}
