//! The wire form of a contribution, `sluice.sync.v1.Contribution`, is also the engine's: the
//! change feed and snapshots write it straight into the message being sent, and [`check`] is
//! where a contribution received from a peer becomes trusted. Every field is checked against
//! the table's schema, so applying a [`Checked`] contribution cannot fail.

pub use sluice_proto::sync::v1::{ContributionIter, ContributionRef, Datum, TableContributions};

use crate::error::ContributionError;
use crate::key::Key;
use crate::schema::{DataType, Kind, TableSchema};

/// A received contribution, its data decoded, not yet checked.
#[derive(Clone, Copy, Debug)]
pub struct Contribution<'a> {
    /// The entry's key, as sent.
    pub key: &'a [u8],
    /// The origin's version of this contribution.
    pub version: u64,
    /// Milliseconds since the origin last touched the entry.
    pub idle_ms: u32,
    /// The origin's reset epoch.
    pub epoch: u64,
    /// The values.
    pub data: &'a [Datum],
}

impl<'a> From<&'a sluice_proto::sync::v1::Contribution> for Contribution<'a> {
    /// The view of a contribution held as the generated message (tests and tools).
    fn from(c: &'a sluice_proto::sync::v1::Contribution) -> Self {
        Contribution {
            key: &c.key,
            version: c.version,
            idle_ms: c.idle_ms,
            epoch: c.epoch,
            data: &c.data,
        }
    }
}

/// A contribution checked against a table's schema, ready to apply.
#[derive(Clone, Debug)]
pub struct Checked<'a> {
    key: Key,
    c: Contribution<'a>,
}

impl<'a> Checked<'a> {
    /// A contribution [`check`] passed, put back together from its parts: a receiver keeps
    /// the checked key and the contribution's data apart while it reads the rest of a message.
    /// `c` must be the contribution that was checked, with the same data.
    pub(crate) fn trusted(key: Key, c: Contribution<'a>) -> Checked<'a> {
        Checked { key, c }
    }

    /// The checked key, the rest let go.
    pub(crate) fn into_key(self) -> Key {
        self.key
    }

    /// The entry's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The contribution.
    pub fn contribution(&self) -> &Contribution<'_> {
        &self.c
    }
}

/// Checks a received contribution against the table's schema.
pub fn check<'a>(
    c: Contribution<'a>,
    schema: &TableSchema,
) -> Result<Checked<'a>, ContributionError> {
    let key = schema.key.check_bytes(c.key)?;
    if c.version == 0 {
        return Err(ContributionError::ZeroVersion);
    }
    // A bit per data type seen, to refuse duplicates without allocating.
    let mut seen = 0u32;
    for d in c.data {
        let ty =
            DataType::from_wire(d.r#type).ok_or(ContributionError::UnknownDataType(d.r#type))?;
        let stored = schema
            .stored(ty)
            .ok_or_else(|| ContributionError::NotStored {
                table: schema.name.clone(),
                ty,
            })?;
        let bit = 1u32 << ty.wire();
        if seen & bit != 0 {
            return Err(ContributionError::Duplicate(ty));
        }
        seen |= bit;
        let malformed = |why| ContributionError::Malformed { ty, why };
        let rate_fields = d.period_ms != 0 || d.age_ms != 0 || d.curr != 0 || d.prev != 0;
        match ty.kind() {
            Kind::Counter | Kind::Gauge => {
                if rate_fields || d.stamp != 0 {
                    return Err(malformed("only `value` is allowed"));
                }
                if ty.kind() == Kind::Gauge && d.value < 0 {
                    return Err(malformed("a gauge cannot be negative"));
                }
            }
            Kind::Register => {
                if rate_fields {
                    return Err(malformed("only `stamp` and `value` are allowed"));
                }
                if d.stamp == 0 {
                    return Err(malformed("a register write needs a stamp"));
                }
                if d.value < 0 {
                    return Err(malformed("a register cannot be negative"));
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
            }
        }
    }
    Ok(Checked { key, c })
}
