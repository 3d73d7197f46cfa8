//! The syntax tree of one rule (SPEC §4) and its canonical text form.
//!
//! The tree is what the parser produces and what evaluation walks. Its invariants, kept by the
//! parser: `And`/`Or` have at least two children and never a direct child of their own kind
//! (chains and parenthesised groups of one operator are flattened), comparisons are well typed
//! (`scN_*` with integers, `src` with a network and `==`/`!=`, `method`/`path`/`hdr()` with
//! strings and `==`/`!=`), and header names are lowercase. `Display` prints the canonical text,
//! which parses back to an equal tree.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use http::HeaderName;
use sluice_sync::DataType;

/// The status `deny` answers with when none is given.
pub const DEFAULT_DENY_STATUS: u16 = 403;

/// One rule: an action and the condition under which it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What the rule does.
    pub action: Action,
    /// When it does it; `None` means always.
    pub cond: Option<Condition>,
}

/// `if EXPR` or `unless EXPR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `unless`: the action runs when the expression is false.
    pub negate: bool,
    /// The expression.
    pub expr: Expr,
}

/// What a rule does. Only `Allow`, `Deny`, `Reject` and `Tarpit` end the evaluation of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `track-scN KEY table NAME`: from now on `scN_*` reads, and events count into, the entry
    /// of `table` for `key`.
    TrackSc {
        /// The stick counter, 0..=2.
        sc: u8,
        /// What the entry is keyed by.
        key: TrackKey,
        /// The table name.
        table: String,
    },
    /// `allow`: stop evaluating this stage and let the connection or request through.
    Allow,
    /// `deny [status N]`: answer with an error status (403 unless given).
    Deny {
        /// The status code, 400..=599.
        status: u16,
    },
    /// `reject`: close the connection without an answer.
    Reject,
    /// `tarpit D`: hold the request for `D`, then answer 429.
    Tarpit(Duration),
    /// `sc-inc-gpc0 N`: add one to `gpc0` (and `gpc0_rate`) of the entry tracked by scN.
    IncGpc0 {
        /// The stick counter.
        sc: u8,
    },
    /// `sc-set-gpt0 N V`: set `gpt0` of the entry tracked by scN.
    SetGpt0 {
        /// The stick counter.
        sc: u8,
        /// The value written.
        value: u64,
    },
}

impl Action {
    /// Whether the action ends the evaluation of its stage.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Action::Allow | Action::Deny { .. } | Action::Reject | Action::Tarpit(_)
        )
    }
}

/// What a `track-scN` keys the table entry by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackKey {
    /// The client address (`ip` tables).
    Src,
    /// The first value of a request header (string or binary tables).
    Hdr(HeaderName),
    /// The request path, without the query string.
    Path,
    /// The first value of a query-string parameter, as sent (not percent-decoded).
    Query(String),
}

/// A boolean expression over fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// True when every child is true; evaluated left to right, stops at the first false.
    And(Vec<Expr>),
    /// True when any child is true; evaluated left to right, stops at the first true.
    Or(Vec<Expr>),
    /// True when the child is false.
    Not(Box<Expr>),
    /// `fetch OP value`: false when the fetch yields nothing.
    Cmp {
        /// The fetch on the left.
        fetch: Fetch,
        /// The operator.
        op: CmpOp,
        /// The constant on the right.
        value: Value,
    },
    /// A bare fetch: true when it yields a non-zero number or a non-empty string.
    Present(Fetch),
}

impl Expr {
    /// Every fetch of the expression, in text order.
    pub fn fetches(&self) -> Vec<&Fetch> {
        let mut out = Vec::new();
        self.collect_fetches(&mut out);
        out
    }

    fn collect_fetches<'a>(&'a self, out: &mut Vec<&'a Fetch>) {
        match self {
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.collect_fetches(out)),
            Expr::Not(e) => e.collect_fetches(out),
            Expr::Cmp { fetch, .. } | Expr::Present(fetch) => out.push(fetch),
        }
    }
}

/// A value taken from the connection, the request or a tracked entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// `scN_<type>`: a data type of the entry tracked by stick counter N.
    Sc {
        /// The stick counter.
        sc: u8,
        /// The data type read.
        ty: DataType,
    },
    /// The client address.
    Src,
    /// The request method, case-sensitive (`GET`).
    Method,
    /// The request path, without the query string.
    Path,
    /// The first value of a request header; the name is lowercase.
    Hdr(HeaderName),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `>` / `gt`
    Gt,
    /// `>=` / `ge`
    Ge,
    /// `<` / `lt`
    Lt,
    /// `<=` / `le`
    Le,
    /// `==` / `eq`
    Eq,
    /// `!=` / `ne`
    Ne,
}

impl CmpOp {
    /// The canonical symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    /// Parses a symbol or one of HAProxy's word synonyms.
    pub fn from_token(s: &str) -> Option<CmpOp> {
        Some(match s {
            ">" | "gt" => CmpOp::Gt,
            ">=" | "ge" => CmpOp::Ge,
            "<" | "lt" => CmpOp::Lt,
            "<=" | "le" => CmpOp::Le,
            "==" | "eq" => CmpOp::Eq,
            "!=" | "ne" => CmpOp::Ne,
            _ => return None,
        })
    }

    /// Applies the operator to two integers.
    pub fn compare(self, left: u64, right: u64) -> bool {
        match self {
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
        }
    }
}

