//! The `sluicectl` command line (SPEC §7) as clap derive types, and the parsers for the
//! argument syntaxes it accepts (`FIELD=VALUE`, `--where` expressions, `HOST:PORT`).
//!
//! Everything is parsed and checked here, before any command runs: a malformed argument is a
//! usage error (exit status 2) naming the argument, never a half-run command.
//!
//! The connection options (`--node`, `--ca`, `--cert`, `--key`, `--server-name`) go before the
//! command, as in SPEC §7's synopsis; they are not clap-global because `certs add --node NAME`
//! uses `--node` for a node name. `--json` is accepted anywhere.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::certs;
use crate::node_name::NodeName;

/// Operate a sluice fleet: read and change stick tables, manage peers, issue certificates.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Admin API address of the node to talk to.
    #[arg(
        long,
        env = "SLUICE_ADMIN",
        default_value = "127.0.0.1:9000",
        value_name = "ADDR"
    )]
    pub(crate) node: String,

    #[command(flatten)]
    pub(crate) tls: ClientTls,

    /// Print one JSON document instead of a table for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The client identity for an admin API that is not on loopback. All three or none.
#[derive(Debug, Args)]
pub(crate) struct ClientTls {
    /// Node name the node's certificate must carry (default: the host of --node, which must
    /// then be a name, not an IP address).
    #[arg(long, value_name = "NODE", requires = "ca")]
    pub(crate) server_name: Option<NodeName>,
    /// Fleet CA certificate that the node's certificate must chain to.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (`admin.pem` from `certs init --admin-client`).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"])]
    pub(crate) cert: Option<PathBuf>,
    /// Private key of the client certificate.
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"])]
    pub(crate) key: Option<PathBuf>,
}

/// A `sluicectl` command.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Node name, version, uptime, readiness, peers with state and lag, tables with entry counts.
    Status,
    /// Read and change stick tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// List, add and remove fleet members.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Create the fleet CA and node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell to complete for.
        shell: CompletionShell,
    },
}

/// `sluicectl table …`
#[derive(Debug, Subcommand)]
pub(crate) enum TableCommand {
    /// List the node's tables.
    List,
    /// Show a table's entries, merged across the fleet.
    Show {
        /// Table name.
        name: String,
        /// Show only this key.
        #[arg(long, value_name = "K")]
        key: Option<String>,
        /// Show only entries matching `FIELD OP VALUE`, e.g. 'http_req_rate > 10'.
        #[arg(long = "where", value_name = "EXPR")]
        filter: Option<WhereFilter>,
        /// Show at most N entries.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Show each origin's contribution instead of the merged values.
        #[arg(long)]
        origins: bool,
    },
    /// Set fields of one entry, e.g. `table set per_ip 10.0.0.7 gpc0=1 gpt0=3`.
    Set {
        /// Table name.
        name: String,
        /// Entry key.
        key: String,
        /// Fields to set.
        #[arg(value_name = "FIELD=VALUE", required = true)]
        fields: Vec<FieldAssignment>,
    },
    /// Clear a whole table, or one key (a replicated, stamped reset).
    Clear {
        /// Table name.
        name: String,
        /// Clear only this key.
        key: Option<String>,
    },
}

/// `sluicectl peer …`
#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// List the fleet's members and their connection state.
    List,
    /// Add a member; every node learns it and connects to it.
    Add {
        /// The new node's name (as in its certificate).
        name: NodeName,
        /// Its replication address.
        addr: PeerAddr,
    },
    /// Remove a member from every node.
    Remove {
        /// The node's name.
        name: NodeName,
    },
}

/// `sluicectl certs …`
#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a fleet CA and one certificate and key per node.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Node names, comma-separated: edge-1,edge-2,edge-3.
        #[arg(long, value_name = "NAMES", value_delimiter = ',', required = true)]
        nodes: Vec<NodeName>,
        /// Also issue a client certificate for sluicectl (admin.pem, admin.key).
        #[arg(long)]
        admin_client: bool,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Issue one more node certificate from an existing fleet CA.
    Add {
        /// Directory holding ca.pem and ca.key; the new files go there too.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The node's name.
        #[arg(long, value_name = "NAME")]
        node: NodeName,
        #[command(flatten)]
        issue: IssueArgs,
    },
}

