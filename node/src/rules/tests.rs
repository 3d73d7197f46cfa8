//! Tests of the rules language: parsing, error columns, validation against tables, evaluation
//! and rate-threshold detection, plus property tests of the parser.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use http::HeaderName;
use proptest::prelude::*;
use sluice_sync::{DataType, TableSchema};

use super::eval::Verdict;
use super::*;

// === helpers ===

fn rule(text: &str) -> Rule {
    match parse_rule(text) {
        Ok(r) => r,
        Err(e) => panic!("`{text}` should parse: {e}"),
    }
}

fn cond(text: &str) -> Expr {
    rule(&format!("allow if {text}"))
        .cond
        .expect("has a condition")
        .expr
}

fn parse_err(text: &str) -> ParseError {
    match parse_rule(text) {
        Ok(r) => panic!("`{text}` should not parse, got {r:?}"),
        Err(e) => e,
    }
}

/// The 1-based column of the first occurrence of `needle` in `text`.
fn col(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in `{text}`"));
    text[..at].chars().count() + 1
}

fn hdr(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("valid header name")
}

fn sc(sc: u8, ty: DataType) -> Fetch {
    Fetch::Sc { sc, ty }
}

fn cmp(fetch: Fetch, op: CmpOp, value: Value) -> Expr {
    Expr::Cmp { fetch, op, value }
}

fn table(name: &str, key: &str, store: &[&str]) -> TableSchema {
    let store = TableSchema::parse_store(store).expect("valid store");
    let key = key.parse().expect("valid key type");
    TableSchema::new(name, key, 1000, Duration::from_secs(60), store, true).expect("valid schema")
}

fn tables() -> Vec<TableSchema> {
    vec![
        table(
            "per_ip",
            "ip",
            &[
                "http_req_rate(10s)",
                "conn_rate(1s)",
                "conn_cur",
                "gpc0",
                "gpt0",
                "bytes_in_rate(1s)",
            ],
        ),
        table(
            "per_ip_slow",
            "ip",
            &["http_req_rate(1m)", "http_err_rate(10s)", "gpc0_rate(1m)"],
        ),
        table("per_key", "string(64)", &["http_req_rate(10s)"]),
        table("per_path", "binary(128)", &["http_req_cnt"]),
        table("by_id", "integer", &["gpc0"]),
    ]
}

fn compile(stage: Stage, rules: &[&str]) -> Result<RuleSet, RuleError> {
    let tables = tables();
    RuleSet::compile(stage, rules, &TrackedCounters::default(), |n| {
        tables.iter().find(|t| t.name == n)
    })
}

fn frontend(connection: &[&str], request: &[&str]) -> Result<FrontendRules, RuleError> {
    let tables = tables();
    FrontendRules::compile(connection, request, |n| tables.iter().find(|t| t.name == n))
}

fn compile_err(stage: Stage, rules: &[&str]) -> RuleError {
    match compile(stage, rules) {
        Ok(_) => panic!("{rules:?} should not compile"),
        Err(e) => e,
    }
}

/// A stand-in for the proxy, which implements `Facts` and `Effects` over a real connection and
/// its tracked table entries; this one holds the values a test sets and logs what rules do.
#[derive(Debug, Default)]
struct Fake {
    src: Option<IpAddr>,
    method: Option<String>,
    path: Option<String>,
    headers: Vec<(HeaderName, Vec<u8>)>,
    /// Values of tracked entries; `sc()` sees them only once the counter is tracked.
    values: HashMap<(u8, DataType), u64>,
    tracked: [bool; 3],
    /// Every `sc()` call, to check short-circuiting.
    reads: usize,
    log: Vec<String>,
}

impl Fake {
    fn request(method: &str, path: &str) -> Fake {
        Fake {
            method: Some(method.into()),
            path: Some(path.into()),
            ..Fake::default()
        }
    }

    fn with(mut self, sc: u8, ty: DataType, v: u64) -> Fake {
        self.values.insert((sc, ty), v);
        self.tracked[usize::from(sc)] = true;
        self
    }

    fn from(mut self, addr: &str) -> Fake {
        self.src = Some(addr.parse().expect("address"));
        self
    }

    fn header(mut self, name: &str, value: &str) -> Fake {
        self.headers.push((hdr(name), value.as_bytes().to_vec()));
        self
    }
}

impl Facts for Fake {
    fn sc(&mut self, sc: u8, ty: DataType) -> Option<u64> {
        self.reads += 1;
        if !self.tracked.get(usize::from(sc)).copied().unwrap_or(false) {
            return None;
        }
        self.values.get(&(sc, ty)).copied()
    }

    fn src(&self) -> IpAddr {
        self.src.unwrap_or(IpAddr::from([192, 0, 2, 1]))
    }

    fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Effects for Fake {
    fn track(&mut self, rule: usize, sc: u8, key: &TrackKey, table: &str) {
        let slot = &mut self.tracked[usize::from(sc)];
        if !*slot {
            *slot = true;
            self.log
                .push(format!("{rule}: track-sc{sc} {key} table {table}"));
        }
    }

    fn inc_gpc0(&mut self, sc: u8) {
        self.log.push(format!("inc-gpc0 {sc}"));
        *self.values.entry((sc, DataType::Gpc0)).or_default() += 1;
    }

    fn set_gpt0(&mut self, sc: u8, value: u64) {
        self.log.push(format!("set-gpt0 {sc} {value}"));
        self.values.insert((sc, DataType::Gpt0), value);
    }
}

// === parsing ===

#[test]
fn every_action_parses() {
    let cases: &[(&str, Action)] = &[
        (
            "track-sc0 src table per_ip",
            Action::TrackSc {
                sc: 0,
                key: TrackKey::Src,
                table: "per_ip".into(),
            },
        ),
        (
            "track-sc1 hdr(X-Api-Key) table k",
            Action::TrackSc {
                sc: 1,
                key: TrackKey::Hdr(hdr("x-api-key")),
                table: "k".into(),
            },
        ),
        (
            "track-sc2 path table p",
            Action::TrackSc {
                sc: 2,
                key: TrackKey::Path,
                table: "p".into(),
            },
        ),
        (
            "track-sc0 query(token) table q",
            Action::TrackSc {
                sc: 0,
                key: TrackKey::Query("token".into()),
                table: "q".into(),
            },
        ),
        ("allow", Action::Allow),
        ("deny", Action::Deny { status: 403 }),
        ("deny status 429", Action::Deny { status: 429 }),
        ("deny status 503", Action::Deny { status: 503 }),
        ("reject", Action::Reject),
        ("tarpit 2s", Action::Tarpit(Duration::from_secs(2))),
        ("tarpit 1500ms", Action::Tarpit(Duration::from_millis(1500))),
        ("tarpit 1m", Action::Tarpit(Duration::from_secs(60))),
        ("sc-inc-gpc0 0", Action::IncGpc0 { sc: 0 }),
        ("sc-inc-gpc0 2", Action::IncGpc0 { sc: 2 }),
        ("sc-set-gpt0 1 42", Action::SetGpt0 { sc: 1, value: 42 }),
    ];
    for (text, action) in cases {
        assert_eq!(
            rule(text),
            Rule {
                action: action.clone(),
                cond: None
            },
            "{text}"
        );
        assert!(
            action.is_terminal()
                == matches!(
                    action,
                    Action::Allow | Action::Deny { .. } | Action::Reject | Action::Tarpit(_)
                )
        );
    }
}

#[test]
fn every_fetch_parses() {
    for &ty in DataType::ALL {
        for n in 0..=2u8 {
            let text = format!("sc{n}_{ty} > 7");
            assert_eq!(
                cond(&text),
                cmp(sc(n, ty), CmpOp::Gt, Value::Int(7)),
                "{text}"
            );
        }
    }
    assert_eq!(
        cond("src == 10.0.0.0/8"),
        cmp(
            Fetch::Src,
            CmpOp::Eq,
            Value::Net("10.0.0.0/8".parse().expect("cidr"))
        )
    );
    assert_eq!(
        cond("method == \"POST\""),
        cmp(Fetch::Method, CmpOp::Eq, Value::Str("POST".into()))
    );
    assert_eq!(
        cond("path != \"/login\""),
        cmp(Fetch::Path, CmpOp::Ne, Value::Str("/login".into()))
    );
    assert_eq!(
        cond("hdr(Host) == \"example.com\""),
        cmp(
            Fetch::Hdr(hdr("host")),
            CmpOp::Eq,
            Value::Str("example.com".into())
        )
    );
    assert_eq!(cond("sc0_gpc0"), Expr::Present(sc(0, DataType::Gpc0)));
    assert_eq!(
        cond("hdr(x-debug)"),
        Expr::Present(Fetch::Hdr(hdr("x-debug")))
    );
    // No spaces are needed around operators.
    assert_eq!(
        cond("sc0_gpc0>0"),
        cmp(sc(0, DataType::Gpc0), CmpOp::Gt, Value::Int(0))
    );
    assert_eq!(
        cond("src!=::1"),
        cmp(
            Fetch::Src,
            CmpOp::Ne,
            Value::Net("::1".parse().expect("cidr"))
        )
    );
}

#[test]
fn operator_synonyms() {
    let pairs = [
        (">", "gt", CmpOp::Gt),
        (">=", "ge", CmpOp::Ge),
        ("<", "lt", CmpOp::Lt),
        ("<=", "le", CmpOp::Le),
        ("==", "eq", CmpOp::Eq),
        ("!=", "ne", CmpOp::Ne),
    ];
    for (sym, word, op) in pairs {
        let expected = cmp(sc(0, DataType::ConnCur), op, Value::Int(5));
        assert_eq!(cond(&format!("sc0_conn_cur {sym} 5")), expected);
        assert_eq!(cond(&format!("sc0_conn_cur {word} 5")), expected);
        assert_eq!(op.symbol(), sym);
    }
    assert_eq!(
        cond("method eq \"GET\""),
        cmp(Fetch::Method, CmpOp::Eq, Value::Str("GET".into()))
    );
}

#[test]
fn precedence_is_not_then_and_then_or() {
    let a = || Expr::Present(sc(0, DataType::Gpc0));
    let b = || Expr::Present(sc(1, DataType::Gpc0));
    let c = || Expr::Present(sc(2, DataType::Gpc0));
    assert_eq!(
        cond("sc0_gpc0 or sc1_gpc0 and not sc2_gpc0"),
        Expr::Or(vec![a(), Expr::And(vec![b(), Expr::Not(Box::new(c()))])])
    );
    assert_eq!(
        cond("not sc0_gpc0 and sc1_gpc0 or sc2_gpc0"),
        Expr::Or(vec![Expr::And(vec![Expr::Not(Box::new(a())), b()]), c()])
    );
    assert_eq!(
        cond("(sc0_gpc0 or sc1_gpc0) and sc2_gpc0"),
        Expr::And(vec![Expr::Or(vec![a(), b()]), c()])
    );
    assert_eq!(
        cond("not (sc0_gpc0 or sc1_gpc0)"),
        Expr::Not(Box::new(Expr::Or(vec![a(), b()])))
    );
    assert_eq!(
        cond("not not sc0_gpc0"),
        Expr::Not(Box::new(Expr::Not(Box::new(a()))))
    );
}

#[test]
fn chains_and_groups_of_one_operator_flatten() {
    let a = || Expr::Present(sc(0, DataType::Gpc0));
    let b = || Expr::Present(sc(1, DataType::Gpc0));
    let c = || Expr::Present(sc(2, DataType::Gpc0));
    let flat = Expr::And(vec![a(), b(), c()]);
    assert_eq!(cond("sc0_gpc0 and sc1_gpc0 and sc2_gpc0"), flat);
    assert_eq!(cond("sc0_gpc0 and (sc1_gpc0 and sc2_gpc0)"), flat);
    assert_eq!(cond("((sc0_gpc0) and ((sc1_gpc0)) and sc2_gpc0)"), flat);
    assert_eq!(
        cond("sc0_gpc0 or (sc1_gpc0 or sc2_gpc0)"),
        Expr::Or(vec![a(), b(), c()])
    );
}

#[test]
fn unless_negates_and_header_names_fold_case() {
    let r = rule("deny unless hdr(X-Token) == \"s3cret\"");
    let c = r.cond.expect("condition");
    assert!(c.negate);
    assert_eq!(
        c.expr,
        cmp(
            Fetch::Hdr(hdr("x-token")),
            CmpOp::Eq,
            Value::Str("s3cret".into())
        )
    );
    assert_eq!(rule("deny if hdr(HOST)"), rule("deny if hdr(host)"));
    // Values are case-sensitive: methods and paths are.
    assert_ne!(cond("method == \"GET\""), cond("method == \"get\""));
}

#[test]
fn strings_take_escapes_and_any_characters() {
    assert_eq!(
        cond(r#"path == "/a \"b\" \\c""#),
        cmp(Fetch::Path, CmpOp::Eq, Value::Str(r#"/a "b" \c"#.into()))
    );
    assert_eq!(
        cond("path == \"/caf\u{e9} if and or\""),
        cmp(
            Fetch::Path,
            CmpOp::Eq,
            Value::Str("/caf\u{e9} if and or".into())
        )
    );
    assert_eq!(
        cond("path == \"\""),
        cmp(Fetch::Path, CmpOp::Eq, Value::Str(String::new()))
    );
}

#[test]
fn canonical_text_round_trips() {
    for text in [
        "track-sc0 src table per_ip",
        "track-sc1 hdr(x-api-key) table per_key if method == \"POST\"",
        "deny",
        "deny status 429 if sc0_http_req_rate > 100",
        "tarpit 2s if sc0_gpc0 > 0",
        "tarpit 1500ms",
        "sc-inc-gpc0 0 if sc0_http_err_rate > 10",
        "sc-set-gpt0 2 7 unless src == 10.0.0.0/8",
        "reject if sc0_conn_rate > 200 or sc0_conn_cur >= 20",
        "allow if (src == 192.0.2.1 or src == 2001:db8::/32) and not hdr(x-bad)",
        "deny if not (sc0_gpc0 > 0 and sc1_gpc0 > 0)",
        "deny if path == \"/a \\\"b\\\"\"",
    ] {
        assert_eq!(rule(text).to_string(), text);
    }
    // Synonyms, spacing and redundant parentheses print canonically.
    assert_eq!(
        rule("deny  status 403 if ((sc0_gpc0 gt 0))").to_string(),
        "deny if sc0_gpc0 > 0"
    );
    assert_eq!(
        rule("deny if src eq ::ffff:10.1.2.3/104").to_string(),
        "deny if src == 10.0.0.0/8"
    );
}

// === parse errors ===

#[test]
fn the_spec_example_error_reads_as_documented() {
    let e = parse_err("deny if sc0_conn_rate => 5");
    assert_eq!(
        e.to_string(),
        "column 23: expected a comparison operator (> >= < <= == != gt ge lt le eq ne), found \"=>\""
    );
}

#[test]
fn error_columns_point_at_the_offending_text() {
    // (rule, the text the column must point at, or "" for the end, a fragment of the message)
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            "",
            "expected an action (track-sc0, track-sc1, track-sc2, allow, deny, reject, tarpit, sc-inc-gpc0, sc-set-gpt0), found end of rule",
        ),
        ("block if src == 10.0.0.1", "block", "expected an action"),
        ("  drop", "drop", "expected an action"),
        ("deny if method == \"GET", "\"GET", "unterminated string"),
        ("deny if path == \"/x\\\"", "\"/x", "unterminated string"),
        (
            "track-sc0 src per_ip",
            "per_ip",
            "expected `table`, found \"per_ip\"",
        ),
        (
            "track-sc0 src table",
            "",
            "expected a table name, found end of rule",
        ),
        (
            "track-sc3 src table t",
            "3",
            "stick counter 3 is out of range (0, 1 or 2)",
        ),
        (
            "track-sc src table t",
            "track-sc",
            "expected track-sc0, track-sc1 or track-sc2",
        ),
        ("track-sc0 ip table t", "ip", "expected a track key"),
        (
            "track-sc0 hdr table t",
            "table",
            "expected `(` and a header name right after `hdr`",
        ),
        (
            "track-sc0 hdr() table t",
            ")",
            "expected a header name, found \")\"",
        ),
        ("track-sc0 hdr(a b) table t", "b)", "expected `)`"),
        (
            "track-sc0 hdr(a:b) table t",
            "a:b",
            "`a:b` is not a valid header name",
        ),
        (
            "deny status 999",
            "999",
            "deny status 999 is not an error status (expected 400..=599)",
        ),
        ("deny status 200", "200", "not an error status"),
        (
            "deny status",
            "",
            "expected a status code (400..=599), found end of rule",
        ),
        ("deny status abc", "abc", "expected a status code"),
        (
            "deny if src == 10.0.0.0/33",
            "10.0.0.0/33",
            "`10.0.0.0/33` is not an address or network",
        ),
        (
            "deny if src == 10.0.0",
            "10.0.0",
            "is not an address or network",
        ),
        (
            "deny if src == \"10.0.0.1\"",
            "\"10",
            "expected an address or network",
        ),
        (
            "deny if src > 10.0.0.1",
            ">",
            "`src` takes == or != only, not `>`",
        ),
        (
            "deny if method ge \"GET\"",
            "ge",
            "`method` takes == or != only, not `ge`",
        ),
        (
            "deny if method == GET",
            "GET",
            "expected a quoted string (e.g. \"GET\"), found \"GET\"",
        ),
        ("deny if sc0_gpc0 > \"1\"", "\"1\"", "expected an integer"),
        ("deny if sc0_gpc0 > -1", "-1", "expected an integer"),
        (
            "deny if sc0_gpc0 > 99999999999999999999",
            "999",
            "integer `99999999999999999999` is out of range",
        ),
        (
            "deny if sc0_http_req_rat > 1",
            "http_req_rat",
            "unknown data type `http_req_rat`",
        ),
        ("deny if sc5_gpc0", "5", "stick counter 5 is out of range"),
        (
            "deny if sc0 > 1",
            ">",
            "expected `_` and a data type after scN",
        ),
        (
            "deny if sc0_gpc0 = 1",
            "=",
            "expected a comparison operator",
        ),
        (
            "deny if sc0_gpc0 is 1",
            "is",
            "expected a comparison operator (> >= < <= == != gt ge lt le eq ne), `and`, `or` or the end of the rule, found \"is\"",
        ),
        (
            "deny if foo > 1",
            "foo",
            "expected a fetch (scN_<type>, src, method, path, hdr(NAME)), `not` or `(`, found \"foo\"",
        ),
        ("deny if", "", "expected a fetch"),
        ("deny if sc0_gpc0 and", "", "expected a fetch"),
        (
            "deny if (sc0_gpc0 > 0",
            "",
            "expected `)`, `and` or `or`, found end of rule",
        ),
        (
            "deny if (sc0_gpc0 > 0 foo)",
            "foo",
            "expected `and`, `or`, `)` or the end of the rule",
        ),
        (
            "allow if src == 10.0.0.1 )",
            ")",
            "expected `and`, `or` or the end of the rule, found \")\"",
        ),
        (
            "allow if src == 10.0.0.1 extra",
            "extra",
            "expected `and`, `or` or the end of the rule",
        ),
        (
            "deny foo",
            "foo",
            "expected `status`, `if`, `unless` or the end of the rule, found \"foo\"",
        ),
        (
            "reject now",
            "now",
            "expected `if`, `unless` or the end of the rule",
        ),
        ("tarpit", "", "expected a duration"),
        ("tarpit soon", "soon", "bad duration `soon`"),
        ("tarpit 0s", "0s", "must be greater than zero"),
        ("tarpit 2h", "2h", "must be at most 1h"),
        (
            "sc-inc-gpc0",
            "",
            "expected a stick counter number (0, 1 or 2), found end of rule",
        ),
        ("sc-inc-gpc0 x", "x", "expected a stick counter number"),
        ("sc-inc-gpc0(0)", "(", "expected a stick counter number"),
        ("sc-set-gpt0 0", "", "expected the value to set"),
        ("sc-set-gpt0 3 1", "3", "stick counter 3 is out of range"),
        (
            "deny if hdr(x) == \"\u{e9}\u{e9}\" junk",
            "junk",
            "expected `and`",
        ),
    ];
    for &(text, at, message) in cases {
        let e = parse_err(text);
        let column = if at.is_empty() {
            text.chars().count() + 1
        } else {
            col(text, at)
        };
        assert_eq!(e.column, column, "column for `{text}`: {e}");
        assert!(
            e.to_string().contains(message),
            "`{text}`: got `{e}`, wanted `{message}`"
        );
        assert!(
            e.to_string().starts_with(&format!("column {column}: ")),
            "{e}"
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let ok = format!(
        "deny if {}sc0_gpc0{}",
        "(".repeat(MAX_DEPTH),
        ")".repeat(MAX_DEPTH)
    );
    assert!(parse_rule(&ok).is_ok());
    let deep = format!(
        "deny if {}sc0_gpc0{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    let e = parse_err(&deep);
    assert_eq!(e.kind, ParseErrorKind::TooDeep);
    assert_eq!(e.column, 9 + MAX_DEPTH);
    let nots = format!("deny if {}sc0_gpc0", "not ".repeat(100_000));
    assert_eq!(parse_err(&nots).kind, ParseErrorKind::TooDeep);
}

// === networks ===

#[test]
fn cidr_matching_covers_v4_v6_and_v4_mapped() {
    let net = |s: &str| -> Cidr { s.parse().unwrap_or_else(|()| panic!("`{s}` should parse")) };
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let v4 = net("10.0.0.0/8");
    assert!(v4.contains(ip("10.255.1.2")));
    assert!(!v4.contains(ip("11.0.0.1")));
    assert!(
        v4.contains(ip("::ffff:10.1.2.3")),
        "a v4 client on a dual-stack socket"
    );
    assert!(
        !v4.contains(ip("::a01:203")),
        "a v4-compatible (not mapped) v6 address is v6"
    );
    assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
    assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
    assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
    assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
    assert!(net("::/0").contains(ip("2001:db8::1")));
    assert!(
        net("::/0").contains(ip("203.0.113.9")),
        "every address is in the whole 128-bit space"
    );
    let v6 = net("2001:db8::/32");
    assert!(v6.contains(ip("2001:db8:ffff::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    assert!(!v6.contains(ip("10.0.0.1")));
    assert!(net("::1").contains(ip("::1")));
    assert_eq!(
        net("::ffff:10.0.0.0/104"),
        v4,
        "a v4-mapped network is its v4 spelling"
    );
    assert_eq!(net("10.1.2.3/8"), v4, "host bits are cleared");
    assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
    assert_eq!(net("192.0.2.7/32").to_string(), "192.0.2.7");
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/8/8",
        "host",
        "",
        "/8",
        "10.0.0.0/0008",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "`{bad}` should not parse");
    }
}

// === validation ===

#[test]
fn valid_frontends_compile() {
    let fe = frontend(
        &[
            "track-sc0 src table per_ip",
            "reject if sc0_conn_rate > 200",
            "reject if sc0_conn_cur > 20",
        ],
        &[
            "track-sc1 hdr(x-api-key) table per_key",
            "track-sc2 path table per_path",
            "deny status 429 if sc0_http_req_rate > 100 or sc1_http_req_rate > 1000",
            "sc-inc-gpc0 0 if sc0_bytes_in_rate > 1000000",
            "sc-set-gpt0 0 1 if sc2_http_req_cnt > 5",
            "tarpit 1s if sc0_gpc0 > 0",
            "allow if src == 10.0.0.0/8",
        ],
    )
    .expect("compiles");
    assert_eq!(fe.connection.stage(), Stage::Connection);
    assert_eq!(fe.request.rules().len(), 7);
    assert_eq!(
        fe.request.rules()[2].text,
        "deny status 429 if sc0_http_req_rate > 100 or sc1_http_req_rate > 1000"
    );
    assert_eq!(fe.request.tracked().tables(0), ["per_ip"]);
    assert_eq!(fe.request.tracked().tables(1), ["per_key"]);
    assert!(fe.connection.tracked().is_tracked(0) && !fe.connection.tracked().is_tracked(1));
    assert!(RuleSet::empty(Stage::Request).is_empty());
}

#[test]
fn rule_errors_name_stage_index_and_column() {
    let e = frontend(
        &["track-sc0 src table per_ip"],
        &["deny if sc0_conn_cur > 1", "deny if sc0_gpc1 > 0"],
    )
    .expect_err("gpc1");
    assert_eq!((e.stage, e.index, e.column), (Stage::Request, 1, 9));
    assert_eq!(
        e.to_string(),
        "request[1]: column 9: table `per_ip` does not store `gpc1`; add `gpc1` to its store"
    );
    assert_eq!(
        e.detail(),
        "column 9: table `per_ip` does not store `gpc1`; add `gpc1` to its store"
    );
    let e = frontend(&["track-sc0 src tabel per_ip"], &[]).expect_err("syntax");
    assert_eq!(
        e.to_string(),
        "connection[0]: column 15: expected `table`, found \"tabel\""
    );
    assert!(matches!(
        e.kind,
        RuleErrorKind::Syntax(ParseErrorKind::Expected { .. })
    ));
}

#[test]
fn unknown_tables_are_refused() {
    let e = compile_err(Stage::Request, &["allow", "track-sc0 src table per_ipp"]);
    assert_eq!((e.index, e.column), (1, 21));
    assert_eq!(e.kind, RuleErrorKind::UnknownTable("per_ipp".into()));
    assert_eq!(e.kind.to_string(), "unknown table `per_ipp`");
}

#[test]
fn unstored_data_types_are_refused_with_a_hint() {
    let e = compile_err(
        Stage::Request,
        &[
            "track-sc0 src table per_ip",
            "deny if src == 10.0.0.1 or sc0_http_err_rate > 5",
        ],
    );
    assert_eq!(
        e.column,
        col("deny if src == 10.0.0.1 or sc0_http_err_rate > 5", "sc0_")
    );
    assert_eq!(
        e.kind.to_string(),
        "table `per_ip` does not store `http_err_rate`; add `http_err_rate(10s)` to its store"
    );
    // Bare fetches are checked too.
    let e = compile_err(Stage::Request, &["track-sc0 src table per_key_ip_missing"]);
    assert!(matches!(e.kind, RuleErrorKind::UnknownTable(_)));
    let e = compile_err(
        Stage::Request,
        &["track-sc0 src table per_ip", "deny if sc0_server_id"],
    );
    assert!(matches!(
        e.kind,
        RuleErrorKind::NotStored {
            ty: DataType::ServerId,
            ..
        }
    ));
}

#[test]
fn every_table_a_counter_may_track_must_store_the_type() {
    let rules = [
        "track-sc0 src table per_ip if src == 10.0.0.0/8",
        "track-sc0 src table per_ip_slow",
        "deny if sc0_http_req_rate > 5",
    ];
    let set = compile(Stage::Request, &rules).expect("both store http_req_rate");
    assert_eq!(set.tracked().tables(0), ["per_ip", "per_ip_slow"]);
    let rules = [
        "track-sc0 src table per_ip if src == 10.0.0.0/8",
        "track-sc0 src table per_ip_slow",
        "deny if sc0_gpc0 > 5",
    ];
    let e = compile_err(Stage::Request, &rules);
    assert_eq!(
        e.kind.to_string(),
        "table `per_ip_slow` does not store `gpc0`; add `gpc0` to its store"
    );
}

#[test]
fn counters_must_be_tracked_by_an_earlier_rule() {
    let e = compile_err(
        Stage::Request,
        &["deny if sc0_gpc0 > 0", "track-sc0 src table per_ip"],
    );
    assert_eq!((e.index, e.column), (0, 9));
    assert_eq!(e.kind, RuleErrorKind::NotTracked(0));
    assert!(
        e.kind
            .to_string()
            .starts_with("sc0 is not tracked by any earlier rule")
    );
    // A track's own condition runs before it tracks.
    let e = compile_err(
        Stage::Request,
        &["track-sc1 src table per_ip if sc1_gpc0 > 0"],
    );
    assert_eq!(e.kind, RuleErrorKind::NotTracked(1));
    // Tracking sc0 says nothing about sc1.
    let e = compile_err(
        Stage::Request,
        &["track-sc0 src table per_ip", "deny if sc1_gpc0 > 0"],
    );
    assert_eq!(e.kind, RuleErrorKind::NotTracked(1));
    let e = compile_err(Stage::Request, &["sc-inc-gpc0 2"]);
    assert_eq!(
        (e.column, e.kind.clone()),
        (13, RuleErrorKind::NotTracked(2))
    );
    let e = compile_err(Stage::Request, &["sc-set-gpt0 1 5"]);
    assert_eq!(
        (e.column, e.kind.clone()),
        (13, RuleErrorKind::NotTracked(1))
    );
}

#[test]
fn connection_stage_tracks_are_visible_to_request_rules() {
    frontend(
        &["track-sc0 src table per_ip"],
        &["deny if sc0_gpc0 > 0", "sc-inc-gpc0 0"],
    )
    .expect("visible");
    let e = frontend(&[], &["deny if sc0_gpc0 > 0"]).expect_err("nothing tracked");
    assert_eq!(e.kind, RuleErrorKind::NotTracked(0));
    // But request tracks are not visible at the connection stage, which runs first.
    let tables = tables();
    let lookup = |n: &str| tables.iter().find(|t| t.name == n);
    let req = RuleSet::compile(
        Stage::Request,
        &["track-sc0 src table per_ip"],
        &TrackedCounters::default(),
        lookup,
    )
    .expect("ok");
    assert!(req.tracked().is_tracked(0));
    let conn = RuleSet::compile(
        Stage::Connection,
        &["reject if sc0_conn_cur > 5"],
        &TrackedCounters::default(),
        lookup,
    );
    assert_eq!(
        conn.expect_err("untracked").kind,
        RuleErrorKind::NotTracked(0)
    );
}

#[test]
fn track_keys_must_fit_the_table_key_type() {
    let cases: &[(&str, &str)] = &[
        (
            "track-sc0 src table per_key",
            "`src` needs a table with key = \"ip\", but table `per_key` has key = \"string(64)\"",
        ),
        (
            "track-sc0 src table by_id",
            "`src` needs a table with key = \"ip\", but table `by_id` has key = \"integer\"",
        ),
        (
            "track-sc0 hdr(x-api-key) table per_ip",
            "`hdr(x-api-key)` needs a table with key = \"string(N)\" or \"binary(N)\", but table `per_ip` has key = \"ip\"",
        ),
        (
            "track-sc0 path table by_id",
            "`path` needs a table with key = \"string(N)\" or \"binary(N)\", but table `by_id` has key = \"integer\"",
        ),
        ("track-sc0 query(k) table per_ip", "`query(k)` needs"),
    ];
    for &(text, message) in cases {
        let e = compile_err(Stage::Request, &[text]);
        assert_eq!(e.column, 11, "{text}");
        assert!(
            e.kind.to_string().starts_with(message),
            "{text}: {}",
            e.kind
        );
    }
    compile(
        Stage::Request,
        &[
            "track-sc0 hdr(x-api-key) table per_key",
            "track-sc1 path table per_path",
            "track-sc2 query(k) table per_key",
        ],
    )
    .expect("string and binary tables take header, path and query keys");
}

#[test]
fn the_connection_stage_has_no_request() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "reject if method == \"GET\"",
            "method",
            "`method` is not available at the connection stage",
        ),
        ("reject if path == \"/\"", "path", "`path` is not available"),
        (
            "reject if src == 10.0.0.0/8 and hdr(host)",
            "hdr",
            "`hdr(host)` is not available",
        ),
        (
            "track-sc0 hdr(x-api-key) table per_key",
            "hdr",
            "the track key `hdr(x-api-key)` is not available",
        ),
        (
            "track-sc0 path table per_path",
            "path",
            "the track key `path`",
        ),
        (
            "track-sc0 query(k) table per_key",
            "query",
            "the track key `query(k)`",
        ),
        (
            "tarpit 1s",
            "tarpit",
            "`tarpit` is not available at the connection stage (there is no request to hold); use `reject`",
        ),
        (
            "deny status 429",
            "deny",
            "`deny` is not available at the connection stage (there is no request to answer); use `reject`",
        ),
    ];
    for &(text, at, message) in cases {
        let e = compile_err(Stage::Connection, &[text]);
        assert_eq!(e.column, col(text, at), "{text}");
        assert!(
            e.kind.to_string().starts_with(message),
            "{text}: {}",
            e.kind
        );
        compile(Stage::Request, &[text]).expect("fine at the request stage");
    }
    compile(
        Stage::Connection,
        &[
            "track-sc0 src table per_ip",
            "allow if src == 10.0.0.0/8",
            "sc-inc-gpc0 0 if sc0_conn_rate > 10",
            "sc-set-gpt0 0 1",
            "reject if sc0_gpc0",
        ],
    )
    .expect("src, counters, allow, reject and sc-* work on accept");
}

#[test]
fn gpc0_and_gpt0_writes_need_somewhere_to_go() {
    let e = compile_err(
        Stage::Request,
        &["track-sc1 hdr(x) table per_key", "sc-inc-gpc0 1"],
    );
    assert_eq!((e.index, e.column), (1, 13));
    assert_eq!(
        e.kind.to_string(),
        "table `per_key` (tracked by sc1) stores neither gpc0 nor gpc0_rate; add `gpc0` to its store"
    );
    compile(
        Stage::Request,
        &["track-sc0 src table per_ip_slow", "sc-inc-gpc0 0"],
    )
    .expect("gpc0_rate alone is enough");
    let e = compile_err(
        Stage::Request,
        &["track-sc0 src table per_ip_slow", "sc-set-gpt0 0 1"],
    );
    assert_eq!(
        e.kind.to_string(),
        "table `per_ip_slow` (tracked by sc0) does not store gpt0; add `gpt0` to its store"
    );
}

// === rate thresholds ===

fn rate_limit(request: &[&str]) -> Option<RateLimitInfo> {
    let fe = frontend(
        &[
            "track-sc0 src table per_ip",
            "track-sc1 src table per_ip_slow",
        ],
        request,
    )
    .expect("compiles");
    fe.request.rules().last().expect("a rule").rate_limit
}

#[test]
fn rate_thresholds_are_detected() {
    let info = |sc, ty, limit, secs| {
        Some(RateLimitInfo {
            sc,
            ty,
            limit,
            period: Duration::from_secs(secs),
        })
    };
    assert_eq!(
        rate_limit(&["deny status 429 if sc0_http_req_rate > 100"]),
        info(0, DataType::HttpReqRate, 100, 10)
    );
    assert_eq!(
        rate_limit(&["deny status 429 if sc0_http_req_rate ge 100"]),
        info(0, DataType::HttpReqRate, 99, 10)
    );
    assert_eq!(
        rate_limit(&["tarpit 1s if sc1_http_req_rate > 5"]),
        info(1, DataType::HttpReqRate, 5, 60)
    );
    assert_eq!(
        rate_limit(&["deny if method == \"POST\" and sc0_bytes_in_rate > 1000"]),
        info(0, DataType::BytesInRate, 1000, 1)
    );
    assert_eq!(
        rate_limit(&["deny unless sc0_conn_rate <= 20"]),
        info(0, DataType::ConnRate, 20, 1)
    );
    assert_eq!(
        rate_limit(&["deny unless sc0_conn_rate < 20"]),
        info(0, DataType::ConnRate, 19, 1)
    );
    assert_eq!(
        rate_limit(&["deny if not (sc0_http_req_rate <= 7 or src == 10.0.0.0/8)"]),
        info(0, DataType::HttpReqRate, 7, 10)
    );
    assert_eq!(
        rate_limit(&["deny if sc0_gpc0 > 0 and (sc1_http_err_rate > 3 and sc0_http_req_rate > 9)"]),
        info(1, DataType::HttpErrRate, 3, 10)
    );
    assert_eq!(
        rate_limit(&["deny if sc0_http_req_rate >= 0"]),
        info(0, DataType::HttpReqRate, 0, 10)
    );
    // Not thresholds: a lower bound, a counter, an alternative, no condition, negated the wrong way.
    for rule in [
        "deny if sc0_http_req_rate < 100",
        "deny if sc0_gpc0 > 100",
        "deny if sc0_http_req_rate > 100 or src == 10.0.0.0/8",
        "deny status 429",
        "deny unless sc0_http_req_rate > 100",
        "deny if sc0_http_req_rate == 100",
        "deny if sc0_http_req_rate",
    ] {
        assert_eq!(rate_limit(&[rule]), None, "{rule}");
    }
}

#[test]
fn rate_thresholds_need_one_period() {
    // sc0 may track per_ip (10s) or per_ip_slow (1m): no single period to announce.
    let fe = frontend(
        &[],
        &[
            "track-sc0 src table per_ip if src == 10.0.0.0/8",
            "track-sc0 src table per_ip_slow",
            "deny if sc0_http_req_rate > 5",
        ],
    )
    .expect("compiles");
    assert_eq!(fe.request.rules()[2].rate_limit, None);
    let fe = frontend(
        &[],
        &[
            "track-sc0 src table per_ip if src == 10.0.0.0/8",
            "track-sc0 src table per_key",
            "deny if sc0_http_req_rate > 5",
        ],
    );
    assert!(fe.is_err(), "src into a string table");
}

// === evaluation ===

#[test]
fn fetches_evaluate_against_facts() {
    let mut f = Fake::request("POST", "/login")
        .from("10.1.2.3")
        .header("x-api-key", "k1")
        .header("x-empty", "")
        .with(0, DataType::HttpReqRate, 150);
    let yes = |f: &mut Fake, c: &str| cond(c).eval(f);
    assert!(yes(&mut f, "sc0_http_req_rate > 100"));
    assert!(!yes(&mut f, "sc0_http_req_rate > 150"));
    assert!(yes(
        &mut f,
        "sc0_http_req_rate >= 150 and sc0_http_req_rate <= 150 and sc0_http_req_rate == 150"
    ));
    assert!(yes(
        &mut f,
        "sc0_http_req_rate != 1 and sc0_http_req_rate lt 151"
    ));
    assert!(yes(&mut f, "src == 10.0.0.0/8 and src != 192.168.0.0/16"));
    assert!(!yes(&mut f, "src == 10.1.2.4"));
    assert!(yes(&mut f, "method == \"POST\" and method != \"GET\""));
    assert!(!yes(&mut f, "method == \"post\""));
    assert!(yes(&mut f, "path == \"/login\""));
    assert!(!yes(&mut f, "path == \"/log\""));
    assert!(yes(&mut f, "hdr(X-API-KEY) == \"k1\""));
    assert!(yes(&mut f, "hdr(x-api-key) and src and method and path"));
    assert!(
        !yes(&mut f, "hdr(x-empty)"),
        "an empty header is not present"
    );
    assert!(yes(&mut f, "hdr(x-empty) == \"\""));
    let mut v6 = Fake::request("GET", "/").from("::ffff:10.9.9.9");
    assert!(cond("src == 10.0.0.0/8").eval(&mut v6));
}

#[test]
fn a_failing_fetch_makes_its_comparison_false() {
    // sc1 tracks nothing, gpt0 was never written, the header is absent.
    let mut f = Fake::request("GET", "/").with(0, DataType::Gpc0, 0);
    for c in [
        "sc1_gpc0 == 0",
        "sc1_gpc0 != 0",
        "sc1_gpc0 < 1",
        "sc0_gpt0 == 0",
        "hdr(x-missing) != \"a\"",
        "hdr(x-missing) == \"a\"",
        "sc0_gpc0",
        "sc1_gpc0",
    ] {
        assert!(!cond(c).eval(&mut f), "{c}");
        assert!(cond(&format!("not {c}")).eval(&mut f), "not {c}");
    }
    assert!(rule("deny unless sc1_gpc0 == 0").applies(&mut f));
    // At the connection stage the request fetches yield nothing.
    let mut conn = Fake::default();
    assert!(
        !cond("method == \"GET\" or path == \"/\" or hdr(host) or method or path").eval(&mut conn)
    );
}

#[test]
fn evaluation_short_circuits_left_to_right() {
    let mut f = Fake::request("GET", "/").with(0, DataType::Gpc0, 1);
    assert!(cond("sc0_gpc0 > 0 or sc1_gpc0 > 0 or sc2_gpc0 > 0").eval(&mut f));
    assert_eq!(f.reads, 1);
    f.reads = 0;
    assert!(!cond("sc0_gpc0 > 5 and sc1_gpc0 > 0 and sc2_gpc0 > 0").eval(&mut f));
    assert_eq!(f.reads, 1);
    f.reads = 0;
    assert!(
        cond("(sc0_gpc0 > 5 and sc1_gpc0 > 0) or (method == \"GET\" or sc2_gpc0 > 0)").eval(&mut f)
    );
    assert_eq!(f.reads, 1);
}

#[test]
fn conditions_and_unless() {
    let mut f = Fake::request("GET", "/").with(0, DataType::Gpc0, 3);
    assert!(rule("deny").applies(&mut f));
    assert!(rule("deny if sc0_gpc0 > 2").applies(&mut f));
    assert!(!rule("deny unless sc0_gpc0 > 2").applies(&mut f));
    assert!(rule("deny unless sc0_gpc0 > 3").applies(&mut f));
}

fn run(stage: Stage, rules: &[&str], f: &mut Fake) -> Verdict {
    compile(stage, rules).expect("compiles").run(f)
}

#[test]
fn the_first_terminal_action_wins_and_others_go_on() {
    let rules = [
        "track-sc0 src table per_ip",
        "sc-inc-gpc0 0 if sc0_http_req_rate > 10",
        "allow if src == 10.0.0.0/8",
        "deny status 429 if sc0_http_req_rate > 10",
        "deny if sc0_gpc0 > 0",
        "reject",
    ];
    // The values are in the fake's table, but sc0 reads nothing until rule 0 tracks it.
    let mut f = Fake::request("GET", "/").from("192.0.2.9");
    f.values.insert((0, DataType::HttpReqRate), 11);
    let v = run(Stage::Request, &rules, &mut f);
    let info = RateLimitInfo {
        sc: 0,
        ty: DataType::HttpReqRate,
        limit: 10,
        period: Duration::from_secs(10),
    };
    assert_eq!(
        v,
        Verdict::Deny {
            rule: 3,
            status: 429,
            rate_limit: Some(info)
        }
    );
    assert_eq!(f.log, ["0: track-sc0 src table per_ip", "inc-gpc0 0"]);

    let mut f = Fake::request("GET", "/")
        .from("10.0.0.1")
        .with(0, DataType::HttpReqRate, 11);
    assert_eq!(
        run(Stage::Request, &rules, &mut f),
        Verdict::Allow { rule: 2 }
    );
    assert_eq!(
        f.log,
        ["inc-gpc0 0"],
        "sc0 was already tracked: the first track wins"
    );

    let mut f = Fake::request("GET", "/")
        .with(0, DataType::HttpReqRate, 1)
        .with(0, DataType::Gpc0, 1);
    assert_eq!(
        run(Stage::Request, &rules, &mut f),
        Verdict::Deny {
            rule: 4,
            status: 403,
            rate_limit: None
        }
    );

    let mut f = Fake::request("GET", "/").with(0, DataType::HttpReqRate, 1);
    assert_eq!(
        run(Stage::Request, &rules, &mut f),
        Verdict::Reject { rule: 5 }
    );

    let mut f = Fake::request("GET", "/");
    assert_eq!(
        run(Stage::Request, &["allow if src == 10.0.0.0/8"], &mut f),
        Verdict::Continue
    );
}

#[test]
fn a_gpc0_flag_set_by_one_rule_is_seen_by_a_later_one() {
    let rules = [
        "track-sc0 src table per_ip",
        "sc-inc-gpc0 0 if sc0_http_req_rate > 10",
        "tarpit 1s if sc0_gpc0 > 0",
    ];
    let set = compile(Stage::Request, &rules).expect("compiles");
    let tarpit = Verdict::Tarpit {
        rule: 2,
        delay: Duration::from_secs(1),
        rate_limit: None,
    };
    let mut f = Fake::request("GET", "/").with(0, DataType::HttpReqRate, 11);
    assert_eq!(set.run(&mut f), tarpit);
    assert_eq!(f.log, ["inc-gpc0 0"]);
    // Once the rate drops, the flag still holds the client.
    f.values.insert((0, DataType::HttpReqRate), 0);
    f.log.clear();
    assert_eq!(set.run(&mut f), tarpit);
    assert!(f.log.is_empty());

    let set = compile(
        Stage::Connection,
        &[
            "track-sc0 src table per_ip",
            "sc-set-gpt0 0 9",
            "reject if sc0_gpt0 == 9",
        ],
    )
    .expect("compiles");
    let mut f = Fake::default();
    assert_eq!(set.run(&mut f), Verdict::Reject { rule: 2 });
    assert_eq!(f.log, ["0: track-sc0 src table per_ip", "set-gpt0 0 9"]);
}

// === properties ===

fn data_type() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL.to_vec())
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}".prop_map(|s| hdr(&s))
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<[u8; 4]>(), 0..=32u8).prop_map(|(a, p)| Cidr::new(IpAddr::from(a), p)),
        (any::<[u8; 16]>(), 0..=128u8).prop_map(|(a, p)| Cidr::new(IpAddr::from(a), p)),
    ]
    .prop_map(|c| c.expect("prefix in range"))
}

