//! A stick table: a fixed number of shards, each behind its own short-held mutex, so the
//! request path never takes a table-wide lock and two cores rarely meet on one shard.
//!
//! The hot path is [`Table::track`] (find or create the entry of a key) followed by
//! [`Table::record`] and [`Table::read`] through the returned [`Tracked`] handle, which
//! remembers the entry's slot so later calls skip the hash lookup. Replication uses
//! [`Table::apply`], the change feed ([`Table::subscribe`], [`Table::take_changes`]) and
//! [`Table::snapshot_chunk`]; the node's sweeper calls [`Table::sweep`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use foldhash::fast::RandomState;
use parking_lot::Mutex;
use std::hash::BuildHasher;

use crate::clock::{Hlc, Stamp, Tick};
use crate::entry::{Ctx, Entry, Event};
use crate::index::Index;
use crate::key::Key;
use crate::layout::{self, Cell, Layout};
use crate::origin::{OriginId, Origins};
use crate::schema::{DataType, Kind, TableSchema};
use crate::shard::{Evicted, MAX_CONSUMERS, Shard};
use crate::wire::Checked;
use sluice_proto::sync::v1 as pb;

/// What applying a contribution did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The contribution replaced an older one (or was the first from its origin).
    Updated,
    /// The table already holds this version or a newer one from the origin.
    Stale,
    /// The contribution was untouched for longer than the table's `expire`.
    Expired,
}

/// Most shards a table has; a power of two.
const MAX_SHARDS: usize = 64;

/// An undersized table is logged at most this often.
const UNDERSIZED_LOG_INTERVAL_MS: u32 = 10_000;

/// A shard on its own cache lines, so two cores updating neighbouring shards do not bounce one
/// line between them, and a clone of its index to touch without the lock ([`Table::apply_all`]).
#[repr(align(128))]
#[derive(Debug)]
struct Padded(Mutex<Shard>, Index);

/// A handle on a tracked entry: the key and where its entry was last seen.
#[derive(Clone, Debug)]
pub struct Tracked {
    key: Key,
    hash: u64,
    slot: u32,
}

impl Tracked {
    /// The tracked key.
    pub fn key(&self) -> &Key {
        &self.key
    }
}

/// A consumer of the change feed (one per peer session). Give it back with
/// [`Table::unsubscribe`] when the session ends.
#[derive(Debug)]
pub struct Consumer {
    id: usize,
    next_shard: usize,
}

/// The feed has no room for another consumer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedError {
    /// All consumer slots are taken.
    #[error("too many change-feed consumers (at most {MAX_CONSUMERS} peers)")]
    Full,
    /// The consumer id asked for is in use or out of range.
    #[error("change-feed consumer {0} is taken or out of range")]
    Taken(usize),
    /// The table is not replicated (`sync = false`).
    #[error("table `{0}` is not replicated")]
    NotReplicated(String),
}

/// An admin write that the table cannot take.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetError {
    /// The table does not store the type.
    #[error("table `{table}` does not store `{ty}`")]
    NotStored {
        /// The table.
        table: String,
        /// The type.
        ty: DataType,
    },
    /// Rates and gauges are measured, not set.
    #[error("`{0}` is measured from traffic and cannot be set (use `table clear` to reset it)")]
    NotSettable(DataType),
}

/// Where an iteration over a table stands.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    shard: usize,
    slot: usize,
}

impl Cursor {
    /// A cursor at the start of the table.
    pub fn new() -> Cursor {
        Cursor::default()
    }

    /// Whether the iteration has passed the last shard.
    pub fn is_done(&self) -> bool {
        self.shard >= MAX_SHARDS
    }
}

/// Counters of what happened to a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Entries held now.
    pub entries: usize,
    /// Entries evicted to make room since the table was created.
    pub evictions: u64,
    /// Of those, entries evicted before their `expire`: the table is too small.
    pub evictions_unexpired: u64,
    /// Entries removed because they expired.
    pub expired: u64,
}

/// The merged view of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// The key.
    pub key: Key,
    /// Milliseconds since any origin touched it.
    pub idle_ms: u32,
    /// Each stored type with its fleet-merged value (`None`: an unset register).
    pub values: Vec<(DataType, Option<u64>)>,
    /// Each origin's own contribution, when asked for.
    pub origins: Vec<OriginView>,
}

