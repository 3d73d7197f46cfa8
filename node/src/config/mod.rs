//! Configuration: loading, validation and the typed values the rest of the node receives.
//!
//! # How values are chosen
//!
//! 1. The TOML file given with `--config`.
//! 2. Environment variables `SLUICE_<SECTION>__<KEY>` (for example `SLUICE_NODE__THREADS=1`,
//!    `SLUICE_DEFAULTS__CONNECT_TIMEOUT=2s`) override the file; a double underscore separates
//!    each level of the key path. Variables without `__` (such as `SLUICE_ADMIN`, which
//!    `sluicectl` reads) are not config overrides and are ignored here.
//! 3. Built-in defaults fill every key left unset ([`Limits::default`] and the per-key
//!    defaults documented in `docs/configuration.md`). A per-frontend or per-backend `limits`
//!    table overrides `[defaults]` key by key.
//!
//! Parsing happens in two steps: figment merges the sources into a [`FileConfig`] that refuses
//! unknown keys, then `TryFrom<FileConfig> for Config` turns strings into typed values and checks
//! the cross-references (a frontend's backend, a stick table). Either step fails with one
//! [`ConfigError`] naming the source, the field path (`backend[1].servers[0].addr`) and what is
//! wrong; nothing is started from a config that did not validate.

mod raw;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use sluice_sync::{KeyType, TableSchema};

use crate::backend::server_id;
use crate::rules::FrontendRules;

pub use raw::{
    AdminSection, BackendSection, CheckSection, FileConfig, FrontendSection, FrontendTlsSection,
    LimitsSection, MetricsSection, NodeSection, PeerSection, RulesSection, ServerSection,
    SyncSection, TableSection, TlsSection,
};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SLUICE_";

/// The smallest `max_header_size`: hyper's HTTP/1 reader cannot work with less.
pub const MIN_HEADER_SIZE: usize = 8192;

// === errors ===

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{problem}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ConfigError {
    /// Where the bad value came from: the file name, or the environment.
    pub origin: String,
    /// The field path, e.g. `frontend[0].rules.request[2]`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// A validation failure before the origin is known: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

fn field_err(path: impl Into<String>, problem: impl fmt::Display) -> FieldError {
    FieldError {
        path: path.into(),
        problem: problem.to_string(),
    }
}

// === typed config ===

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[node]`
    pub node: NodeConfig,
    /// `[admin]`, if the admin API is enabled.
    pub admin: Option<AdminConfig>,
    /// `[metrics]`, if metrics and health endpoints are served.
    pub metrics: Option<MetricsConfig>,
    /// `[tls]`: the cluster identity.
    pub tls: Option<ClusterTlsConfig>,
    /// `[sync]`
    pub sync: Option<SyncConfig>,
    /// `[defaults]` with built-in defaults filled in.
    pub defaults: Limits,
    /// `[[table]]`, in config order.
    pub tables: Vec<TableSchema>,
    /// `[[frontend]]`, in config order.
    pub frontends: Vec<FrontendConfig>,
    /// `[[backend]]`, in config order.
    pub backends: Vec<BackendConfig>,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name (default `sluice`).
    pub name: String,
    /// Runtime state directory.
    pub state_dir: Option<PathBuf>,
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// Longest wait for in-flight requests on shutdown.
    pub drain_timeout: Duration,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsConfig {
    /// Fleet CA.
    pub ca: PathBuf,
    /// Node certificate chain.
    pub cert: PathBuf,
    /// Node private key.
    pub key: PathBuf,
}

/// `[sync]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Replication listen address.
    pub listen: SocketAddr,
    /// Seed peers.
    pub peers: Vec<PeerConfig>,
    /// Longest wait before a change joins a batch.
    pub flush_interval: Duration,
    /// Silence after which a peer's gauges stop counting.
    pub dead_after: Duration,
    /// How long to wait for a first snapshot from a peer before turning ready anyway.
    pub ready_wait: Duration,
}

/// A seed peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Node name.
    pub name: String,
    /// Replication address.
    pub addr: HostPort,
}

