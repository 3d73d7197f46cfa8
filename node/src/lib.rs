//! `sluice-node` is the sluice proxy: config loading and validation, listeners, TCP and HTTP
//! proxying, the rules engine, balancing, health checks, stickiness, the admin API and metrics.
//! The `sluice` binary (`main.rs`) only parses arguments, installs tracing, and drives the
//! node's lifecycle from signals; everything else lives here so tests can run nodes in-process.
//!
//! It uses the stick-table engine of `sluice-sync` and never sees the replication wire format.
