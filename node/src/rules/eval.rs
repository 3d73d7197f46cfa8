//! Evaluation: conditions against the facts of a connection or request, and the run of a
//! stage's rules to a [`Verdict`].
//!
//! This is the per-request path, so nothing here allocates: fetches borrow from the proxy's
//! request, header names were parsed into [`HeaderName`]s at load time, and conditions
//! short-circuit left to right. A fetch that yields nothing (no tracked entry, a data type not
//! yet written, a missing header) makes its comparison false, as in HAProxy.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderName;
use sluice_sync::DataType;

use super::ast::{Action, CmpOp, Condition, Expr, Fetch, Rule, TrackKey, Value};
use super::compile::{RateLimitInfo, RuleSet};

/// What conditions read; the proxy implements it over a connection or a request.
pub trait Facts {
    /// `scN_<ty>`: the fleet-merged value of `ty` in the entry stick counter `sc` tracks, or
    /// `None` if `sc` tracks nothing or the value was never written (registers).
    fn sc(&mut self, sc: u8, ty: DataType) -> Option<u64>;
    /// The client address (after a PROXY protocol header, if the frontend accepts one).
    fn src(&self) -> IpAddr;
    /// The request method; `None` at the connection stage.
    fn method(&self) -> Option<&str>;
    /// The request path without the query string; `None` at the connection stage.
    fn path(&self) -> Option<&str>;
    /// The first value of request header `name` (lowercase); `None` if absent or at the
    /// connection stage.
    fn header(&self, name: &HeaderName) -> Option<&[u8]>;
}

/// What the non-terminal actions do; the proxy implements it next to [`Facts`].
pub trait Effects: Facts {
    /// `track-scN`: start tracking the entry of `table` for `key` in stick counter `sc`. Does
    /// nothing if `sc` already tracks an entry (the first track wins, for the connection's life
    /// at the connection stage, for the request's at the request stage), or if the key is
    /// missing (no such header or parameter). `rule` is the rule's index in its [`RuleSet`],
    /// so the proxy can keep the resolved table per rule.
    fn track(&mut self, rule: usize, sc: u8, key: &TrackKey, table: &str);
    /// `sc-inc-gpc0 N`: add one to `gpc0` and `gpc0_rate` of the entry `sc` tracks, if any.
    fn inc_gpc0(&mut self, sc: u8);
    /// `sc-set-gpt0 N V`: write `gpt0` of the entry `sc` tracks, if any.
    fn set_gpt0(&mut self, sc: u8, value: u64);
}

/// The outcome of running a stage's rules: the first terminal action whose condition held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No terminal action fired; go on.
    Continue,
    /// `allow` fired: skip the rest of this stage and go on.
    Allow {
        /// Index of the rule.
        rule: usize,
    },
    /// `deny` fired: answer `status`.
    Deny {
        /// Index of the rule.
        rule: usize,
        /// The status to answer with.
        status: u16,
        /// Set when the rule is a rate threshold, for the `429` headers.
        rate_limit: Option<RateLimitInfo>,
    },
    /// `reject` fired: close the connection without an answer.
    Reject {
        /// Index of the rule.
        rule: usize,
    },
    /// `tarpit` fired: hold the request for `delay`, then answer `429`.
    Tarpit {
        /// Index of the rule.
        rule: usize,
        /// How long to hold the request.
        delay: Duration,
        /// Set when the rule is a rate threshold, for the `429` headers.
        rate_limit: Option<RateLimitInfo>,
    },
}

impl RuleSet {
    /// Runs the rules in order: non-terminal actions act through `e` and evaluation goes on;
    /// the first terminal action whose condition holds ends it. With `dry_run` the caller
    /// counts and logs the verdict instead of enforcing it; the rules run the same way.
    pub fn run<E: Effects + ?Sized>(&self, e: &mut E) -> Verdict {
        for (i, r) in self.rules().iter().enumerate() {
            if !r.rule.applies(e) {
                continue;
            }
            match &r.rule.action {
                Action::TrackSc { sc, key, table } => e.track(i, *sc, key, table),
                Action::IncGpc0 { sc } => e.inc_gpc0(*sc),
                Action::SetGpt0 { sc, value } => e.set_gpt0(*sc, *value),
                Action::Allow => return Verdict::Allow { rule: i },
                Action::Deny { status } => {
                    return Verdict::Deny {
                        rule: i,
                        status: *status,
                        rate_limit: r.rate_limit,
                    };
                }
                Action::Reject => return Verdict::Reject { rule: i },
                Action::Tarpit(delay) => {
                    return Verdict::Tarpit {
                        rule: i,
                        delay: *delay,
                        rate_limit: r.rate_limit,
                    };
                }
            }
        }
        Verdict::Continue
    }
}

impl Rule {
    /// Whether the rule's action runs: it has no condition, or its condition holds.
    pub fn applies<F: Facts + ?Sized>(&self, f: &mut F) -> bool {
        self.cond.as_ref().is_none_or(|c| c.holds(f))
    }
}

impl Condition {
    /// `if`: the expression is true; `unless`: it is false.
    pub fn holds<F: Facts + ?Sized>(&self, f: &mut F) -> bool {
        self.expr.eval(f) != self.negate
    }
}

impl Expr {
    /// Evaluates the expression, left to right, stopping as soon as the result is known.
    pub fn eval<F: Facts + ?Sized>(&self, f: &mut F) -> bool {
        match self {
            Expr::And(v) => v.iter().all(|e| e.eval(f)),
            Expr::Or(v) => v.iter().any(|e| e.eval(f)),
            Expr::Not(e) => !e.eval(f),
            Expr::Present(fetch) => match fetch {
                Fetch::Sc { sc, ty } => f.sc(*sc, *ty).is_some_and(|v| v != 0),
                Fetch::Src => true,
                Fetch::Method => f.method().is_some_and(|m| !m.is_empty()),
                Fetch::Path => f.path().is_some_and(|p| !p.is_empty()),
                Fetch::Hdr(name) => f.header(name).is_some_and(|v| !v.is_empty()),
            },
            Expr::Cmp { fetch, op, value } => match (fetch, value) {
                (Fetch::Sc { sc, ty }, Value::Int(n)) => {
                    f.sc(*sc, *ty).is_some_and(|v| op.compare(v, *n))
                }
                (Fetch::Src, Value::Net(net)) => equality(*op, net.contains(f.src())),
                (Fetch::Method, Value::Str(s)) => f.method().is_some_and(|m| equality(*op, m == s)),
                (Fetch::Path, Value::Str(s)) => f.path().is_some_and(|p| equality(*op, p == s)),
                (Fetch::Hdr(name), Value::Str(s)) => f
                    .header(name)
                    .is_some_and(|v| equality(*op, v == s.as_bytes())),
                // The parser never builds these; a hand-built tree that does compares false.
                _ => false,
            },
        }
    }
}

/// `==` holds when the operands are equal, `!=` when they differ; ordering operators never
/// hold on strings and networks (the parser refuses them).
fn equality(op: CmpOp, equal: bool) -> bool {
    match op {
        CmpOp::Eq => equal,
        CmpOp::Ne => !equal,
        _ => false,
    }
}
