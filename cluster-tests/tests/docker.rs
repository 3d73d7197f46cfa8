//! The docker-compose suite: the fleet of `docker/compose.yml` (image `sluice:dev`, built by
//! `docker/build.sh`) in real containers on real Docker networks, driven from the host through
//! the published ports and `sluicectl` over mutual TLS. Beside what the loopback suite shows, it
//! cuts a node off the replication network, kills a container, and restarts every node in turn
//! under traffic.
//!
//! Off unless `SLUICE_DOCKER_TESTS=1` (each test then says it was skipped); `.ci/run` turns it
//! on. Alone:
//!
//! ```sh
//! docker/build.sh && SLUICE_DOCKER_TESTS=1 cargo test -p cluster-tests --test docker -- --nocapture
//! ```
//!
//! Every test brings up its own compose project and takes it down, volumes included, when it
//! ends or fails; the tests run one at a time whatever `--test-threads` says.

#[path = "docker/compose.rs"]
mod compose;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use compose::{Cluster, Outcome, Table, WAIT, enabled, finish, request, serial, wait_until};

/// The compose fleet's limit: `deny status 429 if sc0_http_req_rate > 100`, 10 s period.
const LIMIT: u64 = 100;

/// Requests sent one after the other, rotating over `nodes`; every one must be answered,
/// `200` or `429` (the fleet-wide limit). Returns (answered, admitted).
fn send(c: &Cluster, nodes: &[usize], n: usize) -> (u64, u64) {
    let mut admitted = 0;
    for k in 0..n {
        let i = nodes[k % nodes.len()];
        match request(c.web(i), "/") {
            Outcome::Answered { status: 200, .. } => admitted += 1,
            Outcome::Answered { status: 429, .. } => {}
            other => panic!("request {k} to {}: {other:?}", c.nodes[i].name),
        }
    }
    (n as u64, admitted)
}

/// `n` entries set by `table set` round-robin over `nodes` (so every origin holds some),
/// `gpc0` from 1 to 5. Returns key → gpc0.
fn seed(c: &Cluster, nodes: &[usize], net: u8, n: usize) -> BTreeMap<String, u64> {
    let mut keys = BTreeMap::new();
    for k in 0..n {
        let key = format!("10.{net}.{}.{}", k / 250, k % 250 + 1);
        let gpc0 = 1 + (k % 5) as u64;
        c.set(nodes[k % nodes.len()], &key, "gpc0", gpc0);
        keys.insert(key, gpc0);
    }
    keys
}

/// A table holds exactly the seeded entries with their `gpc0`, plus the tests' client with
/// `requests` requests counted (when any were sent).
fn holds(
    t: &Table,
    seeded: &BTreeMap<String, u64>,
    client: &str,
    requests: u64,
) -> Result<(), String> {
    for (key, gpc0) in seeded {
        let got = t.get(key).and_then(|v| v.get("gpc0"));
        if got != Some(gpc0) {
            return Err(format!("{key}: gpc0 {got:?}, expected {gpc0}"));
        }
    }
    let cnt = t.get(client).and_then(|v| v.get("http_req_cnt")).copied();
    if requests > 0 && cnt != Some(requests) {
        return Err(format!(
            "{client}: http_req_cnt {cnt:?}, expected {requests}"
        ));
    }
    let expected = seeded.len() + usize::from(requests > 0);
    if t.len() != expected {
        return Err(format!("{} entries, expected {expected}", t.len()));
    }
    Ok(())
}

/// Waits until the merged `http_req_cnt` of the tests' client is `expected` on each of `nodes`.
fn wait_counts(c: &Cluster, what: &str, nodes: &[usize], expected: u64) -> Duration {
    wait_until(what, WAIT, || {
        for &i in nodes {
            let got = c.req_cnt(i)?;
            if got != expected {
                return Err(format!("{}: {got}, expected {expected}", c.nodes[i].name));
            }
        }
        Ok(())
    })
}