/// A `host:port` whose host may be a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// IP literal or DNS name (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HostPort {
    /// The socket address when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    fn parse(s: &str) -> Result<HostPort, String> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(HostPort {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port (the port is missing)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}` has a bad port `{port}`"))?;
        let ok_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok_host {
            return Err(format!(
                "`{s}` does not have a valid host name or IP address"
            ));
        }
        if port == 0 {
            return Err(format!("`{s}` has port 0"));
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Timeouts and sizes with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time to receive the complete head of a connection's first request.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait between a response and the next request head.
    pub keepalive_timeout: Duration,
    /// TCP mode: close when neither side sent a byte for this long.
    pub idle_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_size: usize,
    /// Concurrent client connections per frontend.
    pub max_connections: usize,
    /// Time to open a connection to a backend server.
    pub connect_timeout: Duration,
    /// Time for a backend to answer with a response head.
    pub response_timeout: Duration,
    /// Interval between DNS resolutions of server names.
    pub dns_refresh: Duration,
    /// How long an idle pooled backend connection may be reused; older ones are closed
    /// rather than risk the server closing them as a request is sent.
    pub pool_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_header_size: 32 * 1024,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            dns_refresh: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(4),
        }
    }
}

/// How a frontend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 (and HTTP/2 over TLS) reverse proxying.
    Http,
    /// Byte stream proxying.
    Tcp,
}

impl Mode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// `[[frontend]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Unique name.
    pub name: String,
    /// Listen address.
    pub bind: SocketAddr,
    /// HTTP or TCP.
    pub mode: Mode,
    /// Read a PROXY protocol v1/v2 header before anything else.
    pub accept_proxy: bool,
    /// Index of the backend in [`Config::backends`].
    pub backend: usize,
    /// Add `Via: 1.1 <node name>` to requests and responses.
    pub via: bool,
    /// Evaluate rules (tracking included) without enforcing their verdicts; would-be
    /// outcomes are counted as `dry_run_*` in the metrics.
    pub dry_run: bool,
    /// TLS termination.
    pub tls: Option<FrontendTlsConfig>,
    /// Connection and request rules, as written.
    pub rules: Rules,
    /// Effective limits.
    pub limits: Limits,
}

/// `frontend.tls`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendTlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// A frontend's rules: as written, and compiled against the config's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Run on accept.
    pub connection: Vec<String>,
    /// Run per HTTP request.
    pub request: Vec<String>,
    /// Both lists parsed and checked against the tables when the config was validated, so a
    /// config that loads never meets a rule that cannot work.
    pub compiled: Arc<FrontendRules>,
}

/// How a backend picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each new request (or TCP connection) goes to the next server that is up.
    RoundRobin,
    /// The server with the fewest active requests or connections.
    LeastConn,
    /// A hash of the client address.
    Source,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::Source => "source",
        }
    }
}

/// `backend.stick`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stick {
    /// `on src table NAME`: the table's `server_id` for the client address.
    OnSrc {
        /// Table name.
        table: String,
    },
    /// `cookie NAME`: a cookie naming the server.
    Cookie {
        /// Cookie name.
        name: String,
    },
}

impl fmt::Display for Stick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stick::OnSrc { table } => write!(f, "on src table {table}"),
            Stick::Cookie { name } => write!(f, "cookie {name}"),
        }
    }
}

/// `[[backend]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique name.
    pub name: String,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Stickiness.
    pub stick: Option<Stick>,
    /// Servers, in config order.
    pub servers: Vec<ServerConfig>,
    /// Active health check.
    pub check: Option<CheckConfig>,
    /// Effective limits (connect, response, DNS).
    pub limits: Limits,
}

/// A backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Name, unique in the backend.
    pub name: String,
    /// Address.
    pub addr: HostPort,
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// HTTP `GET` path; `None` checks with a TCP connect.
    pub path: Option<String>,
    /// Consecutive successes to come up.
    pub rise: NonZeroU32,
    /// Consecutive failures to go down.
    pub fall: NonZeroU32,
}

// === loading ===

