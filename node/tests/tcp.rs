//! TCP mode and the PROXY protocol on real sockets.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use util::{TestBackend, TestNode, pattern, read_to_close};

const SECOND: Duration = Duration::from_secs(1);

/// A TCP backend that echoes everything, then half-closes when the client does.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, h)
}

fn tcp_config(server: SocketAddr, extra: &str) -> String {
    format!(
        "[[frontend]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nbackend = \"b\"\n{extra}\n\
         [[backend]]\nname = \"b\"\nservers = [{{ name = \"s\", addr = \"{server}\" }}]\n"
    )
}

#[tokio::test]
async fn ten_megabytes_both_ways_with_half_close() {
    let (server, h) = echo_server().await;
    let n = TestNode::start(&tcp_config(server, "")).await;
    let body = pattern(10 * 1024 * 1024);
    let s = TcpStream::connect(n.addr("t")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let send = body.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&send).await.unwrap();
        // Half-close: the echo server sees EOF, finishes echoing and closes its side.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::with_capacity(body.len());
    tokio::time::timeout(30 * SECOND, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "echoed bytes differ");
    n.stop().await;
    h.abort();
}

#[tokio::test]
async fn idle_tcp_connection_is_closed() {
    let (server, h) = echo_server().await;
    let n = TestNode::start(&tcp_config(server, "limits = { idle_timeout = \"200ms\" }")).await;
    let mut s = TcpStream::connect(n.addr("t")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let start = tokio::time::Instant::now();
    let (out, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    assert_eq!(out, b"ping");
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    n.stop().await;
    h.abort();
}

#[tokio::test]
async fn tcp_without_a_server_closes() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let n = TestNode::start(&tcp_config(dead, "")).await;
    let mut s = TcpStream::connect(n.addr("t")).await.unwrap();
    let (_, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    n.stop().await;
}

async fn xff_through_proxy_header(header: &[u8]) -> String {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&util::http_config(&[&b], "", "accept_proxy = true")).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    let mut req = header.to_vec();
    req.extend_from_slice(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let (out, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    n.stop().await;
    b.stop().await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn proxy_v1_sets_the_client_address() {
    let out = xff_through_proxy_header(b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 443\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-forwarded-for: 198.51.100.7\n"), "{out}");
    assert!(
        out.contains("forwarded: for=198.51.100.7;proto=http\n"),
        "{out}"
    );
}

#[tokio::test]
async fn proxy_v2_sets_the_client_address() {
    let header = sluice_node::proxy_protocol::encode_v2(
        "[2001:db8::42]:40000".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let out = xff_through_proxy_header(&header).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-forwarded-for: 2001:db8::42\n"), "{out}");
    assert!(
        out.contains("forwarded: for=\"[2001:db8::42]\";proto=http\n"),
        "{out}"
    );
}

#[tokio::test]
async fn missing_or_garbled_proxy_header_closes_the_connection() {
    for header in [
        &b""[..],
        b"PROXY TCP4 1.2.3.4 nonsense\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x99\x11\x00\x0c",
    ] {
        let out = xff_through_proxy_header(header).await;
        assert!(out.is_empty(), "{header:?} -> {out}");
    }
}

#[tokio::test]
async fn proxy_header_on_a_tcp_frontend() {
    let (server, h) = echo_server().await;
    let n = TestNode::start(&tcp_config(server, "accept_proxy = true")).await;
    let mut s = TcpStream::connect(n.addr("t")).await.unwrap();
    // Header and payload in one write: the bytes after the header must reach the server.
    s.write_all(b"PROXY TCP4 10.1.1.1 10.2.2.2 1000 2000\r\nhello")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let (out, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    assert_eq!(out, b"hello");
    n.stop().await;
    h.abort();
}

#[tokio::test]
async fn tcp_connect_health_check_takes_a_dead_server_out() {
    let (live, h) = echo_server().await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cfg = format!(
        "[[frontend]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nbackend = \"b\"\n\
         [[backend]]\nname = \"b\"\nservers = [{{ name = \"live\", addr = \"{live}\" }}, {{ name = \"dead\", addr = \"{dead_addr}\" }}]\n\
         check = {{ interval = \"50ms\", fall = 2 }}\n"
    );
    let n = TestNode::start(&cfg).await;
    util::wait_until(5 * SECOND, "dead server marked down", || async {
        !n.node.server_state("b", "dead").unwrap().up
    })
    .await;
    assert!(n.node.server_state("b", "live").unwrap().up);
    // Every connection now goes to the live server without a retry.
    for _ in 0..4 {
        let mut s = TcpStream::connect(n.addr("t")).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.shutdown().await.unwrap();
        let (out, _) = read_to_close(&mut s, 5 * SECOND).await;
        assert_eq!(out, b"x");
    }
    assert!(
        n.node
            .render_metrics()
            .contains("sluice_backend_retries_total{backend=\"b\"} 0")
    );
    n.stop().await;
    h.abort();
}
