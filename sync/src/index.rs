//! A shard's index: from a key's hash to the key's slot in the shard's slab.
//!
//! Open addressing with linear probing over a bucket array sized once, at creation, to be at
//! most seven eighths full (a full table's shards average at most 0.82: they are sized with
//! room for uneven spread). Removal shifts the rest of the probe run back instead of leaving a
//! tombstone, so the array never fills with dead buckets and never needs rehashing: no insert
//! ever pays for more than its own probe. A bigger array would shorten probes but costs cache:
//! applying updates to a 100,000-entry table ran 40 % slower with twice the buckets.
//!
//! A bucket is one word: the low 32 bits of the key's hash, which name its home bucket and
//! filter out almost every other key before the slab is read, and its slot plus one (0 is
//! empty). Buckets are atomics so that [`Index::touch`] may read one without the shard lock:
//! a batch touches the buckets of its next keys before it locks and probes for the first,
//! and their cache misses overlap instead of following one another. Relaxed loads and stores
//! are plain moves; only the lock holder ever stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// See the module comment. Clones share the buckets: the shard owns the index, its table keeps
/// a clone to [`Index::touch`] with.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    /// A box in an arc, not an `Arc<[_]>`: only a box can be allocated zeroed without unsafe
    /// code, and building an `Arc<[_]>` writes every bucket (see [`Index::with_capacity`]).
    buckets: Arc<Box<[AtomicU64]>>,
    mask: usize,
}

/// Zero, so that a zeroed allocation is an empty index.
const EMPTY: u64 = 0;

fn tag(hash: u64) -> u64 {
    hash & 0xffff_ffff
}

impl Index {
    /// An index for up to `cap` (< 2^31) keys, with more buckets than that, so a probe always
    /// ends at an empty one. Allocated zeroed (all `EMPTY`) rather than written, so that pages
    /// are backed only once a bucket in them is used: a table sized for millions of entries
    /// costs memory only as it fills.
    pub(crate) fn with_capacity(cap: usize) -> Index {
        let n = (cap + cap / 7 + 1).next_power_of_two().max(8);
        Index {
            buckets: Arc::new(bytemuck::zeroed_slice_box(n)),
            mask: n - 1,
        }
    }

    fn home(&self, word: u64) -> usize {
        // The mask is below 2^32 (cap < 2^31), so the tag holds every bit it keeps.
        (word >> 32) as usize & self.mask
    }

    fn load(&self, i: usize) -> u64 {
        self.buckets[i].load(Relaxed)
    }

    fn store(&self, i: usize, word: u64) {
        self.buckets[i].store(word, Relaxed);
    }

    /// The slot of the key with `hash` for which `is_key` holds, if any.
    pub(crate) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let want = tag(hash);
        let mut i = hash as usize & self.mask;
        loop {
            let w = self.load(i);
            if w == EMPTY {
                return None;
            }
            // Occupied words hold slot + 1 >= 1 in their low half.
            if w >> 32 == want && is_key((w as u32).wrapping_sub(1)) {
                return Some((w as u32).wrapping_sub(1));
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Records `slot` for a key with `hash` that the index does not hold. The caller holds the
    /// shard lock, and a shard never holds more keys than its capacity (it evicts first), so
    /// an empty bucket exists.
    pub(crate) fn insert(&mut self, hash: u64, slot: u32) {
        let mut i = hash as usize & self.mask;
        while self.load(i) != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.store(i, tag(hash) << 32 | (u64::from(slot) + 1));
    }

    /// Forgets `slot`, held for a key with `hash`; returns whether it was there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let want = tag(hash) << 32 | (u64::from(slot) + 1);
        let mut i = hash as usize & self.mask;
        loop {
            let w = self.load(i);
            if w == EMPTY {
                return false;
            }
            if w == want {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward shift: move each later word of the run into the hole unless that would put
        // it before its home bucket, so every key stays reachable from its home without gaps.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let w = self.load(j);
            if w == EMPTY {
                break;
            }
            let home = self.home(w);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.store(hole, w);
                hole = j;
            }
        }
        self.store(hole, EMPTY);
        true
    }

    /// Reads the home bucket of `hash` so that it is in cache when the lock holder probes.
    /// Without the lock the word may be stale; it is only read, never trusted.
    pub(crate) fn touch(&self, hash: u64) {
        std::hint::black_box(self.load(hash as usize & self.mask));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sized_with_room_to_spare() {
        assert_eq!(Index::with_capacity(0).buckets.len(), 8);
        assert_eq!(Index::with_capacity(6).buckets.len(), 8);
        assert_eq!(Index::with_capacity(7).buckets.len(), 16);
        // The shards of a 1,048,576-entry table.
        assert_eq!(Index::with_capacity(17_416).buckets.len(), 32_768);
        for cap in [1usize, 5, 12, 13, 14, 100, 1000, 1792, 4097] {
            let n = Index::with_capacity(cap).buckets.len();
            assert!(cap * 8 <= n * 7, "cap {cap} in {n} buckets");
        }
    }

    #[test]
    fn runs_wrap_around_the_end() {
        let mut ix = Index::with_capacity(4);
        let last = ix.mask as u64;
        // Three keys whose home is the last bucket, and one whose home is bucket 0; their tags
        // differ above the mask.
        let keys = [
            (1 << 8 | last, 0),
            (2 << 8 | last, 1),
            (3 << 8 | last, 2),
            (4 << 8, 3),
        ];
        for (h, s) in keys {
            ix.insert(h, s);
        }
        for (h, s) in keys {
            assert_eq!(ix.find(h, |x| x == s), Some(s));
        }
        assert!(ix.remove(keys[0].0, 0));
        assert!(!ix.remove(keys[0].0, 0));
        for (h, s) in &keys[1..] {
            assert_eq!(ix.find(*h, |x| x == *s), Some(*s));
        }
        assert_eq!(ix.find(keys[0].0, |_| true), None);
    }

    proptest! {
        /// Any sequence of inserts and removals, with hashes crowded onto a few homes (runs,
        /// wrap-around, backward shifts), leaves the index answering as a map does.
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec((any::<bool>(), 0u64..40, 0u32..24), 1..400)) {
            const CAP: usize = 24;
            let mut ix = Index::with_capacity(CAP);
            prop_assert_eq!(ix.mask, 31);
            let mut model: HashMap<u32, u64> = HashMap::new();
            for (insert, h, slot) in ops {
                // Six homes around the end of the array (32 buckets), with tags that differ
                // above the mask for some keys of one home and not for others.
                let hash = (h % 5) << 32 | [28, 29, 30, 31, 0, 1][(h % 6) as usize] | (h / 6) << 5;
                if insert {
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(slot) {
                        ix.insert(hash, slot);
                        v.insert(hash);
                    }
                } else if let Some(held) = model.remove(&slot) {
                    prop_assert!(ix.remove(held, slot));
                    prop_assert_eq!(ix.find(held, |x| x == slot), None);
                }
                for (&s, &hh) in &model {
                    prop_assert_eq!(ix.find(hh, |x| x == s), Some(s));
                }
                let used = ix.buckets.iter().filter(|b| b.load(Relaxed) != EMPTY).count();
                prop_assert_eq!(used, model.len());
            }
        }
    }
}
