//! The processes a benchmark starts: pinned to a CPU with `taskset`, killed when dropped, and
//! read from `/proc` for CPU time and resident memory.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The CPU the proxies run on.
pub(crate) const PROXY_CPU: usize = 0;
/// The CPU load generators, backends and the harness run on.
pub(crate) const LOAD_CPU: usize = 1;

/// Clock ticks per second in `/proc/PID/stat` (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// A child process pinned to one CPU; killed (`SIGKILL`) when dropped if still running.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program ARGS` on `cpu`, its stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: &str,
        cpu: usize,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        // taskset execs the program: the child's pid is the program's.
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// User + system CPU seconds it used so far.
    pub(crate) fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// Resident memory, bytes.
    pub(crate) fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// `SIGTERM`, then waits up to `grace` for the exit before `SIGKILL`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether it has not exited yet.
    pub(crate) fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the exit (a tool that ends by itself), at most `within`, and returns whether
    /// it exited successfully.
    pub(crate) fn wait(&mut self, within: Duration) -> anyhow::Result<bool> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        let end = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.success());
            }
            if Instant::now() > end {
                bail!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// User + system CPU seconds of process `pid`.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it do not.
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12th and 13th after the name.
    (field(11) + field(12)) / CLK_TCK
}

/// One CPU's time counters from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTimes {
    busy: u64,
    idle: u64,
}

impl CpuTimes {
    /// The counters of CPU `cpu` now (zero if `/proc/stat` cannot be read).
    pub(crate) fn of(cpu: usize) -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let name = format!("cpu{cpu}");
        let Some(line) = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        else {
            return CpuTimes::default();
        };
        let t: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| t.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal: idle and iowait are idle time.
        CpuTimes {
            busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
            idle: at(3) + at(4),
        }
    }

    /// The share of the time since `before` this CPU was busy, percent.
    pub(crate) fn busy_since(&self, before: &CpuTimes) -> f64 {
        let busy = self.busy.saturating_sub(before.busy) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        if busy + idle == 0.0 {
            0.0
        } else {
            100.0 * busy / (busy + idle)
        }
    }
}

/// Pins this process (every thread, present and future) to `cpu`.
pub(crate) fn pin_self(cpu: usize) -> anyhow::Result<()> {
    pin(std::process::id(), cpu)
}

/// Pins process `pid` (every thread, present and future) to `cpu`.
pub(crate) fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string()])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
        .context("taskset")?
        .success();
    if !ok {
        bail!("taskset could not pin process {pid} to CPU {cpu}");
    }
    Ok(())
}

/// The real-time priority [`realtime`] gives a measuring process.
pub(crate) const RT_PRIORITY: u8 = 10;

/// Moves process `pid` (every thread) to `SCHED_FIFO` at [`RT_PRIORITY`] with `chrt`, so that
/// on a core a busy load generator saturates it runs as soon as it is woken. Needs
/// `CAP_SYS_NICE` (root); the error says so.
pub(crate) fn realtime(pid: u32) -> anyhow::Result<()> {
    let out = Command::new("chrt")
        .args(["-a", "-f", "-p", &RT_PRIORITY.to_string()])
        .arg(pid.to_string())
        .output()
        .context("chrt")?;
    if !out.status.success() {
        bail!(
            "chrt could not make process {pid} real-time (needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until something accepts connections on `127.0.0.1:port`.
pub(crate) fn wait_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The load average and what runs now, for the record: measurements are meaningful only on a
/// quiet machine.
pub(crate) fn load_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut f = load.split_whitespace();
    format!(
        "load average {} {} {}",
        f.next().unwrap_or("?"),
        f.next().unwrap_or("?"),
        f.next().unwrap_or("?")
    )
}

/// A free port on loopback.
pub(crate) fn port() -> u16 {
    cluster_tests::free_port()
}
