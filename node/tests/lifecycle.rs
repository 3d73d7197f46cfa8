//! Reload, drain, the operations endpoint, and the `sluice` binary with real signals.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use sluice_node::{Config, NodeError, Phase};
use util::{Client, TestBackend, TestNode, get, http_config, wait_until};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn reload_applies_new_frontends_and_servers_and_keeps_connections() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let n = TestNode::start(&http_config(&[&a], "", "")).await;
    let web = n.addr("web");
    let mut kept = Client::connect(web).await;
    assert_eq!(kept.get("/").await.1, Bytes::from("a"));

    let second = format!(
        "{}\n[[frontend]]\nname = \"web2\"\nbind = \"127.0.0.1:0\"\nbackend = \"app\"\n",
        http_config(&[&b], "", "")
    );
    n.node
        .reload(Config::from_toml(&second).unwrap())
        .await
        .unwrap();
    // Same frontend, same socket; new connections see the new servers.
    assert_eq!(n.addr("web"), web);
    assert_eq!(get(web, "/").await.1, Bytes::from("b"));
    assert_eq!(get(n.addr("web2"), "/").await.1, Bytes::from("b"));
    // The established connection carries on.
    assert_eq!(kept.get("/").await.0, 200);

    // A config that cannot be applied (port taken) changes nothing.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = format!(
        "{}\n[[frontend]]\nname = \"web3\"\nbind = \"{}\"\nbackend = \"app\"\n",
        http_config(&[&a], "", ""),
        taken.local_addr().unwrap()
    );
    let err = n
        .node
        .reload(Config::from_toml(&bad).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Bind { .. }), "{err}");
    assert_eq!(get(web, "/").await.1, Bytes::from("b"));
    assert!(n.node.frontend_addr("web3").is_none());
    assert!(
        n.node
            .render_metrics()
            .contains("sluice_config_reloads_total{result=\"error\"} 1")
    );

    // Removing a frontend stops its listener.
    n.node
        .reload(Config::from_toml(&http_config(&[&b], "", "")).unwrap())
        .await
        .unwrap();
    assert!(n.node.frontend_addr("web2").is_none());
    n.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_request() {
    let a = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&a], "", "")).await;
    let web = n.addr("web");
    let slow = tokio::spawn(async move { get(web, "/slow").await });
    wait_until(5 * SECOND, "slow request reached the backend", || async {
        a.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;

    let mut phase = n.node.phase();
    let stopped = begin_drain(&n);
    tokio::time::timeout(5 * SECOND, phase.wait_for(|p| *p == Phase::Draining))
        .await
        .unwrap()
        .unwrap();
    // No longer accepting.
    wait_until(5 * SECOND, "listener closed", || async {
        tokio::net::TcpStream::connect(web).await.is_err()
    })
    .await;
    assert!(!stopped.is_finished());

    a.release();
    assert_eq!(slow.await.unwrap(), (200, Bytes::from("a slow")));
    drained_in_time(stopped).await;
    assert_eq!(*phase.borrow(), Phase::Stopped);
    a.stop().await;
}

#[tokio::test]
async fn draining_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(
        &[&a],
        "",
        "limits = { keepalive_timeout = \"60s\" }",
    ))
    .await;
    let mut idle = tokio::net::TcpStream::connect(n.addr("web")).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("\r\n\r\na") {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(5 * SECOND, idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "closed before its answer");
        got.extend_from_slice(&buf[..read]);
    }

    let stopped = begin_drain(&n);
    // Well before the keep-alive timeout.
    let (rest, closed) = util::read_to_close(&mut idle, 5 * SECOND).await;
    assert!(closed && rest.is_empty(), "closed without a word: {rest:?}");
    drained_in_time(stopped).await;
    a.stop().await;
}

/// Cancels the node's token; the task returned ends when the node has stopped.
fn begin_drain(n: &TestNode) -> tokio::task::JoinHandle<bool> {
    n.token.cancel();
    let node = n.node.clone();
    tokio::spawn(async move { node.stopped().await })
}

/// Fails unless the drain `begin_drain` started ends, cleanly, within 5 s.
async fn drained_in_time(stopped: tokio::task::JoinHandle<bool>) {
    let clean = tokio::time::timeout(5 * SECOND, stopped)
        .await
        .unwrap()
        .unwrap();
    assert!(clean, "drained in time");
}

/// Whether the node's `/metrics` say `web` has `n` client connections open.
fn connections_active(n: &TestNode, want: u64) -> bool {
    let line = format!("sluice_connections_active{{frontend=\"web\"}} {want}\n");
    n.node.render_metrics().contains(&line)
}

