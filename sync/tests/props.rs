//! Property tests of the fleet merge: applying contributions is commutative, associative and
//! idempotent, and simulated nodes exchanging updates in random order, with duplicates and
//! delays, converge to identical tables equal to the ground truth.

mod util;

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use sluice_proto::sync::v1 as pb;
use sluice_sync::{Cursor, DataType as D, Event, Key, OriginName, Tracked};
use util::{Node, schema_sized};

const STORE: &[&str] = &[
    "gpc0",
    "http_req_cnt",
    "conn_cur",
    "server_id",
    "http_req_rate(1h)",
];
const NAMES: &[&str] = &["a", "b", "c", "d"];

fn key(i: u8) -> Key {
    Key::from_ip(std::net::Ipv4Addr::new(10, 0, 0, i).into())
}

/// The whole state of a table as names and merged values, comparable across nodes.
fn state(node: &Node, t: u32) -> BTreeMap<Vec<u8>, Values> {
    let mut out = BTreeMap::new();
    let mut cur = Cursor::new();
    while !cur.is_done() {
        node.table.scan(&mut cur, 100, node.tick(t), false, |v| {
            out.insert(v.key.as_bytes().to_vec(), v.values);
        });
    }
    out
}

type Values = Vec<(D, Option<u64>)>;

/// Per-origin contents, keyed by origin name rather than the node-local id.
fn origin_state(node: &Node, t: u32) -> BTreeMap<(Vec<u8>, OriginName), (u64, Values)> {
    let mut out = BTreeMap::new();
    let mut cur = Cursor::new();
    while !cur.is_done() {
        node.table.scan(&mut cur, 100, node.tick(t), true, |v| {
            for o in v.origins {
                let name = node.origins.name(o.origin).unwrap();
                out.insert((v.key.as_bytes().to_vec(), name), (o.version, o.values));
            }
        });
    }
    out
}

/// Random histories: per (origin, key) a sequence of versions, each a full state; a
/// contribution is one (origin, key, version) state, as an origin would have sent it.
fn contributions() -> impl Strategy<Value = Vec<(OriginName, pb::Contribution)>> {
    let state = (
        0i64..50,
        0i64..5,
        0u64..4,
        0u64..100,
        prop::option::of((1u64..1000, 0u64..9)),
    );
    let history = (0usize..3, 0u8..4, prop::collection::vec(state, 1..5));
    prop::collection::vec(history, 1..12).prop_map(|hs| {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for (o, k, states) in hs {
            // One history per (origin, key): later duplicates of the pair are dropped.
            if seen.insert((o, k), ()).is_some() {
                continue;
            }
            for (v, (gpc0, cur, age_s, req, reg)) in states.into_iter().enumerate() {
                let mut data = vec![
                    pb::Datum {
                        r#type: D::Gpc0.wire(),
                        value: gpc0,
                        ..Default::default()
                    },
                    pb::Datum {
                        r#type: D::ConnCur.wire(),
                        value: cur,
                        ..Default::default()
                    },
                    pb::Datum {
                        r#type: D::HttpReqRate.wire(),
                        period_ms: 3_600_000,
                        age_ms: (age_s * 1000) as u32,
                        curr: req,
                        prev: req / 2,
                        ..Default::default()
                    },
                ];
                if let Some((stamp, value)) = reg {
                    data.push(pb::Datum {
                        r#type: D::ServerId.wire(),
                        stamp,
                        value: value as i64,
                        ..Default::default()
                    });
                }
                let name = OriginName {
                    node: NAMES[o].into(),
                    incarnation: 1,
                };
                let c = pb::Contribution {
                    key: key(k).as_bytes().to_vec(),
                    version: v as u64 + 1,
                    idle_ms: (age_s * 1000) as u32,
                    epoch: 0,
                    data,
                };
                out.push((name, c));
            }
        }
        out
    })
}

fn fresh() -> Node {
    let n = Node::new("z", schema_sized(STORE, 1000));
    // Every origin is live, so gauges compare too.
    for name in NAMES {
        let id = n
            .origins
            .intern(&OriginName {
                node: (*name).into(),
                incarnation: 1,
            })
            .unwrap();
        n.origins.heard(id, n.tick(0));
    }
    n
}

