//! `sluicectl`: the sluice admin client. It speaks only `sluice.admin.v1` to a node and
//! generates the fleet's certificates.
//!
//! This file only parses arguments, reads the clock once, dispatches and reports errors;
//! the command line is in [`args`], certificate issuing in [`certs`], formatting in [`output`].

mod args;
mod certs;
mod node_name;
mod output;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};

use crate::args::{CertsCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluicectl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = &mut io::stdout().lock();
    match &cli.command {
        Command::Certs(certs_command) => {
            // The one wall-clock read of the certificate commands (STYLE §14).
            let now = SystemTime::now();
            let report = match certs_command {
                CertsCommand::Init {
                    out,
                    nodes,
                    admin_client,
                    issue,
                } => certs::init(
                    &certs::InitOptions {
                        out,
                        nodes,
                        admin_client: *admin_client,
                        force: issue.force,
                        days: issue.days,
                    },
                    now,
                )?,
                CertsCommand::Add {
                    ca_dir,
                    node,
                    issue,
                } => certs::add(
                    &certs::AddOptions {
                        ca_dir,
                        node,
                        force: issue.force,
                        days: issue.days,
                    },
                    now,
                )?,
            };
            print_report(stdout, &report, cli.json).context("cannot write to stdout")
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                clap_complete::Shell::from(*shell),
                &mut Cli::command(),
                "sluicectl",
                stdout,
            );
            Ok(())
        }
        // The admin API (`sluice.admin.v1`) is not in this build yet; say so rather than
        // pretend. The arguments have been fully parsed and validated by now.
        Command::Status | Command::Table(_) | Command::Peer(_) => anyhow::bail!(
            "`{}` requires the admin API, which this build does not have yet (node {})",
            cli.command.name(),
            cli.node
        ),
    }
}

fn print_report(out: &mut impl Write, report: &certs::Report, json: bool) -> io::Result<()> {
    if json {
        return output::write_json(out, report);
    }
    writeln!(
        out,
        "wrote {} files to {}",
        report.files.len(),
        report.dir.display()
    )?;
    let rows: Vec<[String; 5]> = report
        .files
        .iter()
        .map(|f| {
            [
                format!("  {}", f.path.display()),
                f.mode.clone(),
                f.kind.describe().to_owned(),
                f.subject.clone(),
                f.not_after
                    .as_ref()
                    .map(|t| format!("until {t}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    output::write_table(out, &rows)
}
