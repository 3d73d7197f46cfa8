//! `sluice.admin.v1` spoken directly over gRPC: requests `sluicectl` never sends (its own
//! parsing refuses them first) are refused by the node too and change nothing; a node without
//! replication says so; `ShowTable` streams large tables in bounded chunks with limits and
//! filters; shutting the server down ends streams in progress.

mod admin_util;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use admin_util::{Fleet, WAIT, init_tracing, ip, schemas};
use sluice_node::admin::{self, AdminState};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::admin_client::AdminClient;
use sluice_sync::{DataType, NodeClock, OriginName, Tables};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// Asserts that `r` failed with `code` and a message containing `named`.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, named: &str) {
    let status = r.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(named),
        "{:?} should name {named:?}",
        status.message()
    );
}

async fn show(
    client: &mut AdminClient<Channel>,
    req: pb::ShowTableRequest,
) -> Result<Vec<pb::Entry>, tonic::Status> {
    let mut rows = client.show_table(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(e) = rows.message().await? {
        out.push(e);
    }
    Ok(out)
}

fn condition(field: &str, op: i32, value: u64) -> Option<pb::Condition> {
    Some(pb::Condition {
        field: field.into(),
        op,
        value,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sluicectl_never_sends_are_refused_and_change_nothing() {
    let f = Fleet::start(&["edge-1"], &[]).await;
    let n = &f.nodes[0];
    let mut c = n.client().await;
    c.set_entry(pb::SetEntryRequest {
        table: "per_ip".into(),
        key: "10.0.0.7".into(),
        fields: vec![pb::Assignment {
            field: "gpc0".into(),
            value: 4,
        }],
    })
    .await
    .expect("a good set");
    let before = show(
        &mut c,
        pb::ShowTableRequest {
            table: "per_ip".into(),
            ..Default::default()
        },
    )
    .await
    .expect("show");
    let members = n.repl.members();

    let set = |table: &str, key: &str, fields: &[(&str, u64)]| pb::SetEntryRequest {
        table: table.into(),
        key: key.into(),
        fields: fields
            .iter()
            .map(|(f, v)| pb::Assignment {
                field: (*f).into(),
                value: *v,
            })
            .collect(),
    };
    refused(
        c.set_entry(set("per_ip", "10.0.0.7", &[])).await,
        Code::InvalidArgument,
        "no field to set",
    );
    refused(
        c.set_entry(set("per_ip", "10.0.0.7", &[("", 1)])).await,
        Code::InvalidArgument,
        "unknown field ``",
    );
    refused(
        c.set_entry(set("per_ip", "", &[("gpc0", 1)])).await,
        Code::InvalidArgument,
        "is not an IP address",
    );
    refused(
        c.set_entry(set("", "10.0.0.7", &[("gpc0", 1)])).await,
        Code::NotFound,
        "no table ``",
    );
    refused(
        c.clear_table(pb::ClearTableRequest {
            table: "per_path".into(),
            key: Some(String::new()),
        })
        .await,
        Code::InvalidArgument,
        "key is empty",
    );
    for op in [0, 7, -1] {
        refused(
            show(
                &mut c,
                pb::ShowTableRequest {
                    table: "per_ip".into(),
                    filter: condition("gpc0", op, 1),
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
            "no comparison operator",
        );
    }
    let add = |name: &str, addr: &str| pb::AddPeerRequest {
        name: name.into(),
        addr: addr.into(),
    };
    for name in ["", "Edge-4", "edge_4", "-edge", "1234", &"a".repeat(64)] {
        refused(
            c.add_peer(add(name, "127.0.0.1:7004")).await,
            Code::InvalidArgument,
            "bad node name",
        );
        refused(
            c.remove_peer(pb::RemovePeerRequest { name: name.into() })
                .await,
            Code::InvalidArgument,
            "bad node name",
        );
    }
    for addr in ["", "nohost", "edge-4:", "edge-4:0", "edge-4:http", ":7004"] {
        refused(
            c.add_peer(add("edge-4", addr)).await,
            Code::InvalidArgument,
            "bad peer address",
        );
    }

    let after = show(
        &mut c,
        pb::ShowTableRequest {
            table: "per_ip".into(),
            ..Default::default()
        },
    )
    .await
    .expect("show");
    let strip = |rows: Vec<pb::Entry>| {
        rows.into_iter()
            .map(|e| (e.key, e.values))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(after), strip(before), "tables unchanged");
    assert_eq!(n.repl.members(), members, "membership unchanged");
    assert!(n.table("per_path").is_empty());
    f.stop().await;
}

fn lone_state(node: &str) -> (Arc<Tables>, AdminState) {
    let tables = Arc::new(Tables::new(
        OriginName {
            node: node.into(),
            incarnation: 1,
        },
        2_000,
    ));
    tables.reconcile(schemas()).expect("tables");
    let state = AdminState::new(tables.clone(), NodeClock::new());
    (tables, state)
}

#[tokio::test]
async fn a_node_without_replication_says_it_has_no_peers_to_manage() {
    init_tracing();
    let (_tables, state) = lone_state("solo");
    let listener = admin::bind("127.0.0.1:0".parse().expect("addr"), None, state)
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let cancel = CancellationToken::new();
    let served = tokio::spawn(listener.serve(cancel.clone()));
    let mut c = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    let s = c
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.node, "solo");
    assert!(s.ready, "nothing to wait for");
    assert!(!s.replication);
    assert!(s.peers.is_empty());
    assert_eq!(s.tables.len(), 2);

    refused(
        c.list_peers(pb::ListPeersRequest {}).await,
        Code::FailedPrecondition,
        "`solo` does not replicate",
    );
    refused(
        c.add_peer(pb::AddPeerRequest {
            name: "edge-2".into(),
            addr: "127.0.0.1:7002".into(),
        })
        .await,
        Code::FailedPrecondition,
        "does not replicate",
    );
    refused(
        c.remove_peer(pb::RemovePeerRequest {
            name: "edge-2".into(),
        })
        .await,
        Code::FailedPrecondition,
        "does not replicate",
    );
    cancel.cancel();
    tokio::time::timeout(WAIT, served)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_table_streams_a_large_table_with_limits_and_filters_and_ends_on_shutdown() {
    init_tracing();
    let (tables, state) = lone_state("solo");
    let clock = NodeClock::new();
    let t = tables.get("per_ip").expect("per_ip");
    const N: u32 = 5_000;
    for i in 0..N {
        let key = ip(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string());
        t.set(
            key,
            DataType::Gpc0,
            u64::from(i % 4),
            clock.wall_ms(),
            clock.tick(),
        )
        .expect("set");
    }
    let listener = admin::bind("127.0.0.1:0".parse().expect("addr"), None, state)
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let cancel = CancellationToken::new();
    let served = tokio::spawn(listener.serve(cancel.clone()));
    let mut c = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let req = |limit: u64, filter: Option<pb::Condition>| pb::ShowTableRequest {
        table: "per_ip".into(),
        key: None,
        filter,
        limit,
        origins: false,
    };

    let all = show(&mut c, req(0, None)).await.expect("show all");
    let keys: BTreeSet<&str> = all.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys.len(), N as usize, "every entry once");
    let limited = show(&mut c, req(1_000, None)).await.expect("limit");
    assert_eq!(limited.len(), 1_000);
    let threes = show(&mut c, req(0, condition("gpc0", pb::Op::Eq.into(), 3)))
        .await
        .expect("filter");
    assert_eq!(threes.len(), (N / 4) as usize);
    assert!(threes.iter().all(|e| {
        e.values
            .iter()
            .any(|v| v.field == "gpc0" && v.value == Some(3))
    }));
    let few = show(&mut c, req(7, condition("gpc0", pb::Op::Ge.into(), 1)))
        .await
        .expect("filter and limit");
    assert_eq!(few.len(), 7);
    let missing = show(
        &mut c,
        pb::ShowTableRequest {
            table: "per_ip".into(),
            key: Some("192.0.2.1".into()),
            ..Default::default()
        },
    )
    .await
    .expect("absent key");
    assert!(missing.is_empty(), "an absent key is an empty stream");
    let with_origins = show(
        &mut c,
        pb::ShowTableRequest {
            table: "per_ip".into(),
            key: Some("10.0.0.3".into()),
            origins: true,
            ..Default::default()
        },
    )
    .await
    .expect("origins");
    assert_eq!(with_origins[0].origins.len(), 1);
    assert_eq!(with_origins[0].origins[0].node, "solo");
    assert_eq!(with_origins[0].origins[0].reset_at_ms, 0);

    // A stream in progress ends when the server shuts down.
    let mut rows = c
        .show_table(req(0, None))
        .await
        .expect("stream")
        .into_inner();
    rows.message().await.expect("first row").expect("a row");
    cancel.cancel();
    let drained = tokio::time::timeout(WAIT, async {
        let mut n = 1;
        while let Ok(Some(_)) = rows.message().await {
            n += 1;
        }
        n
    })
    .await
    .expect("the stream ends");
    assert!(drained <= N, "{drained}");
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("stops cleanly");
}
