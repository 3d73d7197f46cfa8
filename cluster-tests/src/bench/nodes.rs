//! Replicating nodes for the `table` and `fleet` phases: sluice processes with their admin API,
//! HAProxy processes with their runtime API (`stats socket`), and the feeder — an in-process
//! sluice replication peer that writes table entries a million times faster than any admin
//! API, so filling a real node's table takes a second.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_proto::admin::v1::admin_client::AdminClient;
use sluice_proto::admin::v1::{ListTablesRequest, ShowTableRequest};
use sluice_sync::replication::{ReplicationConfig, Replicator, TlsPaths, next_incarnation};
use sluice_sync::{Event, Key, NodeClock, OriginName, TableSchema, Tables};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::Env;
use super::procs::{self, PROXY_CPU, Proc};

/// What a sluice node of a benchmark fleet runs.
#[derive(Debug, Clone)]
pub(crate) struct SluiceSpec {
    /// `[[table]]` sections.
    pub tables: String,
    /// `frontend.rules.request`.
    pub request_rules: Vec<String>,
    /// `backend.stick`.
    pub stick: Option<String>,
    /// Backend servers (name, port).
    pub servers: Vec<(String, u16)>,
}

/// A `sluice` process replicating with its peers.
#[derive(Debug)]
pub(crate) struct SluiceNode {
    pub name: String,
    pub web: u16,
    pub admin: u16,
    config: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    proc: Option<Proc>,
    client: Option<AdminClient<Channel>>,
}

impl SluiceNode {
    /// Writes the config of node `name` (peers: name and replication port).
    pub(crate) fn new(
        env: &Env,
        certs: &Path,
        name: &str,
        peers: &[(String, u16)],
        spec: &SluiceSpec,
        sync: u16,
    ) -> anyhow::Result<SluiceNode> {
        let (web, admin, metrics) = (procs::port(), procs::port(), procs::port());
        let q = |v: &[String]| {
            v.iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let peers = cluster_tests::named_addrs(peers);
        let servers = cluster_tests::named_addrs(&spec.servers);
        let stick = spec
            .stick
            .as_ref()
            .map(|s| format!("stick = \"{s}\"\n"))
            .unwrap_or_default();
        let c = certs.display();
        let config = format!(
            "[node]\nname = \"{name}\"\nstate_dir = \"{state}\"\nthreads = 1\ndrain_timeout = \"2s\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n\
             [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{name}.pem\"\nkey = \"{c}/{name}.key\"\n\n\
             [sync]\nlisten = \"127.0.0.1:{sync}\"\npeers = [ {peers} ]\nready_wait = \"5s\"\n\n\
             {tables}\n\
             [[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:{web}\"\nbackend = \"app\"\n\
             [frontend.rules]\nrequest = [ {rules} ]\n\n\
             [[backend]]\nname = \"app\"\n{stick}servers = [ {servers} ]\n",
            state = env.path(&format!("state-{name}")).display(),
            tables = spec.tables,
            rules = q(&spec.request_rules),
        );
        // Several configs may exist for one node name (a baseline run): name files by port.
        let path = env.write(&format!("{name}-{admin}.toml"), &config)?;
        Ok(SluiceNode {
            name: name.to_owned(),
            web,
            admin,
            config: path,
            log: env.path(&format!("{name}-{admin}.log")),
            bin: env.sluice.clone(),
            proc: None,
            client: None,
        })
    }

    /// Starts the process on the proxy CPU.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let c = self.config.display().to_string();
        self.proc = Some(Proc::spawn(
            &self.name,
            PROXY_CPU,
            &self.bin,
            &["--config", &c],
            &[("SLUICE_LOG", "warn")],
            &self.log,
        )?);
        self.client = None;
        Ok(())
    }

