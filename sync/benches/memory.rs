//! How many bytes does a table entry cost? Resident memory for 1,000,000 IPv4 entries storing
//! `http_req_rate(10s), conn_cur, gpc0`, each with one origin's contribution — the table HAProxy
//! needs 208 bytes per entry for on this machine (`../shared/bench/table-memory.sh`).
//!
//! `cargo bench -p sluice-sync --bench memory`
//!
//! Results are in `docs/benchmarks.md`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use sluice_sync::{Event, Hlc, Key, KeyType, OriginName, Origins, Table, TableSchema, Tick};

fn rss_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").expect("procfs");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm");
    pages * 4096
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters like criterion would.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"memory".contains(a.as_str()))
    {
        return;
    }
    const N: u32 = 1_000_000;
    for (label, store) in [
        (
            "http_req_rate(10s),conn_cur,gpc0",
            &["http_req_rate(10s)", "conn_cur", "gpc0"][..],
        ),
        ("(no store)", &[][..]),
    ] {
        let before = rss_bytes();
        let schema = TableSchema::new(
            "per_ip",
            KeyType::Ip,
            N as usize,
            Duration::from_secs(1800),
            TableSchema::parse_store(store).unwrap(),
            true,
        )
        .unwrap();
        let origins = Arc::new(Origins::new(
            OriginName {
                node: "bench".into(),
                incarnation: 1,
            },
            5_000,
        ));
        let table = Table::new(schema, origins, Arc::new(Hlc::new()));
        for i in 0..N {
            let mut h = table.track(
                Key::from_ip(Ipv4Addr::from(0x0a00_0000 + i).into()),
                Tick(1),
            );
            table.record(&mut h, Event::HttpReq, Tick(1));
            table.record(&mut h, Event::ConnOpen, Tick(1));
            table.record(&mut h, Event::IncGpc0(1), Tick(1));
        }
        let after = rss_bytes();
        assert_eq!(table.len(), N as usize, "every entry held");
        println!(
            "memory/{label}: {} entries, {:.1} MiB resident, {:.1} bytes per entry",
            table.len(),
            (after - before) as f64 / (1 << 20) as f64,
            (after - before) as f64 / f64::from(N)
        );
        drop(table);
    }
}