fn apply_all(n: &Node, cs: &[(OriginName, pb::Contribution)]) {
    for (o, c) in cs {
        n.deliver(o, c, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn merge_is_commutative_and_idempotent(cs in contributions(), seed in any::<u64>()) {
        let one = fresh();
        apply_all(&one, &cs);
        // Another order, with every contribution delivered twice.
        let mut shuffled: Vec<_> = cs.iter().chain(cs.iter()).cloned().collect();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let two = fresh();
        apply_all(&two, &shuffled);
        prop_assert_eq!(state(&one, 0), state(&two, 0));
        prop_assert_eq!(origin_state(&one, 0), origin_state(&two, 0));
    }

    /// A run of one origin's contributions applied at once, as a message's are (with the index
    /// probes of several keys issued ahead), ends as they do applied one by one.
    #[test]
    fn a_run_applies_as_its_contributions_one_by_one(cs in contributions()) {
        let twice: Vec<_> = cs.iter().chain(cs.iter()).collect();
        let one = fresh();
        for (o, c) in &twice {
            one.deliver(o, c, 0);
        }
        let two = fresh();
        for name in NAMES {
            let run: Vec<_> = twice
                .iter()
                .filter(|(o, _)| o.node == *name)
                .map(|(_, c)| c.clone())
                .collect();
            let from = OriginName { node: (*name).into(), incarnation: 1 };
            two.deliver_run(&from, &run, 0);
        }
        prop_assert_eq!(state(&one, 0), state(&two, 0));
        prop_assert_eq!(origin_state(&one, 0), origin_state(&two, 0));
    }

    #[test]
    fn merge_is_associative(cs in contributions(), cut1 in 0usize..40, cut2 in 0usize..40) {
        let (c1, c2) = (cut1.min(cs.len()), cut2.min(cs.len()));
        let (lo, hi) = (c1.min(c2), c1.max(c2));
        let (x, y, z) = (&cs[..lo], &cs[lo..hi], &cs[hi..]);
        // (x ⊔ y) ⊔ z: merge x and y in one table, then its snapshot into a table holding z.
        let xy = fresh();
        apply_all(&xy, x);
        apply_all(&xy, y);
        let left = fresh();
        apply_all(&left, z);
        xy.sync_to(&left, 0);
        // x ⊔ (y ⊔ z).
        let yz = fresh();
        apply_all(&yz, y);
        apply_all(&yz, z);
        let right = fresh();
        apply_all(&right, x);
        yz.sync_to(&right, 0);
        prop_assert_eq!(state(&left, 0), state(&right, 0));
        prop_assert_eq!(origin_state(&left, 0), origin_state(&right, 0));
    }
}

/// One step of the simulation.
#[derive(Clone, Debug)]
enum Op {
    Request {
        node: usize,
        key: u8,
    },
    Gpc0 {
        node: usize,
        key: u8,
        n: u64,
    },
    Open {
        node: usize,
        key: u8,
    },
    Close {
        node: usize,
        key: u8,
    },
    SetServer {
        node: usize,
        key: u8,
        value: u64,
    },
    /// A node takes its changes for every peer and puts them in flight.
    Flush {
        node: usize,
    },
    /// Delivers the in-flight message at this position (modulo), keeping a copy if `dup`.
    Deliver {
        pick: usize,
        dup: bool,
    },
    Advance {
        ms: u32,
    },
}

fn ops(nodes: usize) -> impl Strategy<Value = Vec<Op>> {
    let n = 0..nodes;
    let k = 0u8..6;
    let op = prop_oneof![
        4 => (n.clone(), k.clone()).prop_map(|(node, key)| Op::Request { node, key }),
        2 => (n.clone(), k.clone(), 1u64..5).prop_map(|(node, key, n)| Op::Gpc0 { node, key, n }),
        2 => (n.clone(), k.clone()).prop_map(|(node, key)| Op::Open { node, key }),
        1 => (n.clone(), k.clone()).prop_map(|(node, key)| Op::Close { node, key }),
        1 => (n.clone(), k.clone(), 1u64..9).prop_map(|(node, key, value)| Op::SetServer { node, key, value }),
        3 => n.prop_map(|node| Op::Flush { node }),
        6 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
        2 => (1u32..50).prop_map(|ms| Op::Advance { ms }),
    ];
    prop::collection::vec(op, 1..300)
}

#[derive(Default)]
struct Truth {
    requests: HashMap<u8, u64>,
    gpc0: HashMap<u8, u64>,
    open: HashMap<(usize, u8), u64>,
    /// Latest register write per key: (wall ms, value). Wall times are distinct per write.
    server: HashMap<u8, (u64, u64)>,
}

fn simulate(n: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node::with_offset(NAMES[i], schema_sized(STORE, 1000), (i as u32) * 7_777_777))
        .collect();
    let mut consumers: Vec<Vec<_>> = nodes
        .iter()
        .map(|nd| (0..n).map(|_| nd.table.subscribe().unwrap()).collect())
        .collect();
    let mut handles: HashMap<(usize, u8), Tracked> = HashMap::new();
    let mut in_flight: Vec<(usize, OriginName, pb::Contribution)> = Vec::new();
    let mut truth = Truth::default();
    let mut t: u32 = 0;
    let mut wall: u64 = 1_000;
    let mut handle = |nodes: &[Node], node: usize, key: u8, t: u32| -> Tracked {
        handles
            .entry((node, key))
            .or_insert_with(|| nodes[node].table.track(self::key(key), nodes[node].tick(t)))
            .clone()
    };
    for op in ops {
        match op {
            Op::Request { node, key } => {
                let mut h = handle(&nodes, node, key, t);
                nodes[node]
                    .table
                    .record(&mut h, Event::HttpReq, nodes[node].tick(t));
                *truth.requests.entry(key).or_default() += 1;
            }
            Op::Gpc0 { node, key, n } => {
                let mut h = handle(&nodes, node, key, t);
                nodes[node]
                    .table
                    .record(&mut h, Event::IncGpc0(n), nodes[node].tick(t));
                *truth.gpc0.entry(key).or_default() += n;
            }
            Op::Open { node, key } => {
                let mut h = handle(&nodes, node, key, t);
                nodes[node]
                    .table
                    .record(&mut h, Event::ConnOpen, nodes[node].tick(t));
                *truth.open.entry((node, key)).or_default() += 1;
            }
            Op::Close { node, key } => {
                let open = truth.open.entry((node, key)).or_default();
                if *open > 0 {
                    *open -= 1;
                    let mut h = handle(&nodes, node, key, t);
                    nodes[node]
                        .table
                        .record(&mut h, Event::ConnClose, nodes[node].tick(t));
                }
            }
            Op::SetServer { node, key, value } => {
                wall += 1;
                let mut h = handle(&nodes, node, key, t);
                nodes[node].table.set_register(
                    &mut h,
                    D::ServerId,
                    value,
                    wall,
                    nodes[node].tick(t),
                );
                truth.server.insert(key, (wall, value));
            }
            Op::Flush { node } => {
                for peer in (0..n).filter(|&p| p != node) {
                    for (o, c) in nodes[node].take(&mut consumers[node][peer], t) {
                        in_flight.push((peer, o, c));
                    }
                }
            }
            Op::Deliver { pick, dup } => {
                if !in_flight.is_empty() {
                    let i = pick % in_flight.len();
                    let (to, o, c) = if dup {
                        in_flight[i].clone()
                    } else {
                        in_flight.swap_remove(i)
                    };
                    nodes[to].deliver(&o, &c, t);
                }
            }
            Op::Advance { ms } => t += ms,
        }
    }
    // Quiesce: flush everything and deliver all, in reverse order for good measure.
    for node in 0..n {
        for peer in (0..n).filter(|&p| p != node) {
            for (o, c) in nodes[node].take(&mut consumers[node][peer], t) {
                in_flight.push((peer, o, c));
            }
        }
    }
    while let Some((to, o, c)) = in_flight.pop() {
        nodes[to].deliver(&o, &c, t);
    }
    for nd in &nodes {
        for other in &nodes {
            if let Some(id) = nd.origins.lookup(&other.name) {
                nd.origins.heard(id, nd.tick(t));
            }
        }
    }
    let first = state(&nodes[0], t);
    for nd in &nodes[1..] {
        prop_assert_eq!(
            &state(nd, t),
            &first,
            "node {} differs from node a",
            nd.name
        );
    }
    for k in 0u8..6 {
        let key = key(k);
        for nd in &nodes {
            let touched = handles.keys().any(|&(_, kk)| kk == k);
            if !touched {
                prop_assert!(nd.table.get(&key, nd.tick(t), false).is_none());
                continue;
            }
            let req = truth.requests.get(&k).copied().unwrap_or(0);
            prop_assert_eq!(nd.read(&key, D::HttpReqCnt, t), Some(req));
            prop_assert_eq!(nd.read(&key, D::HttpReqRate, t), Some(req));
            prop_assert_eq!(
                nd.read(&key, D::Gpc0, t),
                Some(truth.gpc0.get(&k).copied().unwrap_or(0))
            );
            let open: u64 = truth
                .open
                .iter()
                .filter(|((_, kk), _)| *kk == k)
                .map(|(_, v)| v)
                .sum();
            prop_assert_eq!(nd.read(&key, D::ConnCur, t), Some(open));
            prop_assert_eq!(
                nd.read(&key, D::ServerId, t),
                truth.server.get(&k).map(|&(_, v)| v)
            );
        }
    }
    for (i, nd) in nodes.iter().enumerate() {
        for c in consumers[i].drain(..) {
            nd.table.unsubscribe(c);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn simulated_nodes_converge_to_ground_truth(n in 2usize..=4, ops in ops(4)) {
        let ops = ops.into_iter().map(|op| match op {
            Op::Request { node, key } => Op::Request { node: node % n, key },
            Op::Gpc0 { node, key, n: k } => Op::Gpc0 { node: node % n, key, n: k },
            Op::Open { node, key } => Op::Open { node: node % n, key },
            Op::Close { node, key } => Op::Close { node: node % n, key },
            Op::SetServer { node, key, value } => Op::SetServer { node: node % n, key, value },
            Op::Flush { node } => Op::Flush { node: node % n },
            other => other,
        }).collect();
        simulate(n, ops)?;
    }
}
