//! HTTP reverse proxying: the per-connection server (our own HTTP/1 server in [`h1`], which
//! leaves upgrades, streamed request bodies and malformed input to hyper; hyper for HTTP/2 after
//! TLS ALPN), the per-request path, and the response body that hands backend connections back
//! to their pool.
//!
//! The request path does no map lookups, takes no lock except the server pool's and the stick
//! tables' shards (when rules or stickiness use them), and formats nothing per request except
//! when a client already sent `X-Forwarded-For`/`Forwarded` or a rate rule answers `429`: the
//! client-address header values are built once per connection.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::backend::stick::{Committed, Stuck};
use crate::backend::{ActiveGuard, ExchangeError, RawFields, Server, Upstream, connect_http};
use crate::conn::{Activity, ConnCtx, watchdog};
use crate::io::{Prefixed, ReqBody};
use crate::metrics::Outcome;
use crate::rules::track::{Meter, Tracks};
use crate::rules::{self, Decision, RateHeaders, RateLimitInfo};
use crate::tcp_proxy;

mod h1;

/// Stale pooled connections tried before giving up on a request (each is found closed only
/// when a request is handed to it).
const MAX_STALE_RETRIES: u32 = 4;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The longest a tarpit sleeps between marks of the request as alive, so the connection's
/// stall watchdog does not take a long tarpit for a stuck exchange.
const TARPIT_STEP: Duration = Duration::from_secs(1);

/// A request closed by a `reject` rule: hyper then closes the connection (or resets the
/// HTTP/2 stream) without an answer.
#[derive(Debug, thiserror::Error)]
#[error("request rejected by a rule")]
struct Rejected;

/// Serves one client connection until it closes, idles out, or drains after `token` fires.
pub(crate) async fn serve<IO>(io: IO, ctx: Arc<ConnCtx>, token: CancellationToken, h2: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !h2 {
        return h1::serve(io, ctx, token).await;
    }
    let limits = ctx.frontend.config.limits.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle_for_hyper(svc_ctx.clone(), req));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    drive(pin!(conn), &ctx, &token).await;
}

/// Serves the rest of an HTTP/1 connection with hyper: what the plain server in [`h1`] hands
/// over (upgrades, streamed or chunked request bodies, malformed or oversized heads).
async fn serve_hyper_h1<IO>(io: IO, ctx: Arc<ConnCtx>, token: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.frontend.config.limits.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle_for_hyper(svc_ctx.clone(), req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // Our watchdog enforces the header and keep-alive timeouts with one timer per
        // connection; hyper's would arm a boxed timer per request.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size)
        .keep_alive(true)
        .writev(false);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    drive(pin!(conn), &ctx, &token).await;
}

/// One request through the path for hyper, which needs every response field in the map.
async fn handle_for_hyper(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Rejected> {
    let resp = handle(ctx, req.map(ReqBody::streamed)).await?;
    Ok(fields_in_map(resp))
}

/// The two hyper connection types, for [`drive`].
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn drive<C: Graceful>(mut conn: Pin<&mut C>, ctx: &ConnCtx, token: &CancellationToken) {
    let limits = &ctx.frontend.config.limits;
    // A request in flight may go quiet for the backend's response timeout (waiting for the
    // head, which then gets a 504) and a little more; after that the exchange is stuck.
    let stall = ctx.frontend.backend.limits().response_timeout + Duration::from_secs(1);
    let mut draining = false;
    let mut awaiting_first = false;
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(error) = res {
                    debug!(%error, "client connection ended with an error");
                }
                return;
            }
            _ = token.cancelled(), if !draining => {
                draining = true;
                // Finish the request in flight, then close instead of keeping alive. A
                // connection accepted before the drain whose first request has not arrived is
                // owed an answer too (hyper would close it unanswered): it has until the header
                // timeout, as any new connection, and is shut down once the request begins.
                if ctx.activity.has_begun() {
                    conn.as_mut().shutdown();
                } else {
                    awaiting_first = true;
                }
            }
            _ = ctx.activity.first_request(), if awaiting_first => {
                awaiting_first = false;
                conn.as_mut().shutdown();
            }
            _ = watchdog(&ctx.activity, limits.header_timeout, limits.keepalive_timeout, Some(stall)) => {
                debug!("closing idle or too slow client connection");
                return;
            }
        }
    }
}

