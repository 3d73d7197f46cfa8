//! Where the rules engine plugs into the request path (SPEC §4).
//!
//! The rules language, tracking and actions arrive with a later issue; until then every
//! connection and request continues. The call sites are in place (`conn::handle` on accept,
//! `http_proxy::handle` per request) with the context the engine will need: the real client
//! address after a PROXY header, the frontend, and the request head.

use http::Request;
use hyper::body::Incoming;

use crate::conn::ConnCtx;

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
