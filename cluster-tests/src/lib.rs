//! Multi-node tests and system benchmarks of sluice on real processes: the harness shared by
//! the loopback suite (`tests/loopback.rs`) and the docker-compose suite.
//!
//! Principles (see `cluster-tests/README.md`): every test runs the real `sluice` and
//! `sluicectl` binaries of this checkout, with certificates made by `sluicectl certs init`;
//! waits on conditions with deadlines, never on fixed sleeps; and kills every process it
//! started even when it fails (the [`Fleet`] kills on drop).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Longest wait for anything that should happen at once on loopback.
pub const WAIT: Duration = Duration::from_secs(30);

/// The binaries of this checkout.
#[derive(Debug)]
pub struct Bins {
    /// `sluice`.
    pub sluice: PathBuf,
    /// `sluicectl`.
    pub sluicectl: PathBuf,
}

/// Builds (or finds up to date) `sluice` and `sluicectl` with the cargo running the tests,
/// into this test binary's own target directory, always as release builds: tests can only ask
/// Cargo for their own package's binaries (these live in `sluice-node` and `sluice-cli`), and
/// what these suites check depends on speed as real deployments run it (a sticky assignment
/// reaching the other nodes within 5 ms, a burst staying near the limit), which a debug build
/// running three nodes on two cores does not show. `SLUICE_BIN_DIR` skips the build and takes
/// them from a directory.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
            let dir = PathBuf::from(dir);
            return Bins {
                sluice: dir.join("sluice"),
                sluicectl: dir.join("sluicectl"),
            };
        }
        // This test runs as TARGET/PROFILE/deps/NAME-HASH.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in TARGET/PROFILE/deps");
        let target_dir = profile_dir.parent().expect("TARGET/PROFILE");
        let release = build_release(target_dir).expect("building sluice and sluicectl");
        Bins {
            sluice: release.join("sluice"),
            sluicectl: release.join("sluicectl"),
        }
    })
}

/// Builds `sluice` and `sluicectl` in release mode into `target_dir` with the cargo that runs
/// this process, and returns the directory they are in (`TARGET/release`).
///
/// The build runs at the workspace root without `-p`, so cargo unifies features over the whole
/// workspace, as `cargo run --release --bin bench` at the root does: the two binaries reuse every
/// library that command compiled. Selecting their packages with `-p` unified features over those
/// two alone and compiled most dependencies a second time (6 of the 16 minutes a fresh clone's
/// harness run took).
pub fn build_release(target_dir: &Path) -> std::io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| std::io::Error::other("cluster-tests has no workspace above it"))?;
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "sluice",
            "--bin",
            "sluicectl",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("cargo build: {status}")));
    }
    Ok(target_dir.join("release"))
}

/// A config list of named places on loopback (`sync.peers`, a backend's `servers`):
/// `{ name = "N", addr = "127.0.0.1:P" }, …`.
pub fn named_addrs(peers: &[(String, u16)]) -> String {
    peers
        .iter()
        .map(|(n, p)| format!("{{ name = \"{n}\", addr = \"127.0.0.1:{p}\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A free port on loopback (bound, then released for a process to bind), never one this test
/// process handed out before: tests run concurrently and some bind their ports minutes later
/// (a fourth node, a restarted container), so the kernel may offer a released port again.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("its address").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Runs `sluicectl ARGS` against nothing in particular (`SLUICE_ADMIN` unset).
pub fn sluicectl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(&bins().sluicectl)
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .output()
        .expect("run sluicectl")
}

/// The ports of one node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The HTTP frontend `web`.
    pub web: u16,
    /// The admin API.
    pub admin: u16,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: u16,
    /// Replication.
    pub sync: u16,
}

impl Ports {
    fn fresh() -> Ports {
        Ports {
            web: free_port(),
            admin: free_port(),
            metrics: free_port(),
            sync: free_port(),
        }
    }
}

/// A `sluice` process.
#[derive(Debug)]
pub struct NodeProc {
    /// Node name.
    pub name: String,
    /// Its ports.
    pub ports: Ports,
    /// Its config file.
    pub config: PathBuf,
    /// Where its stderr goes (appended across restarts).
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    /// Starts (or restarts) the process.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log");
        let child = Command::new(&bins().sluice)
            .arg("--config")
            .arg(&self.config)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
    }

    /// `kill -9`: no drain, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGTERM` and wait for the exit status (the node drains first).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok()
    }

    /// `SIGHUP`: reload the config and the fleet certificates.
    pub fn hup(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The HTTP frontend's address.
    pub fn web(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.web))
    }

    /// The admin API's address, as `sluicectl --node` takes it.
    pub fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.ports.admin)
    }

    /// The metrics endpoint's address.
    pub fn metrics(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.metrics))
    }

    /// Runs `sluicectl --node THIS --json ARGS` and parses its output.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let admin = self.admin();
        let mut all = vec!["--node", admin.as_str(), "--json"];
        all.extend_from_slice(args);
        let out = sluicectl(&all);
        assert!(
            out.status.success(),
            "sluicectl {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sluicectl --json prints JSON")
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A demo backend process (`sluice backend`).
#[derive(Debug)]
pub struct BackendProc {
    /// Its name, which it answers with.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl BackendProc {
    /// Starts `sluice backend --name NAME` on a free port.
    pub fn start(name: &str) -> BackendProc {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut b = BackendProc {
            name: name.into(),
            addr,
            child: None,
        };
        b.restart();
        b
    }

