//! The admin commands: one `sluice.admin.v1` call each, printed as an aligned table for people
//! or as one JSON document ([`crate::views`]) with `--json`.

use std::cmp::Ordering;
use std::io::Write;
use std::net::IpAddr;

use anyhow::Context as _;
use sluice_proto::admin::v1 as pb;

use crate::args::{Command, CompareOp, PeerCommand, TableCommand, WhereFilter};
use crate::client::Target;
use crate::output::{self, fmt_ms, fmt_period};
use crate::views;

/// Runs an admin command against `target`, writing its result to `out`.
pub(crate) async fn run(
    target: &Target,
    command: &Command,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = target.connect().await?;
    let err = |status| target.call_error(status);
    let written = match command {
        Command::Status => {
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(err)?
                .into_inner();
            let view = views::Status::from(s);
            if json {
                output::write_json(out, &view)
            } else {
                print_status(out, &view)
            }
        }
        Command::Table(TableCommand::List) => {
            let r = client
                .list_tables(pb::ListTablesRequest {})
                .await
                .map_err(err)?
                .into_inner();
            let view = views::Tables {
                tables: r.tables.into_iter().map(views::Table::from).collect(),
            };
            if json {
                output::write_json(out, &view)
            } else {
                print_tables(out, &view.tables)
            }
        }
        Command::Table(TableCommand::Show {
            name,
            key,
            filter,
            limit,
            origins,
        }) => {
            let req = pb::ShowTableRequest {
                table: name.clone(),
                key: key.clone(),
                filter: filter.as_ref().map(condition),
                limit: limit.unwrap_or(0),
                origins: *origins,
            };
            let mut stream = client.show_table(req).await.map_err(err)?.into_inner();
            let mut entries = Vec::new();
            while let Some(e) = stream.message().await.map_err(err)? {
                entries.push(views::Entry::new(e, *origins));
            }
            entries.sort_by(|a, b| compare_keys(&a.key, &b.key));
            let view = views::Show {
                table: name.clone(),
                entries,
            };
            if json {
                output::write_json(out, &view)
            } else if view.entries.is_empty() {
                writeln!(out, "no entries")
            } else {
                print_entries(out, &view.entries, *origins)
            }
        }
        Command::Table(TableCommand::Set { name, key, fields }) => {
            let req = pb::SetEntryRequest {
                table: name.clone(),
                key: key.clone(),
                fields: fields
                    .iter()
                    .map(|f| pb::Assignment {
                        field: f.field.clone(),
                        value: f.value,
                    })
                    .collect(),
            };
            let r = client.set_entry(req).await.map_err(err)?.into_inner();
            let view = views::Set {
                table: name.clone(),
                entry: r.entry.map(|e| views::Entry::new(e, false)),
            };
            if json {
                output::write_json(out, &view)
            } else {
                print_entries(out, view.entry.as_slice(), false)
            }
        }
        Command::Table(TableCommand::Clear { name, key }) => {
            let req = pb::ClearTableRequest {
                table: name.clone(),
                key: key.clone(),
            };
            let r = client.clear_table(req).await.map_err(err)?.into_inner();
            let view = views::Clear {
                table: name.clone(),
                key: key.clone(),
                cleared: r.cleared,
            };
            if json {
                output::write_json(out, &view)
            } else {
                match (&view.key, view.cleared) {
                    (Some(k), 0) => writeln!(
                        out,
                        "{name} holds no entry for {k} on this node; the reset still reaches \
                         the nodes that do"
                    ),
                    (Some(k), _) => writeln!(out, "cleared {k} in {name}"),
                    (None, n) => writeln!(out, "cleared {n} entries of {name}"),
                }
            }
        }
        Command::Peer(PeerCommand::List) => {
            let r = client
                .list_peers(pb::ListPeersRequest {})
                .await
                .map_err(err)?
                .into_inner();
            print_peers(out, r.peers, json, None)
        }
        Command::Peer(PeerCommand::Add { name, addr }) => {
            let req = pb::AddPeerRequest {
                name: name.as_str().to_owned(),
                addr: addr.to_string(),
            };
            let r = client.add_peer(req).await.map_err(err)?.into_inner();
            let note = format!("added {name} ({addr}); every node connects to it");
            print_peers(out, r.peers, json, Some(&note))
        }
        Command::Peer(PeerCommand::Remove { name }) => {
            let req = pb::RemovePeerRequest {
                name: name.as_str().to_owned(),
            };
            let r = client.remove_peer(req).await.map_err(err)?.into_inner();
            let note = format!("removed {name}; every node disconnects from it");
            print_peers(out, r.peers, json, Some(&note))
        }
        Command::Certs(_) | Command::Completions { .. } => {
            anyhow::bail!("`{}` is not an admin command", command.name())
        }
    };
    written.context("cannot write to stdout")
}

fn condition(f: &WhereFilter) -> pb::Condition {
    let op = match f.op {
        CompareOp::Gt => pb::Op::Gt,
        CompareOp::Ge => pb::Op::Ge,
        CompareOp::Lt => pb::Op::Lt,
        CompareOp::Le => pb::Op::Le,
        CompareOp::Eq => pb::Op::Eq,
        CompareOp::Ne => pb::Op::Ne,
    };
    pb::Condition {
        field: f.field.clone(),
        op: op.into(),
        value: f.value,
    }
}

