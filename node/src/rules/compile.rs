//! Validation of a frontend's rules against the tables of the config, producing the
//! [`RuleSet`]s the proxy runs.
//!
//! Everything that can be known before the first connection is checked here, so a config that
//! loads never meets a rule that cannot work: the tables exist, their key types fit the track
//! keys, every `scN_<type>` names a counter tracked by an earlier rule into tables that store
//! `<type>`, `sc-inc-gpc0`/`sc-set-gpt0` have somewhere to write, and nothing asks for the
//! request at the connection stage.

use std::fmt;
use std::time::Duration;

use sluice_sync::{DataType, KeyType, Kind, TableSchema};

use super::ast::{Action, CmpOp, Expr, Fetch, Rule, TrackKey, Value};
use super::parse::{ParseError, ParseErrorKind, Spans, parse_with_spans};

/// Where a rule set runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// On accept, before any byte is read (tcp and http frontends).
    Connection,
    /// Per HTTP request, once its head has been read (http frontends).
    Request,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connection => "connection",
            Stage::Request => "request",
        })
    }
}

/// A rule that cannot be used: which rule, where in it, and why.
///
/// `Display` gives `request[2]: column 23: …`, which the config layer prefixes with the
/// frontend's path (`frontend[0].rules.`); [`RuleError::detail`] gives the part after the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{stage}[{index}]: column {column}: {kind}")]
pub struct RuleError {
    /// The stage whose rule list holds the rule.
    pub stage: Stage,
    /// 0-based index of the rule in that list.
    pub index: usize,
    /// 1-based column, in characters, of the offending text.
    pub column: usize,
    /// What is wrong.
    pub kind: RuleErrorKind,
}

impl RuleError {
    /// `column N: what is wrong`, without the rule's position in the config.
    pub fn detail(&self) -> String {
        format!("column {}: {}", self.column, self.kind)
    }
}

/// What is wrong with a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleErrorKind {
    /// The text does not parse.
    #[error(transparent)]
    Syntax(ParseErrorKind),
    /// `table NAME` names no `[[table]]`.
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    /// `scN_<type>` where a table scN may be tracking does not store `<type>`.
    #[error("table `{table}` does not store `{ty}`; add `{hint}` to its store")]
    NotStored {
        /// The table.
        table: String,
        /// The missing data type.
        ty: DataType,
        /// How to write it in the store list.
        hint: String,
    },
    /// `scN_*`, `sc-inc-gpc0 N` or `sc-set-gpt0 N` with no earlier `track-scN`.
    #[error(
        "sc{0} is not tracked by any earlier rule; add a `track-sc{0} … table NAME` rule before this one"
    )]
    NotTracked(u8),
    /// A track key that the table's key type cannot hold.
    #[error("`{track}` needs a table with key = {needs}, but table `{table}` has key = \"{key}\"")]
    KeyType {
        /// The track key as written.
        track: String,
        /// The key types that would fit.
        needs: &'static str,
        /// The table.
        table: String,
        /// Its key type.
        key: KeyType,
    },
    /// Something that needs the HTTP request, used at the connection stage.
    #[error("{what} is not available at the connection stage ({why}); {hint}")]
    ConnectionStage {
        /// The action, key or fetch.
        what: String,
        /// Why.
        why: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// `sc-inc-gpc0 N` where a table scN may be tracking has neither `gpc0` nor `gpc0_rate`.
    #[error(
        "table `{table}` (tracked by sc{sc}) stores neither gpc0 nor gpc0_rate; add `gpc0` to its store"
    )]
    NoGpc0 {
        /// The stick counter.
        sc: u8,
        /// The table.
        table: String,
    },
    /// `sc-set-gpt0 N` where a table scN may be tracking has no `gpt0`.
    #[error("table `{table}` (tracked by sc{sc}) does not store gpt0; add `gpt0` to its store")]
    NoGpt0 {
        /// The stick counter.
        sc: u8,
        /// The table.
        table: String,
    },
}

/// The tables each stick counter may be tracking at some point of the rules: every table an
/// earlier `track-scN` names, whether or not its condition held. Connection-stage tracks last
/// for the connection, so the request stage starts from the connection stage's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackedCounters {
    tables: [Vec<String>; 3],
}

