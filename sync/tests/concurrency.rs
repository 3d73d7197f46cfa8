//! Threads hammering one table lose no increment, on one shared key and on keys of their own.

mod util;

use std::sync::Arc;
use std::thread;

use sluice_sync::{DataType as D, Event, Hlc, Key, OriginName, Origins, Table, Tick};
use util::{ip, schema_sized};

#[test]
fn threads_hammering_same_and_different_keys_lose_no_increment() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 50_000;
    let origins = Arc::new(Origins::new(
        OriginName {
            node: "a".into(),
            incarnation: 1,
        },
        5_000,
    ));
    let table = Arc::new(Table::new(
        schema_sized(
            &["gpc0", "http_req_cnt", "conn_cur", "http_req_rate(1h)"],
            10_000,
        ),
        origins,
        Arc::new(Hlc::new()),
    ));
    let mut consumer = table.subscribe().unwrap();
    let shared = ip("10.9.9.9");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let table = table.clone();
            let shared = shared.clone();
            thread::spawn(move || {
                let mut hs = table.track(shared, Tick(0));
                let mut own = table.track(Key::from_int(t as i64), Tick(0));
                for i in 0..ROUNDS {
                    let now = Tick(i as u32 / 100);
                    table.record(&mut hs, Event::HttpReq, now);
                    table.record(&mut hs, Event::ConnOpen, now);
                    table.record(&mut own, Event::IncGpc0(2), now);
                    table.record(&mut hs, Event::ConnClose, now);
                }
            })
        })
        .collect();
    // Drain the feed concurrently, as a peer session would.
    let mut taken = sluice_proto::sync::v1::TableContributions::default();
    while !handles.iter().all(|h| h.is_finished()) {
        table.take_changes(&mut consumer, 64, Tick(0), &mut taken);
    }
    for h in handles {
        h.join().unwrap();
    }
    let now = Tick(1_000);
    assert_eq!(
        table.read_key(&shared, D::HttpReqCnt, now),
        Some(THREADS * ROUNDS)
    );
    assert_eq!(
        table.read_key(&shared, D::HttpReqRate, now),
        Some(THREADS * ROUNDS)
    );
    assert_eq!(table.read_key(&shared, D::ConnCur, now), Some(0));
    for t in 0..THREADS {
        assert_eq!(
            table.read_key(&Key::from_int(t as i64), D::Gpc0, now),
            Some(2 * ROUNDS)
        );
    }
    assert!(!taken.is_empty());
}
