//! Table schemas: key types, data types and the store list, parsed from the strings of the
//! config (`key = "ip"`, `store = ["http_req_rate(10s)", "gpc0"]`) into typed values.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::SchemaError;

/// The longest rate period or expiry a table accepts. Ticks are 32-bit milliseconds compared
/// with wrapping arithmetic, which is exact for intervals below 2^31 ms (24.8 days).
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 24 * 3600);

/// The longest `string(N)` / `binary(N)` key.
pub const MAX_KEY_LEN: usize = 1024;

/// What a table is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// IPv4 or IPv6 address (an IPv4-mapped IPv6 address is stored as IPv4).
    Ip,
    /// Signed 64-bit integer.
    Integer,
    /// UTF-8 string of at most N bytes.
    String(usize),
    /// Byte string of at most N bytes.
    Binary(usize),
}

impl FromStr for KeyType {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "ip" | "ipv4" | "ipv6" => return Ok(KeyType::Ip),
            "integer" => return Ok(KeyType::Integer),
            _ => {}
        }
        let (name, arg) = split_call(s).ok_or_else(|| SchemaError::UnknownKeyType(s.into()))?;
        let make = match name {
            "string" => KeyType::String,
            "binary" => KeyType::Binary,
            _ => return Err(SchemaError::UnknownKeyType(s.into())),
        };
        let len: usize = arg
            .trim()
            .parse()
            .map_err(|_| SchemaError::BadKeyLength(s.into()))?;
        if len == 0 || len > MAX_KEY_LEN {
            return Err(SchemaError::BadKeyLength(s.into()));
        }
        Ok(make(len))
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Ip => f.write_str("ip"),
            KeyType::Integer => f.write_str("integer"),
            KeyType::String(n) => write!(f, "string({n})"),
            KeyType::Binary(n) => write!(f, "binary({n})"),
        }
    }
}

/// How a data type merges across the fleet (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sum of origins; reset by a stamped `table clear`.
    Counter,
    /// Sum of origins' sliding-window rates.
    Rate,
    /// Sum of live origins.
    Gauge,
    /// Last writer wins by hybrid logical clock, ties broken by node name.
    Register,
}

macro_rules! data_types {
    ($($variant:ident = $name:literal, $kind:ident, $wire:literal;)*) => {
        /// A data type a table can store (SPEC §5).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum DataType {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl DataType {
            /// Every data type, in wire-number order.
            pub const ALL: &'static [DataType] = &[$(DataType::$variant),*];

            /// The name used in configs, rules and the admin API.
            pub fn name(self) -> &'static str {
                match self { $(DataType::$variant => $name),* }
            }

            /// How the type merges across origins.
            pub fn kind(self) -> Kind {
                match self { $(DataType::$variant => Kind::$kind),* }
            }

            /// The `sluice.sync.v1.DataType` number.
            pub fn wire(self) -> i32 {
                match self { $(DataType::$variant => $wire),* }
            }

            /// The type with the given `sluice.sync.v1.DataType` number.
            pub fn from_wire(n: i32) -> Option<DataType> {
                match n { $($wire => Some(DataType::$variant),)* _ => None }
            }
        }

        impl FromStr for DataType {
            type Err = SchemaError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($name => Ok(DataType::$variant),)* _ => Err(SchemaError::UnknownDataType(s.into())) }
            }
        }
    };
}

data_types! {
    ServerId = "server_id", Register, 1;
    Gpt0 = "gpt0", Register, 2;
    Gpc0 = "gpc0", Counter, 3;
    Gpc1 = "gpc1", Counter, 4;
    ConnCnt = "conn_cnt", Counter, 5;
    ConnCur = "conn_cur", Gauge, 6;
    ConnRate = "conn_rate", Rate, 7;
    SessCnt = "sess_cnt", Counter, 8;
    SessRate = "sess_rate", Rate, 9;
    HttpReqCnt = "http_req_cnt", Counter, 10;
    HttpReqRate = "http_req_rate", Rate, 11;
    HttpErrCnt = "http_err_cnt", Counter, 12;
    HttpErrRate = "http_err_rate", Rate, 13;
    BytesInCnt = "bytes_in_cnt", Counter, 14;
    BytesInRate = "bytes_in_rate", Rate, 15;
    BytesOutCnt = "bytes_out_cnt", Counter, 16;
    BytesOutRate = "bytes_out_rate", Rate, 17;
    Gpc0Rate = "gpc0_rate", Rate, 18;
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One element of a table's store list: a data type and, for rates, its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stored {
    /// The data type.
    pub ty: DataType,
    /// The rate period in milliseconds (rates only; zero otherwise).
    pub period_ms: u32,
}

