//! The admin API end to end: the real `sluicectl` binary against in-process nodes that
//! replicate over real mutual TLS, each serving the admin API on loopback — table changes seen
//! fleet-wide, `--where` filters, `--json` documents, membership changes, and bad input that
//! fails loudly and changes nothing.

mod admin_util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use admin_util::{
    AdminNode, Fleet, NodeSpec, WAIT, eventually, free_addr, json, sluicectl, stderr, stdout,
    success,
};
use serde_json::Value;
use sluice_proto::admin::v1 as pb;
use sluice_sync::{DataType, Event};

/// `sluicectl --node ADDR ARGS…`
async fn ctl(node: &AdminNode, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--node".to_owned(), node.node_arg()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    sluicectl(all).await
}

/// `sluicectl --json --node ADDR ARGS…`, parsed.
async fn ctl_json(node: &AdminNode, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    json(&ctl(node, &all).await)
}

/// The entries of `table show --json`, by key: each entry's values object.
fn entries(show: &Value) -> BTreeMap<String, Value> {
    show["entries"]
        .as_array()
        .expect("entries array")
        .iter()
        .map(|e| {
            (
                e["key"].as_str().expect("key").to_owned(),
                e["values"].clone(),
            )
        })
        .collect()
}

fn keys(show: &Value) -> BTreeSet<String> {
    entries(show).into_keys().collect()
}

