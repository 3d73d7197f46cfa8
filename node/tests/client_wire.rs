//! The proxy's HTTP/1 server on the wire: pipelined requests, HTTP/1.0 clients, how a response
//! is framed for the client that asked, bodiless answers, requests the server hands to hyper
//! mid-connection, and heads that parse but cannot be requests. The client writes raw bytes
//! on a real socket and parses what comes back itself, so each test says exactly what crosses
//! the wire.

mod util;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::scripted::Scripted;
use util::{TestBackend, TestNode, http_config, read_to_close};

const SECOND: Duration = Duration::from_secs(1);

/// A response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    /// Header fields, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads bytes until `buf` holds at least `n`, or fails the test.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(5 * SECOND, s.read(&mut chunk))
            .await
            .expect("response within 5 s")
            .expect("read");
        assert!(read > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// Reads one response from `s` (whose bytes past it stay in `buf`). `bodyless` is for a
/// response to `HEAD`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, bodyless: bool) -> Wire {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let want = buf.len() + 1;
        fill(s, buf, want).await;
    };
    let head = String::from_utf8(buf[..end].to_vec()).expect("head is text");
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(status_line.starts_with("HTTP/1.1 "), "{head:?}");
    let status = status_line[9..12].parse().expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header field");
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut wire = Wire {
        status,
        headers,
        body: Vec::new(),
    };
    if bodyless || status == 204 || status == 304 {
        return wire;
    }
    if let Some(len) = wire.header("content-length") {
        let len: usize = len.parse().expect("content-length");
        fill(s, buf, len).await;
        wire.body = buf.drain(..len).collect();
    } else if wire.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let want = buf.len() + 1;
                fill(s, buf, want).await;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..line_end]).expect("chunk size"),
                16,
            )
            .expect("hex chunk size");
            buf.drain(..line_end + 2);
            fill(s, buf, size + 2).await;
            wire.body.extend(buf.drain(..size));
            assert_eq!(buf.drain(..2).as_slice(), b"\r\n", "chunk ends with CRLF");
            if size == 0 {
                break;
            }
        }
    } else {
        let (rest, closed) = read_to_close(s, 5 * SECOND).await;
        assert!(closed, "a body without a length ends with the connection");
        wire.body = std::mem::take(buf);
        wire.body.extend(rest);
    }
    wire
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /third HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200);
        assert!(r.header("date").is_some(), "{r:?}");
        if bodies.len() == 2 {
            assert_eq!(r.header("connection"), Some("close"));
        }
        bodies.push(String::from_utf8(r.body).unwrap());
    }
    assert_eq!(bodies, ["a", "hello", "a"]);
    let (rest, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(
        closed && rest.is_empty(),
        "closed after the third: {rest:?}"
    );
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn http10_clients_keep_the_connection_only_when_they_ask() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;

    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"a"[..]));
    assert_eq!(r.header("connection"), Some("close"));
    // Closed gracefully (the listener's zero linger is off for admitted connections).
    let (rest, ending) = util::read_to_end(&mut s, 5 * SECOND).await;
    assert_eq!((rest.as_slice(), ending), (&b""[..], util::Ending::Fin));

    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"a"[..]));
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_for_http11_and_closed_for_http10() {
    // The server's body runs to its close: the proxy does not know its length.
    let b = Scripted::start(|_, i| {
        (
            format!("HTTP/1.0 200 OK\r\n\r\nbody {i}").into_bytes(),
            true,
        )
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.body, format!("body {i}").into_bytes());
    }
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, b"body 2");
    n.stop().await;
}

#[tokio::test]
async fn head_and_bodyless_statuses_send_no_body() {
    let b = Scripted::start(|head, _| {
        let bytes: &[u8] = if head.starts_with("head ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
        } else if head.starts_with("get /204 ") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (bytes.to_vec(), false)
    })
    .await;
    let n = TestNode::start(&b.config()).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(
        b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /204 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head = read_response(&mut s, &mut buf, true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("42"));
    let empty = read_response(&mut s, &mut buf, false).await;
    assert_eq!(empty.status, 204);
    assert_eq!(empty.header("content-length"), None);
    assert_eq!(empty.header("transfer-encoding"), None);
    // Had either carried body bytes, this would not parse as the third answer.
    let last = read_response(&mut s, &mut buf, false).await;
    assert_eq!((last.status, last.body.as_slice()), (200, &b"ok"[..]));
    n.stop().await;
}

#[tokio::test]
async fn requests_left_to_hyper_are_answered_on_the_same_connection() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, b"a");
    // A chunked body: from here on hyper serves the connection.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
    // A body that waits for 100 Continue.
    s.write_all(
        b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let cont = read_response(&mut s, &mut buf, true).await;
    assert_eq!(cont.status, 100);
    s.write_all(b"body").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, b"a");

    // A body still on its way when the head is read.
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    s.flush().await.unwrap();
    s.write_all(b"world").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"helloworld"[..]));
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_head_with_an_invalid_uri_gets_400_and_the_close() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&b], "", "")).await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    // httparse takes any visible bytes as the target; this one is not a URI.
    s.write_all(b"GET http://[::1/ HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut s, 5 * SECOND).await;
    assert!(closed);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out:?}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "nothing after: {out:?}");
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    n.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_local_answer_carries_its_fields_from_either_server() {
    let b = TestBackend::start("a").await;
    let n = TestNode::start(&format!(
        "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 1024\nexpire = \"60s\"\n\
         store = [\"http_req_rate(10s)\"]\n\n{}",
        http_config(
            &[&b],
            "",
            "[frontend.rules]\nrequest = [\"track-sc0 src table per_ip\", \
             \"deny status 429 if sc0_http_req_rate > 0\"]",
        )
    ))
    .await;
    let mut s = TcpStream::connect(n.addr("web")).await.unwrap();
    let mut buf = Vec::new();
    // The first by the HTTP/1 server, the second (an Upgrade field) and third by hyper.
    for extra in ["", "Upgrade: x\r\n", ""] {
        s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.body, b"too many requests\n");
        assert_eq!(r.header("content-type"), Some("text/plain"), "{r:?}");
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"http_req_rate\";q=0;w=10"),
            "{r:?}"
        );
        assert!(
            r.header("ratelimit").is_some() && r.header("retry-after").is_some(),
            "{r:?}"
        );
        assert!(r.header("date").is_some(), "{r:?}");
    }
    n.stop().await;
    b.stop().await;
}
