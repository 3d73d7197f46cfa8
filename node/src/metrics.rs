//! Metrics: counters the request path bumps with relaxed atomics, and the Prometheus text
//! rendering done only when `/metrics` is scraped.
//!
//! Every handle (`FrontendMetrics`, `ServerMetrics`, `BackendMetrics`) is resolved once when a
//! config is loaded and kept by name across reloads, so the hot path never looks anything up
//! and counters survive a `SIGHUP`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKET_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// What the rules did with a request or connection (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No rule stopped it: passed on to a backend.
    Allowed = 0,
    /// Answered by a `deny` rule.
    Denied = 1,
    /// Closed by a `reject` rule.
    Rejected = 2,
    /// Held, then answered by a `tarpit` rule.
    Tarpitted = 3,
    /// `dry_run`: a `deny` rule would have answered it; passed on.
    DryRunDenied = 4,
    /// `dry_run`: a `reject` rule would have closed it; passed on.
    DryRunRejected = 5,
    /// `dry_run`: a `tarpit` rule would have held it; passed on.
    DryRunTarpitted = 6,
}

const OUTCOMES: [&str; 7] = [
    "allowed",
    "denied",
    "rejected",
    "tarpitted",
    "dry_run_denied",
    "dry_run_rejected",
    "dry_run_tarpitted",
];
/// The outcomes a connection can have (connection rules cannot deny or tarpit).
const CONN_OUTCOMES: [Outcome; 3] = [Outcome::Allowed, Outcome::Rejected, Outcome::DryRunRejected];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of a status code's class in per-class arrays.
#[inline]
pub fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// Why a connection was closed before any request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    /// Missing or garbled PROXY protocol header.
    ProxyProtocol = 0,
    /// TLS handshake failed or timed out.
    Tls = 1,
    /// TCP mode: no server could be reached.
    NoServer = 2,
}

const CONN_ERRORS: [&str; 3] = ["proxy_protocol", "tls", "no_server"];

/// A latency histogram of fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 14],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKET_MICROS.iter().position(|&b| micros <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(micros, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one frontend.
#[derive(Debug, Default)]
pub struct FrontendMetrics {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections currently open.
    pub connections_active: AtomicU64,
    connections_by_outcome: [AtomicU64; 7],
    conn_errors: [AtomicU64; 3],
    requests: [[AtomicU64; 7]; 5],
    /// Requests closed by a `reject` rule: no answer, so no status class.
    requests_rejected: AtomicU64,
    /// Time from a request head to its response head.
    pub latency: Histogram,
}

