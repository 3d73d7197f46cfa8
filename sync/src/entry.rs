//! An entry: a key and the records (one per origin) that contribute to it, with the merge
//! rules of SPEC §5 applied when a value is read.
//!
//! Invariants kept here:
//! - at most one record per origin;
//! - a record's version only grows (a contribution that is not newer is ignored);
//! - counters and rates of records whose epoch is older than the entry's newest epoch count
//!   zero, and the local record adopts a newer epoch as soon as it sees one;
//! - a record untouched for `expire` counts nothing, and the sweeper drops it.

use std::cmp::Ordering;

use smallvec::SmallVec;

use crate::clock::{Stamp, Tick};
use sluice_proto::sync::v1 as pb;

use crate::key::Key;
use crate::layout::{self, Cell, EPOCH, Field, HEADER, Layout, VERSION};
use crate::origin::{LOCAL, OriginId, Origins};
use crate::rate::Window;
use crate::schema::DataType;
use crate::table::Applied;
use crate::wire::Checked;

/// Words stored inline: one origin's record of the reference schema
/// (`http_req_rate(P), conn_cur, gpc0`) fits without a heap allocation.
pub(crate) const INLINE_WORDS: usize = 7;

/// What a read or a write needs besides the entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) layout: &'a Layout,
    pub(crate) origins: &'a Origins,
    pub(crate) now: Tick,
    pub(crate) expire: u32,
}

/// Something that happened to a tracked key (SPEC §4, last paragraph).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection was accepted: `conn_cnt`, `conn_rate`, and `conn_cur` until [`Event::ConnClose`].
    ConnOpen,
    /// A tracked connection closed: `conn_cur` drops.
    ConnClose,
    /// A session was kept: `sess_cnt`, `sess_rate`.
    SessOpen,
    /// An HTTP request: `http_req_cnt`, `http_req_rate`.
    HttpReq,
    /// A 4xx answer from the backend: `http_err_cnt`, `http_err_rate`.
    HttpErr,
    /// Bytes received from the client: `bytes_in_cnt`, `bytes_in_rate`.
    BytesIn(u64),
    /// Bytes sent to the client: `bytes_out_cnt`, `bytes_out_rate`.
    BytesOut(u64),
    /// `sc-inc-gpc0`: `gpc0`, `gpc0_rate`.
    IncGpc0(u64),
    /// Increment of `gpc1`.
    IncGpc1(u64),
}

impl Event {
    /// The counter and rate types the event adds to, the amount, and the gauge change.
    fn effects(self) -> ([Option<DataType>; 2], u64, i64) {
        use DataType as D;
        match self {
            Event::ConnOpen => ([Some(D::ConnCnt), Some(D::ConnRate)], 1, 1),
            Event::ConnClose => ([None, None], 0, -1),
            Event::SessOpen => ([Some(D::SessCnt), Some(D::SessRate)], 1, 0),
            Event::HttpReq => ([Some(D::HttpReqCnt), Some(D::HttpReqRate)], 1, 0),
            Event::HttpErr => ([Some(D::HttpErrCnt), Some(D::HttpErrRate)], 1, 0),
            Event::BytesIn(n) => ([Some(D::BytesInCnt), Some(D::BytesInRate)], n, 0),
            Event::BytesOut(n) => ([Some(D::BytesOutCnt), Some(D::BytesOutRate)], n, 0),
            Event::IncGpc0(n) => ([Some(D::Gpc0), Some(D::Gpc0Rate)], n, 0),
            Event::IncGpc1(n) => ([Some(D::Gpc1), None], n, 0),
        }
    }
}

/// A key and its per-origin records.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) key: Key,
    words: SmallVec<[u64; INLINE_WORDS]>,
}

impl Entry {
    pub(crate) fn new(key: Key) -> Entry {
        Entry {
            key,
            words: SmallVec::new(),
        }
    }

