//! Backends: their servers, resolved addresses, health state, balancing, and the pools of
//! connections to them.
//!
//! A [`Backend`] is built from its config when a config is loaded and shared by `Arc` with every
//! connection that uses it; a reload that leaves a backend's config unchanged keeps the same
//! object (and so its health state and idle connections). Server selection is lock-free:
//! health and load live in atomics, and only the pool of idle connections takes a short lock.

mod h1;
mod health;
mod pool;
pub(crate) mod stick;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{BackendConfig, Balance, CheckConfig, Limits, ServerConfig};
use crate::metrics::{BackendMetrics, Registry, ServerMetrics};

pub(crate) use h1::content_length;
pub use h1::{BackendConn, ExchangeError, RawFields, Upstream};
pub use pool::{Pool, connect_http};

/// The owner of background work (health checks, DNS, backend connection drivers): spawned tasks
/// are tracked and stop when the token is cancelled.
#[derive(Debug, Clone)]
pub struct Background {
    /// Tracks the tasks.
    pub tracker: TaskTracker,
    /// Stops them.
    pub token: CancellationToken,
}

/// One server of a backend.
#[derive(Debug)]
pub struct Server {
    /// Name from the config.
    pub name: String,
    /// Position in the backend's server list, from 0.
    pub index: usize,
    /// The `server_id` stickiness stores: [`server_id`] of the name, so every node of the
    /// fleet agrees whatever the order of its server list.
    pub id: u32,
    config: ServerConfig,
    /// The resolved addresses, tried in order; empty until a DNS name resolves.
    addrs: Mutex<Arc<[SocketAddr]>>,
    resolved: AtomicBool,
    /// Metrics and health state (`metrics.up`).
    pub metrics: Arc<ServerMetrics>,
    /// Idle keep-alive connections.
    pub pool: Pool,
    connect_timeout: Duration,
}

impl Server {
    /// Whether new traffic may go to this server: up and with an address.
    #[inline]
    pub fn is_usable(&self) -> bool {
        self.metrics.up.load(Relaxed) && self.resolved.load(Relaxed)
    }

    /// Requests or connections in flight.
    #[inline]
    pub fn active(&self) -> u64 {
        self.metrics.active.load(Relaxed)
    }

    /// The current addresses.
    pub fn addrs(&self) -> Arc<[SocketAddr]> {
        self.addrs.lock().clone()
    }

    fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        let changed = {
            let mut cur = self.addrs.lock();
            let changed = **cur != *addrs;
            if changed {
                *cur = addrs.clone().into();
            }
            changed
        };
        let was_resolved = self.resolved.swap(true, Relaxed);
        if changed && was_resolved {
            // Idle connections go to the old addresses: drop them.
            self.pool.clear();
            info!(server = %self.name, addrs = ?addrs, "server address changed");
        }
    }

    /// Opens a TCP connection within the connect timeout, trying each resolved address in
    /// turn (a name may resolve to `::1` and `127.0.0.1` with only one of them listening).
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let addrs = self.addrs();
        let attempt = async {
            let mut last = None;
            for addr in addrs.iter() {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "server address not resolved")
            }))
        };
        let res = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(s)) => {
                // Requests and responses are written whole; Nagle only adds latency.
                let _ = s.set_nodelay(true);
                self.metrics.connections.fetch_add(1, Relaxed);
                Ok(s)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timeout",
            )),
        };
        if res.is_err() {
            self.metrics.connect_errors.fetch_add(1, Relaxed);
        }
        res
    }

    /// Marks one more request or connection in flight until the guard drops.
    #[inline]
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.metrics.active.fetch_add(1, Relaxed);
        ActiveGuard(self.clone())
    }
}

/// Counts a request or connection in flight on a server (leastconn reads it).
#[derive(Debug)]
pub struct ActiveGuard(Arc<Server>);

impl ActiveGuard {
    /// The server.
    pub fn server(&self) -> &Arc<Server> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.active.fetch_sub(1, Relaxed);
    }
}

