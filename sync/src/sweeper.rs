//! The background sweeper: walks every table in small chunks, dropping expired entries and
//! refreshing idle rate windows, so expiry never runs on the request path and no stored tick
//! grows old enough to wrap. One task per node, cancelled with the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::NodeClock;
use crate::table::Cursor;
use crate::tables::Tables;

/// How often the sweeper wakes.
const INTERVAL: Duration = Duration::from_millis(100);
/// A full pass over a table takes about this long.
const PASS: Duration = Duration::from_secs(5);
/// Slots visited under one shard lock at most.
const CHUNK: usize = 1024;

/// Runs until `cancel` fires.
pub async fn run(tables: Arc<Tables>, clock: NodeClock, cancel: CancellationToken) {
    let mut cursors: HashMap<String, Cursor> = HashMap::new();
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let turns_per_pass = (PASS.as_millis() / INTERVAL.as_millis()).max(1) as usize;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let all = tables.all();
        cursors.retain(|name, _| all.contains_key(name));
        for (name, table) in all.iter() {
            let cursor = cursors.entry(name.clone()).or_default();
            // The budget follows the table's size; a table holding far fewer entries ends
            // its pass early, and the rest of the budget waits for the next turn (walking
            // again at once would take every shard lock over and over for nothing).
            let mut budget = table.schema().size.div_ceil(turns_per_pass).max(CHUNK);
            let mut removed = 0;
            while budget > 0 {
                let n = budget.min(CHUNK);
                removed += table.sweep(cursor, n, clock.tick());
                budget -= n;
                if cursor.is_done() {
                    break;
                }
                // Let the request path's tasks run between chunks.
                tokio::task::yield_now().await;
            }
            if removed > 0 {
                tracing::debug!(table = %name, removed, "expired entries removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Event;
    use crate::key::Key;
    use crate::origin::OriginName;
    use crate::schema::{KeyType, TableSchema};

    #[tokio::test(start_paused = true)]
    async fn expired_entries_disappear_without_any_request() {
        let tables = Arc::new(Tables::new(
            OriginName {
                node: "a".into(),
                incarnation: 1,
            },
            5_000,
        ));
        let store = TableSchema::parse_store(&["gpc0"]).unwrap();
        let schema = TableSchema::new(
            "t",
            KeyType::Ip,
            10_000,
            Duration::from_secs(2),
            store,
            true,
        )
        .unwrap();
        tables.reconcile(vec![schema]).unwrap();
        let clock = NodeClock::new();
        let t = tables.get("t").unwrap();
        for i in 0..5_000u32 {
            let mut h = t.track(
                Key::from_ip(std::net::Ipv4Addr::from(i).into()),
                clock.tick(),
            );
            t.record(&mut h, Event::IncGpc0(1), clock.tick());
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(tables.clone(), clock, cancel.clone()));
        // Paused time advances only when every task waits: each step is a sweeper turn.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(t.len(), 5_000, "nothing expires early");
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(t.len(), 0, "a full pass after expiry removed them all");
        assert_eq!(t.stats().expired, 5_000);
        cancel.cancel();
        task.await.unwrap();
    }
}
