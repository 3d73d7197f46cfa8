//! `sluicectl`: the sluice admin client. It speaks only `sluice.admin.v1` to a node and
//! generates the fleet's certificates.

use clap::Parser;

/// sluicectl: operate a sluice fleet.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    Ok(())
}
