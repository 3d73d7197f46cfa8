//! One established session with a peer, the same in both directions once hellos have been
//! exchanged: a sender that drains the change feed and a snapshot into the stream, and a
//! receiver that checks and applies what the peer sends.
//!
//! Flow control: every message of contributions carries a sequence number that the peer
//! acknowledges once applied. While fewer than [`WINDOW`] are unacknowledged, changes are sent
//! the moment they happen (low latency when quiet); beyond that they gather in the change feed
//! (a dirty set, bounded by the table) into the next batch (large batches under load), and a
//! change waiting longer than `flush_interval` is sent anyway, up to [`HARD_WINDOW`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prost::Message;
use sluice_proto::sync::v1 as pb;
use sluice_proto::sync::v1::peer_message::Body;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stats::PeerStats;
use super::{CORE_TURN, MAX_BATCH, MAX_CHUNK, MAX_MESSAGE_CONTRIBUTIONS, SLICE, Shared};
use crate::origin::OriginName;
use crate::table::{Consumer, Cursor, Table};
use crate::tables::Step;

/// Unacknowledged messages of contributions before changes start to gather.
const WINDOW: u64 = 2;
/// Unacknowledged messages at most, even when changes have waited `flush_interval`.
const HARD_WINDOW: u64 = 16;
/// Unacknowledged messages while sending a snapshot.
const SNAPSHOT_WINDOW: u64 = 4;

/// What a session needs to run.
pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: OriginName,
    pub(crate) stats: Arc<PeerStats>,
    pub(crate) inbound: tonic::Streaming<pb::PeerMessage>,
    pub(crate) outbound: mpsc::Sender<pb::PeerMessage>,
    pub(crate) id: u64,
    pub(crate) slot: usize,
    pub(crate) cancel: CancellationToken,
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Cancelled here (shutdown, peer removed, replaced by a newer session).
    Cancelled,
    /// The peer closed the stream, possibly saying why.
    Closed(Option<String>),
    /// Something went wrong; the reason is logged.
    Failed(String),
}

impl Session {
    /// Runs the session until it ends, then releases everything it held.
    pub(crate) async fn run(self) -> End {
        let Session {
            shared,
            peer,
            stats,
            inbound,
            outbound,
            id,
            slot,
            cancel,
        } = self;
        let mut feeds = Vec::new();
        for t in shared.tables.replicated() {
            match t.subscribe_as(slot) {
                Ok(c) => feeds.push((t, c)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow the change feed");
                    release(&shared, &peer.node, id, slot, feeds);
                    return End::Failed(e.to_string());
                }
            }
        }
        stats.up.store(true, Relaxed);
        stats.sessions.fetch_add(1, Relaxed);
        let (acked_tx, acked_rx) = watch::channel(0u64);
        let (to_ack_tx, to_ack_rx) = watch::channel(0u64);
        let snapshot = feeds.iter().map(|(t, _)| t.clone()).collect();
        let mut sender = Sender {
            shared: shared.clone(),
            peer: peer.clone(),
            stats: stats.clone(),
            out: outbound,
            feeds,
            seq: 0,
            acked: acked_rx,
            to_ack: to_ack_rx,
            membership: shared.membership_version.subscribe(),
            slot,
            snapshot: Some(Snapshot {
                tables: snapshot,
                table: 0,
                cursor: Cursor::new(),
                started: Instant::now(),
                sent: 0,
            }),
            pending_since: None,
            last_sent: Instant::now(),
        };
        let receiver = receive(&shared, &peer, &stats, inbound, to_ack_tx, acked_tx);
        let end = tokio::select! {
            end = receiver => end,
            end = sender.run(&cancel) => end,
        };
        stats.up.store(false, Relaxed);
        stats.pending_since.store(0, Relaxed);
        let feeds = std::mem::take(&mut sender.feeds);
        release(&shared, &peer.node, id, slot, feeds);
        end
    }
}

fn release(shared: &Shared, peer: &str, id: u64, slot: usize, feeds: Vec<(Arc<Table>, Consumer)>) {
    for (t, c) in feeds {
        t.unsubscribe(c);
    }
    shared.close_session(peer, id, slot);
}

struct Snapshot {
    tables: Vec<Arc<Table>>,
    table: usize,
    cursor: Cursor,
    started: Instant,
    sent: u64,
}

