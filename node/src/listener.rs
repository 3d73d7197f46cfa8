//! Frontends at run time: the listening socket, its accept loop under the `max_connections`
//! cap, and the [`Frontend`] each accepted connection captures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use parking_lot::RwLock;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use sluice_sync::{NodeClock, Tables};

use crate::backend::stick::Sticky;
use crate::backend::{Backend, Background};
use crate::config::FrontendConfig;
use crate::conn;
use crate::metrics::FrontendMetrics;
use crate::rules::Engine;

/// A frontend as one config defines it. Connections keep the `Frontend` they were accepted
/// with; a reload publishes a new one for connections accepted after it.
pub struct Frontend {
    /// Its config.
    pub config: FrontendConfig,
    /// Where its traffic goes.
    pub backend: Arc<Backend>,
    /// Its counters (kept across reloads).
    pub metrics: Arc<FrontendMetrics>,
    /// TLS termination.
    pub tls: Option<TlsAcceptor>,
    /// `Via` value, when enabled.
    pub via: Option<HeaderValue>,
    /// Owner of backend connection drivers.
    pub bg: Background,
    /// Tracks client connections that outlive their task (HTTP upgrades), so draining waits
    /// for them.
    pub tunnels: TaskTracker,
    /// The node's stick tables (rules track keys in them).
    pub tables: Arc<Tables>,
    /// The clock the tables run on.
    pub clock: NodeClock,
    /// The rules with their tables resolved; `None` when the frontend has none.
    pub(crate) rules: Option<Engine>,
    /// The backend's stickiness with its table resolved.
    pub(crate) stick: Option<Sticky>,
    /// The `max_connections` cap.
    conns: Arc<Semaphore>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("name", &self.config.name)
            .field("backend", &self.backend.config.name)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Frontend {
    /// Assembles a frontend.
    pub fn new(
        config: FrontendConfig,
        backend: Arc<Backend>,
        metrics: Arc<FrontendMetrics>,
        tls: Option<TlsAcceptor>,
        node: &NodeHandles,
    ) -> Frontend {
        let node_name = &node.name;
        let via = config
            .via
            .then(|| HeaderValue::from_str(&format!("1.1 {node_name}")).ok())
            .flatten();
        let conns = Arc::new(Semaphore::new(config.limits.max_connections));
        let rules = Engine::new(
            &config.rules.compiled,
            &node.tables,
            config.dry_run,
            node.clock,
            &config.name,
        );
        let stick = backend
            .config
            .stick
            .as_ref()
            .and_then(|s| Sticky::new(s, &backend, &node.tables));
        Frontend {
            rules,
            stick,
            config,
            backend,
            metrics,
            tls,
            via,
            bg: node.bg.clone(),
            conns,
            tunnels: node.tunnels.clone(),
            tables: node.tables.clone(),
            clock: node.clock,
        }
    }
}

/// What every frontend shares with its node.
#[derive(Debug, Clone)]
pub struct NodeHandles {
    /// The node's name (for `Via`).
    pub name: String,
    /// Owner of backend connection drivers.
    pub bg: Background,
    /// Tracks client connections that outlive their task.
    pub tunnels: TaskTracker,
    /// The stick tables.
    pub tables: Arc<Tables>,
    /// The clock the tables run on.
    pub clock: NodeClock,
}

/// A bound frontend socket and the frontend its accept loop currently serves.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The configured bind address (port 0 stays 0 here).
    pub bind: SocketAddr,
    /// The address actually bound.
    pub local: SocketAddr,
    /// The frontend new connections get.
    pub current: Arc<RwLock<Arc<Frontend>>>,
    /// Stops this accept loop (frontend removed or rebound).
    pub stop: CancellationToken,
}

/// Binds a listening address (synchronously, so a reload can fail before it commits).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listen(addr, false)
}

/// Binds a frontend's address. Its listening socket carries the options its accepted
/// connections need, which Linux copies to each of them: no Nagle delay, and a zero linger
/// time, so a connection the connection rules refuse is closed with a reset without one more
/// system call of its own (HAProxy's `reject` makes that call per connection). The accept loop
/// takes the zero linger off every connection it admits.
pub(crate) fn bind_frontend(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listen(addr, true)
}