async fn handle(ctx: Arc<ConnCtx>, req: Request<ReqBody>) -> Result<Response<ProxyBody>, Rejected> {
    let start = Instant::now();
    ctx.activity.begin(start);
    // Ends the request in the connection's activity even if hyper drops this future (a client
    // that went away, an HTTP/2 stream reset).
    let in_flight = InFlight(ctx);
    let ctx = &in_flight.0;
    let fe = &ctx.frontend;
    // The entries this request's rules track, for its life.
    let mut own = Tracks::default();
    let (decision, outcome) = match &fe.rules {
        None => (Decision::Forward, Outcome::Allowed),
        Some(engine) => engine.on_request(ctx, &req, &mut own),
    };
    let resp = match decision {
        Decision::Forward => {
            if req.method() == Method::CONNECT {
                local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n")
            } else {
                forward(ctx, req, &mut own).await
            }
        }
        Decision::Deny { status, rate_limit } => {
            drop(req);
            deny(ctx, &own, status, rate_limit)
        }
        Decision::Tarpit { delay, rate_limit } => {
            drop(req);
            hold(ctx, delay).await;
            deny(ctx, &own, 429, rate_limit)
        }
        Decision::Reject => {
            fe.metrics.request_rejected();
            debug!("request rejected by a rule");
            return Err(Rejected);
        }
    };
    let status = resp.status().as_u16();
    fe.metrics.request(status, outcome);
    fe.metrics.latency.observe(start.elapsed());
    let (parts, mut body) = resp.into_parts();
    if fe.rules.is_some() {
        body.meter = Meter::new(&[&ctx.tracks.tracks, &own], false, fe.clock);
    }
    body.conn = Some(in_flight);
    Ok(Response::from_parts(parts, body))
}

/// Holds a tarpitted request for `delay`, or until the node drains. No lock is held; the
/// request is marked alive every [`TARPIT_STEP`] for the connection's watchdog.
async fn hold(ctx: &ConnCtx, delay: Duration) {
    let end = Instant::now() + delay;
    loop {
        let step = (Instant::now() + TARPIT_STEP).min(end);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(step) => {}
        }
        if Instant::now() >= end {
            return;
        }
        ctx.activity.touch();
    }
}

/// The answer of a `deny` (or, with 429, of a `tarpit`): the status, and for a `429` caused
/// by a rate threshold the `RateLimit-Policy`, `RateLimit` and `Retry-After` headers.
fn deny(
    ctx: &ConnCtx,
    own: &Tracks,
    status: u16,
    rate_limit: Option<RateLimitInfo>,
) -> Response<ProxyBody> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let text = match status {
        429 => "too many requests\n",
        403 => "forbidden\n",
        _ => "request denied\n",
    };
    let mut resp = local(code, text);
    if status == 429
        && let Some(info) = rate_limit
        && let Some(engine) = &ctx.frontend.rules
        && let Some(h) =
            engine.rate_headers(&info, &ctx.tracks.tracks, own, ctx.frontend.clock.tick())
        && let Kind::Local { rate, .. } = &mut resp.body_mut().kind
    {
        *rate = Some(h);
    }
    resp
}

/// A request in flight on a client connection; ends it in the connection's activity when
/// dropped (with the response body, or with the request future if that is abandoned).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnCtx>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