    pub(crate) fn records<'s>(&'s self, l: &Layout) -> std::slice::ChunksExact<'s, u64> {
        self.words.chunks_exact(l.record_words)
    }

    pub(crate) fn record_count(&self, l: &Layout) -> usize {
        self.words.len() / l.record_words
    }

    fn rec(&self, l: &Layout, i: usize) -> &[u64] {
        &self.words[i * l.record_words..(i + 1) * l.record_words]
    }

    fn rec_mut(&mut self, l: &Layout, i: usize) -> &mut [u64] {
        &mut self.words[i * l.record_words..(i + 1) * l.record_words]
    }

    fn find(&self, l: &Layout, origin: OriginId) -> Option<usize> {
        self.records(l).position(|r| layout::origin(r) == origin)
    }

    fn push_record(&mut self, l: &Layout, origin: OriginId, now: Tick) -> usize {
        let i = self.record_count(l);
        self.words.extend(std::iter::repeat_n(0, l.record_words));
        let rec = self.rec_mut(l, i);
        zero_data(l, rec, now);
        layout::set_meta(rec, origin, now);
        i
    }

    /// Whether a record still counts at `now`.
    fn is_live(rec: &[u64], cx: &Ctx<'_>) -> bool {
        cx.now.since(layout::touched(rec)) < cx.expire
    }

    /// The newest reset any live record counts from.
    fn max_epoch(&self, cx: &Ctx<'_>) -> Stamp {
        self.records(cx.layout)
            .filter(|r| Self::is_live(r, cx))
            .map(layout::epoch)
            .max()
            .unwrap_or(0)
    }

    /// Milliseconds since any origin last touched the entry.
    pub(crate) fn idle(&self, l: &Layout, now: Tick) -> u32 {
        self.records(l)
            .map(|r| now.since(layout::touched(r)))
            .min()
            .unwrap_or(u32::MAX)
    }

    /// Whether no record counts any more.
    pub(crate) fn is_expired(&self, cx: &Ctx<'_>) -> bool {
        !self.records(cx.layout).any(|r| Self::is_live(r, cx))
    }

    /// The local origin's record, created or moved to the newest epoch, touched at `now`, with
    /// its version bumped: every local write goes through here.
    fn local_change(&mut self, cx: &Ctx<'_>) -> usize {
        let epoch = self.max_epoch(cx);
        let l = cx.layout;
        let i = match self.find(l, LOCAL) {
            Some(i) => i,
            None => self.push_record(l, LOCAL, cx.now),
        };
        let rec = self.rec_mut(l, i);
        if cx.now.since(layout::touched(rec)) >= cx.expire {
            // The local record expired but was not swept yet: what it held is gone, only its
            // version carries on so peers still take what comes next.
            rec[EPOCH] = 0;
            zero_data(l, rec, cx.now);
        }
        if layout::epoch(rec) < epoch {
            rebase(l, rec, epoch);
        }
        rec[VERSION] += 1;
        layout::set_meta(rec, LOCAL, cx.now);
        i
    }

    /// Records that the local origin touched the entry.
    pub(crate) fn touch(&mut self, cx: &Ctx<'_>) {
        self.local_change(cx);
    }

    /// Records a local event.
    pub(crate) fn record(&mut self, cx: &Ctx<'_>, ev: Event) {
        let i = self.local_change(cx);
        let l = cx.layout;
        let (types, n, gauge) = ev.effects();
        let rec = self.rec_mut(l, i);
        for f in types.into_iter().flatten().filter_map(|ty| l.field(ty)) {
            match f.cell {
                Cell::Counter => rec[f.off] = (rec[f.off] as i64).saturating_add_unsigned(n) as u64,
                Cell::Rate { period, wide } => {
                    let mut w = layout::load_rate(rec, f.off, wide);
                    w.add(cx.now, period, n);
                    layout::store_rate(rec, f.off, wide, w);
                }
                Cell::Gauge | Cell::Register => {}
            }
        }
        if let Some(f) = l.field(DataType::ConnCur).filter(|_| gauge != 0) {
            // A close whose open was counted on an entry since evicted or cleared must not
            // drive the level below zero.
            rec[f.off] = (rec[f.off] as i64).saturating_add(gauge).max(0) as u64;
        }
    }

    /// Writes a register of the local origin with a stamp from the node's clock.
    pub(crate) fn set_register(&mut self, cx: &Ctx<'_>, f: &Field, value: u64, stamp: Stamp) {
        let i = self.local_change(cx);
        let rec = self.rec_mut(cx.layout, i);
        rec[f.off] = stamp;
        rec[f.off + 1] = value;
    }

    /// Moves the local counter of `f` so the merged value becomes `target` (admin `set`).
    /// Increments that other origins make concurrently still add to it.
    pub(crate) fn set_counter(&mut self, cx: &Ctx<'_>, f: &Field, target: u64) {
        let current = self.read_raw_sum(cx, f);
        let i = self.local_change(cx);
        let rec = self.rec_mut(cx.layout, i);
        let target = i64::try_from(target).unwrap_or(i64::MAX);
        let own = rec[f.off] as i64;
        rec[f.off] = own.saturating_add(target.saturating_sub(current)) as u64;
    }

    /// A stamped reset: every counter, rate and register written before `stamp` stops counting
    /// on every node that receives the local record.
    pub(crate) fn clear(&mut self, cx: &Ctx<'_>, stamp: Stamp) {
        let i = self.local_change(cx);
        let l = cx.layout;
        let rec = self.rec_mut(l, i);
        if stamp > layout::epoch(rec) {
            rebase(l, rec, stamp);
        }
    }

    /// Sum of the counter over records of the newest epoch, unclamped.
    fn read_raw_sum(&self, cx: &Ctx<'_>, f: &Field) -> i64 {
        let epoch = self.max_epoch(cx);
        self.records(cx.layout)
            .filter(|r| Self::is_live(r, cx) && layout::epoch(r) == epoch)
            .fold(0i64, |acc, r| acc.saturating_add(r[f.off] as i64))
    }

    /// The fleet-merged value of a field at `now` (`None`: a register nobody has written, or
    /// whose last write predates a reset).
    pub(crate) fn read(&self, cx: &Ctx<'_>, f: &Field) -> Option<u64> {
        match f.cell {
            Cell::Counter => Some(self.read_raw_sum(cx, f).max(0) as u64),
            Cell::Rate { period, wide } => {
                let epoch = self.max_epoch(cx);
                let sum = self
                    .records(cx.layout)
                    .filter(|r| Self::is_live(r, cx) && layout::epoch(r) == epoch)
                    .map(|r| layout::load_rate(r, f.off, wide).read(cx.now, period))
                    .fold(0u64, u64::saturating_add);
                Some(sum)
            }
            Cell::Gauge => {
                let sum = self
                    .records(cx.layout)
                    .filter(|r| {
                        Self::is_live(r, cx) && cx.origins.is_live(layout::origin(r), cx.now)
                    })
                    .fold(0i64, |acc, r| acc.saturating_add(r[f.off] as i64));
                Some(sum.max(0) as u64)
            }
            Cell::Register => {
                let epoch = self.max_epoch(cx);
                let mut best: Option<(&[u64], Stamp)> = None;
                for r in self.records(cx.layout).filter(|r| Self::is_live(r, cx)) {
                    let stamp = r[f.off];
                    if stamp == 0 || stamp <= epoch {
                        continue;
                    }
                    let wins = match best {
                        None => true,
                        Some((b, bs)) => match stamp.cmp(&bs) {
                            Ordering::Greater => true,
                            Ordering::Less => false,
                            Ordering::Equal => {
                                cx.origins.cmp_names(layout::origin(r), layout::origin(b))
                                    == Ordering::Greater
                            }
                        },
                    };
                    if wins {
                        best = Some((r, stamp));
                    }
                }
                best.map(|(r, _)| r[f.off + 1])
            }
        }
    }

    /// One origin's own value of a field (for `--origins` views), without merging.
    pub(crate) fn read_origin(&self, cx: &Ctx<'_>, rec: &[u64], f: &Field) -> Option<u64> {
        match f.cell {
            Cell::Counter | Cell::Gauge => Some((rec[f.off] as i64).max(0) as u64),
            Cell::Rate { period, wide } => {
                Some(layout::load_rate(rec, f.off, wide).read(cx.now, period))
            }
            Cell::Register => (rec[f.off] != 0).then_some(rec[f.off + 1]),
        }
    }

    /// Applies a remote origin's checked contribution; returns whether the local record had to
    /// adopt a newer epoch (so it changed and must be sent).
    pub(crate) fn apply(
        &mut self,
        cx: &Ctx<'_>,
        origin: OriginId,
        checked: &Checked<'_>,
    ) -> (Applied, bool) {
        let c = checked.contribution();
        if c.idle_ms >= cx.expire {
            return (Applied::Expired, false);
        }
        let l = cx.layout;
        let i = match self.find(l, origin) {
            Some(i) if self.rec(l, i)[VERSION] >= c.version => return (Applied::Stale, false),
            Some(i) => i,
            None => self.push_record(l, origin, cx.now),
        };
        let rec = self.rec_mut(l, i);
        zero_data(l, rec, cx.now);
        rec[VERSION] = c.version;
        rec[EPOCH] = c.epoch;
        layout::set_meta(rec, origin, cx.now.minus(c.idle_ms));
        for d in c.data {
            let Some(f) = DataType::from_wire(d.r#type).and_then(|ty| l.field(ty)) else {
                continue;
            };
            write_value(rec, f, d, cx.now);
        }
        let mut rebased = false;
        if let Some(j) = self.find(l, LOCAL).filter(|_| origin != LOCAL) {
            let local = self.rec_mut(l, j);
            if layout::epoch(local) < c.epoch {
                rebase(l, local, c.epoch);
                local[VERSION] += 1;
                rebased = true;
            }
        }
        (Applied::Updated, rebased)
    }

    /// Appends the contribution of record `i` to `out` in its wire form, ages measured at
    /// `now`; zero values are left out. `data` is scratch space, reused between calls.
    pub(crate) fn export(
        &self,
        cx: &Ctx<'_>,
        i: usize,
        data: &mut Vec<pb::Datum>,
        out: &mut pb::TableContributions,
    ) {
        let rec = self.rec(cx.layout, i);
        data.clear();
        for f in &cx.layout.fields {
            let r#type = f.ty.wire();
            let d = match f.cell {
                Cell::Counter | Cell::Gauge if rec[f.off] != 0 => pb::Datum {
                    r#type,
                    value: rec[f.off] as i64,
                    ..Default::default()
                },
                Cell::Register if rec[f.off] != 0 => pb::Datum {
                    r#type,
                    stamp: rec[f.off],
                    // Register values come from u32 sources (server ids, gpt0) or `set`.
                    value: i64::try_from(rec[f.off + 1]).unwrap_or(i64::MAX),
                    ..Default::default()
                },
                Cell::Rate { period, wide } => {
                    let mut w = layout::load_rate(rec, f.off, wide);
                    w.rotate(cx.now, period);
                    if w.curr == 0 && w.prev == 0 {
                        continue;
                    }
                    pb::Datum {
                        r#type,
                        period_ms: period,
                        age_ms: w.age(cx.now),
                        curr: w.curr,
                        prev: w.prev,
                        ..Default::default()
                    }
                }
                _ => continue,
            };
            data.push(d);
        }
        out.push(
            self.key.as_bytes(),
            rec[VERSION],
            cx.now.since(layout::touched(rec)),
            layout::epoch(rec),
            data,
        );
    }

    /// Milliseconds since record `i`'s origin touched the entry.
    pub(crate) fn record_idle(&self, cx: &Ctx<'_>, i: usize) -> u32 {
        cx.now.since(layout::touched(self.rec(cx.layout, i)))
    }

    /// Index of the local record.
    pub(crate) fn local_index(&self, l: &Layout) -> Option<usize> {
        self.find(l, LOCAL)
    }

    /// Drops records untouched for `expire` and refreshes idle rate windows so no stored tick
    /// grows old enough to wrap. Returns whether the entry is now empty.
    pub(crate) fn sweep(&mut self, cx: &Ctx<'_>) -> bool {
        let l = cx.layout;
        let rw = l.record_words;
        let mut i = 0;
        while i < self.record_count(l) {
            if Self::is_live(self.rec(l, i), cx) {
                let rec = self.rec_mut(l, i);
                for f in &l.fields {
                    if let Cell::Rate { period, wide } = f.cell {
                        let w = layout::load_rate(rec, f.off, wide);
                        if w.is_idle(cx.now, period) {
                            layout::store_rate(
                                rec,
                                f.off,
                                wide,
                                Window {
                                    start: cx.now,
                                    curr: 0,
                                    prev: 0,
                                },
                            );
                        }
                    }
                }
                i += 1;
            } else {
                self.words.drain(i * rw..(i + 1) * rw);
            }
        }
        self.words.is_empty()
    }

    /// Record indices with their origin, for iteration.
    pub(crate) fn origins_of(&self, l: &Layout) -> impl Iterator<Item = (usize, OriginId)> + '_ {
        self.records(l)
            .enumerate()
            .map(|(i, r)| (i, layout::origin(r)))
    }

    pub(crate) fn record_at(&self, l: &Layout, i: usize) -> &[u64] {
        self.rec(l, i)
    }
}