impl Stored {
    /// The period of a rate.
    pub fn period(&self) -> Option<Duration> {
        (self.ty.kind() == Kind::Rate).then(|| Duration::from_millis(u64::from(self.period_ms)))
    }
}

impl FromStr for Stored {
    type Err = SchemaError;

    /// Parses `gpc0` or `http_req_rate(10s)`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, arg) = match split_call(s) {
            Some((name, arg)) => (name, Some(arg)),
            None => (s, None),
        };
        let ty: DataType = name.parse()?;
        match (ty.kind(), arg) {
            (Kind::Rate, None) => Err(SchemaError::MissingPeriod(ty)),
            (Kind::Rate, Some(arg)) => {
                let period = humantime::parse_duration(arg.trim())
                    .map_err(|e| SchemaError::BadPeriod(s.into(), e.to_string()))?;
                let period_ms = interval_ms(period)
                    .map_err(|why| SchemaError::BadPeriod(s.into(), why.into()))?;
                Ok(Stored { ty, period_ms })
            }
            (_, Some(_)) => Err(SchemaError::UnexpectedPeriod(ty)),
            (_, None) => Ok(Stored { ty, period_ms: 0 }),
        }
    }
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period() {
            Some(p) => write!(f, "{}({})", self.ty, humantime::format_duration(p)),
            None => write!(f, "{}", self.ty),
        }
    }
}

/// The validated definition of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    /// Table name, unique on the node.
    pub name: String,
    /// Key type.
    pub key: KeyType,
    /// Maximum number of entries.
    pub size: usize,
    /// How long an entry untouched by every origin lives.
    pub expire_ms: u32,
    /// Stored data types, in config order; each type at most once.
    pub store: Vec<Stored>,
    /// Whether the table is replicated to peers.
    pub sync: bool,
}

impl TableSchema {
    /// Builds and validates a schema.
    pub fn new(
        name: impl Into<String>,
        key: KeyType,
        size: usize,
        expire: Duration,
        store: Vec<Stored>,
        sync: bool,
    ) -> Result<Self, SchemaError> {
        let name = name.into();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(SchemaError::BadTableName(name));
        }
        if size == 0 {
            return Err(SchemaError::ZeroSize);
        }
        if size > u32::MAX as usize / 2 {
            return Err(SchemaError::SizeTooLarge(size));
        }
        let expire_ms = interval_ms(expire).map_err(|why| SchemaError::BadExpire(why.into()))?;
        for (i, s) in store.iter().enumerate() {
            if store[..i].iter().any(|o| o.ty == s.ty) {
                return Err(SchemaError::DuplicateDataType(s.ty));
            }
            if s.ty.kind() == Kind::Rate && s.period_ms == 0 {
                return Err(SchemaError::BadPeriod(
                    s.to_string(),
                    "a period must not be zero".into(),
                ));
            }
        }
        Ok(TableSchema {
            name,
            key,
            size,
            expire_ms,
            store,
            sync,
        })
    }

    /// Parses the store list of the config.
    pub fn parse_store<S: AsRef<str>>(items: &[S]) -> Result<Vec<Stored>, SchemaError> {
        items.iter().map(|s| s.as_ref().parse()).collect()
    }

    /// The stored element for a data type.
    pub fn stored(&self, ty: DataType) -> Option<&Stored> {
        self.store.iter().find(|s| s.ty == ty)
    }

    /// Whether the table stores a data type.
    pub fn stores(&self, ty: DataType) -> bool {
        self.stored(ty).is_some()
    }

    /// A stable description of what replication depends on (name, key type, stored types and
    /// periods); two nodes replicate a table only when these agree.
    pub fn fingerprint(&self) -> String {
        let store: Vec<String> = self.store.iter().map(|s| s.to_string()).collect();
        format!("{}:{}:{}", self.name, self.key, store.join(","))
    }
}

