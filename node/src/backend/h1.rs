//! HTTP/1.1 exchanges with a server, driven in the client connection's own task.
//!
//! A [`BackendConn`] is a TCP connection and its read buffer. A request's head (and body) is
//! written straight from the request task, the response head is parsed from the buffer with
//! `httparse`, and the response body is an [`Upstream`] that the client connection's writer
//! polls, reading the server's socket itself. There is no connection task, no dispatch channel,
//! no oneshot and no body channel between the two sides: a small response costs one `send` and
//! one `recv` on the server's socket and no wakeup besides the socket's.
//!
//! Framing follows RFC 9112: a response to `HEAD`, a `1xx`, `204` or `304` has no body;
//! `Transfer-Encoding: chunked` is decoded; `Content-Length` bodies are read to their length;
//! anything else is read until the server closes (and that connection is not reused). Interim
//! `1xx` responses other than `101` are skipped. Hop-by-hop headers of the response are removed
//! here as they are parsed (except for a `101`, whose `Upgrade` the tunnel needs).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::io::ReqBody;

/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Largest response head.
const MAX_HEAD: usize = 64 * 1024;
/// Read buffer reserve before each read.
const READ_CHUNK: usize = 8 * 1024;

/// A keep-alive connection to a server.
#[derive(Debug)]
pub struct BackendConn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request head being written (kept for its capacity).
    wbuf: Vec<u8>,
    /// The request body still being sent.
    upload: Option<Upload>,
    /// The response timeout, kept for the connection's life: moving a registered timer to a
    /// later deadline is one compare-and-swap, where a new timer per request is inserted
    /// into and removed from the runtime's timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
}

