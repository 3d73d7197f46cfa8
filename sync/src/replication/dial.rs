//! Dialing a peer: connect over mutual TLS, exchange hellos, run the session, and on any end
//! reconnect with exponential backoff and jitter until the peer is removed or the node stops.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls_pki_types::ServerName;
use sluice_proto::sync::v1 as pb;
use sluice_proto::sync::v1::peer_message::Body;
use sluice_proto::sync::v1::replication_client::ReplicationClient;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Uri};

use super::session::{End, Session};
use super::{CHANNEL, HELLO_TIMEOUT, PROTOCOL_VERSION, Shared};
use crate::origin::OriginName;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// For this long after an established session ends, the peer is most likely restarting: it is
/// looked for again every [`RESTART_POLL`] (jittered) instead of on the growing backoff, so a
/// restarted peer (which waits to be dialed when its name sorts after this node's) is back and
/// resynced within milliseconds of listening again. A refused connect costs microseconds, so
/// 600 of them over the watch are cheap next to a restarted node waiting for its snapshot.
const RESTART_WATCH: Duration = Duration::from_secs(3);
const RESTART_POLL: Duration = Duration::from_millis(5);

pub(super) fn spawn(shared: Arc<Shared>, name: String, addr: String, cancel: CancellationToken) {
    let s = shared.clone();
    shared.spawn(async move {
        let span = tracing::info_span!("peer", peer.name = %name, peer.addr = %addr, dir = "out");
        tracing::Instrument::instrument(dial_loop(s, name, addr, cancel), span).await
    });
}

async fn dial_loop(shared: Arc<Shared>, name: String, addr: String, cancel: CancellationToken) {
    let stats = shared.peer_stats(&name, &addr);
    let mut failures = 0u32;
    // When the last established session ended.
    let mut lost: Option<Instant> = None;
    // Whether this outage has been logged as a warning already.
    let mut warned = false;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = connect_and_run(&shared, &name, &addr) => r,
            _ = cancel.cancelled() => return,
        };
        if result.is_ok() {
            warned = false;
        }
        if matches!(result, Ok(End::Closed(_) | End::Failed(_))) {
            lost = Some(Instant::now());
        }
        match result {
            Ok(End::Cancelled) => {}
            Ok(End::Closed(reason)) => {
                tracing::info!(
                    reason = reason.as_deref().unwrap_or("stream closed"),
                    "session ended"
                );
            }
            Ok(End::Failed(why)) | Err(why) => {
                if !warned {
                    warned = true;
                    tracing::warn!(reason = %why, "session failed");
                } else {
                    tracing::debug!(reason = %why, "session failed again");
                }
                *stats.last_error.lock() = Some(why);
            }
        }
        if started.elapsed() >= STABLE {
            failures = 0;
        }
        let delay = match lost {
            Some(at) if at.elapsed() < RESTART_WATCH => jittered(RESTART_POLL),
            _ => {
                failures = failures.saturating_add(1);
                backoff(failures - 1)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random, so peers that
/// lost a node at the same moment do not all come back in step.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_MIN
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX);
    jittered(exp)
}

/// Between half of `d` and `d`, uniformly.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

async fn connect_and_run(shared: &Arc<Shared>, name: &str, addr: &str) -> Result<End, String> {
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| format!("bad peer name: {e}"))?;
    let tls = TlsConnector::from(shared.identity.client_config());
    let target = addr.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, server_name, target) = (tls.clone(), server_name.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://sluice-peer")
        .connect_timeout(HELLO_TIMEOUT)
        .initial_stream_window_size(super::H2_STREAM_WINDOW)
        .initial_connection_window_size(super::H2_CONNECTION_WINDOW)
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
    let mut client = ReplicationClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(CHANNEL);
    let _ = tx
        .send(pb::PeerMessage {
            body: Some(Body::Hello(shared.hello())),
        })
        .await;
    let response = tokio::time::timeout(HELLO_TIMEOUT, client.session(ReceiverStream::new(rx)))
        .await
        .map_err(|_| "no answer to hello".to_string())?
        .map_err(|s| format!("refused by peer: {}", s.message()))?;
    let mut inbound = response.into_inner();
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| "no hello from peer".to_string())?
        .map_err(|s| format!("refused by peer: {}", s.message()))?;
    let hello = match first.and_then(|m| m.body) {
        Some(Body::Hello(h)) => h,
        _ => return Err("peer did not start with a hello".into()),
    };
    if let Err(why) = check_hello(shared, &hello, name) {
        let _ = tx
            .send(pb::PeerMessage {
                body: Some(Body::Goodbye(pb::Goodbye {
                    reason: why.clone(),
                })),
            })
            .await;
        tracing::warn!(reason = %why, "refused peer");
        return Err(why);
    }
    if let Some(m) = &hello.membership {
        shared.merge_membership(m);
    }
    let Some((id, slot, cancel)) = shared.open_session(name) else {
        return Err("too many peer sessions".into());
    };
    tracing::info!(incarnation = hello.incarnation, "session established");
    let stats = shared.peer_stats(name, addr);
    *stats.last_error.lock() = None;
    let session = Session {
        shared: shared.clone(),
        peer: OriginName {
            node: hello.node,
            incarnation: hello.incarnation,
        },
        stats,
        inbound,
        outbound: tx,
        id,
        slot,
        cancel,
    };
    Ok(session.run().await)
}

/// What the dialing side checks of the peer's hello (TLS already checked that its certificate
/// names `expected`).
fn check_hello(shared: &Shared, hello: &pb::Hello, expected: &str) -> Result<(), String> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "peer speaks protocol version {}, this node {PROTOCOL_VERSION}",
            hello.protocol_version
        ));
    }
    if hello.node != expected {
        return Err(format!(
            "peer says it is `{}`, expected `{expected}`",
            hello.node
        ));
    }
    schemas_match(shared, hello)
}

/// Whether the peer replicates the same tables with the same schemas.
pub(super) fn schemas_match(shared: &Shared, hello: &pb::Hello) -> Result<(), String> {
    let ours = shared.tables.schemas();
    if hello.schemas_digest == crate::tables::digest(&ours) {
        return Ok(());
    }
    let only_ours: Vec<&String> = ours.iter().filter(|s| !hello.schemas.contains(s)).collect();
    let only_theirs: Vec<&String> = hello.schemas.iter().filter(|s| !ours.contains(s)).collect();
    Err(format!(
        "replicated table schemas differ: only here {only_ours:?}, only on `{}` {only_theirs:?}",
        hello.node
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        for f in 0..20 {
            let d = backoff(f);
            let exp = BACKOFF_MIN.saturating_mul(1 << f.min(16)).min(BACKOFF_MAX);
            assert!(d >= exp / 2 && d <= exp, "failure {f}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }

    #[test]
    fn jitter_stays_between_half_and_whole() {
        for _ in 0..1000 {
            let d = jittered(RESTART_POLL);
            assert!(d >= RESTART_POLL / 2 && d <= RESTART_POLL, "{d:?}");
        }
    }
}
