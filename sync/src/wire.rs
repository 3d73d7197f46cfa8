//! Conversion between the engine's [`Contribution`] and `sluice.sync.v1.Contribution`.
//! Decoding is where a peer's bytes become trusted: every field is checked against the table's
//! schema, so applying a decoded contribution cannot fail.

use sluice_proto::sync::v1 as pb;

use crate::contribution::{Contribution, Datum, Value};
use crate::error::ContributionError;
use crate::schema::{DataType, Kind, TableSchema};

/// The wire form of a contribution.
pub fn encode(c: &Contribution) -> pb::Contribution {
    pb::Contribution {
        key: c.key.as_bytes().to_vec(),
        version: c.version,
        idle_ms: c.idle_ms,
        epoch: c.epoch,
        data: c.data.iter().map(encode_datum).collect(),
    }
}

fn encode_datum(d: &Datum) -> pb::Datum {
    let mut p = pb::Datum {
        r#type: d.ty.wire(),
        ..pb::Datum::default()
    };
    match d.value {
        Value::Counter(n) | Value::Gauge(n) => p.value = n,
        Value::Register { stamp, value } => {
            p.stamp = stamp;
            // Register values are written from u32 sources (server ids, gpt0).
            p.value = i64::try_from(value).unwrap_or(i64::MAX);
        }
        Value::Rate {
            period_ms,
            age_ms,
            curr,
            prev,
        } => {
            p.period_ms = period_ms;
            p.age_ms = age_ms;
            p.curr = curr;
            p.prev = prev;
        }
    }
    p
}

/// Checks a received contribution against the table's schema.
pub fn decode(
    p: &pb::Contribution,
    schema: &TableSchema,
) -> Result<Contribution, ContributionError> {
    let key = schema.key.check_bytes(&p.key)?;
    if p.version == 0 {
        return Err(ContributionError::ZeroVersion);
    }
    let mut data: Vec<Datum> = Vec::with_capacity(p.data.len());
    for d in &p.data {
        let ty =
            DataType::from_wire(d.r#type).ok_or(ContributionError::UnknownDataType(d.r#type))?;
        let stored = schema
            .stored(ty)
            .ok_or_else(|| ContributionError::NotStored {
                table: schema.name.clone(),
                ty,
            })?;
        if data.iter().any(|x| x.ty == ty) {
            return Err(ContributionError::Duplicate(ty));
        }
        let malformed = |why| ContributionError::Malformed { ty, why };
        let rate_fields = d.period_ms != 0 || d.age_ms != 0 || d.curr != 0 || d.prev != 0;
        let value = match ty.kind() {
            Kind::Counter | Kind::Gauge => {
                if rate_fields || d.stamp != 0 {
                    return Err(malformed("only `value` is allowed"));
                }
                if ty.kind() == Kind::Gauge {
                    if d.value < 0 {
                        return Err(malformed("a gauge cannot be negative"));
                    }
                    Value::Gauge(d.value)
                } else {
                    Value::Counter(d.value)
                }
            }
            Kind::Register => {
                if rate_fields {
                    return Err(malformed("only `stamp` and `value` are allowed"));
                }
                if d.stamp == 0 {
                    return Err(malformed("a register write needs a stamp"));
                }
                let value = u64::try_from(d.value)
                    .map_err(|_| malformed("a register cannot be negative"))?;
                Value::Register {
                    stamp: d.stamp,
                    value,
                }
            }
            Kind::Rate => {
                if d.value != 0 || d.stamp != 0 {
                    return Err(malformed("only period, age, curr and prev are allowed"));
                }
                if d.period_ms != stored.period_ms {
                    return Err(ContributionError::PeriodMismatch {
                        ty,
                        got: d.period_ms,
                        want: stored.period_ms,
                    });
                }
                if d.age_ms >= d.period_ms {
                    return Err(malformed("age must be shorter than the period"));
                }
                Value::Rate {
                    period_ms: d.period_ms,
                    age_ms: d.age_ms,
                    curr: d.curr,
                    prev: d.prev,
                }
            }
        };
        data.push(Datum { ty, value });
    }
    Ok(Contribution {
        key,
        version: p.version,
        idle_ms: p.idle_ms,
        epoch: p.epoch,
        data,
    })
}