#[test]
fn the_fleet_limits_and_sticks_in_containers() {
    if !enabled("the_fleet_limits_and_sticks_in_containers") {
        return;
    }
    let _one = serial();
    let c = Cluster::up("fleet");

    // 150 requests from one client in well under a second, rotating over the three nodes on
    // every request: the limit is the fleet's, so about 100 get through, not 300.
    let (mut admitted, mut denied) = (0, 0);
    let (mut servers, mut vias) = (BTreeSet::new(), BTreeSet::new());
    for k in 0..150 {
        match request(c.web(k % 3), "/") {
            Outcome::Answered {
                status: 200,
                body,
                via,
            } => {
                admitted += 1;
                servers.insert(body.trim().to_string());
                vias.extend(via);
            }
            Outcome::Answered { status: 429, .. } => denied += 1,
            other => panic!("request {k}: {other:?}"),
        }
    }
    eprintln!("fleet limit in containers: {admitted} of 150 admitted, {denied} denied");
    assert!(
        (LIMIT..=LIMIT + 5).contains(&admitted),
        "{admitted} admitted for a fleet-wide limit of {LIMIT}"
    );
    // `stick on src`: whichever node the client reaches, it lands on one server.
    assert_eq!(servers.len(), 1, "one server for one client: {servers:?}");
    assert_eq!(vias.len(), 3, "every node answered: {vias:?}");
    wait_counts(&c, "every node counts all 150 requests", &[0, 1, 2], 150);
}

#[test]
fn a_fourth_node_joins_with_peer_add() {
    if !enabled("a_fourth_node_joins_with_peer_add") {
        return;
    }
    let _one = serial();
    let mut c = Cluster::up("join");
    let seeded = seed(&c, &[0, 1, 2], 1, 60);
    let (sent, _) = send(&c, &[0, 1, 2], 9);

    // docker/README.md: start edge-4 (seeded with edge-1 only), then `peer add` on any node.
    let e4 = c.start_edge4();
    let started = Instant::now();
    if let Err(e) = c.ctl(1, &["peer", "add", "edge-4", "edge-4.mesh:7000"]) {
        panic!("{e}");
    }
    c.wait_ready(e4);
    c.wait_mesh();
    let joined = started.elapsed();
    let all = [0, 1, 2, e4];
    c.wait_converged("edge-4 holds the fleet's table", &all, |t| {
        holds(t, &seeded, &c.client_key(), sent)
    });
    match request(c.web(e4), "/") {
        Outcome::Answered {
            status: 200, via, ..
        } => assert_eq!(via.as_deref(), Some("1.1 edge-4")),
        other => panic!("request to edge-4: {other:?}"),
    }
    wait_counts(&c, "all four count edge-4's request", &all, sent + 1);
    eprintln!("edge-4 joined (ready, every session up) {joined:?} after peer add");
}

#[test]
fn a_partition_heals_to_exact_counts() {
    if !enabled("a_partition_heals_to_exact_counts") {
        return;
    }
    let _one = serial();
    let c = Cluster::up("partition");
    let (all, majority, cut) = ([0, 1, 2], [0, 1], 2);

    let (before, _) = send(&c, &all, 30);
    wait_counts(&c, "every node counts the first 30", &all, before);

    // edge-3 leaves the replication network; it keeps serving on its published port.
    c.disconnect(cut);
    let (mut on_majority, _) = send(&c, &majority, 40);
    let (mut on_cut, _) = send(&c, &[cut], 20);
    wait_until("both sides see the other down", WAIT, || {
        for i in all {
            let down = c.peers_down(i)?;
            let expected = if i == cut { 2 } else { 1 };
            if down.len() != expected {
                return Err(format!("{} sees {down:?} down", c.nodes[i].name));
            }
        }
        Ok(())
    });
    // More on both sides once they know they are apart.
    on_majority += send(&c, &majority, 20).0;
    on_cut += send(&c, &[cut], 10).0;

    // Each side counts what it saw, plus the other's contributions from before the cut.
    wait_counts(&c, "the majority's view", &majority, before + on_majority);
    wait_counts(&c, "edge-3's view", &[cut], before + on_cut);

    c.connect(cut);
    let truth = before + on_majority + on_cut;
    let healed = wait_counts(&c, "every node at the ground truth", &all, truth);
    c.wait_converged("whole tables equal", &all, |t| {
        holds(t, &BTreeMap::new(), &c.client_key(), truth)
    });
    eprintln!(
        "partition: {truth} requests ({on_majority} on the majority, {on_cut} on edge-3 while cut \
         off); every node at exactly {truth} {healed:?} after reconnecting"
    );
}