/// Orders keys as people expect: addresses and integers by value, then strings.
fn compare_keys(a: &str, b: &str) -> Ordering {
    fn rank(k: &str) -> (u8, Option<IpAddr>, Option<i64>) {
        match (k.parse::<IpAddr>(), k.parse::<i64>()) {
            (Ok(ip), _) => (0, Some(ip), None),
            (_, Ok(n)) => (1, None, Some(n)),
            _ => (2, None, None),
        }
    }
    rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
}

// === for people ===

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn print_status(out: &mut impl Write, s: &views::Status) -> std::io::Result<()> {
    let uptime = fmt_ms(s.uptime_ms);
    let replication = if s.replication { "on" } else { "off" };
    output::write_table(
        out,
        &[
            ["node".into(), s.node.clone()],
            ["version".into(), s.version.clone()],
            ["uptime".into(), uptime],
            ["ready".into(), yes_no(s.ready).into()],
            ["replication".into(), replication.into()],
        ],
    )?;
    if s.replication {
        writeln!(out)?;
        if s.peers.is_empty() {
            writeln!(out, "no peers")?;
        } else {
            peer_rows(out, &s.peers)?;
        }
    }
    writeln!(out)?;
    if s.tables.is_empty() {
        writeln!(out, "no tables")
    } else {
        print_tables(out, &s.tables)
    }
}

fn print_tables(out: &mut impl Write, tables: &[views::Table]) -> std::io::Result<()> {
    let mut rows = vec![[
        "TABLE".to_owned(),
        "KEY".into(),
        "ENTRIES".into(),
        "SIZE".into(),
        "EVICTIONS".into(),
        "EXPIRE".into(),
        "SYNC".into(),
        "STORE".into(),
    ]];
    rows.extend(tables.iter().map(|t| {
        [
            t.name.clone(),
            t.key.clone(),
            t.entries.to_string(),
            t.size.to_string(),
            t.evictions.to_string(),
            fmt_period(t.expire_ms),
            yes_no(t.sync).into(),
            t.store.join(","),
        ]
    }));
    output::write_table(out, &rows)
}

fn print_peers(
    out: &mut impl Write,
    peers: Vec<pb::Peer>,
    json: bool,
    note: Option<&str>,
) -> std::io::Result<()> {
    let view = views::Peers {
        peers: peers.into_iter().map(views::Peer::from).collect(),
    };
    if json {
        return output::write_json(out, &view);
    }
    if let Some(note) = note {
        writeln!(out, "{note}")?;
    }
    if view.peers.is_empty() {
        writeln!(out, "no peers")
    } else {
        peer_rows(out, &view.peers)
    }
}

fn peer_rows(out: &mut impl Write, peers: &[views::Peer]) -> std::io::Result<()> {
    let mut rows = vec![[
        "PEER".to_owned(),
        "ADDRESS".into(),
        "STATE".into(),
        "LAG".into(),
        "SESSIONS".into(),
        "SENT".into(),
        "RECEIVED".into(),
        "LAST ERROR".into(),
    ]];
    rows.extend(peers.iter().map(|p| {
        [
            p.name.clone(),
            p.addr.clone(),
            if p.up { "up" } else { "down" }.into(),
            fmt_ms(p.lag_ms),
            p.sessions.to_string(),
            p.updates_sent.to_string(),
            p.updates_received.to_string(),
            p.last_error.clone().unwrap_or_default(),
        ]
    }));
    output::write_table(out, &rows)
}

/// Entries as rows: `KEY IDLE field…`, or with origins one row per contribution,
/// `KEY ORIGIN VERSION IDLE field…`. An unset register shows as `-`.
fn print_entries(
    out: &mut impl Write,
    entries: &[views::Entry],
    with_origins: bool,
) -> std::io::Result<()> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let fields: Vec<String> = first
        .values
        .0
        .iter()
        .map(|v| {
            if v.period_ms > 0 {
                format!("{}({})", v.field, fmt_period(v.period_ms))
            } else {
                v.field.clone()
            }
        })
        .collect();
    let value = |v: &pb::Value| v.value.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let mut rows: Vec<Vec<String>> = Vec::new();
    if with_origins {
        let mut header = vec![
            "KEY".into(),
            "ORIGIN".into(),
            "VERSION".into(),
            "IDLE".into(),
        ];
        header.extend(fields);
        rows.push(header);
        for e in entries {
            for c in e.origins.iter().flatten() {
                let mut row = vec![
                    e.key.clone(),
                    c.node.clone(),
                    c.version.to_string(),
                    fmt_ms(c.idle_ms),
                ];
                row.extend(c.values.0.iter().map(value));
                rows.push(row);
            }
        }
    } else {
        let mut header = vec!["KEY".into(), "IDLE".into()];
        header.extend(fields);
        rows.push(header);
        for e in entries {
            let mut row = vec![e.key.clone(), fmt_ms(e.idle_ms)];
            row.extend(e.values.0.iter().map(value));
            rows.push(row);
        }
    }
    output::write_table(out, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_value() {
        let mut keys = vec!["10.0.0.10", "abc", "10.0.0.7", "-3", "2001:db8::1", "12"];
        keys.sort_by(|a, b| compare_keys(a, b));
        assert_eq!(
            keys,
            ["10.0.0.7", "10.0.0.10", "2001:db8::1", "-3", "12", "abc"]
        );
    }
}
