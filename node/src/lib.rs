//! `sluice-node` is the sluice proxy: config loading and validation, listeners, TCP and HTTP
//! proxying, the rules engine, balancing, health checks, stickiness, the admin API and metrics.
//! The `sluice` binary (`main.rs`) only parses arguments, installs tracing, and drives the
//! node's lifecycle from signals; everything else lives here so tests can run nodes in-process.
//!
//! It uses the stick-table engine of `sluice-sync` and never sees the replication wire format.
//!
//! # Layout
//!
//! - [`config`]: the file format, environment overrides, validation into typed values.
//! - [`node`]: [`Node`] starts, reloads and drains everything, and publishes its [`Phase`].
//! - `listener`, `conn`: accept loops under `max_connections`; per connection the PROXY
//!   header ([`proxy_protocol`]), the connection-rules hook, TLS ([`tls`]).
//! - `http_proxy`, `tcp_proxy`: the two proxying modes.
//! - [`backend`]: servers, DNS, health checks, balancing, connection pools.
//! - [`metrics`] and `ops`: atomics on the hot path, Prometheus text on scrape.
//! - [`admin`]: the admin API (`sluice.admin.v1`) that `sluicectl` speaks.
//! - [`rules`]: the rules language and its engine on the request path: tracking into the stick
//!   tables, `allow`/`deny`/`reject`/`tarpit`, dry runs, the `429` rate headers.

pub mod admin;
pub mod backend;
mod cluster;
pub mod config;
mod conn;
pub mod demo;
mod http_proxy;
pub mod io;
mod listener;
pub mod metrics;
pub mod node;
mod ops;
pub mod proxy_protocol;
pub mod rules;
mod sched;
mod tcp_proxy;
pub mod tls;

pub use config::{Config, ConfigError};
pub use conn::ConnCtx;
pub use listener::Frontend;
pub use node::{Node, NodeError, Phase, ServerState};