impl Config {
    /// Loads a config file, applying the given `SLUICE_*` environment overrides.
    ///
    /// `env` is passed in (main gives it `std::env::vars()`) so tests can supply overrides
    /// without touching the process environment.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            path: String::new(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::load_str(&text, &origin, env)
    }

    /// Parses a config from TOML text; `origin` names it in errors.
    pub fn load_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let raw = Self::merge(text, origin, env)?;
        Config::try_from(raw).map_err(|e| ConfigError {
            origin: origin.to_owned(),
            path: e.path,
            problem: e.problem,
        })
    }

    /// Parses TOML text with no environment overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::load_str(text, "<config>", std::iter::empty())
    }

    fn merge(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<FileConfig, ConfigError> {
        // Check the TOML syntax first so a syntax error carries its line and column.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError {
                origin: origin.to_owned(),
                path: String::new(),
                problem: e.to_string().trim_end().replace('\n', " "),
            });
        }
        let mut fig = Figment::from(Toml::string(text));
        let mut overrides = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            // Figment's value grammar: `1` is a number, `true` a bool, `[..]` an array.
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            overrides.push(name.clone());
            fig = fig.merge(Serialized::default(&key, parsed));
        }
        fig.extract::<FileConfig>().map_err(|e| {
            // The file comes from the TOML provider ("TOML source string"); overrides from
            // `Serialized` providers named after the value type.
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| !m.name.starts_with("TOML"));
            let origin = if from_env {
                format!("environment ({})", overrides.join(", "))
            } else {
                origin.to_owned()
            };
            let mut path = render_path(&e.path);
            let problem = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if e.path.last() != Some(field) {
                        path = join_path(&path, field);
                    }
                    if expected.is_empty() {
                        "unknown key".to_owned()
                    } else {
                        format!("unknown key (expected one of: {})", expected.join(", "))
                    }
                }
                figment::error::Kind::MissingField(field) => {
                    if e.path.last().map(String::as_str) != Some(field.as_ref()) {
                        path = join_path(&path, field);
                    }
                    "is required".to_owned()
                }
                kind => kind.to_string(),
            };
            ConfigError {
                origin,
                path,
                problem,
            }
        })
    }

    /// The config with every default filled in, in the file format (`sluice check` prints it).
    pub fn to_file_config(&self) -> FileConfig {
        let dur = |d: Duration| Some(humantime::format_duration(d).to_string());
        let limits = |l: &Limits| LimitsSection {
            header_timeout: dur(l.header_timeout),
            keepalive_timeout: dur(l.keepalive_timeout),
            idle_timeout: dur(l.idle_timeout),
            max_header_size: Some(l.max_header_size),
            max_connections: Some(l.max_connections),
            connect_timeout: dur(l.connect_timeout),
            response_timeout: dur(l.response_timeout),
            dns_refresh: dur(l.dns_refresh),
            pool_idle_timeout: dur(l.pool_idle_timeout),
        };
        let path = |p: &Path| Some(p.display().to_string());
        FileConfig {
            node: NodeSection {
                name: Some(self.node.name.clone()),
                state_dir: self.node.state_dir.as_deref().and_then(path),
                threads: Some(self.node.threads),
                drain_timeout: dur(self.node.drain_timeout),
            },
            admin: self.admin.as_ref().map(|a| AdminSection {
                listen: Some(a.listen.to_string()),
            }),
            metrics: self.metrics.as_ref().map(|m| MetricsSection {
                listen: Some(m.listen.to_string()),
            }),
            tls: self.tls.as_ref().map(|t| TlsSection {
                ca: path(&t.ca),
                cert: path(&t.cert),
                key: path(&t.key),
            }),
            sync: self.sync.as_ref().map(|s| SyncSection {
                listen: Some(s.listen.to_string()),
                peers: s
                    .peers
                    .iter()
                    .map(|p| PeerSection {
                        name: Some(p.name.clone()),
                        addr: Some(p.addr.to_string()),
                    })
                    .collect(),
                flush_interval: dur(s.flush_interval),
                dead_after: dur(s.dead_after),
                ready_wait: dur(s.ready_wait),
            }),
            defaults: limits(&self.defaults),
            tables: self
                .tables
                .iter()
                .map(|t| TableSection {
                    name: Some(t.name.clone()),
                    key: Some(t.key.to_string()),
                    size: Some(t.size),
                    expire: dur(Duration::from_millis(u64::from(t.expire_ms))),
                    store: t.store.iter().map(|s| s.to_string()).collect(),
                    sync: Some(t.sync),
                })
                .collect(),
            frontends: self
                .frontends
                .iter()
                .map(|f| FrontendSection {
                    name: Some(f.name.clone()),
                    bind: Some(f.bind.to_string()),
                    mode: Some(f.mode.as_str().to_owned()),
                    accept_proxy: Some(f.accept_proxy),
                    backend: self.backends.get(f.backend).map(|b| b.name.clone()),
                    via: Some(f.via),
                    dry_run: Some(f.dry_run),
                    tls: f.tls.as_ref().map(|t| FrontendTlsSection {
                        cert: path(&t.cert),
                        key: path(&t.key),
                    }),
                    rules: Some(RulesSection {
                        connection: f.rules.connection.clone(),
                        request: f.rules.request.clone(),
                    }),
                    limits: Some(limits(&f.limits)),
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|b| BackendSection {
                    name: Some(b.name.clone()),
                    balance: Some(b.balance.as_str().to_owned()),
                    stick: b.stick.as_ref().map(|s| s.to_string()),
                    servers: b
                        .servers
                        .iter()
                        .map(|s| ServerSection {
                            name: Some(s.name.clone()),
                            addr: Some(s.addr.to_string()),
                        })
                        .collect(),
                    check: b.check.as_ref().map(|c| CheckSection {
                        interval: dur(c.interval),
                        timeout: dur(c.timeout),
                        path: c.path.clone(),
                        rise: Some(c.rise.get()),
                        fall: Some(c.fall.get()),
                    }),
                    limits: Some(limits(&b.limits)),
                })
                .collect(),
        }
    }

    /// The resolved config as TOML.
    pub fn to_toml(&self) -> String {
        // Serialising plain strings, numbers and tables cannot fail.
        toml::to_string_pretty(&self.to_file_config()).unwrap_or_else(|e| format!("# {e}\n"))
    }

    /// The backend a frontend sends to.
    pub fn backend_of(&self, frontend: &FrontendConfig) -> &BackendConfig {
        // Validation stores only indices into `backends`.
        &self.backends[frontend.backend]
    }
}

