//! A latency probe: one client on its own thread sending a request every millisecond on a
//! keep-alive connection and timing each answer, so it keeps measuring while the harness waits
//! on something else (HAProxy's runtime API is a blocking socket). It paces itself so that its
//! own load (about a thousand requests a second) barely touches what it watches.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET /probe HTTP/1.1\r\nHost: probe\r\n\r\n";
/// Between two requests: the pace, not a wait for a condition.
const GAP: Duration = Duration::from_millis(1);
/// An answer slower than this counts as a failure and the connection is dropped.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What a probe saw.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    /// Each answered request's latency, ms, in order.
    pub ms: Vec<f64>,
    /// Requests that got no complete answer (refused, reset, timed out, malformed).
    pub failed: usize,
}

/// A running probe; [`Probe::finish`] stops it.
pub(crate) struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Latencies>,
}

impl Probe {
    /// Starts probing `addr`; until something listens there, it retries the connection.
    pub(crate) fn start(addr: SocketAddr) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || run(addr, &s));
        Probe { stop, thread }
    }

    /// Stops the probe and returns what it measured.
    pub(crate) fn finish(self) -> Latencies {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn run(addr: SocketAddr, stop: &AtomicBool) -> Latencies {
    let mut seen = Latencies::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(GAP);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(addr) {
                Some(c) => conn.insert(c),
                None => continue,
            },
        };
        let t = Instant::now();
        match exchange(c, &mut buf) {
            Some(()) => seen.ms.push(t.elapsed().as_secs_f64() * 1e3),
            None => {
                seen.failed += 1;
                conn = None;
            }
        }
    }
    seen
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let c = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
    c.set_nodelay(true).ok()?;
    c.set_read_timeout(Some(TIMEOUT)).ok()?;
    Some(c)
}

/// One request and its whole answer (head and `Content-Length` body).
fn exchange(c: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    c.write_all(REQUEST).ok()?;
    let mut have = 0;
    loop {
        let n = c.read(buf.get_mut(have..)?).ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        let got = buf.get(..have)?;
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = content_length(got.get(..end)?)?;
            let want = end + 4 + body;
            while have < want {
                let n = c.read(buf.get_mut(have..)?).ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
            }
            return Some(());
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
}
