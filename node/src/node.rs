//! The node: starts every frontend, backend and the operations endpoint from a [`Config`],
//! applies new configs on reload, drains on cancellation, and publishes its [`Phase`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use sluice_sync::{NodeClock, OriginName, ReconcileError, Tables};

use crate::backend::{Backend, Background};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::listener::{self, Frontend, Listener, NodeHandles};
use crate::metrics::Registry;
use crate::tls::{self, TlsError};

/// Where a node is in its life. Tests and `/readyz` wait on it instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Binding sockets and resolving backends.
    Starting,
    /// Accepting and proxying.
    Serving,
    /// Not accepting; finishing requests in flight.
    Draining,
    /// Everything has stopped.
    Stopped,
}

impl Phase {
    /// Lowercase name, as in metrics and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// A node that cannot start or a config that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A listening socket could not be bound.
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        /// `frontend NAME` or `metrics`.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A frontend's certificate or key is unusable.
    #[error("frontend `{frontend}`: {source}")]
    Tls {
        /// Frontend name.
        frontend: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// The node has stopped and takes no new config.
    #[error("the node is shutting down")]
    Stopping,
    /// A table's definition changed on reload (its contents would be lost).
    #[error(transparent)]
    Tables(#[from] ReconcileError),
    /// `node.state_dir` cannot be used.
    #[error("node.state_dir: {0}")]
    StateDir(String),
    /// Replication or the admin API cannot start.
    #[error("{0}")]
    Cluster(String),
}

/// Health and load of one backend server, as the node sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// Health state: true when up.
    pub up: bool,
    /// Requests or connections in flight.
    pub active: u64,
    /// Idle pooled connections.
    pub idle: usize,
}

/// A running node; a cheap handle (clones share the node).
#[derive(Debug, Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Cancelled by the owner to drain and stop.
    token: CancellationToken,
    /// Accept loops and client connections: what draining waits for.
    conns: TaskTracker,
    /// Health checks, DNS, backend connection drivers, the metrics endpoint: stopped after
    /// draining, since in-flight requests need their backend connections.
    bg: Background,
    phase: watch::Sender<Phase>,
    registry: Arc<Registry>,
    state: Mutex<State>,
    /// Serialises reloads (held across the awaits of one reload, never on the request path).
    reload: tokio::sync::Mutex<()>,
    metrics_addr: Option<SocketAddr>,
    /// The stick tables, kept across reloads.
    tables: Arc<Tables>,
    /// The one clock the tables are driven by.
    clock: NodeClock,
    /// Replication and the admin API.
    cluster: Arc<Cluster>,
}

#[derive(Debug)]
struct State {
    config: Config,
    listeners: HashMap<String, Listener>,
    backends: HashMap<String, Arc<Backend>>,
}