/// A backend: servers and how to pick one.
#[derive(Debug)]
pub struct Backend {
    /// The config it was built from.
    pub config: BackendConfig,
    /// Servers in config order.
    pub servers: Vec<Arc<Server>>,
    /// Counters.
    pub metrics: Arc<BackendMetrics>,
    rr: AtomicUsize,
    /// Stops this backend's health-check and DNS tasks when it is replaced or the node stops.
    token: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Backend {
    /// Builds a backend, carrying over health state from `previous` servers with the same name
    /// and address, resolves DNS names once, and starts its health checks and re-resolution.
    pub async fn start(
        config: BackendConfig,
        previous: Option<&Backend>,
        registry: &Registry,
        bg: &Background,
    ) -> Arc<Backend> {
        let token = bg.token.child_token();
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .enumerate()
            .map(|(index, sc)| {
                let metrics = registry.server(&config.name, &sc.name);
                let prev = previous.and_then(|p| {
                    p.servers
                        .iter()
                        .find(|s| s.name == sc.name && s.config.addr == sc.addr)
                });
                if prev.is_none() {
                    // A new server starts up; health checks take it out if it is not.
                    metrics.up.store(true, Relaxed);
                }
                let addrs: Arc<[SocketAddr]> = match (sc.addr.socket_addr(), prev) {
                    (Some(literal), _) => Arc::new([literal]),
                    (None, Some(p)) => p.addrs(),
                    (None, None) => Arc::new([]),
                };
                Arc::new(Server {
                    name: sc.name.clone(),
                    index,
                    id: server_id(&sc.name),
                    config: sc.clone(),
                    resolved: AtomicBool::new(!addrs.is_empty()),
                    addrs: Mutex::new(addrs),
                    metrics,
                    pool: Pool::new(config.limits.pool_idle_timeout),
                    connect_timeout: config.limits.connect_timeout,
                })
            })
            .collect();
        let backend = Arc::new(Backend {
            metrics: registry.backend(&config.name),
            servers,
            rr: AtomicUsize::new(0),
            token,
            config,
        });
        if backend
            .servers
            .iter()
            .any(|s| s.config.addr.socket_addr().is_none())
        {
            resolve_all(&backend).await;
            let b = Arc::downgrade(&backend);
            let token = backend.token.clone();
            let refresh = backend.config.limits.dns_refresh;
            bg.tracker.spawn(async move {
                loop {
                    let Some(backend) = b.upgrade() else { return };
                    // An unresolved server is retried sooner: compose services start late.
                    let wait = if backend.servers.iter().all(|s| s.resolved.load(Relaxed)) {
                        refresh
                    } else {
                        refresh.min(Duration::from_secs(1))
                    };
                    drop(backend);
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    let Some(backend) = b.upgrade() else { return };
                    resolve_all(&backend).await;
                }
            });
        }
        if let Some(check) = &backend.config.check {
            for server in &backend.servers {
                health::spawn(
                    backend.config.name.clone(),
                    Arc::downgrade(server),
                    check.clone(),
                    backend.token.clone(),
                    bg,
                );
            }
        }
        backend
    }

    /// Picks a server for a new request or connection from `client`, skipping `exclude` (the
    /// server a failed attempt went to). `None` when no server is usable.
    ///
    /// This is the balancing step only; stickiness (a later issue) looks up the client's
    /// server first and calls this when it has none or that one is down.
    #[inline]
    pub fn select(&self, client: IpAddr, exclude: Option<&Server>) -> Option<&Arc<Server>> {
        let n = self.servers.len();
        let skip = exclude.map(|s| s.index);
        let ok = |s: &Arc<Server>| s.is_usable() && Some(s.index) != skip;
        match self.config.balance {
            Balance::RoundRobin => {
                let start = self.rr.fetch_add(1, Relaxed);
                (0..n)
                    .map(|i| &self.servers[(start + i) % n])
                    .find(|s| ok(s))
            }
            Balance::LeastConn => {
                // Rotate the starting point so ties spread instead of piling on server 0.
                let start = self.rr.fetch_add(1, Relaxed);
                (0..n)
                    .map(|i| &self.servers[(start + i) % n])
                    .filter(|s| ok(s))
                    .min_by_key(|s| s.active())
            }
            Balance::Source => {
                let h = hash_ip(client);
                let first = &self.servers[(h % n as u64) as usize];
                if ok(first) {
                    return Some(first);
                }
                // Rehash over the usable servers only, so clients of a down server spread.
                let usable = self.servers.iter().filter(|s| ok(s)).count();
                if usable == 0 {
                    return None;
                }
                let k = (h / n as u64 % usable as u64) as usize;
                self.servers.iter().filter(|s| ok(s)).nth(k)
            }
        }
    }

    /// The server at `index`.
    pub fn server(&self, index: usize) -> Option<&Arc<Server>> {
        self.servers.get(index)
    }

    /// The server whose [`Server::id`] is `id` (stickiness resolves a stored `server_id`
    /// through this; server lists are short, so a scan beats a map).
    #[inline]
    pub fn by_id(&self, id: u64) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| u64::from(s.id) == id)
    }

    /// The server named `name`.
    #[inline]
    pub fn by_name(&self, name: &[u8]) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name.as_bytes() == name)
    }

    /// The limits that apply to this backend.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The health check, if any.
    pub fn check(&self) -> Option<&CheckConfig> {
        self.config.check.as_ref()
    }
}

