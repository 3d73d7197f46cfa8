use super::*;

const GOOD: &str = r#"
[node]
name = "edge-1"
threads = 1
state_dir = "/var/lib/sluice"

[metrics]
listen = "127.0.0.1:9100"

[tls]
ca = "ca.pem"
cert = "edge-1.pem"
key = "edge-1.key"

[sync]
listen = "0.0.0.0:7000"
peers = [ { name = "edge-2", addr = "edge-2:7000" } ]

[[table]]
name = "per_ip"
key = "ip"
size = 1_000_000
expire = "60s"
store = ["http_req_rate(10s)", "conn_cur", "server_id"]

[[frontend]]
name = "web"
bind = "0.0.0.0:8080"
backend = "app"
[frontend.rules]
connection = ["track-sc0 src table per_ip"]
request = ["deny status 429 if sc0_http_req_rate > 100"]
[frontend.limits]
header_timeout = "3s"

[[backend]]
name = "app"
balance = "leastconn"
stick = "on src table per_ip"
servers = [ { name = "app1", addr = "app1:80" }, { name = "app2", addr = "10.0.0.2:80" } ]
check = { interval = "2s", path = "/healthz", rise = 2, fall = 3 }
"#;

fn err(text: &str) -> ConfigError {
    match Config::load_str(text, "test.toml", std::iter::empty()) {
        Ok(_) => panic!("config should not validate:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn good_config_resolves_defaults_and_overrides() {
    let c = Config::from_toml(GOOD).unwrap();
    assert_eq!(c.node.name, "edge-1");
    assert_eq!(c.frontends[0].limits.header_timeout, Duration::from_secs(3));
    assert_eq!(
        c.frontends[0].limits.keepalive_timeout,
        Limits::default().keepalive_timeout
    );
    assert_eq!(c.backends[0].balance, Balance::LeastConn);
    assert_eq!(
        c.backends[0].servers[0].addr,
        HostPort {
            host: "app1".into(),
            port: 80
        }
    );
    assert_eq!(
        c.backends[0].servers[1].addr.socket_addr(),
        Some("10.0.0.2:80".parse().unwrap())
    );
    assert_eq!(c.tables[0].store.len(), 3);
    // The printed config parses back to the same config.
    let again = Config::from_toml(&c.to_toml()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn env_overrides_win_over_the_file() {
    let env = vec![
        ("SLUICE_NODE__THREADS".to_owned(), "4".to_owned()),
        (
            "SLUICE_DEFAULTS__CONNECT_TIMEOUT".to_owned(),
            "250ms".to_owned(),
        ),
        // Not an override (no `__`): sluicectl's admin address.
        ("SLUICE_ADMIN".to_owned(), "127.0.0.1:9000".to_owned()),
        ("PATH".to_owned(), "/bin".to_owned()),
    ];
    let c = Config::load_str(GOOD, "test.toml", env).unwrap();
    assert_eq!(c.node.threads, 4);
    assert_eq!(
        c.backends[0].limits.connect_timeout,
        Duration::from_millis(250)
    );
}

#[test]
fn env_override_with_a_bad_value_names_the_environment() {
    let env = vec![("SLUICE_NODE__THREADS".to_owned(), "many".to_owned())];
    let e = Config::load_str(GOOD, "test.toml", env).unwrap_err();
    assert!(e.origin.contains("SLUICE_NODE__THREADS"), "{e}");
    assert_eq!(e.path, "node.threads");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let e = err(&GOOD.replace(
        "balance = \"leastconn\"",
        "balance = \"leastconn\"\nweight = 3",
    ));
    assert_eq!(e.origin, "test.toml");
    assert_eq!(e.path, "backend[0].weight", "{e}");
    assert!(e.problem.contains("unknown key"), "{e}");
}

#[test]
fn unknown_backend_reference_is_named() {
    let e = err(&GOOD.replace("backend = \"app\"", "backend = \"ap\""));
    assert_eq!(e.path, "frontend[0].backend");
    assert!(e.problem.contains("unknown backend `ap`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("test.toml: frontend[0].backend: "),
        "{e}"
    );
}

#[test]
fn bad_duration_is_named() {
    let e = err(&GOOD.replace("interval = \"2s\"", "interval = \"2 parsecs\""));
    assert_eq!(e.path, "backend[0].check.interval", "{e}");
    assert!(e.problem.contains("not a duration"), "{e}");
}

#[test]
fn bad_server_address_is_named() {
    let e = err(&GOOD.replace("addr = \"app1:80\"", "addr = \"app1\""));
    assert_eq!(e.path, "backend[0].servers[0].addr", "{e}");
}

#[test]
fn empty_rule_is_named() {
    let e = err(&GOOD.replace("request = [\"deny", "request = [\"allow\", \" \", \"deny"));
    assert_eq!(e.path, "frontend[0].rules.request[1]", "{e}");
}

#[test]
fn cross_references_and_duplicates() {
    let e = err(&GOOD.replace(
        "stick = \"on src table per_ip\"",
        "stick = \"on src table nope\"",
    ));
    assert_eq!(e.path, "backend[0].stick");
    let e = err(&GOOD.replace("stick = \"on src table per_ip\"", "stick = \"sometimes\""));
    assert_eq!(e.path, "backend[0].stick");
    let e = err(&GOOD.replace("{ name = \"edge-2\"", "{ name = \"edge-1\""));
    assert_eq!(e.path, "sync.peers[0].name");
    let e = err(&GOOD.replace("name = \"app2\"", "name = \"app1\""));
    assert_eq!(e.path, "backend[0].servers[1].name");
    let e = err(&GOOD.replace(
        "store = [\"http_req_rate(10s)\"",
        "store = [\"http_req_rate\"",
    ));
    assert_eq!(e.path, "table[0].store[0]");
    let e = err(&GOOD.replace("key = \"ip\"", "key = \"uuid\""));
    assert_eq!(e.path, "table[0].key");
    let e = err(&GOOD.replace(
        "[tls]\nca = \"ca.pem\"\ncert = \"edge-1.pem\"\nkey = \"edge-1.key\"\n",
        "",
    ));
    assert_eq!(e.path, "sync");
}

#[test]
fn limits_are_checked() {
    let e = err(&GOOD.replace("header_timeout = \"3s\"", "max_header_size = 100"));
    assert_eq!(e.path, "frontend[0].limits.max_header_size");
    let e = err(&GOOD.replace("header_timeout = \"3s\"", "max_connections = 0"));
    assert_eq!(e.path, "frontend[0].limits.max_connections");
    let e = err(&GOOD.replace("header_timeout = \"3s\"", "header_timeout = \"0s\""));
    assert_eq!(e.path, "frontend[0].limits.header_timeout");
}

#[test]
fn syntax_error_names_the_file() {
    let e = err("[node\nname = 1");
    assert_eq!(e.origin, "test.toml");
    assert!(e.path.is_empty());
}

#[test]
fn wrong_type_is_named() {
    let e = err(&GOOD.replace("threads = 1", "threads = \"one\""));
    assert_eq!(e.path, "node.threads", "{e}");
}

#[test]
fn minimal_config() {
    let c = Config::from_toml(
        "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"b\"\n\
         [[backend]]\nname = \"b\"\nservers = [{ name = \"s\", addr = \"127.0.0.1:1\" }]\n",
    )
    .unwrap();
    assert_eq!(c.node.name, "sluice");
    assert_eq!(c.frontends[0].mode, Mode::Http);
    assert_eq!(c.defaults, Limits::default());
}

#[test]
fn the_documented_example_validates() {
    let doc = include_str!("../../../docs/configuration.md");
    let start = doc
        .rfind("```toml\n")
        .expect("docs/configuration.md ends with a TOML example")
        + 8;
    let end = start + doc[start..].find("```").unwrap();
    let c = Config::from_toml(&doc[start..end]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.frontends.len(), 3);
    assert_eq!(
        c.frontends[2].limits.idle_timeout,
        Duration::from_secs(3600)
    );
    assert_eq!(c.backends[1].check.as_ref().unwrap().path, None);
}