/// One origin's contribution to an entry, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginView {
    /// The origin.
    pub origin: OriginId,
    /// Its version.
    pub version: u64,
    /// Milliseconds since it touched the entry.
    pub idle_ms: u32,
    /// The reset it counts from.
    pub epoch: Stamp,
    /// Its own value of each stored type.
    pub values: Vec<(DataType, Option<u64>)>,
}

/// A stick table.
#[derive(Debug)]
pub struct Table {
    schema: TableSchema,
    layout: Layout,
    shards: Box<[Padded]>,
    shard_mask: usize,
    /// foldhash, seeded per table: fast on short keys, and keys come from clients.
    hasher: RandomState,
    origins: Arc<Origins>,
    hlc: Arc<Hlc>,
    /// Consumers whose bit a local change sets; read under each shard lock.
    active: AtomicU64,
    /// Consumer ids handed out (an id returns only after its bits are cleared everywhere).
    allocated: Mutex<u64>,
    entries: AtomicUsize,
    evictions: AtomicU64,
    evictions_unexpired: AtomicU64,
    expired: AtomicU64,
    /// `1 << 32 | tick` of the last undersized warning, 0 if none.
    warned: AtomicU64,
    /// Called, outside the shard lock, with the consumers that have a newly logged change, so
    /// an idle replication session wakes up without polling.
    listener: ListenerSlot,
}

/// A change listener: receives the mask of consumers with newly pending changes.
pub type Listener = Arc<dyn Fn(u64) + Send + Sync>;

struct ListenerSlot(OnceLock<Listener>);

impl std::fmt::Debug for ListenerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Listener(set)"
        } else {
            "Listener(unset)"
        })
    }
}

impl Table {
    /// An empty table. `origins` and `hlc` are the node's, shared by all its tables.
    pub fn new(schema: TableSchema, origins: Arc<Origins>, hlc: Arc<Hlc>) -> Table {
        let n = shard_count(schema.size);
        let hasher = RandomState::default();
        let shards = (0..n)
            .map(|i| {
                // Hashing spreads keys unevenly over shards, so each shard may hold a little
                // more than its share; the table-wide bound is enforced by `entries`.
                let share = schema.size / n + usize::from(i < schema.size % n);
                let cap = (share + share / 16 + 8).min(schema.size);
                let shard = Shard::new(cap, hasher.hash_one(i) | 1);
                let index = shard.index();
                Padded(Mutex::new(shard), index)
            })
            .collect();
        Table {
            layout: Layout::new(&schema),
            schema,
            shards,
            shard_mask: n - 1,
            hasher,
            origins,
            hlc,
            active: AtomicU64::new(0),
            allocated: Mutex::new(0),
            entries: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            evictions_unexpired: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            warned: AtomicU64::new(0),
            listener: ListenerSlot(OnceLock::new()),
        }
    }