#[test]
fn a_killed_container_restarts_and_resyncs() {
    if !enabled("a_killed_container_restarts_and_resyncs") {
        return;
    }
    let _one = serial();
    let c = Cluster::up("kill");
    let (all, victim) = ([0, 1, 2], 1);

    let mut seeded = seed(&c, &all, 2, 300);
    let (mut sent, _) = send(&c, &all, 30);
    c.wait_converged("300 entries everywhere", &all, |t| {
        holds(t, &seeded, &c.client_key(), sent)
    });

    c.kill(victim);
    // While edge-2 is dead: traffic and new entries on the others.
    sent += send(&c, &[0, 2], 30).0;
    seeded.extend(seed(&c, &[0, 2], 3, 50));

    // Times from `docker start`, which itself takes a few hundred milliseconds (the
    // container's network is set up anew).
    let restarted = Instant::now();
    c.start(victim);
    c.wait_ready(victim);
    let ready = restarted.elapsed();
    c.wait_converged("edge-2 holds every entry again", &all, |t| {
        holds(t, &seeded, &c.client_key(), sent)
    });
    let resynced = restarted.elapsed();
    eprintln!(
        "docker kill, then start: edge-2 ready {ready:?}, holding all {} entries with the \
         others' counts {resynced:?} after docker start",
        seeded.len() + 1
    );
}

/// What the traffic of the rolling restart saw.
#[derive(Debug, Default)]
struct Report {
    /// Requests answered (the ground truth of `http_req_cnt`).
    answered: u64,
    /// Answered per node.
    per_node: [u64; 3],
    /// Connection attempts never accepted (by the error they got), each then sent to the
    /// next node.
    not_accepted: BTreeMap<String, u64>,
    /// Requests that failed after their connection was accepted, or found no node.
    failures: Vec<String>,
    /// When each attempt that was not answered with a 200 happened, for the timeline.
    events: Vec<(Duration, String)>,
}