fn leaf() -> impl Strategy<Value = Expr> {
    let eq = || prop::sample::select(vec![CmpOp::Eq, CmpOp::Ne]);
    let any_op = prop::sample::select(vec![
        CmpOp::Gt,
        CmpOp::Ge,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Eq,
        CmpOp::Ne,
    ]);
    let string = "[ -~\u{e9}\u{4e2d}]{0,12}";
    let str_fetch = prop_oneof![
        Just(Fetch::Method),
        Just(Fetch::Path),
        header_name().prop_map(Fetch::Hdr)
    ];
    let fetch = prop_oneof![
        (0..=2u8, data_type()).prop_map(|(sc, ty)| Fetch::Sc { sc, ty }),
        Just(Fetch::Src),
        Just(Fetch::Method),
        Just(Fetch::Path),
        header_name().prop_map(Fetch::Hdr),
    ];
    prop_oneof![
        (0..=2u8, data_type(), any_op, any::<u64>()).prop_map(|(n, ty, op, v)| cmp(
            sc(n, ty),
            op,
            Value::Int(v)
        )),
        (eq(), cidr()).prop_map(|(op, c)| cmp(Fetch::Src, op, Value::Net(c))),
        (str_fetch, eq(), string).prop_map(|(f, op, s)| cmp(f, op, Value::Str(s))),
        fetch.prop_map(Expr::Present),
    ]
}

