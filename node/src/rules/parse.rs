//! The rule parser: text to [`Rule`], with errors that give the 1-based column (in characters)
//! and what was expected there.
//!
//! A hand-written recursive descent over the text, without a separate token list: the grammar
//! is small, and `hdr(NAME)`/`query(NAME)` arguments are easier to scan from the raw text.
//! Words are maximal runs of characters other than whitespace, `(`, `)`, `"` and the operator
//! characters `<>=!`, so `sc0_gpc0>0` and `src==10.0.0.0/8` need no spaces.

use std::time::Duration;

use http::HeaderName;
use sluice_sync::DataType;

use super::ast::{
    Action, Cidr, CmpOp, Condition, DEFAULT_DENY_STATUS, Expr, Fetch, Rule, TrackKey, Value,
};

/// The deepest nesting of `not` and parentheses; bounds the recursion of parsing, printing and
/// evaluation whatever the input.
pub const MAX_DEPTH: usize = 64;

/// The longest `tarpit`: a held request keeps a connection and a task alive.
pub const MAX_TARPIT: Duration = Duration::from_secs(3600);

const OPERATORS: &str = "a comparison operator (> >= < <= == != gt ge lt le eq ne)";
const ACTIONS: &str = "an action (track-sc0, track-sc1, track-sc2, allow, deny, reject, tarpit, sc-inc-gpc0, sc-set-gpt0)";
const FETCHES: &str = "a fetch (scN_<type>, src, method, path, hdr(NAME)), `not` or `(`";
const KEYS: &str = "a track key (src, hdr(NAME), path, query(NAME))";

/// A rule that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {kind}")]
pub struct ParseError {
    /// 1-based column, in characters, of the offending text.
    pub column: usize,
    /// What is wrong there.
    pub kind: ParseErrorKind,
}

/// What is wrong with a rule's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// Something other than what the grammar allows here.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What would have been accepted.
        expected: String,
        /// What was there: a quoted token or `end of rule`.
        found: String,
    },
    /// A stick counter other than 0, 1 or 2.
    #[error("stick counter {0} is out of range (0, 1 or 2)")]
    StickCounter(String),
    /// `scN_<type>` with a type that is not a data type of SPEC §5.
    #[error("unknown data type `{0}`")]
    UnknownDataType(String),
    /// A `"` without its closing `"`.
    #[error("unterminated string")]
    UnterminatedString,
    /// `deny status N` outside 400..=599.
    #[error("deny status {0} is not an error status (expected 400..=599)")]
    Status(String),
    /// A `tarpit` duration that does not parse or is out of range.
    #[error("bad duration `{0}`: {1}")]
    Duration(String, String),
    /// A `src` operand that is not an address or a network.
    #[error("`{0}` is not an address or network (e.g. 10.0.0.0/8, 192.0.2.1, 2001:db8::/32)")]
    Cidr(String),
    /// An integer above `u64::MAX`.
    #[error("integer `{0}` is out of range (at most 18446744073709551615)")]
    IntRange(String),
    /// An ordering operator on a fetch that only compares for equality.
    #[error("`{fetch}` takes == or != only, not `{op}`")]
    Operator {
        /// The fetch.
        fetch: String,
        /// The operator found.
        op: String,
    },
    /// A header name with characters HTTP does not allow.
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    /// More than [`MAX_DEPTH`] nested `not`s and parentheses.
    #[error("conditions nest too deeply (at most {MAX_DEPTH} levels of `not` and parentheses)")]
    TooDeep,
}

/// Parses one rule.
pub fn parse_rule(text: &str) -> Result<Rule, ParseError> {
    parse_with_spans(text).map(|(rule, _)| rule)
}

/// Columns of the parts of a rule that validation against the tables may complain about.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spans {
    /// The action word.
    pub(crate) action: usize,
    /// The stick counter of `track-scN` (its digit), `sc-inc-gpc0 N` or `sc-set-gpt0 N`.
    pub(crate) sc: usize,
    /// The key of `track-scN`.
    pub(crate) key: usize,
    /// The table name of `track-scN`.
    pub(crate) table: usize,
    /// Every fetch of the condition, in text order (which is the order of
    /// [`Expr::fetches`]).
    pub(crate) fetches: Vec<usize>,
}

