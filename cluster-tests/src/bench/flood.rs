//! A new-connection flood against a connection-rate rule, and a good client beside it.
//!
//! The flooder (`cluster-tests/bench/flood.c`) keeps 256 connections opening from 127.0.0.1;
//! the rule tracks the source at the connection stage and refuses it past 100 connections per
//! second (HAProxy: `tcp-request connection track-sc0 src` + `reject if { src_conn_rate gt 100 }`;
//! sluice: `track-sc0 src table per_ip` + `reject if sc0_conn_rate > 100`). A paced client
//! opens 50 connections per second from each of 127.0.0.2, .3 and .4, each with a full `GET`,
//! and must be served. Three addresses because its p99 over all runs is a figure of its own:
//! from one, five runs pooled about 1,100 requests, and the p99 was their eleventh-slowest,
//! which moved with the VM by more than the proxies differ; one address cannot go faster, as
//! the rule refuses it past 100 a second.
//!
//! On two cores the flooder, sharing its core with the backend and the good client, limits the
//! rate, not the proxy: both proxies refuse about as many connections per second, and what
//! tells them apart is the CPU each spends per refused connection.
//!
//! The good client and the backend are the measuring side, so they run real-time
//! (`SCHED_FIFO`, [`procs::realtime`]) where the harness may set it: at normal priority each
//! waited behind the flooder's turns on the load core, about 3 ms at the tail for either proxy,
//! and the good client's p99 measured the load core's scheduler rather than the proxy. Both use
//! little CPU (150 requests per second), so the flooder's rate barely moves.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::http::{HAPROXY_FORWARDED, order, start};
use super::procs::{self, LOAD_CPU, Proc};
use super::report::{note, quantile};
use super::{Env, Figure, Goal, Opts, Report};

const INFLIGHT: u32 = 256;
/// The good client's connections per second from each of its addresses.
const GOOD_RATE: u32 = 50;
/// The good client's addresses: 127.0.0.2 and the ones after it.
const GOOD_SOURCES: u32 = 3;
/// How many of the good client's slowest requests the run notes, with when they were sent.
const SLOWEST: usize = 12;

fn haproxy_cfg(port: u16, backend: u16) -> String {
    format!(
        "global\n    nbthread 1\n    maxconn 8000\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n    option forwardfor\n\
         frontend fe\n    bind 127.0.0.1:{port}\n\
         \x20   stick-table type ip size 1m expire 60s store conn_rate(1s)\n\
         \x20   tcp-request connection track-sc0 src\n\
         \x20   tcp-request connection reject if {{ src_conn_rate gt 100 }}\n\
         {HAPROXY_FORWARDED}\
         \x20   default_backend be\n\
         backend be\n    server s1 127.0.0.1:{backend}\n"
    )
}

fn sluice_cfg(port: u16, backend: u16) -> String {
    format!(
        "[node]\nthreads = 1\n\n\
         [[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 1048576\nexpire = \"60s\"\nstore = [\"conn_rate(1s)\"]\n\n\
         [[frontend]]\nname = \"fe\"\nbind = \"127.0.0.1:{port}\"\nbackend = \"be\"\n\
         [frontend.rules]\nconnection = [\"track-sc0 src table per_ip\", \"reject if sc0_conn_rate > 100\"]\n\n\
         [[backend]]\nname = \"be\"\nservers = [ {{ name = \"s1\", addr = \"127.0.0.1:{backend}\" }} ]\n"
    )
}

