//! A table's slab and index are reserved at its full size when it is created, and memory backs
//! them only as entries arrive: an operator may size a table for the worst day without paying
//! for it every day. Alone in its own test binary so that no other test's allocations move the
//! process's resident memory while it measures.

mod util;

use sluice_sync::{Event, Tick};
use util::{Node, ip, schema_sized};

/// Resident bytes of this process (Linux: `/proc/self/statm`, in pages of 4 KiB).
#[cfg(target_os = "linux")]
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm is readable");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field is the resident page count");
    pages * 4096
}

#[cfg(target_os = "linux")]
#[test]
fn an_empty_table_costs_memory_only_as_it_fills() {
    const SIZE: usize = 4_000_000;
    let before = resident();
    let node = Node::new(
        "a",
        schema_sized(&["http_req_rate(10s)", "conn_cur", "gpc0"], SIZE),
    );
    let empty = resident().saturating_sub(before);
    // Its index alone is 64 MiB and its slab about 400 MiB once touched.
    assert!(
        empty < 8 << 20,
        "an empty table of {SIZE} entries made the process {empty} bytes larger"
    );
    for i in 0..1000u32 {
        let mut h = node
            .table
            .track(ip(&std::net::Ipv4Addr::from(i).to_string()), Tick(0));
        node.table.record(&mut h, Event::HttpReq, Tick(0));
    }
    assert_eq!(node.table.len(), 1000);
    let filled = resident().saturating_sub(before);
    assert!(
        filled < 16 << 20,
        "1,000 entries in a table of {SIZE} made the process {filled} bytes larger"
    );
}