    /// The table's schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.schema.name
    }

    /// The node's origins.
    pub fn origins(&self) -> &Arc<Origins> {
        &self.origins
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What happened to the table so far.
    pub fn stats(&self) -> TableStats {
        TableStats {
            entries: self.len(),
            evictions: self.evictions.load(Ordering::Relaxed),
            evictions_unexpired: self.evictions_unexpired.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }

    fn cx(&self, now: Tick) -> Ctx<'_> {
        Ctx {
            layout: &self.layout,
            origins: &self.origins,
            now,
            expire: self.schema.expire_ms,
        }
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn padded(&self, hash: u64) -> &Padded {
        // Bits 40.. pick the shard: the index uses the low 32 for the bucket and its tag, so
        // every shard keeps their full spread.
        &self.shards[(hash >> 40) as usize & self.shard_mask]
    }

    fn shard_of(&self, hash: u64) -> &Mutex<Shard> {
        &self.padded(hash).0
    }

    /// Finds or creates the entry of `key` for a local write, runs `f` on it, and marks the
    /// change for the feed. Creating may evict the least recently touched entry of the shard.
    fn write_local<R>(
        &self,
        t: &mut Tracked,
        now: Tick,
        f: impl FnOnce(&mut Entry, &Ctx<'_>) -> R,
    ) -> R {
        let cx = self.cx(now);
        let mut shard = self.shard_of(t.hash).lock();
        let slot = match shard.locate(t.slot, t.hash, &t.key) {
            Some(s) => s,
            None => self.insert(&mut shard, t.hash, t.key.clone(), &cx),
        };
        t.slot = slot;
        // Invariant: `locate`/`insert` returned an occupied slot and the lock is still held.
        let entry = shard.entry_mut(slot).expect("slot is occupied");
        let r = f(entry, &cx);
        if self.schema.sync {
            let fresh = shard.mark_dirty(slot, self.active.load(Ordering::Acquire));
            drop(shard);
            self.notify(fresh);
        }
        r
    }

    fn notify(&self, fresh: u64) {
        if fresh != 0
            && let Some(l) = self.listener.0.get()
        {
            l(fresh);
        }
    }

    /// Whether a replication session consumes this table's changes, so that a write wakes a
    /// sender.
    pub fn has_feed(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// Installs the change listener (once; later calls are ignored).
    pub fn set_listener(&self, l: Listener) {
        let _ = self.listener.0.set(l);
    }

    /// Inserts an absent key into its (locked) shard, first evicting an entry if the table is
    /// at `size` or the shard at its capacity. `entries` is the table-wide bound: a place is
    /// reserved in it before inserting, so concurrent inserts in other shards never take the
    /// table past `size`.
    fn insert(&self, shard: &mut Shard, hash: u64, key: Key, cx: &Ctx<'_>) -> u32 {
        let size = self.schema.size;
        let reserved = self
            .entries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < size).then_some(n + 1)
            })
            .is_ok();
        if !reserved || shard.is_full() {
            let evicted = match shard.evict_one(&self.hasher, cx) {
                Some(ev) => Some(ev),
                None => self.evict_elsewhere(hash, cx),
            };
            match evicted {
                Some(ev) => {
                    // Reserved: one in, one out. Not reserved: the eviction's place is ours.
                    if reserved {
                        self.entries.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.count_eviction(ev, cx.now);
                }
                None if !reserved => {
                    // Unreachable in practice: the table is full, so some shard holds an entry
                    // that a bounded number of non-blocking attempts failed to reach.
                    self.entries.fetch_add(1, Ordering::AcqRel);
                    tracing::error!(table = %self.schema.name, "could not evict; table exceeds its size by one");
                }
                None => {}
            }
        }
        shard.insert(hash, key)
    }

    /// Evicts from a shard other than the one of `hash`, which is locked by the caller and
    /// empty. Only `try_lock` is used while holding a shard, so this can never deadlock.
    fn evict_elsewhere(&self, hash: u64, cx: &Ctx<'_>) -> Option<Evicted> {
        let own = (hash >> 40) as usize & self.shard_mask;
        for round in 0..1000 {
            for j in 1..self.shards.len() {
                let i = (own + j) & self.shard_mask;
                if let Some(mut other) = self.shards[i].0.try_lock()
                    && !other.is_empty()
                {
                    return other.evict_one(&self.hasher, cx);
                }
            }
            if round > 0 {
                std::thread::yield_now();
            }
        }
        None
    }

    fn count_eviction(&self, ev: Evicted, now: Tick) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        if ev.idle_ms < self.schema.expire_ms {
            self.evictions_unexpired.fetch_add(1, Ordering::Relaxed);
            let last = self.warned.load(Ordering::Relaxed);
            let due = last == 0 || now.since(Tick(last as u32)) >= UNDERSIZED_LOG_INTERVAL_MS;
            if due
                && self
                    .warned
                    .compare_exchange(
                        last,
                        1 << 32 | u64::from(now.0),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    table = %self.schema.name,
                    size = self.schema.size,
                    evicted.idle_ms = ev.idle_ms,
                    expire_ms = self.schema.expire_ms,
                    "table is undersized: evicting entries before they expire; raise its size"
                );
            }
        }
    }

    /// A handle on `key` without touching the table. Its first write creates the entry.
    pub fn handle(&self, key: Key) -> Tracked {
        Tracked {
            hash: self.hash(&key),
            key,
            slot: u32::MAX,
        }
    }

    /// Finds or creates the entry of `key` and touches it: the `track-sc` of a rule.
    pub fn track(&self, key: Key, now: Tick) -> Tracked {
        let mut t = self.handle(key);
        self.write_local(&mut t, now, |e, cx| e.touch(cx));
        t
    }

    /// Records a local event on a tracked entry (re-creating it if it was evicted meanwhile).
    pub fn record(&self, t: &mut Tracked, ev: Event, now: Tick) {
        self.write_local(t, now, |e, cx| e.record(cx, ev));
    }

    /// Writes a register (`server_id`, `gpt0`) of a tracked entry. `wall_ms` is the node's
    /// wall clock, for the write's stamp. Returns the fleet-merged value just before the write,
    /// read under the same lock (`None`: unset, so this write is the first). Does nothing and
    /// returns `None` if the table does not store `ty`.
    pub fn set_register(
        &self,
        t: &mut Tracked,
        ty: DataType,
        value: u64,
        wall_ms: u64,
        now: Tick,
    ) -> Option<u64> {
        let f = self
            .layout
            .field(ty)
            .filter(|f| f.cell == Cell::Register)
            .copied()?;
        let stamp = self.hlc.stamp(wall_ms);
        self.write_local(t, now, |e, cx| {
            let before = e.read(cx, &f);
            e.set_register(cx, &f, value, stamp);
            before
        })
    }

    /// The fleet-merged value of `ty` for a tracked entry at `now`. `None` if the table does
    /// not store `ty`, the register is unset, or the entry is gone.
    pub fn read(&self, t: &mut Tracked, ty: DataType, now: Tick) -> Option<u64> {
        self.read_with(t, ty, |read| read(now)).flatten()
    }

    /// Reads `ty` of a tracked entry at several ticks under one lock: `f` gets a reader of
    /// the fleet-merged value at a tick (for working out when a rate falls below a limit).
    /// `None` if the table does not store `ty` or the entry is gone.
    pub fn read_with<R>(
        &self,
        t: &mut Tracked,
        ty: DataType,
        f: impl FnOnce(&dyn Fn(Tick) -> Option<u64>) -> R,
    ) -> Option<R> {
        let field = self.layout.field(ty)?;
        let shard = self.shard_of(t.hash).lock();
        let slot = shard.locate(t.slot, t.hash, &t.key)?;
        t.slot = slot;
        let entry = shard.entry(slot)?;
        Some(f(&|at| entry.read(&self.cx(at), field)))
    }

    /// The fleet-merged value of `ty` for `key`, without creating anything.
    pub fn read_key(&self, key: &Key, ty: DataType, now: Tick) -> Option<u64> {
        let mut t = self.handle(key.clone());
        self.read(&mut t, ty, now)
    }

    /// Sets a field from the admin API: a register is written with a fresh stamp; a counter is
    /// moved so the fleet-wide value becomes `value` (increments made concurrently elsewhere
    /// still add to it). Rates and gauges are measured and cannot be set.
    pub fn set(
        &self,
        key: Key,
        ty: DataType,
        value: u64,
        wall_ms: u64,
        now: Tick,
    ) -> Result<(), SetError> {
        let f = *self.layout.field(ty).ok_or_else(|| SetError::NotStored {
            table: self.schema.name.clone(),
            ty,
        })?;
        let mut t = self.handle(key);
        match f.cell {
            Cell::Register => {
                let stamp = self.hlc.stamp(wall_ms);
                self.write_local(&mut t, now, |e, cx| e.set_register(cx, &f, value, stamp));
            }
            Cell::Counter => self.write_local(&mut t, now, |e, cx| e.set_counter(cx, &f, value)),
            Cell::Rate { .. } | Cell::Gauge => return Err(SetError::NotSettable(ty)),
        }
        Ok(())
    }

    /// Clears one key fleet-wide: a reset stamped now, which wins over every counter, rate and
    /// register write made before it on any node once it has replicated. Gauges (live
    /// connections) are facts, not history, and stay.
    pub fn clear_key(&self, key: Key, wall_ms: u64, now: Tick) {
        let stamp = self.hlc.stamp(wall_ms);
        let mut t = self.handle(key);
        self.write_local(&mut t, now, |e, cx| e.clear(cx, stamp));
    }

    /// Clears every entry the node holds, one shard at a time, with one stamp. Returns how
    /// many entries were cleared.
    pub fn clear_all(&self, wall_ms: u64, now: Tick) -> usize {
        let stamp = self.hlc.stamp(wall_ms);
        let cx = self.cx(now);
        let mut n = 0;
        for p in self.shards.iter() {
            let mut shard = p.0.lock();
            let mask = self.active.load(Ordering::Acquire);
            let mut fresh = 0;
            for slot in 0..shard.slot_count() as u32 {
                if let Some(e) = shard.entry_mut(slot) {
                    e.clear(&cx, stamp);
                    n += 1;
                    if self.schema.sync {
                        fresh |= shard.mark_dirty(slot, mask);
                    }
                }
            }
            drop(shard);
            self.notify(fresh);
        }
        n
    }

    /// Applies a remote origin's contribution, checked against this table's schema
    /// ([`crate::wire::check`]). Idempotent and order-insensitive: a version not newer than the
    /// one held is ignored.
    pub fn apply(&self, origin: OriginId, checked: &Checked<'_>, now: Tick) -> Applied {
        self.apply_hashed(origin, checked, self.hash(checked.key()), now)
    }

    /// Applies a run of contributions from one origin, as [`Table::apply`] does each.
    ///
    /// Applying a peer's snapshot to a restarted node is mostly inserting new keys, and each
    /// insert's probe is a cache miss in an index far larger than the cache. Reading the index
    /// buckets of the next few keys back to back, before probing for the first, lets those
    /// misses overlap: the batch waits for memory about once per group instead of per key.
    pub fn apply_all(&self, origin: OriginId, run: &[Checked<'_>], now: Tick) {
        const GROUP: usize = 8;
        let mut hashes = [0u64; GROUP];
        for group in run.chunks(GROUP) {
            for (h, c) in hashes.iter_mut().zip(group) {
                *h = self.hash(c.key());
            }
            for h in &hashes[..group.len()] {
                self.padded(*h).1.touch(*h);
            }
            for (h, c) in hashes.iter().zip(group) {
                self.apply_hashed(origin, c, *h, now);
            }
        }
    }

    fn apply_hashed(
        &self,
        origin: OriginId,
        checked: &Checked<'_>,
        hash: u64,
        now: Tick,
    ) -> Applied {
        let c = checked.contribution();
        if c.idle_ms >= self.schema.expire_ms {
            return Applied::Expired;
        }
        // Later local stamps must exceed every stamp seen (registers, resets).
        let seen = c.data.iter().map(|d| d.stamp).fold(c.epoch, u64::max);
        if seen != 0 {
            self.hlc.observe(seen);
        }
        let cx = self.cx(now);
        let key = checked.key();
        let mut shard = self.shard_of(hash).lock();
        let slot = match shard.find(hash, key) {
            Some(s) => s,
            None => self.insert(&mut shard, hash, key.clone(), &cx),
        };
        let Some(entry) = shard.entry_mut(slot) else {
            return Applied::Stale;
        };
        let (applied, rebased) = entry.apply(&cx, origin, checked);
        let empty = entry.record_count(&self.layout) == 0;
        if empty {
            // A brand-new entry whose only contribution was stale or expired.
            shard.remove(&self.hasher, slot);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        } else if rebased && self.schema.sync {
            let fresh = shard.mark_dirty(slot, self.active.load(Ordering::Acquire));
            drop(shard);
            self.notify(fresh);
        }
        applied
    }

    /// The merged view of one entry, or `None` if the table does not hold it (or it expired).
    pub fn get(&self, key: &Key, now: Tick, with_origins: bool) -> Option<EntryView> {
        let cx = self.cx(now);
        let hash = self.hash(key);
        let shard = self.shard_of(hash).lock();
        let e = shard.entry(shard.find(hash, key)?)?;
        (!e.is_expired(&cx)).then(|| self.view(e, &cx, with_origins))
    }

    fn view(&self, e: &Entry, cx: &Ctx<'_>, with_origins: bool) -> EntryView {
        let values = self
            .layout
            .fields
            .iter()
            .map(|f| (f.ty, e.read(cx, f)))
            .collect();
        let origins = if with_origins {
            e.origins_of(&self.layout)
                .map(|(i, origin)| {
                    let rec = e.record_at(&self.layout, i);
                    OriginView {
                        origin,
                        version: rec[layout::VERSION],
                        idle_ms: cx.now.since(layout::touched(rec)),
                        epoch: layout::epoch(rec),
                        values: self
                            .layout
                            .fields
                            .iter()
                            .map(|f| (f.ty, e.read_origin(cx, rec, f)))
                            .collect(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        EntryView {
            key: e.key.clone(),
            idle_ms: e.idle(&self.layout, cx.now),
            values,
            origins,
        }
    }

    /// Visits up to `max` live entries from `cursor`, holding one shard's lock at a time, and
    /// returns how many were visited. Entries added or removed meanwhile may or may not be seen.
    pub fn scan(
        &self,
        cursor: &mut Cursor,
        max: usize,
        now: Tick,
        with_origins: bool,
        mut f: impl FnMut(EntryView),
    ) -> usize {
        let cx = self.cx(now);
        self.walk(cursor, max, |e| {
            if e.is_expired(&cx) {
                return 0;
            }
            f(self.view(e, &cx, with_origins));
            1
        })
    }

    /// Appends up to about `max` contributions of every origin but `except`, from `cursor`, for
    /// a snapshot sent to a (re)connected peer: one [`pb::TableContributions`] per origin,
    /// added to `out` as origins appear. Holds one shard's lock at a time.
    ///
    /// `except` is the receiving peer's own origin: only the peer writes its contributions, so
    /// it holds them already, and sending them back would cost both sides an apply that
    /// changes nothing.
    pub fn snapshot_chunk(
        &self,
        cursor: &mut Cursor,
        max: usize,
        now: Tick,
        except: Option<OriginId>,
        out: &mut Vec<pb::TableContributions>,
    ) -> usize {
        let cx = self.cx(now);
        // Where each origin's contributions go in `out`; a chunk sees few origins.
        let mut groups: Vec<(OriginId, Option<usize>)> = Vec::new();
        let mut data = Vec::new();
        self.walk(cursor, max, |e| {
            let mut n = 0;
            for (i, origin) in e.origins_of(&self.layout) {
                if Some(origin) == except || e.record_idle(&cx, i) >= cx.expire {
                    continue;
                }
                let at = match groups.iter().find(|(o, _)| *o == origin) {
                    Some(&(_, at)) => at,
                    None => {
                        // An origin without a name cannot be sent; it is skipped.
                        let at = self.origins.name(origin).map(|name| {
                            out.push(pb::TableContributions::new(
                                self.name(),
                                pb::Origin {
                                    node: name.node,
                                    incarnation: name.incarnation,
                                },
                            ));
                            out.len() - 1
                        });
                        groups.push((origin, at));
                        at
                    }
                };
                if let Some(tc) = at.and_then(|at| out.get_mut(at)) {
                    e.export(&cx, i, &mut data, tc);
                    n += 1;
                }
            }
            n
        })
    }

    /// Visits entries from `cursor` until `visit` has counted `max`.
    fn walk(
        &self,
        cursor: &mut Cursor,
        max: usize,
        mut visit: impl FnMut(&Entry) -> usize,
    ) -> usize {
        let mut n = 0;
        while cursor.shard < self.shards.len() && n < max {
            let shard = self.shards[cursor.shard].0.lock();
            while cursor.slot < shard.slot_count() && n < max {
                // slot_count <= cap < 2^31.
                if let Some(e) = shard.entry(cursor.slot as u32) {
                    n += visit(e);
                }
                cursor.slot += 1;
            }
            if cursor.slot >= shard.slot_count() {
                cursor.shard += 1;
                cursor.slot = 0;
            }
        }
        if cursor.shard >= self.shards.len() {
            cursor.shard = MAX_SHARDS;
        }
        n
    }

    /// Removes expired entries and records, visiting at most `max` slots from `cursor` and
    /// stopping at the end of the table: the cursor is then done, and a done cursor starts the
    /// next pass. Returns how many entries were removed.
    pub fn sweep(&self, cursor: &mut Cursor, max: usize, now: Tick) -> usize {
        if cursor.is_done() {
            *cursor = Cursor::new();
        }
        let cx = self.cx(now);
        let mut visited = 0;
        let mut removed = 0;
        while visited < max && cursor.shard < self.shards.len() {
            let mut shard = self.shards[cursor.shard].0.lock();
            let end = shard.slot_count().min(cursor.slot + (max - visited));
            for slot in cursor.slot..end {
                // slot < slot_count <= cap < 2^31.
                let slot = slot as u32;
                let gone = shard.entry_mut(slot).is_some_and(|e| e.sweep(&cx));
                if gone {
                    shard.remove(&self.hasher, slot);
                    removed += 1;
                }
            }
            visited += end - cursor.slot + 1;
            cursor.slot = end;
            if cursor.slot >= shard.slot_count() {
                cursor.shard += 1;
                cursor.slot = 0;
            }
        }
        if cursor.shard >= self.shards.len() {
            cursor.shard = MAX_SHARDS;
        }
        self.entries.fetch_sub(removed, Ordering::Relaxed);
        self.expired.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    // === change feed ===

    /// Registers a consumer of the local changes. Changes made before this call are not in its
    /// feed: send it a snapshot after subscribing.
    pub fn subscribe(&self) -> Result<Consumer, FeedError> {
        if !self.schema.sync {
            return Err(FeedError::NotReplicated(self.schema.name.clone()));
        }
        let id = (!*self.allocated.lock()).trailing_zeros() as usize;
        if id >= MAX_CONSUMERS {
            return Err(FeedError::Full);
        }
        self.subscribe_as(id)
    }

    /// Registers a consumer with a chosen id, so one replication session can use the same id
    /// in every table and one listener can wake it whichever table changed.
    pub fn subscribe_as(&self, id: usize) -> Result<Consumer, FeedError> {
        if !self.schema.sync {
            return Err(FeedError::NotReplicated(self.schema.name.clone()));
        }
        let mut allocated = self.allocated.lock();
        if id >= MAX_CONSUMERS || *allocated & (1 << id) != 0 {
            return Err(FeedError::Taken(id));
        }
        *allocated |= 1 << id;
        self.active.fetch_or(1 << id, Ordering::AcqRel);
        Ok(Consumer { id, next_shard: 0 })
    }

    /// Ends a consumer's feed and frees its slot.
    pub fn unsubscribe(&self, c: Consumer) {
        self.active.fetch_and(!(1u64 << c.id), Ordering::AcqRel);
        for p in self.shards.iter() {
            p.0.lock().drop_consumer(c.id);
        }
        *self.allocated.lock() &= !(1u64 << c.id);
    }

    /// Appends up to `max` of the local origin's contributions that changed since this consumer
    /// last took them, each once, in its latest state. Returns how many were appended.
    pub fn take_changes(
        &self,
        c: &mut Consumer,
        max: usize,
        now: Tick,
        out: &mut pb::TableContributions,
    ) -> usize {
        let cx = self.cx(now);
        let mut data = Vec::new();
        let mut n = 0;
        for _ in 0..self.shards.len() {
            if n >= max {
                break;
            }
            let i = c.next_shard;
            c.next_shard = (c.next_shard + 1) & self.shard_mask;
            let mut shard = self.shards[i].0.lock();
            while n < max {
                let Some(slot) = shard.pop_dirty(c.id) else {
                    break;
                };
                let Some(e) = slot.and_then(|s| shard.entry(s)) else {
                    continue;
                };
                if let Some(li) = e.local_index(&self.layout) {
                    e.export(&cx, li, &mut data, out);
                    n += 1;
                }
            }
        }
        n
    }

    /// How many changes wait for a consumer (an upper bound: some may have been taken in a
    /// newer state already).
    pub fn pending(&self, c: &Consumer) -> usize {
        self.shards.iter().map(|p| p.0.lock().pending(c.id)).sum()
    }

    /// Whether the table's schema makes `ty` a rate with the given period.
    pub fn rate_period(&self, ty: DataType) -> Option<u32> {
        self.schema
            .stored(ty)
            .filter(|s| s.ty.kind() == Kind::Rate)
            .map(|s| s.period_ms)
    }
}

fn shard_count(size: usize) -> usize {
    // Shards of at least 64 entries: fewer, fuller shards keep eviction close to exact LRU in
    // small tables; 64 shards spread a large table's lock traffic over two cores.
    (size / 64).next_power_of_two().clamp(1, MAX_SHARDS)
}
