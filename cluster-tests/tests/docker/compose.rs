//! The docker-compose fleet of `docker/compose.yml`, driven from the host: brought up under a
//! compose project of its own (`sluice-test-<pid>-<test>`) on free host ports, read with the
//! host's `sluicectl` over the published admin ports and the admin client certificate copied
//! out of the `certs` volume, and brought down with its networks and volumes when dropped,
//! whether the test passed or not.
//!
//! Client traffic reaches a node one of two ways, and the nodes see the same client (the host's
//! address on the compose `front` network, its gateway: the key of the tests' traffic in
//! `per_ip`) either way:
//!
//! - [`Cluster::web`]: the node's published HTTP port, at the gateway address rather than
//!   127.0.0.1, so Docker forwards it with a NAT rule and not through its userland proxy
//!   (which accepts every connection itself, then closes it if the node refuses).
//! - [`Cluster::direct`]: the container's own address on `front`, as a load balancer on that
//!   network would reach it. The rolling restart uses it: while Docker stops a container it
//!   removes the published port's NAT rule before its userland proxy, which then accepts
//!   connections to the port and resets them, an artefact of Docker's port publishing that no
//!   node can prevent.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cluster_tests::{bins, free_port};
use serde_json::Value;

/// The variable that turns the suite on.
pub(crate) const ENABLE: &str = "SLUICE_DOCKER_TESTS";

/// Whether the suite runs; says so when it does not.
pub(crate) fn enabled(test: &str) -> bool {
    if std::env::var(ENABLE).as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "{test}: skipped: the docker-compose suite runs only with {ENABLE}=1 \
         (see cluster-tests/README.md)"
    );
    false
}

/// One fleet at a time: two fleets would share two cores and make timing-sensitive checks
/// (the fleet-wide limit) flaky, whatever `--test-threads` says.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed while holding the lock has cleaned up its fleet: carry on.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Longest wait for a fleet to come up, converge or heal.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Fields of `per_ip` compared across nodes: counters and registers. Rates are computed on
/// each node's own clock and may differ by one in the last digit at a given moment, and
/// `conn_cur` is a gauge.
pub(crate) const COMPARED: [&str; 3] = ["http_req_cnt", "gpc0", "server_id"];

/// A table as compared: key → the [`COMPARED`] fields that are set.
pub(crate) type Table = BTreeMap<String, BTreeMap<String, u64>>;

/// One node of the fleet and its host ports.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// `edge-N`, also its compose service.
    pub(crate) name: String,
    /// The HTTP frontend (8080 in the container).
    pub(crate) http: u16,
    /// The admin API (9000).
    pub(crate) admin: u16,
    /// `/metrics`, `/readyz` (9100).
    pub(crate) metrics: u16,
}

/// A compose project running `docker/compose.yml`.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The compose project name.
    pub(crate) project: String,
    /// `docker compose` or `docker-compose`.
    compose: Vec<String>,
    /// Variables for compose: the image and the host ports.
    env: Vec<(String, String)>,
    /// edge-1..3, and edge-4 once started.
    pub(crate) nodes: Vec<Node>,
    /// Ports reserved for edge-4.
    edge4: Node,
    /// The certificates copied out of the `certs` volume.
    certs: tempfile::TempDir,
    /// The host's address on the `front` network: where client traffic goes, and the client
    /// address every node sees.
    pub(crate) host: Ipv4Addr,
    /// The `mesh` network's id (replication only).
    mesh: String,
    /// The `front` network's name (container addresses are listed by network name).
    front: String,
}