/// A request body being sent while the response is read.
#[derive(Debug)]
struct Upload {
    body: ReqBody,
    chunked: bool,
    /// Bytes of the current chunk not yet written.
    out: Bytes,
    state: UploadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadState {
    /// Sending the body.
    Body,
    /// Writing the last bytes (the chunked terminator).
    Last,
    /// All sent.
    Done,
    /// Writing failed: the server closed its side.
    Failed,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request failed before any of it can have been processed: on a reused
    /// connection the server had closed it; the request may go out again on another.
    #[error("request not sent: {0}")]
    NotSent(#[source] io::Error),
    /// The server closed the connection without a byte of response.
    #[error("connection closed before a response")]
    EmptyResponse,
    /// Reading or writing failed in the middle of the exchange.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The client's request body failed.
    #[error("request body: {0}")]
    Body(#[source] hyper::Error),
    /// The response is not valid HTTP/1.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// No response head by the deadline.
    #[error("no response head in time")]
    Timeout,
}

impl BackendConn {
    /// Wraps a freshly connected stream.
    pub fn new(io: TcpStream) -> BackendConn {
        BackendConn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            upload: None,
            timer: None,
        }
    }

    /// Whether an idle connection can no longer carry a request: the server closed it (or
    /// sent something unasked) while it sat in the pool. Reads the readiness the reactor
    /// already recorded; no system call.
    pub fn is_stale(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.io.poll_read_ready(&mut cx).is_ready()
    }

    /// Writes `req`'s head. Its body, if it has one, is taken to be sent while the response
    /// is read (a server may answer, and echo, before the whole body is in). `Err(NotSent)`
    /// means the first write failed for a request without a body: nothing the server could
    /// act on reached it, and `req` is intact for another attempt.
    pub async fn send(&mut self, req: &mut Request<ReqBody>) -> Result<(), ExchangeError> {
        let body_done = req.body().is_end_stream();
        let chunked = !body_done
            && !req.headers().contains_key(header::CONTENT_LENGTH)
            && req.body().size_hint().exact().is_none();
        self.wbuf.clear();
        encode_head(&mut self.wbuf, req, chunked);
        if let Err(e) = self.io.write_all(&self.wbuf).await {
            return Err(if body_done {
                ExchangeError::NotSent(e)
            } else {
                ExchangeError::Io(e)
            });
        }
        self.upload = (!body_done).then(|| Upload {
            body: req.body_mut().take(),
            chunked,
            out: Bytes::new(),
            state: UploadState::Body,
        });
        Ok(())
    }

    /// Moves the request body on while the response is read: `Ready` once it is all sent (or
    /// sending failed: the server may still answer, and the connection is not reused).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        let Some(up) = self.upload.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            while !up.out.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &up.out) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        up.state = UploadState::Failed;
                        up.out = Bytes::new();
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(n)) => up.out.advance(n),
                }
            }
            match up.state {
                UploadState::Done | UploadState::Failed => return Poll::Ready(Ok(())),
                UploadState::Last => {
                    up.state = UploadState::Done;
                    continue;
                }
                UploadState::Body => {}
            }
            match Pin::new(&mut up.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ExchangeError::Body(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers from the client are not forwarded.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        up.out = if up.chunked {
                            let mut c = BytesMut::with_capacity(data.len() + 20);
                            c.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            c.extend_from_slice(&data);
                            c.extend_from_slice(b"\r\n");
                            c.freeze()
                        } else {
                            data
                        };
                    }
                }
                Poll::Ready(None) => {
                    if up.chunked {
                        up.out = Bytes::from_static(b"0\r\n\r\n");
                    }
                    up.state = UploadState::Last;
                }
            }
        }
    }

    /// Whether the request body is all sent (or there was none).
    fn upload_done(&self) -> bool {
        self.upload
            .as_ref()
            .is_none_or(|u| u.state == UploadState::Done)
    }

    /// Reads the response head (skipping interim `1xx` answers other than `101`) to a request
    /// with `method`, failing with [`ExchangeError::Timeout`] once `deadline` passes. The
    /// response's body reads on from this connection.
    pub async fn read_head(
        mut self: Box<Self>,
        method: &Method,
        deadline: Instant,
    ) -> Result<Response<Upstream>, ExchangeError> {
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        loop {
            // Until the buffer holds a whole head; parsing needs no await, so the parser's
            // header array never becomes part of this future.
            let spans = loop {
                if let Some(spans) = head_len(&self.buf)? {
                    break spans;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(ExchangeError::Invalid("response head too large"));
                }
                let before = self.buf.len();
                let read = std::future::poll_fn(|cx| match self.poll_read_more(cx) {
                    Poll::Ready(r) => Poll::Ready(r.map_err(ExchangeError::from)),
                    Poll::Pending => timer
                        .as_mut()
                        .poll(cx)
                        .map(|()| Err(ExchangeError::Timeout)),
                })
                .await?;
                if read == 0 {
                    return Err(if before == 0 {
                        ExchangeError::EmptyResponse
                    } else {
                        ExchangeError::Invalid("connection closed inside the response head")
                    });
                }
            };
            let Some(head) = parse_head(&mut self.buf, &spans, method)? else {
                continue;
            };
            self.timer = Some(timer);
            let mut resp = Response::new(Upstream {
                conn: Some(self),
                framing: head.framing,
                reusable: head.reusable,
                fields: head.raw,
            });
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            return Ok(resp);
        }
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.poll_upload(cx) {
            return Poll::Ready(Err(io::Error::other(e)));
        }
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The stream, with the bytes read past the response head in front (an upgraded
    /// connection).
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// Most header fields whose place in the head [`head_len`] records; a head with more is
/// parsed a second time by [`parse_head`].
const FEW_HEADERS: usize = 16;

/// Where a complete head's header fields lie: offsets of name and value, and their lengths.
#[derive(Clone, Copy)]
struct Spans {
    len: usize,
    code: u16,
    minor: Option<u8>,
    count: usize,
    at: [(u32, u32, u32, u32); FEW_HEADERS],
}

/// The complete response head at the front of `buf`, `None` while it is incomplete.
fn head_len(buf: &[u8]) -> Result<Option<Spans>, ExchangeError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => {
            let base = buf.as_ptr() as usize;
            // Offsets within a head of at most MAX_HEAD bytes fit in u32.
            let off = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            let mut spans = Spans {
                len,
                code: parsed.code.unwrap_or(0),
                minor: parsed.version,
                count: parsed.headers.len(),
                at: [(0, 0, 0, 0); FEW_HEADERS],
            };
            for (slot, h) in spans.at.iter_mut().zip(parsed.headers.iter()) {
                *slot = (
                    off(h.name.as_bytes()),
                    h.name.len() as u32,
                    off(h.value),
                    h.value.len() as u32,
                );
            }
            Ok(Some(spans))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(ExchangeError::Invalid("too many header fields"))
        }
        Err(_) => Err(ExchangeError::Invalid("malformed response head")),
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The forwarded fields, when they are not in `headers`.
    raw: Option<Box<RawFields>>,
    framing: Framing,
    reusable: bool,
}

/// Parses the complete head at the front of `buf` that [`head_len`] found, and takes it
/// out; `None` for an interim `1xx` response, which is skipped.
fn parse_head(
    buf: &mut BytesMut,
    spans: &Spans,
    method: &Method,
) -> Result<Option<Head>, ExchangeError> {
    let status =
        StatusCode::from_u16(spans.code).map_err(|_| ExchangeError::Invalid("bad status"))?;
    let version = if spans.minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(spans.len);
        return Ok(None);
    }
    // The head is split off and frozen, so header values share its bytes.
    let head = buf.split_to(spans.len).freeze();
    let mut fields = Fields::new(status, version);
    if spans.count <= FEW_HEADERS && !fields.upgrade {
        // The common case: the fields stay where they are, and those to forward are marked.
        let mut keep = 0u16;
        let mut lengths = 0u16;
        let mut date = false;
        for (i, &(n, nl, v, vl)) in spans.at[..spans.count].iter().enumerate() {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            let (name, value) = (&head[n..n + nl], &head[v..v + vl]);
            match fields.add(name, value)? {
                Field::Forward(kind) => {
                    keep |= 1 << i;
                    date |= kind == Kind::Date;
                    if kind == Kind::ContentLength {
                        lengths |= 1 << i;
                    }
                }
                Field::Drop => {}
            }
        }
        if let Some(named) = &fields.named {
            for (i, &(n, nl, _, _)) in spans.at[..spans.count].iter().enumerate() {
                let name = &head[n as usize..(n + nl) as usize];
                if named.iter().any(|n| name.eq_ignore_ascii_case(n.as_ref())) {
                    keep &= !(1 << i);
                }
            }
        }
        // With both, chunked wins: the length is not the body's.
        if fields.chunked {
            keep &= !lengths;
        }
        // Boxed: it moves with the response, a few times.
        let raw = Box::new(RawFields {
            length: keep & lengths != 0,
            head,
            at: spans.at,
            keep,
            date,
        });
        return Ok(Some(fields.finish(method, HeaderMap::new(), Some(raw))));
    }
    let mut map = HeaderMap::with_capacity(spans.count);
    let mut add = |name: &[u8], value: Bytes| -> Result<(), ExchangeError> {
        if let Field::Forward(_) = fields.add(name, &value)? {
            let name = HeaderName::from_bytes(name)
                .map_err(|_| ExchangeError::Invalid("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| ExchangeError::Invalid("bad header value"))?;
            map.append(name, value);
        }
        Ok(())
    };
    if spans.count <= FEW_HEADERS {
        for &(n, nl, v, vl) in &spans.at[..spans.count] {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            add(&head[n..n + nl], head.slice(v..v + vl))?;
        }
    } else {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        if !matches!(
            httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &head,
                &mut headers,
            ),
            Ok(httparse::Status::Complete(_))
        ) {
            return Err(ExchangeError::Invalid("malformed response head"));
        }
        for h in parsed.headers.iter() {
            add(h.name.as_bytes(), head.slice_ref(h.value))?;
        }
    }
    if !fields.upgrade {
        if let Some(named) = &fields.named {
            for n in named {
                map.remove(n);
            }
        }
        if fields.chunked {
            map.remove(header::CONTENT_LENGTH);
        }
    }
    Ok(Some(fields.finish(method, map, None)))
}

/// The end-to-end header fields of a response as the server wrote them: its head's bytes and
/// where each field to forward lies in them. An HTTP/1 client gets them written as they are;
/// hyper (HTTP/2 clients, connections hyper serves) gets them as a `HeaderMap`.
#[derive(Debug)]
pub struct RawFields {
    head: Bytes,
    at: [(u32, u32, u32, u32); FEW_HEADERS],
    /// Bit `i` set: field `i` is forwarded.
    keep: u16,
    date: bool,
    length: bool,
}

impl RawFields {
    /// The forwarded fields' names and values.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.at
            .iter()
            .enumerate()
            .filter(|(i, _)| self.keep & (1 << i) != 0)
            .map(|(_, &(n, nl, v, vl))| {
                let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
                (&self.head[n..n + nl], &self.head[v..v + vl])
            })
    }

    /// Whether a `Date` field is among them.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// Whether a `Content-Length` field is among them.
    pub fn has_length(&self) -> bool {
        self.length
    }

    /// The fields, followed by those of `rest`, as one map.
    pub fn into_map(&self, rest: HeaderMap) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.keep.count_ones() as usize + rest.len());
        for (name, value) in self.iter() {
            // httparse checked both as HeaderName and HeaderValue do.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(self.head.slice_ref(value)),
            ) {
                map.append(name, value);
            }
        }
        let mut last = None;
        for (name, value) in rest {
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                map.append(name.clone(), value);
            }
        }
        map
    }
}