impl TrackedCounters {
    /// The tables stick counter `sc` may be tracking (empty if none, or `sc` > 2).
    pub fn tables(&self, sc: u8) -> &[String] {
        self.tables.get(usize::from(sc)).map_or(&[], Vec::as_slice)
    }

    /// Whether some earlier rule tracks `sc`.
    pub fn is_tracked(&self, sc: u8) -> bool {
        !self.tables(sc).is_empty()
    }

    fn add(&mut self, sc: u8, table: &str) {
        if let Some(list) = self.tables.get_mut(usize::from(sc))
            && !list.iter().any(|t| t == table)
        {
            list.push(table.to_owned());
        }
    }
}

/// A rule whose condition is a rate threshold (`scN_<rate> > LIMIT`, alone or within `and`):
/// what a `429` it causes tells the client in `RateLimit-Policy`, `RateLimit` and `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The stick counter whose entry holds the rate.
    pub sc: u8,
    /// The rate type (`http_req_rate`, `conn_rate`, `bytes_in_rate`, …).
    pub ty: DataType,
    /// Events admitted per period: `N` for `> N`, `N - 1` for `>= N`. The rule fires once the
    /// rate, counting the current event, exceeds it.
    pub limit: u64,
    /// The period the table measures the rate over.
    pub period: Duration,
}

/// A parsed and validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    /// The rule as written, for logs.
    pub text: String,
    /// The rule.
    pub rule: Rule,
    /// Set when the condition is a rate threshold whose period is known (every table the
    /// counter may track agrees on it).
    pub rate_limit: Option<RateLimitInfo>,
}

/// A validated list of rules for one stage of one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    stage: Stage,
    rules: Vec<CompiledRule>,
    tracked: TrackedCounters,
}

impl RuleSet {
    /// No rules.
    pub fn empty(stage: Stage) -> RuleSet {
        RuleSet {
            stage,
            rules: Vec::new(),
            tracked: TrackedCounters::default(),
        }
    }

    /// Parses and validates `rules`, in order, for `stage`. `before` is what earlier stages
    /// track (the connection stage's [`RuleSet::tracked`] for the request stage); `tables`
    /// looks a table up by name.
    pub fn compile<'t, S: AsRef<str>>(
        stage: Stage,
        rules: &[S],
        before: &TrackedCounters,
        tables: impl Fn(&str) -> Option<&'t TableSchema>,
    ) -> Result<RuleSet, RuleError> {
        let mut tracked = before.clone();
        let mut out = Vec::with_capacity(rules.len());
        for (index, text) in rules.iter().enumerate() {
            let text = text.as_ref();
            let fail = |column: usize, kind: RuleErrorKind| RuleError {
                stage,
                index,
                column,
                kind,
            };
            let (rule, spans) = parse_with_spans(text)
                .map_err(|ParseError { column, kind }| fail(column, RuleErrorKind::Syntax(kind)))?;
            let check = Check {
                stage,
                tables: &tables,
                tracked: &tracked,
                spans: &spans,
            };
            check
                .rule(&rule)
                .map_err(|(column, kind)| fail(column, kind))?;
            let rate_limit = rule.cond.as_ref().and_then(|c| {
                rate_threshold(&c.expr, !c.negate, &|sc, ty| {
                    period(&tracked, &tables, sc, ty)
                })
            });
            if let Action::TrackSc { sc, table, .. } = &rule.action {
                tracked.add(*sc, table);
            }
            out.push(CompiledRule {
                text: text.to_owned(),
                rule,
                rate_limit,
            });
        }
        Ok(RuleSet {
            stage,
            rules: out,
            tracked,
        })
    }

    /// The stage the rules run at.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What the stick counters may be tracking after these rules (and the earlier stages').
    pub fn tracked(&self) -> &TrackedCounters {
        &self.tracked
    }
}

/// Both stages of a frontend's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRules {
    /// Run on accept.
    pub connection: RuleSet,
    /// Run per HTTP request; sees the connection stage's tracked counters.
    pub request: RuleSet,
}

