//! Accepting peers: a TLS listener that requires a client certificate chained to the fleet CA
//! (a connection without one never reaches gRPC), and the `Session` call that checks the
//! hello — protocol version, certificate name, membership, schemas — before anything else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::sync::v1 as pb;
use sluice_proto::sync::v1::peer_message::Body;
use sluice_proto::sync::v1::replication_server::{Replication, ReplicationServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::session::{End, Session};
use super::tls::check_peer_name;
use super::{CHANNEL, HELLO_TIMEOUT, PROTOCOL_VERSION, Shared};
use crate::origin::OriginName;

/// Handshakes in progress at most; more wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn spawn(shared: Arc<Shared>, listener: TcpListener) {
    let (tx, rx) = mpsc::channel::<Result<TlsStream<TcpStream>, std::io::Error>>(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let s = shared.clone();
    shared.spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = s.cancel.cancelled() => return,
                p = handshakes.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let (tcp, remote) = tokio::select! {
                _ = s.cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = TlsAcceptor::from(s.identity.server_config());
            let tx = tx.clone();
            s.spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(peer.addr = %remote, reason = %e, "refused peer connection"),
                    Err(_) => tracing::warn!(peer.addr = %remote, "refused peer connection: TLS handshake timed out"),
                }
            });
        }
    });
    let svc = ReplicationServer::new(Acceptor {
        shared: shared.clone(),
    })
    .max_decoding_message_size(64 << 20);
    let s = shared.clone();
    shared.spawn(async move {
        let result = tonic::transport::Server::builder()
            .initial_stream_window_size(super::H2_STREAM_WINDOW)
            .initial_connection_window_size(super::H2_CONNECTION_WINDOW)
            .add_service(svc)
            .serve_with_incoming_shutdown(ReceiverStream::new(rx), s.cancel.cancelled())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "replication server failed");
        }
    });
}

struct Acceptor {
    shared: Arc<Shared>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::PeerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for Acceptor {
    type SessionStream = Outbound;

    async fn session(
        &self,
        req: Request<Streaming<pb::PeerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let shared = &self.shared;
        // The TLS acceptor required a certificate chained to the fleet CA; take it to check the
        // name the hello claims.
        let cert = req
            .peer_certs()
            .and_then(|c| c.first().cloned())
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let remote = req.remote_addr();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(Body::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        let refuse = |code: Code, why: String| {
            tracing::warn!(peer.name = %hello.node, peer.addr = ?remote, reason = %why, "refused peer");
            Status::new(code, why)
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(refuse(
                Code::FailedPrecondition,
                format!(
                    "protocol version {} is not supported; `{}` speaks {PROTOCOL_VERSION}",
                    hello.protocol_version, shared.me.node
                ),
            ));
        }
        if check_peer_name(&cert, &hello.node).is_err() {
            return Err(refuse(
                Code::PermissionDenied,
                format!("the client certificate does not name `{}`", hello.node),
            ));
        }
        {
            let ms = shared.membership.lock();
            if ms.self_removed() {
                return Err(refuse(
                    Code::FailedPrecondition,
                    format!("`{}` was removed from the fleet", shared.me.node),
                ));
            }
            if !ms.is_peer(&hello.node) {
                return Err(refuse(
                    Code::PermissionDenied,
                    format!(
                        "`{}` is not a member of `{}`'s fleet (add it with `sluicectl peer add`)",
                        hello.node, shared.me.node
                    ),
                ));
            }
        }
        if let Err(why) = super::dial::schemas_match(shared, &hello) {
            return Err(refuse(Code::FailedPrecondition, why));
        }
        if let Some(m) = &hello.membership {
            shared.merge_membership(m);
        }
        let (id, slot, cancel) = shared
            .open_session(&hello.node)
            .ok_or_else(|| Status::resource_exhausted("too many peer sessions"))?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let _ = tx
            .send(pb::PeerMessage {
                body: Some(Body::Hello(shared.hello())),
            })
            .await;
        let addr = shared
            .membership
            .lock()
            .peers()
            .find(|m| m.name == hello.node)
            .map(|m| m.addr.clone())
            .unwrap_or_default();
        let stats = shared.peer_stats(&hello.node, &addr);
        *stats.last_error.lock() = None;
        let peer = OriginName {
            node: hello.node.clone(),
            incarnation: hello.incarnation,
        };
        let session = Session {
            shared: shared.clone(),
            peer,
            stats: stats.clone(),
            inbound,
            outbound: tx,
            id,
            slot,
            cancel,
        };
        let span = tracing::info_span!("peer", peer.name = %hello.node, dir = "in");
        tracing::info!(parent: &span, incarnation = hello.incarnation, "session established");
        shared.spawn(tracing::Instrument::instrument(
            async move {
                match session.run().await {
                    End::Cancelled => {}
                    End::Closed(reason) => {
                        tracing::info!(
                            reason = reason.as_deref().unwrap_or("stream closed"),
                            "session ended"
                        )
                    }
                    End::Failed(why) => {
                        tracing::warn!(reason = %why, "session failed");
                        *stats.last_error.lock() = Some(why);
                    }
                }
            },
            span,
        ));
        let out: Outbound = Box::pin(ReceiverStream::new(rx).map(Ok));
        Ok(Response::new(out))
    }
}