fn split_call(s: &str) -> Option<(&str, &str)> {
    let open = s.find('(')?;
    let inner = s[open + 1..].strip_suffix(')')?;
    Some((s[..open].trim(), inner))
}

fn interval_ms(d: Duration) -> Result<u32, &'static str> {
    if d.is_zero() {
        return Err("must not be zero");
    }
    if d > MAX_INTERVAL {
        return Err("must be at most 24 days");
    }
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms");
    }
    // MAX_INTERVAL fits in u32 milliseconds, checked above.
    Ok(d.as_millis() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_parse() {
        assert_eq!("ip".parse::<KeyType>().unwrap(), KeyType::Ip);
        assert_eq!("integer".parse::<KeyType>().unwrap(), KeyType::Integer);
        assert_eq!(
            "string(32)".parse::<KeyType>().unwrap(),
            KeyType::String(32)
        );
        assert_eq!(
            "binary(16)".parse::<KeyType>().unwrap(),
            KeyType::Binary(16)
        );
        assert!(matches!(
            "string(0)".parse::<KeyType>(),
            Err(SchemaError::BadKeyLength(_))
        ));
        assert!(matches!(
            "string(x)".parse::<KeyType>(),
            Err(SchemaError::BadKeyLength(_))
        ));
        assert!(matches!(
            "uuid".parse::<KeyType>(),
            Err(SchemaError::UnknownKeyType(_))
        ));
        for k in ["ip", "integer", "string(7)", "binary(9)"] {
            assert_eq!(k.parse::<KeyType>().unwrap().to_string(), k);
        }
    }

    #[test]
    fn every_data_type_parses_and_roundtrips() {
        for &ty in DataType::ALL {
            let text = match ty.kind() {
                Kind::Rate => format!("{}(10s)", ty.name()),
                _ => ty.name().to_string(),
            };
            let s: Stored = text.parse().unwrap();
            assert_eq!(s.ty, ty);
            assert_eq!(s.to_string(), text);
            assert_eq!(DataType::from_wire(ty.wire()), Some(ty));
        }
        assert_eq!(DataType::from_wire(0), None);
        assert_eq!(DataType::from_wire(99), None);
    }

    #[test]
    fn store_errors_are_specific() {
        let err = |s: &str| s.parse::<Stored>().unwrap_err();
        assert!(matches!(
            err("http_req_rate"),
            SchemaError::MissingPeriod(DataType::HttpReqRate)
        ));
        assert!(matches!(
            err("http_req_rate(0s)"),
            SchemaError::BadPeriod(..)
        ));
        assert!(matches!(
            err("http_req_rate(ten)"),
            SchemaError::BadPeriod(..)
        ));
        assert!(matches!(
            err("gpc0(10s)"),
            SchemaError::UnexpectedPeriod(DataType::Gpc0)
        ));
        assert!(matches!(err("gpc9"), SchemaError::UnknownDataType(_)));
        assert_eq!(
            err("http_req_rate(0s)").to_string(),
            "bad period in `http_req_rate(0s)`: must not be zero"
        );
    }

    #[test]
    fn schema_validation() {
        let store = TableSchema::parse_store(&["gpc0", "http_req_rate(10s)"]).unwrap();
        let ok = TableSchema::new(
            "t",
            KeyType::Ip,
            10,
            Duration::from_secs(60),
            store.clone(),
            true,
        );
        assert!(ok.is_ok());
        let zero = TableSchema::new(
            "t",
            KeyType::Ip,
            0,
            Duration::from_secs(60),
            store.clone(),
            true,
        );
        assert!(matches!(zero, Err(SchemaError::ZeroSize)));
        let no_expire = TableSchema::new("t", KeyType::Ip, 1, Duration::ZERO, store.clone(), true);
        assert!(matches!(no_expire, Err(SchemaError::BadExpire(_))));
        let dup = TableSchema::parse_store(&["gpc0", "gpc0"]).unwrap();
        let dup = TableSchema::new("t", KeyType::Ip, 1, Duration::from_secs(1), dup, true);
        assert!(matches!(
            dup,
            Err(SchemaError::DuplicateDataType(DataType::Gpc0))
        ));
        let bad_name = TableSchema::new("a b", KeyType::Ip, 1, Duration::from_secs(1), store, true);
        assert!(matches!(bad_name, Err(SchemaError::BadTableName(_))));
    }
}
