//! Stickiness (`stick` on a backend): keeping a client on the server it was first sent to.
//!
//! - `on src table T`: the table's `server_id` for the client address names the server. A
//!   request (or TCP connection) goes there while it is up; otherwise the balancer picks a
//!   server and its id is written, so the client sticks to the new one, on every node of the
//!   fleet (the table replicates).
//! - `cookie NAME`: a cookie naming the server. A request carrying it goes to that server
//!   while it is up; an answer to a request without a valid cookie, or whose server was down,
//!   carries `Set-Cookie: NAME=<server>; Path=/; HttpOnly`.
//!
//! Server ids are [`super::server_id`] of the server's name, the same on every node.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use http::header::{self, HeaderMap, HeaderValue};
use sluice_sync::{DataType, Key, NodeClock, Table, Tables, Tick};
use tracing::warn;

use super::{Backend, Server};
use crate::config::Stick;

/// How often, at most, a connection whose client stays on its server refreshes the sticky
/// entry (so an active client's entry does not expire under it).
const REFRESH_MS: u32 = 1000;

/// A backend's stickiness, resolved when the frontend is built.
#[derive(Debug)]
pub(crate) enum Sticky {
    /// `on src table T`.
    Src {
        /// The table holding `server_id`.
        table: Arc<Table>,
    },
    /// `cookie NAME`.
    Cookie {
        /// The cookie name.
        name: String,
        /// `Set-Cookie` values, by server index, built once.
        set: Box<[HeaderValue]>,
    },
}

/// What [`Sticky::commit`] did.
#[derive(Debug)]
pub(crate) enum Committed {
    /// The client was already on this server (its entry at most refreshed).
    Kept,
    /// A new assignment was written to the table; `to_peers` when it is the client's first
    /// and a replication session consumes the table, so the write woke its sender.
    Stored { to_peers: bool },
    /// A new assignment, carried by this `Set-Cookie` in the answer.
    Cookie(HeaderValue),
}

impl Committed {
    /// Lets a new assignment leave for the peers before the caller goes on (to wait for the
    /// server's answer, or to relay a TCP connection), so a client that moves to another node
    /// right after its answer finds its server there. The write woke replication's sender. On
    /// a node the sender runs on a thread of its own; that thread may share this worker's
    /// core, and would then wait until the worker blocks or the kernel preempts it. So the
    /// worker first yields the core (`sched_yield` returns at once when no thread waits for
    /// it), then the task, for a sender on this runtime. Only a client's first assignment on a
    /// replicated table pays for this; otherwise it is a no-op.
    pub(crate) async fn publish(&self) {
        if matches!(self, Committed::Stored { to_peers: true }) {
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}

/// What a client sticks to, looked up before choosing a server.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stuck<'b> {
    /// The server to use: the stored one, when it is up.
    pub(crate) server: Option<&'b Arc<Server>>,
    /// The id stored (or named by the cookie), up or not.
    stored: Option<u64>,
}

impl Sticky {
    /// Resolves `stick` for `backend`; `None` if the table is missing (validation makes that
    /// a bug, logged).
    pub(crate) fn new(stick: &Stick, backend: &Backend, tables: &Tables) -> Option<Sticky> {
        match stick {
            Stick::OnSrc { table } => match tables.get(table) {
                Some(table) => Some(Sticky::Src { table }),
                None => {
                    warn!(backend = %backend.config.name, %table, "stick table not found; not sticking");
                    None
                }
            },
            Stick::Cookie { name } => {
                let set = backend
                    .servers
                    .iter()
                    .map(|s| {
                        // Cookie and server names are letters, digits, `_`, `-`, `.`
                        // (validated), all valid in a header value.
                        HeaderValue::from_str(&format!("{name}={}; Path=/; HttpOnly", s.name))
                            .unwrap_or(HeaderValue::from_static(""))
                    })
                    .collect();
                Some(Sticky::Cookie {
                    name: name.clone(),
                    set,
                })
            }
        }
    }

