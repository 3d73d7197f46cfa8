//! The node's fleet side: replication of its tables to its peers (`sluice_sync::replication`),
//! the admin API, what `/readyz` waits for, and the metrics of tables and peers. Started before
//! the frontends, stopped after they have drained, so the last changes reach the peers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_sync::replication::{Identity, ReplicationConfig, Replicator, TlsPaths};
use sluice_sync::{NodeClock, Tables};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::admin::{self, AdminState, AdminTls};
use crate::config::{ClusterTlsConfig, Config};
use crate::node::NodeError;

/// How long replication gets to send its last changes on shutdown.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Replication and the admin API of a running node.
#[derive(Debug)]
pub(crate) struct Cluster {
    replicator: Option<Replicator>,
    sync_thread: Option<SyncThread>,
    identity: Option<Arc<Identity>>,
    admin_addr: Option<SocketAddr>,
    ready: watch::Receiver<bool>,
    tables: Arc<Tables>,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Replication's own thread, with a single-threaded runtime of its own.
///
/// On the node's runtime, a message from a peer waited behind every request task that was
/// ready before it, and on a busy node those requests were judged against counts that the
/// message would have raised. On its own thread, replication is woken by the kernel when a
/// peer's bytes arrive and applies them while requests are served, and a sender runs as soon
/// as a change wakes it; replication's I/O never runs on a proxy worker. The thread asks the
/// kernel for short turns ([`crate::sched`]), so that where it shares a core it runs soon
/// after it wakes, without a larger share of the core.
#[derive(Debug)]
struct SyncThread {
    runtime: tokio::runtime::Handle,
    /// Ends the thread (its runtime and any task still on it).
    exit: CancellationToken,
}

impl SyncThread {
    fn start() -> std::io::Result<SyncThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runtime = rt.handle().clone();
        let exit = CancellationToken::new();
        let ended = exit.clone();
        std::thread::Builder::new()
            .name("sluice-sync".into())
            .spawn(move || {
                match crate::sched::request_slice(crate::sched::SHORT_SLICE) {
                    Ok(0) => debug!("replication thread: the kernel keeps its default turn"),
                    Ok(ns) => debug!(slice_ns = ns, "replication thread: short scheduler turns"),
                    Err(error) => debug!(%error, "replication thread: default scheduler turns"),
                }
                rt.block_on(ended.cancelled())
            })?;
        Ok(SyncThread { runtime, exit })
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        self.exit.cancel();
    }
}

fn tls_paths(t: &ClusterTlsConfig) -> TlsPaths {
    TlsPaths {
        ca: t.ca.clone(),
        cert: t.cert.clone(),
        key: t.key.clone(),
    }
}