/// What a response header field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another field that describes one hop (RFC 9110 §7.6.1).
    HopByHop,
    Date,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            14 if is(b"content-length") => Kind::ContentLength,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            10 if is(b"connection") => Kind::Connection,
            4 if is(b"date") => Kind::Date,
            2 if is(b"te") => Kind::HopByHop,
            7 if is(b"trailer") || is(b"upgrade") => Kind::HopByHop,
            10 if is(b"keep-alive") => Kind::HopByHop,
            16 if is(b"proxy-connection") => Kind::HopByHop,
            _ => Kind::Other,
        }
    }
}

/// Whether a field read by [`Fields::add`] goes on to the client.
enum Field {
    Forward(Kind),
    Drop,
}

/// A response head's framing and connection management, taken from its fields as they are
/// read; hop-by-hop fields are dropped (kept for a `101`).
struct Fields {
    status: StatusCode,
    version: Version,
    upgrade: bool,
    length: Option<u64>,
    chunked: bool,
    close: bool,
    /// Fields the `Connection` header names.
    named: Option<Vec<HeaderName>>,
}

impl Fields {
    fn new(status: StatusCode, version: Version) -> Fields {
        Fields {
            status,
            version,
            upgrade: status == StatusCode::SWITCHING_PROTOCOLS,
            length: None,
            chunked: false,
            close: version == Version::HTTP_10,
            named: None,
        }
    }

    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<Field, ExchangeError> {
        let kind = Kind::of(name);
        match kind {
            Kind::ContentLength => {
                let n = content_length(value.trim_ascii())
                    .ok_or(ExchangeError::Invalid("bad content-length"))?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(ExchangeError::Invalid("conflicting content-length"));
                }
                self.length = Some(n);
            }
            Kind::TransferEncoding => {
                // Chunked must be the last coding; anything else is read to the close.
                self.chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !self.chunked {
                    self.close = true;
                }
            }
            Kind::Connection => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if self.version == Version::HTTP_10 {
                            self.close = false;
                        }
                    } else if !token.is_empty()
                        && let Ok(n) = HeaderName::from_bytes(token)
                    {
                        self.named.get_or_insert_with(Vec::new).push(n);
                    }
                }
            }
            Kind::HopByHop | Kind::Date | Kind::Other => {}
        }
        let hop = matches!(
            kind,
            Kind::TransferEncoding | Kind::Connection | Kind::HopByHop
        );
        Ok(if hop && !self.upgrade {
            Field::Drop
        } else {
            Field::Forward(kind)
        })
    }

    fn finish(mut self, method: &Method, headers: HeaderMap, raw: Option<Box<RawFields>>) -> Head {
        let no_body = self.upgrade
            || *method == Method::HEAD
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Empty
        } else if self.chunked {
            // With both, chunked wins and the connection is not trusted afterwards.
            if self.length.is_some() {
                self.close = true;
            }
            Framing::Chunked(Chunk::Size)
        } else if let Some(n) = self.length {
            Framing::Length(n)
        } else {
            self.close = true;
            Framing::Close
        };
        Head {
            status: self.status,
            version: self.version,
            headers,
            raw,
            framing,
            reusable: !self.close && !self.upgrade,
        }
    }
}

