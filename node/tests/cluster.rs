//! Two in-process nodes configured from TOML, replicating over real mutual TLS: readiness waits
//! for the first snapshot from a peer, changes on one node reach the other, and the table and
//! peer metrics report it.

mod util;

use std::time::Duration;

use sluice_node::{Config, Node};
use sluice_sync::certs::{Ca, free_addr};
use sluice_sync::{DataType, Event, KeyType};
use tokio_util::sync::CancellationToken;
use util::{TestBackend, get, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn config(
    name: &str,
    sync: std::net::SocketAddr,
    peer: (&str, std::net::SocketAddr),
    ca: &Ca,
    dir: &std::path::Path,
    app: &TestBackend,
) -> Config {
    let tls = ca.node(name);
    let toml = format!(
        r#"
[node]
name = "{name}"
state_dir = "{state}"
[admin]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[sync]
listen = "{sync}"
peers = [ {{ name = "{peer}", addr = "{peer_addr}" }} ]
ready_wait = "60s"
[[table]]
name = "per_ip"
key = "ip"
size = 1000
expire = "60s"
store = ["gpc0"]
[[frontend]]
name = "web"
bind = "127.0.0.1:0"
backend = "app"
[[backend]]
name = "app"
servers = [ {{ name = "app1", addr = "{app}" }} ]
"#,
        state = dir.join(name).display(),
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        peer = peer.0,
        peer_addr = peer.1,
        app = app.addr,
    );
    Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_replicate_and_turn_ready_after_the_first_snapshot() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "cluster");
    let app = TestBackend::start("app1").await;
    let (s1, s2) = (free_addr(), free_addr());

    // edge-2 starts alone: it serves, but is not ready until a peer's snapshot arrives.
    let t2 = CancellationToken::new();
    let n2 = Node::start(
        config("edge-2", s2, ("edge-1", s1), &ca, dir.path(), &app),
        t2.clone(),
    )
    .await
    .unwrap();
    let m2 = n2.metrics_addr().unwrap();
    let (status, body) = get(m2, "/readyz").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(n2.admin_addr().is_some(), "the admin API is up");

    let t1 = CancellationToken::new();
    let n1 = Node::start(
        config("edge-1", s1, ("edge-2", s2), &ca, dir.path(), &app),
        t1.clone(),
    )
    .await
    .unwrap();
    let mut ready = n2.ready();
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .unwrap();
    assert_eq!(get(m2, "/readyz").await.0, 200);

    // A change on edge-1 reaches edge-2.
    let key = KeyType::Ip.parse_key("10.0.0.7").unwrap();
    let t = n1.tables().get("per_ip").unwrap();
    let mut h = t.track(key.clone(), n1.clock().tick());
    t.record(&mut h, Event::IncGpc0(2), n1.clock().tick());
    let read2 = || {
        n2.tables()
            .get("per_ip")
            .and_then(|t| t.read_key(&key, DataType::Gpc0, n2.clock().tick()))
    };
    wait_until(WAIT, "the change reaches edge-2", || async {
        read2() == Some(2)
    })
    .await;

    let metrics = n1.render_metrics();
    for line in [
        "sluice_sync_peer_up{peer=\"edge-2\"} 1",
        "sluice_table_entries{table=\"per_ip\"} 1",
        "sluice_table_size{table=\"per_ip\"} 1000",
        "sluice_ready 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in\n{metrics}"
        );
    }
    assert!(metrics.contains("sluice_sync_updates_sent_total{peer=\"edge-2\"}"));

    t1.cancel();
    t2.cancel();
    assert!(tokio::time::timeout(WAIT, n1.stopped()).await.unwrap());
    assert!(tokio::time::timeout(WAIT, n2.stopped()).await.unwrap());
    app.stop().await;
}
