//! What does the table engine cost on the request path and on the replication path?
//!
//! `cargo bench -p sluice-sync --bench table`
//!
//! - `hot/record+read`: one request on an existing key (record `HttpReq`, then read the merged
//!   `http_req_rate`), 1 thread and 2 threads on their own keys (per-op time per thread: equal
//!   times mean linear scaling);
//! - `create`: tracking a key the table does not hold, with room, and in a full table (evicts);
//! - `apply`: checking and applying a remote origin's contribution, from memory and from bytes;
//! - `resync`: what a restarted node does with a peer's snapshot of 100,000 entries: decode
//!   its messages and apply them to an empty table (the receiving half of a resync).
//!
//! Results and the machine they came from are in `docs/benchmarks.md`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use sluice_proto::sync::v1 as pb;
use sluice_sync::{
    Cursor, DataType, Event, Hlc, Key, KeyType, OriginName, Origins, Table, TableSchema, Tables,
    Tick, wire,
};

const STORE: &[&str] = &["http_req_rate(10s)", "conn_cur", "gpc0"];

fn schema(size: usize) -> TableSchema {
    let store = TableSchema::parse_store(STORE).unwrap();
    TableSchema::new(
        "per_ip",
        KeyType::Ip,
        size,
        Duration::from_secs(60),
        store,
        true,
    )
    .unwrap()
}

fn table(size: usize) -> Table {
    let schema = schema(size);
    let origins = Arc::new(Origins::new(
        OriginName {
            node: "bench".into(),
            incarnation: 1,
        },
        5_000,
    ));
    Table::new(schema, origins, Arc::new(Hlc::new()))
}

fn ip_key(i: u32) -> Key {
    Key::from_ip(Ipv4Addr::from(i).into())
}

fn hot(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot");
    let t = table(1_000_000);
    let mut h = t.track(ip_key(1), Tick(0));
    let mut now = 0u32;
    g.bench_function("record+read/1 thread", |b| {
        b.iter(|| {
            now = now.wrapping_add(1) & 0xffff;
            t.record(&mut h, Event::HttpReq, Tick(now));
            black_box(t.read(&mut h, DataType::HttpReqRate, Tick(now)))
        })
    });
    let t = Arc::new(table(1_000_000));
    g.bench_function("record+read/2 threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let workers: Vec<_> = (0..2u32)
                .map(|w| {
                    let (t, barrier) = (t.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut h = t.track(ip_key(100 + w), Tick(0));
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..iters {
                            let now = Tick((i & 0xffff) as u32);
                            t.record(&mut h, Event::HttpReq, now);
                            black_box(t.read(&mut h, DataType::HttpReqRate, now));
                        }
                        start.elapsed()
                    })
                })
                .collect();
            let times: Vec<Duration> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            times.into_iter().max().unwrap()
        })
    });
    g.finish();
}

