//! Tables at scale on two replicating nodes: memory per entry, replication throughput, and the
//! resync of a restarted node, for 100,000 and then 1,000,000 entries.
//!
//! Both proxies hold a table `type ip size 1m store http_req_rate(10s),conn_cur,gpc0` (HAProxy
//! `../shared/bench/table-memory.sh`'s table, here in a two-node `peers` section).
//!
//! - HAProxy: 100,000 keys `set table … data.gpc0 1` on node 1 through one runtime-API session
//!   (its only bulk path); node 2 receives them by its peers link; node 2 restarts
//!   [`RESTARTS`] times, each timed from its start until its table holds them all. Then 900,000
//!   more keys, and as many timed restarts. Memory per entry: node 1's resident memory growth
//!   over the 1,000,000.
//! - Both: node 2 restarts once more with a probe ([`super::probe`]) asking it for a local
//!   answer every millisecond: the latency of requests to a node busy taking in a
//!   1,000,000-entry resync, against the same node idle afterwards.
//! - sluice: the same, except that the entries come from the feeder, an in-process replication
//!   peer (an admin call per key would measure the admin API, not the table): it records a
//!   request, a connection and a `gpc0` increment per key. Replication throughput is the rate at
//!   which node 1 and node 2 come to hold the 900,000 new keys the feeder writes as fast as one
//!   thread can. The feeder stops before each restart, so the restarted node resyncs from node 1
//!   alone, as HAProxy's does.

use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_sync::{KeyType, TableSchema};

use super::nodes::{Feeder, HaNode, SluiceNode, SluiceSpec};
use super::probe::{Latencies, Probe};
use super::procs::{self, LOAD_CPU, PROXY_CPU};
use super::report::{self, note};
use super::{Env, Figure, Goal, Report};

const SMALL: u32 = 100_000;
const BIG: u32 = 1_000_000;
const SIZE: usize = 1_048_576;
const STORE: [&str; 3] = ["http_req_rate(10s)", "conn_cur", "gpc0"];
const WAIT: Duration = Duration::from_secs(120);
/// Restarts timed for each resync figure: one restart is one sample of a VM that moves a
/// 100,000-entry resync by ±30 % from one second to the next, too few to put a ratio on.
const RESTARTS: usize = 5;

