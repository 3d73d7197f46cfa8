//! Finding, installing and building what the benchmarks run: HAProxy, wrk, nginx, gcc (for the
//! flooder and the HTTP phase's backend), tcpdump (for stamps no observer adds to), and this
//! checkout's `sluice` and `sluicectl` in release mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::Opts;
use super::procs::{self, LOAD_CPU, Proc};

/// The tools and a scratch directory, ready for the phases.
#[derive(Debug)]
pub(crate) struct Env {
    /// `sluice` (release).
    pub sluice: PathBuf,
    /// `sluicectl` (release).
    pub sluicectl: PathBuf,
    /// `haproxy`.
    pub haproxy: PathBuf,
    /// `wrk`.
    pub wrk: PathBuf,
    /// `nginx`.
    pub nginx: PathBuf,
    /// `tcpdump`.
    pub tcpdump: PathBuf,
    /// The flooder built from `cluster-tests/bench/flood.c`.
    pub flood: PathBuf,
    /// The HTTP phase's backend built from `cluster-tests/bench/answer.c`.
    pub answer: PathBuf,
    /// `haproxy -v`, first line.
    pub haproxy_version: String,
    /// Configs, logs and state of this run; removed at the end.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Finds or installs the tools, builds sluice, pins this process to the load CPU.
    pub(crate) fn prepare(opts: &Opts) -> anyhow::Result<Env> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 {
            bail!(
                "the benchmarks pin the proxy and the load to two different CPUs; this machine has {cpus}"
            );
        }
        let missing: Vec<&str> = ["haproxy", "wrk", "nginx", "gcc", "taskset", "tcpdump"]
            .into_iter()
            .filter(|t| which(t).is_none())
            .collect();
        if !missing.is_empty() {
            install(&missing)?;
        }
        let find = |t: &str| which(t).with_context(|| format!("`{t}` not found after installing"));
        let haproxy = find("haproxy")?;
        let wrk = find("wrk")?;
        let nginx = find("nginx")?;
        let tcpdump = find("tcpdump")?;
        let (sluice, sluicectl) = match &opts.bin_dir {
            Some(d) => (d.join("sluice"), d.join("sluicectl")),
            None => build_sluice()?,
        };
        for b in [&sluice, &sluicectl] {
            if !b.exists() {
                bail!("{} does not exist", b.display());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench.")
            .tempdir()
            .context("temporary directory")?;
        let flood = build_c(dir.path(), "flood")?;
        let answer = build_c(dir.path(), "answer")?;
        let haproxy_version = Command::new(&haproxy)
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        procs::pin_self(LOAD_CPU)?;
        Ok(Env {
            sluice,
            sluicectl,
            haproxy,
            wrk,
            nginx,
            tcpdump,
            flood,
            answer,
            haproxy_version,
            dir,
        })
    }

    /// A path in the scratch directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` in the scratch directory.
    pub(crate) fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let p = self.path(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }

    /// `sluicectl certs init` for `nodes` into `name`/ of the scratch directory.
    pub(crate) fn certs(&self, name: &str, nodes: &[&str]) -> anyhow::Result<PathBuf> {
        let out = self.path(name);
        let res = Command::new(&self.sluicectl)
            .args(["certs", "init", "--out"])
            .arg(&out)
            .args(["--nodes", &nodes.join(",")])
            .env_remove("SLUICE_ADMIN")
            .output()
            .context("sluicectl certs init")?;
        if !res.status.success() {
            bail!(
                "sluicectl certs init: {}",
                String::from_utf8_lossy(&res.stderr)
            );
        }
        Ok(out)
    }

    /// nginx on the load CPU answering `200` with each server's name on its port. One process
    /// (`master_process off`): killing it ends nginx, where a killed master would leave its
    /// worker behind, listening, for the rest of the machine's life.
    pub(crate) fn nginx(&self, servers: &[(u16, &str)]) -> anyhow::Result<Proc> {
        let d = self.path("nginx");
        std::fs::create_dir_all(&d)?;
        let dd = d.display();
        let mut conf = format!(
            "master_process off; daemon off; pid {dd}/nginx.pid; error_log {dd}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 60s;\n\
             client_body_temp_path {dd}; proxy_temp_path {dd}; fastcgi_temp_path {dd}; uwsgi_temp_path {dd}; scgi_temp_path {dd};\n"
        );
        for (port, name) in servers {
            conf.push_str(&format!(
                "server {{ listen 127.0.0.1:{port} reuseport backlog=4096; location / {{ default_type text/plain; return 200 \"{name}\"; }} }}\n"
            ));
        }
        conf.push_str("}\n");
        let path = d.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let p = Proc::spawn(
            "nginx",
            LOAD_CPU,
            &self.nginx,
            &["-p", &dd.to_string(), "-c", &path.display().to_string()],
            &[],
            &d.join("stderr.log"),
        )?;
        for (port, _) in servers {
            procs::wait_port(*port, std::time::Duration::from_secs(10))?;
        }
        Ok(p)
    }

    /// `answer` on the load CPU answering `200` with `body` on `port` for at most `secs`.
    pub(crate) fn answer(&self, port: u16, body: &str, secs: u64) -> anyhow::Result<Proc> {
        let p = Proc::spawn(
            "answer",
            LOAD_CPU,
            &self.answer,
            &["-p", &port.to_string(), "-d", &secs.to_string(), "-b", body],
            &[],
            &self.path("answer.log"),
        )?;
        procs::wait_port(port, std::time::Duration::from_secs(10))?;
        Ok(p)
    }
}

/// `command -v`.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `apt-get install` of the Debian packages providing `tools`.
fn install(tools: &[&str]) -> anyhow::Result<()> {
    let pkgs: Vec<&str> = tools
        .iter()
        .map(|t| match *t {
            "nginx" => "nginx-light",
            "taskset" => "util-linux",
            other => other,
        })
        .collect();
    super::report::note(&format!("installing {} with apt-get", pkgs.join(" ")));
    let apt = |args: &[&str]| -> anyhow::Result<bool> {
        Ok(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context(
                "apt-get (install haproxy, wrk, nginx-light, gcc and tcpdump by hand if this is not Debian)",
            )?
            .success())
    };
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&pkgs);
    if !apt(&args)? {
        // A fresh machine may have no package lists yet.
        apt(&["update"])?;
        if !apt(&args)? {
            bail!("apt-get install {} failed", pkgs.join(" "));
        }
    }
    Ok(())
}

