//! TCP mode: pick a server (retrying once on another when the connect fails), then copy bytes
//! both ways. When one side finishes sending, its half of the other connection is shut down
//! and the other direction carries on (half-close); the connection closes when both are done
//! or when no byte moved for `idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::backend::Server;
use crate::backend::stick::Stuck;
use crate::conn::{Activity, ConnCtx, watchdog};
use crate::metrics::ConnError;
use crate::rules::track::Meter;

const COPY_BUF: usize = 64 * 1024;

/// Proxies one client connection to a backend server.
pub(crate) async fn serve<IO>(client: IO, ctx: Arc<ConnCtx>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let fe = &ctx.frontend;
    let backend = &fe.backend;
    let client_ip = ctx.client.ip();
    let stuck = match &fe.stick {
        Some(s) => s.lookup(backend, client_ip, None, fe.clock.tick()),
        None => Stuck::default(),
    };
    let mut excluded: Option<Arc<Server>> = None;
    let (guard, upstream) = loop {
        let pick = match stuck.server {
            Some(s) if excluded.is_none() => Some(s),
            _ => backend.select(client_ip, excluded.as_deref()),
        };
        let Some(server) = pick else {
            backend.metrics.no_server.fetch_add(1, Relaxed);
            fe.metrics.conn_error(ConnError::NoServer);
            debug!("no server available");
            return;
        };
        let guard = server.begin();
        match server.connect().await {
            Ok(stream) => break (guard, stream),
            Err(error) => {
                debug!(server = %server.name, %error, "cannot connect to server");
                if excluded.is_none() && backend.servers.len() > 1 {
                    backend.metrics.retries.fetch_add(1, Relaxed);
                    excluded = Some(server.clone());
                    continue;
                }
                fe.metrics.conn_error(ConnError::NoServer);
                return;
            }
        }
    };
    if let Some(s) = &fe.stick {
        s.commit(
            &stuck,
            guard.server(),
            client_ip,
            &ctx.stick_touched,
            fe.clock,
        )
        .publish()
        .await;
    }
    let idle = fe.config.limits.idle_timeout;
    let meters = match &fe.rules {
        Some(_) => {
            let sets = [&ctx.tracks.tracks];
            (
                Meter::new(&sets, true, fe.clock),
                Meter::new(&sets, false, fe.clock),
            )
        }
        None => (None, None),
    };
    match tunnel(client, upstream, &ctx.activity, idle, meters).await {
        Ok(Some((up, down))) => {
            debug!(server = %guard.server().name, bytes.up = up, bytes.down = down, "tcp connection closed")
        }
        Ok(None) => debug!(server = %guard.server().name, "tcp connection idle, closing"),
        Err(error) => {
            debug!(server = %guard.server().name, %error, "tcp connection ended with an error")
        }
    }
}

/// Copies bytes both ways with half-close until both directions end (`Some(bytes up, bytes
/// down)`), or until nothing moved for `idle` (`None`). Used by TCP mode and by HTTP upgrades.
/// `meters` count what is read from `a` (the client: bytes in) and from `b` (bytes out) into
/// tracked entries, one table operation per read.
pub(crate) async fn tunnel<A, B>(
    a: A,
    b: B,
    activity: &Activity,
    idle: Duration,
    meters: (Option<Meter>, Option<Meter>),
) -> io::Result<Option<(u64, u64)>>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Touch {
        inner: a,
        activity,
        meter: meters.0,
    };
    let mut b = Touch {
        inner: b,
        activity,
        meter: meters.1,
    };
    // Mark the connection active so the watchdog counts idle_timeout from now.
    activity.touch();
    tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF) => res.map(Some),
        _ = watchdog(activity, idle, idle, None) => Ok(None),
    }
}

/// Records activity, and counts the bytes into `meter`, on every successful read.
struct Touch<'a, T> {
    inner: T,
    activity: &'a Activity,
    meter: Option<Meter>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if matches!(res, Poll::Ready(Ok(()))) && read > 0 {
            self.activity.touch();
            if let Some(m) = &mut self.meter {
                m.count(read);
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
