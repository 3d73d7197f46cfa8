//! Where the rules engine plugs into the request path (SPEC §4).
//!
//! The rules language lives in the submodules: [`parse_rule`] turns a rule's text into a
//! [`Rule`], [`FrontendRules::compile`] / [`RuleSet::compile`] validate a frontend's rules
//! against the tables at load time, and [`RuleSet::run`] evaluates them through the [`Facts`]
//! and [`Effects`] the proxy implements (reference: `docs/rules.md`). Until that is wired in
//! here, every connection and request continues. The call sites are in place (`conn::handle`
//! on accept, `http_proxy::handle` per request) with the context the engine will need: the real
//! client address after a PROXY header, the frontend, and the request head.

use http::Request;
use hyper::body::Incoming;

use crate::conn::ConnCtx;

mod ast;
mod compile;
pub mod eval;
mod parse;
#[cfg(test)]
mod tests;

pub use ast::{
    Action, Cidr, CmpOp, Condition, DEFAULT_DENY_STATUS, Expr, Fetch, Rule, TrackKey, Value,
};
pub use compile::{
    CompiledRule, FrontendRules, RateLimitInfo, RuleError, RuleErrorKind, RuleSet, Stage,
    TrackedCounters,
};
// `eval::Verdict` replaces the placeholder `Verdict` below once the engine is wired in.
pub use eval::{Effects, Facts};
pub use parse::{MAX_DEPTH, MAX_TARPIT, ParseError, ParseErrorKind, parse_rule};

/// What a rule stage decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on to the next stage (the backend, for requests).
    Continue,
}

/// Runs the frontend's `connection` rules on accept.
#[inline]
pub(crate) fn on_connection(_ctx: &ConnCtx) -> Verdict {
    Verdict::Continue
}

/// Runs the frontend's `request` rules on a request head.
#[inline]
pub(crate) fn on_request(_ctx: &ConnCtx, _req: &Request<Incoming>) -> Verdict {
    Verdict::Continue
}
