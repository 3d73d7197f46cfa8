//! Helpers of the admin API tests: replicating nodes started in-process (tables, replication
//! over real mutual TLS on loopback, and the admin API on `127.0.0.1:0`), fleet certificates
//! made by the real `sluicectl certs init`, the real `sluicectl` binary to drive them, and
//! waiting on conditions with deadlines (never fixed sleeps).

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_node::admin::{self, AdminError, AdminState, AdminTls};
use sluice_proto::admin::v1::admin_client::AdminClient;
use sluice_sync::replication::{
    Identity, ReplicationConfig, ReplicationError, Replicator, TlsPaths, next_incarnation,
};
use sluice_sync::{
    DataType, Event, Key, KeyType, NodeClock, OriginName, Table, TableSchema, Tables,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Longest wait for anything that should happen at once on loopback.
pub const WAIT: Duration = Duration::from_secs(20);

// === the sluicectl binary ===

/// The `sluicectl` binary. A test can only ask Cargo for its own package's binaries
/// (`CARGO_BIN_EXE_<name>`; artifact dependencies are unstable), and `sluice-node` must not
/// depend on `sluice-cli` (SPEC §1). So the first test that needs it runs
/// `cargo build -p sluice-cli --bin sluicectl` with the cargo that runs the tests, into this
/// test binary's own target directory and profile: a no-op when it is up to date, and always
/// the sluicectl of this checkout, never a stale one. `SLUICECTL=/path/to/sluicectl` skips the
/// build (for CI that builds it once up front).
pub fn sluicectl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SLUICECTL") {
            return path.into();
        }
        // This test runs as TARGET/PROFILE/deps/admin_…-HASH.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in TARGET/PROFILE/deps");
        let target_dir = profile_dir.parent().expect("TARGET/PROFILE");
        let profile = profile_dir
            .file_name()
            .and_then(|p| p.to_str())
            .expect("profile directory name");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "sluice-cli", "--bin", "sluicectl"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let status = build.status().expect("run cargo build for sluicectl");
        assert!(status.success(), "cargo build -p sluice-cli failed");
        profile_dir.join("sluicectl")
    })
}

/// Runs `sluicectl ARGS` (off the async runtime's threads) with `SLUICE_ADMIN` unset.
pub async fn sluicectl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(sluicectl_bin())
            .args(&args)
            .env_remove("SLUICE_ADMIN")
            .output()
            .expect("run sluicectl")
    })
    .await
    .expect("sluicectl runner")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a zero exit and returns stdout.
pub fn success(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sluicectl failed ({}): {}",
        out.status,
        stderr(out)
    );
    stdout(out)
}

/// Asserts a zero exit and parses stdout as one JSON document.
pub fn json(out: &Output) -> serde_json::Value {
    let text = success(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

// === certificates ===

/// A fleet's certificates made by `sluicectl certs init --admin-client` in `dir`.
pub async fn certs_init(dir: &Path, nodes: &[&str]) {
    success(
        &sluicectl([
            "certs".into(),
            "init".into(),
            "--out".into(),
            dir.as_os_str().to_owned(),
            "--nodes".into(),
            nodes.join(",").into(),
            "--admin-client".into(),
        ])
        .await,
    );
}

/// The fleet identity files of `node` in a `certs init` directory.
pub fn tls_paths(dir: &Path, node: &str) -> TlsPaths {
    TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{node}.pem")),
        key: dir.join(format!("{node}.key")),
    }
}

/// The admin API's TLS for `node`: its fleet identity, demanding a fleet client certificate.
pub fn admin_tls(dir: &Path, node: &str) -> AdminTls {
    let identity = Identity::load(node, tls_paths(dir, node)).expect("fleet identity");
    AdminTls::identity(Arc::new(identity))
}

// === tables ===

/// `per_ip` (replicated) and `per_path` (local to each node).
pub fn schemas() -> Vec<TableSchema> {
    let per_ip =
        TableSchema::parse_store(&["http_req_rate(1h)", "conn_cur", "gpc0", "gpt0", "server_id"])
            .expect("store");
    let per_path = TableSchema::parse_store(&["http_req_cnt", "gpc1"]).expect("store");
    vec![
        TableSchema::new(
            "per_ip",
            KeyType::Ip,
            10_000,
            Duration::from_secs(600),
            per_ip,
            true,
        )
        .expect("schema"),
        TableSchema::new(
            "per_path",
            KeyType::String(64),
            1_000,
            Duration::from_secs(600),
            per_path,
            false,
        )
        .expect("schema"),
    ]
}

pub fn ip(s: &str) -> Key {
    KeyType::Ip.parse_key(s).expect("ip key")
}

// === nodes ===

/// A free port on loopback (bound, then released for the node to bind).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// One in-process node: its tables, its replication and its admin API.
pub struct AdminNode {
    pub name: String,
    pub tables: Arc<Tables>,
    pub repl: Replicator,
    pub clock: NodeClock,
    /// Replication listen address.
    pub listen: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    cancel: CancellationToken,
    admin_task: JoinHandle<Result<(), AdminError>>,
}

pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub listen: SocketAddr,
    pub peers: Vec<(String, String)>,
    pub certs: &'a Path,
    pub state_dir: PathBuf,
}

