//! `sluicectl`: the sluice admin client. It speaks only `sluice.admin.v1` to a node and
//! generates the fleet's certificates.
//!
//! This file only parses arguments, reads the clock once, dispatches and reports errors;
//! the command line is in [`args`], the admin commands in [`admin`] over the connection of
//! [`client`], certificate issuing in [`certs`], formatting in [`output`] and [`views`].

mod admin;
mod args;
mod certs;
mod client;
mod node_name;
mod output;
mod views;

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
                        keep_existing: issue.keep_existing,
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
                        keep_existing: issue.keep_existing,
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
        Command::Status | Command::Table(_) | Command::Peer(_) => {
            let target = match client::Target::new(&cli.node, &cli.tls) {
                Ok(target) => target,
                // Options that cannot work together are a usage error, like a malformed one.
                Err(why) => Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, why)
                    .exit(),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(admin::run(&target, &cli.command, cli.json, stdout))
        }
    }
}

fn print_report(out: &mut impl Write, report: &certs::Report, json: bool) -> io::Result<()> {
    if json {
        return output::write_json(out, report);
    }
    if report.kept_existing {
        return writeln!(out, "kept the existing files in {}", report.dir.display());
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
