//! Hand-driven peers for tests of what a node refuses: a raw gRPC client over real mutual TLS
//! that says whatever hello and sends whatever batch the test wants.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use sluice_proto::sync::v1 as pb;
use sluice_proto::sync::v1::peer_message::Body;
use sluice_proto::sync::v1::replication_client::ReplicationClient;
use sluice_sync::DataType as D;
use sluice_sync::replication::{Identity, PROTOCOL_VERSION, TlsPaths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Uri};

fn schemas_digest() -> (String, Vec<String>) {
    let fps: Vec<String> = super::fleet::schemas()
        .iter()
        .map(|s| s.fingerprint())
        .collect();
    (sluice_sync::tables::digest(&fps), fps)
}

async fn client(
    listen: SocketAddr,
    server: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<ReplicationClient<tonic::transport::Channel>, String> {
    let name = ServerName::try_from(server.to_string()).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(cfg);
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, name) = (tls.clone(), name.clone());
        async move {
            let tcp = TcpStream::connect(listen).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls.connect(name, tcp).await?))
        }
    });
    let ch = Endpoint::from_static("http://x")
        .connect_with_connector(connector)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ReplicationClient::new(ch))
}

fn hello(node: &str) -> pb::PeerMessage {
    let (digest, schemas) = schemas_digest();
    pb::PeerMessage {
        body: Some(Body::Hello(pb::Hello {
            node: node.into(),
            incarnation: 42,
            protocol_version: PROTOCOL_VERSION,
            schemas_digest: digest,
            schemas,
            membership: None,
        })),
    }
}

/// Opens a session presenting the certificate of `cert_node` and a hello claiming `claimed`.
/// Ok if the peer answered with its hello, Err with the refusal otherwise.
pub async fn hello_as(
    listen: SocketAddr,
    server: &str,
    tls: &TlsPaths,
    cert_node: &str,
    claimed: &str,
) -> Result<(), String> {
    let id = Identity::load(cert_node, tls.clone()).map_err(|e| e.to_string())?;
    let mut c = client(listen, server, id.client_config()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(claimed)).await.map_err(|e| e.to_string())?;
    let mut inbound = c
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::PeerMessage {
            body: Some(Body::Hello(_)),
        })) => Ok(()),
        Ok(other) => Err(format!("unexpected {other:?}")),
        Err(s) => Err(s.message().to_string()),
    }
}

/// A TLS client that trusts the fleet CA but presents no certificate: Err if refused.
pub async fn tls_without_client_cert(
    listen: SocketAddr,
    server: &str,
    ca: &Path,
) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(listen)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server.to_string()).map_err(|e| e.to_string())?;
    let mut s = TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server checks the client's (missing) certificate after the client finished;
    // the refusal arrives as an alert on the first read.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub acked: bool,
    pub closed: bool,
}

fn origin(node: &str) -> Option<pb::Origin> {
    Some(pb::Origin {
        node: node.into(),
        incarnation: 42,
    })
}

fn gpc0(key: Vec<u8>, value: i64, ty: D) -> pb::Contribution {
    pb::Contribution {
        key,
        version: 1,
        idle_ms: 5,
        epoch: 0,
        data: vec![pb::Datum {
            r#type: ty.wire(),
            value,
            ..Default::default()
        }],
    }
}

fn batch(tables: Vec<pb::TableContributions>) -> pb::PeerMessage {
    pb::PeerMessage {
        body: Some(Body::Batch(pb::Contributions { seq: 1, tables })),
    }
}

fn tc(table: &str, node: &str, cs: Vec<pb::Contribution>) -> pb::TableContributions {
    let mut tc = pb::TableContributions::default();
    tc.table = table.into();
    tc.origin = origin(node);
    for c in &cs {
        tc.push_message(c);
    }
    tc
}

const K7: [u8; 4] = [10, 0, 0, 7];

/// Messages a node must refuse, each with a part of the reason it logs.
pub fn bad_batches() -> Vec<(pb::PeerMessage, &'static str)> {
    let ok = || tc("per_ip", "edge-0", vec![gpc0(K7.to_vec(), 2, D::Gpc0)]);
    vec![
        (
            batch(vec![tc(
                "nope",
                "edge-0",
                vec![gpc0(K7.to_vec(), 1, D::Gpc0)],
            )]),
            "unknown or unreplicated table",
        ),
        (
            batch(vec![tc(
                "per_ip",
                "edge-0",
                vec![gpc0(vec![1, 2, 3], 1, D::Gpc0)],
            )]),
            "bad key",
        ),
        (
            batch(vec![tc(
                "per_ip",
                "edge-5",
                vec![gpc0(K7.to_vec(), 1, D::Gpc0)],
            )]),
            "live contributions of origin",
        ),
        (
            batch(vec![tc(
                "per_ip",
                "edge-0",
                vec![gpc0(K7.to_vec(), 1, D::Gpc1)],
            )]),
            "does not store",
        ),
        (
            batch(vec![
                ok(),
                tc("per_ip", "edge-0", vec![gpc0(K7.to_vec(), -1, D::ConnCur)]),
            ]),
            "gauge cannot be negative",
        ),
        (pb::PeerMessage { body: None }, "no body"),
        (hello("edge-0"), "second hello"),
    ]
}

/// The control case: a well-formed batch of the sender's own contribution.
pub fn good_batch() -> pb::PeerMessage {
    batch(vec![tc(
        "per_ip",
        "edge-0",
        vec![gpc0(K7.to_vec(), 2, D::Gpc0)],
    )])
}

/// Opens a session as `node` (with its real certificate), sends `msg`, and reports whether the
/// peer acknowledged it and whether it closed the stream.
pub async fn send_batch_as(
    listen: SocketAddr,
    server: &str,
    tls: &TlsPaths,
    node: &str,
    msg: pb::PeerMessage,
) -> Outcome {
    let id = Identity::load(node, tls.clone()).unwrap();
    let mut c = client(listen, server, id.client_config()).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(node)).await.unwrap();
    let mut inbound = c
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        inbound.message().await,
        Ok(Some(pb::PeerMessage {
            body: Some(Body::Hello(_))
        }))
    ));
    tx.send(msg).await.unwrap();
    let mut out = Outcome {
        acked: false,
        closed: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Err(_) => return out,
            Ok(Ok(Some(pb::PeerMessage {
                body: Some(Body::Ack(a)),
            }))) if a.seq == 1 => {
                out.acked = true;
                return out;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => {
                out.closed = true;
                return out;
            }
        }
    }
}