async fn forward(
    ctx: &Arc<ConnCtx>,
    mut req: Request<ReqBody>,
    own: &mut Tracks,
) -> Response<ProxyBody> {
    let fe = &ctx.frontend;
    let backend = &fe.backend;
    let client = ctx.client.ip();
    let meter = match &fe.rules {
        Some(_) => Meter::new(&[&ctx.tracks.tracks, own], true, fe.clock),
        None => None,
    };
    req.body_mut().set_meter(meter);
    let stuck = match &fe.stick {
        Some(s) => s.lookup(backend, client, Some(req.headers()), fe.clock.tick()),
        None => Stuck::default(),
    };
    // An HTTP/1.1 upgrade (WebSocket): the backend sees the Upgrade headers, and after its
    // 101 both connections become one byte tunnel.
    let mut upgrade = upgrade_request(&mut req);
    prepare_request(ctx, &mut req);
    if let Some((proto, _)) = &upgrade {
        let headers = req.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    let idempotent = is_idempotent(req.method());
    let mut excluded: Option<Arc<Server>> = None;
    let mut stale = 0;
    loop {
        // The server the client sticks to, unless it just failed; else the balancer's pick.
        let pick = match stuck.server {
            Some(s) if excluded.is_none() => Some(s),
            _ => backend.select(client, excluded.as_deref()),
        };
        let Some(server) = pick else {
            backend.metrics.no_server.fetch_add(1, Relaxed);
            return local(StatusCode::SERVICE_UNAVAILABLE, "no server available\n");
        };
        let guard = server.begin();
        let (mut conn, reused) = match server.pool.take() {
            Some(conn) => (conn, true),
            // Boxed: opening a connection is rare with keep-alive, and keeping its state out of
            // this future keeps the per-request future (moved into hyper once) small.
            None => match Box::pin(connect_http(server)).await {
                Ok(conn) => (conn, false),
                Err(error) => {
                    debug!(server = %server.name, %error, "cannot connect to server");
                    // Nothing was sent, so an idempotent request may go to another server.
                    if idempotent && excluded.is_none() && backend.servers.len() > 1 {
                        backend.metrics.retries.fetch_add(1, Relaxed);
                        excluded = Some(server.clone());
                        continue;
                    }
                    return local(StatusCode::SERVICE_UNAVAILABLE, "no server available\n");
                }
            },
        };
        // The exchange runs in this task: the request is written, then the response head read
        // within the response timeout; its body streams from the connection as the client
        // connection writes it.
        let mut set_cookie = None;
        let result = match conn.send(&mut req).await {
            Ok(()) => {
                let deadline = Instant::now() + backend.limits().response_timeout;
                // The server has the request: the assignment is recorded now, so it travels to
                // the peers while the server works rather than after the answer.
                if let Some(s) = &fe.stick {
                    let c = s.commit(&stuck, guard.server(), client, &ctx.stick_touched, fe.clock);
                    c.publish().await;
                    if let Committed::Cookie(v) = c {
                        set_cookie = Some(v);
                    }
                }
                conn.read_head(req.method(), deadline).await
            }
            Err(e) => Err(e),
        };
        let server = guard.server();
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                server.metrics.response(status);
                if (400..500).contains(&status) && fe.rules.is_some() {
                    rules::count_backend_error(ctx, own);
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return match upgrade.take() {
                        Some((_, on)) => switch_protocols(ctx, own, resp, on, guard),
                        None => local(StatusCode::BAD_GATEWAY, "bad gateway\n"),
                    };
                }
                return proxied_response(ctx, resp, guard, set_cookie);
            }
            Err(ExchangeError::Timeout) => {
                server.metrics.response_errors.fetch_add(1, Relaxed);
                debug!(server = %server.name, "backend response timed out");
                return local(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n");
            }
            Err(e) => {
                // A pooled connection the server had closed just as it was taken: the request
                // did not leave (the first write failed), or — for a request without a body
                // that may be repeated — the server closed without answering a byte.
                let retry = match &e {
                    ExchangeError::NotSent(_) => true,
                    ExchangeError::EmptyResponse => idempotent && req.body().is_end_stream(),
                    _ => false,
                };
                if retry && reused && stale < MAX_STALE_RETRIES {
                    stale += 1;
                    continue;
                }
                server.metrics.response_errors.fetch_add(1, Relaxed);
                debug!(server = %server.name, error = %e, "backend request failed");
                return local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            }
        }
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to, and the handle to its connection.
fn upgrade_request<B>(req: &mut Request<B>) -> Option<(HeaderValue, OnUpgrade)> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let proto = req.headers().get(header::UPGRADE)?.clone();
    let asks = req.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| (proto, hyper::upgrade::on(req)))
}

