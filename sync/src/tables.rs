//! The tables of a node: looked up by name by the replication layer and the admin API, and
//! reconciled with a new config on reload (kept, added, dropped; a changed schema is refused
//! rather than silently wiping a table's contents).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::RwLock;

use sluice_proto::sync::v1 as pb;

use crate::clock::{Hlc, Tick};
use crate::error::ContributionError;
use crate::key::Key;
use crate::origin::{OriginId, OriginName, Origins, OriginsFull};
use crate::schema::TableSchema;
use crate::table::{Listener, Table};
use crate::wire;

/// A reload that would change a table's schema.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The schema of a table that holds data changed.
    #[error(
        "table `{name}` changed its definition ({old} -> {new}); its contents would be lost: \
         give the new definition another name, or restart the node to start it empty"
    )]
    SchemaChanged {
        /// The table.
        name: String,
        /// Its current definition.
        old: String,
        /// The definition asked for.
        new: String,
    },
}

/// A message of contributions refused as a whole (nothing of it was applied).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// It names a table this node does not have or does not replicate.
    #[error("unknown or unreplicated table `{0}`")]
    UnknownTable(String),
    /// A table's contributions come without an origin.
    #[error("contributions without an origin")]
    NoOrigin,
    /// The origin's node name is not a valid name.
    #[error("bad origin name `{0}`")]
    BadOrigin(String),
    /// A live batch carries contributions of an origin other than its sender.
    #[error("live contributions of origin {origin} from peer {sender}")]
    NotTheSender {
        /// The origin named in the message.
        origin: OriginName,
        /// The peer that sent it.
        sender: OriginName,
    },
    /// No room for another origin.
    #[error(transparent)]
    OriginsFull(#[from] OriginsFull),
    /// A contribution that does not decode.
    #[error("table `{table}`: {source}")]
    Malformed {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// A contribution that does not fit the table's schema.
    #[error("table `{table}`: {source}")]
    Contribution {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: ContributionError,
    },
}

/// A message from a peer being read and checked, a slice at a time ([`Tables::receive`]):
/// nothing of it is applied until every contribution passed, so a bad one anywhere leaves the
/// tables untouched, yet a node can answer requests between two slices of a large message.
#[derive(Debug)]
pub struct Incoming<'m> {
    msg: &'m pb::Contributions,
    /// Per table of the message: the table, the origin, how many contributions were read.
    runs: Vec<(Arc<Table>, OriginId, usize)>,
    /// The run being read, and where in it.
    run: usize,
    rest: Option<wire::ContributionIter<'m>>,
    read: Vec<Parked<'m>>,
    /// Every read contribution's data, in order: one vector for the whole message.
    data: Vec<wire::Datum>,
}

/// A checked contribution whose data wait in [`Incoming::data`] until the whole message is
/// read (they cannot be borrowed while the vector still grows).
#[derive(Debug)]
struct Parked<'m> {
    key: Key,
    raw_key: &'m [u8],
    version: u64,
    idle_ms: u32,
    epoch: u64,
    data: Range<usize>,
}

