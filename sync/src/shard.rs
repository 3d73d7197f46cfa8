//! One shard of a table: a slab of entries with its [`Index`], a bounded capacity
//! with sampled least-recently-touched eviction, and the per-consumer logs of the change feed.
//!
//! A shard is only ever used under its table's per-shard mutex; nothing here blocks or
//! allocates beyond the entry being inserted (the slab and index are sized at creation, and
//! reserved pages are only backed by memory once touched).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use crate::entry::{Ctx, Entry};
use crate::index::Index;
use crate::key::Key;

/// Consumers of the change feed per table (one per peer session).
pub const MAX_CONSUMERS: usize = 64;

/// How many entries eviction compares to find the least recently touched one.
const EVICTION_SAMPLES: usize = 16;

/// An entry evicted to make room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Evicted {
    /// Milliseconds since any origin touched it.
    pub(crate) idle_ms: u32,
}

#[derive(Debug)]
pub(crate) struct Shard {
    index: Index,
    slots: Vec<Option<Entry>>,
    /// Per slot, one bit per change-feed consumer that has not taken the slot's local change.
    /// Kept per slot rather than per entry so that a slot freed and reused while dirty is never
    /// logged twice: each slot is in a consumer's log at most once, so a log never outgrows the
    /// shard, however long the consumer stalls.
    dirty: Vec<u64>,
    free: Vec<u32>,
    len: usize,
    cap: usize,
    /// Per consumer, the slots whose dirty bit for that consumer went from 0 to 1, oldest
    /// first. Taken in that order, every change waits at most one pass over the log however
    /// busy other keys are, and a key still being written is taken last, after its writes
    /// have had the longest to coalesce (newest first sent a key in the middle of a burst of
    /// writes, then sent it again).
    logs: Vec<VecDeque<u32>>,
    rng: u64,
}

impl Shard {
    pub(crate) fn new(cap: usize, seed: u64) -> Shard {
        Shard {
            index: Index::with_capacity(cap),
            slots: Vec::with_capacity(cap),
            dirty: Vec::with_capacity(cap),
            free: Vec::new(),
            len: 0,
            cap,
            logs: (0..MAX_CONSUMERS).map(|_| VecDeque::new()).collect(),
            rng: seed | 1,
        }
    }

    /// A clone of the index, for [`Index::touch`] outside the shard lock.
    pub(crate) fn index(&self) -> Index {
        self.index.clone()
    }

    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub(crate) fn find(&self, hash: u64, key: &Key) -> Option<u32> {
        self.index.find(hash, |s| {
            self.slots
                .get(s as usize)
                .and_then(Option::as_ref)
                .is_some_and(|e| e.key == *key)
        })
    }

    /// Finds the slot of `key`, trusting `hint` when it still holds the key.
    pub(crate) fn locate(&self, hint: u32, hash: u64, key: &Key) -> Option<u32> {
        match self.entry(hint) {
            Some(e) if e.key == *key => Some(hint),
            _ => self.find(hash, key),
        }
    }

    /// Whether the shard holds as many entries as its slab was sized for.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.cap
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts a new entry for `key` (absent). The caller makes room first when needed.
    pub(crate) fn insert(&mut self, hash: u64, key: Key) -> u32 {
        let entry = Entry::new(key);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                // The slab never holds more than `cap` (< 2^31, checked by the schema) slots.
                let s = self.slots.len() as u32;
                self.slots.push(Some(entry));
                self.dirty.push(0);
                s
            }
        };
        self.index.insert(hash, slot);
        self.len += 1;
        slot
    }

    /// Removes the entry in `slot`.
    pub(crate) fn remove<S: BuildHasher>(&mut self, hasher: &S, slot: u32) -> Option<Entry> {
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        let hash = hasher.hash_one(&entry.key);
        self.index.remove(hash, slot);
        self.free.push(slot);
        self.len -= 1;
        Some(entry)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: eviction sampling needs spread, not unpredictability.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Evicts the least recently touched entry among a sample of consecutive slots from a
    /// random start (all of them in a small shard): sampled LRU, as Redis does.
    pub(crate) fn evict_one<S: BuildHasher>(
        &mut self,
        hasher: &S,
        cx: &Ctx<'_>,
    ) -> Option<Evicted> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = (self.next_random() % n as u64) as usize;
        let mut best: Option<(u32, u32)> = None;
        for k in 0..EVICTION_SAMPLES.min(n) {
            let s = (start + k) % n;
            if let Some(e) = &self.slots[s] {
                let idle = e.idle(cx.layout, cx.now);
                if best.is_none_or(|(_, b)| idle > b) {
                    // s < n <= cap < 2^31.
                    best = Some((s as u32, idle));
                }
            }
        }
        let (slot, idle_ms) = best?;
        self.remove(hasher, slot)?;
        Some(Evicted { idle_ms })
    }

    /// Marks a local change of `slot` for every consumer in `mask`; returns the consumers for
    /// which the slot was not pending yet.
    pub(crate) fn mark_dirty(&mut self, slot: u32, mask: u64) -> u64 {
        let Some(bits) = self.dirty.get_mut(slot as usize) else {
            return 0;
        };
        let fresh = mask & !*bits;
        *bits |= mask;
        let mut todo = fresh;
        while todo != 0 {
            let c = todo.trailing_zeros() as usize;
            self.logs[c].push_back(slot);
            todo &= todo - 1;
        }
        fresh
    }

    /// Pops the next slot dirty for consumer `c`, clearing its bit.
    pub(crate) fn pop_dirty(&mut self, c: usize) -> Option<Option<u32>> {
        let slot = self.logs[c].pop_front()?;
        let bit = 1u64 << c;
        if let Some(bits) = self.dirty.get_mut(slot as usize) {
            *bits &= !bit;
        }
        // The entry may have been removed since; the caller skips an empty slot.
        Some(self.entry(slot).is_some().then_some(slot))
    }

    pub(crate) fn pending(&self, c: usize) -> usize {
        self.logs[c].len()
    }

    /// Forgets consumer `c`: its log and its bit in every entry.
    pub(crate) fn drop_consumer(&mut self, c: usize) {
        let bit = 1u64 << c;
        for slot in std::mem::take(&mut self.logs[c]) {
            if let Some(bits) = self.dirty.get_mut(slot as usize) {
                *bits &= !bit;
            }
        }
    }
}