/// Builds `sluice` and `sluicectl` in release mode into this binary's own target directory
/// (this binary runs as TARGET/release/bench), with the cargo that runs it.
fn build_sluice() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("the harness's own path")?;
    let release = exe.parent().context("TARGET/release")?;
    let target = release.parent().context("TARGET")?;
    super::report::note("building sluice and sluicectl (release)");
    let release = cluster_tests::build_release(target).context("building sluice")?;
    Ok((release.join("sluice"), release.join("sluicectl")))
}

/// Compiles `cluster-tests/bench/{name}.c` into `dir`.
fn build_c(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("bench/{name}.c"));
    let out = dir.join(name);
    let res = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .context("gcc")?;
    if !res.status.success() {
        bail!(
            "gcc {}: {}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    /// Reads from `s` until `n` bytes have come.
    fn read_exactly(s: &mut TcpStream, n: usize) -> String {
        let mut buf = vec![0; n];
        s.read_exact(&mut buf).expect("the answers arrive");
        String::from_utf8(buf).expect("ASCII answers")
    }

    /// The HTTP phase's backend, compiled and run: a request head split over writes is one
    /// request, two pipelined heads are two answers in one read, and the connection stays open.
    #[test]
    fn answer_answers_each_request_head_once_split_or_pipelined() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bin = build_c(dir.path(), "answer").expect("gcc builds answer.c");
        let port = procs::port();
        let log = dir.path().join("answer.log");
        let args = ["-p", &port.to_string(), "-d", "30", "-b", "s1"];
        let _answer = Proc::spawn("answer", LOAD_CPU, &bin, &args, &[], &log).expect("started");
        procs::wait_port(port, Duration::from_secs(10)).expect("answer listens");
        let one = "HTTP/1.1 200 OK\r\nServer: answer\r\nContent-Type: text/plain\r\n\
                   Content-Length: 2\r\nConnection: keep-alive\r\n\r\ns1";
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        let head = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // Apart in time so that `answer` reads them apart: the last cut is inside the `\r\n\r\n`.
        for part in [&head[..17], &head[17..26], &head[26..]] {
            s.write_all(part.as_bytes()).expect("write");
            s.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(read_exactly(&mut s, one.len()), one);
        s.write_all(format!("{head}{head}").as_bytes())
            .expect("write");
        assert_eq!(read_exactly(&mut s, 2 * one.len()), format!("{one}{one}"));
        // Nothing more: a third answer would be one no request asked for.
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut extra = [0u8; 1];
        assert!(
            s.read(&mut extra).is_err(),
            "an answer nobody asked for, or the connection closed"
        );
    }

    /// The flood phase's good client with `-n 3`: its requests come from 127.0.0.2, .3 and .4
    /// in turn, and each is answered and counted.
    #[test]
    fn the_paced_client_takes_its_addresses_in_turn() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bin = build_c(dir.path(), "flood").expect("gcc builds flood.c");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let mut from = Vec::new();
            for _ in 0..6 {
                let (mut c, peer) = listener.accept().expect("accept");
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf).expect("the request");
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .expect("answer");
                from.push(peer.ip().to_string());
            }
            from
        });
        let out = Command::new(&bin)
            .args([
                "-p",
                &port.to_string(),
                "-d",
                "0.2",
                "-r",
                "30",
                "-b",
                "127.0.0.2",
            ])
            .args(["-n", "3"])
            .output()
            .expect("run the paced client");
        let from = server.join().expect("the server thread");
        assert_eq!(from, ["127.0.0.2", "127.0.0.3", "127.0.0.4"].repeat(2));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ok=6 "), "{text}");
        for bad in ["0", "65"] {
            let out = Command::new(&bin)
                .args(["-p", "1", "-r", "1", "-b", "127.0.0.2", "-n", bad])
                .output()
                .expect("run the paced client");
            assert_eq!(out.status.code(), Some(2), "-n {bad}");
        }
    }

    #[test]
    fn answer_refuses_a_missing_body_argument() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bin = build_c(dir.path(), "answer").expect("gcc builds answer.c");
        let out = Command::new(&bin)
            .args(["-p", "1", "-d", "1"])
            .output()
            .expect("run answer");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: answer"));
    }
}
