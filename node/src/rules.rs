//! The rules engine on the request path (SPEC §4; reference: `docs/rules.md`).
//!
//! The rules language lives in the submodules: [`parse_rule`] turns a rule's text into a
//! [`Rule`], [`FrontendRules::compile`] validates a frontend's rules against the tables when the
//! config is loaded, and [`RuleSet::run`] evaluates them through the [`Facts`] and [`Effects`]
//! implemented here over a connection or a request.
//!
//! An `Engine` is built per frontend when a config is applied: the compiled rules plus, for
//! every `track-scN` rule, its table resolved to an `Arc<Table>`, so the request path never
//! looks a table up by name. A frontend without rules has no engine and pays one branch.
//!
//! Where events are recorded: a connection-stage track records `ConnOpen` when it runs,
//! `SessOpen` once the connection passed the connection rules, `HttpReq` (or a touch) at the
//! start of every request before the request rules run, `HttpErr` for each backend 4xx, bytes
//! as body chunks (HTTP) or reads (TCP) flow, and `ConnClose` when the connection's
//! `ConnTracks` drop. A request-stage track records `HttpReq` when it runs, then its request's
//! `HttpErr` and bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use sluice_sync::{DataType, Event, Key, KeyType, NodeClock, Tables, Tick};
use tracing::{debug, warn};

use crate::conn::ConnCtx;
use crate::io::ReqBody;
use crate::metrics::Outcome;

mod ast;
mod compile;
pub mod eval;
mod parse;
#[cfg(test)]
mod tests;
pub(crate) mod track;

pub use ast::{
    Action, Cidr, CmpOp, Condition, DEFAULT_DENY_STATUS, Expr, Fetch, Rule, TrackKey, Value,
};
pub use compile::{
    CompiledRule, FrontendRules, RateLimitInfo, RuleError, RuleErrorKind, RuleSet, Stage,
    TrackedCounters,
};
pub use eval::{Effects, Facts, Verdict};
pub use parse::{MAX_DEPTH, MAX_TARPIT, ParseError, ParseErrorKind, parse_rule};

use track::{ConnTracks, Resolved, Stores, Track, Tracks};

/// A frontend's rules, ready to run: the compiled rule sets and the tables their tracks name.
#[derive(Debug)]
pub(crate) struct Engine {
    rules: Arc<FrontendRules>,
    /// Per connection rule, the table a `track-scN` names (`None` for other actions).
    conn_tables: Box<[Option<Resolved>]>,
    /// Per request rule, likewise.
    req_tables: Box<[Option<Resolved>]>,
    dry_run: bool,
    clock: NodeClock,
    /// The `429` header values of every rate threshold among the rules.
    rate_values: Box<[RateValues]>,
}

/// What the proxy does with a request once its rules ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Pass it on to the backend.
    Forward,
    /// Answer `status` without contacting a backend.
    Deny {
        status: u16,
        rate_limit: Option<RateLimitInfo>,
    },
    /// Close the connection without an answer.
    Reject,
    /// Hold the request for `delay`, then answer `429`.
    Tarpit {
        delay: Duration,
        rate_limit: Option<RateLimitInfo>,
    },
}

impl Engine {
    /// The engine of a frontend, `None` when it has no rules. Tables come from the node's
    /// [`Tables`], which hold every table the (validated) config declares.
    pub(crate) fn new(
        rules: &Arc<FrontendRules>,
        tables: &Tables,
        dry_run: bool,
        clock: NodeClock,
        frontend: &str,
    ) -> Option<Engine> {
        if rules.is_empty() {
            return None;
        }
        let resolve = |set: &RuleSet| -> Box<[Option<Resolved>]> {
            set.rules()
                .iter()
                .map(|r| match &r.rule.action {
                    Action::TrackSc { table, .. } => {
                        let t = tables.get(table).map(Resolved::new);
                        if t.is_none() {
                            // Validation checked the table against the config the node
                            // applies, so this is a bug; the rule then tracks nothing.
                            warn!(%frontend, %table, rule = %r.text, "table of a track rule not found");
                        }
                        t
                    }
                    _ => None,
                })
                .collect()
        };
        let mut rate_values: Vec<RateValues> = Vec::new();
        let infos = rules.connection.rules().iter().chain(rules.request.rules());
        for info in infos.filter_map(|r| r.rate_limit) {
            if !rate_values.iter().any(|v| v.info == info) {
                rate_values.push(RateValues::new(info));
            }
        }
        Some(Engine {
            conn_tables: resolve(&rules.connection),
            req_tables: resolve(&rules.request),
            rules: rules.clone(),
            dry_run,
            clock,
            rate_values: rate_values.into(),
        })
    }