/// Zeroes a record's data; rate periods start at `now`, since a start left at tick 0 could lie
/// more than 2^31 ms in the past and read as the future.
fn zero_data(l: &Layout, rec: &mut [u64], now: Tick) {
    rec[HEADER..].fill(0);
    for f in &l.fields {
        if let Cell::Rate { wide, .. } = f.cell {
            layout::store_rate(
                rec,
                f.off,
                wide,
                Window {
                    start: now,
                    curr: 0,
                    prev: 0,
                },
            );
        }
    }
}

/// Restarts a record's counters and rates from a reset stamped `epoch`. Registers are left:
/// a write older than the epoch is filtered when read.
fn rebase(l: &Layout, rec: &mut [u64], epoch: Stamp) {
    for f in &l.fields {
        match f.cell {
            Cell::Counter => rec[f.off] = 0,
            Cell::Rate { wide, .. } => {
                let start = layout::load_rate(rec, f.off, wide).start;
                layout::store_rate(
                    rec,
                    f.off,
                    wide,
                    Window {
                        start,
                        curr: 0,
                        prev: 0,
                    },
                )
            }
            Cell::Gauge | Cell::Register => {}
        }
    }
    rec[EPOCH] = epoch;
}

fn write_value(rec: &mut [u64], f: &Field, d: &pb::Datum, now: Tick) {
    // Shapes were checked by `wire::check`; each cell reads only its own fields.
    match f.cell {
        Cell::Counter | Cell::Gauge => rec[f.off] = d.value as u64,
        Cell::Register => {
            rec[f.off] = d.stamp;
            rec[f.off + 1] = d.value.max(0) as u64;
        }
        Cell::Rate { period, wide } => {
            // The sender rotated before sending, so age < period; a larger age is normalised
            // as the window would be on the sender's side.
            let mut w = Window {
                start: now.minus(d.age_ms),
                curr: d.curr,
                prev: d.prev,
            };
            w.rotate(now, period);
            layout::store_rate(rec, f.off, wide, w);
        }
    }
}
