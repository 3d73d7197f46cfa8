//! The loopback suite: real `sluice` processes on 127.0.0.1 with certificates from `sluicectl
//! certs init`, driven by real HTTP clients (each with its own 127.0.1.N source address) and by
//! `sluicectl`. Fleet-wide limit accuracy, sticky consistency across nodes, kill -9 and restart
//! with resync, peer add and remove, a foreign CA refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_tests::{Fleet, FleetSpec, WAIT, client, eventually, get, sluicectl};

/// `table show per_ip --json` on node `i`: key → (field → value).
fn table(f: &Fleet, i: usize) -> HashMap<String, HashMap<String, u64>> {
    let v = f.nodes[i].ctl_json(&["table", "show", "per_ip"]);
    let rows = v["entries"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            let key = r["key"].as_str()?.to_string();
            let values = r["values"].as_object()?;
            let vals = values
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect();
            Some((key, vals))
        })
        .collect()
}

fn req_cnt(t: &HashMap<String, HashMap<String, u64>>, key: &str) -> u64 {
    t.get(key)
        .and_then(|v| v.get("http_req_cnt"))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_gets_the_whole_table_back() {
    let mut f = Fleet::start(FleetSpec::three()).await;
    // 60 clients, 3 requests each, spread over the nodes.
    for c in 1..=60 {
        for i in 0..3 {
            let (status, _, _) = get(f.nodes[i].web(), "/", Some(client(c)))
                .await
                .expect("request");
            assert_eq!(status, 200);
        }
    }
    let settled = |f: &Fleet, i: usize| {
        let t = table(f, i);
        t.len() == 60 && (1..=60).all(|c| req_cnt(&t, &client(c).to_string()) == 3)
    };
    assert!(
        eventually(WAIT, || async { (0..3).all(|i| settled(&f, i)) }).await,
        "all three converge"
    );

    f.nodes[2].kill();
    f.nodes[2].start();
    f.wait_ready(2).await;
    assert!(
        settled(&f, 2),
        "ready means the snapshot was applied: the whole table is back"
    );
    // And it keeps counting with the others.
    get(f.nodes[2].web(), "/", Some(client(1))).await.unwrap();
    assert!(
        eventually(WAIT, || async {
            (0..3).all(|i| req_cnt(&table(&f, i), &client(1).to_string()) == 4)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_added_and_removed_with_sluicectl_and_stay_so_across_restarts() {
    let mut f = Fleet::start(FleetSpec::three()).await;
    let d = f.add_node("edge-4", &[0]);
    f.nodes[d].start();
    let addr = format!("127.0.0.1:{}", f.nodes[d].ports.sync);
    let out = sluicectl([
        "--node",
        &f.nodes[0].admin(),
        "peer",
        "add",
        "edge-4",
        &addr,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.wait_ready(d).await;
    let up = |f: &Fleet, i: usize, peer: &str| {
        let v = f.nodes[i].ctl_json(&["peer", "list"]);
        let peers = v["peers"]
            .as_array()
            .or_else(|| v.as_array())
            .cloned()
            .unwrap_or_default();
        peers.iter().any(|p| p["name"] == peer && p["up"] == true)
    };
    assert!(
        eventually(WAIT, || async {
            (0..3).all(|i| up(&f, i, "edge-4"))
                && ["edge-1", "edge-2", "edge-3"].iter().all(|p| up(&f, d, p))
        })
        .await,
        "all three running nodes connect to the fourth"
    );
    // Traffic on edge-4 reaches the others.
    get(f.nodes[d].web(), "/", Some(client(7))).await.unwrap();
    assert!(
        eventually(WAIT, || async {
            req_cnt(&table(&f, 1), &client(7).to_string()) == 1
        })
        .await
    );

    let out = sluicectl(["--node", &f.nodes[2].admin(), "peer", "remove", "edge-4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(WAIT, || async { (0..3).all(|i| !up(&f, i, "edge-4")) }).await,
        "disconnected everywhere"
    );

    // A restart of any node keeps the new membership.
    f.nodes[1].terminate();
    f.nodes[1].start();
    f.wait_ready(1).await;
    let v = f.nodes[1].ctl_json(&["peer", "list"]);
    let peers = v["peers"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        peers.iter().all(|p| p["name"] != "edge-4"),
        "edge-4 stays removed: {v}"
    );
    assert!(
        eventually(WAIT, || async {
            up(&f, 1, "edge-1") && up(&f, 1, "edge-3")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_foreign_ca_is_refused() {
    let mut f = Fleet::start(FleetSpec::three()).await;
    // A fourth node whose certificate comes from another `certs init`.
    let d = f.add_node("edge-4", &[0]);
    let foreign = f.dir.path().join("foreign");
    let out = sluicectl([
        "certs".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        foreign.as_os_str(),
        "--nodes".as_ref(),
        "edge-4".as_ref(),
    ]);
    assert!(out.status.success());
    let config = std::fs::read_to_string(&f.nodes[d].config).unwrap();
    let certs = f.dir.path().join("certs");
    std::fs::write(
        &f.nodes[d].config,
        config.replace(&certs.display().to_string(), &foreign.display().to_string()),
    )
    .unwrap();
    f.nodes[d].start();
    f.wait_up(d).await;
    let addr = format!("127.0.0.1:{}", f.nodes[d].ports.sync);
    let out = sluicectl([
        "--node",
        &f.nodes[0].admin(),
        "peer",
        "add",
        "edge-4",
        &addr,
    ]);
    assert!(out.status.success());
    // edge-1 dials edge-4 and refuses its certificate; nothing of edge-4's reaches the fleet.
    get(f.nodes[d].web(), "/", Some(client(9))).await.unwrap();
    let refused = |f: &Fleet| {
        let v = f.nodes[0].ctl_json(&["peer", "list"]);
        let peers = v["peers"]
            .as_array()
            .or_else(|| v.as_array())
            .cloned()
            .unwrap_or_default();
        peers
            .iter()
            .any(|p| p["name"] == "edge-4" && p["up"] == false && !p["last_error"].is_null())
    };
    assert!(
        eventually(WAIT, || async { refused(&f) }).await,
        "edge-1 reports the refusal"
    );
    assert!(
        eventually(WAIT, || async { f.nodes[0].log_tail().contains("edge-4") }).await,
        "and logs it"
    );
    assert_eq!(
        req_cnt(&table(&f, 0), &client(9).to_string()),
        0,
        "nothing applied from the foreign peer"
    );
}

/// One simulated client at `rate` requests per second for `secs`, round-robin over the nodes;
/// returns the instants of admitted requests.
async fn paced(f: &Fleet, src: std::net::IpAddr, rate: u32, secs: u64) -> (Vec<Instant>, u64) {
    let start = Instant::now();
    let mut admitted = Vec::new();
    let mut sent = 0u64;
    let gap = Duration::from_secs(1) / rate;
    while start.elapsed() < Duration::from_secs(secs) {
        let target = start + gap * sent as u32;
        tokio::time::sleep_until(target.into()).await;
        let node = &f.nodes[sent as usize % f.nodes.len()];
        if let Ok((200, _, _)) = get(node.web(), "/", Some(src)).await {
            admitted.push(Instant::now());
        }
        sent += 1;
    }
    (admitted, sent)
}

/// The most admitted requests in any `window` of the timeline.
fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].duration_since(times[lo]) >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

fn limited() -> FleetSpec {
    let mut spec = FleetSpec::three();
    spec.request_rules = vec!["deny status 429 if sc0_http_req_rate > 100".into()];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_wide_limit_holds_for_a_paced_client_a_burst_and_three_clients() {
    let f = Fleet::start(limited()).await;

    // (a) One client, 60 req/s round-robin over the three nodes, for 25 s.
    let (times, sent) = paced(&f, client(1), 60, 25).await;
    let worst = max_in_window(&times, Duration::from_secs(10));
    println!(
        "fleet accuracy (a) paced 60 req/s: {sent} sent, {} admitted, at most {worst} in any 10 s window",
        times.len()
    );
    assert!(
        worst <= 105,
        "at most 105 admitted per 10 s window, got {worst}"
    );
    assert!(worst >= 95, "the limit admits about 100, got {worst}");

    // (b) A burst: 30 concurrent workers, a new connection per request, rotating nodes.
    let admitted = Arc::new(AtomicU64::new(0));
    let total = 900u64;
    let next = Arc::new(AtomicU64::new(0));
    let webs: Vec<_> = f.nodes.iter().map(|n| n.web()).collect();
    let workers: Vec<_> = (0..30)
        .map(|_| {
            let (admitted, next, webs) = (admitted.clone(), next.clone(), webs.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    if let Ok((200, _, _)) = get(webs[i as usize % 3], "/", Some(client(2))).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let burst = admitted.load(Ordering::Relaxed);
    println!("fleet accuracy (b) burst of {total}, 30 concurrent: {burst} admitted");
    assert!(
        burst <= 120,
        "at most 120 admitted of the burst, got {burst}"
    );
    assert!(burst >= 90, "about 100 admitted, got {burst}");

    // (c) Three clients from one address, one per node, as fast as they can for 3 s.
    let admitted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = webs
        .iter()
        .map(|&web| {
            let admitted = admitted.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    if let Ok((200, _, _)) = get(web, "/", Some(client(3))).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let three = admitted.load(Ordering::Relaxed);
    println!("fleet accuracy (c) three clients, one per node: {three} admitted");
    assert!(three <= 110, "at most 110 admitted, got {three}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sticks_to_one_server_whichever_node_it_reaches() {
    let mut spec = FleetSpec::three();
    spec.stick = Some("on src table per_ip".into());
    let f = Fleet::start(spec).await;
    let trials = 1000u32;
    let mut agree = 0;
    for t in 0..trials {
        let src = client(1000 + t);
        let (status, _, first) = get(f.nodes[0].web(), "/", Some(src))
            .await
            .expect("request");
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, _, second) = get(f.nodes[1].web(), "/", Some(src))
            .await
            .expect("request");
        let (_, _, third) = get(f.nodes[2].web(), "/", Some(src))
            .await
            .expect("request");
        if first == second && first == third {
            agree += 1;
        }
    }
    println!(
        "sticky consistency: {agree} of {trials} clients on one server across the three nodes"
    );
    assert!(
        agree * 1000 >= trials * 999,
        "at least 99.9% agree, got {agree}/{trials}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_without_a_restart() {
    let mut f = Fleet::start(FleetSpec::three()).await;
    get(f.nodes[0].web(), "/", Some(client(1))).await.unwrap();
    assert!(
        eventually(WAIT, || async {
            req_cnt(&table(&f, 2), &client(1).to_string()) == 1
        })
        .await
    );

    // A whole new fleet CA and certificates over the old files, then SIGHUP to edge-1 and
    // edge-2. Their session keeps running on the identity it started with.
    let certs = f.dir.path().join("certs");
    let out = sluicectl([
        "certs".as_ref(),
        "init".as_ref(),
        "--force".as_ref(),
        "--out".as_ref(),
        certs.as_os_str(),
        "--nodes".as_ref(),
        "edge-1,edge-2,edge-3".as_ref(),
        "--admin-client".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.nodes[0].hup();
    f.nodes[1].hup();
    get(f.nodes[0].web(), "/", Some(client(1))).await.unwrap();
    assert!(
        eventually(WAIT, || async {
            req_cnt(&table(&f, 1), &client(1).to_string()) == 2
        })
        .await,
        "running sessions keep replicating"
    );
    // edge-3 comes back with the new certificate: only the reloaded CA of edge-1 and edge-2
    // lets it in, so replication with it proves the reload.
    f.nodes[2].kill();
    f.nodes[2].start();
    f.wait_ready(2).await;
    get(f.nodes[2].web(), "/", Some(client(1))).await.unwrap();
    assert!(
        eventually(WAIT, || async {
            (0..3).all(|i| req_cnt(&table(&f, i), &client(1).to_string()) == 3)
        })
        .await,
        "new sessions use the rotated certificates"
    );
}
