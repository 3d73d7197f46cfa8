//! Replication between real nodes in one process, over real mutual TLS on loopback: a full
//! mesh converging to ground truth, restarts and joins resynced by snapshots, partitions that
//! heal to exact sums, refused peers, certificate rotation, and bad peer input.

mod util;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_sync::{DataType as D, Event, Key, KeyType, TableSchema, Tracked};
use tempfile::TempDir;
use util::fleet::{Ca, Link, NodeSpec, TestNode, eventually, free_addr, schemas};

const WAIT: Duration = Duration::from_secs(20);

fn key(i: u32) -> Key {
    Key::from_ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into())
}

fn read(n: &TestNode, k: &Key, ty: D) -> Option<u64> {
    n.tables
        .get("per_ip")
        .unwrap()
        .read_key(k, ty, n.clock.tick())
}

fn record(n: &TestNode, k: &Key, ev: Event) {
    let t = n.tables.get("per_ip").unwrap();
    let mut h: Tracked = t.handle(k.clone());
    t.record(&mut h, ev, n.clock.tick());
}

struct Fleet {
    _dir: TempDir,
    ca: Ca,
    nodes: Vec<TestNode>,
    /// The network in front of each node: every peer reaches node `i` through `links[i]`, so
    /// cutting it isolates the node (peers dial the nodes whose names sort after theirs).
    links: Vec<Link>,
    listens: Vec<std::net::SocketAddr>,
    dir: std::path::PathBuf,
}

/// Starts `names` (sorted) as a full mesh.
async fn fleet(names: &[&str]) -> Fleet {
    fleet_with_dead_after(names, None).await
}

/// Starts `names` (sorted) as a full mesh whose peers are dropped after `dead_after` of
/// silence (the test nodes' default if `None`), heartbeats a quarter of that apart.
async fn fleet_with_dead_after(names: &[&str], dead_after: Option<Duration>) -> Fleet {
    let dir = TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "one");
    let listens: Vec<_> = names.iter().map(|_| free_addr()).collect();
    let mut links = Vec::new();
    for l in &listens {
        links.push(Link::new(*l).await);
    }
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let peers = (0..names.len())
            .filter(|&j| j != i)
            .map(|j| (names[j].to_string(), links[j].addr.to_string()))
            .collect();
        let spec = NodeSpec {
            name,
            listen: listens[i],
            peers,
            tls: ca.node(name),
            state_dir: dir.path().join(name),
            schemas: schemas(),
        };
        nodes.push(match dead_after {
            Some(d) => TestNode::start_with_dead_after(spec, d).await,
            None => TestNode::start(spec).await,
        });
    }
    let path = dir.path().to_path_buf();
    Fleet {
        _dir: dir,
        ca,
        nodes,
        links,
        listens,
        dir: path,
    }
}

impl Fleet {
    async fn all_connected(&self) -> bool {
        let nodes = &self.nodes;
        eventually(WAIT, || {
            nodes
                .iter()
                .all(|n| nodes.iter().all(|m| m.name == n.name || n.peer_up(&m.name)))
        })
        .await
    }

