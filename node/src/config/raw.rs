//! The raw shape of a config file: what figment merges from TOML and `SLUICE_*` variables.
//!
//! Every leaf is optional here so that validation (in the parent module) can report a missing
//! key with its full path and fill in defaults in one place. Unknown keys are refused by serde
//! (`deny_unknown_fields`) with the path figment tracked.

use serde::{Deserialize, Serialize};

/// A whole config file as written, before validation.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[node]`
    #[serde(default)]
    pub node: NodeSection,
    /// `[admin]`
    pub admin: Option<AdminSection>,
    /// `[metrics]`
    pub metrics: Option<MetricsSection>,
    /// `[tls]`: the node's cluster identity.
    pub tls: Option<TlsSection>,
    /// `[sync]`
    pub sync: Option<SyncSection>,
    /// `[defaults]`: limits every frontend and backend inherits.
    #[serde(default)]
    pub defaults: LimitsSection,
    /// `[[table]]`
    #[serde(default, rename = "table")]
    pub tables: Vec<TableSection>,
    /// `[[frontend]]`
    #[serde(default, rename = "frontend")]
    pub frontends: Vec<FrontendSection>,
    /// `[[backend]]`
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendSection>,
}

/// `[node]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name, unique in the fleet.
    pub name: Option<String>,
    /// Directory for runtime membership and snapshots.
    pub state_dir: Option<String>,
    /// Worker threads; 0 = one per core.
    pub threads: Option<usize>,
    /// Longest wait for in-flight work on shutdown.
    pub drain_timeout: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// gRPC admin listen address.
    pub listen: Option<String>,
}

/// `[metrics]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Prometheus / health listen address.
    pub listen: Option<String>,
}

/// `[tls]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Fleet CA certificate (PEM).
    pub ca: Option<String>,
    /// This node's certificate chain (PEM).
    pub cert: Option<String>,
    /// This node's private key (PEM).
    pub key: Option<String>,
}

/// `[sync]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Replication listen address.
    pub listen: Option<String>,
    /// Seed peers.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
    /// Longest wait of a change before it joins a batch.
    pub flush_interval: Option<String>,
    /// Silence after which a peer's gauges stop counting.
    pub dead_after: Option<String>,
    /// How long to wait for a first snapshot before turning ready with local state.
    pub ready_wait: Option<String>,
}

/// One element of `sync.peers`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Peer node name.
    pub name: Option<String>,
    /// `host:port` of its replication listener.
    pub addr: Option<String>,
}

/// Limits: `[defaults]`, and the per-frontend / per-backend `limits` overrides.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Time to receive the complete head of a connection's first request.
    pub header_timeout: Option<String>,
    /// Time a keep-alive connection may wait between a response and the next request head.
    pub keepalive_timeout: Option<String>,
    /// TCP mode: close when neither side sent a byte for this long.
    pub idle_timeout: Option<String>,
    /// Largest request head in bytes.
    pub max_header_size: Option<usize>,
    /// Concurrent client connections per frontend.
    pub max_connections: Option<usize>,
    /// Time to open a connection to a backend server.
    pub connect_timeout: Option<String>,
    /// Time for a backend to answer with a response head.
    pub response_timeout: Option<String>,
    /// Interval between DNS resolutions of server names.
    pub dns_refresh: Option<String>,
    /// How long an idle pooled backend connection may be reused.
    pub pool_idle_timeout: Option<String>,
}

/// `[[table]]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    /// Table name.
    pub name: Option<String>,
    /// Key type.
    pub key: Option<String>,
    /// Maximum entries.
    pub size: Option<usize>,
    /// Expiry of untouched entries.
    pub expire: Option<String>,
    /// Stored data types.
    #[serde(default)]
    pub store: Vec<String>,
    /// Whether the table is replicated.
    pub sync: Option<bool>,
}

/// `[[frontend]]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendSection {
    /// Frontend name.
    pub name: Option<String>,
    /// Listen address.
    pub bind: Option<String>,
    /// `http` or `tcp`.
    pub mode: Option<String>,
    /// Expect a PROXY protocol header.
    pub accept_proxy: Option<bool>,
    /// Backend name.
    pub backend: Option<String>,
    /// Add a `Via` header.
    pub via: Option<bool>,
    /// Evaluate rules without enforcing them.
    pub dry_run: Option<bool>,
    /// TLS termination.
    pub tls: Option<FrontendTlsSection>,
    /// Rules.
    pub rules: Option<RulesSection>,
    /// Limit overrides.
    pub limits: Option<LimitsSection>,
}

/// `frontend.tls`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendTlsSection {
    /// Certificate chain (PEM).
    pub cert: Option<String>,
    /// Private key (PEM).
    pub key: Option<String>,
}

/// `frontend.rules`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    /// Rules run on accept.
    #[serde(default)]
    pub connection: Vec<String>,
    /// Rules run per HTTP request.
    #[serde(default)]
    pub request: Vec<String>,
}

/// `[[backend]]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// Backend name.
    pub name: Option<String>,
    /// `roundrobin`, `leastconn` or `source`.
    pub balance: Option<String>,
    /// Stickiness: `on src table NAME` or `cookie NAME`.
    pub stick: Option<String>,
    /// Servers.
    #[serde(default)]
    pub servers: Vec<ServerSection>,
    /// Active health check.
    pub check: Option<CheckSection>,
    /// Limit overrides.
    pub limits: Option<LimitsSection>,
}

/// One element of `backend.servers`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Server name.
    pub name: Option<String>,
    /// `host:port`; the host may be a DNS name.
    pub addr: Option<String>,
}

/// `backend.check`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSection {
    /// Interval between checks.
    pub interval: Option<String>,
    /// Time allowed for one check.
    pub timeout: Option<String>,
    /// HTTP path; absent means a TCP connect check.
    pub path: Option<String>,
    /// Consecutive successes that bring a server up.
    pub rise: Option<u32>,
    /// Consecutive failures that take a server down.
    pub fall: Option<u32>,
}