/// Where [`Incoming::check`] left a message.
#[derive(Debug)]
pub enum Step<'m> {
    /// Contributions remain to be read and checked.
    More(Incoming<'m>),
    /// Every contribution passed.
    Checked(CheckedMessage<'m>),
}

impl<'m> Incoming<'m> {
    /// Reads and checks up to `n` more contributions.
    pub fn check(mut self, n: usize) -> Result<Step<'m>, MessageError> {
        let mut left = n;
        while left > 0 {
            let Some(((table, _, count), tc)) = self
                .runs
                .get_mut(self.run)
                .zip(self.msg.tables.get(self.run))
            else {
                break;
            };
            let start = self.data.len();
            let rest = self.rest.get_or_insert_with(|| tc.contributions());
            let Some(r) = rest.next_with_data(&mut self.data) else {
                self.run += 1;
                self.rest = None;
                continue;
            };
            let r = r.map_err(|source| MessageError::Malformed {
                table: table.name().to_owned(),
                source,
            })?;
            let c = wire::Contribution {
                key: r.key,
                version: r.version,
                idle_ms: r.idle_ms,
                epoch: r.epoch,
                data: self.data.get(start..).unwrap_or_default(),
            };
            let key = wire::check(c, table.schema())
                .map_err(|source| MessageError::Contribution {
                    table: table.name().to_owned(),
                    source,
                })?
                .into_key();
            self.read.push(Parked {
                key,
                raw_key: r.key,
                version: r.version,
                idle_ms: r.idle_ms,
                epoch: r.epoch,
                data: start..self.data.len(),
            });
            *count += 1;
            left -= 1;
        }
        Ok(if self.run < self.runs.len() {
            Step::More(self)
        } else {
            Step::Checked(CheckedMessage {
                runs: self.runs,
                read: self.read,
                data: self.data,
            })
        })
    }

    /// Reads and checks every contribution left.
    pub fn check_all(mut self) -> Result<CheckedMessage<'m>, MessageError> {
        loop {
            match self.check(usize::MAX)? {
                Step::Checked(m) => return Ok(m),
                Step::More(rest) => self = rest,
            }
        }
    }
}

/// A message from a peer whose every contribution passed: it applies in as many steps as the
/// caller likes. Each contribution merges on its own, so a message applied in part (its
/// session ended halfway) leaves the tables as if the peer had sent only that part.
#[derive(Debug)]
pub struct CheckedMessage<'m> {
    runs: Vec<(Arc<Table>, OriginId, usize)>,
    read: Vec<Parked<'m>>,
    data: Vec<wire::Datum>,
}

impl CheckedMessage<'_> {
    /// How many contributions it holds.
    pub fn len(&self) -> usize {
        self.read.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty()
    }

    /// Applies the contributions at positions `range` of the message.
    pub fn apply(&self, range: Range<usize>, now: Tick) {
        let mut run = Vec::new();
        let mut start = 0;
        for (table, origin, n) in &self.runs {
            let end = start + n;
            let Some(parked) = self.read.get(range.start.max(start)..range.end.min(end)) else {
                start = end;
                continue;
            };
            run.clear();
            run.extend(parked.iter().map(|p| {
                let c = wire::Contribution {
                    key: p.raw_key,
                    version: p.version,
                    idle_ms: p.idle_ms,
                    epoch: p.epoch,
                    data: self.data.get(p.data.clone()).unwrap_or_default(),
                };
                wire::Checked::trusted(p.key.clone(), c)
            }));
            table.apply_all(*origin, &run, now);
            start = end;
        }
    }
}

