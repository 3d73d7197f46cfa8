//! Idle keep-alive connections to one server.
//!
//! A connection goes back to its server's pool when the response body has been read to the
//! end (the proxy's response body does that), and is taken again by the next request. The pool
//! is a short critical section on a small deque; there is no map lookup on the request path,
//! since each server owns its pool. An idle connection has no task: the reactor records that
//! the server closed it, and [`Pool::take`] skips it then. Those and the ones idle too long
//! are closed by the next calls, a few per call.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Server;
use super::h1::BackendConn;

/// Idle connections kept per server; more than this are closed when released.
pub(super) const MAX_IDLE_PER_SERVER: usize = 1024;

/// Connections one [`Pool::take`] or [`Pool::put`] closes at most. Each close is a system
/// call and a reactor deregistration, and connections opened in one burst expire in one burst:
/// closing a hundred of them in one call held that request, and every task behind it on the
/// core, for a millisecond. The rest go on the next calls; none is ever reused.
const CLOSE_AT_MOST: usize = 4;

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
        let mut closing = Vec::new();
        let mut idle = self.idle.lock();
        let found = loop {
            let Some((conn, since)) = idle.pop_back() else {
                break None;
            };
            if self.expired(since, now) {
                // Everything in front of it is older still; `close_expired` takes them a
                // few at a time.
                idle.push_back((conn, since));
                break None;
            }
            // One the server closed while it was idle is dropped.
            if !conn.is_stale() {
                break Some(conn);
            }
            closing.push(conn);
            if closing.len() == CLOSE_AT_MOST {
                break None;
            }
        };
        self.close_expired(&mut idle, now, &mut closing);
        drop(idle);
        found
    }

    /// Returns a connection after a complete exchange, and closes a few of those idle too long.
    pub fn put(&self, conn: Box<BackendConn>) {
        let now = Instant::now();
        let mut closing = Vec::new();
        let mut idle = self.idle.lock();
        self.close_expired(&mut idle, now, &mut closing);
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push_back((conn, now));
        } else {
            closing.push(conn);
        }
    }

    /// Whether a connection idle since `since` is too old to reuse at `now`.
    fn expired(&self, since: Instant, now: Instant) -> bool {
        now.duration_since(since) > self.max_idle
    }

    /// Moves the oldest connections idle longer than `max_idle` to `closing`, until it holds
    /// [`CLOSE_AT_MOST`]. The caller drops them after the lock.
    // The pool holds its connections boxed; unboxing them to close them would only move them.
    #[allow(clippy::vec_box)]
    fn close_expired(
        &self,
        idle: &mut VecDeque<(Box<BackendConn>, Instant)>,
        now: Instant,
        closing: &mut Vec<Box<BackendConn>>,
    ) {
        while closing.len() < CLOSE_AT_MOST
            && idle
                .front()
                .is_some_and(|(_, since)| self.expired(*since, now))
        {
            if let Some((conn, _)) = idle.pop_front() {
                closing.push(conn);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// `n` real loopback connections as pooled backend connections, with the server's ends.
    async fn conns(n: usize) -> (Vec<Box<BackendConn>>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..n {
            let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
            ours.push(Box::new(BackendConn::new(c.expect("connect"))));
            theirs.push(s.expect("accept").0);
        }
        (ours, theirs)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_expired_connections_is_closed_a_few_per_call() {
        let pool = Pool::new(Duration::from_secs(4));
        let (ours, _theirs) = conns(10).await;
        for c in ours {
            pool.put(c);
        }
        assert_eq!(pool.len(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        // None is reused, and one call closes only a few of them.
        assert!(pool.take().is_none());
        assert_eq!(pool.len(), 10 - CLOSE_AT_MOST);
        assert!(pool.take().is_none());
        assert_eq!(pool.len(), 10 - 2 * CLOSE_AT_MOST);
        // A fresh connection goes in (closing two more expired ones) and is the one taken.
        let (mut fresh, _theirs2) = conns(1).await;
        pool.put(fresh.pop().expect("one"));
        assert_eq!(pool.len(), 1);
        assert!(pool.take().is_some());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn connections_the_server_closed_are_dropped_a_few_per_call() {
        let pool = Pool::new(Duration::from_secs(60));
        let (ours, theirs) = conns(10).await;
        drop(theirs);
        // The reactor learns of each close from its own events: wait for them, not a time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ours.iter().all(|c| c.is_stale()) {
            assert!(Instant::now() < deadline, "the closes never showed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for c in ours {
            pool.put(c);
        }
        assert!(pool.take().is_none());
        assert_eq!(pool.len(), 10 - CLOSE_AT_MOST);
        assert!(pool.take().is_none());
        assert!(pool.take().is_none());
        assert!(pool.is_empty());
    }
}