/// Answers the client with the backend's 101 and joins the two connections once both have
/// switched. The tunnel is tracked with the client connections, so draining waits for it. It
/// keeps the connection's context, so tracked entries count the connection until the tunnel
/// closes, and it counts the bytes it moves.
fn switch_protocols(
    ctx: &Arc<ConnCtx>,
    own: &Tracks,
    resp: Response<Upstream>,
    client: OnUpgrade,
    guard: ActiveGuard,
) -> Response<ProxyBody> {
    let (parts, body) = resp.into_parts();
    // The backend connection is the tunnel now; it never returns to the pool. Bytes the
    // server sent after its 101 head go first.
    let backend = body.into_conn().map(|c| {
        let (io, rest) = c.into_parts();
        Prefixed::new(rest, io)
    });
    let idle = ctx.frontend.config.limits.idle_timeout;
    let meters = match &ctx.frontend.rules {
        Some(_) => {
            let sets = [&ctx.tracks.tracks, own];
            let clock = ctx.frontend.clock;
            (
                Meter::new(&sets, true, clock),
                Meter::new(&sets, false, clock),
            )
        }
        None => (None, None),
    };
    let conn = ctx.clone();
    let tunnel = async move {
        let _conn = conn;
        let client = match client.await {
            Ok(c) => c,
            Err(error) => {
                debug!(%error, "protocol switch failed");
                return;
            }
        };
        let Some(backend) = backend else {
            return;
        };
        let activity = Activity::new();
        match tcp_proxy::tunnel(TokioIo::new(client), backend, &activity, idle, meters).await {
            Ok(Some((up, down))) => {
                debug!(server = %guard.server().name, bytes.up = up, bytes.down = down, "upgraded connection closed")
            }
            Ok(None) => debug!(server = %guard.server().name, "upgraded connection idle, closing"),
            Err(error) => {
                debug!(server = %guard.server().name, %error, "upgraded connection ended with an error")
            }
        }
    };
    ctx.frontend
        .tunnels
        .spawn(tunnel.instrument(tracing::Span::current()));
    let mut parts = parts;
    let proto = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(proto) = proto {
        parts.headers.insert(header::UPGRADE, proto);
    }
    if let Some(via) = &ctx.frontend.via {
        append(&mut parts.headers, &header::VIA, via);
    }
    Response::from_parts(
        parts,
        ProxyBody {
            kind: Kind::Local {
                data: None,
                text: false,
                rate: None,
            },
            conn: None,
            meter: None,
        },
    )
}

fn prepare_request<B>(ctx: &ConnCtx, req: &mut Request<B>) {
    // HTTP/2 and absolute-form requests carry the authority in the URI; the backend gets
    // origin-form over HTTP/1.1 with a Host header.
    if let Some(authority) = req.uri().authority() {
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    append(headers, &X_FORWARDED_FOR, &ctx.xff);
    append(headers, &FORWARDED, &ctx.forwarded);
    if let Some(via) = &ctx.frontend.via {
        append(headers, &header::VIA, via);
    }
}

/// Adds `value` to a list header, joining with an existing value so the header stays single.
fn append(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(v) => {
            v.insert(value.clone());
        }
        header::Entry::Occupied(mut o) => {
            let existing = o.get_mut();
            let mut joined = Vec::with_capacity(existing.len() + 2 + value.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                *existing = v;
            }
        }
    }
}