#[tokio::test]
async fn draining_answers_connections_whose_request_had_not_arrived() {
    use tokio::io::AsyncWriteExt;
    let a = TestBackend::start("a").await;
    let n = TestNode::start(&http_config(&[&a], "", "")).await;
    let web = n.addr("web");
    // One connection quiet, one with half a request head: both accepted before the drain.
    let mut quiet = tokio::net::TcpStream::connect(web).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(web).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    wait_until(5 * SECOND, "two connections accepted", || async {
        connections_active(&n, 2)
    })
    .await;

    let mut phase = n.node.phase();
    let stopped = begin_drain(&n);
    tokio::time::timeout(5 * SECOND, phase.wait_for(|p| *p != Phase::Serving))
        .await
        .unwrap()
        .unwrap();
    wait_until(5 * SECOND, "listener closed", || async {
        tokio::net::TcpStream::connect(web).await.is_err()
    })
    .await;

    half.write_all(b"\r\n").await.unwrap();
    quiet
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    for (which, s) in [("half-sent", &mut half), ("not yet sent", &mut quiet)] {
        let (out, closed) = util::read_to_close(s, 5 * SECOND).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{which}: {out:?}");
        assert!(
            out.to_lowercase().contains("connection: close"),
            "{which}: {out:?}"
        );
        assert!(closed, "{which}: closed after its answer");
    }
    drained_in_time(stopped).await;
    a.stop().await;
}

#[tokio::test]
async fn metrics_healthz_and_readyz() {
    let a = TestBackend::start("a").await;
    let cfg = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        http_config(&[&a], "", "")
    );
    let n = TestNode::start(&cfg).await;
    assert_eq!(get(n.addr("web"), "/").await.0, 200);
    let m = n.node.metrics_addr().unwrap();
    let (status, body) = get(m, "/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    for needle in [
        "sluice_http_requests_total{frontend=\"web\",code=\"2xx\",outcome=\"allowed\"} 1",
        "sluice_connections_total{frontend=\"web\",outcome=\"allowed\"}",
        "sluice_backend_server_up{backend=\"app\",server=\"a\"} 1",
        "sluice_backend_server_responses_total{backend=\"app\",server=\"a\",code=\"2xx\"} 1",
        "sluice_http_request_duration_seconds_count{frontend=\"web\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    assert_eq!(get(m, "/healthz").await.0, 200);
    assert_eq!(get(m, "/readyz").await.0, 200);
    n.stop().await;
    a.stop().await;
}

// === the binary ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(config: &std::path::Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(config)
            .arg("--log-format")
            .arg("json")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// Waits for a log line containing `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + 10 * SECOND;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn binary_reloads_on_sighup_refuses_a_broken_config_and_drains_on_sigterm() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let cfg = |server: &TestBackend| {
        http_config(&[server], "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    };
    std::fs::write(&path, cfg(&a)).unwrap();
    let p = Proc::start(&path);
    p.wait_log("\"serving\"");
    let web = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(web, "/").await.1, Bytes::from("a"));

    // A broken config is refused; the old one keeps serving.
    std::fs::write(
        &path,
        cfg(&b).replace("backend = \"app\"", "backend = \"nope\""),
    )
    .unwrap();
    p.signal("HUP");
    let line = p.wait_log("new config refused");
    assert!(line.contains("frontend[0].backend"), "{line}");
    assert_eq!(get(web, "/").await.1, Bytes::from("a"));

    // A good one takes effect.
    std::fs::write(&path, cfg(&b)).unwrap();
    p.signal("HUP");
    p.wait_log("config reloaded");
    assert_eq!(get(web, "/").await.1, Bytes::from("b"));

    // SIGTERM drains and exits 0.
    let mut p = p;
    p.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + 10 * SECOND;
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "sluice did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    a.stop().await;
    b.stop().await;
}

#[test]
fn check_prints_the_resolved_config_and_names_bad_fields() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nbackend = \"app\"\n\
         [[backend]]\nname = \"app\"\nservers = [{ name = \"s\", addr = \"app1:80\" }]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("header_timeout = \"10s\""), "{printed}");
    assert!(
        Config::from_toml(&printed).is_ok(),
        "printed config parses:\n{printed}"
    );

    for (text, field) in [
        ("[node]\nthreads = 1\nweight = 2\n", "node.weight"),
        (
            "[[frontend]]\nname = \"w\"\nbind = \"127.0.0.1:1\"\nbackend = \"x\"\n",
            "frontend[0].backend",
        ),
        ("[node]\ndrain_timeout = \"soon\"\n", "node.drain_timeout"),
        (
            "[[frontend]]\nname = \"w\"\nbind = \"127.0.0.1:1\"\nbackend = \"b\"\n\
             tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n\
             [[backend]]\nname = \"b\"\nservers = [{ name = \"s\", addr = \"127.0.0.1:2\" }]\n",
            "frontend[0].tls",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains(&bad.display().to_string()) && err.contains(field),
            "{field}: {err}"
        );
    }
}
