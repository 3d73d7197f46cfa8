//! HTTP proxying on real sockets: bodies, keep-alive, forwarding headers, bad input, limits,
//! balancing, health checks, TLS.

mod util;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use util::{Client, TestBackend, TestNode, get, http_config, pattern, read_to_close, wait_until};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn ten_megabytes_both_ways_exact_bytes() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    let body = pattern(10 * 1024 * 1024);
    let mut c = Client::connect(n.addr("web")).await;
    let req = Request::post("/echo")
        .header("host", "t")
        .body(Full::new(body.clone()))
        .unwrap();
    let (status, _, echoed) = c.send(req).await;
    assert_eq!(status, 200);
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "echoed body differs");
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn keep_alive_reuses_backend_connections() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    let mut c = Client::connect(n.addr("web")).await;
    for _ in 0..50 {
        assert_eq!(c.get("/").await, (200, Bytes::from("a")));
    }
    // A second client connection also reuses the pooled backend connection.
    let mut c2 = Client::connect(n.addr("web")).await;
    for _ in 0..50 {
        assert_eq!(c2.get("/").await.0, 200);
    }
    assert_eq!(b.requests.load(SeqCst), 100);
    assert_eq!(
        b.connections.load(SeqCst),
        1,
        "one backend connection for 100 sequential requests"
    );
    let state = n.node.server_state("app", "a").unwrap();
    assert_eq!(state.active, 0);
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn forwarding_headers_added_and_hop_by_hop_removed() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "via = true")).await;
    let mut c = Client::connect(n.addr("web")).await;
    let req = Request::get("/headers")
        .header("host", "example.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = c.send(req).await;
    assert_eq!(status, 200);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http\n"),
        "{body}"
    );
    assert!(body.contains("via: 1.1 sluice\n"), "{body}");
    assert!(
        body.contains("x-secret: \n"),
        "header named by Connection must not be forwarded: {body}"
    );
    assert!(body.contains("host: example.test\n"), "{body}");
    assert_eq!(headers.get("via").unwrap(), "1.1 sluice");
    n.stop().await;
    b.stop().await;
}

async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let (out, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(
        closed,
        "connection should be closed after an error response"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_request_line_gets_400() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    for bad in [
        &b"GET / HTTP/1.1 extra\r\n\r\n"[..],
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00garbage\r\n\r\n",
    ] {
        let out = raw_exchange(n.addr("web"), bad).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{bad:?} -> {out:?}");
    }
    assert_eq!(b.requests.load(SeqCst), 0);
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn oversize_headers_get_431() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&b],
        "",
        "limits = { max_header_size = 8192 }",
    ))
    .await;
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..40 {
        req.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(400)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let out = raw_exchange(n.addr("web"), &req).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    // A normal request still works.
    assert_eq!(get(n.addr("web"), "/").await.0, 200);
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn slowloris_is_closed_after_the_header_timeout() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&b],
        "",
        "limits = { header_timeout = \"300ms\" }",
    ))
    .await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    let start = tokio::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Keep trickling header bytes; the connection must be closed anyway.
    let trickle = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(5 * SECOND, trickle).await;
    let (_, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < 3 * SECOND,
        "closed after {took:?}"
    );
    assert_eq!(b.requests.load(SeqCst), 0);
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&b],
        "",
        "limits = { keepalive_timeout = \"200ms\" }",
    ))
    .await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let (out, ending) = util::read_to_end(&mut s, 5 * SECOND).await;
    // Closed gracefully, though the listener's sockets start with a zero linger.
    assert_eq!(ending, util::Ending::Fin, "idle connection closed");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "closed too early: {:?}",
        start.elapsed()
    );
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_response_head_late_past_the_timeout_gets_504() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&b],
        "limits = { response_timeout = \"300ms\" }",
        "",
    ))
    .await;
    let mut c = Client::connect(n.addr("web")).await;
    // The backend connection's first exchange arms its timer; the slow one re-arms it.
    assert_eq!(c.get("/").await, (200, Bytes::from("a")));
    let start = tokio::time::Instant::now();
    let (status, _) = c.get("/slow").await;
    let took = start.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(250) && took < 3 * SECOND,
        "504 after {took:?}"
    );
    // The timed-out backend connection is not reused; a new one answers.
    assert_eq!(c.get("/").await, (200, Bytes::from("a")));
    assert_eq!(b.connections.load(SeqCst), 2);
    b.release();
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn all_servers_down_gives_503() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let n = TestNode::start(&http_config(&[&a, &b], "", "")).await;
    a.stop().await;
    b.stop().await;
    let (status, _) = get(n.addr("web"), "/").await;
    assert_eq!(status, 503);
    let metrics = n.node.render_metrics();
    assert!(
        metrics.contains(
            "sluice_http_requests_total{frontend=\"web\",code=\"5xx\",outcome=\"allowed\"} 1"
        ),
        "{metrics}"
    );
    n.stop().await;
}

