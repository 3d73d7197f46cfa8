//! Small I/O adapters for client connections and their request bodies.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::rules::track::Meter;

/// A stream that first yields bytes already read from it (those that followed a PROXY
/// protocol header), then reads from the stream itself.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    /// Wraps `inner`, to be read after `prefix`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body on its way to a backend, counting its bytes into the tracked entries that
/// store `bytes_in_*` (one table operation per chunk) when there are any.
#[derive(Debug)]
pub struct ReqBody {
    inner: Source,
    meter: Option<Meter>,
}

/// Where a request body comes from.
#[derive(Debug)]
enum Source {
    /// Streamed by hyper (HTTP/2, and HTTP/1 requests the plain server hands over).
    Hyper(Incoming),
    /// Read whole with the head by the HTTP/1 server; `None` once sent (or for none).
    Full(Option<Bytes>),
}

impl ReqBody {
    /// Wraps a request body hyper streams.
    pub(crate) fn streamed(inner: Incoming) -> ReqBody {
        ReqBody {
            inner: Source::Hyper(inner),
            meter: None,
        }
    }

    /// A body already read whole (empty for none).
    pub(crate) fn full(data: Bytes) -> ReqBody {
        ReqBody {
            inner: Source::Full((!data.is_empty()).then_some(data)),
            meter: None,
        }
    }

    /// Counts the body into `meter` as it is sent.
    pub(crate) fn set_meter(&mut self, meter: Option<Meter>) {
        self.meter = meter;
    }

    /// Takes the body away, leaving an empty one.
    pub(crate) fn take(&mut self) -> ReqBody {
        ReqBody {
            inner: std::mem::replace(&mut self.inner, Source::Full(None)),
            meter: self.meter.take(),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Source::Hyper(inner) => Pin::new(inner).poll_frame(cx),
            Source::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let (Some(m), Poll::Ready(Some(Ok(frame)))) = (&mut this.meter, &polled)
            && let Some(data) = frame.data_ref()
        {
            m.count(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Hyper(inner) => inner.is_end_stream(),
            Source::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Hyper(inner) => inner.size_hint(),
            Source::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