impl AdminNode {
    pub async fn start(spec: NodeSpec<'_>) -> AdminNode {
        init_tracing();
        let clock = NodeClock::new();
        let incarnation = next_incarnation(&spec.state_dir, clock.wall_ms()).expect("incarnation");
        let tables = Arc::new(Tables::new(
            OriginName {
                node: spec.name.into(),
                incarnation,
            },
            2_000,
        ));
        tables.reconcile(schemas()).expect("tables");
        let cancel = CancellationToken::new();
        let cfg = ReplicationConfig {
            listen: spec.listen,
            peers: spec.peers,
            flush_interval: Duration::from_millis(1),
            dead_after: Duration::from_secs(2),
            ready_wait: Duration::from_secs(30),
            state_dir: spec.state_dir,
            tls: tls_paths(spec.certs, spec.name),
            own_thread: false,
        };
        // A node restarted on its old address (what some tests are about) can find it taken
        // for a moment: `free_addr` ports are in the ephemeral range, and another test's
        // outgoing connection may hold one as its local port once released. Retried within
        // WAIT, as an operator would retry a restart.
        let deadline = tokio::time::Instant::now() + WAIT;
        let repl = loop {
            match Replicator::start(cfg.clone(), tables.clone(), clock, cancel.clone()).await {
                Err(ReplicationError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => break r.expect("replication starts"),
            }
        };
        let state = AdminState::new(tables.clone(), clock).with_replicator(repl.clone());
        let listener = admin::bind("127.0.0.1:0".parse().expect("addr"), None, state)
            .await
            .expect("admin API binds");
        let admin = listener.local_addr();
        let admin_task = tokio::spawn(listener.serve(cancel.child_token()));
        AdminNode {
            name: spec.name.into(),
            tables,
            listen: repl.local_addr(),
            repl,
            clock,
            admin,
            cancel,
            admin_task,
        }
    }

    /// `--node ADDR` for sluicectl.
    pub fn node_arg(&self) -> String {
        self.admin.to_string()
    }

    pub fn table(&self, name: &str) -> Arc<Table> {
        self.tables.get(name).expect("table")
    }

    /// Records `n` local events on `key` of `per_ip`.
    pub fn record(&self, key: &str, ev: Event, n: usize) {
        let t = self.table("per_ip");
        let mut h = t.handle(ip(key));
        for _ in 0..n {
            t.record(&mut h, ev, self.clock.tick());
        }
    }

    /// The fleet-merged value of `ty` for `key` in `per_ip`.
    pub fn read(&self, key: &str, ty: DataType) -> Option<u64> {
        self.table("per_ip")
            .read_key(&ip(key), ty, self.clock.tick())
    }

    pub fn peer_up(&self, name: &str) -> bool {
        self.repl.peers().iter().any(|p| p.name == name && p.up)
    }

    pub fn is_peer(&self, name: &str) -> bool {
        self.repl.peers().iter().any(|p| p.name == name)
    }

    /// A gRPC client of this node's admin API.
    pub async fn client(&self) -> AdminClient<Channel> {
        AdminClient::connect(format!("http://{}", self.admin))
            .await
            .expect("connect to the admin API")
    }

    /// Stops the node and waits for its tasks to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, async {
            self.repl.closed().await;
            self.admin_task
                .await
                .expect("admin task")
                .expect("admin API stops cleanly");
        })
        .await
        .expect("node stops in time");
    }
}

/// Nodes named `names` (sorted) in one full mesh, with certificates for them and for `extra`
/// nodes that may join later, in `dir`.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<AdminNode>,
}

impl Fleet {
    pub async fn start(names: &[&str], extra: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let all: Vec<&str> = names.iter().chain(extra).copied().collect();
        certs_init(&dir.path().join("certs"), &all).await;
        let listens: Vec<SocketAddr> = names.iter().map(|_| free_addr()).collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let peers = (0..names.len())
                .filter(|&j| j != i)
                .map(|j| (names[j].to_owned(), listens[j].to_string()))
                .collect();
            nodes.push(
                AdminNode::start(NodeSpec {
                    name,
                    listen: listens[i],
                    peers,
                    certs: &dir.path().join("certs"),
                    state_dir: dir.path().join(name),
                })
                .await,
            );
        }
        Fleet { dir, nodes }
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Waits until every node has a session with every other.
    pub async fn connected(&self) -> bool {
        let nodes = &self.nodes;
        eventually(WAIT, || async {
            nodes
                .iter()
                .all(|n| nodes.iter().all(|m| m.name == n.name || n.peer_up(&m.name)))
        })
        .await
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// Logs to the test's output (shown for failing tests); `RUST_LOG` filters.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Checks `f` every few milliseconds until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
