#!/bin/sh
# The published comparison of sluice with HAProxy (docs/benchmarks.md), from a fresh clone:
# one cargo build of the harness and both binaries, so they share one feature resolution and
# the two cores stay busy (a separate build of sluice after the harness's took a minute more),
# then the harness on them. Arguments go to the harness: `run.sh --help` lists them.
set -eu
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin bench --bin sluice --bin sluicectl
exec target/release/bench --bin-dir target/release "$@"