impl Default for FrontendRules {
    /// No rules at either stage.
    fn default() -> FrontendRules {
        FrontendRules {
            connection: RuleSet::empty(Stage::Connection),
            request: RuleSet::empty(Stage::Request),
        }
    }
}

impl FrontendRules {
    /// Whether neither stage has a rule.
    pub fn is_empty(&self) -> bool {
        self.connection.is_empty() && self.request.is_empty()
    }

    /// Compiles a frontend's `connection` and `request` rule lists.
    pub fn compile<'t, S: AsRef<str>>(
        connection: &[S],
        request: &[S],
        tables: impl Fn(&str) -> Option<&'t TableSchema>,
    ) -> Result<FrontendRules, RuleError> {
        let connection = RuleSet::compile(
            Stage::Connection,
            connection,
            &TrackedCounters::default(),
            &tables,
        )?;
        let request = RuleSet::compile(Stage::Request, request, connection.tracked(), &tables)?;
        Ok(FrontendRules {
            connection,
            request,
        })
    }
}

// === checks ===

type Problem = (usize, RuleErrorKind);

struct Check<'a, F> {
    stage: Stage,
    tables: &'a F,
    tracked: &'a TrackedCounters,
    spans: &'a Spans,
}

const NO_REQUEST: &str = "no request has been read yet";

impl<'t, F: Fn(&str) -> Option<&'t TableSchema>> Check<'_, F> {
    fn rule(&self, rule: &Rule) -> Result<(), Problem> {
        self.action(&rule.action)?;
        if let Some(cond) = &rule.cond {
            // The condition runs before the action, so a `track-scN … if scN_*` sees only
            // earlier tracks: `self.tracked` does not include this rule's yet.
            for (fetch, &column) in cond.expr.fetches().into_iter().zip(&self.spans.fetches) {
                self.fetch(fetch, column)?;
            }
        }
        Ok(())
    }

    fn action(&self, action: &Action) -> Result<(), Problem> {
        let at = self.spans.action;
        let connection = self.stage == Stage::Connection;
        match action {
            Action::Deny { .. } if connection => Err((
                at,
                RuleErrorKind::ConnectionStage {
                    what: "`deny`".into(),
                    why: "there is no request to answer",
                    hint: "use `reject` to close the connection, or move the rule to the request stage",
                },
            )),
            Action::Tarpit(_) if connection => Err((
                at,
                RuleErrorKind::ConnectionStage {
                    what: "`tarpit`".into(),
                    why: "there is no request to hold",
                    hint: "use `reject` to close the connection, or move the rule to the request stage",
                },
            )),
            Action::TrackSc { key, table, .. } => self.track(key, table),
            Action::IncGpc0 { sc } => self.each_table(*sc, |name, t| {
                let ok = t.stores(DataType::Gpc0) || t.stores(DataType::Gpc0Rate);
                (!ok).then(|| RuleErrorKind::NoGpc0 {
                    sc: *sc,
                    table: name.to_owned(),
                })
            }),
            Action::SetGpt0 { sc, .. } => self.each_table(*sc, |name, t| {
                (!t.stores(DataType::Gpt0)).then(|| RuleErrorKind::NoGpt0 {
                    sc: *sc,
                    table: name.to_owned(),
                })
            }),
            Action::Allow | Action::Deny { .. } | Action::Reject | Action::Tarpit(_) => Ok(()),
        }
    }

    fn track(&self, key: &TrackKey, table: &str) -> Result<(), Problem> {
        if self.stage == Stage::Connection && *key != TrackKey::Src {
            return Err((
                self.spans.key,
                RuleErrorKind::ConnectionStage {
                    what: format!("the track key `{key}`"),
                    why: NO_REQUEST,
                    hint: "track `src` here, or move the rule to the request stage",
                },
            ));
        }
        let schema = (self.tables)(table).ok_or((
            self.spans.table,
            RuleErrorKind::UnknownTable(table.to_owned()),
        ))?;
        let needs = match (key, schema.key) {
            (TrackKey::Src, KeyType::Ip) => return Ok(()),
            (TrackKey::Src, _) => "\"ip\"",
            (_, KeyType::String(_) | KeyType::Binary(_)) => return Ok(()),
            _ => "\"string(N)\" or \"binary(N)\"",
        };
        Err((
            self.spans.key,
            RuleErrorKind::KeyType {
                track: key.to_string(),
                needs,
                table: table.to_owned(),
                key: schema.key,
            },
        ))
    }

    fn fetch(&self, fetch: &Fetch, column: usize) -> Result<(), Problem> {
        match fetch {
            Fetch::Sc { sc, ty } => self
                .each_table(*sc, |name, t| {
                    (!t.stores(*ty)).then(|| RuleErrorKind::NotStored {
                        table: name.to_owned(),
                        ty: *ty,
                        hint: store_hint(*ty),
                    })
                })
                .map_err(|(_, kind)| (column, kind)),
            Fetch::Method | Fetch::Path | Fetch::Hdr(_) if self.stage == Stage::Connection => {
                Err((
                    column,
                    RuleErrorKind::ConnectionStage {
                        what: format!("`{fetch}`"),
                        why: NO_REQUEST,
                        hint: "move the rule to the request stage",
                    },
                ))
            }
            Fetch::Src | Fetch::Method | Fetch::Path | Fetch::Hdr(_) => Ok(()),
        }
    }

    /// Runs `bad` on every table `sc` may be tracking; the first complaint is the error, at
    /// the column of the stick counter argument.
    fn each_table(
        &self,
        sc: u8,
        bad: impl Fn(&str, &TableSchema) -> Option<RuleErrorKind>,
    ) -> Result<(), Problem> {
        let at = self.spans.sc;
        let names = self.tracked.tables(sc);
        if names.is_empty() {
            return Err((at, RuleErrorKind::NotTracked(sc)));
        }
        for name in names {
            let schema =
                (self.tables)(name).ok_or((at, RuleErrorKind::UnknownTable(name.clone())))?;
            if let Some(kind) = bad(name, schema) {
                return Err((at, kind));
            }
        }
        Ok(())
    }
}

