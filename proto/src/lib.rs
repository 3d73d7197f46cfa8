//! `sluice-proto` owns the wire format of sluice and nothing else: the versioned protobuf
//! packages `sluice.sync.v1` (replication between nodes) and `sluice.admin.v1` (the admin
//! API of a node, spoken by `sluicectl`), compiled at build time by `protox` so no system
//! `protoc` is needed.
//!
//! Domain types live in the crates that use these messages; they convert with `From`/`TryFrom`
//! at their edge, so generated `Option`/`oneof` shapes never leak into the engine.

/// `sluice.sync.v1`: replication between nodes.
pub mod sync {
    /// Version 1 of the replication protocol.
    pub mod v1 {
        #![allow(
            missing_docs,
            unreachable_pub,
            missing_debug_implementations,
            rust_2018_idioms
        )]
        include!(concat!(env!("OUT_DIR"), "/sluice.sync.v1.rs"));
        pub use crate::table_contributions::{
            ContributionIter, ContributionRef, TableContributions,
        };
    }
}

mod table_contributions;

/// `sluice.admin.v1`: the admin API of a node, spoken by `sluicectl`.
pub mod admin {
    /// Version 1 of the admin API.
    pub mod v1 {
        #![allow(
            missing_docs,
            unreachable_pub,
            missing_debug_implementations,
            rust_2018_idioms
        )]
        include!(concat!(env!("OUT_DIR"), "/sluice.admin.v1.rs"));
    }
}