/// A `Content-Length` value: decimal digits only, and small enough to count.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Writes the request line and headers; with `chunked`, the request body goes chunked, and
/// without a `Content-Length` a body of known size gets one.
fn encode_head(out: &mut Vec<u8>, req: &Request<ReqBody>, chunked: bool) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    match req.uri().path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !req.body().is_end_stream()
        && !req.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(n) = req.body().size_hint().exact()
    {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No (more) body.
    Empty,
    /// This many bytes left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the server closes.
    Close,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// Done.
    Done,
}

/// A response body streamed from a server's connection.
#[derive(Debug)]
pub struct Upstream {
    /// Boxed: it moves with the response, and a connection's box lives as long as it does.
    conn: Option<Box<BackendConn>>,
    framing: Framing,
    reusable: bool,
    /// The response's forwarded header fields, when they were left in the head's bytes
    /// rather than put in the response's `HeaderMap`.
    fields: Option<Box<RawFields>>,
}

impl Upstream {
    /// The response's header fields left in the head's bytes, if they were.
    pub fn raw_fields(&self) -> Option<&RawFields> {
        self.fields.as_deref()
    }

    /// Whether the whole body has been read.
    pub fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    /// Takes the connection out if the body was read to its end and the connection may carry
    /// another request.
    pub fn take_reusable(&mut self) -> Option<Box<BackendConn>> {
        if self.reusable && self.is_end_stream() {
            self.conn
                .take()
                .filter(|c| c.buf.is_empty() && c.upload_done())
        } else {
            None
        }
    }