fn create(c: &mut Criterion) {
    let mut g = c.benchmark_group("create");
    g.bench_function("new key, room", |b| {
        b.iter_custom(|iters| {
            let t = table(iters as usize + 1);
            let start = Instant::now();
            for i in 0..iters {
                black_box(t.track(ip_key(i as u32), Tick(0)));
            }
            start.elapsed()
        })
    });
    let t = table(100_000);
    for i in 0..100_000 {
        t.track(ip_key(i), Tick(0));
    }
    let mut next = 100_000u32;
    g.bench_function("new key, full table (evicts)", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            black_box(t.track(ip_key(next), Tick(next / 1000)))
        })
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    // Contributions of a remote origin for 65,536 keys, as its snapshot would carry them.
    let src = table(100_000);
    for i in 0..65_536 {
        let mut h = src.track(ip_key(i), Tick(0));
        src.record(&mut h, Event::HttpReq, Tick(0));
        src.record(&mut h, Event::IncGpc0(1), Tick(0));
    }
    let mut chunks: Vec<pb::TableContributions> = Vec::new();
    let mut cur = Cursor::new();
    while !cur.is_done() {
        src.snapshot_chunk(&mut cur, 4096, Tick(1), None, &mut chunks);
    }
    // Owned copies, so each iteration can bump a version.
    let cs: Vec<pb::Contribution> = chunks
        .iter()
        .flat_map(|tc| tc.contributions())
        .map(|c| c.and_then(|c| c.to_message()).unwrap())
        .collect();
    let dst = table(100_000);
    let remote = dst
        .origins()
        .intern(&OriginName {
            node: "peer".into(),
            incarnation: 1,
        })
        .unwrap();
    let mut i = 0u64;
    g.bench_function("contribution", |b| {
        b.iter(|| {
            let c = &cs[i as usize & 0xffff];
            i += 1;
            let c = wire::Contribution {
                version: i,
                ..c.into()
            };
            let checked = wire::check(c, dst.schema()).unwrap();
            black_box(dst.apply(remote, &checked, Tick(2)))
        })
    });
    // The replication path: read a 1,000-contribution batch from bytes, check and apply it.
    let origin = pb::Origin {
        node: "peer".into(),
        incarnation: 1,
    };
    let mut versions = 1_000_000u64;
    g.throughput(criterion::Throughput::Elements(1000));
    g.bench_function("decode+check+apply, batch of 1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                versions += 1;
                let mut batch = pb::TableContributions::new("per_ip", origin.clone());
                for c in &cs[..1000] {
                    batch.push(&c.key, versions, c.idle_ms, c.epoch, &c.data);
                }
                let bytes = batch.encode_to_vec();
                let start = Instant::now();
                let decoded = pb::TableContributions::decode(bytes.as_slice()).unwrap();
                let mut data = Vec::new();
                for c in decoded.contributions() {
                    let c = c.unwrap();
                    data.clear();
                    data.extend(c.data().map(Result::unwrap));
                    let c = wire::Contribution {
                        key: c.key,
                        version: c.version,
                        idle_ms: c.idle_ms,
                        epoch: c.epoch,
                        data: &data,
                    };
                    let c = wire::check(c, dst.schema()).unwrap();
                    black_box(dst.apply(remote, &c, Tick(3)));
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn resync(c: &mut Criterion) {
    const N: u32 = 100_000;
    let mut g = c.benchmark_group("resync");
    g.sample_size(10);
    let src = table(1_000_000);
    for i in 0..N {
        let mut h = src.track(ip_key(i), Tick(0));
        src.record(&mut h, Event::HttpReq, Tick(0));
        src.record(&mut h, Event::ConnOpen, Tick(0));
        src.record(&mut h, Event::IncGpc0(1), Tick(0));
    }
    // The snapshot as the sender encodes it: messages of 4,096 contributions.
    let mut messages = Vec::new();
    let mut cur = Cursor::new();
    while !cur.is_done() {
        let mut tables = Vec::new();
        src.snapshot_chunk(&mut cur, 4096, Tick(1), None, &mut tables);
        let seq = messages.len() as u64 + 1;
        messages.push(pb::Contributions { seq, tables }.encode_to_vec());
    }
    let restarted = || {
        let tables = Tables::new(
            OriginName {
                node: "restarted".into(),
                incarnation: 2,
            },
            5_000,
        );
        tables.reconcile(vec![schema(1_000_000)]).unwrap();
        tables
    };
    g.throughput(criterion::Throughput::Elements(N.into()));
    g.bench_function("decode+apply 100,000 into an empty table", |b| {
        b.iter_batched(
            restarted,
            |tables| {
                for m in &messages {
                    let m = pb::Contributions::decode(m.as_slice()).unwrap();
                    tables.apply_message(&m, None, Tick(2)).unwrap();
                }
                let n = tables.get("per_ip").unwrap().len();
                assert_eq!(n, N as usize);
                tables
            },
            criterion::BatchSize::PerIteration,
        )
    });
    // The part of the above a node cannot apply in slices: decoding the messages and reading
    // and checking every contribution before any is applied.
    let tables = restarted();
    g.bench_function("decode+check 100,000", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &messages {
                let m = pb::Contributions::decode(m.as_slice()).unwrap();
                n += tables.receive(&m, None).unwrap().check_all().unwrap().len();
            }
            assert_eq!(n, N as usize);
        })
    });
    g.finish();
}

criterion_group!(benches, hot, create, apply, resync);
criterion_main!(benches);