#[tokio::test]
async fn connect_failure_retries_on_another_server() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let n = TestNode::start(&http_config(&[&a, &b], "", "")).await;
    let dead = a.addr;
    a.stop().await;
    // Round-robin alternates; every GET still lands on b, on fresh client connections.
    for _ in 0..6 {
        assert_eq!(get(n.addr("web"), "/").await, (200, Bytes::from("b")));
    }
    // A POST is not retried: nothing says the backend did not act on it.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(n.addr("web")).await;
        let req = Request::post("/")
            .header("host", "t")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        codes.push(c.send(req).await.0);
    }
    assert!(
        codes.contains(&503) && codes.contains(&200),
        "{codes:?} (dead server {dead})"
    );
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn roundrobin_spreads_over_three_servers() {
    let s: Vec<TestBackend> =
        futures_util::future::join_all(["a", "b", "c"].map(TestBackend::start)).await;
    let n = TestNode::start(&http_config(
        &[&s[0], &s[1], &s[2]],
        "balance = \"roundrobin\"",
        "",
    ))
    .await;
    let mut c = Client::connect(n.addr("web")).await;
    for _ in 0..30 {
        assert_eq!(c.get("/").await.0, 200);
    }
    for b in &s {
        assert_eq!(b.requests.load(SeqCst), 10, "server {}", b.name);
    }
    n.stop().await;
    for b in s {
        b.stop().await;
    }
}

#[tokio::test]
async fn leastconn_prefers_the_idle_server() {
    let s: Vec<TestBackend> =
        futures_util::future::join_all(["a", "b", "c"].map(TestBackend::start)).await;
    let n = TestNode::start(&http_config(
        &[&s[0], &s[1], &s[2]],
        "balance = \"leastconn\"",
        "",
    ))
    .await;
    let addr = n.addr("web");
    // Two slow requests occupy two servers.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/slow").await }))
        .collect();
    wait_until(5 * SECOND, "two slow requests in flight", || async {
        s.iter().map(|b| b.in_flight.load(SeqCst)).sum::<usize>() == 2
    })
    .await;
    let idle = s.iter().find(|b| b.in_flight.load(SeqCst) == 0).unwrap();
    for _ in 0..10 {
        assert_eq!(get(addr, "/").await, (200, Bytes::from(idle.name.clone())));
    }
    for b in &s {
        b.release();
    }
    for h in slow {
        assert_eq!(h.await.unwrap().0, 200);
    }
    n.stop().await;
    for b in s {
        b.stop().await;
    }
}

#[tokio::test]
async fn source_keeps_a_client_on_one_server() {
    let s: Vec<TestBackend> =
        futures_util::future::join_all(["a", "b", "c"].map(TestBackend::start)).await;
    let n = TestNode::start(&http_config(
        &[&s[0], &s[1], &s[2]],
        "balance = \"source\"",
        "",
    ))
    .await;
    let first = get(n.addr("web"), "/").await.1;
    for _ in 0..20 {
        assert_eq!(get(n.addr("web"), "/").await.1, first);
    }
    n.stop().await;
    for b in s {
        b.stop().await;
    }
}

