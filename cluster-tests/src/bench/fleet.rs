//! Three nodes under one fleet-wide limit: `deny 429 if http_req_rate(10s) > 100` on a table
//! every node replicates (HAProxy: a `peers` section, `../shared/bench/peers-cluster.sh`'s
//! config; sluice: the same rule and table over its replication), stickiness by source, three
//! nginx servers answering their own name.
//!
//! Clients open a new connection per request from their own loopback address:
//!
//! - paced: 60 requests per second, round-robin over the three nodes, for 12 s — the most
//!   admitted in any 10 s window (ideal: 100);
//! - burst: 600 requests, 30 at once, rotating over the nodes (~10k req/s) — admitted;
//! - spread: three clients from one address, one per node, 300 requests per second each, for
//!   15 s — the most admitted in any 10 s window, and admitted per second over time (plotted);
//! - sticky: 500 fresh clients, each asks node 1, then node 2's table is polled (admin API /
//!   runtime API) until the client's `server_id` shows: propagation from node 1's answer; then
//!   nodes 2 and 3 are asked and must pick node 1's server. The observer's own share of that
//!   figure is shown beside it: one read of a key node 2 already holds. Then 500 more fresh
//!   clients ask node 1, one every 5 ms, with nobody polling: `tcpdump` stamps the packets on
//!   loopback, which give the propagation without an observer, from node 1's answer leaving
//!   it to node 2's acknowledgement of node 1's last update ([`capture::propagation`]). That
//!   one carries the goal.
//!
//! Both fleets get the same settling time after their peer links are up before measuring
//! (HAProxy runs an initial resync for a few seconds after start).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_proto::admin::v1::StatusRequest;
use sluice_proto::admin::v1::admin_client::AdminClient;
use tokio::sync::Mutex;

use super::capture::{self, Capture, Stamped};
use super::nodes::{HaNode, SluiceNode, SluiceSpec};
use super::procs;
use super::report::{note, quantile};
use super::{Env, Figure, Goal, Opts, Report, plot};

const LIMIT: f64 = 100.0;
const PACED_RATE: f64 = 60.0;
const PACED_SECS: f64 = 12.0;
const BURST: usize = 600;
const BURST_CONC: usize = 30;
const SPREAD_RATE: f64 = 300.0;
const SPREAD_SECS: f64 = 15.0;
const STICKY_KEYS: u32 = 500;
const SETTLE: Duration = Duration::from_secs(4);
const POLL_PAUSE: Duration = Duration::from_micros(50);
/// Between two clients of the stamped pass: ten times the slowest propagation seen, so each
/// client's exchange ends before the next begins.
const STAMP_GAP: Duration = Duration::from_millis(5);

/// One side of the comparison: three nodes answering HTTP, and a way to read node 2's table.
enum Fleet {
    Sluice(Vec<SluiceNode>),
    Haproxy(Vec<HaNode>),
}

impl Fleet {
    fn web(&self, i: usize) -> SocketAddr {
        match self {
            Fleet::Sluice(n) => n[i].web(),
            Fleet::Haproxy(n) => SocketAddr::from(([127, 0, 0, 1], n[i].web)),
        }
    }

    /// Whether node `i` has a sticky server for `src` in its table.
    async fn has_server(&mut self, i: usize, src: Ipv4Addr) -> anyhow::Result<bool> {
        match self {
            Fleet::Sluice(n) => Ok(n[i]
                .value("per_ip", &src.to_string(), "server_id")
                .await?
                .is_some()),
            Fleet::Haproxy(n) => {
                let out = n[i].cli(&format!("show table be_app key {src}"))?;
                Ok(out
                    .split_whitespace()
                    .any(|t| t.strip_prefix("server_id=").is_some_and(|v| v != "0")))
            }
        }
    }

    /// The nodes' process ids, in node order.
    fn pids(&self) -> Vec<u32> {
        let procs: Vec<Option<&procs::Proc>> = match self {
            Fleet::Sluice(n) => n.iter().map(SluiceNode::proc).collect(),
            Fleet::Haproxy(n) => n.iter().map(HaNode::proc).collect(),
        };
        procs
            .into_iter()
            .map(|p| p.map_or(0, procs::Proc::pid))
            .collect()
    }