/// Restores the parser's invariant that `and`/`or` never directly hold their own kind.
fn flatten(e: Expr) -> Expr {
    match e {
        Expr::And(v) => Expr::And(
            v.into_iter()
                .map(flatten)
                .flat_map(|c| match c {
                    Expr::And(inner) => inner,
                    c => vec![c],
                })
                .collect(),
        ),
        Expr::Or(v) => Expr::Or(
            v.into_iter()
                .map(flatten)
                .flat_map(|c| match c {
                    Expr::Or(inner) => inner,
                    c => vec![c],
                })
                .collect(),
        ),
        Expr::Not(c) => Expr::Not(Box::new(flatten(*c))),
        e => e,
    }
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf()
        .prop_recursive(5, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
        .prop_map(flatten)
}

fn action() -> impl Strategy<Value = Action> {
    let name = "[a-z_][a-z0-9_.-]{0,10}";
    let key = prop_oneof![
        Just(TrackKey::Src),
        Just(TrackKey::Path),
        header_name().prop_map(TrackKey::Hdr),
        "[a-z0-9_.=%-]{1,8}".prop_map(TrackKey::Query),
    ];
    prop_oneof![
        (0..=2u8, key, name).prop_map(|(sc, key, table)| Action::TrackSc { sc, key, table }),
        Just(Action::Allow),
        (400..=599u16).prop_map(|status| Action::Deny { status }),
        Just(Action::Reject),
        (1..=3_600_000u64).prop_map(|ms| Action::Tarpit(Duration::from_millis(ms))),
        (1..=3_600_000_000_000u64).prop_map(|ns| Action::Tarpit(Duration::from_nanos(ns))),
        (0..=2u8).prop_map(|sc| Action::IncGpc0 { sc }),
        (0..=2u8, any::<u64>()).prop_map(|(sc, value)| Action::SetGpt0 { sc, value }),
    ]
}

fn any_rule() -> impl Strategy<Value = Rule> {
    (action(), prop::option::of((any::<bool>(), expr()))).prop_map(|(action, cond)| Rule {
        action,
        cond: cond.map(|(negate, expr)| Condition { negate, expr }),
    })
}

/// Words and symbols of the language, so random input gets deep into the parser.
fn token_soup() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "track-sc0",
        "track-sc3",
        "src",
        "table",
        "t",
        "hdr(",
        "hdr(x)",
        "query(q)",
        "path",
        "method",
        "allow",
        "deny",
        "status",
        "429",
        "reject",
        "tarpit",
        "2s",
        "sc-inc-gpc0",
        "sc-set-gpt0",
        "0",
        "1",
        "if",
        "unless",
        "and",
        "or",
        "not",
        "(",
        ")",
        "\"",
        "\"GET\"",
        "\\",
        ">",
        ">=",
        "==",
        "!=",
        "=>",
        "gt",
        "sc0_gpc0",
        "sc9_x",
        "sc0_",
        "10.0.0.0/8",
        "::1",
        "/33",
        "\u{e9}",
        " ",
        "",
    ]);
    prop::collection::vec(tokens, 0..24).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_text_never_panics(text in any::<String>()) {
        let _ = parse_rule(&text);
    }

    #[test]
    fn token_soup_never_panics_and_columns_stay_in_range(text in token_soup()) {
        if let Err(e) = parse_rule(&text) {
            prop_assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e} for `{text}`");
        }
        let _ = compile(Stage::Connection, &[text.as_str()]);
    }

    #[test]
    fn display_reparses_to_the_same_rule(r in any_rule()) {
        let text = r.to_string();
        let back = parse_rule(&text);
        prop_assert_eq!(back.as_ref().ok(), Some(&r), "`{}`: {:?}", text, back);
    }

    #[test]
    fn parsed_token_soup_prints_canonically(text in token_soup()) {
        if let Ok(r) = parse_rule(&text) {
            let canonical = r.to_string();
            let again = parse_rule(&canonical);
            prop_assert_eq!(again.as_ref().ok(), Some(&r), "`{}` printed as `{}`", text, canonical);
            prop_assert_eq!(again.map(|r| r.to_string()).ok(), Some(canonical));
        }
    }
}