    /// Starts it again on the same address.
    pub fn restart(&mut self) {
        let child = Command::new(&bins().sluice)
            .args([
                "backend",
                "--name",
                &self.name,
                "--listen",
                &self.addr.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a backend");
        self.child = Some(child);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BackendProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test fleet runs.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Node names, sorted.
    pub nodes: Vec<String>,
    /// `[[table]]` sections.
    pub tables: String,
    /// `frontend.rules.connection`.
    pub connection_rules: Vec<String>,
    /// `frontend.rules.request`.
    pub request_rules: Vec<String>,
    /// `backend.stick`, if any.
    pub stick: Option<String>,
    /// Backend names.
    pub backends: Vec<String>,
    /// Extra keys for `[sync]`.
    pub sync_extra: String,
}

impl FleetSpec {
    /// Three nodes `edge-1..3`, three backends `app1..3`, a replicated `per_ip` table.
    pub fn three() -> FleetSpec {
        FleetSpec {
            nodes: vec!["edge-1".into(), "edge-2".into(), "edge-3".into()],
            tables: "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 200000\nexpire = \"120s\"\n\
                     store = [\"http_req_rate(10s)\", \"http_req_cnt\", \"gpc0\", \"server_id\", \"conn_cur\"]\n"
                .into(),
            connection_rules: vec!["track-sc0 src table per_ip".into()],
            request_rules: vec![],
            stick: None,
            backends: vec!["app1".into(), "app2".into(), "app3".into()],
            sync_extra: String::new(),
        }
    }
}

/// Real `sluice` processes on loopback, their backends, and their certificates.
#[derive(Debug)]
pub struct Fleet {
    /// The temporary directory holding certificates, configs, state and logs.
    pub dir: tempfile::TempDir,
    /// The nodes, in name order.
    pub nodes: Vec<NodeProc>,
    /// The backends.
    pub backends: Vec<BackendProc>,
    spec: FleetSpec,
    /// One fleet at a time per test binary: three nodes already share two cores, and what
    /// the tests check (a sticky assignment reaching the others within 5 ms, a burst staying
    /// near the limit) depends on them not fighting a second fleet for them.
    _serial: tokio::sync::OwnedMutexGuard<()>,
}

fn serial() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

impl Fleet {
    /// Makes certificates with `sluicectl certs init`, writes configs and starts every backend
    /// and node; returns once every node is ready.
    pub async fn start(spec: FleetSpec) -> Fleet {
        let serial = serial().lock_owned().await;
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let certs = dir.path().join("certs");
        let out = sluicectl([
            "certs".as_ref(),
            "init".as_ref(),
            "--out".as_ref(),
            certs.as_os_str(),
            "--nodes".as_ref(),
            spec.nodes.join(",").as_ref(),
            "--admin-client".as_ref(),
        ]);
        assert!(
            out.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let backends: Vec<BackendProc> = spec
            .backends
            .iter()
            .map(|b| BackendProc::start(b))
            .collect();
        let ports: Vec<Ports> = spec.nodes.iter().map(|_| Ports::fresh()).collect();
        let mut nodes = Vec::new();
        for (i, name) in spec.nodes.iter().enumerate() {
            let peers: Vec<(String, u16)> = spec
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, n)| (n.clone(), ports[j].sync))
                .collect();
            nodes.push(Self::node(
                dir.path(),
                &spec,
                name,
                ports[i],
                &peers,
                &backends,
            ));
        }
        let mut fleet = Fleet {
            dir,
            nodes,
            backends,
            spec,
            _serial: serial,
        };
        for n in &mut fleet.nodes {
            n.start();
        }
        for i in 0..fleet.nodes.len() {
            fleet.wait_ready(i).await;
        }
        fleet
    }

    /// Writes the config of a node (not started).
    fn node(
        dir: &Path,
        spec: &FleetSpec,
        name: &str,
        ports: Ports,
        peers: &[(String, u16)],
        backends: &[BackendProc],
    ) -> NodeProc {
        let certs = dir.join("certs");
        let q = |v: &[String]| {
            v.iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let peers = named_addrs(peers);
        let servers = backends
            .iter()
            .map(|b| format!("{{ name = \"{}\", addr = \"{}\" }}", b.name, b.addr))
            .collect::<Vec<_>>()
            .join(", ");
        let stick = spec
            .stick
            .as_ref()
            .map(|s| format!("stick = \"{s}\"\n"))
            .unwrap_or_default();
        let config = format!(
            r#"[node]
name = "{name}"
state_dir = "{state}"
drain_timeout = "5s"

[admin]
listen = "127.0.0.1:{admin}"

[metrics]
listen = "127.0.0.1:{metrics}"

[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/{name}.pem"
key = "{certs}/{name}.key"

[sync]
listen = "127.0.0.1:{sync}"
peers = [ {peers} ]
ready_wait = "10s"
{sync_extra}

{tables}
[[frontend]]
name = "web"
bind = "127.0.0.1:{web}"
backend = "app"
[frontend.rules]
connection = [ {conn} ]
request = [ {req} ]

[[backend]]
name = "app"
{stick}servers = [ {servers} ]
check = {{ interval = "500ms", fall = 2, rise = 1 }}
"#,
            state = dir.join("state").join(name).display(),
            admin = ports.admin,
            metrics = ports.metrics,
            certs = certs.display(),
            sync = ports.sync,
            sync_extra = spec.sync_extra,
            tables = spec.tables,
            web = ports.web,
            conn = q(&spec.connection_rules),
            req = q(&spec.request_rules),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write the config");
        NodeProc {
            name: name.into(),
            ports,
            config: path,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Adds a node (certificate issued with `sluicectl certs add`) seeded with `seeds`, not
    /// started.
    pub fn add_node(&mut self, name: &str, seeds: &[usize]) -> usize {
        let certs = self.dir.path().join("certs");
        let out = sluicectl([
            "certs".as_ref(),
            "add".as_ref(),
            "--ca-dir".as_ref(),
            certs.as_os_str(),
            "--node".as_ref(),
            name.as_ref(),
        ]);
        assert!(
            out.status.success(),
            "certs add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peers: Vec<(String, u16)> = seeds
            .iter()
            .map(|&i| (self.nodes[i].name.clone(), self.nodes[i].ports.sync))
            .collect();
        let node = Self::node(
            self.dir.path(),
            &self.spec,
            name,
            Ports::fresh(),
            &peers,
            &self.backends,
        );
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Waits until node `i` answers `/healthz` (it is up; it may not be ready).
    pub async fn wait_up(&mut self, i: usize) {
        let addr = self.nodes[i].metrics();
        let ok = eventually(WAIT, || async move {
            matches!(get(addr, "/healthz", None).await, Ok((200, _, _)))
        })
        .await;
        assert!(
            ok,
            "{} did not come up; log:\n{}",
            self.nodes[i].name,
            self.nodes[i].log_tail()
        );
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, i: usize) {
        let addr = self.nodes[i].metrics();
        let ok = eventually(WAIT, || async move {
            matches!(get(addr, "/readyz", None).await, Ok((200, _, _)))
        })
        .await;
        if !ok {
            let running = self.nodes[i].is_running();
            panic!(
                "{} not ready (running: {running}); log:\n{}",
                self.nodes[i].name,
                self.nodes[i].log_tail()
            );
        }
    }
}

/// A response: status, headers, body.
pub type Resp = (u16, http::HeaderMap, Bytes);

/// `GET path` over a fresh connection from `source` (an address on loopback such as
/// 127.0.0.5, so each simulated client has its own source address), `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, source: Option<IpAddr>) -> std::io::Result<Resp> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let stream = tokio::time::timeout(WAIT, sock.connect(addr))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
        .map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

/// Polls `f` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `n`th simulated client address on loopback (127.0.1.n...).
pub fn client(n: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0100 + n))
}
