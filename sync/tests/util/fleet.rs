//! Real nodes in one test process: certificates generated with rcgen, replication over real
//! mutual TLS on loopback, links between peers through a TCP relay the test can cut and heal.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_sync::replication::{ReplicationConfig, Replicator, TlsPaths, next_incarnation};
use sluice_sync::{NodeClock, OriginName, TableSchema, Tables};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use sluice_sync::certs::{Ca, free_addr};

/// The replicated table of the replication tests.
pub fn schemas() -> Vec<TableSchema> {
    let store = TableSchema::parse_store(&[
        "http_req_cnt",
        "gpc0",
        "server_id",
        "http_req_rate(1h)",
        "conn_cur",
    ])
    .unwrap();
    vec![
        TableSchema::new(
            "per_ip",
            sluice_sync::KeyType::Ip,
            200_000,
            Duration::from_secs(600),
            store,
            true,
        )
        .unwrap(),
    ]
}

/// One node: its tables and its replication.
pub struct TestNode {
    pub name: String,
    pub tables: Arc<Tables>,
    pub repl: Replicator,
    pub clock: NodeClock,
    pub cancel: CancellationToken,
    pub listen: SocketAddr,
}

pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub listen: SocketAddr,
    pub peers: Vec<(String, String)>,
    pub tls: TlsPaths,
    pub state_dir: PathBuf,
    pub schemas: Vec<TableSchema>,
}

impl TestNode {
    pub async fn start(spec: NodeSpec<'_>) -> TestNode {
        Self::try_start(spec).await.expect("node starts")
    }

    /// Starts a node whose heartbeats are `dead_after / 4` apart.
    pub async fn start_with_dead_after(spec: NodeSpec<'_>, dead_after: Duration) -> TestNode {
        Self::try_start_with(spec, dead_after)
            .await
            .expect("node starts")
    }

    pub async fn try_start(
        spec: NodeSpec<'_>,
    ) -> Result<TestNode, sluice_sync::replication::ReplicationError> {
        Self::try_start_with(spec, Duration::from_secs(2)).await
    }

    async fn try_start_with(
        spec: NodeSpec<'_>,
        dead_after: Duration,
    ) -> Result<TestNode, sluice_sync::replication::ReplicationError> {
        init_tracing();
        let clock = NodeClock::new();
        let incarnation = next_incarnation(&spec.state_dir, clock.wall_ms())?;
        let tables = Arc::new(Tables::new(
            OriginName {
                node: spec.name.into(),
                incarnation,
            },
            2_000,
        ));
        tables.reconcile(spec.schemas).unwrap();
        let cancel = CancellationToken::new();
        let cfg = ReplicationConfig {
            listen: spec.listen,
            peers: spec.peers,
            flush_interval: Duration::from_millis(1),
            dead_after,
            ready_wait: Duration::from_secs(30),
            state_dir: spec.state_dir,
            tls: spec.tls,
            own_thread: false,
        };
        let repl = Replicator::start(cfg, tables.clone(), clock, cancel.clone()).await?;
        Ok(TestNode {
            name: spec.name.into(),
            tables,
            listen: repl.local_addr(),
            repl,
            clock,
            cancel,
        })
    }

    /// Stops the node and waits for its tasks to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.repl.closed())
            .await
            .expect("node stops in time");
    }

    pub fn peer_up(&self, name: &str) -> bool {
        self.repl.peers().iter().any(|p| p.name == name && p.up)
    }
}

/// Logs to the test's output (shown for failing tests); `RUST_LOG` filters.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `f` every few milliseconds until it holds or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP relay standing for the network between two peers: `cut` drops every connection
/// through it and refuses new ones until `heal`.
pub struct Link {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Link {
    pub async fn new(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Link { addr, up, cut }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|v| *v += 1);
    }

    pub fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