    /// The connection itself, whatever state the body is in (a `101`).
    pub fn into_conn(mut self) -> Option<Box<BackendConn>> {
        self.conn.take()
    }

    /// The exact size of the rest of the body, when known.
    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match self.framing {
                Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done) => {
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = left.min(conn.buf.len() as u64);
                        self.framing = Framing::Length(left - n);
                        // n ≤ the buffer's length, a usize.
                        let data = conn.buf.split_to(n as usize).freeze();
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                    }
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.buf, state) {
                    Ok(Some((next, data))) => {
                        self.framing = Framing::Chunked(next);
                        if let Some(d) = data {
                            return Poll::Ready(Some(Ok(d)));
                        }
                        continue;
                    }
                    // More bytes are needed.
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
            match conn.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(0)) => {
                    if self.framing == Framing::Close {
                        self.framing = Framing::Empty;
                        self.reusable = false;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection inside the response body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// One step of chunked decoding from `buf` in `state`: the next state and any data, or
/// `None` when more bytes are needed.
fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> io::Result<Option<(Chunk, Option<Bytes>)>> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"));
    match state {
        Chunk::Size => {
            let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > 4096 {
                    return Err(bad("chunk-size line too long"));
                }
                return Ok(None);
            };
            let line = &buf[..eol];
            let hex = line
                .split(|&b| b == b';' || b == b'\r')
                .next()
                .unwrap_or_default();
            let hex = std::str::from_utf8(hex)
                .map_err(|_| bad("chunk size"))?
                .trim();
            let size = u64::from_str_radix(hex, 16).map_err(|_| bad("chunk size"))?;
            buf.advance(eol + 1);
            Ok(Some((
                if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                },
                None,
            )))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = left.min(buf.len() as u64);
            // n ≤ the buffer's length, a usize.
            let data = buf.split_to(n as usize).freeze();
            let next = if n == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - n)
            };
            Ok(Some((next, Some(data))))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                if buf.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                    return Err(bad("missing CRLF after chunk data"));
                }
                if buf.first() == Some(&b'\n') {
                    buf.advance(1);
                    return Ok(Some((Chunk::Size, None)));
                }
                return Ok(None);
            }
            if &buf[..2] == b"\r\n" {
                buf.advance(2);
            } else if buf[0] == b'\n' {
                buf.advance(1);
            } else {
                return Err(bad("missing CRLF after chunk data"));
            }
            Ok(Some((Chunk::Size, None)))
        }
        Chunk::Trailers => {
            let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > 16 * 1024 {
                    return Err(bad("trailers too long"));
                }
                return Ok(None);
            };
            let empty = buf[..eol].iter().all(|&b| b == b'\r');
            buf.advance(eol + 1);
            Ok(Some((
                if empty { Chunk::Done } else { Chunk::Trailers },
                None,
            )))
        }
        Chunk::Done => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> io::Result<(Vec<u8>, Chunk)> {
        let mut buf = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        loop {
            let Some((next, data)) = decode_chunk(&mut buf, state)? else {
                return Ok((out, state));
            };
            if let Some(d) = &data {
                out.extend_from_slice(d);
            }
            state = next;
        }
    }

    #[test]
    fn chunked_bodies_decode() {
        let (body, state) =
            decode_all(b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n").unwrap();
        assert_eq!(body, b"hello, world");
        assert_eq!(state, Chunk::Done);
    }

    #[test]
    fn partial_chunked_bodies_wait_for_more() {
        let (body, state) = decode_all(b"a\r\n0123").unwrap();
        assert_eq!(body, b"0123");
        assert_eq!(state, Chunk::Data(6));
        let (_, state) = decode_all(b"1").unwrap();
        assert_eq!(state, Chunk::Size);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"2\r\nabXY").is_err());
    }
}
