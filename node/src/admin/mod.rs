//! The admin API (`sluice.admin.v1`) that `sluicectl` speaks: status, tables (list, show, set,
//! clear) and fleet membership (list, add, remove peers), served over gRPC on `admin.listen`.
//!
//! # Transport
//!
//! Plaintext is allowed only on a loopback listen address, so the operator on the machine needs
//! no certificate. Any other address requires TLS with a configuration that demands a client
//! certificate chained to the fleet CA ([`AdminTls`], normally the node's fleet
//! [`Identity`]); [`bind`] refuses to start without one. A TLS configuration may be given on
//! loopback too (then TLS is used there as well). The TLS configuration is asked for on every
//! connection, so a `SIGHUP` that reloads the identity applies to the next connection.
//!
//! # Calls
//!
//! Every call checks its whole input before it changes anything, and answers a bad one with a
//! gRPC status whose message names what is wrong: `NOT_FOUND` for an unknown table or peer,
//! `INVALID_ARGUMENT` for a key, field, value, condition, name or address that does not fit,
//! `FAILED_PRECONDITION` for a peer call on a node that does not replicate. Changes are logged
//! with the caller's address. `ShowTable` streams: it holds one shard lock at a time for a
//! bounded chunk of entries and never across an `.await`.
//!
//! # Use
//!
//! ```ignore
//! let state = AdminState::new(tables, clock).with_replicator(replicator);
//! let listener = admin::bind(config.listen, tls, state).await?;
//! let addr = listener.local_addr();
//! tracker.spawn(listener.serve(token.child_token()));
//! ```

mod convert;
mod service;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use sluice_proto::admin::v1::admin_server::AdminServer;
use sluice_sync::replication::{Identity, Replicator};
use sluice_sync::{NodeClock, Tables};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use self::service::Service;

/// Admin connections open at once (TLS handshakes included); more wait in the kernel's accept
/// queue. Operators and scripts, not traffic, use this API.
const MAX_CONNECTIONS: usize = 64;
/// A TLS client must complete its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin API reads and changes: the node's tables, its replication, and what `status`
/// reports about the node.
#[derive(Clone, Debug)]
pub struct AdminState {
    tables: Arc<Tables>,
    replicator: Option<Replicator>,
    node: String,
    version: String,
    started: tokio::time::Instant,
    clock: NodeClock,
    ready: Option<watch::Receiver<bool>>,
}

impl AdminState {
    /// The state of a node whose tables are `tables` and whose clock is `clock`. The node name
    /// is the tables' local origin's; the version is this build's; uptime counts from now.
    pub fn new(tables: Arc<Tables>, clock: NodeClock) -> AdminState {
        AdminState {
            node: tables.origins().local().node,
            tables,
            replicator: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: tokio::time::Instant::now(),
            clock,
            ready: None,
        }
    }

    /// The node's replication: enables the peer calls and the peers in `status`.
    pub fn with_replicator(mut self, replicator: Replicator) -> AdminState {
        self.replicator = Some(replicator);
        self
    }

    /// Readiness as `/readyz` reports it. Without it, the replication's readiness is used (or
    /// `true` when the node does not replicate).
    pub fn with_ready(mut self, ready: watch::Receiver<bool>) -> AdminState {
        self.ready = Some(ready);
        self
    }

    /// When the node started, for `uptime` (default: when this state was made).
    pub fn with_started(mut self, started: tokio::time::Instant) -> AdminState {
        self.started = started;
        self
    }

    /// Whether the node is ready.
    fn is_ready(&self) -> bool {
        match (&self.ready, &self.replicator) {
            (Some(ready), _) => *ready.borrow(),
            (None, Some(r)) => *r.ready().borrow(),
            (None, None) => true,
        }
    }
}

/// Where the admin listener gets its TLS configuration, asked for on every connection.
#[derive(Clone)]
pub struct AdminTls(Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>);

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTls")
    }
}

impl AdminTls {
    /// The node's fleet identity: clients must present a certificate chained to the fleet CA,
    /// and the node presents its own. Follows [`Identity::reload`].
    pub fn identity(identity: Arc<Identity>) -> AdminTls {
        AdminTls(Arc::new(move || identity.server_config()))
    }

    /// A fixed configuration. It must require client certificates chained to the fleet CA (as
    /// [`Identity::server_config`] does): the admin API trusts whoever completes the handshake.
    pub fn fixed(config: Arc<ServerConfig>) -> AdminTls {
        AdminTls(Arc::new(move || config.clone()))
    }
}

