//! A backend that answers with scripted bytes, so a test says exactly what the server sends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted server sends for a request: the bytes, and whether it closes after.
pub type Answer = (Vec<u8>, bool);

/// A backend that answers each request head it reads with bytes chosen by a script, given the
/// request head and the number of requests before it on all connections.
pub struct Scripted {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

impl Scripted {
    pub async fn start(script: fn(&str, usize) -> Answer) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, SeqCst);
                tokio::spawn(serve(stream, script, r.clone()));
            }
        });
        Scripted {
            addr,
            connections,
            requests,
        }
    }

    pub fn config(&self) -> String {
        format!(
            "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nbackend = \"app\"\n\n\
             [[backend]]\nname = \"app\"\nservers = [{{ name = \"s\", addr = \"{}\" }}]\n",
            self.addr
        )
    }
}

async fn serve(mut s: TcpStream, script: fn(&str, usize) -> Answer, count: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        // A request head, and a body of the length it declares (the tests send no other).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        let (bytes, close) = script(&head, count.fetch_add(1, SeqCst));
        if s.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}