/// Options shared by the certificate-issuing commands.
#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
    /// When every file the command would write exists already, write nothing and succeed: for
    /// a one-shot job that runs on every start. If only some exist, it refuses as usual.
    #[arg(long, conflicts_with = "force")]
    pub(crate) keep_existing: bool,
    /// Validity of node and admin certificates, in days (the CA gets 3650).
    #[arg(
        long,
        value_name = "N",
        default_value_t = certs::DEFAULT_DAYS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(certs::MAX_DAYS))
    )]
    pub(crate) days: u32,
}

/// Shells `completions` can generate for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => Self::Bash,
            CompletionShell::Zsh => Self::Zsh,
            CompletionShell::Fish => Self::Fish,
        }
    }
}

impl Command {
    /// The command's name as typed, e.g. `table show`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Table(TableCommand::List) => "table list",
            Self::Table(TableCommand::Show { .. }) => "table show",
            Self::Table(TableCommand::Set { .. }) => "table set",
            Self::Table(TableCommand::Clear { .. }) => "table clear",
            Self::Peer(PeerCommand::List) => "peer list",
            Self::Peer(PeerCommand::Add { .. }) => "peer add",
            Self::Peer(PeerCommand::Remove { .. }) => "peer remove",
            Self::Certs(CertsCommand::Init { .. }) => "certs init",
            Self::Certs(CertsCommand::Add { .. }) => "certs add",
            Self::Completions { .. } => "completions",
        }
    }
}

// === argument syntaxes ===

/// A stored data type's name as typed in `FIELD=VALUE` and `--where`: `gpc0`, `http_req_rate`.
/// The period of a rate comes from the table, so it is not written here.
fn parse_field(s: &str) -> Result<String, String> {
    let valid = s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a field name (lowercase letters, digits and `_`, e.g. gpc0, http_req_rate)"
        ))
    }
}

fn parse_value(field: &str, s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("value `{s}` for `{field}` is not an unsigned integer"))
}

/// `FIELD=VALUE` in `table set`: every stored data type holds an unsigned integer. Which fields
/// a table stores, and their ranges, is for the node to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldAssignment {
    /// The data type to set.
    pub(crate) field: String,
    /// Its new value.
    pub(crate) value: u64,
}

impl std::str::FromStr for FieldAssignment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (field, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not FIELD=VALUE"))?;
        let field = parse_field(field)?;
        let value = parse_value(&field, value)?;
        Ok(Self { field, value })
    }
}

/// A comparison operator in `--where` (SPEC §4 spelling, HAProxy's words accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    /// `>` or `gt`.
    Gt,
    /// `>=` or `ge`.
    Ge,
    /// `<` or `lt`.
    Lt,
    /// `<=` or `le`.
    Le,
    /// `==` or `eq`.
    Eq,
    /// `!=` or `ne`.
    Ne,
}

impl CompareOp {
    /// Symbols, longest first so `>=` is not read as `>` followed by `=`.
    const SYMBOLS: [(&'static str, Self); 6] = [
        (">=", Self::Ge),
        ("<=", Self::Le),
        ("==", Self::Eq),
        ("!=", Self::Ne),
        (">", Self::Gt),
        ("<", Self::Lt),
    ];
    const WORDS: [(&'static str, Self); 6] = [
        ("gt", Self::Gt),
        ("ge", Self::Ge),
        ("lt", Self::Lt),
        ("le", Self::Le),
        ("eq", Self::Eq),
        ("ne", Self::Ne),
    ];
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbol = Self::SYMBOLS
            .iter()
            .find(|(_, op)| op == self)
            .map_or("?", |(s, _)| s);
        f.write_str(symbol)
    }
}

/// `--where 'FIELD OP VALUE'`, e.g. `http_req_rate > 10` or `gpc0 gt 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WhereFilter {
    /// The data type compared.
    pub(crate) field: String,
    /// How it is compared.
    pub(crate) op: CompareOp,
    /// What it is compared with.
    pub(crate) value: u64,
}