struct Sender {
    shared: Arc<Shared>,
    /// The peer's origin (its current incarnation).
    peer: OriginName,
    stats: Arc<PeerStats>,
    out: mpsc::Sender<pb::PeerMessage>,
    feeds: Vec<(Arc<Table>, Consumer)>,
    /// Sequence number of the last message of contributions sent.
    seq: u64,
    acked: watch::Receiver<u64>,
    to_ack: watch::Receiver<u64>,
    membership: watch::Receiver<u64>,
    /// The session slot, whose waker the change feed wakes.
    slot: usize,
    snapshot: Option<Snapshot>,
    /// Since when a change waits because the window is full.
    pending_since: Option<Instant>,
    last_sent: Instant,
}

impl Sender {
    async fn run(&mut self, cancel: &CancellationToken) -> End {
        let heartbeat = (self.shared.cfg.dead_after / 4).max(Duration::from_millis(50));
        let flush = self.shared.cfg.flush_interval;
        // Timers are reset, not re-created, on every turn: registering a new one each time was
        // a measurable part of a busy session's cost.
        let heartbeat_timer = tokio::time::sleep(heartbeat);
        let flush_timer = tokio::time::sleep(flush);
        tokio::pin!(heartbeat_timer, flush_timer);
        // The peer learns our membership from the hello; later changes follow.
        self.membership.mark_unchanged();
        loop {
            if cancel.is_cancelled() {
                return self.finish().await;
            }
            if self.to_ack.has_changed().unwrap_or(false) {
                let seq = *self.to_ack.borrow_and_update();
                if let Err(e) = self.send(Body::Ack(pb::Ack { seq }), cancel).await {
                    return e;
                }
                continue;
            }
            if self.membership.has_changed().unwrap_or(false) {
                self.membership.mark_unchanged();
                let m = self.shared.membership_msg();
                if let Err(e) = self.send(Body::Membership(m), cancel).await {
                    return e;
                }
                continue;
            }
            let in_flight = self.seq - *self.acked.borrow();
            let overdue = self.pending_since.is_some_and(|t| t.elapsed() >= flush);
            let window = if overdue { HARD_WINDOW } else { WINDOW };
            let waker = &self.shared.wakers[self.slot];
            if in_flight < window {
                waker.arm();
                let now = self.shared.clock.tick();
                let (batch, n) = self.take_live(now);
                if n > 0 {
                    if n < MAX_BATCH {
                        self.set_pending(None);
                    }
                    if let Err(e) = self.send_contributions(batch, n, true, cancel).await {
                        return e;
                    }
                    continue;
                }
                self.set_pending(None);
            } else if self.pending_since.is_none() {
                // The first change starts the flush clock; until it is overdue, later ones
                // just gather.
                waker.arm();
            }
            if in_flight < SNAPSHOT_WINDOW && self.snapshot.is_some() {
                if let Err(e) = self.send_snapshot_chunk(cancel).await {
                    return e;
                }
                continue;
            }
            let heartbeat_due = self.last_sent + heartbeat;
            if heartbeat_timer.deadline() != heartbeat_due {
                heartbeat_timer.as_mut().reset(heartbeat_due);
            }
            // Once overdue the timer has done its work (the window is the hard one); polled
            // again, the elapsed timer would be ready at once and spin this loop until an ack.
            let flush_due = self.pending_since.filter(|_| !overdue).map(|t| t + flush);
            if let Some(due) = flush_due
                && flush_timer.deadline() != due
            {
                flush_timer.as_mut().reset(due);
            }
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = self.shared.wakers[self.slot].woken() => {
                    if self.seq - *self.acked.borrow() >= WINDOW && self.pending_since.is_none() {
                        self.set_pending(Some(Instant::now()));
                    }
                }
                r = self.acked.changed() => if r.is_err() { return End::Closed(None) },
                r = self.to_ack.changed() => {
                    if r.is_err() {
                        return End::Closed(None);
                    }
                    // `changed` marked it seen; re-flag it so the top of the loop sends the ack.
                    self.to_ack.mark_changed();
                }
                _ = self.membership.changed() => {
                    // Re-flag it: the top of the loop sends it.
                    self.membership.mark_changed();
                }
                _ = &mut heartbeat_timer => {
                    if let Err(e) = self.send(Body::Heartbeat(pb::Heartbeat {}), cancel).await {
                        return e;
                    }
                }
                _ = &mut flush_timer, if flush_due.is_some() => {}
            }
        }
    }

    fn set_pending(&mut self, since: Option<Instant>) {
        self.pending_since = since;
        let v = match since {
            Some(_) => u64::from(self.shared.clock.tick().0) + 1,
            None => 0,
        };
        self.stats.pending_since.store(v, Relaxed);
    }

    /// Takes up to [`MAX_BATCH`] of the node's own changes from every table.
    fn take_live(&mut self, now: crate::clock::Tick) -> (Vec<pb::TableContributions>, usize) {
        let me = &self.shared.me;
        let mut out = Vec::new();
        let mut n = 0;
        for (t, c) in &mut self.feeds {
            if n >= MAX_BATCH {
                break;
            }
            // Named only when it has something: most turns find nothing.
            let mut tc = pb::TableContributions::default();
            n += t.take_changes(c, MAX_BATCH - n, now, &mut tc);
            if !tc.is_empty() {
                tc.table = t.name().to_string();
                tc.origin = Some(pb::Origin {
                    node: me.node.clone(),
                    incarnation: me.incarnation,
                });
                out.push(tc);
            }
        }
        (out, n)
    }

    async fn send_snapshot_chunk(&mut self, cancel: &CancellationToken) -> Result<(), End> {
        let now = self.shared.clock.tick();
        let Some(snap) = self.snapshot.as_mut() else {
            return Ok(());
        };
        // The peer's origin is known once it has sent its first contributions, which may be
        // after the snapshot began.
        let peer = self.shared.tables.origins().lookup(&self.peer);
        let mut tables = Vec::new();
        let mut n = 0;
        while n < MAX_CHUNK && snap.table < snap.tables.len() {
            let t = &snap.tables[snap.table];
            n += t.snapshot_chunk(&mut snap.cursor, MAX_CHUNK - n, now, peer, &mut tables);
            if snap.cursor.is_done() {
                snap.table += 1;
                snap.cursor = Cursor::new();
            }
        }
        let done = snap.table >= snap.tables.len();
        snap.sent += n as u64;
        if n > 0 {
            self.send_contributions(tables, n, false, cancel).await?;
        }
        if done {
            let (started, sent) = self
                .snapshot
                .take()
                .map(|s| (s.started, s.sent))
                .unwrap_or((Instant::now(), 0));
            self.send(
                Body::SnapshotDone(pb::SnapshotDone {
                    seq: self.seq,
                    contributions: sent,
                }),
                cancel,
            )
            .await?;
            self.stats
                .snapshot_sent_ms
                .store(started.elapsed().as_millis() as u64, Relaxed);
        }
        Ok(())
    }

    async fn send_contributions(
        &mut self,
        tables: Vec<pb::TableContributions>,
        n: usize,
        live: bool,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        self.seq += 1;
        let c = pb::Contributions {
            seq: self.seq,
            tables,
        };
        let bytes = c.encoded_len() as u64;
        self.send(
            if live {
                Body::Batch(c)
            } else {
                Body::Snapshot(c)
            },
            cancel,
        )
        .await?;
        self.stats.updates_sent.fetch_add(n as u64, Relaxed);
        self.stats.bytes_sent.fetch_add(bytes, Relaxed);
        self.stats.batches_sent.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn send(&mut self, body: Body, cancel: &CancellationToken) -> Result<(), End> {
        let msg = pb::PeerMessage { body: Some(body) };
        tokio::select! {
            r = self.out.send(msg) => r.map_err(|_| End::Closed(None))?,
            _ = cancel.cancelled() => return Err(End::Cancelled),
        }
        self.last_sent = Instant::now();
        Ok(())
    }

    /// On shutdown: send what is pending (bounded by the caller's grace period), say goodbye.
    async fn finish(&mut self) -> End {
        let flush = CancellationToken::new();
        loop {
            let (batch, n) = self.take_live(self.shared.clock.tick());
            if n == 0 {
                break;
            }
            if self
                .send_contributions(batch, n, true, &flush)
                .await
                .is_err()
            {
                return End::Cancelled;
            }
        }
        let bye = Body::Goodbye(pb::Goodbye {
            reason: "node shutting down".into(),
        });
        let _ = self.send(bye, &flush).await;
        End::Cancelled
    }
}