impl Cluster {
    /// Brings up `certs`, `app1..3` and `edge-1..3`, copies the certificates out, and returns
    /// once every node is ready and sees both its peers up.
    pub(crate) fn up(test: &str) -> Cluster {
        let image = std::env::var("SLUICE_IMAGE").unwrap_or_else(|_| "sluice:dev".into());
        let inspect = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
        assert!(
            inspect.status.success(),
            "no image {image}: build it with docker/build.sh"
        );
        let node = |n: usize| Node {
            name: format!("edge-{n}"),
            http: free_port(),
            admin: free_port(),
            metrics: free_port(),
        };
        let nodes: Vec<Node> = (1..=3).map(node).collect();
        let edge4 = node(4);
        let mut env = vec![("SLUICE_IMAGE".to_string(), image)];
        for (i, n) in nodes.iter().chain([&edge4]).enumerate() {
            let i = i + 1;
            env.push((format!("EDGE{i}_HTTP_PORT"), n.http.to_string()));
            env.push((format!("EDGE{i}_ADMIN_PORT"), n.admin.to_string()));
            env.push((format!("EDGE{i}_METRICS_PORT"), n.metrics.to_string()));
        }
        let mut cluster = Cluster {
            project: format!("sluice-test-{}-{test}", std::process::id()),
            compose: compose_command(),
            env,
            nodes,
            edge4,
            certs: tempfile::TempDir::new().expect("a temporary directory"),
            host: Ipv4Addr::UNSPECIFIED,
            mesh: String::new(),
            front: String::new(),
        };
        // From here on, dropping `cluster` takes down whatever came up.
        cluster.compose_ok(&["up", "-d"]);
        let certs = cluster.container("certs");
        let into = cluster.certs.path().display().to_string();
        docker_ok(&["cp", &format!("{certs}:/certs/."), &into]);
        let front = cluster.network("front");
        let gateway = docker_ok(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
            &front,
        ]);
        cluster.host = gateway
            .split_whitespace()
            .find_map(|g| g.parse().ok())
            .expect("the front network has an IPv4 gateway");
        cluster.mesh = cluster.network("mesh");
        cluster.front = docker_ok(&["network", "inspect", "--format", "{{.Name}}", &front])
            .trim()
            .to_string();
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i);
        }
        cluster.wait_mesh();
        cluster
    }

    /// Starts edge-4 (compose profile `edge-4`: its certificate, then the node, seeded with
    /// edge-1 only) and returns its index. It is not a member until `peer add`.
    pub(crate) fn start_edge4(&mut self) -> usize {
        self.compose_ok(&["--profile", "edge-4", "up", "-d", "edge-4"]);
        self.nodes.push(self.edge4.clone());
        self.nodes.len() - 1
    }

    // === docker ===

    /// Runs compose with this project; panics with its output when it fails.
    pub(crate) fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}",
            self.compose.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn compose(&self, args: &[&str]) -> Output {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yml");
        Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .arg("-f")
            .arg(file)
            .args(["-p", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run compose")
    }

    /// The container of a compose service (running or not), by the labels compose puts on
    /// it: the same for `docker compose` and `docker-compose`.
    pub(crate) fn container(&self, service: &str) -> String {
        let id = docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        let id = id.trim();
        assert!(
            !id.is_empty() && !id.contains('\n'),
            "one container for {service}, got {id:?}"
        );
        id.to_string()
    }

    fn network(&self, name: &str) -> String {
        let id = docker_ok(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.network={name}"),
        ]);
        let id = id.trim();
        assert!(!id.is_empty(), "no network {name} in {}", self.project);
        id.to_string()
    }

    /// `docker stop` (SIGTERM: the node drains) and the exit code.
    pub(crate) fn stop(&self, i: usize) -> i64 {
        let c = self.container(&self.nodes[i].name);
        docker_ok(&["stop", "--time", "20", &c]);
        let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &c]);
        code.trim().parse().expect("an exit code")
    }

    /// `docker kill` (SIGKILL: no drain, no flush).
    pub(crate) fn kill(&self, i: usize) {
        docker_ok(&["kill", &self.container(&self.nodes[i].name)]);
    }

    /// `docker start` of a stopped or killed node (same container, same state volume).
    pub(crate) fn start(&self, i: usize) {
        docker_ok(&["start", &self.container(&self.nodes[i].name)]);
    }

    /// Cuts node `i` off the replication network; it keeps serving on `front`.
    pub(crate) fn disconnect(&self, i: usize) {
        let c = self.container(&self.nodes[i].name);
        docker_ok(&["network", "disconnect", &self.mesh, &c]);
    }

    /// Puts node `i` back on the replication network under its name there.
    pub(crate) fn connect(&self, i: usize) {
        let c = self.container(&self.nodes[i].name);
        let alias = format!("{}.mesh", self.nodes[i].name);
        docker_ok(&["network", "connect", "--alias", &alias, &self.mesh, &c]);
    }

    // === the nodes ===

    /// Node `i`'s HTTP frontend, as clients reach it (see the module doc).
    pub(crate) fn web(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.host, self.nodes[i].http))
    }

    /// Node `i`'s HTTP frontend at the container's own address on `front`, as a load
    /// balancer on that network would reach it: no published port, so neither Docker's NAT
    /// rules nor its userland proxy are in the way. While Docker stops a container it removes
    /// the NAT rule of a published port before its userland proxy, which then accepts
    /// connections to the port and resets them, whatever the node does. The address may
    /// change when the container restarts.
    pub(crate) fn direct(&self, i: usize) -> SocketAddr {
        let c = self.container(&self.nodes[i].name);
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.front
        );
        let ip = docker_ok(&["inspect", "--format", &format, &c]);
        let ip: Ipv4Addr = ip
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{} has no address on front: {ip:?}", self.nodes[i].name));
        SocketAddr::from((ip, 8080))
    }

    /// The key the tests' traffic is counted under.
    pub(crate) fn client_key(&self) -> String {
        self.host.to_string()
    }

    /// Whether node `i` answers `/readyz` with 200.
    pub(crate) fn ready(&self, i: usize) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.nodes[i].metrics));
        matches!(
            request(addr, "/readyz"),
            Outcome::Answered { status: 200, .. }
        )
    }

    /// Node `i`'s `sluice_connections_active{frontend="web"}`.
    pub(crate) fn connections_active(&self, i: usize) -> Result<u64, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.nodes[i].metrics));
        let body = match request(addr, "/metrics") {
            Outcome::Answered {
                status: 200, body, ..
            } => body,
            other => return Err(format!("/metrics: {other:?}")),
        };
        body.lines()
            .find_map(|l| l.strip_prefix("sluice_connections_active{frontend=\"web\"} "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no sluice_connections_active for web".into())
    }

    /// Waits until node `i` is ready; returns how long that took.
    pub(crate) fn wait_ready(&self, i: usize) -> Duration {
        wait_until(&format!("{} ready", self.nodes[i].name), WAIT, || {
            if self.ready(i) {
                Ok(())
            } else {
                Err("/readyz is not 200".into())
            }
        })
    }

    /// Waits until every node sees every other node up.
    pub(crate) fn wait_mesh(&self) -> Duration {
        wait_until("every peer session up", WAIT, || {
            for i in 0..self.nodes.len() {
                let down = self.peers_down(i)?;
                if !down.is_empty() {
                    return Err(format!("{} sees {down:?} down", self.nodes[i].name));
                }
            }
            Ok(())
        })
    }

    /// The peers node `i` lists as down.
    pub(crate) fn peers_down(&self, i: usize) -> Result<Vec<String>, String> {
        let v = self.ctl(i, &["peer", "list"])?;
        Ok(v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["up"] != Value::Bool(true))
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect())
    }

    /// `sluicectl --json ARGS` against node `i`'s admin API over mutual TLS.
    pub(crate) fn ctl(&self, i: usize, args: &[&str]) -> Result<Value, String> {
        let n = &self.nodes[i];
        let dir = self.certs.path();
        let out = Command::new(&bins().sluicectl)
            .arg("--node")
            .arg(format!("127.0.0.1:{}", n.admin))
            .args(["--server-name", &n.name, "--ca"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("admin.pem"))
            .arg("--key")
            .arg(dir.join("admin.key"))
            .arg("--json")
            .args(args)
            .env_remove("SLUICE_ADMIN")
            .output()
            .expect("run sluicectl");
        if !out.status.success() {
            return Err(format!(
                "sluicectl {args:?} on {}: {}",
                n.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("sluicectl --json: {e}"))
    }

    /// `table set per_ip KEY FIELD=VALUE` on node `i`.
    pub(crate) fn set(&self, i: usize, key: &str, field: &str, value: u64) {
        let kv = format!("{field}={value}");
        if let Err(e) = self.ctl(i, &["table", "set", "per_ip", key, &kv]) {
            panic!("{e}");
        }
    }

    /// Node `i`'s `per_ip`, fleet-merged, as compared.
    pub(crate) fn table(&self, i: usize) -> Result<Table, String> {
        let v = self.ctl(i, &["table", "show", "per_ip"])?;
        let rows = v["entries"].as_array().ok_or("no entries in table show")?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let key = r["key"].as_str()?.to_string();
                let values = COMPARED
                    .iter()
                    .filter_map(|f| Some((f.to_string(), r["values"][f].as_u64()?)))
                    .collect();
                Some((key, values))
            })
            .collect())
    }

    /// Node `i`'s merged `http_req_cnt` for the tests' client.
    pub(crate) fn req_cnt(&self, i: usize) -> Result<u64, String> {
        let key = self.client_key();
        let v = self.ctl(i, &["table", "show", "per_ip", "--key", &key])?;
        Ok(v["entries"][0]["values"]["http_req_cnt"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Waits until every node's table equals node 0's and `check` accepts it; returns how
    /// long that took.
    pub(crate) fn wait_converged(
        &self,
        what: &str,
        nodes: &[usize],
        check: impl Fn(&Table) -> Result<(), String>,
    ) -> Duration {
        wait_until(what, WAIT, || {
            let first = self.table(nodes[0])?;
            check(&first).map_err(|e| format!("{}: {e}", self.nodes[nodes[0]].name))?;
            for &i in &nodes[1..] {
                let t = self.table(i)?;
                if t != first {
                    return Err(format!(
                        "{} and {} differ: {}",
                        self.nodes[nodes[0]].name,
                        self.nodes[i].name,
                        diff(&first, &t)
                    ));
                }
            }
            Ok(())
        })
    }

    /// The last lines each node logged, for a failing test.
    fn dump_logs(&self) {
        for n in &self.nodes {
            let out = self.compose(&["logs", "--no-color", "--tail", "40", &n.name]);
            eprintln!(
                "--- {} (last 40 lines) ---\n{}{}",
                n.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // `--profile edge-4` so that edge-4 and its certificate job go too.
        let down = self.compose(&[
            "--profile",
            "edge-4",
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "5",
        ]);
        let label = format!("label=com.docker.compose.project={}", self.project);
        if !down.status.success() {
            eprintln!(
                "compose down failed, removing {} by label: {}",
                self.project,
                String::from_utf8_lossy(&down.stderr)
            );
        }
        // Whatever is left (a failed `down`, a container compose no longer knows).
        for (list, remove) in [
            (vec!["ps", "-aq"], vec!["rm", "-f", "-v"]),
            (vec!["network", "ls", "-q"], vec!["network", "rm"]),
            (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
        ] {
            let mut args = list;
            args.extend(["--filter", &label]);
            let out = docker(&args);
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut args = remove;
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
    }
}

/// What differs between two tables, briefly.
pub(crate) fn diff(a: &Table, b: &Table) -> String {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{k} missing on the second")),
            Some(w) if w != v => out.push(format!("{k}: {v:?} vs {w:?}")),
            Some(_) => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("{k} missing on the first"));
    }
    let n = out.len();
    out.truncate(5);
    format!("{} ({n} differences)", out.join("; "))
}

/// `docker compose` when the compose plugin answers, else `docker-compose`;
/// `SLUICE_COMPOSE` overrides (e.g. `SLUICE_COMPOSE="docker compose"`).
fn compose_command() -> Vec<String> {
    if let Ok(c) = std::env::var("SLUICE_COMPOSE") {
        return c.split_whitespace().map(String::from).collect();
    }
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        return vec!["docker".into(), "compose".into()];
    }
    vec!["docker-compose".into()]
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// Runs docker; panics with its output when it fails; returns its stdout.
pub(crate) fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 20 ms until it returns `Ok` or `within` passes, then panics with `what` and
/// the last error `f` gave. Returns how long it took.
pub(crate) fn wait_until(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(()) => return start.elapsed(),
            Err(e) => e,
        };
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === HTTP client ===

/// How one request went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The connection was never established (refused, unreachable, or no answer to the SYN
    /// within a second): no node accepted it, so trying another node is legitimate.
    NotAccepted(std::io::Error),
    /// A complete response.
    Answered {
        /// Its status.
        status: u16,
        /// Its `Via` header (which node answered).
        via: Option<String>,
        /// Its body.
        body: String,
    },
    /// The connection was accepted and then something went wrong: a failed request.
    Failed(String),
}

/// `GET path` on a new connection with `Connection: close`, read to the end.
pub(crate) fn request(addr: SocketAddr, path: &str) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => return Outcome::NotAccepted(e),
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    finish(&mut s, &head)
}

/// Sends `bytes` on an open connection (the rest of a request) and reads the response to the
/// end.
pub(crate) fn finish(s: &mut TcpStream, bytes: &str) -> Outcome {
    let peer = s
        .peer_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    let exchange = |s: &mut TcpStream| -> std::io::Result<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(bytes.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    };
    match exchange(s) {
        Ok(buf) => parse(&buf).unwrap_or_else(|e| Outcome::Failed(format!("{peer}: {e}"))),
        Err(e) => Outcome::Failed(format!("{peer}: {e}")),
    }
}

/// A whole HTTP/1.1 response: status line, headers, and a body of `Content-Length` bytes.
fn parse(buf: &[u8]) -> Result<Outcome, String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete response ({} bytes)", buf.len()))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut via = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| "bad content-length")?;
            if len != body.len() {
                return Err(format!("body of {} bytes, expected {len}", body.len()));
            }
        } else if name.eq_ignore_ascii_case("via") {
            via = Some(value.to_string());
        }
    }
    Ok(Outcome::Answered {
        status,
        via,
        body: body.to_string(),
    })
}
