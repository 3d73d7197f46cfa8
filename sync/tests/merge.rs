//! Every data type and every merge rule of SPEC §5, on nodes exchanging real wire messages.

mod util;

use sluice_sync::{Applied, DataType as D, Event, KeyType, SetError, TableSchema};
use util::{Node, full_sync, ip, schema};

const ALL: &[&str] = &[
    "server_id",
    "gpt0",
    "gpc0",
    "gpc1",
    "conn_cnt",
    "conn_cur",
    "conn_rate(10s)",
    "sess_cnt",
    "sess_rate(10s)",
    "http_req_cnt",
    "http_req_rate(10s)",
    "http_err_cnt",
    "http_err_rate(10s)",
    "bytes_in_cnt",
    "bytes_in_rate(10s)",
    "bytes_out_cnt",
    "bytes_out_rate(10s)",
    "gpc0_rate(10s)",
];

/// Records one of every event on a node, `n` times.
fn record_all(node: &Node, key: &sluice_sync::Key, n: u64, t: u32) {
    let mut h = node.table.track(key.clone(), node.tick(t));
    for _ in 0..n {
        for ev in [
            Event::ConnOpen,
            Event::SessOpen,
            Event::HttpReq,
            Event::HttpErr,
            Event::BytesIn(1000),
            Event::BytesOut(3000),
            Event::IncGpc0(2),
            Event::IncGpc1(5),
        ] {
            node.table.record(&mut h, ev, node.tick(t));
        }
    }
}

#[test]
fn counters_and_rates_of_every_type_sum_over_origins() {
    let a = Node::new("a", schema(ALL));
    let b = Node::with_offset("b", schema(ALL), 1_000_000);
    let k = ip("10.0.0.1");
    record_all(&a, &k, 3, 100);
    record_all(&b, &k, 4, 100);
    full_sync(&[&a, &b], 200);
    for node in [&a, &b] {
        let r = |ty| node.read(&k, ty, 200);
        for (ty, per_round) in [
            (D::ConnCnt, 1),
            (D::ConnRate, 1),
            (D::SessCnt, 1),
            (D::SessRate, 1),
            (D::HttpReqCnt, 1),
            (D::HttpReqRate, 1),
            (D::HttpErrCnt, 1),
            (D::HttpErrRate, 1),
            (D::BytesInCnt, 1000),
            (D::BytesInRate, 1000),
            (D::BytesOutCnt, 3000),
            (D::BytesOutRate, 3000),
            (D::Gpc0, 2),
            (D::Gpc0Rate, 2),
            (D::Gpc1, 5),
        ] {
            assert_eq!(r(ty), Some(7 * per_round), "{ty} on {}", node.name);
        }
        // Both nodes' connections are open and both origins were heard from.
        assert_eq!(
            r(D::ConnCur),
            Some(if node.name.node == "a" { 3 } else { 4 }),
            "peers have not been heard yet, so only the local gauge counts"
        );
    }
}

#[test]
fn rates_travel_as_ages_and_need_no_clock_sync() {
    // b's clock is 3,000,000 ms ahead of a's; the rate on b must still slide with a's period.
    let s = schema(&["http_req_rate(10s)"]);
    let a = Node::new("a", s.clone());
    let b = Node::with_offset("b", s, 3_000_000);
    let k = ip("10.0.0.2");
    let mut h = a.table.track(k.clone(), a.tick(0));
    for _ in 0..100 {
        a.table.record(&mut h, Event::HttpReq, a.tick(4_000));
    }
    a.sync_to(&b, 6_000);
    assert_eq!(b.read(&k, D::HttpReqRate, 6_000), Some(100));
    // a's period started at 0 (its first event); at 12.5 s, 7.5 s of the previous period remain.
    assert_eq!(a.read(&k, D::HttpReqRate, 12_500), Some(75));
    assert_eq!(b.read(&k, D::HttpReqRate, 12_500), Some(75));
    assert_eq!(b.read(&k, D::HttpReqRate, 20_000), Some(0));
}