    /// The headers announcing the limit `info` describes, with numbers from the table: the
    /// window is the rate's period, and the reset the whole seconds after which a retry would
    /// be admitted if the client sent nothing meanwhile. `None` when the counter tracks
    /// nothing.
    pub(crate) fn rate_headers(
        &self,
        info: &RateLimitInfo,
        conn: &Tracks,
        own: &Tracks,
        now: Tick,
    ) -> Option<RateHeaders> {
        let t = own.get(info.sc).or_else(|| conn.get(info.sc))?;
        let reset = t.read_with(info.ty, |read| retry_after(info, now, read))??;
        Some(match self.rate_values.iter().find(|v| v.info == *info) {
            Some(v) => v.headers(reset),
            // Every threshold of the rules was prepared in `new`; this is not reached.
            None => {
                let (limit, retry_after) = RateValues::format(info.ty, reset);
                RateHeaders {
                    policy: RateValues::policy(info),
                    limit,
                    retry_after,
                }
            }
        })
    }

    /// Runs the connection rules for a client at `src`, tracking into `tracks`. Returns whether
    /// the connection goes on, and its outcome for the metrics. A connection that goes on is
    /// a session: tracked entries count it in `sess_*`.
    pub(crate) fn on_connection(&self, src: IpAddr, tracks: &mut ConnTracks) -> (bool, Outcome) {
        if self.rules.connection.is_empty() {
            return (true, Outcome::Allowed);
        }
        let now = self.clock.tick();
        let verdict = {
            let mut e = Eval {
                tables: &self.conn_tables,
                clock: self.clock,
                now,
                src,
                req: None,
                conn: None,
                own: &mut tracks.tracks,
                first: (Event::ConnOpen, Stores::CONN),
            };
            self.rules.connection.run(&mut e)
        };
        let (go, outcome) = match verdict {
            Verdict::Continue | Verdict::Allow { .. } => (true, Outcome::Allowed),
            Verdict::Reject { rule } if self.dry_run => {
                self.dry_log(&self.rules.connection, rule, "reject");
                (true, Outcome::DryRunRejected)
            }
            Verdict::Reject { .. } => (false, Outcome::Rejected),
            // Validation refuses `deny` and `tarpit` at the connection stage.
            Verdict::Deny { .. } | Verdict::Tarpit { .. } => (true, Outcome::Allowed),
        };
        if go && tracks.tracks.stores().has(Stores::SESS) {
            for t in tracks.tracks.iter_mut() {
                t.record(Event::SessOpen, Stores::SESS, now);
            }
        }
        (go, outcome)
    }

