//! The admin API off loopback: it refuses to start without TLS, and with the node's fleet
//! identity it serves only clients with a certificate chained to the fleet CA — checked with
//! the real `sluicectl` and the certificates `sluicectl certs init` makes.
//!
//! The plaintext rule is about the listen address, so the listener here is bound to `0.0.0.0`
//! (the wildcard: not a loopback address, and what an operator writes to reach the API from
//! other machines), and the clients reach it through 127.0.0.1. Binding a specific
//! non-loopback interface address would test the same code path, but a test machine need not
//! have one.

mod admin_util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use admin_util::{admin_tls, certs_init, schemas, sluicectl, stderr, success};
use sluice_node::admin::{self, AdminError, AdminState};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::admin_client::AdminClient;
use sluice_sync::{NodeClock, OriginName, Tables};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn state(node: &str) -> AdminState {
    let tables = Arc::new(Tables::new(
        OriginName {
            node: node.into(),
            incarnation: 1,
        },
        2_000,
    ));
    tables.reconcile(schemas()).expect("tables");
    AdminState::new(tables, NodeClock::new())
}

#[tokio::test]
async fn off_loopback_the_admin_api_refuses_to_start_without_tls() {
    for listen in ["0.0.0.0:0", "[::]:0", "10.1.2.3:9000", "192.168.0.10:9000"] {
        let listen: SocketAddr = listen.parse().expect("addr");
        let err = admin::bind(listen, None, state("edge-1"))
            .await
            .expect_err("plaintext off loopback must be refused");
        assert!(
            matches!(err, AdminError::TlsRequired(a) if a == listen),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("not a loopback address"), "{msg}");
        assert!(msg.contains("mutual TLS"), "{msg}");
    }
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let listen: SocketAddr = listen.parse().expect("addr");
        // ::1 may be unavailable on the machine; only the TLS rule is under test here.
        match admin::bind(listen, None, state("edge-1")).await {
            Ok(_) | Err(AdminError::Bind { .. }) => {}
            Err(e) => panic!("{listen}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_admin_api_serves_only_fleet_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    certs_init(&ours, &["edge-1", "edge-2"]).await;
    certs_init(&theirs, &["edge-1"]).await;

    let listener = admin::bind(
        "0.0.0.0:0".parse().expect("addr"),
        Some(admin_tls(&ours, "edge-1")),
        state("edge-1"),
    )
    .await
    .expect("binds with TLS");
    let node = format!("127.0.0.1:{}", listener.local_addr().port());
    let cancel = CancellationToken::new();
    let served = tokio::spawn(listener.serve(cancel.clone()));

    let file =
        |d: &std::path::Path, f: &str| d.join(f).into_os_string().into_string().expect("utf8 path");
    let with = |ca: String, cert: String, key: String, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "--node".to_owned(),
            node.clone(),
            "--ca".into(),
            ca,
            "--cert".into(),
            cert,
            "--key".into(),
            key,
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(cmd.iter().map(|s| (*s).to_owned()));
        args
    };

    // The admin client certificate of the fleet, verifying the node's name: served.
    let admin_args = with(
        file(&ours, "ca.pem"),
        file(&ours, "admin.pem"),
        file(&ours, "admin.key"),
        &["--server-name", "edge-1"],
        &["--json", "status"],
    );
    let status: serde_json::Value =
        serde_json::from_str(&success(&sluicectl(admin_args).await)).expect("json");
    assert_eq!(status["node"], "edge-1");
    // Any certificate of the fleet is a fleet identity, a node's too.
    let node_args = with(
        file(&ours, "ca.pem"),
        file(&ours, "edge-2.pem"),
        file(&ours, "edge-2.key"),
        &["--server-name", "edge-1"],
        &["table", "list"],
    );
    assert!(success(&sluicectl(node_args).await).contains("per_ip"));

    // No client certificate at all (plaintext): refused.
    let out = sluicectl(["--node", node.as_str(), "status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&node), "{}", stderr(&out));

    // TLS without a client certificate: refused by the node.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(ours.join("ca.pem")).expect("ca"),
        ))
        .domain_name("edge-1");
    let endpoint = Endpoint::from_shared(format!("https://{node}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5));
    let refused = match endpoint.connect().await {
        Err(_) => true,
        Ok(channel) => AdminClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must not be served");

    // Another fleet's certificate (same names, another CA): refused by the node.
    let foreign = with(
        file(&ours, "ca.pem"),
        file(&theirs, "admin.pem"),
        file(&theirs, "admin.key"),
        &["--server-name", "edge-1"],
        &["status"],
    );
    let out = sluicectl(foreign).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("check --cert and --key"),
        "{}",
        stderr(&out)
    );

    // The client checks the node too: a node certificate for another name is refused.
    let wrong_name = with(
        file(&ours, "ca.pem"),
        file(&ours, "admin.pem"),
        file(&ours, "admin.key"),
        &["--server-name", "edge-2"],
        &["status"],
    );
    let out = sluicectl(wrong_name).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));

    // An IP address gives no name to check: sluicectl asks for one rather than guess.
    let no_name = with(
        file(&ours, "ca.pem"),
        file(&ours, "admin.pem"),
        file(&ours, "admin.key"),
        &[],
        &["status"],
    );
    let out = sluicectl(no_name).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--server-name"), "{}", stderr(&out));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("stops cleanly");
}
