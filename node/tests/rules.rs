//! Rules on the real request path (SPEC §4, `docs/rules.md`): request-rate limits with their
//! `429` headers, dry runs, connection floods, concurrent-connection caps, a gpc0 flag that
//! tarpits, a bandwidth cap, and rules refused at load time. Clients get distinct source
//! addresses by binding to 127.0.0.2, 127.0.0.3, … before connecting.

mod util;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use sluice_node::Config;
use sluice_sync::{DataType, Key, Tick};
use util::{Client, TestBackend, TestNode, connect_from, http_config, read_to_close, wait_until};

/// A table `per_ip` keyed by address storing `store`.
fn table(store: &str) -> String {
    format!(
        "[[table]]\nname = \"per_ip\"\nkey = \"ip\"\nsize = 1000\nexpire = \"60s\"\nstore = [{store}]\n"
    )
}

/// `[frontend.rules]` with the given lists (TOML arrays, written out).
fn rules(connection: &str, request: &str) -> String {
    format!("[frontend.rules]\nconnection = [{connection}]\nrequest = [{request}]\n")
}

/// A node with the table `per_ip` storing `store` and the frontend `web` in front of `app`,
/// `frontend` added to the frontend's section (its rules, limits).
async fn node_with(app: &TestBackend, store: &str, frontend: &str) -> TestNode {
    TestNode::start(&format!(
        "{}{}",
        table(store),
        http_config(&[app], "", frontend)
    ))
    .await
}

fn key(ip: &str) -> Key {
    Key::from_ip(ip.parse::<IpAddr>().unwrap())
}

/// The table's fleet-merged value of `ty` for `ip` at `at`.
fn read(n: &TestNode, ip: &str, ty: DataType, at: Tick) -> Option<u64> {
    n.node.tables().get("per_ip")?.read_key(&key(ip), ty, at)
}

