//! Expiry, bounded size with eviction, and the change feed.

mod util;

use sluice_sync::{Cursor, DataType as D, Event, FeedError, KeyType, TableSchema, wire};
use util::{EXPIRE, Node, ip, schema, schema_sized};

const EXPIRE_MS: u32 = EXPIRE.as_millis() as u32;

fn sweep_all(node: &Node, t: u32) -> usize {
    let mut cur = Cursor::new();
    node.table.sweep(&mut cur, 1_000_000, node.tick(t))
}

#[test]
fn an_entry_touched_on_any_origin_within_expire_survives() {
    let s = schema(&["gpc0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.1.0.1");
    let mut ha = a.table.track(k.clone(), a.tick(0));
    a.table.record(&mut ha, Event::IncGpc0(1), a.tick(0));
    a.sync_to(&b, 0);
    // b touches the entry later; a learns of it.
    let mut hb = b.table.track(k.clone(), b.tick(40_000));
    b.table.record(&mut hb, Event::IncGpc0(1), b.tick(40_000));
    b.sync_to(&a, 40_000);

    // Past a's own expiry, b's touch keeps the entry alive on a.
    assert_eq!(sweep_all(&a, EXPIRE_MS + 1), 0);
    assert_eq!(a.table.len(), 1);
    assert_eq!(
        a.read(&k, D::Gpc0, EXPIRE_MS + 1),
        Some(1),
        "a's own expired record no longer counts"
    );
    // Once no origin touched it within expire, it disappears.
    assert_eq!(sweep_all(&a, 40_000 + EXPIRE_MS), 1);
    assert_eq!(a.table.len(), 0);
    assert!(a.table.get(&k, a.tick(40_000 + EXPIRE_MS), false).is_none());
    assert_eq!(a.table.stats().expired, 1);
}

#[test]
fn a_sweep_stops_at_the_end_of_its_pass() {
    let a = Node::new("a", schema(&["gpc0"]));
    for i in 0..50u8 {
        let k = ip(&format!("10.2.0.{i}"));
        let mut h = a.table.track(k, a.tick(0));
        a.table.record(&mut h, Event::IncGpc0(1), a.tick(0));
    }
    // A budget far larger than the table: one pass, not the table over and over.
    let mut cur = Cursor::new();
    assert_eq!(
        a.table.sweep(&mut cur, 1_000_000, a.tick(EXPIRE_MS + 1)),
        50
    );
    assert!(cur.is_done(), "the pass ended at the end of the table");
    assert_eq!(a.table.len(), 0);
    // A done cursor starts the next pass.
    let mut h = a.table.track(ip("10.2.1.1"), a.tick(EXPIRE_MS + 2));
    a.table
        .record(&mut h, Event::IncGpc0(1), a.tick(EXPIRE_MS + 2));
    assert_eq!(a.table.sweep(&mut cur, 1_000_000, a.tick(3 * EXPIRE_MS)), 1);
    assert!(cur.is_done());
}

#[test]
fn an_expired_entry_reads_as_gone_before_the_sweeper_runs() {
    let a = Node::new("a", schema(&["gpc0"]));
    let k = ip("10.1.0.2");
    let mut h = a.table.track(k.clone(), a.tick(0));
    a.table.record(&mut h, Event::IncGpc0(4), a.tick(0));
    assert_eq!(a.read(&k, D::Gpc0, EXPIRE_MS - 1), Some(4));
    assert_eq!(a.read(&k, D::Gpc0, EXPIRE_MS), Some(0));
    // Tracking it again starts from zero.
    a.table
        .record(&mut h, Event::IncGpc0(1), a.tick(EXPIRE_MS + 5));
    assert_eq!(a.read(&k, D::Gpc0, EXPIRE_MS + 5), Some(1));
}

#[test]
fn expired_contributions_from_peers_are_not_applied() {
    let s = schema(&["gpc0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    let k = ip("10.1.0.3");
    let mut h = a.table.track(k.clone(), a.tick(0));
    a.table.record(&mut h, Event::IncGpc0(1), a.tick(0));
    let late = a.snapshot(EXPIRE_MS - 1);
    assert_eq!(late.len(), 1);
    assert_eq!(
        a.snapshot(EXPIRE_MS).len(),
        0,
        "a snapshot leaves expired records out"
    );
    let mut stale = late[0].1.clone();
    stale.idle_ms = EXPIRE_MS;
    assert_eq!(
        b.deliver(&late[0].0, &stale, 0),
        sluice_sync::Applied::Expired
    );
    assert_eq!(b.table.len(), 0);
}

#[test]
fn a_full_table_evicts_the_least_recently_touched_and_never_exceeds_size() {
    let size = 8;
    let a = Node::new("a", schema_sized(&["gpc0"], size));
    let keys: Vec<_> = (0..size).map(|i| ip(&format!("10.2.0.{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        a.table.track(k.clone(), a.tick(i as u32 * 10));
    }
    // Touch all but key 3 again, so key 3 is the least recently touched.
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != 3) {
        a.table.track(k.clone(), a.tick(1_000 + i as u32));
    }
    a.table.track(ip("10.2.1.1"), a.tick(2_000));
    assert_eq!(a.table.len(), size);
    assert!(
        a.table.get(&keys[3], a.tick(2_000), false).is_none(),
        "the least recently touched went"
    );
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert!(
            a.table.get(k, a.tick(2_000), false).is_some(),
            "key {i} kept"
        );
    }
    let st = a.table.stats();
    assert_eq!(
        (st.evictions, st.evictions_unexpired),
        (1, 1),
        "an eviction before expiry is counted"
    );
}

#[test]
fn a_large_table_stays_within_size_under_churn() {
    let size = 10_000;
    let a = Node::new("a", schema_sized(&["gpc0", "http_req_rate(10s)"], size));
    for i in 0..50_000u32 {
        let k = sluice_sync::Key::from_ip(std::net::Ipv4Addr::from(i).into());
        let mut h = a.table.track(k, a.tick(i));
        a.table.record(&mut h, Event::HttpReq, a.tick(i));
        assert!(a.table.len() <= size);
    }
    let st = a.table.stats();
    assert!(
        st.entries <= size && st.entries > size * 9 / 10,
        "entries {}",
        st.entries
    );
    assert_eq!(st.evictions as usize + st.entries, 50_000);
    // Sampled LRU: what survives is recent. Exact LRU would keep exactly the last `size` keys;
    // 16 samples per eviction keep nothing from the first half and mostly the last `size`.
    let mut cur = Cursor::new();
    let mut oldest = u32::MAX;
    let mut recent = 0;
    while !cur.is_done() {
        a.table.scan(&mut cur, 1000, a.tick(50_000), false, |v| {
            let n = u32::from_be_bytes(v.key.as_bytes().try_into().unwrap());
            oldest = oldest.min(n);
            recent += usize::from(n >= 40_000);
        });
    }
    assert!(oldest > 25_000, "oldest survivor {oldest}");
    assert!(
        recent * 100 >= st.entries * 85,
        "{recent} of {} survivors are among the last {size}",
        st.entries
    );
}

#[test]
fn the_change_feed_hands_each_changed_key_once_in_its_latest_state() {
    let a = Node::new("a", schema(&["gpc0"]));
    let mut c1 = a.table.subscribe().unwrap();
    let mut c2 = a.table.subscribe().unwrap();
    let k1 = ip("10.3.0.1");
    let k2 = ip("10.3.0.2");
    let mut h1 = a.table.track(k1.clone(), a.tick(0));
    for _ in 0..100 {
        a.table.record(&mut h1, Event::IncGpc0(1), a.tick(0));
    }
    a.table.track(k2.clone(), a.tick(0));
    let taken = a.take(&mut c1, 1);
    assert_eq!(taken.len(), 2, "two keys changed, each once");
    let c = &taken
        .iter()
        .find(|(_, c)| c.key == k1.as_bytes())
        .unwrap()
        .1;
    assert!(wire::check(c.into(), a.table.schema()).is_ok());
    assert_eq!(c.data.len(), 1);
    assert_eq!(
        (c.data[0].r#type, c.data[0].value),
        (D::Gpc0.wire(), 100),
        "latest state, not 100 deltas"
    );
    assert!(
        a.take(&mut c1, 1).is_empty(),
        "nothing new since the last take"
    );
    // The second consumer has its own position.
    assert_eq!(a.take(&mut c2, 1).len(), 2);
    a.table.record(&mut h1, Event::IncGpc0(1), a.tick(2));
    assert_eq!(a.take(&mut c1, 2).len(), 1);
    assert_eq!(a.take(&mut c2, 2).len(), 1);
    a.table.unsubscribe(c1);
    a.table.unsubscribe(c2);
}

#[test]
fn the_change_feed_hands_out_the_oldest_changes_first() {
    // One shard (64 entries), so the order is the feed's, not the order of shards.
    let a = Node::new("a", schema_sized(&["gpc0"], 64));
    let mut c = a.table.subscribe().unwrap();
    let keys: Vec<_> = (0..10).map(|i| ip(&format!("10.4.0.{i}"))).collect();
    let mut handles: Vec<_> = keys
        .iter()
        .map(|k| a.table.track(k.clone(), a.tick(0)))
        .collect();
    let take = |c: &mut sluice_sync::Consumer, n: usize| {
        let mut out = sluice_proto::sync::v1::TableContributions::default();
        a.table.take_changes(c, n, a.tick(1), &mut out);
        util::owned(&out)
            .into_iter()
            .map(|c| c.key)
            .collect::<Vec<_>>()
    };
    let bytes =
        |ks: &[sluice_sync::Key]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(take(&mut c, 5), bytes(&keys[..5]));
    // The keys just sent change again; the five that have waited longer go first. A feed
    // that sent the newest change first would send these five again and again under a
    // steady load, and the others never.
    for h in &mut handles[..5] {
        a.table.record(h, Event::IncGpc0(1), a.tick(1));
    }
    assert_eq!(take(&mut c, 5), bytes(&keys[5..]));
    assert_eq!(take(&mut c, 5), bytes(&keys[..5]));
    assert!(take(&mut c, 5).is_empty());
}

#[test]
fn a_stalled_consumer_costs_at_most_the_table_size() {
    let size = 1_000;
    let a = Node::new("a", schema_sized(&["gpc0"], size));
    let mut stalled = a.table.subscribe().unwrap();
    for i in 0..20_000u32 {
        let k = sluice_sync::Key::from_ip(std::net::Ipv4Addr::from(i).into());
        a.table.track(k, a.tick(i));
    }
    assert!(
        a.table.pending(&stalled) <= size,
        "pending {}",
        a.table.pending(&stalled)
    );
    // It then receives the latest state of what is in the table, and nothing twice.
    let taken = a.take(&mut stalled, 20_000);
    assert_eq!(taken.len(), a.table.len());
    let mut keys: Vec<_> = taken.iter().map(|(_, c)| c.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), taken.len());
}

#[test]
fn consumers_are_bounded_and_reusable() {
    let a = Node::new("a", schema(&["gpc0"]));
    let mut all: Vec<_> = (0..sluice_sync::MAX_CONSUMERS)
        .map(|_| a.table.subscribe().unwrap())
        .collect();
    assert_eq!(a.table.subscribe().unwrap_err(), FeedError::Full);
    let mut last = all.pop().unwrap();
    // A change is pending for `last`; freeing it clears its bit so a new consumer starts clean.
    a.table.track(ip("10.3.1.1"), a.tick(0));
    assert_eq!(a.take(&mut last, 0).len(), 1);
    a.table.track(ip("10.3.1.1"), a.tick(1));
    a.table.unsubscribe(last);
    let mut fresh = a.table.subscribe().unwrap();
    assert!(a.take(&mut fresh, 1).is_empty());
    a.table.track(ip("10.3.1.1"), a.tick(2));
    assert_eq!(
        a.take(&mut fresh, 2).len(),
        1,
        "the reused consumer sees new changes"
    );
    let local = TableSchema::new("l", KeyType::Ip, 1, EXPIRE, vec![], false).unwrap();
    let l = Node::new("a", local);
    assert!(matches!(
        l.table.subscribe(),
        Err(FeedError::NotReplicated(_))
    ));
}

#[test]
fn snapshots_and_scans_visit_every_entry_in_bounded_chunks() {
    let a = Node::new("a", schema_sized(&["gpc0"], 5_000));
    let b = Node::new("b", schema_sized(&["gpc0"], 5_000));
    for i in 0..3_000u32 {
        let k = sluice_sync::Key::from_ip(std::net::Ipv4Addr::from(i).into());
        let mut h = a.table.track(k, a.tick(0));
        a.table
            .record(&mut h, Event::IncGpc0(u64::from(i)), a.tick(0));
    }
    a.sync_to(&b, 1);
    assert_eq!(b.table.len(), 3_000);
    let mut cur = Cursor::new();
    let mut chunks = 0;
    let mut total = 0;
    while !cur.is_done() {
        let mut out = Vec::new();
        let n = b
            .table
            .snapshot_chunk(&mut cur, 100, b.tick(1), None, &mut out);
        assert!(n <= 100);
        total += n;
        chunks += 1;
    }
    assert_eq!(total, 3_000);
    assert!(chunks >= 30);
    let mut cur = Cursor::new();
    let mut sum = 0;
    while !cur.is_done() {
        b.table.scan(&mut cur, 64, b.tick(1), false, |v| {
            sum += v
                .values
                .iter()
                .find(|(t, _)| *t == D::Gpc0)
                .and_then(|(_, v)| *v)
                .unwrap();
        });
    }
    assert_eq!(sum, (0..3_000u64).sum::<u64>());
}

#[test]
fn clear_all_resets_every_entry_fleet_wide() {
    let s = schema(&["gpc0"]);
    let a = Node::new("a", s.clone());
    let b = Node::new("b", s);
    for i in 0..50 {
        let mut h = b.table.track(ip(&format!("10.4.0.{i}")), b.tick(0));
        b.table.record(&mut h, Event::IncGpc0(3), b.tick(0));
    }
    b.sync_to(&a, 1);
    assert_eq!(a.table.clear_all(100, a.tick(1)), 50);
    a.sync_to(&b, 2);
    for i in 0..50 {
        assert_eq!(b.read(&ip(&format!("10.4.0.{i}")), D::Gpc0, 2), Some(0));
    }
}

#[test]
fn a_table_holds_exactly_size_entries_even_from_concurrent_threads() {
    use std::sync::Arc;
    let size = 20_000;
    let a = Arc::new(Node::new("a", schema_sized(&["gpc0"], size)));
    let threads: Vec<_> = (0..2u32)
        .map(|w| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..30_000u32 {
                    let k = sluice_sync::Key::from_ip(std::net::Ipv4Addr::from(w << 24 | i).into());
                    a.table.track(k, a.tick(i));
                    assert!(a.table.len() <= size);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        a.table.len(),
        size,
        "full, not short of size because of uneven shards"
    );
    let mut counted = 0;
    let mut cur = Cursor::new();
    while !cur.is_done() {
        counted += a.table.scan(&mut cur, 1000, a.tick(30_000), false, |_| {});
    }
    assert_eq!(counted, size);
    assert_eq!(a.table.stats().evictions, 60_000 - size as u64);
}
