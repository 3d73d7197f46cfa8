//! Stick counters at run time: the entries a connection or a request tracks, and the events
//! recorded into them as traffic flows (SPEC §4, last paragraph).
//!
//! Every operation here is one short critical section on one table shard; nothing waits for
//! I/O. A [`Track`] keeps the entry's [`Tracked`] handle, which caches the entry's slot, and the
//! table it lives in, resolved once per frontend (no lookup by name on the request path).

use std::sync::Arc;

use sluice_sync::{DataType, Event, Key, NodeClock, Table, Tick, Tracked};

/// The groups of events a table stores something for. Recording an event a table stores
/// nothing for would still touch the entry and send it to every peer, so the request path
/// records only what is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stores(u8);

impl Stores {
    /// `conn_cnt`, `conn_rate` or `conn_cur`: [`Event::ConnOpen`].
    pub(crate) const CONN: Stores = Stores(1);
    /// `conn_cur`: [`Event::ConnClose`].
    pub(crate) const CONN_CUR: Stores = Stores(2);
    /// `sess_cnt` or `sess_rate`: [`Event::SessOpen`].
    pub(crate) const SESS: Stores = Stores(4);
    /// `http_req_cnt` or `http_req_rate`: [`Event::HttpReq`].
    pub(crate) const REQ: Stores = Stores(8);
    /// `http_err_cnt` or `http_err_rate`: [`Event::HttpErr`].
    pub(crate) const ERR: Stores = Stores(16);
    /// `bytes_in_cnt` or `bytes_in_rate`: [`Event::BytesIn`].
    pub(crate) const BYTES_IN: Stores = Stores(32);
    /// `bytes_out_cnt` or `bytes_out_rate`: [`Event::BytesOut`].
    pub(crate) const BYTES_OUT: Stores = Stores(64);

    /// What `table` stores.
    pub(crate) fn of(table: &Table) -> Stores {
        use DataType as D;
        let s = table.schema();
        let any = |types: &[D], bit: Stores| {
            if types.iter().any(|t| s.stores(*t)) {
                bit.0
            } else {
                0
            }
        };
        Stores(
            any(&[D::ConnCnt, D::ConnRate, D::ConnCur], Stores::CONN)
                | any(&[D::ConnCur], Stores::CONN_CUR)
                | any(&[D::SessCnt, D::SessRate], Stores::SESS)
                | any(&[D::HttpReqCnt, D::HttpReqRate], Stores::REQ)
                | any(&[D::HttpErrCnt, D::HttpErrRate], Stores::ERR)
                | any(&[D::BytesInCnt, D::BytesInRate], Stores::BYTES_IN)
                | any(&[D::BytesOutCnt, D::BytesOutRate], Stores::BYTES_OUT),
        )
    }

    /// Whether any of `bits` is stored.
    #[inline]
    pub(crate) fn has(self, bits: Stores) -> bool {
        self.0 & bits.0 != 0
    }

    /// Both sets.
    #[inline]
    pub(crate) fn union(self, other: Stores) -> Stores {
        Stores(self.0 | other.0)
    }
}

/// A table a `track-scN` rule names, resolved when the frontend is built.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The table.
    pub(crate) table: Arc<Table>,
    /// What it stores.
    pub(crate) stores: Stores,
}

impl Resolved {
    pub(crate) fn new(table: Arc<Table>) -> Resolved {
        Resolved {
            stores: Stores::of(&table),
            table,
        }
    }
}

/// An entry a stick counter tracks.
#[derive(Clone, Debug)]
pub(crate) struct Track {
    table: Arc<Table>,
    stores: Stores,
    handle: Tracked,
}

impl Track {
    /// Starts tracking `key` in `r`: records `first` (the connection or the request that
    /// tracks it) when the table stores it (`bit`), else just touches the entry. Either way the
    /// entry exists afterwards and its counters read 0 rather than nothing.
    pub(crate) fn start(r: &Resolved, key: Key, first: Event, bit: Stores, now: Tick) -> Track {
        let handle = if r.stores.has(bit) {
            let mut h = r.table.handle(key);
            r.table.record(&mut h, first, now);
            h
        } else {
            r.table.track(key, now)
        };
        Track {
            table: r.table.clone(),
            stores: r.stores,
            handle,
        }
    }

    /// Records `ev` if the table stores `bit`.
    #[inline]
    pub(crate) fn record(&mut self, ev: Event, bit: Stores, now: Tick) {
        if self.stores.has(bit) {
            self.table.record(&mut self.handle, ev, now);
        }
    }

    /// Records `ev` if the table stores `bit`, through a copy of the handle: for tracks shared
    /// by the requests of a connection (their keys are addresses, stored inline, so the copy
    /// is a few words).
    #[inline]
    pub(crate) fn record_shared(&self, ev: Event, bit: Stores, now: Tick) {
        if self.stores.has(bit) {
            let mut h = self.handle.clone();
            self.table.record(&mut h, ev, now);
        }
    }

