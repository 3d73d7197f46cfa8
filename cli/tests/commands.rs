//! The `sluicectl` command line of SPEC §7 outside the certificate tooling: shell completions
//! work, the admin commands parse their full syntax and report an unreachable node on stderr
//! with a non-zero exit, and malformed arguments are usage errors. The admin commands against
//! real nodes are tested end to end in `node/tests/admin_cli.rs` (this crate must not depend
//! on the node).

mod util;

use std::process::Command;

use util::{sluicectl, stderr, stdout, success};

/// An address where nothing listens: bound, then released.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let script = success(&sluicectl(["completions", shell]));
        assert!(script.contains("sluicectl"), "{shell}: {script}");
        assert!(
            script.contains("certs"),
            "{shell}: subcommands are completed"
        );
    }
    let refused = sluicectl(["completions", "powershell"]);
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn admin_commands_parse_then_report_an_unreachable_node() {
    let node = closed_port();
    let invocations: &[&[&str]] = &[
        &["status"],
        &["table", "list"],
        &["table", "show", "per_ip"],
        &[
            "table",
            "show",
            "per_ip",
            "--key",
            "10.0.0.7",
            "--where",
            "http_req_rate > 10",
            "--limit",
            "5",
            "--origins",
        ],
        &[
            "table",
            "set",
            "per_ip",
            "10.0.0.7",
            "gpc0=1",
            "gpt0=3",
            "server_id=2",
        ],
        &["table", "clear", "per_ip"],
        &["table", "clear", "per_ip", "10.0.0.7"],
        &["peer", "list"],
        &["peer", "add", "edge-4", "127.0.0.1:7004"],
        &["peer", "remove", "edge-4"],
        &["--json", "status"],
        &["table", "list", "--json"],
    ];
    for args in invocations {
        let out = sluicectl(["--node", node.as_str()].iter().chain(*args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let expected = format!("cannot reach the admin API at {node}");
        assert!(
            stderr(&out).contains(&expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
}

#[test]
fn tls_options_are_read_and_checked_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().expect("utf8 path");
    let out = sluicectl([
        "--node",
        "edge-1:9000",
        "--ca",
        missing,
        "--cert",
        missing,
        "--key",
        missing,
        "status",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read --ca"),
        "{}",
        stderr(&out)
    );

    // Certificates name nodes, not addresses: with an IP address, the name must be given.
    let out = sluicectl([
        "--node",
        "10.0.0.1:9000",
        "--ca",
        missing,
        "--cert",
        missing,
        "--key",
        missing,
        "status",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--server-name"), "{}", stderr(&out));

    // Off loopback without TLS cannot work: said before trying.
    let out = sluicectl(["--node", "10.0.0.1:9000", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("requires mutual TLS"),
        "{}",
        stderr(&out)
    );

    let out = sluicectl(["--server-name", "edge-1", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ca"), "{}", stderr(&out));
    let out = sluicectl(["--node", "edge-1", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("HOST:PORT"), "{}", stderr(&out));
}

#[test]
fn the_node_address_comes_from_the_flag_then_sluice_admin_then_the_default() {
    // Every failure names the node it tried. Non-loopback addresses fail before connecting
    // (they need TLS options), so nothing leaves the machine.
    let run = |flag: Option<&str>, env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicectl"));
        cmd.env_remove("SLUICE_ADMIN");
        if let Some(env) = env {
            cmd.env("SLUICE_ADMIN", env);
        }
        if let Some(flag) = flag {
            cmd.args(["--node", flag]);
        }
        let out = cmd.arg("status").output().expect("run sluicectl");
        (out.status.success(), stderr(&out))
    };
    let run = |flag, env| match run(flag, env) {
        (false, err) => err,
        // Something answered: only a sluice node on the default address can do that.
        (true, _) => "127.0.0.1:9000 answered".to_owned(),
    };
    assert!(run(None, None).contains("127.0.0.1:9000"));
    assert!(run(None, Some("10.0.0.2:9000")).contains("10.0.0.2:9000"));
    assert!(run(Some("10.0.0.3:9000"), Some("10.0.0.2:9000")).contains("10.0.0.3:9000"));
}

#[test]
fn malformed_admin_arguments_are_usage_errors_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["table", "set", "per_ip", "10.0.0.7"], "FIELD=VALUE"),
        (&["table", "set", "per_ip", "10.0.0.7", "gpc0"], "gpc0"),
        (&["table", "set", "per_ip", "10.0.0.7", "gpc0=yes"], "yes"),
        (
            &["table", "show", "per_ip", "--where", "http_req_rate ~ 10"],
            "http_req_rate ~ 10",
        ),
        (&["table", "show", "per_ip", "--limit", "0"], "--limit"),
        (&["table", "show"], "NAME"),
        (&["peer", "add", "Edge-4", "127.0.0.1:7004"], "Edge-4"),
        (&["peer", "add", "edge-4", "127.0.0.1"], "HOST:PORT"),
        (&["peer", "add", "edge-4", "127.0.0.1:0"], "port"),
        (&["peer", "remove"], "NAME"),
        (&["--ca", "ca.pem", "status"], "--cert"),
        (&["table", "frob"], "frob"),
    ];
    for (args, named) in cases {
        let out = sluicectl(*args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
    }
}
