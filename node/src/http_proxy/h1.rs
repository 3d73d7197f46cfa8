//! The HTTP/1 server side of a client connection, for the requests nearly every client sends:
//! a head with no body, or with a `Content-Length` body that arrived with it.
//!
//! A head is parsed from the read buffer with `httparse` and becomes a request over the
//! buffer's own bytes (no copy); the response head and a small body are encoded into one buffer
//! and leave in one `send`. There is no dispatcher between the socket and the request path:
//! one request at a time, in the connection's task, pipelined requests answered in order.
//!
//! Anything else — an `Upgrade`, `Expect`, `Transfer-Encoding` or `CONNECT` request, a body
//! still on its way, a head that `httparse` rejects or that outgrows the header limit — hands
//! the connection, with every byte read and not yet answered, to hyper's HTTP/1 server for the
//! rest of its life. The hand-over happens only between requests, so hyper sees a connection
//! as if it had served it from the start, and keeps its handling of streamed bodies,
//! `100-continue`, upgrades and malformed input.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{ProxyBody, Rejected, handle};
use crate::backend::content_length;
use crate::conn::{ConnCtx, watchdog};
use crate::io::{Prefixed, ReqBody};

/// Most header fields in a request head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Read buffer reserve before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Body data up to this size is copied behind the head into one write; larger data is
/// written from its own buffer.
const COPY_LIMIT: usize = 16 * 1024;
/// Buffered response bytes are written once they reach this much, even while the body has
/// more at hand (a fast backend streaming a large body).
const FLUSH_AT: usize = 64 * 1024;

/// The answer to a head that parsed but cannot become a request (an invalid URI or header
/// field), after which the connection closes. hyper gives the same.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Serves an HTTP/1 client connection until it closes, idles out, or drains after `token`
/// fires; hands it to hyper if it asks for what this server leaves to hyper.
pub(super) async fn serve<IO>(io: IO, ctx: Arc<ConnCtx>, token: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: Vec::with_capacity(1024),
        fields: Vec::with_capacity(16),
    };
    if supervise(&mut conn, &ctx, &token).await == Next::Hyper {
        let Conn { io, rbuf, .. } = conn;
        super::serve_hyper_h1(Prefixed::new(rbuf.freeze(), io), ctx, token).await;
    }
}

/// Runs the request loop beside the connection's watchdog and the node's drain signal.
async fn supervise<IO>(conn: &mut Conn<IO>, ctx: &Arc<ConnCtx>, token: &CancellationToken) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &ctx.frontend.config.limits;
    // A request in flight may go quiet for the backend's response timeout (waiting for the
    // head, which then gets a 504) and a little more; after that the exchange is stuck.
    let stall = ctx.frontend.backend.limits().response_timeout + Duration::from_secs(1);
    let signals = Signals::default();
    // Set, so the first poll registers the watchdog and the drain signal.
    let wakeup = Arc::new(Wakeup {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let side = Waker::from(wakeup.clone());
    let mut run = pin!(conn.run(ctx, &signals));
    let mut dog = pin!(watchdog(
        &ctx.activity,
        limits.header_timeout,
        limits.keepalive_timeout,
        Some(stall)
    ));
    let mut drain = pin!(token.cancelled());
    std::future::poll_fn(|cx| {
        // The watchdog and the drain signal keep `side` between polls and are polled again
        // only after they used it: a request's wakeups cost them nothing.
        wakeup.task.register(cx.waker());
        if wakeup.woken.swap(false, Acquire) {
            let mut side_cx = Context::from_waker(&side);
            if dog.as_mut().poll(&mut side_cx).is_ready() {
                debug!("closing idle or too slow client connection");
                return Poll::Ready(Next::Close);
            }
            if !signals.draining.load(Relaxed) && drain.as_mut().poll(&mut side_cx).is_ready() {
                signals.draining.store(true, Relaxed);
            }
        }
        let polled = run.as_mut().poll(cx);
        if polled.is_pending() && signals.draining.load(Relaxed) && signals.idle.load(Relaxed) {
            // Draining, and waiting between requests: close now.
            return Poll::Ready(Next::Close);
        }
        polled
    })
    .await
}

/// What a connection's request loop and its supervisor in [`serve`] tell each other.
#[derive(Debug, Default)]
struct Signals {
    /// The loop waits for the next request, none begun (a drain may close it now).
    idle: AtomicBool,
    /// The node drains: answer the request in progress, then close.
    draining: AtomicBool,
}

/// The waker [`serve`] gives the watchdog and the drain signal: it records that one of them
/// woke the task before waking it.
#[derive(Debug)]
struct Wakeup {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Release);
        self.task.wake();
    }
}

/// How a connection's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Closed (by either side, or after an error).
    Close,
    /// The next request is for hyper; the read buffer holds it from its first byte.
    Hyper,
}

struct Conn<IO> {
    io: IO,
    /// Bytes read and not consumed yet (the next request's, when pipelined).
    rbuf: BytesMut,
    /// The response being written (kept for its capacity).
    wbuf: Vec<u8>,
    /// Where the header fields of the head being parsed lie (kept for its capacity).
    fields: Vec<Field>,
}

