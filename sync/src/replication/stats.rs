//! Per-peer replication counters: plain atomics written by the peer's session, read on scrape.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

/// Counters of one peer, kept across its sessions.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    pub(crate) up: AtomicBool,
    pub(crate) sessions: AtomicU64,
    pub(crate) updates_sent: AtomicU64,
    pub(crate) updates_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) batches_received: AtomicU64,
    pub(crate) snapshot_sent_ms: AtomicU64,
    pub(crate) snapshot_received_ms: AtomicU64,
    /// Tick (+1) since which a change waits to be sent; 0 when nothing waits.
    pub(crate) pending_since: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

/// What the node knows of one peer, for `sluicectl peer list`, `status` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer's node name.
    pub name: String,
    /// Its replication address.
    pub addr: String,
    /// Whether a session with it is established.
    pub up: bool,
    /// Sessions established since start.
    pub sessions: u64,
    /// Contributions sent / received.
    pub updates_sent: u64,
    /// Contributions received.
    pub updates_received: u64,
    /// Protobuf bytes of contributions sent.
    pub bytes_sent: u64,
    /// Protobuf bytes of contributions received.
    pub bytes_received: u64,
    /// Messages of contributions sent.
    pub batches_sent: u64,
    /// Messages of contributions received.
    pub batches_received: u64,
    /// Duration of the last snapshot sent to it.
    pub snapshot_sent_ms: u64,
    /// Duration of the last snapshot received from it.
    pub snapshot_received_ms: u64,
    /// Age of the oldest change not yet sent to it, in milliseconds.
    pub lag_ms: u64,
    /// Why the last session failed or was refused, if it did.
    pub last_error: Option<String>,
}

impl PeerStats {
    pub(crate) fn status(&self, name: &str, addr: &str, now_tick: u32) -> PeerStatus {
        let pending = self.pending_since.load(Relaxed);
        PeerStatus {
            name: name.into(),
            addr: addr.into(),
            up: self.up.load(Relaxed),
            sessions: self.sessions.load(Relaxed),
            updates_sent: self.updates_sent.load(Relaxed),
            updates_received: self.updates_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            batches_received: self.batches_received.load(Relaxed),
            snapshot_sent_ms: self.snapshot_sent_ms.load(Relaxed),
            snapshot_received_ms: self.snapshot_received_ms.load(Relaxed),
            lag_ms: if pending == 0 {
                0
            } else {
                u64::from(now_tick.wrapping_sub((pending - 1) as u32))
            },
            last_error: self.last_error.lock().clone(),
        }
    }
}