    /// Counts a request on the connection's tracked entries, then runs the request rules,
    /// tracking into `own`. With `dry_run`, a terminal verdict is logged and counted as a
    /// `dry_run_*` outcome and the request is forwarded.
    pub(crate) fn on_request(
        &self,
        ctx: &ConnCtx,
        req: &Request<ReqBody>,
        own: &mut Tracks,
    ) -> (Decision, Outcome) {
        let now = self.clock.tick();
        for t in ctx.tracks.tracks.iter() {
            t.request_shared(now);
        }
        if self.rules.request.is_empty() {
            return (Decision::Forward, Outcome::Allowed);
        }
        let verdict = {
            let mut e = Eval {
                tables: &self.req_tables,
                clock: self.clock,
                now,
                src: ctx.client.ip(),
                req: Some(req),
                conn: Some(&ctx.tracks.tracks),
                own,
                first: (Event::HttpReq, Stores::REQ),
            };
            self.rules.request.run(&mut e)
        };
        let set = &self.rules.request;
        match verdict {
            Verdict::Continue | Verdict::Allow { .. } => (Decision::Forward, Outcome::Allowed),
            Verdict::Deny { rule, .. } if self.dry_run => {
                self.dry_log(set, rule, "deny");
                (Decision::Forward, Outcome::DryRunDenied)
            }
            Verdict::Reject { rule } if self.dry_run => {
                self.dry_log(set, rule, "reject");
                (Decision::Forward, Outcome::DryRunRejected)
            }
            Verdict::Tarpit { rule, .. } if self.dry_run => {
                self.dry_log(set, rule, "tarpit");
                (Decision::Forward, Outcome::DryRunTarpitted)
            }
            Verdict::Deny {
                status, rate_limit, ..
            } => (Decision::Deny { status, rate_limit }, Outcome::Denied),
            Verdict::Reject { .. } => (Decision::Reject, Outcome::Rejected),
            Verdict::Tarpit {
                delay, rate_limit, ..
            } => (Decision::Tarpit { delay, rate_limit }, Outcome::Tarpitted),
        }
    }

    fn dry_log(&self, set: &RuleSet, rule: usize, action: &'static str) {
        let text = set.rules().get(rule).map_or("", |r| r.text.as_str());
        debug!(stage = %set.stage(), rule.index = rule, rule.text = %text, action, "dry run: a rule would have fired");
    }
}

/// Counts a backend's 4xx answer in the entries the connection and the request track.
pub(crate) fn count_backend_error(ctx: &ConnCtx, own: &mut Tracks) {
    let all = ctx.tracks.tracks.stores().union(own.stores());
    if !all.has(Stores::ERR) {
        return;
    }
    let now = ctx.frontend.clock.tick();
    for t in ctx.tracks.tracks.iter() {
        t.record_shared(Event::HttpErr, Stores::ERR, now);
    }
    for t in own.iter_mut() {
        t.record(Event::HttpErr, Stores::ERR, now);
    }
}

/// The facts and effects of one stage of one connection or request.
struct Eval<'a> {
    /// This stage's rules' tables.
    tables: &'a [Option<Resolved>],
    clock: NodeClock,
    now: Tick,
    src: IpAddr,
    /// The request, at the request stage.
    req: Option<&'a Request<ReqBody>>,
    /// The connection's tracks, at the request stage.
    conn: Option<&'a Tracks>,
    /// The tracks this stage starts.
    own: &'a mut Tracks,
    /// What a track of this stage records at once, and the group it belongs to.
    first: (Event, Stores),
}

impl Eval<'_> {
    fn counter(&self, sc: u8) -> Option<&Track> {
        self.own
            .get(sc)
            .or_else(|| self.conn.and_then(|c| c.get(sc)))
    }
}

impl Facts for Eval<'_> {
    fn sc(&mut self, sc: u8, ty: DataType) -> Option<u64> {
        self.counter(sc)?.read(ty, self.now)
    }

    fn src(&self) -> IpAddr {
        self.src
    }

    fn method(&self) -> Option<&str> {
        self.req.map(|r| r.method().as_str())
    }

    fn path(&self) -> Option<&str> {
        self.req.map(|r| r.uri().path())
    }

    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.req?.headers().get(name).map(HeaderValue::as_bytes)
    }
}

impl Effects for Eval<'_> {
    fn track(&mut self, rule: usize, sc: u8, key: &TrackKey, _table: &str) {
        if self.counter(sc).is_some() {
            // The first track wins, for the connection's or the request's life.
            return;
        }
        let Some(Some(r)) = self.tables.get(rule) else {
            return;
        };
        let Some(key) = track_key(key, self.src, self.req, r.table.schema().key) else {
            return;
        };
        let (ev, bit) = self.first;
        self.own.set(sc, Track::start(r, key, ev, bit, self.now));
    }

    fn inc_gpc0(&mut self, sc: u8) {
        if let Some(t) = self.counter(sc) {
            t.inc_gpc0(self.now);
        }
    }

    fn set_gpt0(&mut self, sc: u8, value: u64) {
        if let Some(t) = self.counter(sc) {
            t.set_gpt0(value, self.clock.wall_ms(), self.now);
        }
    }
}

