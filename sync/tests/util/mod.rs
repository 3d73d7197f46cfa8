//! Test nodes: a table with its own origins and clock, exchanging contributions through the
//! real wire encoding, as peers do, but with time and delivery driven by the test.

#![allow(dead_code, unreachable_pub)]

pub mod fleet;
pub mod fleet_raw;

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::sync::v1 as pb;
use sluice_sync::{
    Applied, Consumer, Cursor, DataType, Hlc, Key, KeyType, OriginName, Origins, Table,
    TableSchema, Tick, wire,
};

pub const EXPIRE: Duration = Duration::from_secs(60);

pub fn schema(store: &[&str]) -> TableSchema {
    schema_sized(store, 1000)
}

pub fn schema_sized(store: &[&str], size: usize) -> TableSchema {
    let store = TableSchema::parse_store(store).expect("store list");
    TableSchema::new("t", KeyType::Ip, size, EXPIRE, store, true).expect("schema")
}

pub fn ip(s: &str) -> Key {
    KeyType::Ip.parse_key(s).expect("ip")
}

/// One simulated node.
pub struct Node {
    pub name: OriginName,
    pub origins: Arc<Origins>,
    pub table: Table,
    /// This node's clock runs `offset` ms ahead of the test's: rates and expiry must not
    /// depend on peers' clocks agreeing.
    pub offset: u32,
}

impl Node {
    pub fn new(name: &str, schema: TableSchema) -> Node {
        Self::with_offset(name, schema, 0)
    }

    pub fn with_offset(name: &str, schema: TableSchema, offset: u32) -> Node {
        let name = OriginName {
            node: name.into(),
            incarnation: 1,
        };
        let origins = Arc::new(Origins::new(name.clone(), 5_000));
        let table = Table::new(schema, origins.clone(), Arc::new(Hlc::new()));
        Node {
            name,
            origins,
            table,
            offset,
        }
    }

    /// The node's own clock at test time `t` (ms).
    pub fn tick(&self, t: u32) -> Tick {
        Tick(t.wrapping_add(self.offset))
    }

    /// Every contribution this node holds, encoded.
    pub fn snapshot(&self, t: u32) -> Vec<(OriginName, pb::Contribution)> {
        let mut out = Vec::new();
        let mut cur = Cursor::new();
        while !cur.is_done() {
            self.table
                .snapshot_chunk(&mut cur, 7, self.tick(t), None, &mut out);
        }
        let mut all = Vec::new();
        for tc in &out {
            let o = tc.origin.as_ref().expect("an origin");
            let o = OriginName {
                node: o.node.clone(),
                incarnation: o.incarnation,
            };
            all.extend(owned(tc).into_iter().map(|c| (o.clone(), c)));
        }
        all
    }

    /// The local changes a consumer has not taken yet, encoded.
    pub fn take(&self, consumer: &mut Consumer, t: u32) -> Vec<(OriginName, pb::Contribution)> {
        let mut out = pb::TableContributions::default();
        while self.table.take_changes(consumer, 5, self.tick(t), &mut out) > 0 {}
        owned(&out)
            .into_iter()
            .map(|c| (self.name.clone(), c))
            .collect()
    }

    /// Decodes and applies one contribution from a peer, as a session would.
    pub fn deliver(&self, from: &OriginName, c: &pb::Contribution, t: u32) -> Applied {
        let c = wire::check(c.into(), self.table.schema()).expect("well-formed contribution");
        let id = self.origins.intern(from).expect("origin room");
        self.table.apply(id, &c, self.tick(t))
    }

    /// Decodes and applies a run of one peer's contributions at once, as a message's are.
    pub fn deliver_run(&self, from: &OriginName, cs: &[pb::Contribution], t: u32) {
        let checked: Vec<_> = cs
            .iter()
            .map(|c| wire::check(c.into(), self.table.schema()).expect("well-formed contribution"))
            .collect();
        let id = self.origins.intern(from).expect("origin room");
        self.table.apply_all(id, &checked, self.tick(t));
    }

    /// Sends everything this node holds to `other`.
    pub fn sync_to(&self, other: &Node, t: u32) {
        for (o, c) in self.snapshot(t) {
            other.deliver(&o, &c, t);
        }
    }

    pub fn read(&self, key: &Key, ty: DataType, t: u32) -> Option<u64> {
        self.table.read_key(key, ty, self.tick(t))
    }
}

/// The contributions of an encoded message, as generated messages.
pub fn owned(tc: &pb::TableContributions) -> Vec<pb::Contribution> {
    tc.contributions()
        .map(|c| {
            c.and_then(|c| c.to_message())
                .expect("well-formed contribution")
        })
        .collect()
}

/// Brings every node up to date with every other.
pub fn full_sync(nodes: &[&Node], t: u32) {
    for a in nodes {
        for b in nodes {
            if a.name != b.name {
                a.sync_to(b, t);
            }
        }
    }
}