fn now(n: &TestNode) -> Tick {
    n.node.clock().tick()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn metric(n: &TestNode, line_prefix: &str) -> u64 {
    let text = n.node.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric `{line_prefix}` in:\n{text}"))
}

/// The sliding-window rate of `count` events counted in one period of `p` ms that started
/// `e` ms ago, with nothing counted before or since (SPEC §5).
fn formula(count: u64, p: u64, e: u64) -> u64 {
    if e < p {
        count
    } else if e < 2 * p {
        count * (2 * p - e) / p
    } else {
        0
    }
}

// A 2 s period keeps the test short: 150 requests take well under a second on loopback, and
// the window slides within the next two seconds.
const PERIOD_MS: u64 = 2000;
const LIMIT: u64 = 100;

async fn rate_limited_node(dry_run: bool) -> (TestNode, TestBackend) {
    let app = TestBackend::start("app1").await;
    let extra = format!(
        "dry_run = {dry_run}\n{}",
        rules(
            "\"track-sc0 src table per_ip\"",
            "\"deny status 429 if sc0_http_req_rate > 100\""
        )
    );
    (node_with(&app, "\"http_req_rate(2s)\"", &extra).await, app)
}

#[tokio::test]
async fn request_rate_limit_admits_100_of_150_and_slides_back_as_the_formula_predicts() {
    let (n, app) = rate_limited_node(false).await;
    let addr = n.addr("web");

    // The window starts when the connection tracks the entry, between these two ticks.
    let before = now(&n);
    let mut a = Client::connect_from("127.0.0.2", addr).await;
    let (status, _) = a.get("/").await;
    assert_eq!(status, 200);
    let after_first = now(&n);
    let (mut ok, mut limited) = (1u64, 0u64);
    for i in 2..=150u64 {
        let (status, headers, _) = a.send(get("/")).await;
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                if i == 101 {
                    check_429_headers(&n, &headers, before);
                }
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let burst_ms = u64::from(now(&n).since(before));
    assert!(
        burst_ms < PERIOD_MS,
        "the burst must fit one period ({burst_ms} ms)"
    );
    assert_eq!((ok, limited), (100, 50));
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 100);
    assert_eq!(
        metric(
            &n,
            "sluice_http_requests_total{frontend=\"web\",code=\"4xx\",outcome=\"denied\"}"
        ),
        50
    );

    // Another client address is unaffected: its whole quota is served.
    let mut b = Client::connect_from("127.0.0.3", addr).await;
    for _ in 0..LIMIT {
        assert_eq!(b.get("/").await.0, 200);
    }

    // The window slides: once 150 × (2P − e)/P has fallen to 60 (e ≈ 3.2 s), the client is
    // admitted again for 100 − rate requests.
    wait_until(
        Duration::from_secs(6),
        "the rate slides below 60",
        || async { read(&n, "127.0.0.2", DataType::HttpReqRate, now(&n)).is_some_and(|r| r <= 60) },
    )
    .await;
    let t0 = now(&n);
    let r0 = read(&n, "127.0.0.2", DataType::HttpReqRate, t0).unwrap();
    // The same number from the formula, with the window's start known within the ticks
    // measured around the first request.
    let (e_min, e_max) = (
        u64::from(t0.since(after_first)),
        u64::from(t0.since(before)),
    );
    assert!(
        (formula(150, PERIOD_MS, e_max)..=formula(150, PERIOD_MS, e_min)).contains(&r0),
        "table rate {r0} outside the formula's {}..={} (e in {e_min}..={e_max} ms)",
        formula(150, PERIOD_MS, e_max),
        formula(150, PERIOD_MS, e_min)
    );
    assert!(
        e_min >= PERIOD_MS,
        "the read is in the next period ({e_min} ms)"
    );
    let mut admitted = 0;
    for _ in 0..60 {
        if a.get("/").await.0 == 200 {
            admitted += 1;
        }
    }
    let t1 = now(&n);
    // Request k of the burst is admitted while prev_weighted(t_k) + k <= 100, and the weighted
    // previous period only shrinks during the burst: from r0 to its value at the end.
    let end_prev = read(&n, "127.0.0.2", DataType::HttpReqRate, t1).unwrap() - 60;
    assert!(
        u64::from(t1.since(before)) < 2 * PERIOD_MS,
        "the burst stays within the second period"
    );
    assert!(
        (LIMIT - r0..=LIMIT - end_prev).contains(&admitted),
        "admitted {admitted}, the formula predicts {}..={} (weighted previous period {r0} → {end_prev})",
        LIMIT - r0,
        LIMIT - end_prev
    );
    n.stop().await;
    app.stop().await;
}

/// The 101st request's `429`: the headers announce quota 100 per 2 s and a reset that the
/// table confirms: at the announced second a retry is admitted, a second earlier it is not.
fn check_429_headers(n: &TestNode, headers: &hyper::HeaderMap, before: Tick) {
    let at = now(n);
    let h = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(h("ratelimit-policy"), "\"http_req_rate\";q=100;w=2");
    let retry: u64 = h("retry-after").parse().unwrap();
    assert_eq!(h("ratelimit"), format!("\"http_req_rate\";r=0;t={retry}"));
    // A retry counts itself: admitted when the rate is at most 99.
    let rate_at = |t: Tick| read(n, "127.0.0.2", DataType::HttpReqRate, t).unwrap();
    let s = |secs: u64| (secs * 1000) as u32;
    assert!(
        rate_at(at.plus(s(retry))) < LIMIT,
        "admitted after Retry-After"
    );
    assert!(
        rate_at(before.plus(s(retry - 1))) >= LIMIT,
        "not admitted a second earlier"
    );
    // From the formula: 101 requests in the first period (started at `before` at the
    // earliest) fall to 99 at 101 × (2P − e)/P < 100, e > 2P − 100P/101: 3 s at most.
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
}

#[tokio::test]
async fn dry_run_lets_every_request_through_and_counts_would_be_denials() {
    let (n, app) = rate_limited_node(true).await;
    let mut a = Client::connect_from("127.0.0.2", n.addr("web")).await;
    for _ in 0..150 {
        let (status, headers, _) = a.send(get("/")).await;
        assert_eq!(status, 200);
        assert!(headers.get("retry-after").is_none());
    }
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 150);
    // Tracking happened: the table saw every request.
    assert_eq!(
        read(&n, "127.0.0.2", DataType::HttpReqRate, now(&n)),
        Some(150)
    );
    let m = |o: &str| {
        metric(
            &n,
            &format!("sluice_http_requests_total{{frontend=\"web\",code=\"2xx\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(m("dry_run_denied"), 50);
    assert_eq!(m("allowed"), 100);
    assert_eq!(m("denied"), 0);
    n.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn connection_rate_rejects_excess_connections_without_reading_a_byte() {
    let app = TestBackend::start("app1").await;
    let n = node_with(
        &app,
        "\"conn_rate(10s)\"",
        &rules(
            "\"track-sc0 src table per_ip\", \"reject if sc0_conn_rate > 5\"",
            "",
        ),
    )
    .await;
    let addr = n.addr("web");
    for _ in 0..5 {
        let mut c = Client::connect_from("127.0.0.4", addr).await;
        assert_eq!(c.get("/").await.0, 200);
    }
    // The 6th: closed at once, though the client has sent nothing (nothing was waited for).
    let mut s = connect_from("127.0.0.4", addr).await;
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "closed without an answer");
    // The 7th sends a request anyway: it is never read, never answered, never forwarded.
    let mut s = connect_from("127.0.0.4", addr).await;
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "closed without an answer");
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(
        metric(
            &n,
            "sluice_connections_total{frontend=\"web\",outcome=\"rejected\"}"
        ),
        2
    );
    // Rejected connections count too: 7 in the window.
    assert_eq!(read(&n, "127.0.0.4", DataType::ConnRate, now(&n)), Some(7));
    // Another address is unaffected.
    assert_eq!(
        Client::connect_from("127.0.0.5", addr)
            .await
            .get("/")
            .await
            .0,
        200
    );
    n.stop().await;
    app.stop().await;
}

/// A refused connection ends with a reset; an admitted one, accepted from the same listener
/// (whose sockets start with a zero linger), ends with a FIN when the proxy closes it.
#[tokio::test]
async fn refused_connections_are_reset_and_admitted_ones_close_gracefully() {
    use tokio::io::AsyncWriteExt;
    let app = TestBackend::start("app1").await;
    let n = node_with(
        &app,
        "\"conn_rate(10s)\"",
        &format!(
            "limits = {{ keepalive_timeout = \"100ms\" }}\n{}",
            rules(
                "\"track-sc0 src table per_ip\", \"reject if sc0_conn_rate > 2\"",
                ""
            )
        ),
    )
    .await;
    let addr = n.addr("web");
    for _ in 0..2 {
        // Answered, then closed by the proxy once idle.
        let mut s = connect_from("127.0.0.9", addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, ending) = util::read_to_end(&mut s, Duration::from_secs(5)).await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "answered");
        assert!(got.ends_with(b"app1"), "the whole answer");
        assert_eq!(
            ending,
            util::Ending::Fin,
            "an admitted connection ends with a FIN"
        );
    }
    // The third is over the rate: reset, unread.
    let mut s = connect_from("127.0.0.9", addr).await;
    let (got, ending) = util::read_to_end(&mut s, Duration::from_secs(5)).await;
    assert_eq!((got.as_slice(), ending), (&b""[..], util::Ending::Reset));
    n.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn concurrent_connections_are_capped_per_client() {
    let app = TestBackend::start("app1").await;
    let n = node_with(
        &app,
        "\"conn_cur\"",
        &rules(
            "\"track-sc0 src table per_ip\", \"reject if sc0_conn_cur > 3\"",
            "",
        ),
    )
    .await;
    let addr = n.addr("web");
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect_from("127.0.0.6", addr).await;
        assert_eq!(c.get("/").await.0, 200);
        open.push(c);
    }
    assert_eq!(read(&n, "127.0.0.6", DataType::ConnCur, now(&n)), Some(3));
    let mut s = connect_from("127.0.0.6", addr).await;
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed && got.is_empty(),
        "the 4th concurrent connection is closed"
    );
    // Closing one frees a place: conn_cur follows the connection's end.
    drop(open.pop());
    wait_until(Duration::from_secs(5), "conn_cur drops to 2", || async {
        read(&n, "127.0.0.6", DataType::ConnCur, now(&n)) == Some(2)
    })
    .await;
    let mut c = Client::connect_from("127.0.0.6", addr).await;
    assert_eq!(c.get("/").await.0, 200);
    drop(c);
    drop(open);
    wait_until(Duration::from_secs(5), "conn_cur drops to 0", || async {
        read(&n, "127.0.0.6", DataType::ConnCur, now(&n)) == Some(0)
    })
    .await;
    n.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_gpc0_flag_set_on_errors_tarpits_the_client() {
    let app = TestBackend::start("app1").await;
    let n = node_with(
        &app,
        "\"http_err_rate(10s)\", \"gpc0\"",
        &rules(
            "\"track-sc0 src table per_ip\"",
            "\"sc-inc-gpc0 0 if sc0_http_err_rate > 10\", \"tarpit 1s if sc0_gpc0 > 0\"",
        ),
    )
    .await;
    let addr = n.addr("web");
    let mut c = Client::connect_from("127.0.0.7", addr).await;
    for _ in 0..11 {
        assert_eq!(c.get("/status/404").await.0, 404);
    }
    assert_eq!(
        read(&n, "127.0.0.7", DataType::HttpErrRate, now(&n)),
        Some(11)
    );
    assert_eq!(read(&n, "127.0.0.7", DataType::Gpc0, now(&n)), Some(0));
    // The 12th request sees 11 errors: the flag is set and the request held.
    let start = Instant::now();
    let (status, headers, _) = c.send(get("/")).await;
    let held = start.elapsed();
    assert_eq!(status, 429);
    assert!(held >= Duration::from_secs(1), "held {held:?}");
    assert!(
        headers.get("retry-after").is_none(),
        "a flag is not a rate threshold"
    );
    assert_eq!(read(&n, "127.0.0.7", DataType::Gpc0, now(&n)), Some(1));
    // A fresh connection from the same address is held too: the flag is in the table.
    let mut again = Client::connect_from("127.0.0.7", addr).await;
    let start = Instant::now();
    assert_eq!(again.get("/").await.0, 429);
    assert!(start.elapsed() >= Duration::from_secs(1));
    // Another client is not.
    let mut other = Client::connect_from("127.0.0.8", addr).await;
    let start = Instant::now();
    assert_eq!(other.get("/").await.0, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        metric(
            &n,
            "sluice_http_requests_total{frontend=\"web\",code=\"4xx\",outcome=\"tarpitted\"}"
        ),
        2
    );
    n.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_tarpit_ends_when_the_node_drains() {
    let app = TestBackend::start("app1").await;
    let n = node_with(
        &app,
        "\"http_req_cnt\"",
        &rules("\"track-sc0 src table per_ip\"", "\"tarpit 1h\""),
    )
    .await;
    let mut c = Client::connect_from("127.0.0.11", n.addr("web")).await;
    let held = tokio::spawn(async move {
        let start = Instant::now();
        let (status, _) = c.get("/").await;
        (status, start.elapsed())
    });
    // The request was counted just before its rules ran: it is being held now.
    wait_until(Duration::from_secs(5), "the request is held", || async {
        read(&n, "127.0.0.11", DataType::HttpReqCnt, now(&n)) == Some(1)
    })
    .await;
    let stopping = Instant::now();
    n.stop().await;
    let (status, took) = held.await.unwrap();
    assert_eq!(status, 429);
    assert!(
        took < Duration::from_secs(30),
        "answered on drain, after {took:?}"
    );
    assert!(stopping.elapsed() < Duration::from_secs(10));
    app.stop().await;
}

#[tokio::test]
async fn a_bandwidth_rule_denies_a_client_that_uploads_too_fast() {
    let app = TestBackend::start("app1").await;
    let n = node_with(
        &app,
        "\"bytes_in_rate(10s)\"",
        &rules(
            "\"track-sc0 src table per_ip\"",
            "\"deny status 429 if sc0_bytes_in_rate > 100000\"",
        ),
    )
    .await;
    let addr = n.addr("web");
    let post = |len: usize| {
        Request::post("/echo")
            .header("host", "test")
            .body(Full::new(util::pattern(len)))
            .unwrap()
    };
    // Two 64 KiB uploads pass (the second is checked at 65536 bytes), the third request
    // finds 131072 bytes in the window.
    let mut fast = Client::connect_from("127.0.0.9", addr).await;
    for _ in 0..2 {
        let (status, _, body) = fast.send(post(65536)).await;
        assert_eq!((status, body.len()), (200, 65536));
    }
    assert_eq!(
        read(&n, "127.0.0.9", DataType::BytesInRate, now(&n)),
        Some(131_072)
    );
    let (status, headers, _) = fast.send(get("/")).await;
    assert_eq!(status, 429);
    assert_eq!(
        headers.get("ratelimit-policy").unwrap(),
        "\"bytes_in_rate\";q=100000;w=10;qu=\"content-bytes\""
    );
    // A client uploading less is served.
    let mut slow = Client::connect_from("127.0.0.10", addr).await;
    for _ in 0..3 {
        assert_eq!(slow.send(post(10_000)).await.0, 200);
    }
    n.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_request_stage_track_counts_per_header_and_reject_closes_the_connection() {
    let app = TestBackend::start("app1").await;
    let toml = format!(
        "[[table]]\nname = \"per_key\"\nkey = \"string(8)\"\nsize = 100\nexpire = \"60s\"\n\
         store = [\"http_req_cnt\", \"http_err_cnt\"]\n{}",
        http_config(
            &[&app],
            "",
            &rules(
                "",
                "\"track-sc1 hdr(x-api-key) table per_key\", \"reject if sc1_http_req_cnt > 3\""
            )
        )
    );
    let n = TestNode::start(&toml).await;
    let addr = n.addr("web");
    let keyed = |k: &str, path: &str| {
        Request::get(path)
            .header("host", "test")
            .header("x-api-key", k)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut c = Client::connect(addr).await;
    for _ in 0..2 {
        assert_eq!(c.send(keyed("abcdefgh-long", "/")).await.0, 200);
    }
    assert_eq!(c.send(keyed("abcdefgh", "/status/404")).await.0, 404);
    // Keys are cut to the table's 8 bytes: all three requests are one entry's.
    let t = n.node.tables().get("per_key").unwrap();
    let k = Key::from_str_truncated("abcdefgh", 8);
    assert_eq!(t.read_key(&k, DataType::HttpReqCnt, now(&n)), Some(3));
    assert_eq!(t.read_key(&k, DataType::HttpErrCnt, now(&n)), Some(1));
    // Requests without the header track nothing and pass.
    for _ in 0..5 {
        assert_eq!(c.get("/").await.0, 200);
    }
    // The 4th keyed request is rejected: the connection closes with no answer.
    c.sender.ready().await.unwrap();
    let res = c.sender.send_request(keyed("abcdefgh", "/")).await;
    assert!(res.is_err(), "no answer: {res:?}");
    assert_eq!(
        metric(
            &n,
            "sluice_http_requests_total{frontend=\"web\",code=\"none\",outcome=\"rejected\"}"
        ),
        1
    );
    n.stop().await;
    app.stop().await;
}

#[test]
fn bad_rules_are_refused_at_load_time_with_their_path_and_column() {
    let app = "[[backend]]\nname = \"app\"\nservers = [{ name = \"a\", addr = \"127.0.0.1:1\" }]\n";
    let config = |request: &str| {
        format!(
            "{}[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nbackend = \"app\"\n{}{app}",
            table("\"http_req_rate(10s)\""),
            rules("\"track-sc0 src table per_ip\"", request)
        )
    };
    let err = |request: &str| match Config::from_toml(&config(request)) {
        Ok(_) => panic!("should be refused: {request}"),
        Err(e) => e,
    };
    // A parse error points at the column of the offending text.
    let e = err("\"allow\", \"deny if sc0_http_req_rate => 100\"");
    assert_eq!(e.path, "frontend[0].rules.request[1]", "{e}");
    assert!(
        e.problem
            .starts_with("column 27: expected a comparison operator"),
        "{e}"
    );
    // An undeclared table.
    let e = err("\"allow if src == 10.0.0.0/8\", \"track-sc1 src table per_ipp\"");
    assert_eq!(e.path, "frontend[0].rules.request[1]", "{e}");
    assert!(e.problem.contains("unknown table `per_ipp`"), "{e}");
    // A data type the table does not store.
    let e = err("\"allow if src == 10.0.0.0/8\", \"deny if sc0_http_err_rate > 10\"");
    assert_eq!(e.path, "frontend[0].rules.request[1]", "{e}");
    assert!(
        e.problem
            .contains("table `per_ip` does not store `http_err_rate`"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("<config>: frontend[0].rules.request[1]: column "),
        "{e}"
    );
    // The good config loads.
    Config::from_toml(&config("\"deny status 429 if sc0_http_req_rate > 100\"")).unwrap();
}
