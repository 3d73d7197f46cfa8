//! The decode path of peer input: every malformed contribution is refused with its own error,
//! random bytes never panic, and the wire encoding stays byte-for-byte stable.

use proptest::prelude::*;
use prost::Message;
use sluice_proto::sync::v1 as pb;
use sluice_sync::{ContributionError as E, DataType as D, KeyError, KeyType, TableSchema, wire};

fn schema() -> TableSchema {
    let store =
        TableSchema::parse_store(&["gpc0", "conn_cur", "server_id", "http_req_rate(10s)"]).unwrap();
    TableSchema::new(
        "per_ip",
        KeyType::Ip,
        100,
        std::time::Duration::from_secs(60),
        store,
        true,
    )
    .unwrap()
}

fn good() -> pb::Contribution {
    pb::Contribution {
        key: vec![10, 0, 0, 7],
        version: 3,
        idle_ms: 12,
        epoch: 0,
        data: vec![
            pb::Datum {
                r#type: D::Gpc0.wire(),
                value: 2,
                ..Default::default()
            },
            pb::Datum {
                r#type: D::ConnCur.wire(),
                value: 1,
                ..Default::default()
            },
            pb::Datum {
                r#type: D::ServerId.wire(),
                stamp: 99 << 16,
                value: 4,
                ..Default::default()
            },
            pb::Datum {
                r#type: D::HttpReqRate.wire(),
                period_ms: 10_000,
                age_ms: 250,
                curr: 7,
                prev: 3,
                ..Default::default()
            },
        ],
    }
}

fn with(f: impl FnOnce(&mut pb::Contribution)) -> Result<(), E> {
    let mut c = good();
    f(&mut c);
    wire::check((&c).into(), &schema()).map(|_| ())
}

#[test]
fn a_good_contribution_round_trips() {
    let good = good();
    let c = wire::check((&good).into(), &schema()).unwrap();
    assert_eq!(c.key().as_bytes(), &[10, 0, 0, 7]);
    // What a table exports is what it applied.
    let origins = std::sync::Arc::new(sluice_sync::Origins::new(
        sluice_sync::OriginName {
            node: "z".into(),
            incarnation: 1,
        },
        5_000,
    ));
    let peer = sluice_sync::OriginName {
        node: "y".into(),
        incarnation: 3,
    };
    let id = origins.intern(&peer).unwrap();
    let t = sluice_sync::Table::new(
        schema(),
        origins,
        std::sync::Arc::new(sluice_sync::Hlc::new()),
    );
    t.apply(id, &c, sluice_sync::Tick(100));
    let mut out = Vec::new();
    t.snapshot_chunk(
        &mut sluice_sync::Cursor::new(),
        10,
        sluice_sync::Tick(100),
        None,
        &mut out,
    );
    let mut want = pb::TableContributions::new(
        t.name(),
        pb::Origin {
            node: "y".into(),
            incarnation: 3,
        },
    );
    want.push_message(&good);
    assert_eq!(out, vec![want]);
}

#[test]
fn every_malformed_contribution_gets_its_own_error() {
    assert_eq!(
        with(|c| c.key = vec![1, 2, 3]),
        Err(E::BadKey(KeyError::BadLength { ty: "ip", len: 3 }))
    );
    assert_eq!(with(|c| c.version = 0), Err(E::ZeroVersion));
    assert_eq!(with(|c| c.data[0].r#type = 77), Err(E::UnknownDataType(77)));
    assert_eq!(with(|c| c.data[0].r#type = 0), Err(E::UnknownDataType(0)));
    assert!(matches!(
        with(|c| c.data[0].r#type = D::Gpc1.wire()),
        Err(E::NotStored { ty: D::Gpc1, .. })
    ));
    assert_eq!(
        with(|c| c.data[1].r#type = D::Gpc0.wire()),
        Err(E::Duplicate(D::Gpc0))
    );
    assert_eq!(
        with(|c| c.data[3].period_ms = 1_000),
        Err(E::PeriodMismatch {
            ty: D::HttpReqRate,
            got: 1_000,
            want: 10_000
        })
    );
    let malformed = |r: Result<_, E>, ty| matches!(r, Err(E::Malformed { ty: t, .. }) if t == ty);
    assert!(malformed(
        with(|c| c.data[3].age_ms = 10_000),
        D::HttpReqRate
    ));
    assert!(malformed(with(|c| c.data[3].value = 1), D::HttpReqRate));
    assert!(malformed(with(|c| c.data[0].stamp = 1), D::Gpc0));
    assert!(malformed(with(|c| c.data[1].value = -1), D::ConnCur));
    assert!(malformed(with(|c| c.data[2].stamp = 0), D::ServerId));
    assert!(malformed(with(|c| c.data[2].value = -4), D::ServerId));
    assert!(malformed(with(|c| c.data[2].curr = 1), D::ServerId));
    assert_eq!(
        with(|c| c.data[1].value = -1).unwrap_err().to_string(),
        "malformed `conn_cur`: a gauge cannot be negative"
    );
}

/// Frozen encoding of `good()`: a change here breaks compatibility with running fleets.
/// Decoded by hand: key 10.0.0.7, version 3, idle 12, gpc0 = zigzag(2), conn_cur = zigzag(1),
/// server_id = zigzag(4) stamped 99 << 16, http_req_rate period 10000 age 250 curr 7 prev 3.
const FIXTURE: &str = "0a040a0000071003180c2a04080318042a04080618022a09080118082080808c03\
2a0c080b10904e28fa0130073803";

#[test]
fn the_wire_encoding_is_frozen() {
    let hex: String = good()
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, FIXTURE.replace(['\\', '\n', ' '], ""));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(c) = pb::Contribution::decode(bytes.as_slice()) {
            let _ = wire::check((&c).into(), &schema());
        }
    }

    #[test]
    fn random_well_formed_messages_never_panic(
        key in prop::collection::vec(any::<u8>(), 0..20),
        version in any::<u64>(),
        idle in any::<u32>(),
        data in prop::collection::vec((any::<i32>(), any::<u32>(), any::<i64>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()), 0..6),
    ) {
        let c = pb::Contribution {
            key, version, idle_ms: idle, epoch: 0,
            data: data.into_iter().map(|(t, p, v, s, a, cu, pr)| pb::Datum {
                r#type: t % 20, period_ms: p, value: v, stamp: s, age_ms: a, curr: cu, prev: pr,
            }).collect(),
        };
        if let Ok(ok) = wire::check((&c).into(), &schema()) {
            // Whatever decodes applies without panicking.
            let origins = std::sync::Arc::new(sluice_sync::Origins::new(
                sluice_sync::OriginName { node: "z".into(), incarnation: 1 }, 5_000));
            let t = sluice_sync::Table::new(schema(), origins, std::sync::Arc::new(sluice_sync::Hlc::new()));
            t.apply(1, &ok, sluice_sync::Tick(5));
            let _ = t.get(ok.key(), sluice_sync::Tick(6), true);
        }
    }
}
