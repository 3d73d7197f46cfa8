//! `sluice-sync` owns the stick tables of a sluice node and their fleet semantics: tables of
//! per-key counters, rates, gauges and registers; each node's (each *origin's*) contribution to
//! every entry; the merge of all origins' contributions into the values rules read; expiry,
//! bounded size and eviction; and the change feed that replication drains.
//!
//! The engine is sans-IO: it opens no sockets, spawns no tasks and reads no clock. Callers pass
//! the monotonic time (`Tick`) and the hybrid logical clock, so tests drive time explicitly.
//! It knows nothing of HTTP, frontends, backends or config files.

pub mod error;
pub mod schema;

pub use error::{KeyError, SchemaError};
pub use schema::{DataType, Kind, KeyType, Stored, TableSchema};