/// `gpc0` of `key` in `per_ip` as the node's admin API shows it.
async fn gpc0_via_api(node: &AdminNode, key: &str) -> Option<u64> {
    let mut client = node.client().await;
    let mut rows = client
        .show_table(pb::ShowTableRequest {
            table: "per_ip".into(),
            key: Some(key.into()),
            ..Default::default()
        })
        .await
        .expect("show_table")
        .into_inner();
    let row = rows.message().await.expect("stream")?;
    row.values
        .iter()
        .find(|v| v.field == "gpc0")
        .and_then(|v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_on_one_node_shows_on_another_within_a_second_and_a_clear_removes_it_everywhere() {
    let f = Fleet::start(&["edge-1", "edge-2"], &[]).await;
    assert!(f.connected().await, "mesh up");
    let (one, two) = (&f.nodes[0], &f.nodes[1]);

    let set = ctl(one, &["table", "set", "per_ip", "10.0.0.7", "gpc0=1"]).await;
    let set_at = tokio::time::Instant::now();
    let printed = success(&set);
    assert!(printed.contains("10.0.0.7"), "{printed}");
    assert!(printed.contains("gpc0"), "{printed}");

    assert!(
        eventually(Duration::from_secs(1), || async move {
            gpc0_via_api(two, "10.0.0.7").await == Some(1)
        })
        .await,
        "visible on edge-2 within a second"
    );
    eprintln!("set on edge-1 seen on edge-2 after {:?}", set_at.elapsed());

    // What the operator sees on edge-2, for people and as JSON.
    let shown = success(&ctl(two, &["table", "show", "per_ip", "--key", "10.0.0.7"]).await);
    let mut lines = shown.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("KEY"), "{shown}");
    assert!(header.contains("http_req_rate(1h)"), "{shown}");
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(row[0], "10.0.0.7");
    let doc = ctl_json(two, &["table", "show", "per_ip", "--key", "10.0.0.7"]).await;
    assert_eq!(doc["table"], "per_ip");
    let e = &entries(&doc)["10.0.0.7"];
    assert_eq!(e["gpc0"], 1);
    assert_eq!(e["server_id"], Value::Null, "an unset register is null");

    // Setting on the other node moves the fleet-wide counter to the value, and writes registers.
    success(
        &ctl(
            two,
            &[
                "table",
                "set",
                "per_ip",
                "10.0.0.7",
                "gpc0=5",
                "gpt0=3",
                "server_id=2",
            ],
        )
        .await,
    );
    assert!(
        eventually(WAIT, || async move {
            [one, two].iter().all(|n| {
                n.read("10.0.0.7", DataType::Gpc0) == Some(5)
                    && n.read("10.0.0.7", DataType::Gpt0) == Some(3)
                    && n.read("10.0.0.7", DataType::ServerId) == Some(2)
            })
        })
        .await,
        "both nodes agree on the values set"
    );

    // `table clear` on edge-1 resets the key on every node.
    let cleared = success(&ctl(one, &["table", "clear", "per_ip", "10.0.0.7"]).await);
    assert!(cleared.contains("cleared 10.0.0.7 in per_ip"), "{cleared}");
    assert!(
        eventually(WAIT, || async move {
            flag_gone(one).await && flag_gone(two).await
        })
        .await,
        "the flag is gone fleet-wide"
    );
    for n in [one, two] {
        let flagged = ctl_json(n, &["table", "show", "per_ip", "--where", "gpc0 > 0"]).await;
        assert!(keys(&flagged).is_empty(), "{flagged}");
    }
    f.stop().await;
}

/// Whether `table show --key 10.0.0.7` on `n` shows the entry gone or reset: a cleared entry
/// stays listed, with zero counters and unset registers, until it expires.
async fn flag_gone(n: &AdminNode) -> bool {
    let doc = ctl_json(n, &["table", "show", "per_ip", "--key", "10.0.0.7"]).await;
    entries(&doc)
        .get("10.0.0.7")
        .is_none_or(|v| v["gpc0"] == 0 && v["server_id"] == Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_lists_exactly_the_matching_entries_and_every_json_document_parses() {
    let f = Fleet::start(&["edge-1", "edge-2"], &[]).await;
    assert!(f.connected().await, "mesh up");
    let (one, two) = (&f.nodes[0], &f.nodes[1]);
    // Requests per key: .4 gets 6 on each node, 12 fleet-wide; .5 exactly 10.
    for (key, n) in [
        ("10.0.0.1", 5),
        ("10.0.0.2", 11),
        ("10.0.0.3", 30),
        ("10.0.0.4", 6),
        ("10.0.0.5", 10),
    ] {
        one.record(key, Event::HttpReq, n);
    }
    two.record("10.0.0.4", Event::HttpReq, 6);
    let want = [
        ("10.0.0.1", 5),
        ("10.0.0.2", 11),
        ("10.0.0.3", 30),
        ("10.0.0.4", 12),
        ("10.0.0.5", 10),
    ];
    assert!(
        eventually(WAIT, || async move {
            [one, two].iter().all(|n| {
                want.iter()
                    .all(|(k, v)| n.read(k, DataType::HttpReqRate) == Some(*v))
            })
        })
        .await,
        "both nodes hold the merged rates"
    );

    let set = |ks: &[&str]| ks.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>();
    for n in [one, two] {
        for (filter, expected) in [
            (
                "http_req_rate > 10",
                set(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            ),
            (
                "http_req_rate gt 10",
                set(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            ),
            (
                "http_req_rate >= 10",
                set(&["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]),
            ),
            ("http_req_rate eq 10", set(&["10.0.0.5"])),
            ("http_req_rate < 10", set(&["10.0.0.1"])),
            (
                "http_req_rate != 10",
                set(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            ),
            ("gpc0 > 0", set(&[])),
        ] {
            let doc = ctl_json(n, &["table", "show", "per_ip", "--where", filter]).await;
            assert_eq!(keys(&doc), expected, "{} --where '{filter}'", n.name);
        }
    }

    // For people: the rows in key order, values aligned under the header.
    let text = success(
        &ctl(
            two,
            &["table", "show", "per_ip", "--where", "http_req_rate > 10"],
        )
        .await,
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "KEY",
            "IDLE",
            "http_req_rate(1h)",
            "conn_cur",
            "gpc0",
            "gpt0",
            "server_id"
        ]
    );
    let listed: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[2])).collect();
    assert_eq!(
        listed,
        [("10.0.0.2", "11"), ("10.0.0.3", "30"), ("10.0.0.4", "12")]
    );
    let none = success(&ctl(two, &["table", "show", "per_ip", "--where", "gpc0 > 0"]).await);
    assert_eq!(none.trim(), "no entries");

    // --limit
    let limited = ctl_json(
        two,
        &[
            "table",
            "show",
            "per_ip",
            "--where",
            "http_req_rate > 10",
            "--limit",
            "2",
        ],
    )
    .await;
    let got = keys(&limited);
    assert_eq!(got.len(), 2, "{limited}");
    assert!(got.is_subset(&set(&["10.0.0.2", "10.0.0.3", "10.0.0.4"])));

    // --origins: each node's own contribution.
    let doc = ctl_json(
        two,
        &["table", "show", "per_ip", "--key", "10.0.0.4", "--origins"],
    )
    .await;
    let origins = doc["entries"][0]["origins"].as_array().expect("origins");
    let by_node: BTreeMap<&str, &Value> = origins
        .iter()
        .map(|o| {
            (
                o["node"].as_str().expect("node"),
                &o["values"]["http_req_rate"],
            )
        })
        .collect();
    assert_eq!(by_node.len(), 2, "{doc}");
    assert_eq!(by_node["edge-1"], 6);
    assert_eq!(by_node["edge-2"], 6);
    assert_eq!(doc["entries"][0]["values"]["http_req_rate"], 12);
    let text = success(
        &ctl(
            two,
            &["table", "show", "per_ip", "--key", "10.0.0.4", "--origins"],
        )
        .await,
    );
    assert!(text.starts_with("KEY"), "{text}");
    assert!(text.contains("ORIGIN"), "{text}");
    assert_eq!(
        text.lines().count(),
        3,
        "a header and one row per origin: {text}"
    );

    // Every other command's JSON document.
    let tables = ctl_json(two, &["table", "list"]).await;
    let per_ip = tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "per_ip")
        .expect("per_ip listed");
    assert_eq!(per_ip["entries"], 5);
    assert_eq!(per_ip["key"], "ip");
    assert_eq!(per_ip["sync"], true);
    assert_eq!(per_ip["store"][0], "http_req_rate(1h)");
    assert_eq!(per_ip["evictions"], 0);

    let status = ctl_json(two, &["status"]).await;
    assert_eq!(status["node"], "edge-2");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["ready"], true);
    assert_eq!(status["replication"], true);
    assert_eq!(status["peers"][0]["name"], "edge-1");
    assert_eq!(status["peers"][0]["up"], true);
    assert!(status["peers"][0]["lag_ms"].is_u64());
    assert!(status["uptime_ms"].is_u64());
    assert_eq!(status["tables"].as_array().expect("tables").len(), 2);

    let text = success(&ctl(two, &["status"]).await);
    for expected in ["edge-2", "ready", "edge-1", "up", "per_ip", "per_path"] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    let peers = ctl_json(one, &["peer", "list"]).await;
    assert_eq!(peers["peers"][0]["name"], "edge-2");
    assert_eq!(peers["peers"][0]["up"], true);

    let cleared = ctl_json(one, &["table", "clear", "per_path"]).await;
    assert_eq!(cleared["table"], "per_path");
    assert_eq!(cleared["key"], Value::Null);
    assert_eq!(cleared["cleared"], 0);
    let set = ctl_json(one, &["table", "set", "per_path", "/login", "gpc1=4"]).await;
    assert_eq!(set["entry"]["key"], "/login");
    assert_eq!(set["entry"]["values"]["gpc1"], 4);
    f.stop().await;
}

/// What the tables and the membership hold, minus what time changes by itself (idle times).
async fn snapshot(
    n: &AdminNode,
) -> (
    BTreeMap<String, Value>,
    BTreeMap<String, Value>,
    Vec<String>,
) {
    let per_ip = entries(&ctl_json(n, &["table", "show", "per_ip"]).await);
    let per_path = entries(&ctl_json(n, &["table", "show", "per_path"]).await);
    let members = n
        .repl
        .members()
        .into_iter()
        .map(|m| {
            format!(
                "{} {} removed={} stamp={}",
                m.name, m.addr, m.removed, m.stamp
            )
        })
        .collect();
    (per_ip, per_path, members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_non_zero_names_the_problem_and_changes_nothing() {
    let f = Fleet::start(&["edge-1", "edge-2"], &[]).await;
    assert!(f.connected().await, "mesh up");
    let one = &f.nodes[0];
    success(
        &ctl(
            one,
            &["table", "set", "per_ip", "10.0.0.7", "gpc0=2", "gpt0=1"],
        )
        .await,
    );
    success(&ctl(one, &["table", "set", "per_path", "/a", "gpc1=1"]).await);
    one.record("10.0.0.8", Event::HttpReq, 3);
    let before = snapshot(one).await;
    assert_eq!(before.0.len(), 2);

    let long_path = format!("/{}", "x".repeat(64));
    let cases: &[(&[&str], i32, &str)] = &[
        (&["table", "show", "nope"], 1, "no table `nope` on `edge-1`"),
        (
            &["table", "set", "nope", "10.0.0.7", "gpc0=1"],
            1,
            "no table `nope`",
        ),
        (&["table", "clear", "nope"], 1, "no table `nope`"),
        (
            &["table", "set", "per_ip", "not-an-ip", "gpc0=1"],
            1,
            "`not-an-ip` is not an IP address",
        ),
        (
            &["table", "set", "per_path", &long_path, "gpc1=1"],
            1,
            "at most 64",
        ),
        (
            &["table", "set", "per_ip", "10.0.0.7", "frob=1"],
            1,
            "unknown field `frob`",
        ),
        (
            &["table", "set", "per_ip", "10.0.0.7", "gpc1=1"],
            1,
            "table `per_ip` does not store `gpc1`",
        ),
        // All fields are checked before any is set: gpc0 must stay 2.
        (
            &["table", "set", "per_ip", "10.0.0.7", "gpc0=9", "gpc1=1"],
            1,
            "does not store `gpc1`",
        ),
        (
            &["table", "set", "per_ip", "10.0.0.7", "gpc0=9", "gpc0=8"],
            1,
            "`gpc0` is given twice",
        ),
        (
            &["table", "set", "per_ip", "10.0.0.7", "http_req_rate=5"],
            1,
            "`http_req_rate` is a rate",
        ),
        (
            &["table", "set", "per_ip", "10.0.0.7", "conn_cur=1"],
            1,
            "`conn_cur` is a gauge",
        ),
        (
            &["table", "set", "per_ip", "10.0.0.7", "gpc0=x"],
            2,
            "value `x` for `gpc0`",
        ),
        (
            &["table", "show", "per_ip", "--key", "10.0.0.300"],
            1,
            "`10.0.0.300` is not an IP address",
        ),
        (
            &["table", "show", "per_ip", "--where", "frob > 1"],
            1,
            "unknown field `frob`",
        ),
        (
            &["table", "show", "per_ip", "--where", "gpc1 > 1"],
            1,
            "does not store `gpc1`",
        ),
        (
            &["table", "show", "per_ip", "--where", "gpc0 ~ 1"],
            2,
            "gpc0 ~ 1",
        ),
        (
            &["table", "clear", "per_ip", "10.0.0.300"],
            1,
            "`10.0.0.300` is not an IP address",
        ),
        (&["peer", "remove", "edge-9"], 1, "`edge-9` is not a member"),
        (
            &["peer", "add", "edge-1", "127.0.0.1:7001"],
            1,
            "`edge-1` is the node you are talking to",
        ),
        (&["peer", "remove", "edge-1"], 1, "`edge-1` is the node"),
        (
            &["peer", "add", "sluicectl", "127.0.0.1:7009"],
            1,
            "admin client",
        ),
        (&["peer", "add", "Edge-4", "127.0.0.1:7004"], 2, "Edge-4"),
        (&["peer", "add", "edge-4", "127.0.0.1"], 2, "HOST:PORT"),
    ];
    for (args, code, named) in cases {
        for json_flag in [false, true] {
            let mut all: Vec<&str> = if json_flag { vec!["--json"] } else { vec![] };
            all.extend_from_slice(args);
            let out = ctl(one, &all).await;
            assert_eq!(out.status.code(), Some(*code), "{all:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains(named),
                "{all:?} should name {named:?}: {}",
                stderr(&out)
            );
            assert!(stdout(&out).is_empty(), "{all:?}: {}", stdout(&out));
        }
    }
    assert_eq!(snapshot(one).await, before, "nothing changed");
    assert_eq!(
        one.repl
            .peers()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["edge-2"]
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_add_and_remove_change_the_membership_of_every_node() {
    let mut f = Fleet::start(&["edge-1", "edge-2", "edge-3"], &["edge-4"]).await;
    assert!(f.connected().await, "mesh up");
    // edge-4 is started knowing only edge-1.
    let listen4 = free_addr();
    let node4 = AdminNode::start(NodeSpec {
        name: "edge-4",
        listen: listen4,
        peers: vec![("edge-1".into(), f.nodes[0].listen.to_string())],
        certs: &f.certs(),
        state_dir: f.dir.path().join("edge-4"),
    })
    .await;

    let added = ctl_json(
        &f.nodes[0],
        &["peer", "add", "edge-4", &listen4.to_string()],
    )
    .await;
    let names: Vec<&str> = added["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert!(names.contains(&"edge-4"), "{added}");

    let nodes = &f.nodes;
    let four = &node4;
    assert!(
        eventually(WAIT, || async move {
            nodes.iter().all(|n| n.peer_up("edge-4"))
                && ["edge-1", "edge-2", "edge-3"]
                    .iter()
                    .all(|p| four.peer_up(p))
        })
        .await,
        "all three running nodes connect to the fourth"
    );
    for n in nodes.iter().chain([four]) {
        let peers = ctl_json(n, &["peer", "list"]).await;
        let up: BTreeSet<&str> = peers["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter(|p| p["up"] == true)
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        assert_eq!(up.len(), 3, "{}: {peers}", n.name);
        assert!(!up.contains(n.name.as_str()));
    }
    let text = success(&ctl(&f.nodes[1], &["peer", "list"]).await);
    assert!(
        text.lines()
            .any(|l| l.starts_with("edge-4") && l.contains(" up ")),
        "{text}"
    );

    // The new member replicates: a set on it reaches edge-3.
    success(&ctl(four, &["table", "set", "per_ip", "10.9.9.9", "gpc0=7"]).await);
    assert!(
        eventually(WAIT, || async move {
            nodes[2].read("10.9.9.9", DataType::Gpc0) == Some(7)
        })
        .await
    );

    // Removal through any node reaches every node and disconnects edge-4 everywhere.
    let removed = ctl_json(&f.nodes[2], &["peer", "remove", "edge-4"]).await;
    assert!(
        removed["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .all(|p| p["name"] != "edge-4"),
        "{removed}"
    );
    let nodes = &f.nodes;
    assert!(
        eventually(WAIT, || async move {
            nodes
                .iter()
                .all(|n| !n.peer_up("edge-4") && !n.is_peer("edge-4"))
                && ["edge-1", "edge-2", "edge-3"]
                    .iter()
                    .all(|p| !four.peer_up(p))
        })
        .await,
        "edge-4 is disconnected everywhere"
    );
    for n in nodes {
        let peers = ctl_json(n, &["peer", "list"]).await;
        let names: BTreeSet<&str> = peers["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        assert!(!names.contains("edge-4"), "{}: {peers}", n.name);
        assert_eq!(names.len(), 2, "{}: {peers}", n.name);
    }
    let again = ctl(&f.nodes[0], &["peer", "remove", "edge-4"]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("`edge-4` is not a member"),
        "{}",
        stderr(&again)
    );

    // A restarted node keeps the membership it learnt, without edge-4, from its state_dir.
    let old = f.nodes.remove(1);
    let (listen2, state2) = (old.listen, f.dir.path().join("edge-2"));
    old.stop().await;
    let restarted = AdminNode::start(NodeSpec {
        name: "edge-2",
        listen: listen2,
        peers: vec![],
        certs: &f.certs(),
        state_dir: state2,
    })
    .await;
    let peers = ctl_json(&restarted, &["peer", "list"]).await;
    let names: BTreeSet<&str> = peers["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, BTreeSet::from(["edge-1", "edge-3"]), "{peers}");
    f.nodes.insert(1, restarted);
    node4.stop().await;
    f.stop().await;
}
