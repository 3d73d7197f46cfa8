//! The published comparison of sluice with HAProxy: one command runs every benchmark of
//! `docs/benchmarks.md` on this machine and prints each figure beside HAProxy's, with the ratio.
//!
//! ```sh
//! cargo run --release --bin bench                  # everything, 5 alternating runs
//! cargo run --release --bin bench -- http flood    # a subset
//! cargo run --release --bin bench -- --runs 5 http # more alternating runs
//! cargo run --release --bin bench -- --help
//! ```
//!
//! The harness lives in `cluster-tests/src/bench/`; `--help` lists the phases and options.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    bench::main()
}
