//! Idle keep-alive connections to one server.
//!
//! A connection goes back to its server's pool when the response body has been read to the
//! end (the proxy's response body does that), and is taken again by the next request. The pool
//! is a short critical section on a small deque; there is no map lookup on the request path,
//! since each server owns its pool. An idle connection has no task: the reactor records that
//! the server closed it, and [`Pool::take`] skips it then.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Server;
use super::h1::BackendConn;

/// Idle connections kept per server; more than this are closed when released.
pub(super) const MAX_IDLE_PER_SERVER: usize = 1024;

/// Idle connections of one server, each with the time it became idle.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<(Box<BackendConn>, Instant)>>,
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
    pub fn take(&self) -> Option<Box<BackendConn>> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some((conn, since)) = idle.pop_back() {
            if now.duration_since(since) > self.max_idle {
                // Everything in front of it is older still.
                idle.clear();
                return None;
            }
            // One the server closed while it was idle is dropped.
            if !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange, and closes those idle too long.
    pub fn put(&self, conn: Box<BackendConn>) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > self.max_idle)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push_back((conn, now));
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

/// Opens a new HTTP/1.1 connection to `server`.
pub async fn connect_http(server: &Server) -> io::Result<Box<BackendConn>> {
    Ok(Box::new(BackendConn::new(server.connect().await?)))
}