pub(crate) async fn run(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let mut mem = Figure::new(
        "table",
        "memory per entry, 1,000,000 IPv4 entries (http_req_rate, conn_cur, gpc0)",
        "bytes",
    )
    .decimals(1)
    .goal(Goal::AtMost(128.0));
    let mut resync_small = Figure::new(
        "table",
        "resync: restarted node holds its peer's 100,000 entries",
        "ms",
    )
    .goal(Goal::RatioAtMost(1.0));
    let mut resync_big = Figure::new(
        "table",
        "resync: restarted node holds its peer's 1,000,000 entries",
        "ms",
    )
    .goal(Goal::AtMost(1500.0));
    let mut throughput = Figure::new(
        "table",
        "replication throughput, 900,000 new entries to both nodes",
        "entries/s",
    )
    .goal(Goal::AtLeast(1_000_000.0));
    let mut fill_rate = Figure::new(
        "table",
        "filling: entries written per second (sluice: feeder peer; HAProxy: runtime API)",
        "entries/s",
    );
    let mut during = Latency::new();

    // sluice: node-1 and node-2 replicate with each other and with the feeder.
    {
        let certs = env.certs("certs-table", &["node-1", "node-2", "feeder", "feeder-2"])?;
        let (s1, s2, sf, sf2) = (procs::port(), procs::port(), procs::port(), procs::port());
        let spec = SluiceSpec {
            tables: format!(
                "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = {SIZE}\nexpire = \"30m\"\nstore = [{}]\n",
                STORE.map(|s| format!("\"{s}\"")).join(", ")
            ),
            // The probe's local answer.
            request_rules: vec!["deny status 403".into()],
            stick: None,
            servers: vec![("s1".into(), procs::port())],
        };
        let mut n1 = SluiceNode::new(
            env,
            &certs,
            "node-1",
            &[
                ("node-2".into(), s2),
                ("feeder".into(), sf),
                ("feeder-2".into(), sf2),
            ],
            &spec,
            s1,
        )?;
        let mut n2 = SluiceNode::new(env, &certs, "node-2", &[("node-1".into(), s1)], &spec, s2)?;
        // The table's index is allocated when the node starts, so the memory baseline is the
        // same node with a table of 1,024 entries (everything else alike), not node-1 before
        // the fill.
        let rss_base = {
            let small = SluiceSpec {
                tables: spec
                    .tables
                    .replace(&format!("size = {SIZE}"), "size = 1024"),
                ..spec.clone()
            };
            let mut base =
                SluiceNode::new(env, &certs, "node-1", &[("node-2".into(), s2)], &small, s1)?;
            base.start()?;
            let t = Instant::now();
            base.wait_entries("per_ip", 0, t, Duration::from_secs(20))
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rss = base.proc().map_or(0, |p| p.rss());
            base.stop();
            rss
        };
        n1.start()?;
        n2.start()?;
        let t = Instant::now();
        n1.wait_entries("per_ip", 0, t, Duration::from_secs(20))
            .await?;
        n2.wait_entries("per_ip", 0, t, Duration::from_secs(20))
            .await?;
        let schema = || {
            TableSchema::new(
                "per_ip",
                KeyType::Ip,
                SIZE,
                Duration::from_secs(1800),
                TableSchema::parse_store(&STORE).expect("a valid store"),
                true,
            )
            .map_err(|e| anyhow::anyhow!("schema: {e}"))
        };
        let peers = vec![("node-1".to_owned(), format!("127.0.0.1:{s1}"))];
        let feeder = Feeder::start(env, &certs, "feeder", sf, peers.clone(), schema()?).await?;
        feeder.wait_peers(Duration::from_secs(20)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss0 = n1.proc().map_or(0, |p| p.rss());
        note(&format!(
            "table sluice: RSS with a 1,024-entry table {:.1} MiB, node-1 with the empty 1M table {:.1} MiB",
            rss_base as f64 / 1048576.0,
            rss0 as f64 / 1048576.0
        ));

        let t = Instant::now();
        feeder.fill("per_ip", 0..SMALL).await?;
        let wrote = t.elapsed();
        n1.wait_entries("per_ip", SMALL.into(), t, WAIT).await?;
        n2.wait_entries("per_ip", SMALL.into(), t, WAIT).await?;
        note(&format!(
            "table sluice: feeder wrote {SMALL} entries in {:.0} ms, both nodes held them after {:.0} ms",
            wrote.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3
        ));
        feeder.stop().await;
        for _ in 0..RESTARTS {
            let r = restart_sluice(&mut n2, &n1, u64::from(SMALL), false).await?;
            r.note("sluice", SMALL);
            resync_small.push("sluice", r.ms);
        }

        // A second feeder (a new origin) writes the next 900,000 keys.
        let feeder = Feeder::start(env, &certs, "feeder-2", sf2, peers, schema()?).await?;
        feeder.wait_peers(Duration::from_secs(20)).await?;
        // Who sets the rate: the feeder's core (CPU 1, the harness's) or the nodes' (CPU 0).
        let node_cpu = |n: &SluiceNode| n.proc().map_or(0.0, |p| p.cpu_secs());
        let cores = || {
            [
                procs::CpuTimes::of(PROXY_CPU),
                procs::CpuTimes::of(LOAD_CPU),
            ]
        };
        let (cpus0, c1, c2) = (cores(), node_cpu(&n1), node_cpu(&n2));
        let t = Instant::now();
        feeder.fill("per_ip", SMALL..BIG).await?;
        let wrote = t.elapsed();
        let d1 = n1.wait_entries("per_ip", BIG.into(), t, WAIT).await?;
        let d2 = n2.wait_entries("per_ip", BIG.into(), t, WAIT).await?;
        let cpus1 = cores();
        let new = f64::from(BIG - SMALL);
        note(&format!(
            "table sluice: feeder wrote {} entries in {:.0} ms; node-1 held them after {:.0} ms, node-2 after {:.0} ms; \
             CPU meanwhile: node-1 {:.0} ms, node-2 {:.0} ms, CPU {PROXY_CPU} (nodes) {:.0} % busy, CPU {LOAD_CPU} (feeder) {:.0} %",
            BIG - SMALL,
            wrote.as_secs_f64() * 1e3,
            d1.as_secs_f64() * 1e3,
            d2.as_secs_f64() * 1e3,
            (node_cpu(&n1) - c1) * 1e3,
            (node_cpu(&n2) - c2) * 1e3,
            cpus1[0].busy_since(&cpus0[0]),
            cpus1[1].busy_since(&cpus0[1]),
        ));
        // Each key once per node: a key sent twice means the feed handed it out mid-write.
        for p in feeder
            .peers()
            .iter()
            .filter(|p| p.name.starts_with("node-"))
        {
            note(&format!(
                "table sluice: feeder sent {} {} contributions in {} messages ({:.1} MiB)",
                p.name,
                p.updates_sent,
                p.batches_sent,
                p.bytes_sent as f64 / 1048576.0
            ));
        }
        throughput.push("sluice", new / d1.max(d2).as_secs_f64());
        fill_rate.push("sluice", new / wrote.as_secs_f64());
        feeder.stop().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss1 = n1.proc().map_or(0, |p| p.rss());
        let per = (rss1.saturating_sub(rss_base)) as f64 / f64::from(BIG);
        note(&format!(
            "table sluice: node-1 RSS {:.1} MiB with 1M entries, {per:.1} bytes per entry over the baseline ({:.1} bytes over the empty table)",
            rss1 as f64 / 1048576.0,
            (rss1.saturating_sub(rss0)) as f64 / f64::from(BIG)
        ));
        mem.push("sluice", per);
        for _ in 0..RESTARTS {
            let r = restart_sluice(&mut n2, &n1, u64::from(BIG), false).await?;
            r.note("sluice", BIG);
            resync_big.push("sluice", r.ms);
        }
        let web = n2.web();
        let (r, idle) = probed(
            n1.proc(),
            web,
            restart_sluice(&mut n2, &n1, u64::from(BIG), true),
        )
        .await?;
        during.push("sluice", &r, &idle);
        n1.stop();
        n2.stop();
    }

    // HAProxy: the same two nodes with a peers section.
    {
        let (p1, p2) = (procs::port(), procs::port());
        let cfg = |web: u16| {
            move |sock: &std::path::Path| {
                format!(
                    "global\n    nbthread 1\n    maxconn 4000\n    stats socket {} mode 600 level admin\n\
                     defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
                     peers mypeers\n    peer n1 127.0.0.1:{p1}\n    peer n2 127.0.0.1:{p2}\n\
                     frontend fe\n    bind 127.0.0.1:{web}\n\
                     \x20   stick-table type ip size 1m expire 30m peers mypeers store {}\n\
                     \x20   http-request deny deny_status 403\n",
                    sock.display(),
                    STORE.join(",")
                )
            }
        };
        let w1 = procs::port();
        let mut n1 = HaNode::new(env, "n1", w1, cfg(w1))?;
        let w2 = procs::port();
        let mut n2 = HaNode::new(env, "n2", w2, cfg(w2))?;
        n1.start()?;
        n2.start()?;
        n1.wait_peers(1, Duration::from_secs(10))?;
        n2.wait_peers(1, Duration::from_secs(10))?;
        let rss0 = n1.proc().map_or(0, |p| p.rss());
        let t = Instant::now();
        n1.fill("fe", 0..SMALL)?;
        let wrote = t.elapsed();
        let d2 = n2.wait_used("fe", SMALL.into(), t, WAIT)?;
        note(&format!(
            "table haproxy: runtime API wrote {SMALL} entries in {:.0} ms; n2 held them after {:.0} ms",
            wrote.as_secs_f64() * 1e3,
            d2.as_secs_f64() * 1e3
        ));
        for _ in 0..RESTARTS {
            let r = restart_haproxy(&mut n2, &n1, u64::from(SMALL), false)?;
            r.note("haproxy", SMALL);
            resync_small.push("haproxy", r.ms);
        }
        let t = Instant::now();
        n1.fill("fe", SMALL..BIG)?;
        let wrote = t.elapsed();
        let d2 = n2.wait_used("fe", BIG.into(), t, WAIT)?;
        note(&format!(
            "table haproxy: runtime API wrote {} entries in {:.0} ms; n2 held them after {:.0} ms",
            BIG - SMALL,
            wrote.as_secs_f64() * 1e3,
            d2.as_secs_f64() * 1e3
        ));
        fill_rate.push("haproxy", f64::from(BIG - SMALL) / wrote.as_secs_f64());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss1 = n1.proc().map_or(0, |p| p.rss());
        let used = n1.used("fe").context("n1 table")?;
        let per = (rss1.saturating_sub(rss0)) as f64 / used.max(1) as f64;
        note(&format!(
            "table haproxy: n1 RSS {:.1} → {:.1} MiB for {used} entries = {per:.1} bytes per entry",
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0
        ));
        mem.push("haproxy", per);
        for _ in 0..RESTARTS {
            let r = restart_haproxy(&mut n2, &n1, u64::from(BIG), false)?;
            r.note("haproxy", BIG);
            resync_big.push("haproxy", r.ms);
        }
        let web = n2.web();
        let (r, idle) = probed(n1.proc(), web, async {
            restart_haproxy(&mut n2, &n1, u64::from(BIG), true)
        })
        .await?;
        during.push("haproxy", &r, &idle);
    }
    let [p50, p99, max] = during.figures;
    for f in [
        mem,
        throughput,
        fill_rate,
        resync_small,
        resync_big,
        p50,
        p99,
        max,
    ] {
        report.add(f);
    }
    Ok(())
}

/// A restart: how long until the node held every entry, the CPU both nodes spent meanwhile
/// (they share one core, so CPU, not waiting, is what the time is made of), and what a probe
/// of the restarted node saw meanwhile if there was one.
struct Resync {
    ms: f64,
    cpu_restarted_ms: f64,
    cpu_peer_ms: f64,
    probed: Option<Latencies>,
}

impl Resync {
    fn note(&self, proxy: &str, n: u32) {
        note(&format!(
            "table {proxy}: node 2 restarted, held {n} after {:.0} ms; CPU meanwhile: node 2 {:.0} ms, node 1 {:.0} ms",
            self.ms, self.cpu_restarted_ms, self.cpu_peer_ms
        ));
    }
}

/// Stops `node` and starts it again, until it holds `n` entries; with `probe`, a probe asks it
/// for an answer every millisecond meanwhile.
async fn restart_sluice(
    node: &mut SluiceNode,
    peer: &SluiceNode,
    n: u64,
    probe: bool,
) -> anyhow::Result<Resync> {
    node.stop();
    let probe = probe.then(|| Probe::start(node.web()));
    let peer_cpu = peer.proc().map_or(0.0, |p| p.cpu_secs());
    let t = Instant::now();
    node.start()?;
    let d = node.wait_entries("per_ip", n, t, WAIT).await?;
    Ok(Resync {
        ms: d.as_secs_f64() * 1e3,
        cpu_restarted_ms: node.proc().map_or(0.0, |p| p.cpu_secs()) * 1e3,
        cpu_peer_ms: (peer.proc().map_or(0.0, |p| p.cpu_secs()) - peer_cpu) * 1e3,
        probed: probe.map(Probe::finish),
    })
}

/// Likewise for HAProxy.
fn restart_haproxy(
    node: &mut HaNode,
    peer: &HaNode,
    n: u64,
    probe: bool,
) -> anyhow::Result<Resync> {
    node.stop();
    let probe = probe.then(|| Probe::start(node.web()));
    let peer_cpu = peer.proc().map_or(0.0, |p| p.cpu_secs());
    let t = Instant::now();
    node.start()?;
    let d = node.wait_used("fe", n, t, WAIT)?;
    Ok(Resync {
        ms: d.as_secs_f64() * 1e3,
        cpu_restarted_ms: node.proc().map_or(0.0, |p| p.cpu_secs()) * 1e3,
        cpu_peer_ms: (peer.proc().map_or(0.0, |p| p.cpu_secs()) - peer_cpu) * 1e3,
        probed: probe.map(Probe::finish),
    })
}

/// Runs `restart` (a restart with a probe) with `peer`, the node that sends the resync, moved to
/// the load CPU meanwhile: with both nodes on one core, the restarted node waits for its peer's
/// time slices, and the probe would measure the kernel's scheduler rather than the node. Then
/// probes the restarted node, at `web`, idle for [`IDLE`].
async fn probed(
    peer: Option<&procs::Proc>,
    web: std::net::SocketAddr,
    restart: impl Future<Output = anyhow::Result<Resync>>,
) -> anyhow::Result<(Resync, Latencies)> {
    let pid = peer.context("peer not running")?.pid();
    procs::pin(pid, LOAD_CPU)?;
    let r = restart.await;
    procs::pin(pid, PROXY_CPU)?;
    let r = r?;
    let idle = Probe::start(web);
    tokio::time::sleep(IDLE).await;
    Ok((r, idle.finish()))
}

/// How long the probe of the idle node runs after a resync: the measurement's length.
const IDLE: Duration = Duration::from_millis(500);

/// Request latency on a node while it takes in a resync: p50, p99 and the slowest.
struct Latency {
    figures: [Figure; 3],
}

impl Latency {
    fn new() -> Latency {
        let name = |what: &str| {
            format!(
                "resync of 1,000,000: a request to the restarted node meanwhile (one per ms), {what}"
            )
        };
        Latency {
            figures: [
                Figure::new("table", &name("p50"), "ms").decimals(3),
                Figure::new("table", &name("p99"), "ms")
                    .decimals(3)
                    .goal(Goal::RatioAtMost(1.0)),
                Figure::new("table", &name("slowest"), "ms").decimals(3),
            ],
        }
    }

    /// Records what the probe saw during `r`'s resync, and notes it beside the idle node's.
    fn push(&mut self, proxy: &str, r: &Resync, idle: &Latencies) {
        let during = r.probed.as_ref().filter(|l| !l.ms.is_empty());
        let Some(during) = during else {
            note(&format!(
                "table {proxy}: the probe got no answer during the resync"
            ));
            return;
        };
        let q = |l: &Latencies, p: f64| report::quantile(&l.ms, p);
        let [p50, p99, max] = &mut self.figures;
        p50.push(proxy, q(during, 0.5));
        p99.push(proxy, q(during, 0.99));
        max.push(proxy, q(during, 1.0));
        note(&format!(
            "table {proxy}: node 2 restarted, held 1000000 after {:.0} ms; probe meanwhile: {} answers ({} failed), \
             p50 {:.3} p99 {:.3} max {:.3} ms; idle after: {} answers ({} failed), p50 {:.3} p99 {:.3} max {:.3} ms",
            r.ms,
            during.ms.len(),
            during.failed,
            q(during, 0.5),
            q(during, 0.99),
            q(during, 1.0),
            idle.ms.len(),
            idle.failed,
            q(idle, 0.5),
            q(idle, 0.99),
            q(idle, 1.0),
        ));
    }
}
