//! Test helpers: small hyper backends, a node started in-process, clients, and waiting on
//! conditions with deadlines (never fixed sleeps).
#![allow(dead_code, unreachable_pub)]

pub mod scripted;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sluice_node::{Config, Node, Phase};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A test backend server.
///
/// Paths: `/echo` streams the request body back; `/headers` answers with the forwarding
/// headers it received; `/slow` answers only after [`TestBackend::release`]; `/status/N`
/// answers with status N; anything else answers with the server's name.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    /// Requests currently being answered.
    pub in_flight: Arc<AtomicUsize>,
    release: Arc<Notify>,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    /// Serves on a given listener (to restart a backend on the same port).
    pub fn serve(name: &str, listener: TcpListener) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let b = TestBackend {
            name: name.to_owned(),
            addr,
            connections: Arc::default(),
            requests: Arc::default(),
            in_flight: Arc::default(),
            release: Arc::new(Notify::new()),
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let (conns, reqs, in_flight, release, token, tracker) = (
            b.connections.clone(),
            b.requests.clone(),
            b.in_flight.clone(),
            b.release.clone(),
            b.token.clone(),
            b.tracker.clone(),
        );
        let name = b.name.clone();
        b.tracker.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                conns.fetch_add(1, SeqCst);
                let (reqs, in_flight, release, name, token) = (
                    reqs.clone(),
                    in_flight.clone(),
                    release.clone(),
                    name.clone(),
                    token.clone(),
                );
                tracker.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (reqs, in_flight, release, name) = (
                            reqs.clone(),
                            in_flight.clone(),
                            release.clone(),
                            name.clone(),
                        );
                        async move {
                            reqs.fetch_add(1, SeqCst);
                            in_flight.fetch_add(1, SeqCst);
                            let resp = answer(req, &name, &release).await;
                            in_flight.fetch_sub(1, SeqCst);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        b
    }

    /// Lets every `/slow` request waiting now answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Stops the server and closes its connections.
    pub async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn answer(mut req: Request<Incoming>, name: &str, release: &Notify) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/upgrade" && req.headers().contains_key("upgrade") {
        // Switch to an echo protocol that first says its name.
        let on = hyper::upgrade::on(&mut req);
        let name = name.to_owned();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let _ = io
                .write_all(format!("hello from {name}\n").as_bytes())
                .await;
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = io.shutdown().await;
        });
        let mut r = text(101, String::new());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        return r;
    }
    if path == "/echo" {
        return Response::new(req.into_body().boxed());
    }
    if path == "/stall" {
        // One chunk, then nothing, forever.
        let chunk = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"partial")))
        });
        let body = http_body_util::StreamBody::new(futures_util::StreamExt::chain(
            chunk,
            futures_util::stream::pending(),
        ));
        return Response::new(BodyExt::boxed(body));
    }
    if path == "/slow" {
        release.notified().await;
        return text(200, format!("{name} slow"));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return text(code.parse().unwrap_or(500), name.to_owned());
    }
    if path == "/headers" {
        let h = req.headers();
        let get = |k: &str| {
            h.get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let body = format!(
            "x-forwarded-for: {}\nforwarded: {}\nvia: {}\nconnection: {}\nx-secret: {}\nhost: {}\n",
            get("x-forwarded-for"),
            get("forwarded"),
            get("via"),
            get("connection"),
            get("x-secret"),
            get("host"),
        );
        return text(200, body);
    }
    text(200, name.to_owned())
}

fn text(status: u16, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// A node running in-process.
pub struct TestNode {
    pub node: Node,
    pub token: CancellationToken,
}

impl TestNode {
    pub async fn start(toml: &str) -> TestNode {
        let config =
            Config::from_toml(toml).unwrap_or_else(|e| panic!("bad test config: {e}\n{toml}"));
        let token = CancellationToken::new();
        let node = Node::start(config, token.clone())
            .await
            .expect("node starts");
        assert_eq!(*node.phase().borrow(), Phase::Serving);
        TestNode { node, token }
    }

    pub fn addr(&self, frontend: &str) -> SocketAddr {
        self.node
            .frontend_addr(frontend)
            .expect("frontend is bound")
    }

    /// Drains and waits for the node to stop.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.node.stopped())
            .await
            .expect("node stops");
    }
}

/// A config with one HTTP frontend `web` on port 0 and one backend `app` over `servers`.
pub fn http_config(servers: &[&TestBackend], extra_backend: &str, extra_frontend: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ name = \"{}\", addr = \"{}\" }}", s.name, s.addr))
        .collect();
    format!(
        "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nbackend = \"app\"\n{extra_frontend}\n\
         [[backend]]\nname = \"app\"\nservers = [{}]\n{extra_backend}\n",
        list.join(", ")
    )
}

/// An HTTP/1.1 client connection.
pub struct Client {
    pub sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// A TCP connection to `addr` from the loopback address `src` (127.0.0.2, 127.0.0.3, …), so
/// one test can be several clients as rules keyed on the source address see them.
pub async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let src: std::net::IpAddr = src.parse().unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::over(stream).await
    }

    /// A client connection from the loopback address `src`.
    pub async fn connect_from(src: &str, addr: SocketAddr) -> Client {
        Self::over(connect_from(src, addr).await).await
    }

    async fn over(stream: TcpStream) -> Client {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> (u16, hyper::HeaderMap, Bytes) {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    pub async fn get(&mut self, path: &str) -> (u16, Bytes) {
        let req = Request::get(path)
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (s, _, b) = self.send(req).await;
        (s, b)
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    Client::connect(addr).await.get(path).await
}

/// Waits until `cond` holds, polling every few milliseconds; panics after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads until EOF or error; returns what was read and whether the peer closed (EOF/reset).
pub async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let (out, ending) = read_to_end(stream, within).await;
    (out, ending != Ending::Open)
}

/// How a connection's incoming side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A FIN: the peer closed gracefully, after everything it sent.
    Fin,
    /// A reset.
    Reset,
    /// Another error.
    Error(std::io::ErrorKind),
    /// Nothing ended it in time.
    Open,
}

/// Everything `stream` receives until it ends (or `within` passes), and how it ended.
pub async fn read_to_end<R>(stream: &mut R, within: Duration) -> (Vec<u8>, Ending)
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let res = tokio::time::timeout(within, async {
        let mut buf = [0u8; 16384];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ending::Fin,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ending::Reset,
                Err(e) => return Ending::Error(e.kind()),
            }
        }
    })
    .await;
    (out, res.unwrap_or(Ending::Open))
}

/// A deterministic pseudo-random body.
pub fn pattern(len: usize) -> Bytes {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}
