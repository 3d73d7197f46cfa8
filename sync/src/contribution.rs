//! One origin's contribution to one entry, as it travels between nodes: the unit of
//! replication. Times travel as ages, never as instants of the sender's clock.

use crate::clock::Stamp;
use crate::key::Key;
use crate::schema::DataType;

/// An origin's whole state for one entry. A data type the table stores but `data` omits is
/// zero (or unset, for a register).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contribution {
    /// The entry's key.
    pub key: Key,
    /// Grows with every change the origin makes to the entry.
    pub version: u64,
    /// Milliseconds since the origin last touched the entry.
    pub idle_ms: u32,
    /// Stamp of the newest reset the origin counts from (0: none).
    pub epoch: Stamp,
    /// The stored values, each type at most once.
    pub data: Vec<Datum>,
}

/// One stored value of a contribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datum {
    /// The data type.
    pub ty: DataType,
    /// Its value.
    pub value: Value,
}

/// A value, shaped by the data type's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// A counter: this origin's count since `epoch` (negative after an admin `set` lowered it).
    Counter(i64),
    /// A gauge: this origin's current level.
    Gauge(i64),
    /// A register: the origin's last write and its stamp.
    Register {
        /// Hybrid logical clock stamp of the write.
        stamp: Stamp,
        /// The value written.
        value: u64,
    },
    /// A sliding-window rate.
    Rate {
        /// The period in milliseconds (must match the table's).
        period_ms: u32,
        /// Milliseconds elapsed in the current period.
        age_ms: u32,
        /// Events in the current period.
        curr: u64,
        /// Events in the previous period.
        prev: u64,
    },
}

/// What applying a contribution did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The contribution replaced an older one (or was the first from its origin).
    Updated,
    /// The table already holds this version or a newer one from the origin.
    Stale,
    /// The contribution was untouched for longer than the table's `expire`.
    Expired,
}