fn listen(addr: SocketAddr, frontend: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    if frontend {
        socket.set_zero_linger()?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs the accept loop of `listener` until `stop` fires. Connections are tracked on
/// `tracker` and drain when `conn_token` fires.
pub(crate) fn spawn_accept(
    listener: TcpListener,
    current: Arc<RwLock<Arc<Frontend>>>,
    stop: CancellationToken,
    conn_token: CancellationToken,
    tracker: TaskTracker,
) {
    let conns = tracker.clone();
    tracker.spawn(async move {
        // Accepted through the standard library on the reactor's readiness: a connection is
        // registered with the reactor only once the connection rules admit it, so one they
        // refuse (a flood) costs accept and close (its reset comes with the listener's zero
        // linger, see `bind_frontend`), and not two more epoll_ctl calls.
        // `AsyncFd::new` is deprecated because an `AsRawFd` type may hand out a descriptor it
        // does not own; a `std::net::TcpListener` owns its descriptor for its whole life.
        #[allow(deprecated)]
        let listener = match listener.into_std().and_then(AsyncFd::new) {
            Ok(l) => l,
            Err(error) => {
                warn!(%error, "cannot run the accept loop");
                return;
            }
        };
        // One wait on `stop` for the loop's whole life, polled when the task wakes, rather
        // than two made, registered and dropped per connection.
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = accept_loop(&listener, &current, &conn_token, &conns) => {}
        }
        info!(addr = ?listener.get_ref().local_addr().ok(), "listener closed");
    });
}

/// Accepts, runs the connection rules and spawns each admitted connection, forever.
async fn accept_loop(
    listener: &AsyncFd<std::net::TcpListener>,
    current: &RwLock<Arc<Frontend>>,
    conn_token: &CancellationToken,
    conns: &TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    let mut since_yield = 0;
    loop {
        // Under a flood the listener is always readable and tokio would let this loop accept
        // (and refuse) up to its coop budget, 128 connections, before the tasks of the
        // admitted ones run: hand the core over every few accepts, and after every admitted
        // one, so a good client is not served in bursts.
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let (stream, peer) = match accept(listener).await {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        since_yield += 1;
        let fe = current.read().clone();
        // Connection rules run here when they can, so a refused connection (a flood) costs
        // no task and never touches the `max_connections` semaphore.
        let Ok(admitted) = conn::admit(peer, &fe) else {
            continue;
        };
        since_yield = YIELD_EVERY;
        // At the cap the loop waits here with this one connection, and the rest wait in the
        // kernel's accept queue.
        let Ok(permit) = fe.conns.clone().acquire_owned().await else {
            // The semaphore is never closed; a closed one would mean a dropped frontend.
            continue;
        };
        // An admitted connection closes gracefully: a reset would throw away whatever of its
        // last answer the kernel has not sent yet.
        let stream = match socket2::SockRef::from(&stream)
            .set_linger(None)
            .and_then(|()| stream.set_nonblocking(true))
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            Ok(s) => s,
            Err(error) => {
                debug!(%error, "cannot register an accepted connection");
                continue;
            }
        };
        conns.spawn(conn::handle(
            stream,
            peer,
            fe,
            conn_token.clone(),
            permit,
            admitted,
        ));
    }
}

/// Connections the accept loop takes before it lets other tasks run.
const YIELD_EVERY: u32 = 16;

/// The next connection on `listener`, a blocking-mode socket not yet known to the reactor.
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    // Under a flood a connection is nearly always waiting: take it without the readiness
    // future. The listener is non-blocking (tokio's `into_std` leaves it so), and a
    // `WouldBlock` here leaves the cached readiness for `try_io` below to clear.
    match listener.get_ref().accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        result => return result,
    }
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(result) = ready.try_io(|l| l.get_ref().accept()) {
            return result;
        }
    }
}