/// Reads the peer's messages until the stream ends or breaks a rule.
async fn receive(
    shared: &Arc<Shared>,
    peer: &OriginName,
    stats: &PeerStats,
    mut inbound: tonic::Streaming<pb::PeerMessage>,
    to_ack: watch::Sender<u64>,
    acked: watch::Sender<u64>,
) -> End {
    let origins = shared.tables.origins();
    let Ok(peer_id) = origins.intern(peer) else {
        return End::Failed("too many origins".into());
    };
    let started = Instant::now();
    loop {
        let msg = match tokio::time::timeout(shared.cfg.dead_after, inbound.message()).await {
            Err(_) => return End::Failed(format!("peer silent for {:?}", shared.cfg.dead_after)),
            Ok(Err(status)) => return End::Failed(format!("stream broke: {}", status.message())),
            Ok(Ok(None)) => return End::Closed(None),
            Ok(Ok(Some(m))) => m,
        };
        origins.heard(peer_id, shared.clock.tick());
        match msg.body {
            Some(Body::Batch(c)) => {
                if let Err(why) = apply(shared, stats, &c, Some(peer)).await {
                    return End::Failed(why);
                }
                ack(&to_ack, c.seq).await;
            }
            Some(Body::Snapshot(c)) => {
                if let Err(why) = apply(shared, stats, &c, None).await {
                    return End::Failed(why);
                }
                ack(&to_ack, c.seq).await;
            }
            Some(Body::SnapshotDone(d)) => {
                let ms = started.elapsed().as_millis() as u64;
                stats.snapshot_received_ms.store(ms, Relaxed);
                tracing::info!(peer = %peer.node, contributions = d.contributions, ms, "snapshot from peer applied");
                if !shared.ready.send_replace(true) {
                    tracing::info!(peer = %peer.node, "ready: first snapshot from a peer applied");
                }
            }
            Some(Body::Ack(a)) => {
                acked.send_replace(a.seq);
            }
            Some(Body::Heartbeat(_)) => {}
            Some(Body::Membership(m)) => shared.merge_membership(&m),
            Some(Body::Goodbye(g)) => return End::Closed(Some(g.reason)),
            Some(Body::Hello(_)) => return End::Failed("a second hello in one session".into()),
            None => return End::Failed("a message with no body".into()),
        }
    }
}