/// `key=value` pairs of one output line of the flooder.
fn kv(out: &str) -> HashMap<String, f64> {
    out.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// One of the paced client's list lines, `key=a,b,…` (`latencies_ms`, `sent_at_s`).
fn list(out: &str, key: &str) -> Vec<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

pub(crate) fn run(env: &Env, opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let backend = procs::port();
    let port = procs::port();
    let nginx = env.nginx(&[(backend, "ok")])?;
    let realtime = match procs::realtime(nginx.pid()) {
        Ok(()) => true,
        Err(e) => {
            note(&format!(
                "flood: backend and good client at normal priority, their tail includes the flooder's turns: {e:#}"
            ));
            false
        }
    };
    let ha = env.write("flood.cfg", &haproxy_cfg(port, backend))?;
    let sl = env.write("flood.toml", &sluice_cfg(port, backend))?;
    let secs = opts.secs.max(3);
    let mut rejected = Figure::new("flood", "flood: connections refused per second", "conn/s");
    let mut cpu_per = Figure::new("flood", "flood: proxy CPU per refused connection", "µs")
        .decimals(2)
        .goal(Goal::RatioAtMost(1.0));
    let mut cpu_pct = Figure::new("flood", "flood: proxy CPU", "% of a core");
    let mut good = Figure::new("flood", "flood: good client served", "%")
        .decimals(1)
        .goal(Goal::AtLeast(100.0));
    let mut good_p99 = Figure::new(
        "flood",
        "flood: good client p99 (connect + GET), each run's own",
        "ms",
    )
    .decimals(2);
    // Each run's p99 is about its third-slowest request, so one preemption decides it; the
    // goal is on the p99 of every run's requests together.
    let mut good_pooled = Figure::new(
        "flood",
        "flood: good client p99 (connect + GET), all runs' requests pooled",
        "ms",
    )
    .decimals(2)
    .goal(Goal::RatioAtMost(1.0));
    // Per proxy, every good request: (latency ms, run, seconds into the client's run).
    let mut pooled: HashMap<&str, Vec<(f64, usize, f64)>> = HashMap::new();
    let port_s = port.to_string();
    let (secs_s, inflight) = (secs.to_string(), INFLIGHT.to_string());
    let flood_args = ["-p", &port_s, "-d", &secs_s, "-c", &inflight];
    // The good client runs inside the flood's window: it starts 0.3 s after the flooder.
    let good_secs = format!("{:.1}", secs as f64 - 0.6);
    let rate = (GOOD_RATE * GOOD_SOURCES).to_string();
    let sources = GOOD_SOURCES.to_string();
    let good_args = [
        "-p",
        &port_s,
        "-d",
        &good_secs,
        "-r",
        &rate,
        "-b",
        "127.0.0.2",
        "-n",
        &sources,
    ];
    let rt = procs::RT_PRIORITY.to_string();
    let flood_bin = env.flood.display().to_string();
    // chrt execs the client once it is real-time: its first request is measured too.
    let (good_program, good_args): (&Path, Vec<&str>) = if realtime {
        let chrt = ["-f", rt.as_str(), flood_bin.as_str()];
        (
            Path::new("chrt"),
            chrt.into_iter().chain(good_args).collect(),
        )
    } else {
        (&env.flood, good_args.to_vec())
    };
    for r in 0..opts.runs {
        for proxy in order(r) {
            let cfg = if proxy == "sluice" { &sl } else { &ha };
            let mut p = start(env, proxy, cfg, port)?;
            let flood_log = env.path("flood.out");
            let good_log = env.path("good.out");
            let _ = std::fs::remove_file(&flood_log);
            let _ = std::fs::remove_file(&good_log);
            let c0 = p.cpu_secs();
            let t0 = std::time::Instant::now();
            let mut flooder = Proc::spawn(
                "flooder",
                LOAD_CPU,
                &env.flood,
                &flood_args,
                &[],
                &flood_log,
            )?;
            std::thread::sleep(Duration::from_millis(300));
            let mut client = Proc::spawn(
                "good client",
                LOAD_CPU,
                good_program,
                &good_args,
                &[],
                &good_log,
            )?;
            let within = Duration::from_secs(secs + 10);
            flooder.wait(within)?;
            let el = t0.elapsed().as_secs_f64();
            let c1 = p.cpu_secs();
            client.wait(within)?;
            p.stop(Duration::from_secs(5));
            let f = kv(&std::fs::read_to_string(&flood_log).context("flooder output")?);
            let good_out = std::fs::read_to_string(&good_log).context("good client output")?;
            let g = kv(&good_out);
            let refused = f.get("rejected").copied().unwrap_or(0.0);
            let per_s = f.get("rejected_per_s").copied().unwrap_or(0.0);
            let cpu = c1 - c0;
            let us = cpu * 1e6 / refused.max(1.0);
            note(&format!(
                "flood run {} {proxy:7}: refused {per_s:.0}/s, served {:.0}/s, proxy CPU {:.0} % = {us:.2} µs per refused; good client {:.1} % p50 {:.2} ms p99 {:.2} ms ({})",
                r + 1,
                f.get("served_per_s").copied().unwrap_or(0.0),
                100.0 * cpu / el,
                g.get("success_pct").copied().unwrap_or(0.0),
                g.get("p50_ms").copied().unwrap_or(-1.0),
                g.get("p99_ms").copied().unwrap_or(-1.0),
                procs::load_line()
            ));
            rejected.push(proxy, per_s);
            cpu_per.push(proxy, us);
            cpu_pct.push(proxy, 100.0 * cpu / el);
            good.push(proxy, g.get("success_pct").copied().unwrap_or(0.0));
            good_p99.push(proxy, g.get("p99_ms").copied().unwrap_or(f64::NAN));
            let sent_at = list(&good_out, "sent_at_s");
            pooled.entry(proxy).or_default().extend(
                list(&good_out, "latencies_ms")
                    .into_iter()
                    .enumerate()
                    .map(|(i, ms)| (ms, r + 1, sent_at.get(i).copied().unwrap_or(f64::NAN))),
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for (proxy, l) in &mut pooled {
        let ms: Vec<f64> = l.iter().map(|x| x.0).collect();
        good_pooled.push(proxy, quantile(&ms, 0.99));
        // Where the tail sits: a tail at one moment of every run is a cause, not noise.
        l.sort_by(|a, b| b.0.total_cmp(&a.0));
        let slowest: Vec<String> = l
            .iter()
            .take(SLOWEST)
            .map(|(ms, run, at)| format!("{ms:.2} (run {run}, {at:.2} s)"))
            .collect();
        note(&format!(
            "flood good client {proxy}: slowest {SLOWEST} of {} pooled, ms (run, sent at): {}",
            l.len(),
            slowest.join(", ")
        ));
    }
    for f in [rejected, cpu_per, cpu_pct, good, good_p99, good_pooled] {
        report.add(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paced_clients_latencies_come_from_their_own_line() {
        let out = "sent=3 ok=2 p50_ms=1.500 p99_ms=2.000\nlatencies_ms=2.000,1.500\nsent_at_s=0.000,0.040\n";
        assert_eq!(list(out, "latencies_ms"), vec![2.0, 1.5]);
        assert_eq!(list(out, "sent_at_s"), vec![0.0, 0.04]);
        assert_eq!(kv(out).get("p99_ms"), Some(&2.0));
        assert!(list("sent=0 ok=0\nlatencies_ms=\nsent_at_s=\n", "latencies_ms").is_empty());
    }
}