/// A parsed request and whether the client lets the connection carry another one.
struct Head {
    req: Request<ReqBody>,
    keep_alive: bool,
}

/// What the read buffer holds.
// Returned once per request and moved straight on; boxing the request would allocate for it.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Head),
    /// The start of a head.
    Partial,
    /// A request for hyper (or bytes hyper answers as an error); nothing was consumed.
    Other,
    /// A head whose URI or a header field is invalid; it was consumed.
    Bad,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    async fn run(&mut self, ctx: &Arc<ConnCtx>, signals: &Signals) -> Next {
        let max_head = ctx.frontend.config.limits.max_header_size;
        loop {
            let head = loop {
                if !self.rbuf.is_empty() {
                    match parse(&mut self.rbuf, &mut self.fields, max_head) {
                        Parsed::Request(head) => break head,
                        Parsed::Partial => {}
                        Parsed::Other => return Next::Hyper,
                        Parsed::Bad => {
                            let _ = self.io.write_all(BAD_REQUEST).await;
                            return Next::Close;
                        }
                    }
                }
                // hyper answers an oversized head (431).
                if self.rbuf.len() >= max_head {
                    return Next::Hyper;
                }
                // A drain closes the connection between requests. One whose first request
                // has not arrived is owed an answer, as any new connection is, until the
                // header timeout; a request already begun is read and answered.
                let idle = self.rbuf.is_empty() && ctx.activity.has_begun();
                if idle && signals.draining.load(Relaxed) {
                    return Next::Close;
                }
                self.rbuf.reserve(READ_CHUNK);
                signals.idle.store(idle, Relaxed);
                let read = self.io.read_buf(&mut self.rbuf).await;
                signals.idle.store(false, Relaxed);
                match read {
                    Ok(0) => return Next::Close,
                    Ok(_) => {}
                    Err(error) => {
                        debug!(%error, "client connection read failed");
                        return Next::Close;
                    }
                }
            };
            let Head { req, keep_alive } = head;
            let bodyless_method = req.method() == Method::HEAD;
            let http10 = req.version() == Version::HTTP_10;
            let resp = match handle(ctx.clone(), req).await {
                Ok(resp) => resp,
                // hyper closes without an answer too.
                Err(Rejected) => return Next::Close,
            };
            let keep_alive = keep_alive && !signals.draining.load(Relaxed);
            let reusable = self
                .respond(resp, bodyless_method, http10, keep_alive)
                .await;
            if !reusable {
                let _ = self.io.shutdown().await;
                return Next::Close;
            }
        }
    }

    /// Writes `resp`; returns whether the connection may carry another request (it was
    /// written whole, and neither side asked to close).
    async fn respond(
        &mut self,
        resp: Response<ProxyBody>,
        head_request: bool,
        http10: bool,
        mut keep_alive: bool,
    ) -> bool {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let bodyless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(b"HTTP/1.1 ");
        w.extend_from_slice(status.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        w.extend_from_slice(b"\r\n");
        let mut has_date = false;
        let mut has_length = false;
        if let Some(fields) = body.raw_fields() {
            for (name, value) in fields.iter() {
                push_field(w, name, value);
            }
            has_date = fields.has_date();
            has_length = fields.has_length();
        }
        body.local_fields(|name, value| push_field(w, name.as_ref(), value.as_bytes()));
        for (name, value) in &parts.headers {
            if name == header::DATE {
                has_date = true;
            } else if name == header::CONTENT_LENGTH {
                has_length = true;
            } else if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
                // The framing of this hop is ours to write.
                continue;
            }
            push_field(w, name.as_ref(), value.as_bytes());
        }
        let mut chunked = false;
        if !bodyless && !has_length {
            if let Some(n) = body.size_hint().exact() {
                w.extend_from_slice(b"content-length: ");
                push_decimal(w, n);
                w.extend_from_slice(b"\r\n");
            } else if http10 {
                // An HTTP/1.0 client knows no chunks: the body ends with the connection.
                keep_alive = false;
            } else {
                chunked = true;
                w.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        if !keep_alive {
            w.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            w.extend_from_slice(b"connection: keep-alive\r\n");
        }
        if !has_date {
            push_date(w);
        }
        w.extend_from_slice(b"\r\n");
        if bodyless {
            // Dropping the body ends the request (and pools a backend connection whose
            // answer is complete).
            drop(body);
            return self.io.write_all(&self.wbuf).await.is_ok() && keep_alive;
        }
        loop {
            // Data the body has at hand joins the head; before waiting for more, what is
            // buffered goes out.
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if self.flush_wbuf().await.is_err() {
                        return false;
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    // The client sees the body cut short: no last chunk, and the close.
                    debug!(%error, "response body failed");
                    let _ = self.flush_wbuf().await;
                    return false;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            if chunked {
                push_hex(&mut self.wbuf, data.len());
                self.wbuf.extend_from_slice(b"\r\n");
            }
            if data.len() <= COPY_LIMIT {
                self.wbuf.extend_from_slice(&data);
            } else if self.flush_wbuf().await.is_err() || self.io.write_all(&data).await.is_err() {
                return false;
            }
            if chunked {
                self.wbuf.extend_from_slice(b"\r\n");
            }
            if self.wbuf.len() >= FLUSH_AT && self.flush_wbuf().await.is_err() {
                return false;
            }
        }
        drop(body);
        if chunked {
            self.wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush_wbuf().await.is_ok() && keep_alive
    }

    async fn flush_wbuf(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }
}

/// Where a header field lies in the head.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the request at the front of `buf`, consuming it (head and body) if it is one this
/// server takes; a head longer than `max_head` is hyper's to refuse. `fields` is scratch space.
fn parse(buf: &mut BytesMut, fields: &mut Vec<Field>, max_head: usize) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Complete(_)) => return Parsed::Other,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let method = match Method::from_bytes(method.as_bytes()) {
        Ok(m) if m != Method::CONNECT => m,
        _ => return Parsed::Other,
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let mut length: Option<u64> = None;
    let mut close = false;
    let mut keep = false;
    fields.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // A second one (even equal), or one that is not plain digits, is hyper's
                // to judge.
                match (length, content_length(h.value)) {
                    (None, Some(n)) => length = Some(n),
                    _ => return Parsed::Other,
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::Other,
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::Other,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::Other,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            _ => {}
        }
        fields.push(Field {
            name: span(name),
            value: span(h.value),
        });
    }
    let path = span(path.as_bytes());
    let (version, keep_alive) = match minor {
        0 => (Version::HTTP_10, keep && !close),
        _ => (Version::HTTP_11, !close),
    };
    let body_len = match usize::try_from(length.unwrap_or(0)) {
        Ok(n) if n <= buf.len() - len => n,
        // The body is still on its way: hyper streams it.
        _ => return Parsed::Other,
    };
    let head = buf.split_to(len).freeze();
    let body = buf.split_to(body_len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.1)) else {
        return Parsed::Bad;
    };
    // Room for the forwarding headers the request path adds, so the map does not grow.
    let mut headers = HeaderMap::with_capacity(fields.len() + 3);
    for f in fields.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[f.name.0..f.name.1]),
            HeaderValue::from_maybe_shared(head.slice(f.value.0..f.value.1)),
        ) else {
            return Parsed::Bad;
        };
        headers.append(name, value);
    }
    let mut req = Request::new(ReqBody::full(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Parsed::Request(Head { req, keep_alive })
}

fn push_field(w: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    w.extend_from_slice(name);
    w.extend_from_slice(b": ");
    w.extend_from_slice(value);
    w.extend_from_slice(b"\r\n");
}

fn push_decimal(w: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
}

fn push_hex(w: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
}

/// Appends a `Date` header field; the text is formatted once a second per thread.
fn push_date(w: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            // IMF-fixdate is always 29 bytes.
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        if *at == secs {
            w.extend_from_slice(b"date: ");
            w.extend_from_slice(text);
            w.extend_from_slice(b"\r\n");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf, &mut Vec::new(), 8192), buf)
    }

    #[test]
    fn a_simple_head_becomes_a_request_over_its_bytes() {
        let (p, rest) =
            parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Custom: v\r\n\r\nGET /next HTTP/1.1\r\n");
        let Parsed::Request(Head { req, keep_alive }) = p else {
            panic!("not a request");
        };
        assert!(keep_alive);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers()["x-custom"], "v");
        assert!(req.body().is_end_stream());
        // The pipelined request's start stays.
        assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
    }

    #[test]
    fn a_body_that_arrived_with_the_head_is_taken_whole() {
        let (p, rest) = parsed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET");
        let Parsed::Request(Head { req, .. }) = p else {
            panic!("not a request");
        };
        assert_eq!(req.body().size_hint().exact(), Some(5));
        assert_eq!(&rest[..], b"GET");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        for (head, keep) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: x, Keep-Alive\r\n\r\n", true),
        ] {
            let (Parsed::Request(h), _) = parsed(head) else {
                panic!("not a request: {head:?}");
            };
            assert_eq!(h.keep_alive, keep, "{head:?}");
        }
    }

    #[test]
    fn what_hyper_handles_is_left_in_the_buffer() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            let (p, rest) = parsed(head);
            assert!(matches!(p, Parsed::Other), "{head:?}");
            assert_eq!(&rest[..], head, "nothing consumed");
        }
        assert!(matches!(
            parsed(b"GET / HTTP/1.1\r\nHost").0,
            Parsed::Partial
        ));
    }

    #[test]
    fn numbers_are_written_in_full() {
        let mut w = Vec::new();
        push_decimal(&mut w, 0);
        w.push(b' ');
        push_decimal(&mut w, u64::MAX);
        w.push(b' ');
        push_hex(&mut w, 0);
        w.push(b' ');
        push_hex(&mut w, 0x1f2e);
        assert_eq!(w, b"0 18446744073709551615 0 1f2e");
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut w = Vec::new();
        push_date(&mut w);
        let text = std::str::from_utf8(&w).unwrap();
        let value = text
            .strip_prefix("date: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        assert!(httpdate::parse_http_date(value).is_ok(), "{text:?}");
    }
}