/// The `server_id` of a server named `name`: the 32-bit FNV-1a hash of the name, cut to 31
/// bits so it reads the same as a signed or unsigned number everywhere. Derived from the name
/// alone, it is the same on every node of the fleet whatever the order of the server lists;
/// config validation refuses two servers of one backend whose ids collide.
pub fn server_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in name.as_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h & 0x7fff_ffff
}

/// A stable 64-bit mix of an address (FNV-1a then a final avalanche).
fn hash_ip(ip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match ip {
        IpAddr::V4(v4) => eat(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => eat(&v4.octets()),
            None => eat(&v6.octets()),
        },
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

async fn resolve_all(backend: &Backend) {
    for server in &backend.servers {
        let hp = &server.config.addr;
        if hp.socket_addr().is_some() {
            continue;
        }
        let lookup = tokio::net::lookup_host((hp.host.as_str(), hp.port));
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    warn!(backend = %backend.config.name, server = %server.name, host = %hp.host, "name resolved to no address");
                } else {
                    server.set_addrs(addrs);
                }
            }
            Ok(Err(error)) => {
                warn!(backend = %backend.config.name, server = %server.name, host = %hp.host, %error, "cannot resolve server name")
            }
            Err(_) => {
                warn!(backend = %backend.config.name, server = %server.name, host = %hp.host, "name resolution timed out")
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::HostPort;

    /// A backend of `n` servers named `s0`, `s1`, … (all up), addresses that are never dialled.
    pub(crate) fn backend(balance: Balance, n: usize) -> Backend {
        let registry = Registry::default();
        let servers = (0..n)
            .map(|i| {
                let metrics = registry.server("b", &format!("s{i}"));
                metrics.up.store(true, Relaxed);
                Arc::new(Server {
                    name: format!("s{i}"),
                    index: i,
                    id: server_id(&format!("s{i}")),
                    config: ServerConfig {
                        name: format!("s{i}"),
                        addr: HostPort {
                            host: "127.0.0.1".into(),
                            port: 1000 + i as u16,
                        },
                    },
                    addrs: Mutex::new(Arc::new([SocketAddr::from((
                        [127, 0, 0, 1],
                        1000 + i as u16,
                    ))])),
                    resolved: AtomicBool::new(true),
                    metrics,
                    pool: Pool::new(Duration::from_secs(4)),
                    connect_timeout: Duration::from_secs(1),
                })
            })
            .collect();
        Backend {
            config: BackendConfig {
                name: "b".into(),
                balance,
                stick: None,
                servers: vec![],
                check: None,
                limits: Limits::default(),
            },
            servers,
            metrics: Arc::default(),
            rr: AtomicUsize::new(0),
            token: CancellationToken::new(),
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn roundrobin_skips_down_and_excluded() {
        let b = backend(Balance::RoundRobin, 3);
        let picks: Vec<usize> = (0..6)
            .map(|_| b.select(CLIENT, None).unwrap().index)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        b.servers[1].metrics.up.store(false, Relaxed);
        assert!((0..6).all(|_| b.select(CLIENT, None).unwrap().index != 1));
        let s0 = b.servers[0].clone();
        assert!((0..6).all(|_| b.select(CLIENT, Some(&s0)).unwrap().index == 2));
        b.servers[2].metrics.up.store(false, Relaxed);
        assert!(b.select(CLIENT, Some(&s0)).is_none());
    }

    #[test]
    fn leastconn_prefers_idle() {
        let b = backend(Balance::LeastConn, 3);
        let _g0 = b.servers[0].begin();
        let _g2 = b.servers[2].begin();
        assert!((0..5).all(|_| b.select(CLIENT, None).unwrap().index == 1));
    }

    #[test]
    fn source_is_stable_and_spreads() {
        let b = backend(Balance::Source, 3);
        let mut seen = [0; 3];
        for i in 0..300u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let first = b.select(ip, None).unwrap().index;
            assert_eq!(b.select(ip, None).unwrap().index, first);
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        // A down server's clients move; the others stay.
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));
        let home = b.select(ip, None).unwrap().index;
        b.servers[home].metrics.up.store(false, Relaxed);
        assert_ne!(b.select(ip, None).unwrap().index, home);
    }
}
