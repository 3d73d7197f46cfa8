//! One client connection: its context (the real client address after a PROXY header, the
//! frontend it came in on), its activity clock for idle timeouts, and the steps from accept to
//! the protocol handler: PROXY header, connection rules, TLS, then HTTP or TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span};

use crate::config::Mode;
use crate::io::Prefixed;
use crate::listener::Frontend;
use crate::metrics::{ConnError, Outcome};
use crate::proxy_protocol::{self, Header};
use crate::rules::track::ConnTracks;
use crate::{http_proxy, tcp_proxy};

/// What the request path knows about a client connection: the client address rules and
/// stickiness read, and the stick counters the connection rules tracked.
#[derive(Debug)]
pub struct ConnCtx {
    /// The client: the peer address, or the source of a PROXY protocol header.
    pub client: SocketAddr,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The frontend as configured when the connection was accepted; a reload does not change
    /// an established connection.
    pub frontend: Arc<Frontend>,
    /// `X-Forwarded-For` value for this client.
    pub(crate) xff: HeaderValue,
    /// `Forwarded` value for this client.
    pub(crate) forwarded: HeaderValue,
    /// Requests in flight and the time of the last one's end.
    pub(crate) activity: Activity,
    /// Entries tracked by the connection rules; dropping them (with the connection) ends the
    /// connection in their `conn_cur`.
    pub(crate) tracks: ConnTracks,
    /// Fires when the node drains (a tarpit then answers at once).
    pub(crate) shutdown: CancellationToken,
    /// Tick of the last refresh of the client's sticky entry, 0 for none.
    pub(crate) stick_touched: AtomicU32,
}

impl ConnCtx {
    fn new(
        client: SocketAddr,
        local: SocketAddr,
        tls: bool,
        frontend: Arc<Frontend>,
        tracks: ConnTracks,
        shutdown: CancellationToken,
    ) -> ConnCtx {
        let ip = client.ip();
        let xff =
            HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        let proto = if tls { "https" } else { "http" };
        let fwd = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        let forwarded =
            HeaderValue::from_str(&fwd).unwrap_or(HeaderValue::from_static("for=unknown"));
        ConnCtx {
            client,
            local,
            tls,
            frontend,
            xff,
            forwarded,
            activity: Activity::new(),
            tracks,
            shutdown,
            stick_touched: AtomicU32::new(0),
        }
    }
}

/// A connection's activity, read by its [`watchdog`]: requests in flight, requests seen, and
/// when the last one ended (or, for TCP, when the last byte moved).
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    in_flight: AtomicU32,
    seen: AtomicU64,
    /// Milliseconds from `started` to the last end of activity.
    last_ms: AtomicU64,
    /// Notified when the first request begins (see [`Activity::first_request`]).
    first: Notify,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicU32::new(0),
            seen: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            first: Notify::new(),
        }
    }

    /// A request head arrived at `now`.
    #[inline]
    pub(crate) fn begin(&self, now: Instant) {
        self.in_flight.fetch_add(1, Relaxed);
        if self.mark(now) == 0 {
            self.first.notify_one();
        }
    }

    /// Whether a request has begun on the connection (or, for TCP, a byte has moved).
    pub(crate) fn has_begun(&self) -> bool {
        self.seen.load(Relaxed) > 0
    }

    /// Resolves once the first request has begun.
    pub(crate) async fn first_request(&self) {
        // `notify_one` keeps a permit when nobody waits yet, so a request that begins between
        // the check and the wait is not missed.
        if !self.has_begun() {
            self.first.notified().await;
        }
    }

    /// A request's response ended (or was abandoned).
    #[inline]
    pub(crate) fn end(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Bytes moved (a TCP read, a frame of a response body).
    #[inline]
    pub(crate) fn touch(&self) {
        self.mark(Instant::now());
    }

    /// Records activity at `now`; returns how many times activity was seen before.
    #[inline]
    fn mark(&self, now: Instant) -> u64 {
        let ms = u64::try_from((now - self.started).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
        self.seen.fetch_add(1, Relaxed)
    }
}

/// Resolves when the connection has been idle too long: no complete first request head within
/// `first` of accepting, nothing in flight for `idle` since the last request ended, or — with
/// requests in flight and `stall` set — nothing moved for `stall` (a backend that stopped
/// sending in the middle of a body).
///
/// One timer per connection, re-armed only when it fires, so requests cost no timer work.
pub(crate) async fn watchdog(
    a: &Activity,
    first: Duration,
    idle: Duration,
    stall: Option<Duration>,
) {
    // Activity does not wake the watchdog, so it never sleeps longer than the shortest limit
    // past a check: a request that starts and ends meanwhile is then seen in time.
    let step = first.min(idle).min(stall.unwrap_or(Duration::MAX));
    let mut deadline = a.started + step;
    loop {
        tokio::time::sleep_until(deadline).await;
        let now = Instant::now();
        let last = a.started + Duration::from_millis(a.last_ms.load(Relaxed));
        if a.in_flight.load(Relaxed) > 0 {
            match stall {
                Some(stall) if now >= last + stall => return,
                Some(stall) => deadline = (last + stall).min(now + step),
                None => deadline = now + idle,
            }
            continue;
        }
        let expires = if a.seen.load(Relaxed) == 0 {
            a.started + first
        } else {
            last + idle
        };
        if now >= expires {
            return;
        }
        deadline = expires.min(now + step);
    }
}

/// Decrements the active-connection gauge when a connection ends.
struct ActiveConn(Arc<Frontend>);

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.0.metrics.connections_active.fetch_sub(1, Relaxed);
    }
}