/// Whether `name` is one of the fixed hop-by-hop headers (RFC 9110 §7.6.1). The backend
/// client leaves them out of responses as it parses them.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), including those the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests have none: one pass over the names, no lookup.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let header::Entry::Occupied(conn) = headers.entry(header::CONNECTION) {
        let (_, values) = conn.remove_entry_mult();
        let named: Vec<HeaderName> = values
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .filter(|t| !matches!(t.as_str(), "" | "close" | "keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

fn proxied_response(
    ctx: &ConnCtx,
    resp: Response<Upstream>,
    guard: ActiveGuard,
    set_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    // The response's hop-by-hop headers were left out as it was parsed.
    let (mut parts, body) = resp.into_parts();
    // The version is the server's hop; the client's is ours. An HTTP/1.0 server's answer goes
    // to an HTTP/1.1 client chunked, and the client's connection stays open.
    parts.version = Version::HTTP_11;
    if let Some(via) = &ctx.frontend.via {
        append(&mut parts.headers, &header::VIA, via);
    }
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    Response::from_parts(
        parts,
        ProxyBody {
            kind: Kind::Upstream {
                body,
                guard: Some(guard),
            },
            conn: None,
            meter: None,
        },
    )
}

fn local(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody {
        kind: Kind::Local {
            data: Some(Bytes::from_static(text.as_bytes())),
            text: true,
            rate: None,
        },
        conn: None,
        meter: None,
    });
    *resp.status_mut() = status;
    resp
}

/// Puts the header fields a response carries outside its `HeaderMap` for the HTTP/1 server
/// to write as they are (a proxied response's, left in the backend's head bytes; a local
/// answer's) into the map, for hyper.
fn fields_in_map(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if let Some(fields) = body.raw_fields() {
        parts.headers = fields.into_map(std::mem::take(&mut parts.headers));
    }
    body.local_fields(|name, value| {
        parts.headers.append(name.clone(), value.clone());
    });
    Response::from_parts(parts, body)
}

/// A response body: streamed from a backend, or a short local answer.
///
/// When a backend body ends, its connection returns to the server's pool and the server's
/// in-flight count drops; a body dropped before its end closes that connection instead.
/// Either way the client connection learns the request is done (for the keep-alive timer).
#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: Kind,
    conn: Option<InFlight>,
    /// Counts the body into tracked entries that store `bytes_out_*`.
    meter: Option<Meter>,
}

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Upstream,
        guard: Option<ActiveGuard>,
    },
    /// An answer of the proxy's own. Its fields stay out of the response's `HeaderMap`
    /// until hyper needs them (see [`fields_in_map`]).
    Local {
        data: Option<Bytes>,
        /// `Content-Type: text/plain`.
        text: bool,
        /// A `429` of a rate rule: its rate-limit fields.
        rate: Option<RateHeaders>,
    },
}

static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

impl ProxyBody {
    /// A proxied response's header fields still in the backend's head bytes, if they are.
    pub(crate) fn raw_fields(&self) -> Option<&RawFields> {
        match &self.kind {
            Kind::Upstream { body, .. } => body.raw_fields(),
            Kind::Local { .. } => None,
        }
    }

    /// Calls `f` with each header field of a local answer that is not in its `HeaderMap`.
    pub(crate) fn local_fields(&self, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        if let Kind::Local { text, rate, .. } = &self.kind {
            if *text {
                f(&header::CONTENT_TYPE, &TEXT_PLAIN);
            }
            if let Some(h) = rate {
                f(&RATELIMIT_POLICY, &h.policy);
                f(&RATELIMIT, &h.limit);
                f(&header::RETRY_AFTER, &h.retry_after);
            }
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Kind::Upstream { body, guard } = &mut self.kind
            && let Some(guard) = guard.take()
            && complete
            && let Some(conn) = body.take_reusable()
        {
            guard.server().pool.put(conn);
        }
        // Dropping the request's `InFlight` ends it.
        self.conn = None;
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Upstream { body, .. } => {
                body.poll_data(cx).map(|d| d.map(|d| d.map(Frame::data)))
            }
            Kind::Local { data, .. } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(conn) = &this.conn {
                    conn.0.activity.touch();
                }
                if let Some(m) = &mut this.meter
                    && let Some(data) = frame.data_ref()
                {
                    m.count(data.len());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Local { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Local { data: Some(d), .. } => SizeHint::with_exact(d.len() as u64),
            Kind::Local { data: None, .. } => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may drop a body it knows is empty (HEAD, 204, 304) without polling it.
        let complete = matches!(&self.kind, Kind::Upstream { body, .. } if body.is_end_stream());
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn list_headers_are_joined() {
        let mut h = HeaderMap::new();
        append(
            &mut h,
            &X_FORWARDED_FOR,
            &HeaderValue::from_static("10.0.0.1"),
        );
        append(
            &mut h,
            &X_FORWARDED_FOR,
            &HeaderValue::from_static("10.0.0.2"),
        );
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 10.0.0.2");
    }
}