impl FrontendMetrics {
    /// Counts an accepted connection.
    #[inline]
    pub fn conn_opened(&self, outcome: Outcome) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_by_outcome[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a connection closed before serving.
    #[inline]
    pub fn conn_error(&self, why: ConnError) {
        self.conn_errors[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts a request by the status of its answer.
    #[inline]
    pub fn request(&self, status: u16, outcome: Outcome) {
        self.requests[class_index(status)][outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a request closed by a `reject` rule, without an answer.
    #[inline]
    pub fn request_rejected(&self) {
        self.requests_rejected.fetch_add(1, Relaxed);
    }

    /// Connections or requests with `outcome` so far (requests: over every status class).
    pub fn outcome_count(&self, connections: bool, outcome: Outcome) -> u64 {
        if connections {
            return self.connections_by_outcome[outcome as usize].load(Relaxed);
        }
        let answered: u64 = self
            .requests
            .iter()
            .map(|c| c[outcome as usize].load(Relaxed))
            .sum();
        if outcome == Outcome::Rejected {
            answered + self.requests_rejected.load(Relaxed)
        } else {
            answered
        }
    }

    /// Requests answered with a status of the class of `status`, any outcome.
    pub fn requests_of_class(&self, status: u16) -> u64 {
        self.requests[class_index(status)]
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }
}

/// Counters of one backend.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Requests or connections that found no server up.
    pub no_server: AtomicU64,
    /// Requests retried on another server after a connect failure.
    pub retries: AtomicU64,
}

/// Counters and state of one backend server.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Health state as last decided (true = up).
    pub up: AtomicBool,
    /// Requests (HTTP) or connections (TCP) in flight.
    pub active: AtomicU64,
    /// Connections opened to the server.
    pub connections: AtomicU64,
    /// Failed connection attempts.
    pub connect_errors: AtomicU64,
    /// Responses by status class.
    responses: [AtomicU64; 5],
    /// Requests that failed after being sent (reset, bad response, timeout).
    pub response_errors: AtomicU64,
    /// Health check transitions to down.
    pub downs: AtomicU64,
}

impl ServerMetrics {
    /// Counts a response.
    #[inline]
    pub fn response(&self, status: u16) {
        self.responses[class_index(status)].fetch_add(1, Relaxed);
    }

    /// Responses of the class of `status`.
    pub fn responses_of_class(&self, status: u16) -> u64 {
        self.responses[class_index(status)].load(Relaxed)
    }
}

/// Every metrics handle of a node, by name. Locked only to resolve a handle at config load and
/// to render at scrape time.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Handles>,
    /// Config reloads that took effect.
    pub reloads_ok: AtomicU64,
    /// Config reloads refused.
    pub reloads_failed: AtomicU64,
}

#[derive(Debug, Default)]
struct Handles {
    frontends: BTreeMap<String, Arc<FrontendMetrics>>,
    backends: BTreeMap<String, Arc<BackendMetrics>>,
    servers: BTreeMap<(String, String), Arc<ServerMetrics>>,
}

impl Registry {
    /// The handle of a frontend, created on first use.
    pub fn frontend(&self, name: &str) -> Arc<FrontendMetrics> {
        self.inner
            .lock()
            .frontends
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The handle of a backend, created on first use.
    pub fn backend(&self, name: &str) -> Arc<BackendMetrics> {
        self.inner
            .lock()
            .backends
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The handle of a backend server, created on first use.
    pub fn server(&self, backend: &str, server: &str) -> Arc<ServerMetrics> {
        self.inner
            .lock()
            .servers
            .entry((backend.to_owned(), server.to_owned()))
            .or_default()
            .clone()
    }

    /// Drops the handles of frontends, backends and servers no longer configured.
    pub fn retain(&self, frontends: &[&str], backends: &[&str], servers: &[(&str, &str)]) {
        let mut h = self.inner.lock();
        h.frontends.retain(|k, _| frontends.contains(&k.as_str()));
        h.backends.retain(|k, _| backends.contains(&k.as_str()));
        h.servers
            .retain(|(b, s), _| servers.contains(&(b.as_str(), s.as_str())));
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(&self, node: &str, phase: &str) -> String {
        let mut out = String::with_capacity(8192);
        let h = self.inner.lock();
        let l = |s: &str| escape(s);
        let _ = writeln!(
            out,
            "# HELP sluice_up Whether the node is serving (1) or starting/draining (0)."
        );
        let _ = writeln!(out, "# TYPE sluice_up gauge");
        let _ = writeln!(
            out,
            "sluice_up{{node=\"{}\",phase=\"{phase}\"}} {}",
            l(node),
            u8::from(phase == "serving")
        );
        let _ = writeln!(out, "# TYPE sluice_config_reloads_total counter");
        let _ = writeln!(
            out,
            "sluice_config_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "sluice_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_failed.load(Relaxed)
        );

        let _ = writeln!(
            out,
            "# HELP sluice_connections_total Client connections accepted, by frontend and outcome."
        );
        let _ = writeln!(out, "# TYPE sluice_connections_total counter");
        for (name, m) in &h.frontends {
            for o in CONN_OUTCOMES {
                let _ = writeln!(
                    out,
                    "sluice_connections_total{{frontend=\"{}\",outcome=\"{}\"}} {}",
                    l(name),
                    OUTCOMES[o as usize],
                    m.connections_by_outcome[o as usize].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_connections_active Client connections open, by frontend."
        );
        let _ = writeln!(out, "# TYPE sluice_connections_active gauge");
        for (name, m) in &h.frontends {
            let _ = writeln!(
                out,
                "sluice_connections_active{{frontend=\"{}\"}} {}",
                l(name),
                m.connections_active.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_connection_errors_total Client connections closed before serving, by reason."
        );
        let _ = writeln!(out, "# TYPE sluice_connection_errors_total counter");
        for (name, m) in &h.frontends {
            for (i, r) in CONN_ERRORS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "sluice_connection_errors_total{{frontend=\"{}\",reason=\"{r}\"}} {}",
                    l(name),
                    m.conn_errors[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_http_requests_total HTTP requests by frontend, status class (none: closed by a reject rule) and outcome."
        );
        let _ = writeln!(out, "# TYPE sluice_http_requests_total counter");
        for (name, m) in &h.frontends {
            for (c, class) in CLASSES.iter().enumerate() {
                for (o, outcome) in OUTCOMES.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "sluice_http_requests_total{{frontend=\"{}\",code=\"{class}\",outcome=\"{outcome}\"}} {}",
                        l(name),
                        m.requests[c][o].load(Relaxed)
                    );
                }
            }
            // A rejected request has no answer, hence no status class.
            let _ = writeln!(
                out,
                "sluice_http_requests_total{{frontend=\"{}\",code=\"none\",outcome=\"rejected\"}} {}",
                l(name),
                m.requests_rejected.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_http_request_duration_seconds Time from a request head to its response head."
        );
        let _ = writeln!(out, "# TYPE sluice_http_request_duration_seconds histogram");
        for (name, m) in &h.frontends {
            m.latency.render(
                &mut out,
                "sluice_http_request_duration_seconds",
                &format!("frontend=\"{}\"", l(name)),
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_backend_no_server_total Requests or connections that found no server up."
        );
        let _ = writeln!(out, "# TYPE sluice_backend_no_server_total counter");
        for (name, m) in &h.backends {
            let _ = writeln!(
                out,
                "sluice_backend_no_server_total{{backend=\"{}\"}} {}",
                l(name),
                m.no_server.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE sluice_backend_retries_total counter");
        for (name, m) in &h.backends {
            let _ = writeln!(
                out,
                "sluice_backend_retries_total{{backend=\"{}\"}} {}",
                l(name),
                m.retries.load(Relaxed)
            );
        }
        type Get = fn(&ServerMetrics) -> u64;
        let per_server: [(&str, &str, &str, Get); 6] = [
            (
                "sluice_backend_server_up",
                "gauge",
                "Health state of a server (1 = up).",
                |m| u64::from(m.up.load(Relaxed)),
            ),
            (
                "sluice_backend_server_active",
                "gauge",
                "Requests or connections in flight to a server.",
                |m| m.active.load(Relaxed),
            ),
            (
                "sluice_backend_server_connections_total",
                "counter",
                "Connections opened to a server.",
                |m| m.connections.load(Relaxed),
            ),
            (
                "sluice_backend_server_connect_errors_total",
                "counter",
                "Failed connection attempts to a server.",
                |m| m.connect_errors.load(Relaxed),
            ),
            (
                "sluice_backend_server_response_errors_total",
                "counter",
                "Requests that failed after being sent.",
                |m| m.response_errors.load(Relaxed),
            ),
            (
                "sluice_backend_server_downs_total",
                "counter",
                "Transitions of a server to down.",
                |m| m.downs.load(Relaxed),
            ),
        ];
        for (metric, ty, help, get) in per_server {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} {ty}");
            for ((b, s), m) in &h.servers {
                let _ = writeln!(
                    out,
                    "{metric}{{backend=\"{}\",server=\"{}\"}} {}",
                    l(b),
                    l(s),
                    get(m)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_backend_server_responses_total Responses from a server by status class."
        );
        let _ = writeln!(out, "# TYPE sluice_backend_server_responses_total counter");
        for ((b, s), m) in &h.servers {
            for (c, class) in CLASSES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "sluice_backend_server_responses_total{{backend=\"{}\",server=\"{}\",code=\"{class}\"}} {}",
                    l(b),
                    l(s),
                    m.responses[c].load(Relaxed)
                );
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_histogram_render() {
        let r = Registry::default();
        let f = r.frontend("web");
        f.request(204, Outcome::Allowed);
        f.request(503, Outcome::Allowed);
        f.request(42, Outcome::Allowed); // nonsense status lands in 1xx, never panics
        f.latency.observe(Duration::from_micros(700));
        let s = r.server("app", "a1");
        s.up.store(true, Relaxed);
        let text = r.render("n1", "serving");
        assert!(text.contains(
            "sluice_http_requests_total{frontend=\"web\",code=\"2xx\",outcome=\"allowed\"} 1"
        ));
        assert!(text.contains(
            "sluice_http_requests_total{frontend=\"web\",code=\"5xx\",outcome=\"allowed\"} 1"
        ));
        assert!(text.contains(
            "sluice_http_request_duration_seconds_bucket{frontend=\"web\",le=\"0.0005\"} 0"
        ));
        assert!(text.contains(
            "sluice_http_request_duration_seconds_bucket{frontend=\"web\",le=\"0.001\"} 1"
        ));
        assert!(text.contains("sluice_backend_server_up{backend=\"app\",server=\"a1\"} 1"));
        assert!(text.contains("sluice_up{node=\"n1\",phase=\"serving\"} 1"));
    }
}
