//! Tables are live: a reload keeps their contents, drops a table no longer configured, and
//! refuses a changed definition rather than silently wiping it.

mod util;

use sluice_sync::{DataType, Event, KeyType};
use util::{TestBackend, TestNode, http_config};

const TABLE: &str = "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 1000\nexpire = \"60s\"\nstore = [\"gpc0\"]\n";

#[tokio::test]
async fn reloads_keep_contents_drop_removed_tables_and_refuse_changed_ones() {
    let app = TestBackend::start("app1").await;
    let base = http_config(&[&app], "", "");
    let n = TestNode::start(&format!("{TABLE}{base}")).await;
    let key = KeyType::Ip.parse_key("10.0.0.7").unwrap();
    let t = n.node.tables().get("per_ip").expect("table exists");
    let mut h = t.track(key.clone(), n.node.clock().tick());
    t.record(&mut h, Event::IncGpc0(3), n.node.clock().tick());

    // The same definition: the contents stay.
    let same = sluice_node::Config::from_toml(&format!("{TABLE}{base}")).unwrap();
    n.node.reload(same).await.unwrap();
    let read = |n: &TestNode| {
        n.node
            .tables()
            .get("per_ip")
            .and_then(|t| t.read_key(&key, DataType::Gpc0, n.node.clock().tick()))
    };
    assert_eq!(read(&n), Some(3));

    // A changed definition is refused; the old table and its contents stay.
    let changed = sluice_node::Config::from_toml(&format!(
        "{}{base}",
        TABLE.replace("[\"gpc0\"]", "[\"gpc1\"]")
    ))
    .unwrap();
    let err = n.node.reload(changed).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("table `per_ip` changed its definition"),
        "{err}"
    );
    assert_eq!(read(&n), Some(3));
    assert!(
        n.node.config().tables[0].stores(DataType::Gpc0),
        "the old config stays in force"
    );

    // A table removed from the config is dropped.
    let without = sluice_node::Config::from_toml(&base).unwrap();
    n.node.reload(without).await.unwrap();
    assert!(n.node.tables().get("per_ip").is_none());
    n.stop().await;
    app.stop().await;
}