/// The node's tables, its origins and its hybrid logical clock.
pub struct Tables {
    origins: Arc<Origins>,
    hlc: Arc<Hlc>,
    map: RwLock<Arc<BTreeMap<String, Arc<Table>>>>,
    listener: RwLock<Option<Listener>>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("tables", &self.map.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Tables {
    /// No tables yet. `local` is this node's incarnation; remote origins stop counting in gauges
    /// `dead_after_ms` after they were last heard.
    pub fn new(local: OriginName, dead_after_ms: u32) -> Tables {
        Tables {
            origins: Arc::new(Origins::new(local, dead_after_ms)),
            hlc: Arc::new(Hlc::new()),
            map: RwLock::new(Arc::new(BTreeMap::new())),
            listener: RwLock::new(None),
        }
    }

    /// The node's origins.
    pub fn origins(&self) -> &Arc<Origins> {
        &self.origins
    }

    /// The node's hybrid logical clock.
    pub fn hlc(&self) -> &Arc<Hlc> {
        &self.hlc
    }

    /// A table by name.
    pub fn get(&self, name: &str) -> Option<Arc<Table>> {
        self.map.read().get(name).cloned()
    }

    /// Every table, by name.
    pub fn all(&self) -> Arc<BTreeMap<String, Arc<Table>>> {
        self.map.read().clone()
    }

    /// Checks a message of contributions from a peer against the tables, then applies it: a
    /// bad contribution anywhere applies nothing. Returns how many contributions it held.
    pub fn apply_message(
        &self,
        msg: &pb::Contributions,
        live: Option<&OriginName>,
        now: Tick,
    ) -> Result<usize, MessageError> {
        let m = self.receive(msg, live)?.check_all()?;
        m.apply(0..m.len(), now);
        Ok(m.len())
    }

    /// Starts reading a message of contributions from a peer: checks its tables and origins,
    /// then [`Incoming::check`] reads and checks its contributions. `live` (the sender) is set
    /// for live batches, which may carry only the sender's own contributions; snapshots carry
    /// every origin's.
    pub fn receive<'m>(
        &self,
        msg: &'m pb::Contributions,
        live: Option<&OriginName>,
    ) -> Result<Incoming<'m>, MessageError> {
        let mut runs = Vec::with_capacity(msg.tables.len());
        for tc in &msg.tables {
            let table = self
                .get(&tc.table)
                .filter(|t| t.schema().sync)
                .ok_or_else(|| MessageError::UnknownTable(tc.table.clone()))?;
            let origin = tc.origin.as_ref().ok_or(MessageError::NoOrigin)?;
            let origin = OriginName {
                node: origin.node.clone(),
                incarnation: origin.incarnation,
            };
            if crate::membership::check_name(&origin.node).is_err() {
                return Err(MessageError::BadOrigin(origin.node));
            }
            if let Some(sender) = live
                && origin != *sender
            {
                return Err(MessageError::NotTheSender {
                    origin,
                    sender: sender.clone(),
                });
            }
            let id = self.origins.intern(&origin)?;
            runs.push((table, id, 0));
        }
        let total: usize = msg.tables.iter().map(|t| t.len()).sum();
        // A contribution carries each stored type at most once (more fails its check), so
        // this is room for every datum of a valid message: the vector never moves.
        let data: usize = msg
            .tables
            .iter()
            .zip(&runs)
            .map(|(tc, (table, _, _))| tc.len() * table.schema().store.len())
            .sum();
        Ok(Incoming {
            msg,
            runs,
            run: 0,
            rest: None,
            read: Vec::with_capacity(total),
            data: Vec::with_capacity(data),
        })
    }

    /// The replicated tables (`sync = true`), by name.
    pub fn replicated(&self) -> Vec<Arc<Table>> {
        self.map
            .read()
            .values()
            .filter(|t| t.schema().sync)
            .cloned()
            .collect()
    }

    /// Makes the set of tables match `schemas`: a table whose definition is unchanged keeps its
    /// contents, a new one starts empty, one no longer listed is dropped. If any listed table
    /// exists with another definition, nothing changes and the error says which.
    pub fn reconcile(&self, schemas: Vec<TableSchema>) -> Result<(), ReconcileError> {
        let mut map = self.map.write();
        check(&map, &schemas)?;
        let listener = self.listener.read().clone();
        let mut next = BTreeMap::new();
        for s in schemas {
            let t = match map.get(&s.name) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(Table::new(s, self.origins.clone(), self.hlc.clone()));
                    if let Some(l) = &listener {
                        t.set_listener(l.clone());
                    }
                    t
                }
            };
            next.insert(t.name().to_string(), t);
        }
        *map = Arc::new(next);
        Ok(())
    }

    /// Whether [`Tables::reconcile`] would accept `schemas`, changing nothing: a reload checks
    /// everything that can fail before it changes anything.
    pub fn check(&self, schemas: &[TableSchema]) -> Result<(), ReconcileError> {
        check(&self.map.read(), schemas)
    }

    /// Whether reconciling with `schemas` would change the set of replicated tables (then
    /// replication sessions must restart to compare schemas again).
    pub fn replicated_set_differs(&self, schemas: &[TableSchema]) -> bool {
        let mut now: Vec<String> = self.schemas();
        let mut next: Vec<String> = schemas
            .iter()
            .filter(|s| s.sync)
            .map(|s| s.fingerprint())
            .collect();
        now.sort();
        next.sort();
        now != next
    }

    /// Installs the change listener on every table, present and future.
    pub fn set_listener(&self, l: Listener) {
        *self.listener.write() = Some(l.clone());
        for t in self.map.read().values() {
            t.set_listener(l.clone());
        }
    }

    /// The replicated tables' definitions, one line each, sorted: what two peers must agree on.
    pub fn schemas(&self) -> Vec<String> {
        self.map
            .read()
            .values()
            .filter(|t| t.schema().sync)
            .map(|t| t.schema().fingerprint())
            .collect()
    }

    /// A short digest of [`Tables::schemas`] (FNV-1a, hex): equal digests, equal schemas.
    pub fn digest(&self) -> String {
        digest(&self.schemas())
    }
}