#[tokio::test]
async fn health_check_takes_a_dead_server_out_and_brings_it_back() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let check = "check = { interval = \"100ms\", path = \"/\", rise = 2, fall = 3 }";
    let n = TestNode::start(&http_config(&[&a, &b], check, "")).await;
    let a_addr = a.addr;
    a.stop().await;
    let down_at = tokio::time::Instant::now();
    wait_until(5 * SECOND, "server a down", || async {
        !n.node.server_state("app", "a").unwrap().up
    })
    .await;
    // Within fall × interval = 300ms; the rest is slack for a loaded CI machine.
    assert!(
        down_at.elapsed() < Duration::from_millis(300 + 800),
        "took {:?}",
        down_at.elapsed()
    );
    // Down servers get no traffic: POSTs (never retried) all succeed on b.
    for _ in 0..6 {
        let mut c = Client::connect(n.addr("web")).await;
        let req = Request::post("/")
            .header("host", "t")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(c.send(req).await.2, Bytes::from("b"));
    }
    let metrics = n.node.render_metrics();
    assert!(
        metrics.contains("sluice_backend_server_up{backend=\"app\",server=\"a\"} 0"),
        "{metrics}"
    );
    // Bring a back on the same port.
    let listener = tokio::net::TcpListener::bind(a_addr).await.unwrap();
    let a = TestBackend::serve("a", listener);
    let up_at = tokio::time::Instant::now();
    wait_until(5 * SECOND, "server a up", || async {
        n.node.server_state("app", "a").unwrap().up
    })
    .await;
    // Within rise × interval = 200ms, plus the same slack.
    assert!(
        up_at.elapsed() < Duration::from_millis(200 + 800),
        "took {:?}",
        up_at.elapsed()
    );
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(get(n.addr("web"), "/").await.1);
    }
    assert!(names.contains(&Bytes::from("a")));
    n.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn tls_frontend_speaks_http1_and_h2() {
    use std::sync::Arc;

    let b = TestBackend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert_path.display(),
        key_path.display()
    );
    let n = TestNode::start(&http_config(&[&b], "", &tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(n.addr("web")).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = Request::get("https://localhost/headers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = if alpn == b"h2" {
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            s.send_request(req).await.unwrap()
        } else {
            let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = "/headers".parse().unwrap();
            req.headers_mut()
                .insert("host", "localhost".parse().unwrap());
            s.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        use http_body_util::BodyExt;
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(body.contains("proto=https"), "{body}");
        assert!(body.contains("host: localhost"), "{body}");
    }
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn dns_names_resolve_and_max_connections_caps_clients() {
    let a = TestBackend::start("a").await;
    // `localhost` may resolve to ::1 before 127.0.0.1; every address is tried in turn.
    let cfg = http_config(&[&a], "", "limits = { max_connections = 1 }")
        .replace(&a.addr.to_string(), &format!("localhost:{}", a.addr.port()));
    assert!(cfg.contains("localhost:"));
    let n = TestNode::start(&cfg).await;
    let mut first = Client::connect(n.addr("web")).await;
    assert_eq!(first.get("/").await, (200, Bytes::from("a")));
    // The second connection waits in the accept queue while the first is open.
    let mut second = tokio::spawn({
        let addr = n.addr("web");
        async move { get(addr, "/").await }
    });
    // A negative can only be shown by waiting a while.
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(
        waited.is_err(),
        "second connection must not be served while the first is open"
    );
    drop(first);
    assert_eq!(
        tokio::time::timeout(5 * SECOND, second)
            .await
            .unwrap()
            .unwrap(),
        (200, Bytes::from("a"))
    );
    n.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_backend_stalling_mid_body_is_cut_off() {
    let a = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&a],
        "limits = { response_timeout = \"200ms\" }",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let (out, closed) = read_to_close(&mut s, 10 * SECOND).await;
    assert!(closed, "stalled exchange closed");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("partial"),
        "{out}"
    );
    // response_timeout + 1s of grace, with slack.
    assert!(
        start.elapsed() >= Duration::from_millis(1100) && start.elapsed() < 5 * SECOND,
        "{:?}",
        start.elapsed()
    );
    wait_until(5 * SECOND, "server connection released", || async {
        n.node.server_state("app", "a").unwrap().active == 0
    })
    .await;
    n.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn upgrade_becomes_a_tunnel() {
    use tokio::io::AsyncReadExt;

    let a = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&a], "", "")).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("hello from a\n") {
        let n = tokio::time::timeout(5 * SECOND, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: echo") && head.contains("connection: upgrade"),
        "{head}"
    );
    s.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = vec![0u8; 20];
    tokio::time::timeout(5 * SECOND, s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over the tunnel");
    // Closing our side ends the tunnel: the backend shuts down in turn.
    s.shutdown().await.unwrap();
    let (_, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    wait_until(5 * SECOND, "tunnel released the server", || async {
        n.node.server_state("app", "a").unwrap().active == 0
    })
    .await;
    n.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn pooled_connections_idle_too_long_are_not_reused() {
    let a = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&a],
        "limits = { pool_idle_timeout = \"100ms\" }",
        "",
    ))
    .await;
    assert_eq!(get(n.addr("web"), "/").await.0, 200);
    assert_eq!(get(n.addr("web"), "/").await.0, 200);
    assert_eq!(a.connections.load(SeqCst), 1, "reused while fresh");
    // Let the pooled connection age past pool_idle_timeout (waiting is the point here).
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(n.addr("web"), "/").await.0, 200);
    assert_eq!(
        a.connections.load(SeqCst),
        2,
        "a stale connection is replaced"
    );
    n.stop().await;
    a.stop().await;
}