/// How `ty` is written in a store list (rates need a period; `10s` is an example).
fn store_hint(ty: DataType) -> String {
    match ty.kind() {
        Kind::Rate => format!("{ty}(10s)"),
        _ => ty.to_string(),
    }
}

/// The period of rate `ty` for stick counter `sc`, if every table it may track agrees on one.
fn period<'t>(
    tracked: &TrackedCounters,
    tables: &impl Fn(&str) -> Option<&'t TableSchema>,
    sc: u8,
    ty: DataType,
) -> Option<Duration> {
    let mut periods = tracked.tables(sc).iter().map(|name| {
        tables(name)
            .and_then(|t| t.stored(ty))
            .and_then(|s| s.period())
    });
    let first = periods.next()??;
    periods.all(|p| p == Some(first)).then_some(first)
}

/// The first rate threshold that must hold for `e` to be `positive` (true, or false under an
/// odd number of `not`s/`unless`): a comparison that bounds a rate from above, reached only
/// through `and` (or through `or` under negation, since `not (a or b)` is `not a and not b`).
fn rate_threshold(
    e: &Expr,
    positive: bool,
    period: &impl Fn(u8, DataType) -> Option<Duration>,
) -> Option<RateLimitInfo> {
    match e {
        Expr::And(v) if positive => v.iter().find_map(|c| rate_threshold(c, positive, period)),
        Expr::Or(v) if !positive => v.iter().find_map(|c| rate_threshold(c, positive, period)),
        Expr::Not(c) => rate_threshold(c, !positive, period),
        Expr::Cmp {
            fetch: Fetch::Sc { sc, ty },
            op,
            value: Value::Int(n),
        } if ty.kind() == Kind::Rate => {
            // `not (rate <= N)` is `rate > N`, and `not (rate < N)` is `rate >= N`.
            let limit = match (positive, op) {
                (true, CmpOp::Gt) | (false, CmpOp::Le) => *n,
                (true, CmpOp::Ge) | (false, CmpOp::Lt) => n.saturating_sub(1),
                _ => return None,
            };
            Some(RateLimitInfo {
                sc: *sc,
                ty: *ty,
                limit,
                period: period(*sc, *ty)?,
            })
        }
        _ => None,
    }
}
