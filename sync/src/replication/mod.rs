//! Replication: the async shell around the table engine. A full mesh of mutually
//! authenticated gRPC sessions (`sluice.sync.v1.Replication/Session`), one per pair of peers,
//! opened by the peer whose name sorts first. Each session sends the node's own changes as soon
//! as the stream can take them, batching what gathers meanwhile; on every (re)connection both
//! sides send a snapshot of every origin's contributions; membership changes flood through the
//! sessions and are persisted in `state_dir`.
//!
//! This module only moves bytes and timers; what a message means is decided by the engine
//! (`Table::apply`, the change feed) and by [`crate::membership`].

mod accept;
mod dial;
mod session;
mod stats;
pub mod tls;
mod wake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::sync::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::NodeClock;
use crate::membership::{Member, Membership, MembershipError};
use crate::origin::OriginName;
use crate::shard::MAX_CONSUMERS;
use crate::tables::Tables;

pub use stats::PeerStatus;
pub use tls::{Identity, TlsError, TlsPaths};

use stats::PeerStats;
use wake::FeedWaker;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// How replication is set up (the `[sync]` and `[tls]` sections, typed).
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Address of the replication listener.
    pub listen: SocketAddr,
    /// Peers from the config: they seed the membership (name, `host:port`).
    pub peers: Vec<(String, String)>,
    /// The longest a change waits to join a batch while earlier ones are in flight.
    pub flush_interval: Duration,
    /// A silent peer's gauges stop counting, and its session is dropped, after this.
    pub dead_after: Duration,
    /// How long to wait for a first snapshot before turning ready with local state only.
    pub ready_wait: Duration,
    /// Where membership and the incarnation counter are persisted.
    pub state_dir: PathBuf,
    /// The fleet identity.
    pub tls: TlsPaths,
    /// Replication runs on a thread of its own that shares cores with the node's workers.
    /// Between slices of a large received message it then gives its core back to the kernel
    /// every 500 µs, so a worker with requests waiting runs within that, not after a
    /// scheduler tick. Off where replication shares its thread with the caller's work
    /// (tests, the benchmark's feeder): there the yield would only hand the core to that work.
    pub own_thread: bool,
}

/// Replication that cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The fleet identity cannot be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `state_dir` cannot be read or written.
    #[error("state directory {path}: {why}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A seed peer in the config is invalid.
    #[error("sync.peers: {0}")]
    Seed(#[from] MembershipError),
}

/// Most contributions in one message.
const MAX_BATCH: usize = 1024;
/// Most contributions in one snapshot message: larger than live batches, since a snapshot is
/// throughput, not latency.
const MAX_CHUNK: usize = 4096;
/// HTTP/2 flow-control windows. The 64 KiB default would let about two batches be in flight
/// and turn every snapshot into a string of window updates.
const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// Most contributions of a received message checked, or applied, between two yields: some
/// tens of µs of a node's thread, which requests arriving meanwhile wait for.
const SLICE: usize = 256;
/// With [`ReplicationConfig::own_thread`], the longest a received message holds the thread
/// before it yields the core: a worker that woke meanwhile waits at most about this long,
/// where the kernel would let replication run out its time slice (some milliseconds).
const CORE_TURN: Duration = Duration::from_micros(500);
/// Most contributions a peer may put in one message before it is refused.
const MAX_MESSAGE_CONTRIBUTIONS: usize = 16 * MAX_BATCH;
/// Messages queued towards one peer's stream.
const CHANNEL: usize = 16;
/// A session must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Per session slot (one per connected peer): what its change-feed consumers wake.
type Wakers = Arc<[FeedWaker]>;

struct SessionHandle {
    id: u64,
    cancel: CancellationToken,
}

struct PeerEntry {
    stats: Arc<PeerStats>,
    addr: String,
}