    /// The server `client` sticks to; `headers` are the request's (`None` for TCP).
    #[inline]
    pub(crate) fn lookup<'b>(
        &self,
        backend: &'b Backend,
        client: IpAddr,
        headers: Option<&HeaderMap>,
        now: Tick,
    ) -> Stuck<'b> {
        let (stored, server) = match self {
            Sticky::Src { table } => {
                let stored = table.read_key(&Key::from_ip(client), DataType::ServerId, now);
                (stored, stored.and_then(|id| backend.by_id(id)))
            }
            Sticky::Cookie { name, .. } => {
                let server = headers
                    .and_then(|h| cookie(h, name))
                    .and_then(|v| backend.by_name(v));
                (server.map(|s| u64::from(s.id)), server)
            }
        };
        Stuck {
            server: server.filter(|s| s.is_usable()),
            stored,
        }
    }

    /// Records that `server` took `client`'s request or connection: writes its id when it is
    /// not the one stored (first contact, or the stored server was down), or refreshes the
    /// entry at most once a second per connection (`touched`: the last refresh's tick, 0 for
    /// none). In cookie mode returns the `Set-Cookie` to add instead.
    pub(crate) fn commit(
        &self,
        stuck: &Stuck<'_>,
        server: &Server,
        client: IpAddr,
        touched: &AtomicU32,
        clock: NodeClock,
    ) -> Committed {
        let same = stuck.stored == Some(u64::from(server.id));
        match self {
            Sticky::Src { table } => {
                let now = clock.tick();
                let key = Key::from_ip(client);
                if !same {
                    let mut h = table.handle(key);
                    // Concurrent first requests of one client all found it unassigned; only
                    // the first to commit makes the assignment news worth yielding for.
                    let first = table
                        .set_register(
                            &mut h,
                            DataType::ServerId,
                            u64::from(server.id),
                            clock.wall_ms(),
                            now,
                        )
                        .is_none();
                    touched.store(now.0.max(1), Relaxed);
                    return Committed::Stored {
                        to_peers: first && table.has_feed(),
                    };
                } else {
                    let last = touched.load(Relaxed);
                    if last == 0 || now.since(Tick(last)) >= REFRESH_MS {
                        table.track(key, now);
                        touched.store(now.0.max(1), Relaxed);
                    }
                }
                Committed::Kept
            }
            Sticky::Cookie { set, .. } if !same => Committed::Cookie(set[server.index].clone()),
            Sticky::Cookie { .. } => Committed::Kept,
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (`a=1; b=2`; HTTP/2 may split
/// them over several headers).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    let name = name.as_bytes();
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let value = pair.strip_prefix(name)?.strip_prefix(b"=")?;
            Some(value)
        })
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use sluice_sync::{KeyType, OriginName, TableSchema};

    use super::*;
    use crate::backend::tests::backend;
    use crate::config::Balance;

    fn origin() -> OriginName {
        OriginName {
            node: "edge-1".into(),
            incarnation: 1,
        }
    }

    /// A replicated `server_id` table whose change listener wakes a task standing in for the
    /// replication sender; the flag says whether that task has run since. With `feed`, a
    /// peer's session consumes the table's changes.
    fn replicated(feed: bool) -> (Sticky, Arc<AtomicBool>) {
        let store = TableSchema::parse_store(&["server_id"]).expect("valid store");
        let schema = TableSchema::new("t", KeyType::Ip, 100, Duration::from_secs(60), store, true)
            .expect("valid schema");
        let tables = Tables::new(origin(), 30_000);
        tables.reconcile(vec![schema]).expect("one table");
        let woken = Arc::new(tokio::sync::Notify::new());
        let w = woken.clone();
        tables.set_listener(Arc::new(move |_| w.notify_one()));
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        tokio::spawn(async move {
            loop {
                woken.notified().await;
                r.store(true, Relaxed);
            }
        });
        let table = tables.get("t").expect("table t");
        if feed {
            // A peer's change feed: without one, a write wakes nobody.
            let _feed = table.subscribe().expect("a change feed");
        }
        (Sticky::Src { table }, ran)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_assignment_is_published_before_the_answer() {
        let (sticky, sender_ran) = replicated(true);
        let b = backend(Balance::RoundRobin, 2);
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let touched = AtomicU32::new(0);
        let clock = NodeClock::new();

        let stuck = sticky.lookup(&b, client, None, clock.tick());
        assert!(stuck.server.is_none(), "a new client sticks to nothing");
        let c = sticky.commit(&stuck, &b.servers[1], client, &touched, clock);
        assert!(matches!(c, Committed::Stored { to_peers: true }), "{c:?}");
        assert!(
            !sender_ran.load(Relaxed),
            "nothing ran yet: this task holds the thread"
        );
        c.publish().await;
        assert!(
            sender_ran.load(Relaxed),
            "the task woken by the write ran before the caller goes on to answer"
        );

        // A concurrent first request of the client, which looked up before that commit, was
        // sent elsewhere: it overwrites the assignment, but the client is not new any more.
        let c = sticky.commit(&stuck, &b.servers[0], client, &touched, clock);
        assert!(matches!(c, Committed::Stored { to_peers: false }), "{c:?}");

        // The next request finds the server and writes nothing new.
        let stuck = sticky.lookup(&b, client, None, clock.tick());
        assert_eq!(stuck.server.map(|s| s.index), Some(0));
        let c = sticky.commit(&stuck, &b.servers[0], client, &touched, clock);
        assert!(matches!(c, Committed::Kept), "{c:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_assignment_no_peer_consumes_is_answered_without_a_yield() {
        let (sticky, _) = replicated(false);
        let b = backend(Balance::RoundRobin, 2);
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let clock = NodeClock::new();
        let other_ran = Arc::new(AtomicBool::new(false));
        let o = other_ran.clone();
        tokio::spawn(async move { o.store(true, Relaxed) });

        let stuck = sticky.lookup(&b, client, None, clock.tick());
        let c = sticky.commit(&stuck, &b.servers[0], client, &AtomicU32::new(0), clock);
        assert!(matches!(c, Committed::Stored { to_peers: false }), "{c:?}");
        c.publish().await;
        assert!(
            !other_ran.load(Relaxed),
            "with no peer to send it, the answer does not wait behind other tasks"
        );
    }

    #[test]
    fn a_cookie_is_set_only_for_a_new_assignment() {
        let b = backend(Balance::RoundRobin, 2);
        let sticky = Sticky::new(
            &Stick::Cookie { name: "SRV".into() },
            &b,
            &Tables::new(origin(), 30_000),
        )
        .expect("cookie stickiness");
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let touched = AtomicU32::new(0);
        let clock = NodeClock::new();
        let stuck = sticky.lookup(&b, client, None, clock.tick());
        match sticky.commit(&stuck, &b.servers[0], client, &touched, clock) {
            Committed::Cookie(v) => assert_eq!(v, "SRV=s0; Path=/; HttpOnly"),
            c => panic!("expected a cookie, got {c:?}"),
        }
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("SRV=s0"));
        let stuck = sticky.lookup(&b, client, Some(&h), clock.tick());
        let c = sticky.commit(&stuck, &b.servers[0], client, &touched, clock);
        assert!(matches!(c, Committed::Kept), "{c:?}");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; SERVERIDX=no"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("b=2;SERVERID=app2 ; c=3"),
        );
        assert_eq!(cookie(&h, "SERVERID"), Some(&b"app2"[..]));
        assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "d"), None);
    }
}