fn render_path(segments: &[String]) -> String {
    let mut out = String::new();
    for seg in segments {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            out = join_path(&out, seg);
        }
    }
    // Arrays of tables are written `[[frontend]]` but deserialise under their serde names.
    out
}

fn join_path(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

// === validation ===

fn duration(path: &str, value: Option<&String>, default: Duration) -> Result<Duration, FieldError> {
    let Some(s) = value else { return Ok(default) };
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        field_err(
            path,
            format!("`{s}` is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"5m\""),
        )
    })?;
    if d.is_zero() {
        return Err(field_err(path, "must be greater than zero"));
    }
    Ok(d)
}

fn socket_addr(path: &str, value: Option<&String>) -> Result<SocketAddr, FieldError> {
    let s = value.ok_or_else(|| field_err(path, "is required"))?;
    s.trim().parse().map_err(|_| {
        field_err(
            path,
            format!("`{s}` is not an IP address and port (e.g. \"0.0.0.0:8080\")"),
        )
    })
}

fn required<'a>(path: &str, value: Option<&'a String>) -> Result<&'a str, FieldError> {
    match value.map(|s| s.trim()) {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(field_err(path, "must not be empty")),
        None => Err(field_err(path, "is required")),
    }
}

fn name(path: &str, value: Option<&String>) -> Result<String, FieldError> {
    let s = required(path, value)?;
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(field_err(
            path,
            format!("`{s}` may use only letters, digits, `_`, `-` and `.`"),
        ));
    }
    Ok(s.to_owned())
}

fn file(path: &str, value: Option<&String>) -> Result<PathBuf, FieldError> {
    required(path, value).map(PathBuf::from)
}