impl Cluster {
    /// Starts replication (with `[sync]`) and the admin API (with `[admin]`).
    pub(crate) async fn start(
        config: &Config,
        tables: Arc<Tables>,
        clock: NodeClock,
        started: tokio::time::Instant,
    ) -> Result<Cluster, NodeError> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let started_sync = match (&config.sync, &config.tls, &config.node.state_dir) {
            (Some(s), Some(tls), Some(state_dir)) => {
                let cfg = ReplicationConfig {
                    listen: s.listen,
                    peers: s
                        .peers
                        .iter()
                        .map(|p| (p.name.clone(), p.addr.to_string()))
                        .collect(),
                    flush_interval: s.flush_interval,
                    dead_after: s.dead_after,
                    ready_wait: s.ready_wait,
                    state_dir: state_dir.clone(),
                    tls: tls_paths(tls),
                    own_thread: true,
                };
                let thread = SyncThread::start()
                    .map_err(|e| NodeError::Cluster(format!("replication thread: {e}")))?;
                let r = thread
                    .runtime
                    .spawn(Replicator::start(cfg, tables.clone(), clock, token.clone()))
                    .await
                    .map_err(|e| NodeError::Cluster(format!("replication: {e}")))?
                    .map_err(|e| NodeError::Cluster(format!("replication: {e}")))?;
                Some((r, thread))
            }
            // Config validation requires [tls] and node.state_dir with [sync].
            (Some(_), _, _) => {
                return Err(NodeError::Cluster(
                    "[sync] needs [tls] and node.state_dir".into(),
                ));
            }
            (None, _, _) => None,
        };
        let (replicator, sync_thread) = started_sync.unzip();
        let identity = match (&replicator, &config.tls) {
            (Some(r), _) => Some(r.identity()),
            (None, Some(tls))
                if config
                    .admin
                    .as_ref()
                    .is_some_and(|a| !a.listen.ip().is_loopback()) =>
            {
                Some(Arc::new(
                    Identity::load(&config.node.name, tls_paths(tls))
                        .map_err(|e| NodeError::Cluster(format!("tls: {e}")))?,
                ))
            }
            _ => None,
        };
        let ready = match &replicator {
            Some(r) => r.ready(),
            None => watch::channel(true).1,
        };
        let mut admin_addr = None;
        if let Some(a) = &config.admin {
            // Plaintext on loopback, so a local sluicectl needs no certificate; mutual TLS with
            // the fleet identity anywhere else (config validation requires [tls] then).
            let tls = match (a.listen.ip().is_loopback(), &identity) {
                (true, _) => None,
                (false, Some(id)) => Some(AdminTls::identity(id.clone())),
                (false, None) => {
                    return Err(NodeError::Cluster(
                        "admin.listen off loopback needs [tls]".into(),
                    ));
                }
            };
            let mut state = AdminState::new(tables.clone(), clock)
                .with_started(started)
                .with_ready(ready.clone());
            if let Some(r) = &replicator {
                state = state.with_replicator(r.clone());
            }
            let listener = admin::bind(a.listen, tls, state)
                .await
                .map_err(|e| NodeError::Cluster(e.to_string()))?;
            admin_addr = Some(listener.local_addr());
            let t = token.clone();
            tracker.spawn(async move {
                if let Err(e) = listener.serve(t).await {
                    error!(error = %e, "admin API stopped");
                }
            });
        }
        Ok(Cluster {
            replicator,
            sync_thread,
            identity,
            admin_addr,
            ready,
            tables,
            token,
            tracker,
        })
    }

    /// Readiness of the fleet side: the first peer snapshot applied (or no peers, or
    /// `sync.ready_wait` passed).
    pub(crate) fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// The running replication.
    pub(crate) fn replicator(&self) -> Option<&Replicator> {
        self.replicator.as_ref()
    }

    /// Where the admin API listens.
    pub(crate) fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// On `SIGHUP`: re-reads the fleet CA, certificate and key (running sessions keep theirs).
    pub(crate) fn reload_tls(&self) {
        if let Some(id) = &self.identity {
            match id.reload() {
                Ok(()) => info!("fleet TLS identity reloaded"),
                Err(e) => {
                    error!(error = %e, "fleet TLS identity not reloaded; the current one stays")
                }
            }
        }
    }

    /// After a reload changed what replication would be configured with: what it can follow
    /// at once, and a warning for the rest.
    pub(crate) fn reconfigured(&self, old: &Config, new: &Config, replicated_tables_changed: bool) {
        if old
            .sync
            .as_ref()
            .map(|s| (s.listen, s.flush_interval, s.dead_after, s.ready_wait))
            != new
                .sync
                .as_ref()
                .map(|s| (s.listen, s.flush_interval, s.dead_after, s.ready_wait))
        {
            warn!(
                "[sync] settings change only on restart (peers: use `sluicectl peer add/remove`)"
            );
        }
        if old.admin != new.admin {
            warn!("admin.listen changes only on restart");
        }
        if replicated_tables_changed && let Some(r) = &self.replicator {
            info!("replicated tables changed: restarting peer sessions to compare schemas again");
            r.restart_sessions();
        }
    }

    /// After the node drained: lets replication send what is pending, then stops it and the
    /// admin API.
    pub(crate) async fn stop(&self) {
        self.token.cancel();
        if let Some(r) = &self.replicator
            && tokio::time::timeout(FLUSH_GRACE, r.closed()).await.is_err()
        {
            warn!("replication did not finish flushing in time");
        }
        self.tracker.close();
        let _ = tokio::time::timeout(FLUSH_GRACE, self.tracker.wait()).await;
        if let Some(t) = &self.sync_thread {
            t.exit.cancel();
        }
    }

    /// Table and replication metrics, Prometheus text.
    pub(crate) fn render(&self, out: &mut String) {
        let tables = self.tables.all();
        family(out, "sluice_table_entries", "gauge", "Entries held.");
        for (name, t) in tables.iter() {
            let _ = writeln!(out, "sluice_table_entries{{table=\"{name}\"}} {}", t.len());
        }
        family(
            out,
            "sluice_table_size",
            "gauge",
            "Configured size (entries).",
        );
        for (name, t) in tables.iter() {
            let _ = writeln!(
                out,
                "sluice_table_size{{table=\"{name}\"}} {}",
                t.schema().size
            );
        }
        let stats: Vec<_> = tables.iter().map(|(n, t)| (n, t.stats())).collect();
        for (metric, help, get) in [
            (
                "sluice_table_evictions_total",
                "Entries evicted to make room.",
                (|s| s.evictions) as fn(&sluice_sync::TableStats) -> u64,
            ),
            (
                "sluice_table_evictions_unexpired_total",
                "Entries evicted before their expire: the table is undersized.",
                |s| s.evictions_unexpired,
            ),
            (
                "sluice_table_expired_total",
                "Entries removed because they expired.",
                |s| s.expired,
            ),
        ] {
            family(out, metric, "counter", help);
            for (name, s) in &stats {
                let _ = writeln!(out, "{metric}{{table=\"{name}\"}} {}", get(s));
            }
        }
        family(
            out,
            "sluice_ready",
            "gauge",
            "1 once the first peer snapshot was applied (or none was needed).",
        );
        let _ = writeln!(out, "sluice_ready {}", u8::from(*self.ready.borrow()));
        let Some(r) = &self.replicator else { return };
        let peers = r.peers();
        type Get = fn(&sluice_sync::replication::PeerStatus) -> f64;
        let rows: [(&str, &str, &str, Get); 12] = [
            (
                "sluice_sync_peer_up",
                "gauge",
                "1 while a session with the peer is established.",
                |p| f64::from(u8::from(p.up)),
            ),
            (
                "sluice_sync_peer_sessions_total",
                "counter",
                "Sessions established with the peer.",
                |p| p.sessions as f64,
            ),
            (
                "sluice_sync_updates_sent_total",
                "counter",
                "Contributions sent.",
                |p| p.updates_sent as f64,
            ),
            (
                "sluice_sync_updates_received_total",
                "counter",
                "Contributions received and applied.",
                |p| p.updates_received as f64,
            ),
            (
                "sluice_sync_bytes_sent_total",
                "counter",
                "Protobuf bytes of contributions sent.",
                |p| p.bytes_sent as f64,
            ),
            (
                "sluice_sync_bytes_received_total",
                "counter",
                "Protobuf bytes of contributions received.",
                |p| p.bytes_received as f64,
            ),
            (
                "sluice_sync_batches_sent_total",
                "counter",
                "Messages of contributions sent.",
                |p| p.batches_sent as f64,
            ),
            (
                "sluice_sync_batches_received_total",
                "counter",
                "Messages of contributions received.",
                |p| p.batches_received as f64,
            ),
            (
                "sluice_sync_snapshot_sent_seconds",
                "gauge",
                "Duration of the last snapshot sent.",
                |p| p.snapshot_sent_ms as f64 / 1000.0,
            ),
            (
                "sluice_sync_snapshot_received_seconds",
                "gauge",
                "Duration of the last snapshot received.",
                |p| p.snapshot_received_ms as f64 / 1000.0,
            ),
            (
                "sluice_sync_lag_seconds",
                "gauge",
                "Age of the oldest change not yet sent to the peer.",
                |p| p.lag_ms as f64 / 1000.0,
            ),
            (
                "sluice_sync_peer_refused",
                "gauge",
                "1 when the last session attempt failed or was refused.",
                |p| f64::from(u8::from(p.last_error.is_some())),
            ),
        ];
        for (metric, kind, help, get) in rows {
            family(out, metric, kind, help);
            for p in &peers {
                let _ = writeln!(out, "{metric}{{peer=\"{}\"}} {}", p.name, get(p));
            }
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
