//! `sluice-sync` owns the stick tables of a sluice node and their fleet semantics: tables of
//! per-key counters, rates, gauges and registers; each node's (each *origin's*) contribution to
//! every entry; the merge of all origins' contributions into the values rules read; expiry,
//! bounded size and eviction; and the change feed that replication drains.
//!
//! The engine is sans-IO: it opens no sockets, spawns no tasks and reads no clock. Callers pass
//! the monotonic time ([`Tick`]) and wall-clock milliseconds for the hybrid logical clock
//! ([`Hlc`]), so tests drive time explicitly. It knows nothing of HTTP, frontends, backends or
//! config files.
//!
//! Main types: [`TableSchema`] (what a table stores), [`Table`] (the sharded table and its
//! hot-path API: [`Table::track`], [`Table::record`], [`Table::read`]), [`Origins`] (the
//! node incarnations contributing to the tables) and [`wire`] (a contribution, one origin's
//! state for one entry and the unit of replication, as it travels, and the check that makes a
//! peer's contribution safe to apply).
//!
//! [`replication`] is the async shell around the engine: mutually authenticated gRPC sessions
//! between peers, snapshots, reconnection and membership. It only moves bytes and timers.

#[cfg(feature = "certs")]
pub mod certs;
pub mod clock;
mod entry;
pub mod error;
mod index;
pub mod key;
mod layout;
pub mod membership;
pub mod origin;
mod rate;
pub mod replication;
pub mod schema;
mod shard;
pub mod sweeper;
pub mod table;
pub mod tables;
pub mod wire;

pub use clock::{Hlc, NodeClock, Stamp, Tick};
pub use entry::Event;
pub use error::{ContributionError, KeyError, SchemaError};
pub use key::Key;
pub use origin::{LOCAL, OriginId, OriginName, Origins};
pub use schema::{DataType, KeyType, Kind, Stored, TableSchema};
pub use shard::MAX_CONSUMERS;
pub use table::{
    Applied, Consumer, Cursor, EntryView, FeedError, OriginView, SetError, Table, TableStats,
    Tracked,
};
pub use tables::{CheckedMessage, Incoming, MessageError, ReconcileError, Step, Tables};