pub(crate) struct Shared {
    cfg: ReplicationConfig,
    tables: Arc<Tables>,
    identity: Arc<Identity>,
    clock: NodeClock,
    me: OriginName,
    membership: Mutex<Membership>,
    /// Bumped when the membership changes; sessions send it on.
    membership_version: watch::Sender<u64>,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    dialers: Mutex<HashMap<String, (String, CancellationToken)>>,
    peers: Mutex<HashMap<String, PeerEntry>>,
    slots: Mutex<u64>,
    wakers: Wakers,
    ready: watch::Sender<bool>,
    next_session: std::sync::atomic::AtomicU64,
    tracker: TaskTracker,
    /// The runtime [`Replicator::start`] ran on: every replication task runs there, even one
    /// started by a call from another runtime (an admin `peer add`).
    runtime: tokio::runtime::Handle,
    cancel: CancellationToken,
}

/// A running replication layer.
#[derive(Clone)]
pub struct Replicator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("node", &self.shared.me)
            .field("listen", &self.local_addr)
            .finish()
    }
}

impl Replicator {
    /// Loads the identity and membership, binds the listener and starts accepting and dialing
    /// peers. Runs until `cancel` fires; [`Replicator::closed`] then waits for the sessions to
    /// flush and end. `tables`' local origin must be this node's incarnation (see
    /// [`next_incarnation`]).
    pub async fn start(
        cfg: ReplicationConfig,
        tables: Arc<Tables>,
        clock: NodeClock,
        cancel: CancellationToken,
    ) -> Result<Replicator, ReplicationError> {
        let me = tables.origins().local();
        let identity = Arc::new(Identity::load(&me.node, cfg.tls.clone())?);
        let mut membership = Membership::new(me.node.clone());
        for (name, addr) in &cfg.peers {
            membership.add(name, addr, 0)?;
        }
        let persisted = load_membership(&cfg.state_dir)?;
        membership.merge(persisted.iter());
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| ReplicationError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ReplicationError::Bind {
                addr: cfg.listen,
                source,
            })?;

        let wakers: Wakers = (0..MAX_CONSUMERS).map(|_| FeedWaker::default()).collect();
        let no_peers = membership.peers().next().is_none();
        let shared = Arc::new(Shared {
            identity,
            clock,
            me,
            membership: Mutex::new(membership),
            membership_version: watch::channel(0).0,
            sessions: Mutex::new(HashMap::new()),
            dialers: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            slots: Mutex::new(0),
            wakers: wakers.clone(),
            ready: watch::channel(false).0,
            next_session: std::sync::atomic::AtomicU64::new(1),
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            cancel,
            tables,
            cfg,
        });
        shared.tables.set_listener(Arc::new(move |mask: u64| {
            let mut m = mask;
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                if let Some(w) = wakers.get(i) {
                    w.wake();
                }
                m &= m - 1;
            }
        }));
        shared.persist_membership();
        if no_peers {
            shared.ready.send_replace(true);
            tracing::info!("no peers configured: ready with local state");
        } else {
            let s = shared.clone();
            shared.spawn(async move {
                tokio::select! {
                    _ = s.cancel.cancelled() => {}
                    _ = tokio::time::sleep(s.cfg.ready_wait) => {
                        if !s.ready.send_replace(true) {
                            tracing::warn!(
                                wait = ?s.cfg.ready_wait,
                                "no snapshot from any peer yet: ready with local state only"
                            );
                        }
                    }
                    _ = wait_ready(s.ready.subscribe()) => {}
                }
            });
        }
        accept::spawn(shared.clone(), listener);
        shared.reconcile_dialers();
        tracing::info!(node = %shared.me, listen = %local_addr, "replication started");
        Ok(Replicator { shared, local_addr })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until every session and task has ended after cancellation.
    pub async fn closed(&self) {
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    /// Readiness: true once the first snapshot from a peer was applied, or when there are no
    /// peers, or `ready_wait` passed without one.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// Adds a peer (or changes its address) fleet-wide.
    pub fn add_peer(&self, name: &str, addr: &str) -> Result<(), MembershipError> {
        let stamp = self.shared.tables.hlc().stamp(self.shared.clock.wall_ms());
        self.shared.membership.lock().add(name, addr, stamp)?;
        self.shared.membership_changed();
        Ok(())
    }

    /// Removes a peer fleet-wide: its sessions close and its contributions age out.
    pub fn remove_peer(&self, name: &str) -> Result<(), MembershipError> {
        let stamp = self.shared.tables.hlc().stamp(self.shared.clock.wall_ms());
        self.shared.membership.lock().remove(name, stamp)?;
        self.shared.membership_changed();
        Ok(())
    }

    /// The current peers with their state.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let members: Vec<Member> = self.shared.membership.lock().peers().cloned().collect();
        let now = self.shared.clock.tick().0;
        members
            .iter()
            .map(|m| {
                self.shared
                    .peer_stats(&m.name, &m.addr)
                    .status(&m.name, &m.addr, now)
            })
            .collect()
    }

    /// Every member including tombstones (for persistence checks and the admin API).
    pub fn members(&self) -> Vec<Member> {
        self.shared.membership.lock().all().cloned().collect()
    }

    /// Re-reads the CA, certificate and key. Running sessions are kept; new ones use the new
    /// files. On error the old identity stays.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.shared.identity.reload()?;
        tracing::info!("fleet TLS identity reloaded");
        Ok(())
    }

    /// The fleet identity replication uses; the admin API serves with it too, so one reload
    /// rotates both.
    pub fn identity(&self) -> Arc<Identity> {
        self.shared.identity.clone()
    }

    /// Restarts every session, e.g. after the set of replicated tables changed on reload, so
    /// peers compare schemas again and subscribe to the new tables.
    pub fn restart_sessions(&self) {
        for s in self.shared.sessions.lock().values() {
            s.cancel.cancel();
        }
    }
}

