//! The certificates `sluicectl certs` writes really work for SPEC §6's mutual TLS: nodes of
//! one fleet authenticate each other by node name over real TCP on 127.0.0.1, and anything
//! from another fleet, under another name or with the wrong role is refused.

mod util;

use tokio_rustls::rustls::{CertificateError, Error as TlsError};

use util::{Identity, client_config, handshake, init_fleet, rustls_error, server_config, success};

fn is_cert_error(error: &std::io::Error, want: fn(&CertificateError) -> bool) -> bool {
    matches!(rustls_error(error), Some(TlsError::InvalidCertificate(e)) if want(e))
}

#[tokio::test]
async fn node_certs_complete_a_mutual_tls_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_fleet(dir.path(), "edge-1,edge-2,edge-3");

    // edge-2 dials edge-1: the expected peer name is the TLS server name, and the listener
    // learns who dialed from the client certificate's SAN DNS name.
    let outcome = handshake(
        server_config(dir.path(), Identity::load(dir.path(), "edge-1")),
        client_config(dir.path(), Identity::load(dir.path(), "edge-2")),
        "edge-1",
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.server.expect("server side"), ["edge-2"]);
}

#[tokio::test]
async fn a_client_cert_from_another_fleet_is_refused() {
    let ours = tempfile::tempdir().expect("tempdir");
    let theirs = tempfile::tempdir().expect("tempdir");
    init_fleet(ours.path(), "edge-1,edge-2");
    init_fleet(theirs.path(), "edge-1,edge-2");

    // Same node name, same CA name, different CA key: the listener must refuse.
    let outcome = handshake(
        server_config(ours.path(), Identity::load(ours.path(), "edge-1")),
        client_config(ours.path(), Identity::load(theirs.path(), "edge-2")),
        "edge-1",
    )
    .await;
    let server = outcome
        .server
        .expect_err("listener must refuse a foreign client cert");
    assert!(
        is_cert_error(&server, |e| matches!(
            e,
            CertificateError::UnknownIssuer | CertificateError::BadSignature
        )),
        "{server}"
    );
    assert!(outcome.client.is_err(), "the dialer must not get a session");
}

#[tokio::test]
async fn a_server_cert_from_another_fleet_is_refused() {
    let ours = tempfile::tempdir().expect("tempdir");
    let theirs = tempfile::tempdir().expect("tempdir");
    init_fleet(ours.path(), "edge-1,edge-2");
    init_fleet(theirs.path(), "edge-1,edge-2");

    let outcome = handshake(
        server_config(ours.path(), Identity::load(theirs.path(), "edge-1")),
        client_config(ours.path(), Identity::load(ours.path(), "edge-2")),
        "edge-1",
    )
    .await;
    let client = outcome
        .client
        .expect_err("dialer must refuse a foreign server cert");
    assert!(
        is_cert_error(&client, |e| matches!(
            e,
            CertificateError::UnknownIssuer | CertificateError::BadSignature
        )),
        "{client}"
    );
    assert!(
        outcome.server.is_err(),
        "the listener must not get a session"
    );
}

#[tokio::test]
async fn a_peer_under_another_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_fleet(dir.path(), "edge-1,edge-2,edge-3");

    // edge-2 meant to reach edge-3 but edge-1 answered.
    let outcome = handshake(
        server_config(dir.path(), Identity::load(dir.path(), "edge-1")),
        client_config(dir.path(), Identity::load(dir.path(), "edge-2")),
        "edge-3",
    )
    .await;
    let client = outcome
        .client
        .expect_err("dialer must refuse the wrong node");
    assert!(
        is_cert_error(&client, |e| matches!(
            e,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )),
        "{client}"
    );
}

#[tokio::test]
async fn the_admin_cert_is_a_client_only_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_fleet(dir.path(), "edge-1");

    let as_client = handshake(
        server_config(dir.path(), Identity::load(dir.path(), "edge-1")),
        client_config(dir.path(), Identity::load(dir.path(), "admin")),
        "edge-1",
    )
    .await;
    assert!(as_client.is_success(), "{as_client:?}");
    assert_eq!(as_client.server.expect("server side"), ["sluicectl"]);

    // Without serverAuth it cannot pose as a node to a dialer.
    let as_server = handshake(
        server_config(dir.path(), Identity::load(dir.path(), "admin")),
        client_config(dir.path(), Identity::load(dir.path(), "edge-1")),
        "sluicectl",
    )
    .await;
    let client = as_server.client.expect_err("admin cert must not serve");
    assert!(
        is_cert_error(&client, |e| matches!(
            e,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        )),
        "{client}"
    );
}

#[tokio::test]
async fn certs_add_issues_a_cert_the_original_fleet_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_fleet(dir.path(), "edge-1,edge-2,edge-3");
    success(&util::sluicectl([
        "certs".as_ref(),
        "add".as_ref(),
        "--ca-dir".as_ref(),
        dir.path().as_os_str(),
        "--node".as_ref(),
        "edge-4".as_ref(),
    ]));

    // The new node dials an original one, and an original one dials the new node.
    let dialing = handshake(
        server_config(dir.path(), Identity::load(dir.path(), "edge-1")),
        client_config(dir.path(), Identity::load(dir.path(), "edge-4")),
        "edge-1",
    )
    .await;
    assert!(dialing.is_success(), "{dialing:?}");
    assert_eq!(dialing.server.expect("server side"), ["edge-4"]);

    let dialed = handshake(
        server_config(dir.path(), Identity::load(dir.path(), "edge-4")),
        client_config(dir.path(), Identity::load(dir.path(), "edge-3")),
        "edge-4",
    )
    .await;
    assert!(dialed.is_success(), "{dialed:?}");
    assert_eq!(dialed.server.expect("server side"), ["edge-3"]);
}
