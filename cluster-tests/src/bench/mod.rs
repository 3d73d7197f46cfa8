//! The benchmark harness behind `cargo run --release --bin bench`.
//!
//! # What it compares
//!
//! sluice and HAProxy with equivalent configs on this machine, each figure measured for both in
//! the same run, alternating, so load from other processes hits both alike:
//!
//! - `http`: keep-alive HTTP through the proxy (`wrk`, `answer.c` as the backend): plain, with a
//!   stick table tracking every request under a limit that never fires, and with the limit
//!   firing (almost every answer a `429`) — [`http`];
//! - `flood`: a new-connection flood refused by a connection-rate rule, with a good client from
//!   three other addresses; CPU per refused connection — [`flood`];
//! - `table`: memory per entry at 1,000,000 entries, replication throughput, and the time a
//!   restarted node takes to hold a peer's 100,000 and 1,000,000 entries, and the latency of
//!   requests to it meanwhile — [`table`];
//! - `fleet`: three nodes under one fleet-wide limit: admitted requests for a paced client, a
//!   concurrent burst and three clients at once, and propagation of a sticky assignment, both
//!   as an observer polling node 2 sees it and from the kernel's stamps on the packets between
//!   the nodes ([`capture`]) — [`fleet`].
//!
//! # How
//!
//! Each proxy runs pinned to CPU 0 with one thread (`[node] threads = 1`, `nbthread 1`); the
//! load generators, backends and this process run on CPU 1. Everything listens on loopback,
//! every process is started by the harness and killed when it ends ([`procs::Proc`]). The
//! tools (`haproxy`, `wrk`, `nginx`, `gcc`, `tcpdump`) are found on `PATH` or installed with
//! `apt-get`; `sluice` and `sluicectl` are built in release mode into this binary's target
//! directory.

mod capture;
mod fleet;
mod flood;
mod http;
mod nodes;
mod plot;
mod probe;
mod procs;
mod report;
mod table;
mod tools;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

pub(crate) use report::{Figure, Goal, Report};
pub(crate) use tools::Env;

/// The phases, in the order they run.
const PHASES: [&str; 4] = ["http", "flood", "table", "fleet"];

const HELP: &str = "\
bench: sluice against HAProxy on this machine, figure by figure

usage: cargo run --release --bin bench -- [OPTIONS] [PHASE...]

phases (default: all, in this order):
  http    keep-alive HTTP req/s, p50, p99: plain, tracking, limit firing (wrk)
  flood   new-connection flood refused by a rule: CPU per refused connection, good client
  table   memory per entry (1M), replication throughput, resync of 100k and 1M entries,
          request latency during a resync
  fleet   3-node fleet: admitted requests under a fleet-wide limit, sticky propagation

options:
  --runs N        alternating runs of each proxy for http and flood (default 5)
  --secs N        seconds of each wrk run (default 5) and of each flood (default 5)
  --plots DIR     where the PNG plots go (default: docs/ of this checkout)
  --no-plots      draw nothing
  --bin-dir DIR   take sluice and sluicectl from DIR instead of building them
  --json FILE     also write every sample as JSON
  -h, --help      this text
";

/// Options from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    /// Alternating runs per proxy (http, flood).
    pub runs: usize,
    /// Length of one measurement (wrk, flood), seconds.
    pub secs: u64,
    /// The phases to run.
    pub phases: Vec<String>,
    /// Where plots go; `None` draws none.
    pub plots: Option<PathBuf>,
    /// Prebuilt binaries.
    pub bin_dir: Option<PathBuf>,
    /// Raw samples as JSON.
    pub json: Option<PathBuf>,
}

impl Opts {
    fn parse() -> anyhow::Result<Option<Opts>> {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let mut o = Opts {
            runs: 5,
            secs: 5,
            phases: Vec::new(),
            plots: Some(docs),
            bin_dir: None,
            json: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match a.as_str() {
                "-h" | "--help" => {
                    print!("{HELP}");
                    return Ok(None);
                }
                "--runs" => o.runs = value("--runs")?.parse().context("--runs")?,
                "--secs" => o.secs = value("--secs")?.parse().context("--secs")?,
                "--plots" => o.plots = Some(PathBuf::from(value("--plots")?)),
                "--no-plots" => o.plots = None,
                "--bin-dir" => o.bin_dir = Some(PathBuf::from(value("--bin-dir")?)),
                "--json" => o.json = Some(PathBuf::from(value("--json")?)),
                p if PHASES.contains(&p) => o.phases.push(p.to_owned()),
                other => bail!("unknown argument `{other}` (see --help)"),
            }
        }
        if o.runs == 0 || o.secs == 0 {
            bail!("--runs and --secs must be at least 1");
        }
        if o.phases.is_empty() {
            o.phases = PHASES.iter().map(|p| (*p).to_owned()).collect();
        } else {
            o.phases
                .sort_by_key(|p| PHASES.iter().position(|q| q == p).unwrap_or(usize::MAX));
            o.phases.dedup();
        }
        Ok(Some(o))
    }
}

/// Runs the phases asked for and prints the table.
pub(crate) fn main() -> anyhow::Result<()> {
    let Some(opts) = Opts::parse()? else {
        return Ok(());
    };
    let started = Instant::now();
    let env = Env::prepare(&opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // The fleet's observer polls node 2 between two of its own requests; on one thread its
    // round trip has no hand-offs between threads sharing the harness's one CPU (HAProxy's
    // observer is a blocking socket on this thread).
    let fleet_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut report = Report::new(&env, &opts);
    for phase in &opts.phases {
        let t = Instant::now();
        report::note(&format!("phase {phase}: start ({})", procs::load_line()));
        let res = match phase.as_str() {
            "http" => http::run(&env, &opts, &mut report),
            "flood" => flood::run(&env, &opts, &mut report),
            "table" => rt.block_on(table::run(&env, &mut report)),
            "fleet" => fleet_rt.block_on(fleet::run(&env, &opts, &mut report)),
            _ => Ok(()),
        };
        if let Err(error) = res {
            report::note(&format!("phase {phase} failed: {error:#}"));
            report.failed(phase, &format!("{error:#}"));
        }
        report::note(&format!(
            "phase {phase}: done in {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    }
    report.print(started.elapsed());
    if let Some(path) = &opts.json {
        report.write_json(path)?;
    }
    Ok(())
}