/// The admin API cannot start or stopped on an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A listen address off loopback without TLS.
    #[error(
        "admin.listen `{0}` is not a loopback address: the admin API there requires mutual TLS \
         (a [tls] section), and plaintext is only allowed on loopback"
    )]
    TlsRequired(SocketAddr),
    /// The listener cannot be bound.
    #[error("admin API: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("admin API server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// A bound admin listener, not serving yet: [`AdminListener::local_addr`] tells tests which
/// port it got.
#[derive(Debug)]
pub struct AdminListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<AdminTls>,
    state: AdminState,
}

/// Binds the admin API on `listen`. Refuses an address that is not loopback unless `tls` is
/// given.
pub async fn bind(
    listen: SocketAddr,
    tls: Option<AdminTls>,
    state: AdminState,
) -> Result<AdminListener, AdminError> {
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err(AdminError::TlsRequired(listen));
    }
    let bind_err = |source| AdminError::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    Ok(AdminListener {
        listener,
        local_addr,
        tls,
        state,
    })
}

/// Binds and serves the admin API until `cancel` fires (see [`bind`] and
/// [`AdminListener::serve`]).
pub async fn serve(
    listen: SocketAddr,
    tls: Option<AdminTls>,
    state: AdminState,
    cancel: CancellationToken,
) -> Result<(), AdminError> {
    bind(listen, tls, state).await?.serve(cancel).await
}

impl AdminListener {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires, then lets calls in flight finish (a `ShowTable` stream ends
    /// at once) and returns.
    pub async fn serve(self, cancel: CancellationToken) -> Result<(), AdminError> {
        let AdminListener {
            listener,
            local_addr,
            tls,
            state,
        } = self;
        // A child, so stopping on a server error does not cancel the caller's token.
        let cancel = cancel.child_token();
        tracing::info!(
            admin.listen = %local_addr,
            tls = tls.is_some(),
            "admin API listening"
        );
        let tracker = TaskTracker::new();
        let service = AdminServer::new(Service::new(state, cancel.clone()));
        let server = tonic::transport::Server::builder().add_service(service);
        let result = match tls {
            None => {
                let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
                tracker.spawn(accept_plain(listener, tx, cancel.clone()));
                server
                    .serve_with_incoming_shutdown(ReceiverStream::new(rx), cancel.cancelled())
                    .await
            }
            Some(tls) => {
                let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
                tracker.spawn(accept_tls(
                    listener,
                    tls,
                    tx,
                    tracker.clone(),
                    cancel.clone(),
                ));
                server
                    .serve_with_incoming_shutdown(ReceiverStream::new(rx), cancel.cancelled())
                    .await
            }
        };
        // The accept loop ends with the token; a server error ends it too.
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        tracing::info!(admin.listen = %local_addr, "admin API stopped");
        result.map_err(AdminError::Serve)
    }
}

type Incoming<IO> = mpsc::Sender<Result<Conn<IO>, io::Error>>;

/// Accepts a connection under the connection limit; `None` once cancelled.
async fn accept(
    listener: &TcpListener,
    limit: &Arc<Semaphore>,
    cancel: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return None,
            p = limit.clone().acquire_owned() => p.ok()?,
        };
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((tcp, remote)) => return Some((tcp, remote, permit)),
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn accept_plain(listener: TcpListener, tx: Incoming<TcpStream>, cancel: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some((tcp, _, permit)) = accept(&listener, &limit, &cancel).await {
        let _ = tcp.set_nodelay(true);
        if tx.send(Ok(Conn::new(tcp, permit))).await.is_err() {
            return;
        }
    }
}

async fn accept_tls(
    listener: TcpListener,
    tls: AdminTls,
    tx: Incoming<tokio_rustls::server::TlsStream<TcpStream>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some((tcp, remote, permit)) = accept(&listener, &limit, &cancel).await {
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from((tls.0)());
        let tx = tx.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let tls = tokio::select! {
                _ = cancel.cancelled() => return,
                r = handshake => r,
            };
            match tls {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(Conn::new(tls, permit))).await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(client.addr = %remote, %error, "admin API refused a client");
                }
                Err(_) => {
                    tracing::warn!(client.addr = %remote, "admin API refused a client: TLS handshake timed out");
                }
            }
        });
    }
}

/// An accepted connection holding its place under [`MAX_CONNECTIONS`] until it closes.
struct Conn<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Conn<IO> {
    fn new(io: IO, permit: OwnedSemaphorePermit) -> Self {
        Conn {
            io,
            _permit: permit,
        }
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