fn limits(path: &str, raw: Option<&LimitsSection>, base: &Limits) -> Result<Limits, FieldError> {
    let empty = LimitsSection::default();
    let raw = raw.unwrap_or(&empty);
    let p = |k: &str| join_path(path, k);
    let max_header_size = raw.max_header_size.unwrap_or(base.max_header_size);
    if max_header_size < MIN_HEADER_SIZE {
        return Err(field_err(
            p("max_header_size"),
            format!("must be at least {MIN_HEADER_SIZE}"),
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(base.max_connections);
    // The per-frontend semaphore holds at most this many permits.
    if max_connections == 0 || max_connections > (u32::MAX >> 3) as usize {
        return Err(field_err(
            p("max_connections"),
            "must be between 1 and 536870911",
        ));
    }
    Ok(Limits {
        header_timeout: duration(
            &p("header_timeout"),
            raw.header_timeout.as_ref(),
            base.header_timeout,
        )?,
        keepalive_timeout: duration(
            &p("keepalive_timeout"),
            raw.keepalive_timeout.as_ref(),
            base.keepalive_timeout,
        )?,
        idle_timeout: duration(
            &p("idle_timeout"),
            raw.idle_timeout.as_ref(),
            base.idle_timeout,
        )?,
        max_header_size,
        max_connections,
        connect_timeout: duration(
            &p("connect_timeout"),
            raw.connect_timeout.as_ref(),
            base.connect_timeout,
        )?,
        response_timeout: duration(
            &p("response_timeout"),
            raw.response_timeout.as_ref(),
            base.response_timeout,
        )?,
        dns_refresh: duration(
            &p("dns_refresh"),
            raw.dns_refresh.as_ref(),
            base.dns_refresh,
        )?,
        pool_idle_timeout: duration(
            &p("pool_idle_timeout"),
            raw.pool_idle_timeout.as_ref(),
            base.pool_idle_timeout,
        )?,
    })
}

fn unique<'a>(
    seen: &mut HashSet<&'a str>,
    path: &str,
    name: &'a str,
    what: &str,
) -> Result<(), FieldError> {
    if !seen.insert(name) {
        return Err(field_err(path, format!("duplicate {what} name `{name}`")));
    }
    Ok(())
}

impl TryFrom<FileConfig> for Config {
    type Error = FieldError;

    fn try_from(raw: FileConfig) -> Result<Config, FieldError> {
        let node = NodeConfig {
            name: match &raw.node.name {
                Some(_) => name("node.name", raw.node.name.as_ref())?,
                None => "sluice".to_owned(),
            },
            state_dir: match &raw.node.state_dir {
                Some(_) => Some(file("node.state_dir", raw.node.state_dir.as_ref())?),
                None => None,
            },
            threads: raw.node.threads.unwrap_or(0),
            drain_timeout: duration(
                "node.drain_timeout",
                raw.node.drain_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
        };
        if node.threads > 1024 {
            return Err(field_err("node.threads", "must be at most 1024"));
        }

        let tls = match &raw.tls {
            None => None,
            Some(t) => Some(ClusterTlsConfig {
                ca: file("tls.ca", t.ca.as_ref())?,
                cert: file("tls.cert", t.cert.as_ref())?,
                key: file("tls.key", t.key.as_ref())?,
            }),
        };
        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let listen = socket_addr("admin.listen", a.listen.as_ref())?;
                if !listen.ip().is_loopback() && tls.is_none() {
                    return Err(field_err(
                        "admin.listen",
                        format!(
                            "`{listen}` is not a loopback address, which requires a [tls] section"
                        ),
                    ));
                }
                Some(AdminConfig { listen })
            }
        };
        let metrics = match &raw.metrics {
            None => None,
            Some(m) => Some(MetricsConfig {
                listen: socket_addr("metrics.listen", m.listen.as_ref())?,
            }),
        };
        let sync = match &raw.sync {
            None => None,
            Some(s) => {
                if tls.is_none() {
                    return Err(field_err(
                        "sync",
                        "replication is always mutually authenticated: add a [tls] section",
                    ));
                }
                if node.state_dir.is_none() {
                    return Err(field_err(
                        "node.state_dir",
                        "replication needs a state directory (membership and incarnation live there)",
                    ));
                }
                let mut peers = Vec::with_capacity(s.peers.len());
                let mut seen = HashSet::new();
                for (i, p) in s.peers.iter().enumerate() {
                    let path = format!("sync.peers[{i}]");
                    let pname = name(&format!("{path}.name"), p.name.as_ref())?;
                    if pname == node.name {
                        return Err(field_err(
                            format!("{path}.name"),
                            format!("`{pname}` is this node's own name (node.name)"),
                        ));
                    }
                    if !seen.insert(pname.clone()) {
                        return Err(field_err(
                            format!("{path}.name"),
                            format!("duplicate peer name `{pname}`"),
                        ));
                    }
                    let addr_path = format!("{path}.addr");
                    let addr = HostPort::parse(required(&addr_path, p.addr.as_ref())?)
                        .map_err(|e| field_err(&addr_path, e))?;
                    peers.push(PeerConfig { name: pname, addr });
                }
                Some(SyncConfig {
                    listen: socket_addr("sync.listen", s.listen.as_ref())?,
                    peers,
                    flush_interval: duration(
                        "sync.flush_interval",
                        s.flush_interval.as_ref(),
                        Duration::from_millis(1),
                    )?,
                    dead_after: duration(
                        "sync.dead_after",
                        s.dead_after.as_ref(),
                        Duration::from_secs(5),
                    )?,
                    ready_wait: duration(
                        "sync.ready_wait",
                        s.ready_wait.as_ref(),
                        Duration::from_secs(10),
                    )?,
                })
            }
        };

        let defaults = limits("defaults", Some(&raw.defaults), &Limits::default())?;

        let mut tables = Vec::with_capacity(raw.tables.len());
        let mut seen = HashSet::new();
        for (i, t) in raw.tables.iter().enumerate() {
            let path = format!("table[{i}]");
            let tname = required(&format!("{path}.name"), t.name.as_ref())?;
            unique(&mut seen, &format!("{path}.name"), tname, "table")?;
            let key: KeyType = required(&format!("{path}.key"), t.key.as_ref())?
                .parse()
                .map_err(|e| field_err(format!("{path}.key"), e))?;
            let size = t
                .size
                .ok_or_else(|| field_err(format!("{path}.size"), "is required"))?;
            let expire = duration(&format!("{path}.expire"), t.expire.as_ref(), Duration::ZERO)?;
            if expire.is_zero() {
                return Err(field_err(format!("{path}.expire"), "is required"));
            }
            let mut store = Vec::with_capacity(t.store.len());
            for (j, s) in t.store.iter().enumerate() {
                store.push(
                    TableSchema::parse_store(std::slice::from_ref(s))
                        .map_err(|e| field_err(format!("{path}.store[{j}]"), e))?
                        .remove(0),
                );
            }
            let schema = TableSchema::new(tname, key, size, expire, store, t.sync.unwrap_or(true))
                .map_err(|e| {
                    use sluice_sync::SchemaError as E;
                    let field = match e {
                        E::ZeroSize | E::SizeTooLarge(_) => "size",
                        E::BadExpire(_) => "expire",
                        E::BadTableName(_) => "name",
                        _ => "store",
                    };
                    field_err(format!("{path}.{field}"), e)
                })?;
            tables.push(schema);
        }

        let mut backends = Vec::with_capacity(raw.backends.len());
        let mut seen = HashSet::new();
        for (i, b) in raw.backends.iter().enumerate() {
            let path = format!("backend[{i}]");
            let bname = name(&format!("{path}.name"), b.name.as_ref())?;
            if !seen.insert(bname.clone()) {
                return Err(field_err(
                    format!("{path}.name"),
                    format!("duplicate backend name `{bname}`"),
                ));
            }
            let balance = match b.balance.as_deref().map(str::trim) {
                None | Some("roundrobin") => Balance::RoundRobin,
                Some("leastconn") => Balance::LeastConn,
                Some("source") => Balance::Source,
                Some(other) => {
                    return Err(field_err(
                        format!("{path}.balance"),
                        format!(
                            "unknown algorithm `{other}` (expected roundrobin, leastconn or source)"
                        ),
                    ));
                }
            };
            let stick = match b.stick.as_deref() {
                None => None,
                Some(s) => Some(parse_stick(&format!("{path}.stick"), s, &tables)?),
            };
            if b.servers.is_empty() {
                return Err(field_err(
                    format!("{path}.servers"),
                    "a backend needs at least one server",
                ));
            }
            let mut servers = Vec::with_capacity(b.servers.len());
            let mut seen_servers = HashSet::new();
            for (j, s) in b.servers.iter().enumerate() {
                let spath = format!("{path}.servers[{j}]");
                let sname = name(&format!("{spath}.name"), s.name.as_ref())?;
                if !seen_servers.insert(sname.clone()) {
                    return Err(field_err(
                        format!("{spath}.name"),
                        format!("duplicate server name `{sname}`"),
                    ));
                }
                let apath = format!("{spath}.addr");
                let addr = HostPort::parse(required(&apath, s.addr.as_ref())?)
                    .map_err(|e| field_err(&apath, e))?;
                if let Some(other) = servers
                    .iter()
                    .find(|o: &&ServerConfig| server_id(&o.name) == server_id(&sname))
                {
                    // Stickiness stores servers by an id derived from the name.
                    return Err(field_err(
                        format!("{spath}.name"),
                        format!(
                            "`{sname}` and `{}` have the same server id ({}); rename one",
                            other.name,
                            server_id(&sname)
                        ),
                    ));
                }
                servers.push(ServerConfig { name: sname, addr });
            }
            let check = match &b.check {
                None => None,
                Some(c) => {
                    let cpath = format!("{path}.check");
                    let interval = duration(
                        &format!("{cpath}.interval"),
                        c.interval.as_ref(),
                        Duration::from_secs(2),
                    )?;
                    let timeout = duration(
                        &format!("{cpath}.timeout"),
                        c.timeout.as_ref(),
                        interval.min(Duration::from_secs(1)),
                    )?;
                    let path_str = match &c.path {
                        None => None,
                        Some(p)
                            if p.starts_with('/')
                                && !p
                                    .bytes()
                                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
                        {
                            Some(p.clone())
                        }
                        Some(p) => {
                            return Err(field_err(
                                format!("{cpath}.path"),
                                format!(
                                    "`{p}` is not an absolute path without spaces (e.g. \"/healthz\")"
                                ),
                            ));
                        }
                    };
                    let count = |k: &str, v: Option<u32>, d: u32| {
                        NonZeroU32::new(v.unwrap_or(d))
                            .ok_or_else(|| field_err(format!("{cpath}.{k}"), "must be at least 1"))
                    };
                    Some(CheckConfig {
                        interval,
                        timeout,
                        path: path_str,
                        rise: count("rise", c.rise, 2)?,
                        fall: count("fall", c.fall, 3)?,
                    })
                }
            };
            backends.push(BackendConfig {
                name: bname,
                balance,
                stick,
                servers,
                check,
                limits: limits(&format!("{path}.limits"), b.limits.as_ref(), &defaults)?,
            });
        }

        let mut frontends = Vec::with_capacity(raw.frontends.len());
        let mut seen = HashSet::new();
        let mut binds = HashSet::new();
        for (i, f) in raw.frontends.iter().enumerate() {
            let path = format!("frontend[{i}]");
            let fname = name(&format!("{path}.name"), f.name.as_ref())?;
            if !seen.insert(fname.clone()) {
                return Err(field_err(
                    format!("{path}.name"),
                    format!("duplicate frontend name `{fname}`"),
                ));
            }
            let bind = socket_addr(&format!("{path}.bind"), f.bind.as_ref())?;
            if bind.port() != 0 && !binds.insert(bind) {
                return Err(field_err(
                    format!("{path}.bind"),
                    format!("`{bind}` is bound by another frontend"),
                ));
            }
            let mode = match f.mode.as_deref().map(str::trim) {
                None | Some("http") => Mode::Http,
                Some("tcp") => Mode::Tcp,
                Some(other) => {
                    return Err(field_err(
                        format!("{path}.mode"),
                        format!("unknown mode `{other}` (expected http or tcp)"),
                    ));
                }
            };
            let bpath = format!("{path}.backend");
            let bname = required(&bpath, f.backend.as_ref())?;
            let backend = backends
                .iter()
                .position(|b| b.name == bname)
                .ok_or_else(|| {
                    let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                    field_err(
                        &bpath,
                        format!(
                            "unknown backend `{bname}` (defined: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;
            let tls = match &f.tls {
                None => None,
                Some(t) => Some(FrontendTlsConfig {
                    cert: file(&format!("{path}.tls.cert"), t.cert.as_ref())?,
                    key: file(&format!("{path}.tls.key"), t.key.as_ref())?,
                }),
            };
            let rules = match &f.rules {
                None => Rules::default(),
                Some(r) => {
                    for (stage, list) in [("connection", &r.connection), ("request", &r.request)] {
                        for (j, rule) in list.iter().enumerate() {
                            if rule.trim().is_empty() {
                                return Err(field_err(
                                    format!("{path}.rules.{stage}[{j}]"),
                                    "a rule must not be empty",
                                ));
                            }
                        }
                    }
                    if mode == Mode::Tcp && !r.request.is_empty() {
                        return Err(field_err(
                            format!("{path}.rules.request"),
                            "request rules need mode = \"http\"; a tcp frontend has connection rules only",
                        ));
                    }
                    let compiled = FrontendRules::compile(&r.connection, &r.request, |name| {
                        tables.iter().find(|t| t.name == name)
                    })
                    .map_err(|e| {
                        field_err(format!("{path}.rules.{}[{}]", e.stage, e.index), e.detail())
                    })?;
                    Rules {
                        connection: r.connection.clone(),
                        request: r.request.clone(),
                        compiled: Arc::new(compiled),
                    }
                }
            };
            if let Some(Stick::Cookie { .. }) = &backends[backend].stick
                && mode == Mode::Tcp
            {
                return Err(field_err(
                    &bpath,
                    format!(
                        "backend `{bname}` sticks on a cookie, which a tcp frontend cannot read"
                    ),
                ));
            }
            frontends.push(FrontendConfig {
                name: fname,
                bind,
                mode,
                accept_proxy: f.accept_proxy.unwrap_or(false),
                backend,
                via: f.via.unwrap_or(false),
                dry_run: f.dry_run.unwrap_or(false),
                tls,
                rules,
                limits: limits(&format!("{path}.limits"), f.limits.as_ref(), &defaults)?,
            });
        }

        Ok(Config {
            node,
            admin,
            metrics,
            tls,
            sync,
            defaults,
            tables,
            frontends,
            backends,
        })
    }
}

fn parse_stick(path: &str, s: &str, tables: &[TableSchema]) -> Result<Stick, FieldError> {
    let words: Vec<&str> = s.split_whitespace().collect();
    match words.as_slice() {
        ["on", "src", "table", table] => {
            let Some(t) = tables.iter().find(|t| t.name == *table) else {
                return Err(field_err(path, format!("unknown table `{table}`")));
            };
            if t.key != KeyType::Ip {
                return Err(field_err(
                    path,
                    format!(
                        "table `{table}` has key {}; `on src` needs key = \"ip\"",
                        t.key
                    ),
                ));
            }
            if !t.stores(sluice_sync::DataType::ServerId) {
                return Err(field_err(
                    path,
                    format!("table `{table}` does not store server_id"),
                ));
            }
            Ok(Stick::OnSrc {
                table: (*table).to_owned(),
            })
        }
        ["cookie", cookie]
            if cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(Stick::Cookie {
                name: (*cookie).to_owned(),
            })
        }
        _ => Err(field_err(
            path,
            format!("`{s}` is not `on src table NAME` or `cookie NAME`"),
        )),
    }
}

#[cfg(test)]
mod tests;
