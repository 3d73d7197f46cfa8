//! `sluice demo` and `sluice backend`: a complete fleet on loopback in one command, and the
//! small backend it (and the docker-compose example) uses, which answers every request with its
//! own name. Nothing beyond the `sluice` binary is needed.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_sync::certs::Ca;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::Config;
use crate::node::{Node, NodeError};

/// The demo cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A port it needs is taken.
    #[error("cannot listen on {addr} ({what}): {source}; is another demo running?")]
    Port {
        /// What the port is for.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its temporary files cannot be written.
    #[error("cannot prepare {path}: {why}")]
    Files {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A node did not start.
    #[error("node {node}: {source}")]
    Node {
        /// Which.
        node: String,
        /// Why.
        #[source]
        source: NodeError,
    },
}

/// Serves `listener` as a backend named `name` until `cancel` fires: every request gets
/// `200` with the body `NAME\n`.
pub async fn serve_backend(name: String, listener: TcpListener, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let body = Bytes::from(format!("{name}\n"));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    debug!(%error, "backend accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (body, cancel) = (body.clone(), cancel.clone());
        tracker.spawn(async move {
            let svc = service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

const NODES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const BACKENDS: [&str; 3] = ["app1", "app2", "app3"];
/// The fleet-wide limit the demo enforces, per 10 seconds.
const LIMIT: u32 = 20;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What the demo is listening on, by node.
struct Ports {
    web: u16,
    admin: u16,
    metrics: u16,
    sync: u16,
}

fn ports(i: usize) -> Ports {
    // i < 3.
    let i = i as u16;
    Ports {
        web: 8081 + i,
        admin: 9001 + i,
        metrics: 9101 + i,
        sync: 7001 + i,
    }
}

fn node_config(i: usize, dir: &Path) -> String {
    let name = NODES[i];
    let p = ports(i);
    let peers: Vec<String> = (0..NODES.len())
        .filter(|&j| j != i)
        .map(|j| {
            format!(
                "{{ name = \"{}\", addr = \"127.0.0.1:{}\" }}",
                NODES[j],
                ports(j).sync
            )
        })
        .collect();
    let servers: Vec<String> = BACKENDS
        .iter()
        .enumerate()
        .map(|(b, n)| format!("{{ name = \"{n}\", addr = \"127.0.0.1:{}\" }}", 9081 + b))
        .collect();
    let certs = dir.join("certs");
    format!(
        r#"[node]
name = "{name}"
state_dir = "{state}"

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
ready_wait = "5s"

[[table]]
name = "per_ip"
key = "ip"
size = 100_000
expire = "60s"
store = ["http_req_rate(10s)", "conn_cur", "gpc0", "server_id"]

[[frontend]]
name = "web"
bind = "127.0.0.1:{web}"
backend = "app"
[frontend.rules]
connection = ["track-sc0 src table per_ip"]
request = ["deny status 429 if sc0_http_req_rate > {LIMIT}"]

[[backend]]
name = "app"
balance = "roundrobin"
stick = "on src table per_ip"
servers = [ {servers} ]
check = {{ interval = "1s" }}
"#,
        state = dir.join(name).display(),
        certs = certs.display(),
        admin = p.admin,
        metrics = p.metrics,
        sync = p.sync,
        web = p.web,
        peers = peers.join(", "),
        servers = servers.join(", "),
    )
}

/// A running demo fleet.
#[derive(Debug)]
pub struct Demo {
    dir: PathBuf,
    nodes: Vec<Node>,
    token: CancellationToken,
    backends: TaskTracker,
}

impl Demo {
    /// Generates certificates and configs in a temporary directory, starts three demo
    /// backends and three nodes replicating over mutual TLS.
    pub async fn start() -> Result<Demo, DemoError> {
        let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
        let files = |path: &Path, why: String| DemoError::Files {
            path: path.into(),
            why,
        };
        std::fs::create_dir_all(&dir).map_err(|e| files(&dir, e.to_string()))?;
        let ca = Ca::try_new(&dir.join("certs"), "demo").map_err(|e| files(&dir, e.to_string()))?;
        for n in NODES {
            ca.try_node(n, n).map_err(|e| files(&dir, e.to_string()))?;
        }
        let mut demo = Demo {
            dir,
            nodes: Vec::new(),
            token: CancellationToken::new(),
            backends: TaskTracker::new(),
        };
        match demo.launch().await {
            Ok(()) => Ok(demo),
            Err(e) => {
                // Whatever started stops, and the files go.
                demo.stop().await;
                Err(e)
            }
        }
    }

    async fn launch(&mut self) -> Result<(), DemoError> {
        let files = |path: &Path, why: String| DemoError::Files {
            path: path.into(),
            why,
        };
        let (token, backends) = (self.token.clone(), self.backends.clone());
        for (b, name) in BACKENDS.iter().enumerate() {
            let a = addr(9081 + b as u16);
            let listener = TcpListener::bind(a)
                .await
                .map_err(|source| DemoError::Port {
                    what: format!("backend {name}"),
                    addr: a,
                    source,
                })?;
            backends.spawn(serve_backend(
                (*name).to_string(),
                listener,
                token.child_token(),
            ));
        }
        for (i, name) in NODES.iter().enumerate() {
            let text = node_config(i, &self.dir);
            let path = self.dir.join(format!("{name}.toml"));
            std::fs::write(&path, &text).map_err(|e| files(&path, e.to_string()))?;
            let config = Config::load_str(&text, &path.display().to_string(), std::iter::empty())
                .map_err(|e| files(&path, e.to_string()))?;
            let node = Node::start(config, token.child_token())
                .await
                .map_err(|source| DemoError::Node {
                    node: (*name).to_string(),
                    source,
                })?;
            self.nodes.push(node);
        }
        Ok(())
    }

    /// Where everything listens and what to try.
    pub fn banner(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sluice demo: three nodes replicating over mutual TLS on loopback"
        );
        let _ = writeln!(
            s,
            "  files (certificates, configs, state): {}",
            self.dir.display()
        );
        for (i, n) in NODES.iter().enumerate() {
            let p = ports(i);
            let _ = writeln!(
                s,
                "  {n}: proxy http://127.0.0.1:{}/  admin 127.0.0.1:{}  metrics http://127.0.0.1:{}/metrics  replication 127.0.0.1:{}",
                p.web, p.admin, p.metrics, p.sync
            );
        }
        let _ = writeln!(
            s,
            "  backends: app1 127.0.0.1:9081, app2 127.0.0.1:9082, app3 127.0.0.1:9083 (each answers its name)"
        );
        let _ = writeln!(
            s,
            "  rules: track every client in table per_ip; deny 429 beyond {LIMIT} requests per 10 s, fleet-wide; stick on src"
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "Try:");
        let _ = writeln!(
            s,
            "  curl -s http://127.0.0.1:8081/          # a backend's name; stick on src keeps you on it, on every node"
        );
        let _ = writeln!(
            s,
            "  for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' http://127.0.0.1:808$((i % 3 + 1))/; done; echo"
        );
        let _ = writeln!(
            s,
            "                                          # {LIMIT} answered across the three nodes, then 429s"
        );
        let _ = writeln!(
            s,
            "  curl -si http://127.0.0.1:8082/ | grep -i -e ^retry-after -e ^ratelimit"
        );
        let _ = writeln!(
            s,
            "  cargo run -q --bin sluicectl -- --node 127.0.0.1:9002 table show per_ip"
        );
        let _ = writeln!(
            s,
            "  cargo run -q --bin sluicectl -- --node 127.0.0.1:9003 table clear per_ip 127.0.0.1   # unblock yourself, fleet-wide"
        );
        let _ = writeln!(
            s,
            "  cargo run -q --bin sluicectl -- --node 127.0.0.1:9001 status"
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "Ctrl-C stops the fleet and removes its files.");
        s
    }

    /// The demo's nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Stops the nodes (draining them), the backends, and removes the temporary files.
    pub async fn stop(self) {
        self.token.cancel();
        for n in &self.nodes {
            n.stopped().await;
        }
        self.backends.close();
        self.backends.wait().await;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the demo's files");
        }
    }
}