/// The table key a track key names for this client and request, in the table's key type;
/// `None` when the header or query parameter is absent or empty.
fn track_key(
    key: &TrackKey,
    src: IpAddr,
    req: Option<&Request<ReqBody>>,
    ty: KeyType,
) -> Option<Key> {
    let bytes: &[u8] = match key {
        TrackKey::Src => return Some(Key::from_ip(src)),
        TrackKey::Hdr(name) => req?.headers().get(name)?.as_bytes(),
        TrackKey::Path => req?.uri().path().as_bytes(),
        TrackKey::Query(name) => query_param(req?.uri().query()?, name)?.as_bytes(),
    };
    if bytes.is_empty() {
        return None;
    }
    match ty {
        KeyType::String(n) => {
            // Header values may carry non-UTF-8 bytes; a string key keeps the valid prefix.
            let s = match std::str::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
            };
            Some(Key::from_str_truncated(s, n))
        }
        KeyType::Binary(n) => Some(Key::from_bytes(&bytes[..bytes.len().min(n)])),
        // Validation allows only string and binary tables for request keys.
        _ => None,
    }
}

/// The first value of query parameter `name`, as sent (not percent-decoded); a parameter
/// without `=` has an empty value.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

// === the 429 headers ===

/// `RateLimit-Policy`, `RateLimit` and `Retry-After` for a `429` caused by a rate threshold.
#[derive(Debug)]
pub(crate) struct RateHeaders {
    pub(crate) policy: HeaderValue,
    pub(crate) limit: HeaderValue,
    pub(crate) retry_after: HeaderValue,
}

/// Resets (in seconds) whose `RateLimit` and `Retry-After` values are built ahead: every reset
/// a period of up to 5 minutes can give (resets are at most two periods).
const PREBUILT_RESETS: u64 = 600;

/// The `429` header values of one rate threshold, built once: a denied request (the hot path
/// of a limit that fires) clones them instead of formatting three headers.
#[derive(Debug)]
struct RateValues {
    info: RateLimitInfo,
    policy: HeaderValue,
    /// `RateLimit` and `Retry-After` by reset, `0..=min(two periods, PREBUILT_RESETS)`.
    by_reset: Box<[(HeaderValue, HeaderValue)]>,
}

impl RateValues {
    fn new(info: RateLimitInfo) -> RateValues {
        let last = u64::try_from(2 * Self::window(&info))
            .map_or(PREBUILT_RESETS, |w| w.min(PREBUILT_RESETS));
        RateValues {
            info,
            policy: Self::policy(&info),
            by_reset: (0..=last).map(|r| Self::format(info.ty, r)).collect(),
        }
    }

    /// The period in whole seconds (at least 1).
    fn window(info: &RateLimitInfo) -> u128 {
        info.period.as_millis().div_ceil(1000).max(1)
    }

    fn policy(info: &RateLimitInfo) -> HeaderValue {
        let unit = match info.ty {
            DataType::BytesInRate | DataType::BytesOutRate => ";qu=\"content-bytes\"",
            _ => "",
        };
        value(format!(
            "\"{}\";q={};w={}{unit}",
            info.ty.name(),
            info.limit,
            Self::window(info)
        ))
    }

    fn format(ty: DataType, reset: u64) -> (HeaderValue, HeaderValue) {
        (
            value(format!("\"{}\";r=0;t={reset}", ty.name())),
            HeaderValue::from(reset),
        )
    }

    fn headers(&self, reset: u64) -> RateHeaders {
        let (limit, retry_after) = usize::try_from(reset)
            .ok()
            .and_then(|r| self.by_reset.get(r))
            .cloned()
            .unwrap_or_else(|| Self::format(self.info.ty, reset));
        RateHeaders {
            policy: self.policy.clone(),
            limit,
            retry_after,
        }
    }
}

/// A header value from text built of a type name, quotes and digits (always valid).
fn value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static(""))
}

