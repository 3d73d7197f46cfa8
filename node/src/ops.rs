//! The operations endpoint on `metrics.listen`: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (the node is serving and, when it replicates, has
//! applied a first snapshot from a peer; 503 otherwise).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::backend::Background;
use crate::cluster::Cluster;
use crate::metrics::Registry;
use crate::node::Phase;

/// Serves the endpoint until the background token fires.
pub(crate) fn spawn(
    listener: TcpListener,
    registry: Arc<Registry>,
    node_name: String,
    phase: watch::Receiver<Phase>,
    cluster: Arc<Cluster>,
    bg: Background,
) {
    let tracker = bg.tracker.clone();
    tracker.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = bg.token.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(error) => {
                        debug!(%error, "metrics accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            let name = node_name.clone();
            let phase = phase.clone();
            let cluster = cluster.clone();
            let token = bg.token.clone();
            bg.tracker.spawn(async move {
                let svc = service_fn(move |req| {
                    let resp = answer(&req, &registry, &cluster, &name, *phase.borrow());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(None)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    res = conn => if let Err(error) = res { debug!(%error, %peer, "metrics connection error") },
                    _ = token.cancelled() => {}
                }
            });
        }
    });
}

fn answer(
    req: &Request<Incoming>,
    registry: &Registry,
    cluster: &Cluster,
    node: &str,
    phase: Phase,
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            let mut body = registry.render(node, phase.as_str());
            cluster.render(&mut body);
            (StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if phase == Phase::Serving && !*cluster.ready().borrow() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "waiting for a first snapshot from a peer\n".to_owned(),
        ),
        "/readyz" if phase == Phase::Serving => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{}\n", phase.as_str()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

/// The address the endpoint is bound to (for logs).
pub(crate) fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}