/// The constant side of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A non-negative integer.
    Int(u64),
    /// A quoted string.
    Str(String),
    /// An address or network.
    Net(Cidr),
}

/// An IPv4 or IPv6 network. Both families live in one 128-bit space, IPv4 as IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`), so a v4 client that reaches a dual-stack socket as `::ffff:10.1.2.3`
/// matches `10.0.0.0/8`, and a v4-mapped network is the same value as its v4 spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address with host bits cleared.
    bits: u128,
    /// Prefix length in the 128-bit space (an IPv4 /8 is 104).
    prefix: u8,
}

/// `::ffff:0:0/96`, where IPv4 addresses live in the 128-bit space.
const V4_MAPPED: u128 = 0xffff_u128 << 32;

impl Cidr {
    /// The network of `addr` with `prefix` bits (at most 32 for IPv4, 128 for IPv6); host bits
    /// of `addr` are cleared. `None` if the prefix is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let (bits, prefix) = match addr {
            IpAddr::V4(a) if prefix <= 32 => (V4_MAPPED | u128::from(u32::from(a)), prefix + 96),
            IpAddr::V6(a) if prefix <= 128 => (u128::from(a), prefix),
            _ => return None,
        };
        Some(Cidr {
            bits: bits & mask(prefix),
            prefix,
        })
    }

    /// Whether `addr` is inside the network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        (to_bits(addr) ^ self.bits) & mask(self.prefix) == 0
    }

    fn is_v4(&self) -> bool {
        self.prefix >= 96 && self.bits & mask(96) == V4_MAPPED
    }
}

fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => V4_MAPPED | u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl std::str::FromStr for Cidr {
    type Err = ();

    /// `10.0.0.0/8`, `2001:db8::/32`, or a plain address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // Digits only: `u8::from_str` would also take `+8`.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                (a, Some(p.parse::<u8>().map_err(|_| ())?))
            }
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        let full = if addr.is_ipv4() { 32 } else { 128 };
        Cidr::new(addr, prefix.unwrap_or(full)).ok_or(())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_v4() {
            // Truncation keeps the low 32 bits, which hold the IPv4 address.
            let addr = Ipv4Addr::from(self.bits as u32);
            match self.prefix - 96 {
                32 => write!(f, "{addr}"),
                p => write!(f, "{addr}/{p}"),
            }
        } else {
            let addr = Ipv6Addr::from(self.bits);
            match self.prefix {
                128 => write!(f, "{addr}"),
                p => write!(f, "{addr}/{p}"),
            }
        }
    }
}

// === canonical text ===

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action)?;
        if let Some(c) = &self.cond {
            write!(f, " {} {}", if c.negate { "unless" } else { "if" }, c.expr)?;
        }
        Ok(())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::TrackSc { sc, key, table } => write!(f, "track-sc{sc} {key} table {table}"),
            Action::Allow => f.write_str("allow"),
            Action::Deny {
                status: DEFAULT_DENY_STATUS,
            } => f.write_str("deny"),
            Action::Deny { status } => write!(f, "deny status {status}"),
            Action::Reject => f.write_str("reject"),
            Action::Tarpit(d) => write!(f, "tarpit {}", DurationText(*d)),
            Action::IncGpc0 { sc } => write!(f, "sc-inc-gpc0 {sc}"),
            Action::SetGpt0 { sc, value } => write!(f, "sc-set-gpt0 {sc} {value}"),
        }
    }
}

/// A duration as one word that humantime parses back exactly (`humantime::format_duration`
/// writes `1s 500ms`, which is two words).
struct DurationText(Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl fmt::Display for TrackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackKey::Src => f.write_str("src"),
            TrackKey::Hdr(name) => write!(f, "hdr({name})"),
            TrackKey::Path => f.write_str("path"),
            TrackKey::Query(name) => write!(f, "query({name})"),
        }
    }
}

impl fmt::Display for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fetch::Sc { sc, ty } => write!(f, "sc{sc}_{ty}"),
            Fetch::Src => f.write_str("src"),
            Fetch::Method => f.write_str("method"),
            Fetch::Path => f.write_str("path"),
            Fetch::Hdr(name) => write!(f, "hdr({name})"),
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Net(c) => write!(f, "{c}"),
            Value::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `and` binds tighter than `or`, so only an `or` (or, in a hand-built tree, a nested
            // `and`) needs parentheses inside an `and`.
            Expr::And(children) => join(f, children, " and ", |e| {
                matches!(e, Expr::And(_) | Expr::Or(_))
            }),
            Expr::Or(children) => join(f, children, " or ", |e| matches!(e, Expr::Or(_))),
            Expr::Not(e) => {
                f.write_str("not ")?;
                group(f, e, matches!(**e, Expr::And(_) | Expr::Or(_)))
            }
            Expr::Cmp { fetch, op, value } => write!(f, "{fetch} {op} {value}"),
            Expr::Present(fetch) => write!(f, "{fetch}"),
        }
    }
}

fn join(
    f: &mut fmt::Formatter<'_>,
    children: &[Expr],
    sep: &str,
    paren: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, e) in children.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        group(f, e, paren(e))?;
    }
    Ok(())
}

fn group(f: &mut fmt::Formatter<'_>, e: &Expr, paren: bool) -> fmt::Result {
    if paren {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}
