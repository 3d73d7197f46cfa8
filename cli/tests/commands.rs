//! The `sluicectl` command line of SPEC §7 outside the certificate tooling: shell completions
//! work, and the admin-API commands parse their full syntax, then say honestly that this build
//! cannot run them.

mod util;

use std::process::Command;

use util::{sluicectl, stderr, stdout, success};

const NO_ADMIN_API: &str = "requires the admin API, which this build does not have yet";

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
fn admin_commands_parse_then_report_the_missing_admin_api() {
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
        &[
            "--node",
            "10.0.0.1:9000",
            "--ca",
            "ca.pem",
            "--cert",
            "admin.pem",
            "--key",
            "admin.key",
            "peer",
            "list",
        ],
    ];
    for args in invocations {
        let out = sluicectl(*args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(NO_ADMIN_API),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
}

#[test]
fn the_node_address_comes_from_the_flag_then_sluice_admin_then_the_default() {
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
        stderr(&out)
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
