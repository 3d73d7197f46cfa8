//! Keep-alive HTTP through the proxy: `wrk -t1 -c64 --latency` against a backend answering
//! `200 "ok"`, in three configs, each proxy in turn:
//!
//! - `plain`: one frontend, one server, keep-alive on both sides (HAProxy `http-reuse always`);
//! - `track`: plus a table `http_req_rate(10s), conn_cur` of 1M IP entries, every request
//!   tracked by source (`track-sc0 src`) under a limit that never fires;
//! - `limit`: the same with a limit of 100, so almost every answer is a `429` (keep-alive kept;
//!   HAProxy's carries the same fields and body as sluice's).
//!
//! Both proxies send the backend the same request: sluice always adds `X-Forwarded-For` and
//! `Forwarded`, so HAProxy gets `option forwardfor` and the same `Forwarded` field (without them
//! the backend reads 65 fewer bytes per request behind HAProxy).
//!
//! The backend is `answer` (`cluster-tests/bench/answer.c`), not nginx: wrk and the backend
//! share the load CPU, and behind nginx that CPU was full behind both proxies, so the ratio
//! measured the load. `answer` does one `recv` and one `send` per request and parses nothing
//! but the end of the request head, which leaves more of the load CPU to wrk.
//!
//! Each run starts the proxy, warms it up for a second, measures, and stops it; the order of
//! the two proxies alternates from run to run. Beside the proxy's CPU per request the run
//! records how busy the load CPU (wrk and the backend) was: near 100 % it, not the proxy, sets
//! the rate, and a cheaper proxy cannot show it in requests per second.

use std::time::Duration;

use anyhow::{Context, bail};

use super::procs::{self, LOAD_CPU, PROXY_CPU, Proc};
use super::report::note;
use super::{Env, Figure, Goal, Opts, Report};

const CONFIGS: [&str; 3] = ["plain", "track", "limit"];

/// What wrk printed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Wrk {
    pub rps: f64,
    pub requests: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non2xx: f64,
    pub errors: f64,
}