    /// `SIGTERM` and wait.
    pub(crate) fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        self.client = None;
    }

    /// The process.
    pub(crate) fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// The web frontend's address.
    pub(crate) fn web(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.web))
    }

    async fn client(&mut self) -> anyhow::Result<&mut AdminClient<Channel>> {
        if self.client.is_none() {
            let c = AdminClient::connect(format!("http://127.0.0.1:{}", self.admin))
                .await
                .with_context(|| format!("admin API of {}", self.name))?;
            self.client = Some(c);
        }
        self.client.as_mut().context("admin client")
    }

    /// Entries `table` holds, or an error while the admin API is not up.
    pub(crate) async fn entries(&mut self, table: &str) -> anyhow::Result<u64> {
        let c = self.client().await?;
        let res = c.list_tables(ListTablesRequest {}).await;
        let tables = match res {
            Ok(r) => r.into_inner().tables,
            Err(e) => {
                self.client = None;
                bail!("list tables: {e}");
            }
        };
        tables
            .iter()
            .find(|t| t.name == table)
            .map(|t| t.entries)
            .with_context(|| format!("no table {table}"))
    }

    /// Waits until `table` holds at least `n` entries; the time it took from `since`.
    pub(crate) async fn wait_entries(
        &mut self,
        table: &str,
        n: u64,
        since: Instant,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        loop {
            if let Ok(have) = self.entries(table).await
                && have >= n
            {
                return Ok(since.elapsed());
            }
            if since.elapsed() > within {
                let have = self.entries(table).await;
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "{} holds {have:?} of {n} entries after {within:?}; log:\n{}",
                    self.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The merged value of `field` for `key` in `table`, if the entry and the value exist.
    pub(crate) async fn value(
        &mut self,
        table: &str,
        key: &str,
        field: &str,
    ) -> anyhow::Result<Option<u64>> {
        let c = self.client().await?;
        let mut stream = c
            .show_table(ShowTableRequest {
                table: table.into(),
                key: Some(key.into()),
                filter: None,
                limit: 1,
                origins: false,
            })
            .await?
            .into_inner();
        while let Some(e) = stream.message().await? {
            if let Some(v) = e.values.iter().find(|v| v.field == field) {
                return Ok(v.value);
            }
        }
        Ok(None)
    }
}

/// An HAProxy process with a peers section and a runtime API socket.
#[derive(Debug)]
pub(crate) struct HaNode {
    pub name: String,
    pub web: u16,
    pub sock: PathBuf,
    config: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    proc: Option<Proc>,
}

impl HaNode {
    /// A node whose config is `config(sock)`.
    pub(crate) fn new(
        env: &Env,
        name: &str,
        web: u16,
        config: impl Fn(&Path) -> String,
    ) -> anyhow::Result<HaNode> {
        let sock = env.path(&format!("{name}.sock"));
        let path = env.write(&format!("{name}.cfg"), &config(&sock))?;
        Ok(HaNode {
            name: name.to_owned(),
            web,
            sock,
            config: path,
            log: env.path(&format!("{name}.log")),
            bin: env.haproxy.clone(),
            proc: None,
        })
    }

    /// Starts `haproxy -db -f CFG -L NAME` on the proxy CPU and waits for its socket.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.sock);
        let c = self.config.display().to_string();
        self.proc = Some(Proc::spawn(
            &self.name,
            PROXY_CPU,
            &self.bin,
            &["-db", "-f", &c, "-L", &self.name],
            &[],
            &self.log,
        )?);
        let end = Instant::now() + Duration::from_secs(10);
        while self.cli("show info").is_err() {
            if Instant::now() > end {
                bail!("{}: no runtime API; see {}", self.name, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// `SIGTERM` and wait.
    pub(crate) fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// The process.
    pub(crate) fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// The frontend's address.
    pub(crate) fn web(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.web))
    }

    /// One runtime API command.
    pub(crate) fn cli(&self, cmd: &str) -> anyhow::Result<String> {
        let mut s = UnixStream::connect(&self.sock)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(cmd.as_bytes())?;
        s.write_all(b"\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Waits until `show peers` lists `n` established peer links.
    pub(crate) fn wait_peers(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        loop {
            let est = self
                .cli("show peers")
                .map(|o| o.matches("state=EST").count())
                .unwrap_or(0);
            if est >= n {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "{}: {est} of {n} peer links established after {within:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `used` of `table` in `show table`.
    pub(crate) fn used(&self, table: &str) -> anyhow::Result<u64> {
        let out = self.cli("show table")?;
        let head = format!("# table: {table},");
        out.lines()
            .find(|l| l.starts_with(&head))
            .and_then(|l| {
                l.replace(',', " ")
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix("used:").and_then(|n| n.parse().ok()))
            })
            .with_context(|| format!("no table {table} in show table"))
    }

    /// Waits until `table` holds at least `n` entries; the time from `since`.
    pub(crate) fn wait_used(
        &self,
        table: &str,
        n: u64,
        since: Instant,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        loop {
            if let Ok(u) = self.used(table)
                && u >= n
            {
                return Ok(since.elapsed());
            }
            if since.elapsed() > within {
                bail!(
                    "{} holds {} of {n} entries after {within:?}",
                    self.name,
                    self.used(table).unwrap_or(0)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `set table TABLE key 10.x.y.z data.gpc0 1` for keys `range`, over one interactive
    /// session (the runtime API's only bulk path).
    pub(crate) fn fill(&self, table: &str, range: std::ops::Range<u32>) -> anyhow::Result<()> {
        let s = UnixStream::connect(&self.sock)?;
        let mut w = s.try_clone()?;
        let n = range.len();
        let reader = std::thread::spawn(move || -> anyhow::Result<usize> {
            // Each answer ends with the prompt "\n> "; count them.
            let mut r = BufReader::with_capacity(1 << 20, s);
            let mut prompts = 0usize;
            let mut buf = Vec::new();
            while prompts < n + 1 {
                buf.clear();
                if r.read_until(b'>', &mut buf)? == 0 {
                    break;
                }
                if buf.ends_with(b"\n>") || buf == b">" {
                    prompts += 1;
                }
            }
            Ok(prompts)
        });
        w.write_all(b"prompt\n")?;
        let mut chunk = String::with_capacity(1 << 20);
        for i in range {
            chunk.push_str(&format!(
                "set table {table} key {} data.gpc0 1\n",
                ip_key(i)
            ));
            if chunk.len() > (1 << 20) - 100 {
                w.write_all(chunk.as_bytes())?;
                chunk.clear();
            }
        }
        w.write_all(chunk.as_bytes())?;
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("CLI reader panicked"))??;
        let _ = w.write_all(b"quit\n");
        if got < n {
            bail!("the runtime API answered {got} of {n} commands");
        }
        Ok(())
    }
}

impl Drop for HaNode {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for SluiceNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_millis(500));
        }
    }
}

/// The `i`th key of a fill: 10.0.0.0 + i.
pub(crate) fn ip_key(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0a00_0000 + i)
}

/// An in-process replication peer that writes entries into its table, which replication
/// then carries to the real nodes.
#[derive(Debug)]
pub(crate) struct Feeder {
    tables: Arc<Tables>,
    repl: Replicator,
    clock: NodeClock,
    cancel: CancellationToken,
}

impl Feeder {
    /// Starts the peer `name` (certificate in `certs`) with `schema`, dialing `peers`.
    pub(crate) async fn start(
        env: &Env,
        certs: &Path,
        name: &str,
        listen: u16,
        peers: Vec<(String, String)>,
        schema: TableSchema,
    ) -> anyhow::Result<Feeder> {
        let state = env.path(&format!("state-{name}"));
        let clock = NodeClock::new();
        let incarnation = next_incarnation(&state, clock.wall_ms())?;
        let tables = Arc::new(Tables::new(
            OriginName {
                node: name.into(),
                incarnation,
            },
            5_000,
        ));
        tables
            .reconcile(vec![schema])
            .map_err(|e| anyhow::anyhow!("feeder table: {e}"))?;
        let cancel = CancellationToken::new();
        let cfg = ReplicationConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            peers,
            flush_interval: Duration::from_millis(1),
            dead_after: Duration::from_secs(5),
            ready_wait: Duration::from_secs(1),
            state_dir: state,
            tls: TlsPaths {
                ca: certs.join("ca.pem"),
                cert: certs.join(format!("{name}.pem")),
                key: certs.join(format!("{name}.key")),
            },
            // The feeder shares its process with the harness's writer thread, which a yield
            // would hand the core to: the fill would measure the writer, not replication.
            own_thread: false,
        };
        let repl = Replicator::start(cfg, tables.clone(), clock, cancel.clone()).await?;
        Ok(Feeder {
            tables,
            repl,
            clock,
            cancel,
        })
    }

    /// Waits until its sessions with both nodes are up: a session that came up during a fill
    /// would send the keys written before it twice, in its snapshot and in its feed.
    pub(crate) async fn wait_peers(&self, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        for peer in ["node-1", "node-2"] {
            while !self.repl.peers().iter().any(|p| p.name == peer && p.up) {
                if Instant::now() > end {
                    bail!("the feeder has no session with {peer} after {within:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Records a request, a connection and a `gpc0` increment on each key of `range`, as fast
    /// as one thread can.
    pub(crate) async fn fill(
        &self,
        table: &str,
        range: std::ops::Range<u32>,
    ) -> anyhow::Result<()> {
        let t = self.tables.get(table).context("feeder table")?;
        let clock = self.clock;
        tokio::task::spawn_blocking(move || {
            for i in range {
                let mut h = t.handle(Key::from_ip(ip_key(i).into()));
                let now = clock.tick();
                t.record(&mut h, Event::HttpReq, now);
                t.record(&mut h, Event::ConnOpen, now);
                t.record(&mut h, Event::IncGpc0(1), now);
            }
        })
        .await?;
        Ok(())
    }

    /// What it knows of its peers (contributions and messages sent to each).
    pub(crate) fn peers(&self) -> Vec<sluice_sync::replication::PeerStatus> {
        self.repl.peers()
    }

    /// Stops replication and waits for its tasks.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.repl.closed()).await;
    }
}