    fn stop(&mut self) {
        match self {
            Fleet::Sluice(n) => n.iter_mut().for_each(SluiceNode::stop),
            Fleet::Haproxy(n) => n.iter_mut().for_each(HaNode::stop),
        }
    }
}

/// A request from `src` to `addr` on a new connection: the status and the body (the server's
/// name), or `None` when it failed.
async fn get(addr: SocketAddr, src: Ipv4Addr) -> Option<(u16, String)> {
    let (status, _, body) = cluster_tests::get(addr, "/", Some(IpAddr::V4(src)))
        .await
        .ok()?;
    Some((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

/// The most admitted in any window of `w` seconds, from sorted admission times.
fn max_in_window(times: &[f64], w: f64) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while times[i] - times[j] >= w {
            j += 1;
        }
        best = best.max(i + 1 - j);
    }
    best
}

async fn start_sluice(env: &Env, servers: &[(String, u16)]) -> anyhow::Result<Fleet> {
    let names = ["edge-1", "edge-2", "edge-3"];
    let certs = env.certs("certs-fleet", &names)?;
    let sync: Vec<u16> = names.iter().map(|_| procs::port()).collect();
    let spec = SluiceSpec {
        tables: "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 100000\nexpire = \"60s\"\n\
                 store = [\"http_req_rate(10s)\", \"gpc0\", \"server_id\"]\n"
            .into(),
        request_rules: vec![
            "track-sc0 src table per_ip".into(),
            format!("deny status 429 if sc0_http_req_rate > {LIMIT}"),
        ],
        stick: Some("on src table per_ip".into()),
        servers: servers.to_vec(),
    };
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let peers: Vec<(String, u16)> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, n)| ((*n).to_owned(), sync[j]))
            .collect();
        nodes.push(SluiceNode::new(env, &certs, name, &peers, &spec, sync[i])?);
    }
    for n in &mut nodes {
        n.start()?;
    }
    // Every node up with both its peers' sessions established.
    let end = Instant::now() + Duration::from_secs(30);
    for n in &nodes {
        loop {
            let up = async {
                let mut c = AdminClient::connect(format!("http://127.0.0.1:{}", n.admin)).await?;
                let s = c.status(StatusRequest {}).await?.into_inner();
                anyhow::Ok(s.ready && s.peers.iter().filter(|p| p.up).count() >= 2)
            }
            .await
            .unwrap_or(false);
            if up {
                break;
            }
            if Instant::now() > end {
                bail!("{} not ready with both peers up", n.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(Fleet::Sluice(nodes))
}

fn start_haproxy(env: &Env, servers: &[(String, u16)]) -> anyhow::Result<Fleet> {
    let peers: Vec<u16> = (0..3).map(|_| procs::port()).collect();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let web = procs::port();
        let peers = peers.clone();
        let servers = servers.to_vec();
        let mut n = HaNode::new(env, &format!("n{i}"), web, move |sock| {
            let mut c = format!(
                "global\n    nbthread 1\n    maxconn 4000\n    stats socket {} mode 600 level admin\n\
                 defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
                 peers mypeers\n",
                sock.display()
            );
            for (j, p) in peers.iter().enumerate() {
                c.push_str(&format!("    peer n{} 127.0.0.1:{p}\n", j + 1));
            }
            c.push_str(&format!(
                "frontend fe\n    bind 127.0.0.1:{web}\n\
                 \x20   http-request track-sc0 src table be_app\n\
                 \x20   http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {LIMIT} }}\n\
                 \x20   default_backend be_app\n\
                 backend be_app\n    balance roundrobin\n\
                 \x20   stick-table type ip size 100k expire 60s peers mypeers store http_req_rate(10s),gpc0,server_id\n\
                 \x20   stick on src\n"
            ));
            for (name, port) in &servers {
                c.push_str(&format!("    server {name} 127.0.0.1:{port}\n"));
            }
            c
        })?;
        n.start()?;
        nodes.push(n);
    }
    for n in &nodes {
        n.wait_peers(2, Duration::from_secs(10))?;
    }
    Ok(Fleet::Haproxy(nodes))
}

/// What one fleet measured.
#[derive(Default)]
struct Measured {
    paced_max: f64,
    burst_admitted: f64,
    /// (ms since the burst started, admitted so far).
    burst_curve: Vec<(f64, f64)>,
    spread_max: f64,
    /// Admitted per second.
    spread_buckets: Vec<f64>,
    prop: Vec<f64>,
    /// One poll of node 2's table for a key it holds (the observer's own round trip), ms.
    poll: Vec<f64>,
    agree: f64,
    sticky_total: f64,
    /// Propagation from the packets' stamps; `None` when tcpdump could not capture.
    stamped: Option<Stamped>,
}

async fn measure(env: &Env, fleet: &mut Fleet, net: u8) -> anyhow::Result<Measured> {
    let mut m = Measured::default();
    let webs: Vec<SocketAddr> = (0..3).map(|i| fleet.web(i)).collect();

    // Paced, round-robin.
    let src = Ipv4Addr::new(127, net, 1, 1);
    let t0 = tokio::time::Instant::now();
    let mut admitted = Vec::new();
    let n = (PACED_RATE * PACED_SECS) as usize;
    for i in 0..n {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / PACED_RATE)).await;
        if let Some((200, _)) = get(webs[i % 3], src).await {
            admitted.push(t0.elapsed().as_secs_f64());
        }
    }
    m.paced_max = max_in_window(&admitted, 10.0) as f64;

    // Burst.
    let src = Ipv4Addr::new(127, net, 3, 1);
    let next = Arc::new(Mutex::new(0usize));
    let curve = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..BURST_CONC {
        let (next, curve, webs) = (next.clone(), curve.clone(), webs.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().await;
                    if *n >= BURST {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let ok = matches!(get(webs[i % 3], src).await, Some((200, _)));
                curve
                    .lock()
                    .await
                    .push((t0.elapsed().as_secs_f64() * 1e3, ok));
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let mut c = curve.lock().await.clone();
    c.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut so_far = 0.0;
    for (t, ok) in c {
        if ok {
            so_far += 1.0;
        }
        m.burst_curve.push((t, so_far));
    }
    m.burst_admitted = so_far;

    // Spread: three independent paced clients, one per node.
    let src = Ipv4Addr::new(127, net, 5, 1);
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (k, web) in webs.iter().copied().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            // Phase-shifted so the three clients do not fire together.
            let phase = k as f64 / (3.0 * SPREAD_RATE);
            let n = (SPREAD_RATE * SPREAD_SECS) as usize;
            for i in 0..n {
                let at = phase + i as f64 / SPREAD_RATE;
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(at)).await;
                if let Some((200, _)) = get(web, src).await {
                    admitted.push(t0.elapsed().as_secs_f64());
                }
            }
            admitted
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_by(f64::total_cmp);
    m.spread_max = max_in_window(&all, 10.0) as f64;
    m.spread_buckets = vec![0.0; SPREAD_SECS as usize];
    for t in &all {
        if let Some(b) = m.spread_buckets.get_mut(*t as usize) {
            *b += 1.0;
        }
    }

    // Sticky: propagation of the server chosen by node 1 to node 2's table.
    let fresh = |first: u32| -> Vec<Ipv4Addr> {
        (0..STICKY_KEYS)
            .map(|k| {
                let third = (first + k / 250) as u8;
                Ipv4Addr::new(127, net.wrapping_add(1), third, (1 + k % 250) as u8)
            })
            .collect()
    };
    let mut agree = 0;
    for src in fresh(1) {
        let Some((200, server)) = get(webs[0], src).await else {
            continue;
        };
        let t = Instant::now();
        let mut seen = false;
        while t.elapsed() < Duration::from_secs(3) {
            if fleet.has_server(1, src).await? {
                seen = true;
                break;
            }
            // A short pause between polls: the three nodes share one CPU, and a poll that
            // never stops would take it from the node that is sending. (tokio's timer counts
            // milliseconds, so this blocks the harness's thread instead.)
            std::thread::sleep(POLL_PAUSE);
        }
        if seen {
            m.prop.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let b = get(webs[1], src).await;
        let c = get(webs[2], src).await;
        if matches!((&b, &c), (Some((200, x)), Some((200, y))) if *x == server && *y == server) {
            agree += 1;
        }
    }
    m.agree = f64::from(agree);
    // The observer's share of a propagation figure: polls of a key node 2 already holds,
    // paced like the polls above.
    let held = Ipv4Addr::new(127, net.wrapping_add(1), 1, 1);
    for _ in 0..STICKY_KEYS {
        let t = Instant::now();
        if fleet.has_server(1, held).await? {
            m.poll.push(t.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(POLL_PAUSE);
    }
    // The same propagation without an observer: fresh clients ask node 1 at a steady pace,
    // nobody polls node 2, and the packets between the nodes say when node 2 had it.
    match Capture::start(env, &format!("sticky-{net}")) {
        Ok(capture) => {
            let owners = capture::socket_owners(&fleet.pids());
            let clients = fresh(3);
            let t0 = tokio::time::Instant::now();
            for (i, &src) in clients.iter().enumerate() {
                tokio::time::sleep_until(t0 + STAMP_GAP * i as u32).await;
                get(webs[0], src).await;
            }
            // The last client's exchange, too, before tcpdump stops.
            tokio::time::sleep_until(t0 + STAMP_GAP * clients.len() as u32).await;
            let packets = capture.stop()?;
            if let SocketAddr::V4(web) = webs[0] {
                let owners = owners?;
                m.stamped = Some(capture::propagation(
                    &packets,
                    &owners,
                    web,
                    (0, 1),
                    &clients,
                ));
            }
        }
        Err(e) => note(&format!("no packet stamps for propagation: {e:#}")),
    }
    m.sticky_total = f64::from(STICKY_KEYS);
    Ok(m)
}

pub(crate) async fn run(env: &Env, opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let servers: Vec<(String, u16)> = (1..=3).map(|i| (format!("s{i}"), procs::port())).collect();
    let spec: Vec<(u16, &str)> = servers.iter().map(|(n, p)| (*p, n.as_str())).collect();
    let _nginx = env.nginx(&spec)?;
    let mut results = Vec::new();
    for (proxy, net) in [("haproxy", 20u8), ("sluice", 40u8)] {
        let mut fleet = match proxy {
            "sluice" => start_sluice(env, &servers).await?,
            _ => start_haproxy(env, &servers)?,
        };
        tokio::time::sleep(SETTLE).await;
        note(&format!(
            "fleet {proxy}: 3 nodes up ({})",
            procs::load_line()
        ));
        let m = measure(env, &mut fleet, net)
            .await
            .with_context(|| format!("{proxy} fleet"))?;
        fleet.stop();
        note(&format!(
            "fleet {proxy}: paced max/10 s {}, burst admitted {}, spread max/10 s {}, propagation p50 {:.3} ms p99 {:.3} ms ({} of {STICKY_KEYS} seen), one poll of node 2 p50 {:.3} ms p99 {:.3} ms, sticky agreement {}",
            m.paced_max,
            m.burst_admitted,
            m.spread_max,
            quantile(&m.prop, 0.5),
            quantile(&m.prop, 0.99),
            m.prop.len(),
            quantile(&m.poll, 0.5),
            quantile(&m.poll, 0.99),
            m.agree
        ));
        if let Some(st) = &m.stamped {
            note(&format!(
                "fleet {proxy}: propagation by packet stamps p50 {:.3} ms p99 {:.3} ms max {:.3} ms ({} of {STICKY_KEYS} stamped, {} acknowledged before the answer); answer time p50 {:.3} ms p99 {:.3} ms",
                quantile(&st.ms, 0.5),
                quantile(&st.ms, 0.99),
                quantile(&st.ms, 1.0),
                st.ms.len(),
                st.before_answer(),
                quantile(&st.answer_ms, 0.5),
                quantile(&st.answer_ms, 0.99)
            ));
        }
        results.push((proxy, m));
    }
    let mut paced = Figure::new(
        "fleet",
        "fleet, paced 60 req/s over 3 nodes: most admitted in any 10 s (limit 100)",
        "requests",
    )
    .goal(Goal::AtMost(105.0));
    let mut burst = Figure::new(
        "fleet",
        "fleet, burst of 600, 30 concurrent, over 3 nodes: admitted (limit 100)",
        "requests",
    )
    .goal(Goal::AtMost(120.0));
    let mut spread = Figure::new(
        "fleet",
        "fleet, 3 clients × 300 req/s, one per node: most admitted in any 10 s (limit 100)",
        "requests",
    )
    .goal(Goal::AtMost(110.0));
    let mut p50 = Figure::new(
        "fleet",
        "propagation of a sticky server_id, node 1's answer → node 2's ack of node 1's update (packet stamps), p50",
        "ms",
    )
    .decimals(3);
    let mut p99 = Figure::new("fleet", "propagation (packet stamps), p99", "ms")
        .decimals(3)
        .goal(Goal::RatioAtMost(1.0));
    let mut before = Figure::new(
        "fleet",
        "propagation (packet stamps): node 2 acknowledged before node 1 answered",
        "%",
    )
    .decimals(1);
    let mut answer = Figure::new(
        "fleet",
        "a new client's request to node 1: answer time, request in → answer out (packet stamps), p50",
        "ms",
    )
    .decimals(3);
    let mut seen_p50 = Figure::new(
        "fleet",
        "propagation as an observer polling node 2 sees it (its read included), p50",
        "ms",
    )
    .decimals(3);
    let mut seen_p99 =
        Figure::new("fleet", "propagation as the observer sees it, p99", "ms").decimals(3);
    let mut poll = Figure::new(
        "fleet",
        "propagation observer: one read of node 2's table (admin API / runtime API), p50",
        "ms",
    )
    .decimals(3);
    let mut agree = Figure::new(
        "fleet",
        "sticky: nodes 2 and 3 pick node 1's server (after propagation)",
        "%",
    )
    .decimals(1)
    .goal(Goal::AtLeast(99.9));
    for (proxy, m) in &results {
        paced.push(proxy, m.paced_max);
        burst.push(proxy, m.burst_admitted);
        spread.push(proxy, m.spread_max);
        if let Some(st) = m.stamped.as_ref().filter(|st| !st.ms.is_empty()) {
            p50.push(proxy, quantile(&st.ms, 0.5));
            p99.push(proxy, quantile(&st.ms, 0.99));
            before.push(
                proxy,
                100.0 * st.before_answer() as f64 / st.ms.len() as f64,
            );
        }
        if let Some(st) = m.stamped.as_ref().filter(|st| !st.answer_ms.is_empty()) {
            answer.push(proxy, quantile(&st.answer_ms, 0.5));
        }
        seen_p50.push(proxy, quantile(&m.prop, 0.5));
        seen_p99.push(proxy, quantile(&m.prop, 0.99));
        poll.push(proxy, quantile(&m.poll, 0.5));
        agree.push(proxy, 100.0 * m.agree / m.sticky_total);
    }
    for f in [
        paced, burst, spread, p50, p99, before, answer, seen_p50, seen_p99, poll, agree,
    ] {
        report.add(f);
    }
    if let Some(dir) = &opts.plots {
        std::fs::create_dir_all(dir)?;
        let label = |p: &str| {
            if p == "sluice" {
                "sluice"
            } else {
                "HAProxy peers"
            }
        };
        let spread: Vec<(String, Vec<(f64, f64)>)> = results
            .iter()
            .map(|(p, m)| {
                let pts = m
                    .spread_buckets
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64 + 0.5, *v))
                    .collect();
                (label(p).to_owned(), pts)
            })
            .collect();
        plot::lines(
            &dir.join("bench-fleet-spread.png"),
            "3 clients from one address, one per node, 300 req/s each; limit 100 per 10 s fleet-wide",
            "seconds",
            "admitted per second",
            &spread,
            None,
        )?;
        let burst: Vec<(String, Vec<(f64, f64)>)> = results
            .iter()
            .map(|(p, m)| (label(p).to_owned(), m.burst_curve.clone()))
            .collect();
        plot::lines(
            &dir.join("bench-fleet-burst.png"),
            "burst of 600 requests, 30 concurrent, rotating over 3 nodes; limit 100 fleet-wide",
            "milliseconds since the burst started",
            "admitted so far",
            &burst,
            Some((LIMIT, "limit")),
        )?;
        note(&format!("plots written to {}", dir.display()));
    }
    Ok(())
}