impl Node {
    /// Starts a node: binds the metrics endpoint and every frontend, resolves backends and
    /// starts health checks. Returns once the node is serving; cancel `token` to drain it and
    /// then await [`Node::stopped`].
    pub async fn start(config: Config, token: CancellationToken) -> Result<Node, NodeError> {
        let (phase, _) = watch::channel(Phase::Starting);
        let bg = Background {
            tracker: TaskTracker::new(),
            token: CancellationToken::new(),
        };
        let registry = Arc::new(Registry::default());
        let metrics_listener = match &config.metrics {
            None => None,
            Some(m) => Some(listener::bind(m.listen).map_err(|source| NodeError::Bind {
                what: "metrics".into(),
                addr: m.listen,
                source,
            })?),
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let clock = NodeClock::new();
        let tables = Arc::new(Tables::new(
            OriginName {
                node: config.node.name.clone(),
                incarnation: incarnation(&config, &clock)?,
            },
            config.sync.as_ref().map_or(5_000, |s| {
                s.dead_after.as_millis().min(u128::from(u32::MAX)) as u32
            }),
        ));
        bg.tracker.spawn(sluice_sync::sweeper::run(
            tables.clone(),
            clock,
            bg.token.clone(),
        ));
        let started = tokio::time::Instant::now();
        let cluster = Arc::new(Cluster::start(&config, tables.clone(), clock, started).await?);
        let node = Node {
            shared: Arc::new(Shared {
                token,
                conns: TaskTracker::new(),
                bg: bg.clone(),
                phase,
                registry: registry.clone(),
                state: Mutex::new(State {
                    config: config.clone(),
                    listeners: HashMap::new(),
                    backends: HashMap::new(),
                }),
                reload: tokio::sync::Mutex::new(()),
                metrics_addr,
                tables,
                clock,
                cluster: cluster.clone(),
            }),
        };
        if let Err(e) = node.apply(config.clone()).await {
            cluster.stop().await;
            node.shared.bg.token.cancel();
            return Err(e);
        }
        if let Some(l) = metrics_listener {
            crate::ops::spawn(
                l,
                registry,
                config.node.name.clone(),
                node.shared.phase.subscribe(),
                cluster,
                bg,
            );
            if let Some(addr) = metrics_addr {
                info!(url = %crate::ops::describe(addr), "metrics endpoint");
            }
        }
        node.shared.phase.send_replace(Phase::Serving);
        info!(node = %config.node.name, frontends = config.frontends.len(), "serving");
        Ok(node)
    }

    /// Applies a new config: new frontends bind, removed ones stop accepting, changed backends
    /// are rebuilt (servers keep their health state when name and address are unchanged).
    /// Established connections carry on with the config they were accepted under. A config
    /// that cannot be applied (a port in use, a bad certificate) changes nothing.
    pub async fn reload(&self, config: Config) -> Result<(), NodeError> {
        if self.shared.token.is_cancelled() {
            return Err(NodeError::Stopping);
        }
        let old = self.config();
        if old.node.threads != config.node.threads {
            warn!("node.threads changes only on restart");
        }
        if old.metrics != config.metrics {
            warn!("metrics.listen changes only on restart");
        }
        let replicated_changed = self.shared.tables.replicated_set_differs(&config.tables);
        let new = config.clone();
        let res = self.apply(config).await;
        if res.is_ok() {
            self.shared
                .cluster
                .reconfigured(&old, &new, replicated_changed);
        }
        let counter = if res.is_ok() {
            &self.shared.registry.reloads_ok
        } else {
            &self.shared.registry.reloads_failed
        };
        counter.fetch_add(1, Relaxed);
        res
    }

    async fn apply(&self, config: Config) -> Result<(), NodeError> {
        let sh = &self.shared;
        let _serial = sh.reload.lock().await;

        // Everything that can fail happens before anything changes.
        sh.tables.check(&config.tables)?;
        let mut acceptors = Vec::with_capacity(config.frontends.len());
        for fe in &config.frontends {
            let acceptor = match &fe.tls {
                None => None,
                Some(t) => Some(tls::acceptor(t, fe.mode).map_err(|source| NodeError::Tls {
                    frontend: fe.name.clone(),
                    source,
                })?),
            };
            acceptors.push(acceptor);
        }
        let (old_binds, old_backends) = {
            let st = sh.state.lock();
            let binds: HashMap<String, SocketAddr> = st
                .listeners
                .iter()
                .map(|(name, l)| (name.clone(), l.bind))
                .collect();
            (binds, st.backends.clone())
        };
        let mut sockets = HashMap::new();
        for fe in &config.frontends {
            if old_binds.get(&fe.name) != Some(&fe.bind) {
                let sock = listener::bind_frontend(fe.bind).map_err(|source| NodeError::Bind {
                    what: format!("frontend `{}`", fe.name),
                    addr: fe.bind,
                    source,
                })?;
                sockets.insert(fe.name.clone(), sock);
            }
        }
        let mut backends = Vec::with_capacity(config.backends.len());
        for bc in &config.backends {
            let backend = match old_backends.get(&bc.name) {
                Some(old) if old.config == *bc => old.clone(),
                previous => {
                    Backend::start(bc.clone(), previous.map(|b| &**b), &sh.registry, &sh.bg).await
                }
            };
            backends.push(backend);
        }

        // Commit.
        sh.tables.reconcile(config.tables.clone())?;
        let handles = NodeHandles {
            name: config.node.name.clone(),
            bg: sh.bg.clone(),
            tunnels: sh.conns.clone(),
            tables: sh.tables.clone(),
            clock: sh.clock,
        };
        let mut st = sh.state.lock();
        for (fe, acceptor) in config.frontends.iter().zip(acceptors) {
            let frontend = Arc::new(Frontend::new(
                fe.clone(),
                backends[fe.backend].clone(),
                sh.registry.frontend(&fe.name),
                acceptor,
                &handles,
            ));
            match sockets.remove(&fe.name) {
                None => {
                    if let Some(l) = st.listeners.get(&fe.name) {
                        *l.current.write() = frontend;
                    }
                }
                Some(sock) => {
                    if let Some(old) = st.listeners.remove(&fe.name) {
                        old.stop.cancel();
                    }
                    let local = sock.local_addr().unwrap_or(fe.bind);
                    let current = Arc::new(RwLock::new(frontend));
                    let stop = sh.token.child_token();
                    listener::spawn_accept(
                        sock,
                        current.clone(),
                        stop.clone(),
                        sh.token.clone(),
                        sh.conns.clone(),
                    );
                    info!(frontend = %fe.name, addr = %local, mode = fe.mode.as_str(), "listening");
                    st.listeners.insert(
                        fe.name.clone(),
                        Listener {
                            bind: fe.bind,
                            local,
                            current,
                            stop,
                        },
                    );
                }
            }
        }
        st.listeners.retain(|name, l| {
            let keep = config.frontends.iter().any(|f| f.name == *name);
            if !keep {
                info!(frontend = %name, "frontend removed");
                l.stop.cancel();
            }
            keep
        });
        st.backends = backends
            .into_iter()
            .map(|b| (b.config.name.clone(), b))
            .collect();
        let fe_names: Vec<&str> = config.frontends.iter().map(|f| f.name.as_str()).collect();
        let be_names: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
        let servers: Vec<(&str, &str)> = config
            .backends
            .iter()
            .flat_map(|b| {
                b.servers
                    .iter()
                    .map(move |s| (b.name.as_str(), s.name.as_str()))
            })
            .collect();
        sh.registry.retain(&fe_names, &be_names, &servers);
        drop(fe_names);
        drop(be_names);
        drop(servers);
        st.config = config;
        Ok(())
    }

    /// Waits for the owner's token, then drains: accept loops have stopped, HTTP connections
    /// finish their request in flight and close, and after at most `node.drain_timeout` the
    /// rest is abandoned. Returns whether every connection finished in time.
    pub async fn stopped(&self) -> bool {
        let sh = &self.shared;
        sh.token.cancelled().await;
        sh.phase.send_replace(Phase::Draining);
        let grace = self.config().node.drain_timeout;
        info!(grace = ?grace, "draining");
        sh.conns.close();
        let drained = tokio::time::timeout(grace, sh.conns.wait()).await.is_ok();
        if !drained {
            warn!("drain timeout: closing the remaining connections");
        }
        // After the frontends: the changes of the last requests still reach the peers.
        sh.cluster.stop().await;
        sh.bg.token.cancel();
        sh.bg.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), sh.bg.tracker.wait()).await;
        sh.phase.send_replace(Phase::Stopped);
        info!("stopped");
        drained
    }

    /// Re-reads the fleet CA, certificate and key (`SIGHUP`): new replication and admin
    /// connections use the new files, running ones keep theirs.
    pub fn reload_tls(&self) {
        self.shared.cluster.reload_tls();
    }

    /// The node's replication, when `[sync]` is configured.
    pub fn replicator(&self) -> Option<&sluice_sync::replication::Replicator> {
        self.shared.cluster.replicator()
    }

    /// Where the admin API listens, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared.cluster.admin_addr()
    }

    /// Fleet readiness: the first snapshot from a peer was applied, or none was needed.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.shared.cluster.ready()
    }

    /// The node's stick tables.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.shared.tables
    }

    /// The clock the node's tables run on.
    pub fn clock(&self) -> NodeClock {
        self.shared.clock
    }

    /// The node's phase, as a channel to wait on.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.shared.state.lock().config.clone()
    }

    /// The address a frontend is bound to (useful with port 0).
    pub fn frontend_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared
            .state
            .lock()
            .listeners
            .get(name)
            .map(|l| l.local)
    }

    /// The address of the metrics endpoint.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.metrics_addr
    }

    /// The metrics in Prometheus text format, as `/metrics` serves them.
    pub fn render_metrics(&self) -> String {
        let name = self.config().node.name;
        let mut out = self
            .shared
            .registry
            .render(&name, self.shared.phase.borrow().as_str());
        self.shared.cluster.render(&mut out);
        out
    }

    /// Health and load of a server of a backend in force.
    pub fn server_state(&self, backend: &str, server: &str) -> Option<ServerState> {
        let st = self.shared.state.lock();
        let s = st
            .backends
            .get(backend)?
            .servers
            .iter()
            .find(|s| s.name == server)?;
        Some(ServerState {
            up: s.metrics.up.load(Relaxed),
            active: s.active(),
            idle: s.pool.len(),
        })
    }
}

/// This start's incarnation: persisted in `state_dir` so it grows across restarts; without a
/// state directory, the wall clock (a node restarted within the same millisecond would reuse it).
fn incarnation(config: &Config, clock: &NodeClock) -> Result<u64, NodeError> {
    match &config.node.state_dir {
        Some(dir) => sluice_sync::replication::next_incarnation(dir, clock.wall_ms())
            .map_err(|e| NodeError::StateDir(e.to_string())),
        None => Ok(clock.wall_ms()),
    }
}
