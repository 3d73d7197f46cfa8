//! Active health checks: an HTTP `GET` of the configured path (any 2xx or 3xx is healthy) or,
//! without a path, a TCP connect. `fall` consecutive failures take a server down and `rise`
//! consecutive successes bring it back; a down server gets no new traffic.

use std::sync::Weak;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Background, Server};
use crate::config::CheckConfig;

pub(super) fn spawn(
    backend: String,
    server: Weak<Server>,
    check: CheckConfig,
    token: CancellationToken,
    bg: &Background,
) {
    bg.tracker.spawn(async move {
        let mut ok_streak = 0u32;
        let mut fail_streak = 0u32;
        let mut interval = tokio::time::interval(check.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = interval.tick() => {}
            }
            let Some(server) = server.upgrade() else { return };
            let result = tokio::time::timeout(check.timeout, probe(&server, &check)).await;
            let outcome = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(why),
                Err(_) => Err("timed out".to_owned()),
            };
            let up = server.metrics.up.load(Relaxed);
            match outcome {
                Ok(()) => {
                    fail_streak = 0;
                    ok_streak = ok_streak.saturating_add(1);
                    if !up && ok_streak >= check.rise.get() {
                        server.metrics.up.store(true, Relaxed);
                        info!(backend = %backend, server = %server.name, "server is up");
                    }
                }
                Err(why) => {
                    ok_streak = 0;
                    fail_streak = fail_streak.saturating_add(1);
                    debug!(backend = %backend, server = %server.name, reason = %why, "health check failed");
                    if up && fail_streak >= check.fall.get() {
                        server.metrics.up.store(false, Relaxed);
                        server.metrics.downs.fetch_add(1, Relaxed);
                        server.pool.clear();
                        warn!(backend = %backend, server = %server.name, reason = %why, "server is down");
                    }
                }
            }
        }
    });
}

async fn probe(server: &Server, check: &CheckConfig) -> Result<(), String> {
    let mut stream = server
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(path) = &check.path else {
        return Ok(());
    };
    let host = server.config.addr.to_string();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // Only the status line matters.
    let mut buf = [0u8; 512];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP response: {:?}", line.trim_end()));
    }
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