/// The digest of a list of schema fingerprints.
pub fn digest(schemas: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in schemas {
        for b in s.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn check(
    map: &BTreeMap<String, Arc<Table>>,
    schemas: &[TableSchema],
) -> Result<(), ReconcileError> {
    for s in schemas {
        if let Some(t) = map.get(&s.name)
            && t.schema() != s
        {
            return Err(ReconcileError::SchemaChanged {
                name: s.name.clone(),
                old: describe(t.schema()),
                new: describe(s),
            });
        }
    }
    Ok(())
}

fn describe(s: &TableSchema) -> String {
    format!(
        "key {}, size {}, expire {}ms, store [{}], sync {}",
        s.key,
        s.size,
        s.expire_ms,
        s.store
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        s.sync
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Tick;
    use crate::entry::Event;
    use crate::key::Key;
    use crate::schema::{DataType, KeyType};
    use std::time::Duration;

    fn schema(name: &str, store: &[&str], sync: bool) -> TableSchema {
        let store = TableSchema::parse_store(store).unwrap();
        TableSchema::new(name, KeyType::Ip, 100, Duration::from_secs(60), store, sync).unwrap()
    }

    fn node(name: &str) -> Tables {
        Tables::new(
            OriginName {
                node: name.into(),
                incarnation: 1,
            },
            5000,
        )
    }

    #[test]
    fn reload_keeps_unchanged_tables_adds_new_drops_removed_and_refuses_changes() {
        let tables = node("a");
        tables
            .reconcile(vec![
                schema("t1", &["gpc0"], true),
                schema("t2", &["gpc0"], false),
            ])
            .unwrap();
        let k = Key::from_int(1);
        let t1 = tables.get("t1").unwrap();
        let mut h = t1.track(k.clone(), Tick(0));
        t1.record(&mut h, Event::IncGpc0(3), Tick(0));

        tables
            .reconcile(vec![
                schema("t1", &["gpc0"], true),
                schema("t3", &["gpc1"], true),
            ])
            .unwrap();
        assert_eq!(
            tables
                .get("t1")
                .unwrap()
                .read_key(&k, DataType::Gpc0, Tick(1)),
            Some(3),
            "kept"
        );
        assert!(tables.get("t2").is_none(), "dropped");
        assert!(tables.get("t3").is_some_and(|t| t.is_empty()), "added");

        let err = tables
            .reconcile(vec![schema("t1", &["gpc1"], true)])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("table `t1` changed its definition"),
            "{err}"
        );
        assert!(
            tables.get("t3").is_some(),
            "a refused reload changes nothing"
        );
    }

    #[test]
    fn digest_covers_replicated_schemas_only() {
        let a = node("a");
        let b = node("b");
        a.reconcile(vec![
            schema("t", &["gpc0"], true),
            schema("local", &["gpc0"], false),
        ])
        .unwrap();
        b.reconcile(vec![schema("t", &["gpc0"], true)]).unwrap();
        assert_eq!(a.digest(), b.digest());
        b.reconcile(vec![schema("t", &["gpc0", "gpc1"], true)])
            .unwrap_err();
        let c = node("c");
        c.reconcile(vec![schema("t", &["gpc1"], true)]).unwrap();
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn a_checked_message_applies_in_steps_across_its_tables() {
        let tables = node("a");
        tables
            .reconcile(vec![
                schema("t1", &["gpc0"], true),
                schema("t2", &["gpc0"], true),
            ])
            .unwrap();
        let gpc0 = |n: i64| pb::Datum {
            r#type: DataType::Gpc0.wire(),
            value: n,
            ..Default::default()
        };
        let run = |table: &str, node: &str, keys: std::ops::Range<u32>| {
            let mut tc = pb::TableContributions::new(
                table,
                pb::Origin {
                    node: node.into(),
                    incarnation: 1,
                },
            );
            for k in keys {
                let key = Key::from_ip(std::net::Ipv4Addr::from(k).into());
                tc.push(key.as_bytes(), 1, 0, 0, &[gpc0(i64::from(k))]);
            }
            tc
        };
        let msg = pb::Contributions {
            seq: 1,
            tables: vec![run("t1", "b", 0..3), run("t2", "c", 10..12)],
        };
        // Read and checked two at a time, across the two tables' runs.
        let mut incoming = tables.receive(&msg, None).unwrap();
        let mut steps = 0;
        let m = loop {
            steps += 1;
            match incoming.check(2).unwrap() {
                Step::More(rest) => incoming = rest,
                Step::Checked(m) => break m,
            }
        };
        assert_eq!(steps, 3);
        assert_eq!(m.len(), 5);
        let lens = || ["t1", "t2"].map(|t| tables.get(t).map_or(0, |t| t.len()));
        assert_eq!(lens(), [0, 0], "checking applies nothing");
        m.apply(0..2, Tick(1));
        assert_eq!(lens(), [2, 0]);
        m.apply(2..4, Tick(1));
        assert_eq!(lens(), [3, 1], "a step across the two tables' runs");
        m.apply(4..9, Tick(1));
        assert_eq!(lens(), [3, 2], "a range past the end stops at it");
        let t2 = tables.get("t2").unwrap();
        let k = Key::from_ip(std::net::Ipv4Addr::from(11).into());
        assert_eq!(t2.read_key(&k, DataType::Gpc0, Tick(1)), Some(11));
    }

    #[test]
    fn a_bad_contribution_read_in_the_last_step_applies_nothing() {
        let tables = node("a");
        tables
            .reconcile(vec![schema("t1", &["gpc0"], true)])
            .unwrap();
        let mut tc = pb::TableContributions::new(
            "t1",
            pb::Origin {
                node: "b".into(),
                incarnation: 1,
            },
        );
        let gpc0 = pb::Datum {
            r#type: DataType::Gpc0.wire(),
            value: 1,
            ..Default::default()
        };
        for k in 0..4u32 {
            let key = Key::from_ip(std::net::Ipv4Addr::from(k).into());
            tc.push(key.as_bytes(), 1, 0, 0, std::slice::from_ref(&gpc0));
        }
        // Version 0 is never valid.
        let key = Key::from_ip(std::net::Ipv4Addr::from(9).into());
        tc.push(key.as_bytes(), 0, 0, 0, std::slice::from_ref(&gpc0));
        let msg = pb::Contributions {
            seq: 1,
            tables: vec![tc],
        };
        let mut incoming = tables.receive(&msg, None).unwrap();
        let err = loop {
            match incoming.check(2) {
                Ok(Step::More(rest)) => incoming = rest,
                Ok(Step::Checked(_)) => panic!("a message with a bad contribution passed"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("table `t1`"), "{err}");
        assert!(tables.get("t1").unwrap().is_empty(), "nothing applied");
    }
}
