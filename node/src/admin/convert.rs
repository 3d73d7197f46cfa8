//! The edge between `sluice.admin.v1` and the table engine: requests checked into engine
//! types (with a gRPC status naming what is wrong), engine views turned into messages.

use sluice_proto::admin::v1 as pb;
use sluice_sync::replication::PeerStatus;
use sluice_sync::{DataType, EntryView, Hlc, Key, Kind, Table, Tables};
use tonic::Status;

// === checking requests ===

/// The table called `name`, or `NOT_FOUND` listing the tables there are.
pub(super) fn table(
    tables: &Tables,
    node: &str,
    name: &str,
) -> Result<std::sync::Arc<Table>, Status> {
    tables.get(name).ok_or_else(|| {
        let all = tables.all();
        let known = if all.is_empty() {
            "it has no tables".to_owned()
        } else {
            format!(
                "its tables: {}",
                all.keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Status::not_found(format!("no table `{name}` on `{node}` ({known})"))
    })
}

/// A key in the text form of the table's key type.
pub(super) fn key(table: &Table, text: &str) -> Result<Key, Status> {
    let schema = table.schema();
    schema.key.parse_key(text).map_err(|e| {
        Status::invalid_argument(format!(
            "bad key for table `{}`, which is keyed by {}: {e}",
            schema.name, schema.key
        ))
    })
}

/// A data type the table stores, named as in the config.
pub(super) fn stored_field(table: &Table, field: &str) -> Result<DataType, Status> {
    let schema = table.schema();
    let stored = || {
        schema
            .store
            .iter()
            .map(|s| s.ty.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ty: DataType = field.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "unknown field `{field}`: not a data type (table `{}` stores: {})",
            schema.name,
            stored()
        ))
    })?;
    if !schema.stores(ty) {
        return Err(Status::invalid_argument(format!(
            "table `{}` does not store `{field}` (it stores: {})",
            schema.name,
            stored()
        )));
    }
    Ok(ty)
}

/// The fields of a `SetEntry`, all checked: stored, settable, each once, at least one.
pub(super) fn assignments(
    table: &Table,
    fields: &[pb::Assignment],
) -> Result<Vec<(DataType, u64)>, Status> {
    if fields.is_empty() {
        return Err(Status::invalid_argument(
            "no field to set: give at least one FIELD=VALUE, e.g. gpc0=1",
        ));
    }
    let mut out: Vec<(DataType, u64)> = Vec::with_capacity(fields.len());
    for a in fields {
        let ty = stored_field(table, &a.field)?;
        match ty.kind() {
            Kind::Counter | Kind::Register => {}
            Kind::Rate => {
                return Err(Status::invalid_argument(format!(
                    "`{ty}` is a rate, measured from traffic: it cannot be set \
                     (`table clear` resets it)"
                )));
            }
            Kind::Gauge => {
                return Err(Status::invalid_argument(format!(
                    "`{ty}` is a gauge of live connections: it cannot be set"
                )));
            }
        }
        if out.iter().any(|(t, _)| *t == ty) {
            return Err(Status::invalid_argument(format!(
                "field `{ty}` is given twice"
            )));
        }
        out.push((ty, a.value));
    }
    Ok(out)
}

/// A checked `--where` condition.
#[derive(Clone, Copy, Debug)]
pub(super) struct Filter {
    ty: DataType,
    op: pb::Op,
    value: u64,
}

impl Filter {
    pub(super) fn new(table: &Table, c: &pb::Condition) -> Result<Filter, Status> {
        let ty = stored_field(table, &c.field)?;
        let op = match pb::Op::try_from(c.op) {
            Ok(pb::Op::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "the condition on `{ty}` has no comparison operator \
                     (one of > >= < <= == !=, or gt ge lt le eq ne)"
                )));
            }
            Ok(op) => op,
        };
        Ok(Filter {
            ty,
            op,
            value: c.value,
        })
    }

    /// Whether the entry's merged value satisfies the condition; an unset register never does.
    pub(super) fn matches(&self, e: &EntryView) -> bool {
        let Some(v) = e
            .values
            .iter()
            .find(|(t, _)| *t == self.ty)
            .and_then(|(_, v)| *v)
        else {
            return false;
        };
        match self.op {
            pb::Op::Gt => v > self.value,
            pb::Op::Ge => v >= self.value,
            pb::Op::Lt => v < self.value,
            pb::Op::Le => v <= self.value,
            pb::Op::Eq => v == self.value,
            pb::Op::Ne => v != self.value,
            pb::Op::Unspecified => false,
        }
    }
}

// === building responses ===

/// A table's definition and counters.
pub(super) fn table_info(t: &Table) -> pb::Table {
    let s = t.schema();
    let stats = t.stats();
    pb::Table {
        name: s.name.clone(),
        key: s.key.to_string(),
        size: s.size as u64,
        expire_ms: u64::from(s.expire_ms),
        store: s.store.iter().map(ToString::to_string).collect(),
        sync: s.sync,
        entries: stats.entries as u64,
        evictions: stats.evictions,
        evictions_unexpired: stats.evictions_unexpired,
        expired: stats.expired,
    }
}

/// An entry, its values in the table's store order.
pub(super) fn entry(t: &Table, e: EntryView) -> pb::Entry {
    let origins = e
        .origins
        .iter()
        .map(|o| {
            let name = t.origins().name(o.origin);
            pb::Contribution {
                node: name
                    .as_ref()
                    .map_or_else(|| format!("origin-{}", o.origin), |n| n.node.clone()),
                incarnation: name.map_or(0, |n| n.incarnation),
                version: o.version,
                idle_ms: u64::from(o.idle_ms),
                reset_at_ms: if o.epoch == 0 {
                    0
                } else {
                    Hlc::wall_ms(o.epoch)
                },
                values: values(t, &o.values),
            }
        })
        .collect();
    pb::Entry {
        key: t.schema().key.format_key(&e.key),
        idle_ms: u64::from(e.idle_ms),
        values: values(t, &e.values),
        origins,
    }
}

fn values(t: &Table, vals: &[(DataType, Option<u64>)]) -> Vec<pb::Value> {
    t.schema()
        .store
        .iter()
        .map(|s| pb::Value {
            field: s.ty.name().to_owned(),
            value: vals
                .iter()
                .find(|(ty, _)| *ty == s.ty)
                .and_then(|(_, v)| *v),
            period_ms: s.period().map_or(0, |p| p.as_millis() as u64),
        })
        .collect()
}

/// A peer as replication reports it.
pub(super) fn peer(p: PeerStatus) -> pb::Peer {
    pb::Peer {
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
