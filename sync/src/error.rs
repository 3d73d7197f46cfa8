//! Errors at the boundary of the engine. Every input that a user or a peer controls ends in one
//! of these, never in a panic.

use crate::schema::DataType;

/// A table definition that cannot be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaError {
    /// Key type not one of `ip`, `integer`, `string(N)`, `binary(N)`.
    #[error("unknown key type `{0}` (expected ip, integer, string(N) or binary(N))")]
    UnknownKeyType(String),
    /// `string(N)`/`binary(N)` with a bad N.
    #[error("bad key length in `{0}` (expected 1..=1024)")]
    BadKeyLength(String),
    /// Not a data type of SPEC §5.
    #[error("unknown data type `{0}`")]
    UnknownDataType(String),
    /// A rate without `(period)`.
    #[error("`{0}` needs a period, e.g. `{0}(10s)`")]
    MissingPeriod(DataType),
    /// A period on a type that is not a rate.
    #[error("`{0}` is not a rate and takes no period")]
    UnexpectedPeriod(DataType),
    /// A period that does not parse or is out of range.
    #[error("bad period in `{0}`: {1}")]
    BadPeriod(String, String),
    /// `expire` out of range.
    #[error("bad expire: {0}")]
    BadExpire(String),
    /// `size = 0`.
    #[error("size must be at least 1")]
    ZeroSize,
    /// A size the engine cannot index.
    #[error("size {0} is too large (at most 2147483647)")]
    SizeTooLarge(usize),
    /// The same data type twice in the store list.
    #[error("`{0}` is stored twice")]
    DuplicateDataType(DataType),
    /// A table name with characters other than letters, digits, `_`, `-`, `.`.
    #[error("bad table name `{0}` (letters, digits, `_`, `-` and `.` only)")]
    BadTableName(String),
}

/// A key that does not fit the table's key type.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Text that is not an IP address for an `ip` table.
    #[error("`{0}` is not an IP address")]
    NotAnIp(String),
    /// Text that is not an integer for an `integer` table.
    #[error("`{0}` is not an integer")]
    NotAnInteger(String),
    /// A key longer than `string(N)`/`binary(N)` allows.
    #[error("key is {len} bytes long, the table allows at most {max}")]
    TooLong {
        /// Length of the key.
        len: usize,
        /// The table's limit.
        max: usize,
    },
    /// Binary key text that is not hexadecimal.
    #[error("`{0}` is not hexadecimal")]
    NotHex(String),
    /// Wire bytes of the wrong length for the key type.
    #[error("a {ty} key cannot be {len} bytes long")]
    BadLength {
        /// The key type.
        ty: &'static str,
        /// Length received.
        len: usize,
    },
    /// Wire bytes that are not UTF-8 for a `string` table.
    #[error("string key is not UTF-8")]
    NotUtf8,
    /// An empty key.
    #[error("key is empty")]
    Empty,
}

/// A contribution received from a peer that does not fit the table. Nothing of a message that
/// holds one is applied.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContributionError {
    /// The key does not fit the table's key type.
    #[error("bad key: {0}")]
    BadKey(#[from] KeyError),
    /// A data type number this build does not know.
    #[error("unknown data type number {0}")]
    UnknownDataType(i32),
    /// A data type the table does not store.
    #[error("table `{table}` does not store `{ty}`")]
    NotStored {
        /// The table.
        table: String,
        /// The type.
        ty: DataType,
    },
    /// The same type twice in one contribution.
    #[error("`{0}` appears twice in one contribution")]
    Duplicate(DataType),
    /// A rate whose period differs from the table's.
    #[error("`{ty}` has period {got}ms, the table's is {want}ms")]
    PeriodMismatch {
        /// The type.
        ty: DataType,
        /// Period received.
        got: u32,
        /// The table's period.
        want: u32,
    },
    /// Fields that make no sense for the type, e.g. a stamp on a counter.
    #[error("malformed `{ty}`: {why}")]
    Malformed {
        /// The type.
        ty: DataType,
        /// What is wrong.
        why: &'static str,
    },
    /// Version zero: versions start at one.
    #[error("contribution has version 0")]
    ZeroVersion,
}
