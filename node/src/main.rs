//! The `sluice` binary.

use clap::Parser;

/// sluice: a clustered reverse proxy with fleet-wide stick tables.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    Ok(())
}
