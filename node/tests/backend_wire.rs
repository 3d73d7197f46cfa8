//! The proxy's HTTP/1.1 client on the wire: responses framed every way RFC 9112 allows (chunked
//! with extensions and trailers, read to the close, bodiless statuses, interim `1xx`), which
//! backend connections are kept for reuse and which are not, and malformed responses answered
//! with `502`. The server is a scripted one on a real socket, so each test says exactly which
//! bytes the backend sends.

mod util;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::scripted::Scripted;
use util::{Client, TestBackend, TestNode, http_config, pattern, read_to_close};

fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "t")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn chunked_responses_arrive_whole_and_keep_the_connection() {
    let b = Scripted::start(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n"
                .to_vec(),
            false,
        )
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut c = Client::connect(n.addr("web")).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await, (200, Bytes::from("hello, world")));
    }
    assert_eq!(b.connections.load(SeqCst), 1, "the connection is reused");
    n.stop().await;
}

#[tokio::test]
async fn a_body_read_to_the_close_is_whole_and_the_connection_not_reused() {
    let b = Scripted::start(|_, i| {
        (
            format!("HTTP/1.0 200 OK\r\n\r\nbody {i}").into_bytes(),
            true,
        )
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut c = Client::connect(n.addr("web")).await;
    assert_eq!(c.get("/").await, (200, Bytes::from("body 0")));
    assert_eq!(c.get("/").await, (200, Bytes::from("body 1")));
    assert_eq!(b.connections.load(SeqCst), 2);
    n.stop().await;
}

#[tokio::test]
async fn connection_close_from_the_server_is_honoured() {
    let b = Scripted::start(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
            false,
        )
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut c = Client::connect(n.addr("web")).await;
    for _ in 0..3 {
        let (status, headers, body) = c.send(get_req("/")).await;
        assert_eq!((status, body), (200, Bytes::from("ok")));
        assert!(
            headers.get("connection").is_none(),
            "hop-by-hop header forwarded"
        );
    }
    // The server left each connection open, but said it would not take another request.
    assert_eq!(b.connections.load(SeqCst), 3);
    n.stop().await;
}

/// A response whose head carries every kind of field the proxy must drop or keep.
const MIXED_FIELDS: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Connection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
    Trailer: x-t\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\nX-Kept: again\r\n\
    Via: 1.0 upstream\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
    Transfer-Encoding: chunked\r\nContent-Length: 999\r\n\r\n\
    5\r\nhello\r\n0\r\n\r\n";

#[tokio::test]
async fn response_fields_are_forwarded_without_hop_by_hop_ones_on_either_server() {
    let b = Scripted::start(|_, _| (MIXED_FIELDS.to_vec(), false)).await;
    let n = TestNode::start(&b.config()).await;
    let check = |headers: &hyper::HeaderMap, body: &Bytes| {
        assert_eq!(body, &Bytes::from("hello"));
        let kept: Vec<_> = headers.get_all("x-kept").iter().collect();
        assert_eq!(kept, ["yes", "again"]);
        assert_eq!(headers.get("via").unwrap(), "1.0 upstream");
        assert_eq!(
            headers.get("date").unwrap(),
            "Tue, 01 Dec 2026 00:00:00 GMT"
        );
        for gone in [
            "x-secret",
            "keep-alive",
            "trailer",
            "proxy-connection",
            "connection",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} forwarded: {headers:?}");
        }
        // Chunked won over the length, which is not the body's: it is not forwarded.
        assert!(headers.get("content-length").is_none(), "{headers:?}");
    };
    // The HTTP/1 server writes the fields as the backend sent them.
    let mut c = Client::connect(n.addr("web")).await;
    let (status, headers, body) = c.send(get_req("/")).await;
    assert_eq!(status, 200);
    check(&headers, &body);
    // An Upgrade field (here not an upgrade: no `Connection: upgrade`) hands the connection
    // to hyper, which gets the fields in a map, for this request and the next.
    let odd = Request::get("/")
        .header("host", "t")
        .header("upgrade", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    for req in [odd, get_req("/")] {
        let (status, headers, body) = c.send(req).await;
        assert_eq!(status, 200);
        check(&headers, &body);
    }
    assert_eq!(b.requests.load(SeqCst), 3);
    n.stop().await;
}

#[tokio::test]
async fn bodiless_answers_keep_the_connection() {
    let b = Scripted::start(|head, _| {
        let bytes: &[u8] = if head.starts_with("head ") {
            // A HEAD answer names the length of the body it does not carry.
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        } else if head.starts_with("get /204") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if head.starts_with("get /304") {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"
        } else {
            // An interim answer, then the real one.
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
        };
        (bytes.to_vec(), false)
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut c = Client::connect(n.addr("web")).await;
    let head = Request::head("/")
        .header("host", "t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = c.send(head).await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers.get("content-length").unwrap(), "1000");
    assert_eq!(c.get("/204").await, (204, Bytes::new()));
    assert_eq!(c.get("/304").await, (304, Bytes::new()));
    assert_eq!(c.get("/").await, (200, Bytes::from("body")));
    assert_eq!(b.requests.load(SeqCst), 4);
    assert_eq!(b.connections.load(SeqCst), 1, "the connection is reused");
    n.stop().await;
}

#[tokio::test]
async fn malformed_responses_get_502_and_the_proxy_goes_on() {
    let b = Scripted::start(|head, _| {
        let bytes: &[u8] = if head.starts_with("get /garbage") {
            b"HTTP/1.1 2x0 Nope\r\n\r\n"
        } else if head.starts_with("get /conflict") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
        } else if head.starts_with("get /bad-chunk") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        } else if head.starts_with("get /empty") {
            b""
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (bytes.to_vec(), !head.starts_with("get / "))
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    for path in ["/garbage", "/conflict", "/empty"] {
        let mut c = Client::connect(n.addr("web")).await;
        assert_eq!(c.get(path).await.0, 502, "{path}");
    }
    // A body that breaks once its head is taken cannot become a 502: the client sees the
    // response cut short (or, as the head waits for the first data, nothing at all).
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(b"GET /bad-chunk HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the client connection is closed");
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a cut body must not look complete: {out}"
    );
    let mut c = Client::connect(n.addr("web")).await;
    assert_eq!(c.get("/").await, (200, Bytes::from("ok")));
    n.stop().await;
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used() {
    // Every answer closes the connection after a response that promised keep-alive.
    let b = Scripted::start(|_, i| {
        (
            format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{}", i % 10).into_bytes(),
            true,
        )
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut c = Client::connect(n.addr("web")).await;
    for i in 0..5 {
        assert_eq!(c.get("/").await, (200, Bytes::from(format!("{i}"))));
    }
    assert_eq!(b.connections.load(SeqCst), 5);
    n.stop().await;
}

#[tokio::test]
async fn a_chunked_upload_arrives_whole() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    let body = pattern(300 * 1024);
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for part in body.chunks(70_000) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // Written while the echo is read, so neither side's buffers have to hold it all.
    let (mut rd, mut wr) = s.split();
    let (written, (out, closed)) = tokio::join!(wr.write_all(&req), async {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
        (out, read.is_ok())
    });
    written.unwrap();
    assert!(closed);
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&out[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The echo streams back chunked; decode it.
    let mut rest = &out[head_end..];
    let mut echoed = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            break;
        }
        echoed.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    assert!(
        echoed == body,
        "echoed body differs ({} bytes)",
        echoed.len()
    );
    n.stop().await;
    b.stop().await;
}