impl std::str::FromStr for WhereFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected =
            || format!("`{s}` is not FIELD OP VALUE (OP: > >= < <= == != gt ge lt le eq ne)");
        let (field, op, value) = match s.find(['<', '>', '=', '!']) {
            Some(at) => {
                let rest = &s[at..];
                let (symbol, op) = CompareOp::SYMBOLS
                    .iter()
                    .find(|(sym, _)| rest.starts_with(sym))
                    .ok_or_else(expected)?;
                (&s[..at], *op, &rest[symbol.len()..])
            }
            None => match s.split_whitespace().collect::<Vec<_>>()[..] {
                [field, word, value] => {
                    let (_, op) = CompareOp::WORDS
                        .iter()
                        .find(|(w, _)| *w == word)
                        .ok_or_else(expected)?;
                    (field, *op, value)
                }
                _ => return Err(expected()),
            },
        };
        let field = parse_field(field.trim())?;
        let value = parse_value(&field, value.trim())?;
        Ok(Self { field, op, value })
    }
}

/// A replication address, `HOST:PORT` (`edge-4:7000`, `10.0.0.4:7000`, `[::1]:7000`). The
/// host is resolved by the nodes, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub(crate) host: String,
    /// TCP port, never 0.
    pub(crate) port: u16,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("`{s}` is not HOST:PORT (e.g. edge-4:7000 or [::1]:7000)");
        let (host, port) = s.rsplit_once(':').ok_or_else(expected)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6.strip_suffix(']').ok_or_else(expected)?;
                v6.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| format!("`{v6}` in `{s}` is not an IPv6 address"))?;
                v6
            }
            // A bare IPv6 address is ambiguous with its port; demand brackets.
            None if host.is_empty() || host.contains(':') => return Err(expected()),
            None => host,
        };
        let port = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(format!(
                    "port `{port}` in `{s}` is not a port number (1-65535)"
                ));
            }
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn field_assignments() {
        assert_eq!(
            "gpc0=1".parse(),
            Ok(FieldAssignment {
                field: "gpc0".into(),
                value: 1
            })
        );
        for bad in [
            "gpc0", "=1", "gpc0=", "gpc0=-1", "gpc0=x", "GPC0=1", "0gpc=1", "a b=1",
        ] {
            assert!(bad.parse::<FieldAssignment>().is_err(), "{bad}");
        }
    }

    #[test]
    fn where_filters() {
        let f = |field: &str, op, value| {
            Ok(WhereFilter {
                field: field.into(),
                op,
                value,
            })
        };
        assert_eq!(
            "http_req_rate > 10".parse(),
            f("http_req_rate", CompareOp::Gt, 10)
        );
        assert_eq!(
            "http_req_rate>=10".parse(),
            f("http_req_rate", CompareOp::Ge, 10)
        );
        assert_eq!(" gpc0 != 0 ".parse(), f("gpc0", CompareOp::Ne, 0));
        assert_eq!("gpc0 le 3".parse(), f("gpc0", CompareOp::Le, 3));
        assert_eq!("conn_cur<2".parse(), f("conn_cur", CompareOp::Lt, 2));
        for bad in [
            "",
            "gpc0",
            "gpc0 >",
            "> 1",
            "gpc0 = 1",
            "gpc0 => 1",
            "gpc0 about 1",
            "gpc0 > x",
        ] {
            assert!(bad.parse::<WhereFilter>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peer_addrs() {
        let a = |host: &str, port| {
            Ok(PeerAddr {
                host: host.into(),
                port,
            })
        };
        assert_eq!("edge-4:7000".parse(), a("edge-4", 7000));
        assert_eq!("127.0.0.1:7004".parse(), a("127.0.0.1", 7004));
        assert_eq!("[::1]:7000".parse(), a("::1", 7000));
        for bad in [
            "edge-4",
            ":7000",
            "edge-4:0",
            "edge-4:x",
            "edge-4:70000",
            "::1:7000",
            "[x]:1",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad}");
        }
    }
}