/// What the connection rules decided on accept for a connection whose client is its peer
/// (no PROXY header to wait for): run in the accept loop, so a refused connection costs no
/// task, no span and no socket option.
#[derive(Debug)]
pub(crate) struct Admitted {
    tracks: ConnTracks,
    outcome: Outcome,
}

/// Runs the connection rules of `fe` for a connection from `peer` in the accept loop, when
/// they can run there (no `accept_proxy`). `Ok(None)`: they run in the connection's task.
/// `Err(())`: refused and counted; the caller closes it unread, with the reset its listener's
/// zero linger gives it (`listener::bind_frontend`), as HAProxy's `reject` does: no FIN
/// exchange and no TIME_WAIT for a connection that was never served.
pub(crate) fn admit(peer: SocketAddr, fe: &Frontend) -> Result<Option<Admitted>, ()> {
    let Some(engine) = &fe.rules else {
        return Ok(None);
    };
    if fe.config.accept_proxy {
        return Ok(None);
    }
    let mut tracks = ConnTracks::new(fe.clock);
    let (go, outcome) = engine.on_connection(peer.ip().to_canonical(), &mut tracks);
    if !go {
        fe.metrics.conn_opened(outcome);
        // Dropping `tracks` ends the connection in the entries.
        return Err(());
    }
    Ok(Some(Admitted { tracks, outcome }))
}

/// Handles an accepted connection to the end. `_permit` holds its place under the frontend's
/// `max_connections` until then. `admitted`: the connection rules already ran ([`admit`]).
pub(crate) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    fe: Arc<Frontend>,
    token: CancellationToken,
    _permit: OwnedSemaphorePermit,
    admitted: Option<Admitted>,
) {
    // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`; rules, hashing and
    // `X-Forwarded-For` want the IPv4 address.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let span = debug_span!("conn", frontend = %fe.config.name, client.addr = %peer);
    async move {
        // Linux copies TCP_NODELAY from the listener (`listener::bind_frontend`).
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(fe.config.bind);
        fe.metrics.connections_active.fetch_add(1, Relaxed);
        let _active = ActiveConn(fe.clone());
        let header_timeout = fe.config.limits.header_timeout;

        let (io, client) = if fe.config.accept_proxy {
            match tokio::time::timeout(header_timeout, read_proxy_header(stream)).await {
                Ok(Ok((io, source))) => (
                    io,
                    source.map_or(peer, |s| SocketAddr::new(s.ip().to_canonical(), s.port())),
                ),
                Ok(Err(error)) => {
                    fe.metrics.conn_error(ConnError::ProxyProtocol);
                    debug!(%error, "closing connection without a valid PROXY header");
                    return;
                }
                Err(_) => {
                    fe.metrics.conn_error(ConnError::ProxyProtocol);
                    debug!("closing connection: no PROXY header in time");
                    return;
                }
            }
        } else {
            (Prefixed::new(bytes::Bytes::new(), stream), peer)
        };
        if client != peer {
            debug!(client.real = %client, "PROXY header");
        }

        // Connection rules run before a byte of the client's own is read (only the PROXY
        // header, which names the client, came first).
        let (tracks, outcome) = match (&fe.rules, admitted) {
            (_, Some(a)) => (a.tracks, a.outcome),
            (None, None) => (ConnTracks::new(fe.clock), Outcome::Allowed),
            (Some(engine), None) => {
                let mut tracks = ConnTracks::new(fe.clock);
                let (go, outcome) = engine.on_connection(client.ip(), &mut tracks);
                if !go {
                    fe.metrics.conn_opened(outcome);
                    debug!("connection rejected by a rule");
                    // Closed unread, with a reset (see `admit`); dropping `tracks` ends the
                    // connection in the tracked entries.
                    let _ = io.get_ref().set_zero_linger();
                    return;
                }
                (tracks, outcome)
            }
        };
        fe.metrics.conn_opened(outcome);
        let ctx = Arc::new(ConnCtx::new(
            client,
            local,
            fe.tls.is_some(),
            fe.clone(),
            tracks,
            token.clone(),
        ));

        match &fe.tls {
            Some(acceptor) => {
                let tls = match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        fe.metrics.conn_error(ConnError::Tls);
                        debug!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        fe.metrics.conn_error(ConnError::Tls);
                        debug!("TLS handshake timed out");
                        return;
                    }
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                match fe.config.mode {
                    Mode::Http => http_proxy::serve(tls, ctx, token, h2).await,
                    Mode::Tcp => tcp_proxy::serve(tls, ctx).await,
                }
            }
            None => match fe.config.mode {
                Mode::Http => http_proxy::serve(io, ctx, token, false).await,
                Mode::Tcp => tcp_proxy::serve(io, ctx).await,
            },
        }
    }
    .instrument(span)
    .await
}

/// Why a PROXY header could not be read.
#[derive(Debug, thiserror::Error)]
enum ProxyReadError {
    #[error(transparent)]
    Header(#[from] proxy_protocol::ProxyHeaderError),
    #[error("connection closed before the header ended")]
    Eof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads a PROXY header; returns the stream (with any bytes read past the header in front)
/// and the source address the header names.
async fn read_proxy_header(
    mut stream: TcpStream,
) -> Result<(Prefixed<TcpStream>, Option<SocketAddr>), ProxyReadError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some((header, len)) = proxy_protocol::parse(&buf)? {
            let rest = buf.split_off(len).freeze();
            let source = match header {
                Header::Proxied { source, .. } => Some(source),
                Header::Local => None,
            };
            return Ok((Prefixed::new(rest, stream), source));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProxyReadError::Eof);
        }
    }
}
