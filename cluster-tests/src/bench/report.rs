//! Figures as they are measured, and the table the harness prints at the end: median (and
//! range) of each proxy's samples, the ratio sluice / HAProxy, and whether the goal is met.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Env, Opts, procs};

/// A progress line on stderr, with the seconds since the harness started.
pub(crate) fn note(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:7.1}s] {msg}");
}

/// What a figure should be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// No goal: context.
    None,
    /// sluice / HAProxy at least this.
    RatioAtLeast(f64),
    /// sluice / HAProxy at most this.
    RatioAtMost(f64),
    /// sluice at most this (in the figure's unit).
    AtMost(f64),
    /// sluice at least this.
    AtLeast(f64),
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    /// The phase that measured it.
    pub phase: &'static str,
    /// What it is.
    pub name: String,
    /// Its unit.
    pub unit: &'static str,
    /// sluice's samples, one per run.
    pub sluice: Vec<f64>,
    /// HAProxy's samples; empty when HAProxy has no counterpart.
    pub haproxy: Vec<f64>,
    /// The goal.
    pub goal: Goal,
    /// Decimals to print.
    pub decimals: usize,
}

impl Figure {
    /// A figure with samples of both proxies.
    pub(crate) fn new(phase: &'static str, name: &str, unit: &'static str) -> Figure {
        Figure {
            phase,
            name: name.to_owned(),
            unit,
            sluice: Vec::new(),
            haproxy: Vec::new(),
            goal: Goal::None,
            decimals: 0,
        }
    }

    /// With a goal.
    pub(crate) fn goal(mut self, g: Goal) -> Figure {
        self.goal = g;
        self
    }

    /// Printed with `d` decimals.
    pub(crate) fn decimals(mut self, d: usize) -> Figure {
        self.decimals = d;
        self
    }

    /// Adds a sample of `proxy` ("sluice" or "haproxy").
    pub(crate) fn push(&mut self, proxy: &str, v: f64) {
        if proxy == "sluice" {
            self.sluice.push(v);
        } else {
            self.haproxy.push(v);
        }
    }

    fn ratio(&self) -> Option<f64> {
        let (s, h) = (median(&self.sluice)?, median(&self.haproxy)?);
        (h != 0.0).then(|| s / h)
    }

    /// Whether the goal is met; `None` without a goal or samples.
    pub(crate) fn met(&self) -> Option<bool> {
        let s = median(&self.sluice)?;
        match self.goal {
            Goal::None => None,
            Goal::RatioAtLeast(r) => self.ratio().map(|x| x >= r),
            Goal::RatioAtMost(r) => self.ratio().map(|x| x <= r),
            Goal::AtMost(v) => Some(s <= v),
            Goal::AtLeast(v) => Some(s >= v),
        }
    }

    fn cell(&self, v: &[f64]) -> String {
        let Some(m) = median(v) else {
            return "—".into();
        };
        let d = self.decimals;
        if v.len() > 1 {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} [{}–{}]", num(m, d), num(lo, d), num(hi, d))
        } else {
            num(m, d)
        }
    }

    fn goal_text(&self) -> String {
        let g = match self.goal {
            Goal::None => return String::new(),
            Goal::RatioAtLeast(r) => format!("≥ {r} ×"),
            Goal::RatioAtMost(r) => format!("≤ {r} ×"),
            Goal::AtMost(v) => format!("≤ {}", num(v, self.decimals)),
            Goal::AtLeast(v) => format!("≥ {}", num(v, self.decimals)),
        };
        match self.met() {
            Some(true) => format!("{g} ✓"),
            Some(false) => format!("{g} ✗"),
            None => g,
        }
    }
}

/// Median of the samples.
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The `p`-quantile (0..=1) of the samples, nearest rank.
pub(crate) fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i.min(s.len() - 1)]
}

/// A number with thousands separators and `d` decimals.
fn num(v: f64, d: usize) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let s = format!("{:.*}", d, v.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(a, b)| (a, b));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 && int.len() > 4 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// Everything measured in this run.
#[derive(Debug)]
pub(crate) struct Report {
    header: Vec<String>,
    figures: Vec<Figure>,
    failures: Vec<String>,
    /// Lines printed under the table (raw samples, remarks).
    pub notes: Vec<String>,
}

impl Report {
    /// A report about this machine and these options.
    pub(crate) fn new(env: &Env, opts: &Opts) -> Report {
        let date = Command::new("date")
            .arg("+%Y-%m-%d %H:%M %Z")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default();
        // Counted from /proc: this process is already pinned to one CPU.
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0);
        let sluice_version = Command::new(&env.sluice)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Report {
            header: vec![
                format!(
                    "date: {date}; machine: {cpus} × {cpu}; {}",
                    procs::load_line()
                ),
                format!("{sluice_version}; {}", env.haproxy_version),
                format!(
                    "proxies pinned to CPU {} with one thread; load, backends and harness on CPU {}; {} alternating runs, {} s each",
                    procs::PROXY_CPU,
                    procs::LOAD_CPU,
                    opts.runs,
                    opts.secs
                ),
            ],
            figures: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a finished figure.
    pub(crate) fn add(&mut self, f: Figure) {
        self.figures.push(f);
    }

    /// Records a phase that failed.
    pub(crate) fn failed(&mut self, phase: &str, why: &str) {
        self.failures.push(format!("phase {phase} failed: {why}"));
    }

    /// Prints the table (Markdown, as `docs/benchmarks.md` quotes it).
    pub(crate) fn print(&self, took: Duration) {
        let mut out = String::new();
        let _ = writeln!(out, "\n# sluice vs HAProxy");
        for h in &self.header {
            let _ = writeln!(out, "# {h}");
        }
        let _ = writeln!(
            out,
            "# finished with {} after {:.1} min\n",
            procs::load_line(),
            took.as_secs_f64() / 60.0
        );
        let _ = writeln!(
            out,
            "| figure | unit | sluice | HAProxy | sluice / HAProxy | goal |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for f in &self.figures {
            let ratio = f.ratio().map_or("—".into(), |r| format!("{r:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                f.name,
                f.unit,
                f.cell(&f.sluice),
                f.cell(&f.haproxy),
                ratio,
                f.goal_text()
            );
        }
        for fail in &self.failures {
            let _ = writeln!(out, "\n{fail}");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        let met = self
            .figures
            .iter()
            .filter(|f| f.met() == Some(true))
            .count();
        let goals = self.figures.iter().filter(|f| f.met().is_some()).count();
        let _ = writeln!(out, "\ngoals met: {met} of {goals}");
        print!("{out}");
    }

    /// Every figure with its samples, as JSON.
    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let figs: Vec<serde_json::Value> = self
            .figures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "phase": f.phase, "name": f.name, "unit": f.unit,
                    "sluice": f.sluice, "haproxy": f.haproxy,
                    "ratio": f.ratio(), "met": f.met(),
                })
            })
            .collect();
        let doc =
            serde_json::json!({ "header": self.header, "figures": figs, "notes": self.notes });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        Ok(())
    }
}