/// A steady client: one request every `every`, each to the next node in turn, at the
/// addresses in `addrs` (updated as containers restart). A connection never accepted (refused,
/// or no answer to the SYN) goes to the following node, round and round for up to 10 s; a
/// request fails when a connection was accepted and no 200 came back, or when no node
/// accepted it in 10 s. Runs until `stop`; times are from `t0`.
fn steady_traffic(
    c: &Cluster,
    every: Duration,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Report> {
    let names: Vec<_> = c.nodes.iter().map(|n| n.name.clone()).collect();
    std::thread::spawn(move || {
        let mut r = Report::default();
        let mut next = Instant::now();
        for k in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut answered = false;
            for attempt in 0.. {
                let i = (k + attempt) % names.len();
                if Instant::now() > deadline {
                    break;
                }
                let addr = addrs.lock().unwrap_or_else(|p| p.into_inner())[i];
                let at = t0.elapsed();
                let (response, failed) = match request(addr, "/") {
                    Outcome::NotAccepted(e) => {
                        *r.not_accepted.entry(format!("{:?}", e.kind())).or_default() += 1;
                        let what = format!("request {k} to {}: not accepted: {e}", names[i]);
                        r.events.push((at, what));
                        continue;
                    }
                    Outcome::Answered { status: 200, .. } => (true, None),
                    Outcome::Answered { status, .. } => (true, Some(format!("status {status}"))),
                    Outcome::Failed(e) => (false, Some(e)),
                };
                if response {
                    r.answered += 1;
                    r.per_node[i] += 1;
                }
                if let Some(e) = failed {
                    let what = format!("request {k} to {}: FAILED: {e}", names[i]);
                    r.events.push((at, what.clone()));
                    r.failures.push(what);
                }
                answered = true;
                break;
            }
            if !answered {
                let what = format!("request {k}: no node accepted it within 10 s");
                r.events.push((t0.elapsed(), what.clone()));
                r.failures.push(what);
            }
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        r
    })
}

#[test]
fn a_rolling_restart_under_traffic_fails_no_request_and_loses_no_entry() {
    if !enabled("a_rolling_restart_under_traffic_fails_no_request_and_loses_no_entry") {
        return;
    }
    let _one = serial();
    let c = Cluster::up("rolling");
    let all = [0, 1, 2];
    let seeded = seed(&c, &all, 4, 300);
    c.wait_converged("300 entries everywhere", &all, |t| {
        holds(t, &seeded, &c.client_key(), 0)
    });

    // 7 requests a second: under the limit (100 per 10 s), so every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // At the containers' own addresses, not the published ports: see `Cluster::direct`.
    let addrs = Arc::new(Mutex::new(all.map(|i| c.direct(i)).to_vec()));
    let traffic = steady_traffic(
        &c,
        Duration::from_millis(140),
        addrs.clone(),
        t0,
        stop.clone(),
    );
    let mut timeline = Vec::new();
    let mut timings = Vec::new();
    std::thread::sleep(Duration::from_secs(2));
    for i in all {
        let name = c.nodes[i].name.clone();
        let t = Instant::now();
        timeline.push((t0.elapsed(), format!("docker stop {name}")));
        let code = c.stop(i);
        let drained = t.elapsed();
        timeline.push((t0.elapsed(), format!("{name} exited {code}")));
        assert_eq!(code, 0, "{name} exits 0 after draining");
        let t = Instant::now();
        timeline.push((t0.elapsed(), format!("docker start {name}")));
        c.start(i);
        timeline.push((t0.elapsed(), format!("docker start {name} returned")));
        let addr = c.direct(i);
        addrs.lock().unwrap_or_else(|p| p.into_inner())[i] = addr;
        timeline.push((t0.elapsed(), format!("{name} at {addr}")));
        c.wait_ready(i);
        let ready = t.elapsed();
        timeline.push((t0.elapsed(), format!("{name} ready")));
        // The next node goes down only once this one is back in the mesh with every entry.
        c.wait_mesh();
        c.wait_converged(&format!("{name} holds every entry"), &[i], |t| {
            // The client's entry is there too, its count still moving with the traffic.
            let mut t = t.clone();
            t.remove(&c.client_key());
            holds(&t, &seeded, "", 0)
        });
        timings.push((name, drained, ready, t.elapsed()));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut r = traffic.join().expect("the traffic thread");

    for (node, drained, ready, back) in &timings {
        eprintln!(
            "rolling restart: {node}: docker stop (drain, exit 0) {drained:?}; from docker \
             start: ready {ready:?}, every entry back {back:?}"
        );
    }
    eprintln!(
        "rolling restart: {} requests answered ({:?} per node), connections never accepted and \
         sent to the next node: {:?}, {} failures",
        r.answered,
        r.per_node,
        r.not_accepted,
        r.failures.len()
    );
    if !r.failures.is_empty() {
        timeline.append(&mut r.events);
        timeline.sort();
        for (at, what) in &timeline {
            eprintln!("  {:>8.3}s  {what}", at.as_secs_f64());
        }
    }
    assert!(r.failures.is_empty(), "failed requests: {:?}", r.failures);
    assert!(
        r.per_node.iter().all(|&n| n > 0),
        "every node served: {:?}",
        r.per_node
    );
    c.wait_converged("no entry lost, every request counted", &all, |t| {
        holds(t, &seeded, &c.client_key(), r.answered)
    });
}

/// The drain half of the rolling restart, made deterministic: connections the node accepted
/// before `docker stop` must be answered, whether their request had begun to arrive or not.
/// A client that connects just as the node starts draining sends its request a moment after
/// the node accepted it; the steady traffic above hits that window only by chance.
#[test]
fn a_draining_node_answers_every_connection_it_accepted() {
    if !enabled("a_draining_node_answers_every_connection_it_accepted") {
        return;
    }
    let _one = serial();
    let c = Cluster::up("drain");
    let addr = c.direct(0);
    let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect");
    let rest = "Connection: close\r\n\r\n";
    let mut quiet = connect();
    let mut started = connect();
    write!(started, "GET / HTTP/1.1\r\nHost: {addr}\r\n").expect("half a request");
    // Both accepted by the node (not merely queued by the kernel).
    wait_until("two connections accepted", WAIT, || {
        match c.connections_active(0)? {
            2 => Ok(()),
            n => Err(format!("{n} active")),
        }
    });

    let stopping = {
        let container = c.container("edge-1");
        std::thread::spawn(move || compose::docker_ok(&["stop", "--time", "20", &container]))
    };
    wait_until(
        "edge-1 refuses new connections",
        WAIT,
        || match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let full = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n{rest}");
    let answers = [
        ("half-sent", finish(&mut started, rest)),
        ("not yet sent", finish(&mut quiet, &full)),
    ];
    stopping.join().expect("docker stop");
    for (which, outcome) in answers {
        assert!(
            matches!(outcome, Outcome::Answered { status: 200, .. }),
            "request {which} when edge-1 began draining: {outcome:?}"
        );
    }
}