/// Whole seconds from `now` until `read` (the rate at a tick, as the table computes it with
/// no new events) admits a retry: until the rate plus what the retry itself adds (one request
/// for `http_req_rate`, which a request counts before its rules run) is within the limit. The
/// sliding window only decreases without events, so the first such second is found by
/// bisection; it is at most two periods away (the current period's events weigh on the next
/// one), and at least 1 since the rule just fired.
fn retry_after(info: &RateLimitInfo, now: Tick, read: impl Fn(Tick) -> Option<u64>) -> Option<u64> {
    let retry = u64::from(info.ty == DataType::HttpReqRate);
    let target = info.limit.saturating_sub(retry);
    let period_ms = u64::try_from(info.period.as_millis()).unwrap_or(u64::MAX);
    let max = (2 * period_ms).div_ceil(1000).max(1);
    let admits = |s: u64| {
        // Periods are at most 24 days (schema limit), so 2 periods fit a tick offset.
        let at = now.plus(u32::try_from(s * 1000).unwrap_or(u32::MAX));
        read(at).is_none_or(|v| v <= target)
    };
    let (mut lo, mut hi) = (0, max);
    read(now)?;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if admits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    fn info(ty: DataType, limit: u64, period_s: u64) -> RateLimitInfo {
        RateLimitInfo {
            sc: 0,
            ty,
            limit,
            period: Duration::from_secs(period_s),
        }
    }

    /// HAProxy's window, started at tick 0 with `curr` events and nothing before.
    fn window(curr: u64, period_ms: u64) -> impl Fn(Tick) -> Option<u64> {
        move |t: Tick| {
            let e = u64::from(t.0);
            Some(if e < period_ms {
                curr
            } else if e < 2 * period_ms {
                curr * (2 * period_ms - e) / period_ms
            } else {
                0
            })
        }
    }

    #[test]
    fn retry_after_follows_the_sliding_window() {
        // 150 requests in a 10 s period, limit 100: at 4 s into the period, the retry is
        // admitted once 150 × (10 − x)/10 < 100, x > 3.33 s into the next period: 6 + 3.33 s.
        let i = info(DataType::HttpReqRate, 100, 10);
        assert_eq!(retry_after(&i, Tick(4_000), window(150, 10_000)), Some(10));
        // A byte rate is not raised by the retry: ≤ 100 is enough, x ≥ 3.33 s.
        let b = info(DataType::BytesInRate, 100, 10);
        assert_eq!(retry_after(&b, Tick(4_000), window(150, 10_000)), Some(10));
        // Far above the limit, the wait approaches two periods.
        assert_eq!(retry_after(&i, Tick(0), window(100_000, 10_000)), Some(20));
        // Just above: the rest of the period and a little more.
        assert_eq!(retry_after(&i, Tick(9_500), window(101, 10_000)), Some(1));
    }

    #[test]
    fn rate_header_values_are_the_same_prebuilt_or_not() {
        let req = RateValues::new(info(DataType::HttpReqRate, 100, 10));
        assert_eq!(req.by_reset.len(), 21, "resets 0..=20 for a 10 s period");
        let h = req.headers(13);
        assert_eq!(h.policy, "\"http_req_rate\";q=100;w=10");
        assert_eq!(h.limit, "\"http_req_rate\";r=0;t=13");
        assert_eq!(h.retry_after, "13");
        // An hour's period: resets past the prebuilt ones are formatted as they come.
        let bytes = RateValues::new(info(DataType::BytesInRate, 5000, 3600));
        assert_eq!(bytes.by_reset.len() as u64, PREBUILT_RESETS + 1);
        let h = bytes.headers(4321);
        assert_eq!(
            h.policy,
            "\"bytes_in_rate\";q=5000;w=3600;qu=\"content-bytes\""
        );
        assert_eq!(h.limit, "\"bytes_in_rate\";r=0;t=4321");
        assert_eq!(h.retry_after, "4321");
        assert_eq!(bytes.headers(600).limit, "\"bytes_in_rate\";r=0;t=600");
    }

    #[test]
    fn query_parameters_are_found_as_sent() {
        assert_eq!(
            query_param("a=1&token=x%20y&token=2", "token"),
            Some("x%20y")
        );
        assert_eq!(query_param("flag&b=2", "flag"), Some(""));
        assert_eq!(query_param("tok=1", "token"), None);
    }
}
