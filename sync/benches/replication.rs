//! How fast does replication move changes between two nodes over mutual TLS on loopback?
//!
//! `cargo bench -p sluice-sync --bench replication`
//!
//! - propagation: a change to a fresh key on node A until node B can read it (1,000 keys,
//!   one at a time, p50/p99) — HAProxy's peers: p50 0.38 ms, p99 0.59 ms on this machine;
//! - throughput: 1,000,000 changes on distinct keys recorded on A as fast as one thread can,
//!   until B holds all of them (contributions per second, process CPU per 100k);
//! - resync: a node restarted empty while its peer holds 100,000 / 1,000,000 entries, from
//!   its start until it holds them all — HAProxy: 165 ms for 100,000.
//!
//! Both nodes run in this process, each replication session on the same 2-worker runtime.
//! Results are in `docs/benchmarks.md`.

#[path = "../tests/util/fleet.rs"]
#[allow(missing_debug_implementations)]
mod fleet;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet::{Ca, NodeSpec, TestNode, free_addr};
use sluice_sync::{DataType, Event, Key, KeyType, TableSchema};

fn schemas() -> Vec<TableSchema> {
    let store = TableSchema::parse_store(&["http_req_rate(10s)", "conn_cur", "gpc0"]).unwrap();
    vec![
        TableSchema::new(
            "per_ip",
            KeyType::Ip,
            2_000_000,
            Duration::from_secs(600),
            store,
            true,
        )
        .unwrap(),
    ]
}

fn key(i: u32) -> Key {
    Key::from_ip(std::net::Ipv4Addr::from(0x0b00_0000 + i).into())
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn pair(dir: &std::path::Path, ca: &Ca) -> (TestNode, TestNode) {
    let (la, lb) = (free_addr(), free_addr());
    let b = TestNode::start(NodeSpec {
        name: "node-b",
        listen: lb,
        peers: vec![("node-a".into(), la.to_string())],
        tls: ca.node("node-b"),
        state_dir: dir.join("b"),
        schemas: schemas(),
    })
    .await;
    let a = TestNode::start(NodeSpec {
        name: "node-a",
        listen: la,
        peers: vec![("node-b".into(), lb.to_string())],
        tls: ca.node("node-a"),
        state_dir: dir.join("a"),
        schemas: schemas(),
    })
    .await;
    (a, b)
}

async fn wait_for(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn propagation(a: &TestNode, b: &TestNode) -> Vec<f64> {
    let ta = a.tables.get("per_ip").unwrap();
    let tb = b.tables.get("per_ip").unwrap();
    let mut samples = Vec::new();
    for i in 0..1_000u32 {
        let k = key(5_000_000 + i);
        let start = Instant::now();
        let mut h = ta.handle(k.clone());
        ta.record(&mut h, Event::IncGpc0(1), a.clock.tick());
        // Spin on B's table from this thread, yielding so the runtime's threads run.
        while tb.read_key(&k, DataType::Gpc0, b.clock.tick()) != Some(1) {
            std::thread::yield_now();
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "key {i} never arrived"
            );
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(2));
    }
    samples
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"replication".contains(a.as_str()))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "bench");
    let (a, b) = rt.block_on(pair(dir.path(), &ca));
    rt.block_on(wait_for("the session", Duration::from_secs(10), || {
        a.peer_up("node-b") && b.peer_up("node-a")
    }));

    // Propagation, measured from a plain thread while the runtime replicates.
    let mut p = propagation(&a, &b);
    println!(
        "replication/propagation: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} fresh keys",
        pct(&mut p, 0.5),
        pct(&mut p, 0.99),
        pct(&mut p, 1.0),
        p.len()
    );

    // Throughput: one thread records 1M changes on distinct keys as fast as it can.
    const N: u32 = 1_000_000;
    let ta = a.tables.get("per_ip").unwrap();
    let tb = b.tables.get("per_ip").unwrap();
    let base = tb.len();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ta, clock, done) = (ta.clone(), a.clock, done.clone());
        std::thread::spawn(move || {
            for i in 0..N {
                let mut h = ta.handle(key(i));
                ta.record(&mut h, Event::HttpReq, clock.tick());
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    rt.block_on(wait_for(
        "1M contributions",
        Duration::from_secs(120),
        || tb.len() >= base + N as usize,
    ));
    let secs = start.elapsed().as_secs_f64();
    writer.join().unwrap();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "replication/throughput: {N} contributions in {:.2} s = {:.0}/s; process CPU {:.3} s per 100k (recording + sending + applying)",
        secs,
        f64::from(N) / secs,
        cpu / (f64::from(N) / 100_000.0)
    );

    rt.block_on(async {
        a.stop().await;
        b.stop().await;
    });

    // Resync: node-b holds n entries; node-a starts empty (as after a restart: a new
    // incarnation with an empty table) and dials it at once. Time from its start until it holds
    // them all.
    for n in [100_000u32, 1_000_000] {
        let dir = tempfile::TempDir::new().unwrap();
        let ca = Ca::new(&dir.path().join("certs"), "resync");
        let (la, lb) = (free_addr(), free_addr());
        let b = rt.block_on(TestNode::start(NodeSpec {
            name: "node-b",
            listen: lb,
            peers: vec![("node-a".into(), la.to_string())],
            tls: ca.node("node-b"),
            state_dir: dir.path().join("b"),
            schemas: schemas(),
        }));
        let tb = b.tables.get("per_ip").unwrap();
        for i in 0..n {
            let mut h = tb.handle(key(i));
            tb.record(&mut h, Event::HttpReq, b.clock.tick());
        }
        let tls = ca.node("node-a");
        let start = Instant::now();
        let a = rt.block_on(TestNode::start(NodeSpec {
            name: "node-a",
            listen: la,
            peers: vec![("node-b".into(), lb.to_string())],
            tls,
            state_dir: dir.path().join("a"),
            schemas: schemas(),
        }));
        let ta = a.tables.get("per_ip").unwrap();
        rt.block_on(wait_for("the resync", Duration::from_secs(60), || {
            ta.len() >= n as usize
        }));
        let took = start.elapsed();
        let mut ready = a.repl.ready();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
                .await
                .ok()
        });
        let ready_at = start.elapsed();
        println!(
            "replication/resync {n}: all entries after {:.0} ms, ready after {:.0} ms",
            took.as_secs_f64() * 1000.0,
            ready_at.as_secs_f64() * 1000.0
        );
        rt.block_on(async {
            a.stop().await;
            b.stop().await;
        });
    }
}