/// Parses one rule and returns where its parts are.
pub(crate) fn parse_with_spans(text: &str) -> Result<(Rule, Spans), ParseError> {
    let mut p = Parser {
        src: text,
        pos: 0,
        depth: 0,
        parens: 0,
        bare_deny: false,
        spans: Spans::default(),
    };
    let rule = p.rule()?;
    Ok((rule, p.spans))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    End,
    Open,
    Close,
    Str,
    Op,
    Word,
}

#[derive(Clone, Copy, Debug)]
struct Tok<'a> {
    kind: Kind,
    start: usize,
    end: usize,
    text: &'a str,
}

impl Tok<'_> {
    fn is_word(&self, w: &str) -> bool {
        self.kind == Kind::Word && self.text == w
    }
}

fn is_op_char(c: char) -> bool {
    matches!(c, '<' | '>' | '=' | '!')
}

fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '(' | ')' | '"') || is_op_char(c))
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Nesting of `not` and parentheses.
    depth: usize,
    /// Open parentheses, for the alternatives an error lists.
    parens: usize,
    /// The action was `deny` without `status`, which may still follow.
    bare_deny: bool,
    spans: Spans,
}

impl<'a> Parser<'a> {
    // === scanning ===

    /// The next token, after whitespace, without consuming it. A string token spans its quotes;
    /// an unterminated one ends at the end of the text and is reported when read.
    fn peek(&self) -> Tok<'a> {
        let rest = &self.src[self.pos..];
        let start = self.pos + (rest.len() - rest.trim_start().len());
        let rest = &self.src[start..];
        let mut chars = rest.chars();
        let (kind, len) = match chars.next() {
            None => (Kind::End, 0),
            Some('(') => (Kind::Open, 1),
            Some(')') => (Kind::Close, 1),
            Some('"') => (Kind::Str, string_len(rest)),
            Some(c) if is_op_char(c) => (
                Kind::Op,
                rest.find(|c| !is_op_char(c)).unwrap_or(rest.len()),
            ),
            Some(_) => (
                Kind::Word,
                rest.find(|c| !is_word_char(c)).unwrap_or(rest.len()),
            ),
        };
        Tok {
            kind,
            start,
            end: start + len,
            text: &self.src[start..start + len],
        }
    }

    fn bump(&mut self, t: Tok<'a>) {
        self.pos = t.end;
    }

    /// The next token if it is the word `w`.
    fn eat_word(&mut self, w: &str) -> Option<Tok<'a>> {
        let t = self.peek();
        t.is_word(w).then(|| {
            self.bump(t);
            t
        })
    }

    fn column(&self, byte: usize) -> usize {
        self.src[..byte].chars().count() + 1
    }

    fn err(&self, byte: usize, kind: ParseErrorKind) -> ParseError {
        ParseError {
            column: self.column(byte),
            kind,
        }
    }

    fn expected(&self, t: Tok<'_>, expected: &str) -> ParseError {
        let found = match t.kind {
            Kind::End => "end of rule".to_owned(),
            _ => format!("\"{}\"", t.text),
        };
        self.err(
            t.start,
            ParseErrorKind::Expected {
                expected: expected.to_owned(),
                found,
            },
        )
    }

    /// A word, or an error naming what was expected.
    fn word(&mut self, expected: &str) -> Result<Tok<'a>, ParseError> {
        let t = self.peek();
        if t.kind != Kind::Word {
            return Err(self.expected(t, expected));
        }
        self.bump(t);
        Ok(t)
    }

    /// The `(NAME)` right after a word such as `hdr`: the raw text up to `)`.
    fn call_arg(&mut self, after: Tok<'a>, what: &str) -> Result<Tok<'a>, ParseError> {
        let expected = format!("`(` and {what} right after `{}`", after.text);
        if !self.src[after.end..].starts_with('(') {
            return Err(self.expected(self.peek(), &expected));
        }
        let start = after.end + 1;
        let rest = &self.src[start..];
        let len = rest
            .find(|c: char| !is_word_char(c) && !is_op_char(c))
            .unwrap_or(rest.len());
        let arg = Tok {
            kind: Kind::Word,
            start,
            end: start + len,
            text: &rest[..len],
        };
        if arg.text.is_empty() {
            self.pos = start;
            return Err(self.expected(self.peek(), what));
        }
        if !rest[len..].starts_with(')') {
            self.pos = arg.end;
            return Err(self.expected(self.peek(), "`)`"));
        }
        self.pos = arg.end + 1;
        Ok(arg)
    }

    fn header_name(&mut self, after: Tok<'a>) -> Result<HeaderName, ParseError> {
        let arg = self.call_arg(after, "a header name")?;
        // `from_bytes` lowercases, so `hdr(Host)` and `hdr(host)` are the same fetch.
        HeaderName::from_bytes(arg.text.as_bytes())
            .map_err(|_| self.err(arg.start, ParseErrorKind::HeaderName(arg.text.to_owned())))
    }

    /// A stick counter number, 0..=2, given as the digits `digits` starting at byte `at` of the
    /// word `whole`.
    fn sc_number(
        &self,
        digits: &str,
        at: usize,
        whole: Tok<'_>,
        expected: &str,
    ) -> Result<u8, ParseError> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.expected(whole, expected));
        }
        match digits.parse::<u8>() {
            Ok(n @ 0..=2) => Ok(n),
            _ => Err(self.err(at, ParseErrorKind::StickCounter(digits.to_owned()))),
        }
    }

    fn integer(&mut self, expected: &str) -> Result<(u64, Tok<'a>), ParseError> {
        let t = self.peek();
        if t.kind != Kind::Word || !t.text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.expected(t, expected));
        }
        self.bump(t);
        let n = t
            .text
            .parse()
            .map_err(|_| self.err(t.start, ParseErrorKind::IntRange(t.text.to_owned())))?;
        Ok((n, t))
    }

    // === rules and actions ===

    fn rule(&mut self) -> Result<Rule, ParseError> {
        let action = self.action()?;
        let t = self.peek();
        let negate = match t.kind {
            Kind::End => return Ok(Rule { action, cond: None }),
            Kind::Word if t.text == "if" => false,
            Kind::Word if t.text == "unless" => true,
            _ if self.bare_deny => {
                return Err(self.expected(t, "`status`, `if`, `unless` or the end of the rule"));
            }
            _ => return Err(self.expected(t, "`if`, `unless` or the end of the rule")),
        };
        self.bump(t);
        let expr = self.or()?;
        let t = self.peek();
        if t.kind != Kind::End {
            return Err(self.expected(t, "`and`, `or` or the end of the rule"));
        }
        Ok(Rule {
            action,
            cond: Some(Condition { negate, expr }),
        })
    }

    fn action(&mut self) -> Result<Action, ParseError> {
        let t = self.word(ACTIONS)?;
        self.spans.action = self.column(t.start);
        Ok(match t.text {
            "allow" => Action::Allow,
            "reject" => Action::Reject,
            "deny" => {
                let status = match self.eat_word("status") {
                    None => {
                        self.bare_deny = true;
                        DEFAULT_DENY_STATUS
                    }
                    Some(_) => {
                        let (n, at) = self.integer("a status code (400..=599)")?;
                        match u16::try_from(n) {
                            Ok(s @ 400..=599) => s,
                            _ => {
                                return Err(
                                    self.err(at.start, ParseErrorKind::Status(at.text.to_owned()))
                                );
                            }
                        }
                    }
                };
                Action::Deny { status }
            }
            "tarpit" => {
                let d = self.word("a duration (e.g. 2s, 500ms)")?;
                let bad = |why: String| {
                    self.err(d.start, ParseErrorKind::Duration(d.text.to_owned(), why))
                };
                let delay = humantime::parse_duration(d.text).map_err(|e| bad(e.to_string()))?;
                if delay.is_zero() {
                    return Err(bad("must be greater than zero".into()));
                }
                if delay > MAX_TARPIT {
                    return Err(bad("must be at most 1h".into()));
                }
                Action::Tarpit(delay)
            }
            "sc-inc-gpc0" => Action::IncGpc0 { sc: self.sc_arg()? },
            "sc-set-gpt0" => {
                let sc = self.sc_arg()?;
                let (value, _) = self.integer("the value to set (a non-negative integer)")?;
                Action::SetGpt0 { sc, value }
            }
            w if w.starts_with("track-sc") => {
                let at = t.start + "track-sc".len();
                self.spans.sc = self.column(at);
                let sc = self.sc_number(
                    &w["track-sc".len()..],
                    at,
                    t,
                    "track-sc0, track-sc1 or track-sc2",
                )?;
                let k = self.word(KEYS)?;
                self.spans.key = self.column(k.start);
                let key = match k.text {
                    "src" => TrackKey::Src,
                    "path" => TrackKey::Path,
                    "hdr" => TrackKey::Hdr(self.header_name(k)?),
                    "query" => {
                        TrackKey::Query(self.call_arg(k, "a query parameter name")?.text.to_owned())
                    }
                    _ => return Err(self.expected(k, KEYS)),
                };
                if self.eat_word("table").is_none() {
                    return Err(self.expected(self.peek(), "`table`"));
                }
                let name = self.word("a table name")?;
                self.spans.table = self.column(name.start);
                Action::TrackSc {
                    sc,
                    key,
                    table: name.text.to_owned(),
                }
            }
            _ => return Err(self.expected(t, ACTIONS)),
        })
    }

    /// The `N` of `sc-inc-gpc0 N` / `sc-set-gpt0 N V`.
    fn sc_arg(&mut self) -> Result<u8, ParseError> {
        const EXPECTED: &str = "a stick counter number (0, 1 or 2)";
        let t = self.peek();
        self.spans.sc = self.column(t.start);
        if t.kind != Kind::Word {
            return Err(self.expected(t, EXPECTED));
        }
        let n = self.sc_number(t.text, t.start, t, EXPECTED)?;
        self.bump(t);
        Ok(n)
    }

    // === conditions ===

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut items = Vec::new();
        loop {
            match self.and()? {
                Expr::Or(inner) => items.extend(inner),
                e => items.push(e),
            }
            if self.eat_word("or").is_none() {
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut items = Vec::new();
        loop {
            match self.unary()? {
                Expr::And(inner) => items.extend(inner),
                e => items.push(e),
            }
            if self.eat_word("and").is_none() {
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let t = self.peek();
        let nested = t.is_word("not") || t.kind == Kind::Open;
        if !nested {
            return self.test();
        }
        if self.depth >= MAX_DEPTH {
            return Err(self.err(t.start, ParseErrorKind::TooDeep));
        }
        self.bump(t);
        self.depth += 1;
        let e = if t.kind == Kind::Open {
            self.parens += 1;
            let e = self.or()?;
            let close = self.peek();
            if close.kind != Kind::Close {
                return Err(self.expected(close, "`)`, `and` or `or`"));
            }
            self.bump(close);
            self.parens -= 1;
            e
        } else {
            Expr::Not(Box::new(self.unary()?))
        };
        self.depth -= 1;
        Ok(e)
    }

    /// `fetch [OP value]`.
    fn test(&mut self) -> Result<Expr, ParseError> {
        let t = self.word(FETCHES)?;
        self.spans.fetches.push(self.column(t.start));
        let fetch = match t.text {
            "src" => Fetch::Src,
            "method" => Fetch::Method,
            "path" => Fetch::Path,
            "hdr" => Fetch::Hdr(self.header_name(t)?),
            w => self.sc_fetch(t, w)?,
        };
        let o = self.peek();
        let op = match o.kind {
            Kind::Op | Kind::Word => CmpOp::from_token(o.text),
            _ => None,
        };
        let Some(op) = op else {
            if o.kind == Kind::Op {
                return Err(self.expected(o, OPERATORS));
            }
            self.follows_operand(o, true)?;
            return Ok(Expr::Present(fetch));
        };
        self.bump(o);
        let value = match fetch {
            Fetch::Sc { .. } => Value::Int(self.integer("an integer")?.0),
            Fetch::Src => {
                self.equality_only(&fetch, op, o)?;
                let v = self.word("an address or network (e.g. 10.0.0.0/8)")?;
                let net: Cidr = v
                    .text
                    .parse()
                    .map_err(|()| self.err(v.start, ParseErrorKind::Cidr(v.text.to_owned())))?;
                Value::Net(net)
            }
            Fetch::Method | Fetch::Path | Fetch::Hdr(_) => {
                self.equality_only(&fetch, op, o)?;
                Value::Str(self.string()?)
            }
        };
        self.follows_operand(self.peek(), false)?;
        Ok(Expr::Cmp { fetch, op, value })
    }

    /// `scN_<type>`, the word `w` of token `t`.
    fn sc_fetch(&self, t: Tok<'a>, w: &str) -> Result<Fetch, ParseError> {
        let digits = w
            .strip_prefix("sc")
            .map(|r| &r[..r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len())]);
        let Some(digits) = digits.filter(|d| !d.is_empty()) else {
            return Err(self.expected(t, FETCHES));
        };
        let at = t.start + 2;
        let Some(name) = w[2 + digits.len()..]
            .strip_prefix('_')
            .filter(|n| !n.is_empty())
        else {
            let found = Tok {
                kind: Kind::Word,
                start: at + digits.len(),
                end: t.end,
                text: &w[2 + digits.len()..],
            };
            let found = if found.text.is_empty() {
                self.peek()
            } else {
                found
            };
            return Err(self.expected(
                found,
                "`_` and a data type after scN (e.g. sc0_http_req_rate)",
            ));
        };
        let sc = self.sc_number(digits, at, t, "a stick counter number")?;
        let ty: DataType = name.parse().map_err(|_| {
            self.err(
                at + digits.len() + 1,
                ParseErrorKind::UnknownDataType(name.to_owned()),
            )
        })?;
        Ok(Fetch::Sc { sc, ty })
    }

    fn equality_only(&self, fetch: &Fetch, op: CmpOp, at: Tok<'_>) -> Result<(), ParseError> {
        match op {
            CmpOp::Eq | CmpOp::Ne => Ok(()),
            _ => Err(self.err(
                at.start,
                ParseErrorKind::Operator {
                    fetch: fetch.to_string(),
                    op: at.text.to_owned(),
                },
            )),
        }
    }

    /// Checks what follows a complete test, so trailing garbage is reported where it starts and
    /// with the alternatives that were possible there.
    fn follows_operand(&self, t: Tok<'_>, bare_fetch: bool) -> Result<(), ParseError> {
        let fine = match t.kind {
            Kind::End => true,
            Kind::Close => self.parens > 0,
            Kind::Word => t.text == "and" || t.text == "or",
            _ => false,
        };
        if fine {
            return Ok(());
        }
        let close = if self.parens > 0 { ", `)`" } else { "" };
        let expected = if bare_fetch {
            format!("{OPERATORS}, `and`, `or`{close} or the end of the rule")
        } else {
            format!("`and`, `or`{close} or the end of the rule")
        };
        Err(self.expected(t, &expected))
    }

    /// A `"…"` string; `\` escapes the next character.
    fn string(&mut self) -> Result<String, ParseError> {
        let t = self.peek();
        if t.kind != Kind::Str {
            return Err(self.expected(t, "a quoted string (e.g. \"GET\")"));
        }
        let mut out = String::new();
        let mut chars = t.text[1..].chars();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c) => out.push(c),
                    None => return Err(self.err(t.start, ParseErrorKind::UnterminatedString)),
                },
                Some(c) => out.push(c),
                None => return Err(self.err(t.start, ParseErrorKind::UnterminatedString)),
            }
        }
        self.bump(t);
        Ok(out)
    }
}

/// The length in bytes of the string token at the start of `s` (which starts with `"`),
/// including both quotes, or the rest of the text if it is unterminated.
fn string_len(s: &str) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i + 1,
            _ => {}
        }
    }
    s.len()
}