    async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_to_ground_truth() {
    let f = fleet(&["edge-1", "edge-2", "edge-3"]).await;
    assert!(f.all_connected().await, "mesh up");
    for r in 0..30u32 {
        for (i, n) in f.nodes.iter().enumerate() {
            for k in 0..20 {
                record(n, &key(k), Event::HttpReq);
                if k % 3 == i as u32 {
                    record(n, &key(k), Event::IncGpc0(u64::from(r % 4)));
                }
            }
        }
    }
    let want_req = 90;
    let want_gpc0: HashMap<u32, u64> = (0..20)
        .map(|k| (k, (0..30u32).map(|r| u64::from(r % 4)).sum()))
        .collect();
    let ok = eventually(WAIT, || {
        f.nodes.iter().all(|n| {
            (0..20).all(|k| {
                read(n, &key(k), D::HttpReqCnt) == Some(want_req)
                    && read(n, &key(k), D::HttpReqRate) == Some(want_req)
                    && read(n, &key(k), D::Gpc0) == Some(want_gpc0[&k])
            })
        })
    })
    .await;
    assert!(ok, "every node holds the ground truth");

    // A register written on two nodes at once settles on one winner everywhere.
    let k = key(500);
    for (n, v) in [(&f.nodes[0], 1), (&f.nodes[2], 3)] {
        let t = n.tables.get("per_ip").unwrap();
        let mut h = t.handle(k.clone());
        t.set_register(&mut h, D::ServerId, v, 1_000_000, n.clock.tick());
    }
    let ok = eventually(WAIT, || {
        let vals: Vec<_> = f.nodes.iter().map(|n| read(n, &k, D::ServerId)).collect();
        vals[0].is_some() && vals.iter().all(|v| *v == vals[0])
    })
    .await;
    assert!(ok, "same winner everywhere");
    // Equal wall clocks: the tie goes to the larger node name.
    assert_eq!(read(&f.nodes[1], &k, D::ServerId), Some(3));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_the_whole_table_back_and_turns_ready() {
    let mut f = fleet(&["edge-1", "edge-2", "edge-3"]).await;
    assert!(f.all_connected().await);
    for k in 0..5_000 {
        record(&f.nodes[k as usize % 3], &key(k), Event::IncGpc0(1));
    }
    let all_have = |n: &TestNode| n.tables.get("per_ip").unwrap().len() == 5_000;
    assert!(eventually(WAIT, || f.nodes.iter().all(all_have)).await);

    // Restart edge-3 as a new process would: new tables, same state_dir, a new incarnation.
    let old = f.nodes.pop().unwrap();
    old.stop().await;
    let restarted = TestNode::start(NodeSpec {
        name: "edge-3",
        listen: f.listens[2],
        peers: vec![],
        tls: f.ca.node("edge-3"),
        state_dir: f.dir.join("edge-3"),
        schemas: schemas(),
    })
    .await;
    assert!(
        restarted.repl.members().iter().any(|m| m.name == "edge-1"),
        "membership survived the restart"
    );
    let mut ready = restarted.repl.ready();
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("ready after a snapshot")
        .unwrap();
    assert!(
        eventually(WAIT, || all_have(&restarted)).await,
        "whole table back"
    );
    assert!((0..5_000).all(|k| read(&restarted, &key(k), D::Gpc0) == Some(1)));
    // It then receives live updates.
    record(&f.nodes[0], &key(1), Event::IncGpc0(5));
    assert!(eventually(WAIT, || read(&restarted, &key(1), D::Gpc0) == Some(6)).await);
    f.nodes.push(restarted);
    f.stop().await;
}

/// A session is woken only when it waits for changes, so a missed wake-up would leave a change
/// unsent until the next heartbeat or batch. Heartbeats are 150 s apart here: a change that
/// arrives within the deadline was sent because it happened. Bursts of every size, some
/// written while the last is still in flight, on both nodes at once, cover a session that
/// is idle, sending, or has its window full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_sent_when_it_happens_not_at_a_heartbeat() {
    let f = fleet_with_dead_after(&["wake-a", "wake-b"], Some(Duration::from_secs(600))).await;
    assert!(f.all_connected().await);
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    // Node a writes keys 0..64, node b keys 1000..1064.
    let mut sums: HashMap<u32, u64> = HashMap::new();
    for round in 0..240u32 {
        let burst = [1, 1, 2, 7, 40, 300][round as usize % 6];
        for i in 0..burst {
            let k = (round * 7 + i) % 64;
            record(a, &key(k), Event::IncGpc0(1));
            record(b, &key(1000 + k), Event::IncGpc0(1));
            *sums.entry(k).or_default() += 1;
        }
        // Most rounds wait for the last change; the rest write the next burst at once.
        if round % 3 != 0 {
            let k = (round * 7 + burst - 1) % 64;
            let want = sums[&k];
            assert!(
                eventually(WAIT, || read(b, &key(k), D::Gpc0) == Some(want)
                    && read(a, &key(1000 + k), D::Gpc0) == Some(want))
                .await,
                "round {round}: key {k} did not reach {want} on the peer"
            );
        }
    }
    let all_there = || {
        sums.iter().all(|(&k, &n)| {
            read(b, &key(k), D::Gpc0) == Some(n) && read(a, &key(1000 + k), D::Gpc0) == Some(n)
        })
    };
    assert!(eventually(WAIT, all_there).await);
    f.stop().await;
}

/// On a node's one thread, replication shares the core with requests: a received message is
/// applied a slice at a time, with a yield between slices, so another task on that thread sees
/// the table grow inside a message rather than waiting for the whole of it. The peer's stats
/// count a message only once it is wholly applied, so a table holding more entries than the
/// contributions counted was seen between two slices of one message.
#[tokio::test(flavor = "current_thread")]
async fn a_large_message_is_applied_in_slices_with_other_tasks_running_between() {
    const N: u64 = 4096;
    let f = fleet(&["edge-1", "edge-2"]).await;
    assert!(f.all_connected().await, "mesh up");
    // Recorded without a yield: the sender then finds them all pending and sends full batches.
    for k in 0..N as u32 {
        record(&f.nodes[0], &key(k), Event::HttpReq);
    }
    let b = &f.nodes[1];
    let table = b.tables.get("per_ip").unwrap();
    let applied = || {
        b.repl
            .peers()
            .iter()
            .find(|p| p.name == "edge-1")
            .map_or(0, |p| p.updates_received)
    };
    let mut inside_a_message = 0;
    let watched = tokio::time::timeout(WAIT, async {
        loop {
            let (len, counted) = (table.len() as u64, applied());
            if len > counted {
                inside_a_message += 1;
            }
            if counted >= N {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(watched.is_ok(), "edge-2 got {} of {N}", applied());
    assert_eq!(table.len() as u64, N);
    assert!(
        inside_a_message > 0,
        "no task ran between two slices of a message"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_to_exact_sums() {
    let f = fleet(&["edge-1", "edge-2", "edge-3"]).await;
    assert!(f.all_connected().await);
    // Cut edge-3 off from both peers; everyone keeps recording.
    f.links[2].cut();
    assert!(
        eventually(WAIT, || !f.nodes[2].peer_up("edge-1")
            && !f.nodes[2].peer_up("edge-2"))
        .await
    );
    for r in 0..50u32 {
        for n in &f.nodes {
            record(n, &key(r % 7), Event::HttpReq);
        }
    }
    // While cut, edge-1 and edge-2 see each other's requests, edge-3 only its own.
    let own = |k: u32| (0..50u32).filter(|r| r % 7 == k).count() as u64;
    assert!(
        eventually(WAIT, || (0..7).all(|k| read(
            &f.nodes[0],
            &key(k),
            D::HttpReqCnt
        ) == Some(2 * own(k))))
        .await
    );
    assert!((0..7).all(|k| read(&f.nodes[2], &key(k), D::HttpReqCnt) == Some(own(k))));
    f.links[2].heal();
    let truth = |k: u32| (0..50u32).filter(|r| r % 7 == k).count() as u64 * 3;
    let ok = eventually(WAIT, || {
        f.nodes
            .iter()
            .all(|n| (0..7).all(|k| read(n, &key(k), D::HttpReqCnt) == Some(truth(k))))
    })
    .await;
    assert!(ok, "exact ground truth on all three after healing");
    f.stop().await;
}

/// A session's snapshot carries every origin's contributions but the receiving peer's own:
/// the peer writes those alone and holds them already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_leaves_out_the_receiving_peers_own_contributions() {
    let f = fleet(&["edge-1", "edge-2"]).await;
    assert!(f.all_connected().await);
    // 300 keys of edge-1's, 200 of edge-2's, 50 of them written by both: 450 entries.
    for k in 0..300 {
        record(&f.nodes[0], &key(k), Event::IncGpc0(1));
    }
    for k in 250..450 {
        record(&f.nodes[1], &key(k), Event::IncGpc0(1));
    }
    let all_have = |n: &TestNode| n.tables.get("per_ip").unwrap().len() == 450;
    assert!(eventually(WAIT, || f.nodes.iter().all(all_have)).await);
    let sent = |from: usize, to: &str| {
        f.nodes[from]
            .repl
            .peers()
            .into_iter()
            .find(|p| p.name == to)
            .map(|p| (p.sessions, p.updates_sent))
            .unwrap()
    };
    let (s1, before1) = sent(0, "edge-2");
    let (s2, before2) = sent(1, "edge-1");
    // A new session between the two (nothing is recorded from here on): each sends the other
    // a snapshot, in one message of contributions (fewer than a chunk's 4,096).
    f.links[1].cut();
    assert!(eventually(WAIT, || !f.nodes[0].peer_up("edge-2")).await);
    f.links[1].heal();
    assert!(
        eventually(WAIT, || sent(0, "edge-2").0 > s1
            && sent(1, "edge-1").0 > s2
            && sent(0, "edge-2").1 > before1
            && sent(1, "edge-1").1 > before2)
        .await,
        "both snapshots sent"
    );
    // Each sent its own contributions only (with the peer's, 500 each way).
    assert_eq!(sent(0, "edge-2").1 - before1, 300);
    assert_eq!(sent(1, "edge-1").1 - before2, 200);
    // And both still hold the exact sums.
    for n in &f.nodes {
        assert!((0..450).all(|k| {
            let want = if (250..300).contains(&k) { 2 } else { 1 };
            read(n, &key(k), D::Gpc0) == Some(want)
        }));
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_at_runtime_gets_the_table_and_live_updates_until_removed() {
    let mut f = fleet(&["edge-1", "edge-2", "edge-3"]).await;
    assert!(f.all_connected().await);
    for k in 0..1_000 {
        record(&f.nodes[1], &key(k), Event::IncGpc0(2));
    }
    // edge-4 knows only edge-1 (whose address it never dials: edge-1 sorts first and dials it).
    let listen = free_addr();
    let d = TestNode::start(NodeSpec {
        name: "edge-4",
        listen,
        peers: vec![("edge-1".into(), f.listens[0].to_string())],
        tls: f.ca.node("edge-4"),
        state_dir: f.dir.join("edge-4"),
        schemas: schemas(),
    })
    .await;
    f.nodes[0]
        .repl
        .add_peer("edge-4", &listen.to_string())
        .unwrap();
    let nodes = &f.nodes;
    assert!(
        eventually(WAIT, || nodes.iter().all(|n| n.peer_up("edge-4"))
            && ["edge-1", "edge-2", "edge-3"].iter().all(|p| d.peer_up(p)))
        .await,
        "all three running nodes connect to the fourth"
    );
    assert!(
        eventually(WAIT, || d.tables.get("per_ip").unwrap().len() == 1_000).await,
        "it gets the table"
    );
    record(&f.nodes[2], &key(0), Event::IncGpc0(1));
    assert!(
        eventually(WAIT, || read(&d, &key(0), D::Gpc0) == Some(3)).await,
        "and live updates"
    );

    // Removal on any node reaches every node and disconnects edge-4 everywhere.
    f.nodes[2].repl.remove_peer("edge-4").unwrap();
    assert!(
        eventually(WAIT, || nodes.iter().all(
            |n| !n.peer_up("edge-4") && n.repl.peers().iter().all(|p| p.name != "edge-4")
        ))
        .await
    );
    record(&f.nodes[0], &key(0), Event::IncGpc0(10));
    assert!(eventually(WAIT, || read(&f.nodes[1], &key(0), D::Gpc0) == Some(13)).await);
    assert_eq!(
        read(&d, &key(0), D::Gpc0),
        Some(3),
        "a removed node stops receiving"
    );

    // A restart keeps the new membership.
    let old = f.nodes.remove(1);
    old.stop().await;
    let again = TestNode::start(NodeSpec {
        name: "edge-2",
        listen: f.listens[1],
        peers: vec![],
        tls: f.ca.node("edge-2"),
        state_dir: f.dir.join("edge-2"),
        schemas: schemas(),
    })
    .await;
    let m = again.repl.members();
    assert!(
        m.iter().any(|m| m.name == "edge-4" && m.removed),
        "the removal survived the restart"
    );
    assert!(m.iter().any(|m| m.name == "edge-3" && !m.removed));
    f.nodes.insert(1, again);
    d.stop().await;
    f.stop().await;
}

/// A node runs replication on a thread and runtime of its own: a peer added by a call made on
/// another runtime (the admin API's), one that is gone right after the call, is still dialed,
/// because replication's tasks run where replication was started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_from_another_runtime_is_dialed_on_replications_own() {
    let dir = TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "one");
    let own = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = own.handle().clone();
    let end = tokio_util::sync::CancellationToken::new();
    let ended = end.clone();
    let thread = std::thread::spawn(move || own.block_on(ended.cancelled()));
    let spec = |name: &'static str, peers: Vec<(String, String)>| NodeSpec {
        name,
        listen: free_addr(),
        peers,
        tls: ca.node(name),
        state_dir: dir.path().join(name),
        schemas: schemas(),
    };
    // edge-2 knows edge-1 but never dials it: edge-1 sorts first, so it is the one that dials,
    // once it has been told of edge-2.
    let a = handle
        .spawn(TestNode::start(spec("edge-1", vec![])))
        .await
        .unwrap();
    let b = TestNode::start(spec(
        "edge-2",
        vec![("edge-1".into(), a.listen.to_string())],
    ))
    .await;
    let repl = a.repl.clone();
    let addr = b.listen.to_string();
    std::thread::spawn(move || {
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        caller.block_on(async { repl.add_peer("edge-2", &addr) })
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(
        eventually(WAIT, || a.peer_up("edge-2") && b.peer_up("edge-1")).await,
        "the session comes up though the runtime that asked for it is gone"
    );
    record(&b, &key(1), Event::IncGpc0(4));
    assert!(eventually(WAIT, || read(&a, &key(1), D::Gpc0) == Some(4)).await);
    a.stop().await;
    b.stop().await;
    end.cancel();
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_fleet_certificate_for_their_name_are_refused() {
    let dir = TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "fleet");
    let foreign = Ca::new(&dir.path().join("foreign"), "foreign");
    let listen = free_addr();
    let peers = vec![("edge-0".to_string(), "127.0.0.1:1".to_string())];
    let target = TestNode::start(NodeSpec {
        name: "edge-9",
        listen,
        peers,
        tls: ca.node("edge-9"),
        state_dir: dir.path().join("edge-9"),
        schemas: schemas(),
    })
    .await;
    let spec = |tls, sd: &str| NodeSpec {
        name: "edge-0",
        listen: free_addr(),
        peers: vec![("edge-9".into(), listen.to_string())],
        tls,
        state_dir: dir.path().join(sd),
        schemas: schemas(),
    };
    // A certificate from another CA.
    let intruder = TestNode::start(spec(foreign.node("edge-0"), "a")).await;
    record(&intruder, &key(1), Event::IncGpc0(1));
    let refused = eventually(WAIT, || {
        intruder.repl.peers().iter().any(|p| p.last_error.is_some())
    })
    .await;
    assert!(refused, "the intruder learns it was refused");
    assert!(!target.peer_up("edge-0"));
    intruder.stop().await;

    // A valid fleet certificate for another node, presented as edge-0: refused at hello.
    let mut mislabelled = ca.node_as("edge-0-wrong", "edge-5");
    mislabelled.ca = ca.dir.join("ca.pem");
    let Err(err) = TestNode::try_start(spec(mislabelled.clone(), "b")).await else {
        panic!("a certificate naming another node must not start");
    };
    assert!(
        err.to_string().contains("not valid for node `edge-0`"),
        "{err}"
    );
    let status = util::fleet_raw::hello_as(listen, "edge-9", &mislabelled, "edge-5", "edge-0")
        .await
        .unwrap_err();
    assert!(status.contains("does not name `edge-0`"), "{status}");

    // No client certificate at all: the TLS handshake fails.
    assert!(
        util::fleet_raw::tls_without_client_cert(listen, "edge-9", &ca.dir.join("ca.pem"))
            .await
            .is_err()
    );

    // A fleet member not in the target's membership.
    let stranger = ca.node("edge-1");
    let status = util::fleet_raw::hello_as(listen, "edge-9", &stranger, "edge-1", "edge-1")
        .await
        .unwrap_err();
    assert!(status.contains("not a member"), "{status}");

    assert!(
        target.tables.get("per_ip").unwrap().is_empty(),
        "nothing applied from refused peers"
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_certificate_keeps_replication_running() {
    let f = fleet(&["edge-1", "edge-2"]).await;
    assert!(f.all_connected().await);
    record(&f.nodes[0], &key(1), Event::IncGpc0(1));
    assert!(eventually(WAIT, || read(&f.nodes[1], &key(1), D::Gpc0) == Some(1)).await);

    // A whole new CA, written over the old files, then reloaded (what SIGHUP does).
    let new_ca = Ca::new(&f.ca.dir, "rotated");
    for n in &f.nodes {
        new_ca.node(&n.name);
        n.repl.reload_tls().unwrap();
    }
    // Running sessions keep going.
    record(&f.nodes[0], &key(1), Event::IncGpc0(1));
    assert!(eventually(WAIT, || read(&f.nodes[1], &key(1), D::Gpc0) == Some(2)).await);
    // New sessions are made with the new files.
    f.links[1].cut();
    assert!(eventually(WAIT, || !f.nodes[0].peer_up("edge-2")).await);
    f.links[1].heal();
    assert!(
        f.all_connected().await,
        "reconnected with the rotated certificates"
    );
    record(&f.nodes[1], &key(1), Event::IncGpc0(1));
    assert!(eventually(WAIT, || read(&f.nodes[0], &key(1), D::Gpc0) == Some(3)).await);

    // A broken file is refused and the current identity stays.
    std::fs::write(f.ca.dir.join("edge-1.key"), "not a key").unwrap();
    assert!(f.nodes[0].repl.reload_tls().is_err());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_close_the_stream_and_apply_nothing() {
    let dir = TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "fleet");
    let listen = free_addr();
    let target = TestNode::start(NodeSpec {
        name: "edge-9",
        listen,
        peers: vec![("edge-0".into(), "127.0.0.1:1".into())],
        tls: ca.node("edge-9"),
        state_dir: dir.path().join("edge-9"),
        schemas: schemas(),
    })
    .await;
    let tls = ca.node("edge-0");
    for (case, expect) in util::fleet_raw::bad_batches() {
        let outcome = util::fleet_raw::send_batch_as(listen, "edge-9", &tls, "edge-0", case).await;
        assert!(outcome.closed, "{expect}: the stream is closed");
        assert!(!outcome.acked, "{expect}: nothing acknowledged");
        assert!(
            target.tables.get("per_ip").unwrap().is_empty(),
            "{expect}: nothing applied"
        );
        let status = target
            .repl
            .peers()
            .into_iter()
            .find(|p| p.name == "edge-0")
            .and_then(|p| p.last_error);
        assert!(
            status.as_deref().is_some_and(|s| s.contains(expect)),
            "{expect}: logged reason {status:?}"
        );
    }
    // The well-formed control case is applied and acknowledged.
    let outcome = util::fleet_raw::send_batch_as(
        listen,
        "edge-9",
        &tls,
        "edge-0",
        util::fleet_raw::good_batch(),
    )
    .await;
    assert!(outcome.acked);
    assert!(eventually(WAIT, || read(&target, &key(7), D::Gpc0) == Some(2)).await);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_mismatches_are_refused_at_hello_on_both_sides() {
    let dir = TempDir::new().unwrap();
    let ca = Ca::new(&dir.path().join("certs"), "fleet");
    let (la, lb) = (free_addr(), free_addr());
    let other = {
        let store = TableSchema::parse_store(&["gpc0"]).unwrap();
        vec![
            TableSchema::new(
                "per_ip",
                KeyType::Ip,
                10,
                Duration::from_secs(60),
                store,
                true,
            )
            .unwrap(),
        ]
    };
    let b = TestNode::start(NodeSpec {
        name: "edge-2",
        listen: lb,
        peers: vec![("edge-1".into(), la.to_string())],
        tls: ca.node("edge-2"),
        state_dir: dir.path().join("b"),
        schemas: other,
    })
    .await;
    let a = TestNode::start(NodeSpec {
        name: "edge-1",
        listen: la,
        peers: vec![("edge-2".into(), lb.to_string())],
        tls: ca.node("edge-1"),
        state_dir: dir.path().join("a"),
        schemas: schemas(),
    })
    .await;
    let err = |n: &TestNode, p: &str| {
        n.repl
            .peers()
            .into_iter()
            .find(|x| x.name == p)
            .and_then(|x| x.last_error)
    };
    assert!(
        eventually(WAIT, || err(&a, "edge-2")
            .is_some_and(|e| e.contains("schemas differ")))
        .await,
        "{:?}",
        err(&a, "edge-2")
    );
    assert!(!a.peer_up("edge-2") && !b.peer_up("edge-1"));
    a.stop().await;
    b.stop().await;
}

#[allow(dead_code)]
fn _assert_send(_: Arc<TestNode>) {}