/// Has the sender acknowledge `seq`, and lets it run before the next message is applied.
/// Without the yield, a receiver with messages buffered applied them all before the ack went
/// out: the peer, its window full, sat idle meanwhile, then sent a burst while this node sat
/// idle in turn.
async fn ack(to_ack: &watch::Sender<u64>, seq: u64) {
    to_ack.send_replace(seq);
    tokio::task::yield_now().await;
}

/// Lets replication's other tasks run between two slices of a message and, on a thread of its
/// own that has held the core for [`CORE_TURN`], the node's workers too. Only the kernel can
/// hand the core to another thread before the time slice ends, and a blocking `sched_yield`
/// is what asks it to: it returns at once when no other thread is waiting.
async fn between_slices(shared: &Shared, turn: &mut Instant) {
    if shared.cfg.own_thread && turn.elapsed() >= CORE_TURN {
        std::thread::yield_now();
        *turn = Instant::now();
    }
    tokio::task::yield_now().await;
}

/// Checks a whole message against the tables, then applies it: a bad contribution anywhere
/// applies nothing. `live` messages must carry only the sender's own contributions. Both the
/// checking and the applying go [`SLICE`] contributions at a time with a yield in between, so
/// on a node's one thread the requests that arrive meanwhile wait for a slice, not for the
/// whole message.
async fn apply(
    shared: &Shared,
    stats: &PeerStats,
    c: &pb::Contributions,
    live: Option<&OriginName>,
) -> Result<(), String> {
    let total: usize = c.tables.iter().map(|t| t.len()).sum();
    if total > MAX_MESSAGE_CONTRIBUTIONS {
        return Err(format!(
            "{total} contributions in one message (at most {MAX_MESSAGE_CONTRIBUTIONS})"
        ));
    }
    let mut turn = Instant::now();
    let mut incoming = shared.tables.receive(c, live).map_err(|e| e.to_string())?;
    let m = loop {
        match incoming.check(SLICE).map_err(|e| e.to_string())? {
            Step::Checked(m) => break m,
            Step::More(rest) => incoming = rest,
        }
        between_slices(shared, &mut turn).await;
    };
    // A message of one slice (every live change that propagates alone) is checked and
    // applied at once: a yield would only queue it behind the node's other tasks.
    let mut at = 0;
    while at < m.len() {
        if m.len() > SLICE {
            between_slices(shared, &mut turn).await;
        }
        let end = m.len().min(at + SLICE);
        m.apply(at..end, shared.clock.tick());
        at = end;
    }
    stats.updates_received.fetch_add(total as u64, Relaxed);
    stats
        .bytes_received
        .fetch_add(c.encoded_len() as u64, Relaxed);
    stats.batches_received.fetch_add(1, Relaxed);
    Ok(())
}
