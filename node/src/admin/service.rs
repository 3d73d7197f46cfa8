//! The `sluice.admin.v1.Admin` calls.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{self, Stream};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::admin_server::Admin;
use sluice_sync::membership::{self, MembershipError};
use sluice_sync::replication::Replicator;
use sluice_sync::{Cursor, Table};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::AdminState;
use super::convert::{self, Filter};

/// Entries a `ShowTable` stream visits under one shard lock before it sends them on.
const SCAN_CHUNK: usize = 256;

/// The certificate name of `sluicectl`'s client identity, which can never be a node's.
const ADMIN_CLIENT_NAME: &str = "sluicectl";

pub(super) struct Service {
    state: Arc<AdminState>,
    /// Ends `ShowTable` streams on shutdown.
    cancel: CancellationToken,
}

impl Service {
    pub(super) fn new(state: AdminState, cancel: CancellationToken) -> Service {
        Service {
            state: Arc::new(state),
            cancel,
        }
    }

    fn table(&self, name: &str) -> Result<Arc<Table>, Status> {
        convert::table(&self.state.tables, &self.state.node, name)
    }

    fn replicator(&self) -> Result<&Replicator, Status> {
        self.state.replicator.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "`{}` does not replicate (its config has no [sync] section): it has no peers",
                self.state.node
            ))
        })
    }

    fn peers(&self) -> Result<Vec<pb::Peer>, Status> {
        Ok(self
            .replicator()?
            .peers()
            .into_iter()
            .map(convert::peer)
            .collect())
    }

    /// The peer names, for messages.
    fn peer_names(&self, r: &Replicator) -> String {
        let names: Vec<String> = r.peers().into_iter().map(|p| p.name).collect();
        if names.is_empty() {
            "it has no peers".to_owned()
        } else {
            format!("its peers: {}", names.join(", "))
        }
    }

    fn membership_status(&self, r: &Replicator, e: MembershipError) -> Status {
        match e {
            MembershipError::Unknown(name) => Status::not_found(format!(
                "`{name}` is not a member of `{}`'s fleet ({})",
                self.state.node,
                self.peer_names(r)
            )),
            MembershipError::IsSelf(name) => Status::invalid_argument(format!(
                "`{name}` is the node you are talking to; run `peer` commands about it on \
                 another node"
            )),
            MembershipError::BadName(name) => Status::invalid_argument(bad_name(&name)),
            MembershipError::BadAddr(addr) => Status::invalid_argument(format!(
                "bad peer address `{addr}`: expected HOST:PORT, e.g. edge-4:7000"
            )),
            other => Status::failed_precondition(other.to_string()),
        }
    }
}