/// Parses `wrk --latency` output.
pub(crate) fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let ms = |v: &str| -> f64 {
        let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        if let Some(x) = v.strip_suffix("us") {
            num(x) / 1000.0
        } else if let Some(x) = v.strip_suffix("ms") {
            num(x)
        } else if let Some(x) = v.strip_suffix('s') {
            num(x) * 1000.0
        } else {
            num(v)
        }
    };
    let mut w = Wrk::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v, ..] => w.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0.0),
            ["50%" | "50.000%", v, ..] => w.p50_ms = ms(v),
            ["99%" | "99.000%", v, ..] => w.p99_ms = ms(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => w.non2xx = n.parse().unwrap_or(0.0),
            ["Socket", "errors:", rest @ ..] => {
                w.errors = rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<f64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if w.rps == 0.0 {
        bail!("no Requests/sec in wrk's output:\n{out}");
    }
    Ok(w)
}

/// Runs wrk on the load CPU.
pub(crate) fn wrk(env: &Env, port: u16, secs: u64, conns: u32) -> anyhow::Result<Wrk> {
    let out = std::process::Command::new("taskset")
        .args(["-c", &LOAD_CPU.to_string()])
        .arg(&env.wrk)
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .context("wrk")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// HAProxy's frontend line adding the `Forwarded` field sluice adds to every request it forwards
/// (HAProxy 2.6 has no `option forwarded`); `option forwardfor` adds `X-Forwarded-For`.
pub(crate) const HAPROXY_FORWARDED: &str =
    "    http-request add-header forwarded \"for=%[src];proto=http\"\n";

/// Tracking by source and a `429` above `limit` requests in 10 s, answered with the bytes
/// sluice sends: its `RateLimit-Policy`, `RateLimit`, `Retry-After` (SPEC §4) and `Date` fields
/// and a plain-text body. HAProxy cannot compute the RateLimit fields, so their values are
/// fixed at what sluice sends most of a window.
fn haproxy_deny(limit: u32) -> String {
    format!(
        "    http-request track-sc0 src\n    http-request deny status 429 content-type text/plain \
         string \"too many requests\\n\" hdr ratelimit-policy \"\\\"http_req_rate\\\";q={limit};w=10\" \
         hdr ratelimit \"\\\"http_req_rate\\\";r=0;t=9\" hdr retry-after 9 hdr date \"%[date,http_date]\" \
         if {{ sc_http_req_rate(0) gt {limit} }}\n"
    )
}

fn haproxy_cfg(cfg: &str, port: u16, backend: u16) -> String {
    let (table, mut rules) = match cfg {
        "plain" => ("", String::new()),
        _ => (
            "    stick-table type ip size 1m expire 60s store http_req_rate(10s),conn_cur\n",
            haproxy_deny(if cfg == "track" { 1_000_000 } else { 100 }),
        ),
    };
    rules.push_str(HAPROXY_FORWARDED);
    format!(
        "global\n    nbthread 1\n    maxconn 8000\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    option http-keep-alive\n    option forwardfor\n\
         frontend fe\n    bind 127.0.0.1:{port}\n{table}{rules}    default_backend be\n\
         backend be\n    http-reuse always\n    server s1 127.0.0.1:{backend} maxconn 1000\n"
    )
}

fn sluice_cfg(cfg: &str, port: u16, backend: u16) -> String {
    let (table, rules) = match cfg {
        "plain" => (String::new(), String::new()),
        _ => (
            "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 1048576\nexpire = \"60s\"\n\
             store = [\"http_req_rate(10s)\", \"conn_cur\"]\n\n"
                .to_owned(),
            format!(
                "[frontend.rules]\nrequest = [\"track-sc0 src table per_ip\", \"deny status 429 if sc0_http_req_rate > {}\"]\n",
                if cfg == "track" { 1_000_000 } else { 100 }
            ),
        ),
    };
    format!(
        "[node]\nthreads = 1\n\n{table}[[frontend]]\nname = \"fe\"\nbind = \"127.0.0.1:{port}\"\nbackend = \"be\"\n{rules}\n\
         [[backend]]\nname = \"be\"\nservers = [ {{ name = \"s1\", addr = \"127.0.0.1:{backend}\" }} ]\n"
    )
}

/// Starts `proxy` ("sluice" or "haproxy") with config `cfg` listening on `port`.
pub(crate) fn start(
    env: &Env,
    proxy: &str,
    cfg: &std::path::Path,
    port: u16,
) -> anyhow::Result<Proc> {
    let log = env.path(&format!("{proxy}.log"));
    let c = cfg.display().to_string();
    let p = if proxy == "sluice" {
        Proc::spawn(
            "sluice",
            PROXY_CPU,
            &env.sluice,
            &["--config", &c],
            &[("SLUICE_LOG", "warn")],
            &log,
        )?
    } else {
        Proc::spawn(
            "haproxy",
            PROXY_CPU,
            &env.haproxy,
            &["-db", "-f", &c],
            &[],
            &log,
        )?
    };
    procs::wait_port(port, Duration::from_secs(15))
        .with_context(|| format!("{proxy} did not start; see {}", log.display()))?;
    Ok(p)
}

/// The order of the two proxies in run `run`: alternating which goes first.
pub(crate) fn order(run: usize) -> [&'static str; 2] {
    if run.is_multiple_of(2) {
        ["haproxy", "sluice"]
    } else {
        ["sluice", "haproxy"]
    }
}

pub(crate) fn run(env: &Env, opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let backend = procs::port();
    let port = procs::port();
    // Each run: start, warm-up, measurement, stop, with room to spare.
    let lifetime = opts.runs as u64 * 6 * (opts.secs + 20);
    let _backend = env.answer(backend, "ok", lifetime)?;
    let mut rps: Vec<Figure> = Vec::new();
    let mut p50: Vec<Figure> = Vec::new();
    let mut p99: Vec<Figure> = Vec::new();
    let mut cpu: Vec<Figure> = Vec::new();
    let mut load: Vec<Figure> = Vec::new();
    for cfg in CONFIGS {
        let what = match cfg {
            "plain" => "HTTP plain",
            "track" => "HTTP tracking, limit never fires",
            _ => "HTTP limit firing (≈ all 429)",
        };
        rps.push(
            Figure::new("http", &format!("{what}: requests/s"), "req/s")
                .goal(Goal::RatioAtLeast(1.1)),
        );
        p50.push(Figure::new("http", &format!("{what}: p50"), "ms").decimals(2));
        p99.push(
            Figure::new("http", &format!("{what}: p99"), "ms")
                .decimals(2)
                .goal(Goal::RatioAtMost(1.0)),
        );
        cpu.push(Figure::new("http", &format!("{what}: proxy CPU per request"), "µs").decimals(1));
        load.push(Figure::new(
            "http",
            &format!("{what}: load CPU busy (wrk, backend)"),
            "%",
        ));
        env.write(&format!("{cfg}.cfg"), &haproxy_cfg(cfg, port, backend))?;
        env.write(&format!("{cfg}.toml"), &sluice_cfg(cfg, port, backend))?;
    }
    // Per proxy, req/s of the plain and the tracking config in each run.
    let mut plain_rps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut track_rps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for r in 0..opts.runs {
        for (i, cfg) in CONFIGS.iter().enumerate() {
            for proxy in order(r) {
                let file = if proxy == "sluice" {
                    env.path(&format!("{cfg}.toml"))
                } else {
                    env.path(&format!("{cfg}.cfg"))
                };
                let mut p = start(env, proxy, &file, port)?;
                // Warm-up: connections to the backend are open and pages touched.
                wrk(env, port, 1, 64)?;
                let c0 = p.cpu_secs();
                let l0 = procs::CpuTimes::of(LOAD_CPU);
                let w = wrk(env, port, opts.secs, 64)?;
                let c1 = p.cpu_secs();
                let busy = procs::CpuTimes::of(LOAD_CPU).busy_since(&l0);
                p.stop(Duration::from_secs(5));
                let cpu_us = (c1 - c0) * 1e6 / w.requests.max(1.0);
                note(&format!(
                    "http run {} {cfg:5} {proxy:7}: {:>8.0} req/s p50 {:.2} ms p99 {:.2} ms, {:.1} µs CPU/req, load CPU {busy:.0} %, non-2xx {}, errors {} ({})",
                    r + 1,
                    w.rps,
                    w.p50_ms,
                    w.p99_ms,
                    cpu_us,
                    w.non2xx,
                    w.errors,
                    procs::load_line()
                ));
                if cfg != &"plain" && cfg != &"track" && w.non2xx < 0.9 * w.requests {
                    note("  the limit config answered fewer than 90 % with 429");
                }
                rps[i].push(proxy, w.rps);
                p50[i].push(proxy, w.p50_ms);
                p99[i].push(proxy, w.p99_ms);
                cpu[i].push(proxy, cpu_us);
                load[i].push(proxy, busy);
                let k = usize::from(proxy == "sluice");
                match *cfg {
                    "plain" => plain_rps[k].push(w.rps),
                    "track" => track_rps[k].push(w.rps),
                    _ => {}
                }
            }
        }
    }
    for i in 0..CONFIGS.len() {
        report.add(rps[i].clone());
        report.add(p50[i].clone());
        report.add(p99[i].clone());
        report.add(cpu[i].clone());
        report.add(load[i].clone());
    }
    // Tracking's own cost: each proxy's tracking throughput against its plain throughput, run
    // by run (the two runs are close in time, so their ratio is less noisy than the medians).
    let mut cost = Figure::new("http", "HTTP tracking / plain req/s (tracking cost)", "×")
        .decimals(3)
        .goal(Goal::AtLeast(0.95));
    for (k, proxy) in [(0, "haproxy"), (1, "sluice")] {
        for (t, p) in track_rps[k].iter().zip(&plain_rps[k]) {
            cost.push(proxy, t / p);
        }
    }
    report.add(cost);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deny rule as `haproxy -c` (2.6.12) accepted it and as it answered: the same 233
    /// bytes as sluice's `429` (checked by hand with `curl -si | wc -c` against both).
    #[test]
    fn haproxy_deny_rule_renders_as_checked() {
        let want = "    http-request track-sc0 src\n    http-request deny status 429 content-type text/plain string \"too many requests\\n\" hdr ratelimit-policy \"\\\"http_req_rate\\\";q=100;w=10\" hdr ratelimit \"\\\"http_req_rate\\\";r=0;t=9\" hdr retry-after 9 hdr date \"%[date,http_date]\" if { sc_http_req_rate(0) gt 100 }\n";
        assert_eq!(haproxy_deny(100), want);
        let cfg = haproxy_cfg("limit", 1, 2);
        assert!(cfg.contains(want), "{cfg}");
        assert!(cfg.contains("    option forwardfor\n"), "{cfg}");
        assert!(cfg.contains(HAPROXY_FORWARDED), "{cfg}");
    }
}
