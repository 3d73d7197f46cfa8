//! The JSON documents of the admin commands (`--json`). They follow the `sluice.admin.v1`
//! messages field for field, with one change that makes them natural to read and to query
//! with `jq`: an entry's values are an object keyed by field name, in the table's store order
//! (`"values": {"http_req_rate": 12, "gpc0": 1, "server_id": null}`), `null` for a register
//! nobody has set.

use serde::Serialize;
use serde::ser::SerializeMap;
use sluice_proto::admin::v1 as pb;

/// `status`
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) node: String,
    pub(crate) version: String,
    pub(crate) uptime_ms: u64,
    pub(crate) ready: bool,
    pub(crate) replication: bool,
    pub(crate) peers: Vec<Peer>,
    pub(crate) tables: Vec<Table>,
}

impl From<pb::StatusResponse> for Status {
    fn from(s: pb::StatusResponse) -> Self {
        Status {
            node: s.node,
            version: s.version,
            uptime_ms: s.uptime_ms,
            ready: s.ready,
            replication: s.replication,
            peers: s.peers.into_iter().map(Peer::from).collect(),
            tables: s.tables.into_iter().map(Table::from).collect(),
        }
    }
}

/// A table's definition and counters (`table list`, `status`).
#[derive(Debug, Serialize)]
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) expire_ms: u64,
    pub(crate) store: Vec<String>,
    pub(crate) sync: bool,
    pub(crate) entries: u64,
    pub(crate) evictions: u64,
    pub(crate) evictions_unexpired: u64,
    pub(crate) expired: u64,
}

impl From<pb::Table> for Table {
    fn from(t: pb::Table) -> Self {
        Table {
            name: t.name,
            key: t.key,
            size: t.size,
            expire_ms: t.expire_ms,
            store: t.store,
            sync: t.sync,
            entries: t.entries,
            evictions: t.evictions,
            evictions_unexpired: t.evictions_unexpired,
            expired: t.expired,
        }
    }
}

/// `table list`
#[derive(Debug, Serialize)]
pub(crate) struct Tables {
    pub(crate) tables: Vec<Table>,
}

/// A fleet member (`peer list|add|remove`, `status`).
#[derive(Debug, Serialize)]
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) up: bool,
    pub(crate) lag_ms: u64,
    pub(crate) sessions: u64,
    pub(crate) updates_sent: u64,
    pub(crate) updates_received: u64,
    pub(crate) last_error: Option<String>,
}

impl From<pb::Peer> for Peer {
    fn from(p: pb::Peer) -> Self {
        Peer {
            name: p.name,
            addr: p.addr,
            up: p.up,
            lag_ms: p.lag_ms,
            sessions: p.sessions,
            updates_sent: p.updates_sent,
            updates_received: p.updates_received,
            last_error: p.last_error,
        }
    }
}

/// `peer list|add|remove`: the peers (after the change).
#[derive(Debug, Serialize)]
pub(crate) struct Peers {
    pub(crate) peers: Vec<Peer>,
}

/// `table show`
#[derive(Debug, Serialize)]
pub(crate) struct Show {
    pub(crate) table: String,
    pub(crate) entries: Vec<Entry>,
}

/// `table set`: the entry after the change.
#[derive(Debug, Serialize)]
pub(crate) struct Set {
    pub(crate) table: String,
    pub(crate) entry: Option<Entry>,
}

/// `table clear`
#[derive(Debug, Serialize)]
pub(crate) struct Clear {
    pub(crate) table: String,
    /// The key cleared; `null` for the whole table.
    pub(crate) key: Option<String>,
    /// Entries the node held that the reset applied to.
    pub(crate) cleared: u64,
}

/// One entry with its fleet-merged values and, with `--origins`, each origin's contribution.
#[derive(Debug, Serialize)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) idle_ms: u64,
    pub(crate) values: Values,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) origins: Option<Vec<Contribution>>,
}

impl Entry {
    /// `with_origins`: whether origins were asked for (so an empty list still shows).
    pub(crate) fn new(e: pb::Entry, with_origins: bool) -> Entry {
        Entry {
            key: e.key,
            idle_ms: e.idle_ms,
            values: Values(e.values),
            origins: with_origins.then(|| e.origins.into_iter().map(Contribution::from).collect()),
        }
    }
}

/// One origin's contribution to an entry.
#[derive(Debug, Serialize)]
pub(crate) struct Contribution {
    pub(crate) node: String,
    pub(crate) incarnation: u64,
    pub(crate) version: u64,
    pub(crate) idle_ms: u64,
    pub(crate) reset_at_ms: u64,
    pub(crate) values: Values,
}

impl From<pb::Contribution> for Contribution {
    fn from(c: pb::Contribution) -> Self {
        Contribution {
            node: c.node,
            incarnation: c.incarnation,
            version: c.version,
            idle_ms: c.idle_ms,
            reset_at_ms: c.reset_at_ms,
            values: Values(c.values),
        }
    }
}

/// Values in store order, serialized as one object.
#[derive(Debug)]
pub(crate) struct Values(pub(crate) Vec<pb::Value>);

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for v in &self.0 {
            map.serialize_entry(&v.field, &v.value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_an_object_in_store_order_with_null_for_unset() {
        let e = Entry::new(
            pb::Entry {
                key: "10.0.0.7".into(),
                idle_ms: 5,
                values: vec![
                    pb::Value {
                        field: "http_req_rate".into(),
                        value: Some(12),
                        period_ms: 10_000,
                    },
                    pb::Value {
                        field: "gpc0".into(),
                        value: Some(1),
                        period_ms: 0,
                    },
                    pb::Value {
                        field: "server_id".into(),
                        value: None,
                        period_ms: 0,
                    },
                ],
                origins: vec![],
            },
            false,
        );
        assert_eq!(
            serde_json::to_string(&e).expect("serialize"),
            r#"{"key":"10.0.0.7","idle_ms":5,"values":{"http_req_rate":12,"gpc0":1,"server_id":null}}"#
        );
    }
}
