//! Idle keep-alive connections to one server.
//!
//! hyper's low-level HTTP/1 client is used directly: a connection is a `SendRequest` plus a
//! driver task. A connection goes back to its server's pool when the response body has been
//! read to the end (the proxy's response body wrapper does that), and is taken again by the
//! next request. The pool is a short critical section on a small deque; there is no map lookup
//! on the request path, since each server owns its pool.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Background, Server};
use crate::io::ReqBody;

/// Idle connections kept per server; more than this are closed when released.
pub(super) const MAX_IDLE_PER_SERVER: usize = 1024;

/// Idle connections of one server, each with the time it became idle.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<(SendRequest<ReqBody>, Instant)>>,
    /// Connections idle longer are closed instead of reused: a server closing an idle
    /// connection just as a request goes out on it would turn that request into a 502.
    max_idle: Duration,
}

impl Pool {
    /// An empty pool whose connections may sit idle for at most `max_idle`.
    pub fn new(max_idle: Duration) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
        }
    }

    /// An idle connection ready for a request, most recently used first.
    pub fn take(&self) -> Option<SendRequest<ReqBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        for _ in 0..idle.len() {
            let (sender, since) = idle.pop_back()?;
            if now.duration_since(since) > self.max_idle {
                // Everything in front of it is older still.
                idle.clear();
                return None;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Not ready yet (its driver has not seen the end of the last exchange): keep it
            // for later, behind the others. Closed ones are dropped.
            if !sender.is_closed() {
                idle.push_front((sender, since));
            }
        }
        None
    }

    /// Returns a connection after a complete exchange, and closes those idle too long.
    pub fn put(&self, sender: SendRequest<ReqBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > self.max_idle)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push_back((sender, now));
        }
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let drained: Vec<_> = self.idle.lock().drain(..).collect();
        drop(drained);
    }

    /// Idle connections now.
    pub fn len(&self) -> usize {
        self.idle.lock().len()
    }

    /// Whether there is no idle connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens a new HTTP/1.1 connection to `server`; its driver runs as a background task.
pub async fn connect_http(server: &Server, bg: &Background) -> io::Result<SendRequest<ReqBody>> {
    let stream = server.connect().await?;
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let token = bg.token.clone();
    bg.tracker.spawn(async move {
        // The driver ends when the server closes, or when the pool and any in-flight
        // exchange have dropped the sender.
        tokio::select! {
            // With upgrades, a 101 hands the connection to the proxy's tunnel.
            _ = conn.with_upgrades() => {}
            _ = token.cancelled() => {}
        }
    });
    Ok(sender)
}
