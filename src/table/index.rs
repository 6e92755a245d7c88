//! The index of a [`MemoryTable`](super::MemoryTable) shard: key hash → slot number.
//!
//! Open addressing with linear probing over `u64` buckets that hold both the upper 32 bits of
//! the key's hash and the slot number. A lookup reads one run of buckets, usually within one
//! cache line, and touches a slot only when the hash bits match: a hit costs the bucket line
//! and the slot line. (A Swiss table keeps its control bytes apart from its buckets, one more
//! memory access when the table is out of cache.)
//!
//! The bucket count is not a power of two (positions come from a multiply-shift of the hash),
//! so the table grows by a quarter at a time and its load stays between 60 % and 75 %:
//! 8 bytes per bucket is 10.7 to 13.3 bytes per key. Removal shifts later entries back
//! (no tombstones), so lookups never slow down with churn.

/// Empty bucket.
const EMPTY: u64 = 0;

/// The smallest table allocated.
const MIN_BUCKETS: usize = 16;

/// Grow when the load would pass 3/4.
fn too_full(len: usize, buckets: usize) -> bool {
    len * 4 > buckets * 3
}

/// The stored form of a hash: its upper 32 bits (the lower ones pick the shard).
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

fn bucket(tag: u32, slot: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(slot + 1)
}

fn tag_of(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

fn slot_of(bucket: u64) -> u32 {
    (bucket as u32) - 1
}

#[derive(Debug, Default)]
pub(super) struct Index {
    buckets: Vec<u64>,
    len: usize,
}

impl Index {
    /// The first position to probe for `tag`.
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.buckets.len() as u64) >> 32) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.buckets.len() {
            0
        } else {
            i + 1
        }
    }

    /// The slot whose key has `hash` and for which `is_key` holds.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let tag = tag(hash);
        let mut i = self.home(tag);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if tag_of(b) == tag && is_key(slot_of(b)) {
                return Some(slot_of(b));
            }
            i = self.next(i);
        }
    }

    /// The position of the bucket for exactly (`hash`, `slot`).
    fn position(&self, hash: u64, slot: u32) -> usize {
        let wanted = bucket(tag(hash), slot);
        let mut i = self.home(tag(hash));
        loop {
            let b = self.buckets[i];
            assert_ne!(b, EMPTY, "an indexed slot is in the index");
            if b == wanted {
                return i;
            }
            i = self.next(i);
        }
    }

    /// Indexes `slot` under `hash` (its key is not indexed yet).
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        if self.buckets.is_empty() || too_full(self.len + 1, self.buckets.len()) {
            self.grow();
        }
        self.place(bucket(tag(hash), slot));
        self.len += 1;
    }

    fn place(&mut self, b: u64) {
        let mut i = self.home(tag_of(b));
        while self.buckets[i] != EMPTY {
            i = self.next(i);
        }
        self.buckets[i] = b;
    }

    /// Grows by a quarter (the hash bits are stored: no key is read again).
    fn grow(&mut self) {
        let buckets = (self.buckets.len() + self.buckets.len() / 4).max(MIN_BUCKETS);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; buckets]);
        for b in old.into_iter().filter(|&b| b != EMPTY) {
            self.place(b);
        }
    }

    /// Removes the bucket of (`hash`, `slot`), moving later entries of its run back so that
    /// every entry stays reachable from its home (no tombstones).
    pub(super) fn remove(&mut self, hash: u64, slot: u32) {
        let mut hole = self.position(hash, slot);
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        let mut j = hole;
        loop {
            j = self.next(j);
            let b = self.buckets[j];
            if b == EMPTY {
                return;
            }
            let home = self.home(tag_of(b));
            // The entry at `j` stays if its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.buckets[hole] = b;
                self.buckets[j] = EMPTY;
                hole = j;
            }
        }
    }

    /// The slot indexed under `hash` moved from `from` to `to`.
    pub(super) fn repoint(&mut self, hash: u64, from: u32, to: u32) {
        let i = self.position(hash, from);
        self.buckets[i] = bucket(tag(hash), to);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A hash whose upper half is `tag` (collisions on purpose when tags repeat).
    fn h(tag: u32, low: u32) -> u64 {
        (u64::from(tag) << 32) | u64::from(low)
    }

    #[test]
    fn finds_what_it_holds_through_growth_and_removal() {
        let mut index = Index::default();
        let mut model = HashMap::new();
        // Few distinct tags: long runs, many equal tags, wrap-around at the end.
        for slot in 0..2000u32 {
            let hash = h(slot.wrapping_mul(2_654_435_761) % 97 * 44_281_337, slot);
            index.insert(hash, slot);
            model.insert(slot, hash);
        }
        for round in 0..3u32 {
            for slot in (round..2000).step_by(3) {
                if let Some(hash) = model.remove(&slot) {
                    index.remove(hash, slot);
                }
            }
            for (&slot, &hash) in &model {
                assert_eq!(index.find(hash, |s| s == slot), Some(slot));
            }
            assert_eq!(index.len(), model.len());
        }
        for slot in 0..2000u32 {
            if !model.contains_key(&slot) {
                let hash = h(slot.wrapping_mul(2_654_435_761) % 97 * 44_281_337, slot);
                assert_eq!(index.find(hash, |s| s == slot), None);
            }
        }
    }

    #[test]
    fn repoint_moves_one_entry() {
        let mut index = Index::default();
        index.insert(h(7, 0), 3);
        index.insert(h(7, 1), 4);
        index.repoint(h(7, 0), 3, 9);
        assert_eq!(index.find(h(7, 0), |s| s == 9), Some(9));
        assert_eq!(index.find(h(7, 0), |s| s == 3), None);
        assert_eq!(index.find(h(7, 1), |s| s == 4), Some(4));
    }

    #[test]
    fn load_stays_between_three_fifths_and_three_quarters_after_growth() {
        let mut index = Index::default();
        for slot in 0..100_000u32 {
            index.insert(h(slot.wrapping_mul(2_654_435_761), slot), slot);
            if slot > 100 {
                let load = index.len as f64 / index.buckets.len() as f64;
                assert!((0.59..=0.75).contains(&load), "load {load} at {slot}");
            }
        }
    }
}