async fn wait_ready(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|r| *r).await;
}

impl Shared {
    /// Starts a replication task on replication's runtime, tracked for [`Replicator::closed`].
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(task, &self.runtime);
    }

    fn peer_stats(&self, name: &str, addr: &str) -> Arc<PeerStats> {
        let mut peers = self.peers.lock();
        let e = peers.entry(name.to_string()).or_insert_with(|| PeerEntry {
            stats: Arc::new(PeerStats::default()),
            addr: addr.to_string(),
        });
        if !addr.is_empty() {
            e.addr = addr.to_string();
        }
        e.stats.clone()
    }

    /// Our hello.
    fn hello(&self) -> pb::Hello {
        pb::Hello {
            node: self.me.node.clone(),
            incarnation: self.me.incarnation,
            protocol_version: PROTOCOL_VERSION,
            schemas_digest: self.tables.digest(),
            schemas: self.tables.schemas(),
            membership: Some(self.membership_msg()),
        }
    }

    fn membership_msg(&self) -> pb::Membership {
        pb::Membership {
            members: self
                .membership
                .lock()
                .all()
                .map(|m| pb::Member {
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    removed: m.removed,
                    stamp: m.stamp,
                })
                .collect(),
        }
    }

    /// Merges a peer's view of the membership.
    fn merge_membership(self: &Arc<Self>, m: &pb::Membership) {
        let members: Vec<Member> = m
            .members
            .iter()
            .map(|m| Member {
                name: m.name.clone(),
                addr: m.addr.clone(),
                removed: m.removed,
                stamp: m.stamp,
            })
            .collect();
        for m in &members {
            self.tables.hlc().observe(m.stamp);
        }
        if self.membership.lock().merge(members.iter()) {
            self.membership_changed();
        }
    }

    /// Persists, floods and acts on a membership change.
    fn membership_changed(self: &Arc<Self>) {
        self.persist_membership();
        self.membership_version.send_modify(|v| *v += 1);
        let (peers, self_removed) = {
            let ms = self.membership.lock();
            (
                ms.peers().map(|m| m.name.clone()).collect::<Vec<_>>(),
                ms.self_removed(),
            )
        };
        if self_removed {
            tracing::warn!("this node was removed from the fleet: closing every peer session");
        }
        // Close sessions with peers that are gone, and forget their contributions' liveness.
        let gone: Vec<String> = self
            .sessions
            .lock()
            .keys()
            .filter(|n| self_removed || !peers.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(s) = self.sessions.lock().remove(&name) {
                tracing::info!(peer = %name, "peer removed: closing its session");
                s.cancel.cancel();
            }
            for id in self.tables.origins().ids_of_node(&name) {
                self.tables.origins().forget(id);
            }
        }
        self.reconcile_dialers();
    }

    fn persist_membership(&self) {
        let members: Vec<Member> = self.membership.lock().all().cloned().collect();
        if let Err(e) = save_membership(&self.cfg.state_dir, &members) {
            tracing::error!(error = %e, "cannot persist membership");
        }
    }

    /// Starts a dialer for every peer this node should dial (names sorting after ours) and
    /// stops dialers of peers that are gone or moved.
    fn reconcile_dialers(self: &Arc<Self>) {
        let (want, self_removed): (HashMap<String, String>, bool) = {
            let ms = self.membership.lock();
            (
                ms.peers()
                    .filter(|m| m.name.as_str() > self.me.node.as_str())
                    .map(|m| (m.name.clone(), m.addr.clone()))
                    .collect(),
                ms.self_removed(),
            )
        };
        let mut dialers = self.dialers.lock();
        dialers.retain(|name, (addr, cancel)| {
            let keep = !self_removed && want.get(name) == Some(addr);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        if self_removed || self.cancel.is_cancelled() {
            return;
        }
        for (name, addr) in want {
            if dialers.contains_key(&name) {
                continue;
            }
            let cancel = self.cancel.child_token();
            dialers.insert(name.clone(), (addr.clone(), cancel.clone()));
            dial::spawn(self.clone(), name, addr, cancel);
        }
    }

    /// Registers a new session with `peer`, closing any older one, and reserves its slot.
    fn open_session(&self, peer: &str) -> Option<(u64, usize, CancellationToken)> {
        let slot = {
            let mut slots = self.slots.lock();
            let slot = (!*slots).trailing_zeros() as usize;
            if slot >= MAX_CONSUMERS {
                return None;
            }
            *slots |= 1 << slot;
            slot
        };
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = self.cancel.child_token();
        if let Some(old) = self.sessions.lock().insert(
            peer.to_string(),
            SessionHandle {
                id,
                cancel: cancel.clone(),
            },
        ) {
            old.cancel.cancel();
        }
        Some((id, slot, cancel))
    }

    fn close_session(&self, peer: &str, id: u64, slot: usize) {
        let mut sessions = self.sessions.lock();
        if sessions.get(peer).is_some_and(|s| s.id == id) {
            sessions.remove(peer);
        }
        drop(sessions);
        self.wakers[slot].disarm();
        *self.slots.lock() &= !(1u64 << slot);
    }
}

// === persisted state ===

fn state_err(path: &std::path::Path, e: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::State {
        path: path.into(),
        why: e.to_string(),
    }
}

fn load_membership(dir: &std::path::Path) -> Result<Vec<Member>, ReplicationError> {
    let path = dir.join("membership.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| state_err(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(state_err(&path, e)),
    }
}

fn save_membership(dir: &std::path::Path, members: &[Member]) -> Result<(), ReplicationError> {
    std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
    let path = dir.join("membership.json");
    let tmp = dir.join("membership.json.tmp");
    let bytes = serde_json::to_vec_pretty(members).map_err(|e| state_err(&path, e))?;
    // Write then rename, so a crash leaves the old file or the new one, never half of one.
    std::fs::write(&tmp, bytes).map_err(|e| state_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| state_err(&path, e))
}

/// The incarnation for this start of the node: larger than every earlier one, persisted in
/// `state_dir`. Wall-clock milliseconds, or one more than the last if the clock went back.
pub fn next_incarnation(
    state_dir: &std::path::Path,
    wall_ms: u64,
) -> Result<u64, ReplicationError> {
    std::fs::create_dir_all(state_dir).map_err(|e| state_err(state_dir, e))?;
    let path = state_dir.join("incarnation");
    let last = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| state_err(&path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(state_err(&path, e)),
    };
    let next = wall_ms.max(last + 1);
    std::fs::write(&path, next.to_string()).map_err(|e| state_err(&path, e))?;
    Ok(next)
}