fn bad_name(name: &str) -> String {
    format!(
        "bad node name `{name}`: one DNS label of lowercase letters, digits and `-` \
         (at most 63, not only digits), as in the node's certificate"
    )
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::Entry, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for Service {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = &self.state;
        let peers = match &s.replicator {
            Some(r) => r.peers().into_iter().map(convert::peer).collect(),
            None => Vec::new(),
        };
        Ok(Response::new(pb::StatusResponse {
            node: s.node.clone(),
            version: s.version.clone(),
            uptime_ms: s.started.elapsed().as_millis() as u64,
            ready: s.is_ready(),
            replication: s.replicator.is_some(),
            peers,
            tables: s
                .tables
                .all()
                .values()
                .map(|t| convert::table_info(t))
                .collect(),
        }))
    }

    async fn list_tables(
        &self,
        _req: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        Ok(Response::new(pb::ListTablesResponse {
            tables: self
                .state
                .tables
                .all()
                .values()
                .map(|t| convert::table_info(t))
                .collect(),
        }))
    }

    type ShowTableStream = EntryStream;

    async fn show_table(
        &self,
        req: Request<pb::ShowTableRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        let req = req.into_inner();
        let table = self.table(&req.table)?;
        let filter = req
            .filter
            .as_ref()
            .map(|c| Filter::new(&table, c))
            .transpose()?;
        let key = req
            .key
            .as_deref()
            .map(|k| convert::key(&table, k))
            .transpose()?;
        let limit = if req.limit == 0 { u64::MAX } else { req.limit };
        let clock = self.state.clock;
        if let Some(key) = key {
            let row = table
                .get(&key, clock.tick(), req.origins)
                .filter(|e| filter.is_none_or(|f| f.matches(e)))
                .map(|e| Ok(convert::entry(&table, e)));
            return Ok(Response::new(Box::pin(stream::iter(row))));
        }
        let scan = Scan {
            table,
            cursor: Cursor::new(),
            filter,
            left: limit,
            origins: req.origins,
            clock,
            buf: VecDeque::new(),
            cancel: self.cancel.clone(),
        };
        Ok(Response::new(Box::pin(stream::unfold(scan, Scan::next))))
    }

    async fn set_entry(
        &self,
        req: Request<pb::SetEntryRequest>,
    ) -> Result<Response<pb::SetEntryResponse>, Status> {
        let client = req.remote_addr();
        let req = req.into_inner();
        let table = self.table(&req.table)?;
        let key = convert::key(&table, &req.key)?;
        let fields = convert::assignments(&table, &req.fields)?;
        let clock = self.state.clock;
        // Every field was checked above, so none of these can fail halfway.
        for (ty, value) in &fields {
            table
                .set(key.clone(), *ty, *value, clock.wall_ms(), clock.tick())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        tracing::info!(
            client.addr = ?client,
            table = %req.table,
            key = %req.key,
            fields = ?fields,
            "admin: entry set"
        );
        let entry = table
            .get(&key, clock.tick(), false)
            .map(|e| convert::entry(&table, e));
        Ok(Response::new(pb::SetEntryResponse { entry }))
    }

    async fn clear_table(
        &self,
        req: Request<pb::ClearTableRequest>,
    ) -> Result<Response<pb::ClearTableResponse>, Status> {
        let client = req.remote_addr();
        let req = req.into_inner();
        let table = self.table(&req.table)?;
        let clock = self.state.clock;
        let cleared = match req.key.as_deref() {
            Some(text) => {
                let key = convert::key(&table, text)?;
                let held = table.get(&key, clock.tick(), false).is_some();
                table.clear_key(key, clock.wall_ms(), clock.tick());
                u64::from(held)
            }
            None => table.clear_all(clock.wall_ms(), clock.tick()) as u64,
        };
        tracing::info!(
            client.addr = ?client,
            table = %req.table,
            key = req.key.as_deref().unwrap_or("*"),
            cleared,
            "admin: table cleared"
        );
        Ok(Response::new(pb::ClearTableResponse { cleared }))
    }

    async fn list_peers(
        &self,
        _req: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        Ok(Response::new(pb::ListPeersResponse {
            peers: self.peers()?,
        }))
    }

    async fn add_peer(
        &self,
        req: Request<pb::AddPeerRequest>,
    ) -> Result<Response<pb::AddPeerResponse>, Status> {
        let client = req.remote_addr();
        let req = req.into_inner();
        let r = self.replicator()?;
        membership::check_name(&req.name)
            .map_err(|_| Status::invalid_argument(bad_name(&req.name)))?;
        if req.name == ADMIN_CLIENT_NAME {
            return Err(Status::invalid_argument(format!(
                "`{ADMIN_CLIENT_NAME}` is the admin client's certificate name and cannot be a node"
            )));
        }
        r.add_peer(&req.name, &req.addr)
            .map_err(|e| self.membership_status(r, e))?;
        tracing::info!(client.addr = ?client, peer.name = %req.name, peer.addr = %req.addr, "admin: peer added");
        Ok(Response::new(pb::AddPeerResponse {
            peers: self.peers()?,
        }))
    }

    async fn remove_peer(
        &self,
        req: Request<pb::RemovePeerRequest>,
    ) -> Result<Response<pb::RemovePeerResponse>, Status> {
        let client = req.remote_addr();
        let req = req.into_inner();
        let r = self.replicator()?;
        membership::check_name(&req.name)
            .map_err(|_| Status::invalid_argument(bad_name(&req.name)))?;
        r.remove_peer(&req.name)
            .map_err(|e| self.membership_status(r, e))?;
        tracing::info!(client.addr = ?client, peer.name = %req.name, "admin: peer removed");
        Ok(Response::new(pb::RemovePeerResponse {
            peers: self.peers()?,
        }))
    }
}

/// A `ShowTable` in progress: scans a chunk of the table at a time, when the client has taken
/// the previous one, so a large table streams in bounded memory and a slow client never holds
/// a lock.
struct Scan {
    table: Arc<Table>,
    cursor: Cursor,
    filter: Option<Filter>,
    /// Entries still to send.
    left: u64,
    origins: bool,
    clock: sluice_sync::NodeClock,
    buf: VecDeque<pb::Entry>,
    cancel: CancellationToken,
}

impl Scan {
    async fn next(mut self) -> Option<(Result<pb::Entry, Status>, Scan)> {
        loop {
            if self.left == 0 && self.buf.is_empty() {
                return None;
            }
            if self.cancel.is_cancelled() {
                self.left = 0;
                self.buf.clear();
                return Some((Err(Status::unavailable("the node is shutting down")), self));
            }
            if let Some(e) = self.buf.pop_front() {
                return Some((Ok(e), self));
            }
            if self.cursor.is_done() {
                return None;
            }
            let table = self.table.clone();
            let Scan {
                cursor,
                filter,
                left,
                origins,
                clock,
                buf,
                ..
            } = &mut self;
            table.scan(cursor, SCAN_CHUNK, clock.tick(), *origins, |e| {
                if *left > 0 && filter.is_none_or(|f| f.matches(&e)) {
                    buf.push_back(convert::entry(&table, e));
                    *left -= 1;
                }
            });
            if self.buf.is_empty() {
                // A chunk with no match: let other tasks run before scanning the next one.
                tokio::task::yield_now().await;
            }
        }
    }
}