    /// Records a request: `http_req_*` if stored, else a touch, so an entry tracked by a busy
    /// client never expires under it.
    #[inline]
    pub(crate) fn request_shared(&self, now: Tick) {
        if self.stores.has(Stores::REQ) {
            self.record_shared(Event::HttpReq, Stores::REQ, now);
        } else {
            self.table.track(self.handle.key().clone(), now);
        }
    }

    /// The fleet-merged value of `ty` at `now`.
    #[inline]
    pub(crate) fn read(&self, ty: DataType, now: Tick) -> Option<u64> {
        let mut h = self.handle.clone();
        self.table.read(&mut h, ty, now)
    }

    /// Reads `ty` at several ticks under one lock (see [`Table::read_with`]).
    pub(crate) fn read_with<R>(
        &self,
        ty: DataType,
        f: impl FnOnce(&dyn Fn(Tick) -> Option<u64>) -> R,
    ) -> Option<R> {
        let mut h = self.handle.clone();
        self.table.read_with(&mut h, ty, f)
    }

    /// `sc-inc-gpc0`.
    pub(crate) fn inc_gpc0(&self, now: Tick) {
        let mut h = self.handle.clone();
        self.table.record(&mut h, Event::IncGpc0(1), now);
    }

    /// `sc-set-gpt0`.
    pub(crate) fn set_gpt0(&self, value: u64, wall_ms: u64, now: Tick) {
        let mut h = self.handle.clone();
        self.table
            .set_register(&mut h, DataType::Gpt0, value, wall_ms, now);
    }
}

/// The three stick counters of a connection or a request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracks {
    sc: [Option<Track>; 3],
}

impl Tracks {
    /// The entry counter `sc` tracks.
    #[inline]
    pub(crate) fn get(&self, sc: u8) -> Option<&Track> {
        self.sc.get(usize::from(sc)).and_then(Option::as_ref)
    }

    pub(crate) fn set(&mut self, sc: u8, t: Track) {
        if let Some(slot) = self.sc.get_mut(usize::from(sc)) {
            *slot = Some(t);
        }
    }

    /// The tracked entries.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Track> {
        self.sc.iter().flatten()
    }

    /// The tracked entries, for writing.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Track> {
        self.sc.iter_mut().flatten()
    }

    /// What the tracked tables store, together.
    pub(crate) fn stores(&self) -> Stores {
        self.iter()
            .fold(Stores::default(), |a, t| a.union(t.stores))
    }
}

/// The counters a connection tracked at the connection stage. They count the connection in
/// `conn_cur` until this is dropped, with the connection, whichever way it ends.
#[derive(Debug)]
pub(crate) struct ConnTracks {
    /// The tracked entries.
    pub(crate) tracks: Tracks,
    clock: NodeClock,
}

impl ConnTracks {
    /// No tracked entry yet.
    pub(crate) fn new(clock: NodeClock) -> ConnTracks {
        ConnTracks {
            tracks: Tracks::default(),
            clock,
        }
    }
}

impl Drop for ConnTracks {
    fn drop(&mut self) {
        if self.tracks.stores().has(Stores::CONN_CUR) {
            let now = self.clock.tick();
            for t in self.tracks.iter_mut() {
                t.record(Event::ConnClose, Stores::CONN_CUR, now);
            }
        }
    }
}

/// Counts bytes into the tracked entries that store them, one table operation per chunk and
/// entry.
#[derive(Debug)]
pub(crate) struct Meter {
    tracks: Vec<Track>,
    clock: NodeClock,
    bytes_in: bool,
}

impl Meter {
    /// A meter of bytes received from the client (`in_ = true`) or sent to it, over the
    /// tracks of `sets` that store them; `None` when none does (nothing to count, nothing
    /// allocated).
    pub(crate) fn new(sets: &[&Tracks], in_: bool, clock: NodeClock) -> Option<Meter> {
        let bit = if in_ {
            Stores::BYTES_IN
        } else {
            Stores::BYTES_OUT
        };
        if !sets.iter().any(|s| s.stores().has(bit)) {
            return None;
        }
        let tracks = sets
            .iter()
            .flat_map(|s| s.iter())
            .filter(|t| t.stores.has(bit))
            .cloned()
            .collect();
        Some(Meter {
            tracks,
            clock,
            bytes_in: in_,
        })
    }

    /// Counts `n` bytes.
    #[inline]
    pub(crate) fn count(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.clock.tick();
        let n = n as u64;
        let ev = if self.bytes_in {
            Event::BytesIn(n)
        } else {
            Event::BytesOut(n)
        };
        for t in &mut self.tracks {
            t.table.record(&mut t.handle, ev, now);
        }
    }
}