#[test]
fn a_rate_read_at_several_ticks_under_one_lock_matches_single_reads() {
    let s = schema(&["http_req_rate(10s)", "gpc0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.0.0.4");
    let mut ha = a.table.track(k.clone(), a.tick(0));
    let mut hb = b.table.track(k.clone(), b.tick(0));
    for _ in 0..60 {
        a.table.record(&mut ha, Event::HttpReq, a.tick(1_000));
        b.table.record(&mut hb, Event::HttpReq, b.tick(2_000));
    }
    b.sync_to(&a, 3_000);
    let ticks = [3_000, 9_999, 12_500, 15_000, 21_000];
    let seen = a
        .table
        .read_with(&mut ha, D::HttpReqRate, |read| {
            ticks.map(|t| read(a.tick(t)))
        })
        .expect("the entry stores the rate");
    assert_eq!(seen, ticks.map(|t| a.read(&k, D::HttpReqRate, t)));
    assert_eq!(seen[0], Some(120), "both origins' events, merged");
    assert_eq!(seen[4], Some(0));
    assert!(
        a.table
            .read_with(&mut ha, D::ConnCur, |read| read(a.tick(0)))
            .is_none(),
        "a type the table does not store reads as nothing"
    );
}

#[test]
fn gauges_count_only_live_origins() {
    let s = schema(&["conn_cur"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.0.0.3");
    let mut ha = a.table.track(k.clone(), a.tick(0));
    let mut hb = b.table.track(k.clone(), b.tick(0));
    for _ in 0..3 {
        a.table.record(&mut ha, Event::ConnOpen, a.tick(0));
        b.table.record(&mut hb, Event::ConnOpen, b.tick(0));
    }
    b.table.record(&mut hb, Event::ConnClose, b.tick(0));
    b.sync_to(&a, 10);
    let b_on_a = a.origins.lookup(&b.name).unwrap();
    assert_eq!(a.read(&k, D::ConnCur, 10), Some(3), "b never heard: dead");
    a.origins.heard(b_on_a, a.tick(10));
    assert_eq!(a.read(&k, D::ConnCur, 10), Some(5));
    assert_eq!(
        a.read(&k, D::ConnCur, 5_010),
        Some(5),
        "within dead_after (5 s)"
    );
    assert_eq!(
        a.read(&k, D::ConnCur, 5_011),
        Some(3),
        "silent longer than dead_after"
    );
    // Closing more than was opened never goes below zero.
    for _ in 0..10 {
        a.table.record(&mut ha, Event::ConnClose, a.tick(5_011));
    }
    assert_eq!(a.read(&k, D::ConnCur, 5_011), Some(0));
}

#[test]
fn registers_last_writer_wins_and_ties_break_by_node_name() {
    let s = schema(&["server_id", "gpt0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.0.0.4");
    let (mut ha, mut hb) = (a.table.handle(k.clone()), b.table.handle(k.clone()));
    // Same wall-clock millisecond on fresh clocks: the stamps are equal, "b" > "a" wins.
    // Each write returns the value it replaced: none yet, on either node.
    let first = a
        .table
        .set_register(&mut ha, D::ServerId, 1, 1_000, a.tick(0));
    assert_eq!(first, None);
    let first = b
        .table
        .set_register(&mut hb, D::ServerId, 2, 1_000, b.tick(0));
    assert_eq!(first, None);
    full_sync(&[&a, &b], 1);
    assert_eq!(a.read(&k, D::ServerId, 1), Some(2));
    assert_eq!(b.read(&k, D::ServerId, 1), Some(2));
    // A later write wins even when its wall clock is behind: a has observed b's stamp.
    let before = a
        .table
        .set_register(&mut ha, D::ServerId, 3, 500, a.tick(2));
    assert_eq!(before, Some(2), "the merged value it replaced, b's");
    full_sync(&[&a, &b], 3);
    assert_eq!(a.read(&k, D::ServerId, 3), Some(3));
    assert_eq!(b.read(&k, D::ServerId, 3), Some(3));
    assert_eq!(
        a.read(&k, D::Gpt0, 3),
        None,
        "an unwritten register has no value"
    );
    assert_eq!(
        a.table.set_register(&mut ha, D::Gpt0, 7, 2_000, a.tick(3)),
        None
    );
    a.sync_to(&b, 4);
    assert_eq!(b.read(&k, D::Gpt0, 4), Some(7));
}

#[test]
fn a_reset_wins_over_increments_made_before_it() {
    let s = schema(&["gpc0", "http_req_rate(10s)", "gpt0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.0.0.5");
    let mut ha = a.table.track(k.clone(), a.tick(0));
    for _ in 0..5 {
        a.table.record(&mut ha, Event::IncGpc0(1), a.tick(0));
        a.table.record(&mut ha, Event::HttpReq, a.tick(0));
    }
    a.table.set_register(&mut ha, D::Gpt0, 9, 1_000, a.tick(0));
    let mut hb = b.table.track(k.clone(), b.tick(0));
    b.table.record(&mut hb, Event::IncGpc0(1), b.tick(0));
    full_sync(&[&a, &b], 1);
    assert_eq!(b.read(&k, D::Gpc0, 1), Some(6));

    // b clears the key; racing with it, a increments twice more before it hears of the clear.
    b.table.clear_key(k.clone(), 2_000, b.tick(2));
    a.table.record(&mut ha, Event::IncGpc0(2), a.tick(2));
    assert_eq!(
        b.read(&k, D::Gpc0, 2),
        Some(0),
        "the clear applies locally at once"
    );
    full_sync(&[&a, &b], 3);
    full_sync(&[&a, &b], 4);
    for n in [&a, &b] {
        assert_eq!(n.read(&k, D::Gpc0, 4), Some(0), "reset wins on {}", n.name);
        assert_eq!(n.read(&k, D::HttpReqRate, 4), Some(0));
        assert_eq!(
            n.read(&k, D::Gpt0, 4),
            None,
            "a register written before the reset is cleared"
        );
    }
    // Increments made after a node has seen the reset count.
    a.table.record(&mut ha, Event::IncGpc0(1), a.tick(5));
    b.table.record(&mut hb, Event::IncGpc0(1), b.tick(5));
    full_sync(&[&a, &b], 6);
    assert_eq!(a.read(&k, D::Gpc0, 6), Some(2));
    assert_eq!(b.read(&k, D::Gpc0, 6), Some(2));
}

#[test]
fn versions_make_delivery_idempotent_and_order_insensitive() {
    let s = schema(&["gpc0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.0.0.6");
    let mut ha = a.table.track(k.clone(), a.tick(0));
    a.table.record(&mut ha, Event::IncGpc0(1), a.tick(0));
    let old = a.snapshot(0);
    a.table.record(&mut ha, Event::IncGpc0(1), a.tick(1));
    let new = a.snapshot(1);
    assert_eq!(b.deliver(&new[0].0, &new[0].1, 2), Applied::Updated);
    assert_eq!(
        b.deliver(&new[0].0, &new[0].1, 2),
        Applied::Stale,
        "a duplicate changes nothing"
    );
    assert_eq!(
        b.deliver(&old[0].0, &old[0].1, 2),
        Applied::Stale,
        "an older version changes nothing"
    );
    assert_eq!(b.read(&k, D::Gpc0, 2), Some(2));
}

#[test]
fn admin_set_moves_counters_and_writes_registers() {
    let s = schema(&["gpc0", "server_id", "conn_cur", "http_req_rate(1s)"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.0.0.7");
    let mut hb = b.table.track(k.clone(), b.tick(0));
    b.table.record(&mut hb, Event::IncGpc0(5), b.tick(0));
    b.sync_to(&a, 1);
    a.table.set(k.clone(), D::Gpc0, 1, 10, a.tick(1)).unwrap();
    a.table
        .set(k.clone(), D::ServerId, 4, 10, a.tick(1))
        .unwrap();
    a.sync_to(&b, 2);
    assert_eq!(b.read(&k, D::Gpc0, 2), Some(1));
    assert_eq!(b.read(&k, D::ServerId, 2), Some(4));
    assert_eq!(
        a.table.set(k.clone(), D::ConnCur, 1, 10, a.tick(2)),
        Err(SetError::NotSettable(D::ConnCur))
    );
    assert_eq!(
        a.table.set(k.clone(), D::HttpReqRate, 1, 10, a.tick(2)),
        Err(SetError::NotSettable(D::HttpReqRate))
    );
    assert!(matches!(
        a.table.set(k, D::Gpc1, 1, 10, a.tick(2)),
        Err(SetError::NotStored { .. })
    ));
}

#[test]
fn keys_of_every_type_work() {
    for (key_type, text) in [
        ("ip", "2001:db8::7"),
        ("integer", "-12"),
        ("string(16)", "alice"),
        ("binary(4)", "0a0b0c0d"),
    ] {
        let kt: KeyType = key_type.parse().unwrap();
        let store = TableSchema::parse_store(&["gpc0"]).unwrap();
        let s = TableSchema::new("t", kt, 10, util::EXPIRE, store, true).unwrap();
        let a = Node::new("a", s.clone());
        let b = Node::new("b", s);
        let k = kt.parse_key(text).unwrap();
        let mut h = a.table.track(k.clone(), a.tick(0));
        a.table.record(&mut h, Event::IncGpc0(3), a.tick(0));
        a.sync_to(&b, 1);
        assert_eq!(b.read(&k, D::Gpc0, 1), Some(3), "{key_type}");
        let view = b.table.get(&k, b.tick(1), true).unwrap();
        assert_eq!(kt.format_key(&view.key).trim_start_matches("0x"), text);
        assert_eq!(view.origins.len(), 1);
    }
}

#[test]
fn types_not_stored_are_ignored_on_the_hot_path() {
    let a = Node::new("a", schema(&["gpc0"]));
    let k = ip("10.0.0.8");
    let mut h = a.table.track(k.clone(), a.tick(0));
    a.table.record(&mut h, Event::HttpReq, a.tick(0));
    a.table.set_register(&mut h, D::ServerId, 1, 1, a.tick(0));
    assert_eq!(a.read(&k, D::HttpReqCnt, 0), None);
    assert_eq!(a.read(&k, D::Gpc0, 0), Some(0));
}

#[test]
fn ticks_wrapping_around_u32_change_nothing() {
    // Both clocks cross 2^32 ms during the test, b's well past the halfway point of a's.
    let s = schema(&["http_req_rate(10s)", "gpc0"]);
    let a = Node::with_offset("a", s.clone(), u32::MAX - 3_000);
    let b = Node::with_offset("b", s, u32::MAX / 2 + 77);
    let k = ip("10.0.0.9");
    let mut h = a.table.track(k.clone(), a.tick(0));
    for t in (0..10_000).step_by(100) {
        a.table.record(&mut h, Event::HttpReq, a.tick(t));
    }
    a.sync_to(&b, 10_000);
    assert_eq!(a.read(&k, D::HttpReqRate, 10_000), Some(100));
    assert_eq!(b.read(&k, D::HttpReqRate, 10_000), Some(100));
    assert_eq!(a.read(&k, D::HttpReqRate, 15_000), Some(50));
    assert_eq!(b.read(&k, D::HttpReqRate, 15_000), Some(50));
}
