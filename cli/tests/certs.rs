//! `sluicectl certs init` and `certs add` as an operator runs them: which files appear, with
//! which modes and contents, what `--json` reports, and what is refused without writing
//! anything.

mod util;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use util::{init_fleet, listing, mode, read_cert_der, sluicectl, stderr, success, umask};

const FLEET_FILES: [&str; 10] = [
    "admin.key",
    "admin.pem",
    "ca.key",
    "ca.pem",
    "edge-1.key",
    "edge-1.pem",
    "edge-2.key",
    "edge-2.pem",
    "edge-3.key",
    "edge-3.pem",
];

// `--nodes=…` rather than `--nodes …`, so a name starting with `-` reaches the name check
// instead of being read as an option.
fn init(dir: &Path, nodes: &str, extra: &[&str]) -> std::process::Output {
    let nodes = format!("--nodes={nodes}");
    let mut args = vec!["certs", "init", &nodes, "--out"];
    args.push(dir.to_str().expect("utf-8 temp path"));
    args.extend(extra);
    sluicectl(args)
}

fn add(ca_dir: &Path, node: &str, extra: &[&str]) -> std::process::Output {
    let node = format!("--node={node}");
    let mut args = vec!["certs", "add", &node, "--ca-dir"];
    args.push(ca_dir.to_str().expect("utf-8 temp path"));
    args.extend(extra);
    sluicectl(args)
}

/// Every file's bytes, to show a refused run changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    listing(dir)
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).expect("read file");
            (name, bytes)
        })
        .collect()
}

#[test]
fn init_writes_the_fleet_with_private_keys_0600() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A nested, missing directory is created.
    let out = tmp.path().join("fleet").join("certs");
    init_fleet(&out, "edge-1,edge-2,edge-3");

    assert_eq!(listing(&out), FLEET_FILES);
    let umask = umask();
    for name in FLEET_FILES {
        let path = out.join(name);
        if name.ends_with(".key") {
            assert_eq!(mode(&path), 0o600 & !umask, "{name}");
            let pem = fs::read_to_string(&path).expect("read key");
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{name}: PKCS#8 PEM"
            );
        } else {
            assert_eq!(mode(&path), 0o644 & !umask, "{name}");
        }
    }
}

#[test]
fn init_without_admin_client_writes_no_admin_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    success(&init(tmp.path(), "edge-1", &[]));
    assert_eq!(
        listing(tmp.path()),
        ["ca.key", "ca.pem", "edge-1.key", "edge-1.pem"]
    );
}

#[test]
fn init_refuses_to_overwrite_without_force_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    // One of many targets exists: the whole run is refused before anything is written.
    fs::write(out.join("edge-2.key"), "precious").expect("write");
    let refused = init(out, "edge-1,edge-2,edge-3", &["--admin-client"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("edge-2.key") && message.contains("--force"),
        "{message}"
    );
    assert_eq!(listing(out), ["edge-2.key"]);
    assert_eq!(
        fs::read_to_string(out.join("edge-2.key")).expect("read"),
        "precious"
    );

    // A complete earlier run is left byte for byte as it was.
    let again = tmp.path().join("again");
    init_fleet(&again, "edge-1,edge-2,edge-3");
    let before = snapshot(&again);
    let refused = init(&again, "edge-1,edge-2,edge-3", &["--admin-client"]);
    assert!(!refused.status.success());
    assert_eq!(snapshot(&again), before);
}

#[test]
fn init_force_replaces_files_and_keys_stay_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    // A stale key left world-readable must not pass its mode on to the new key.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out.join("edge-1.key"))
        .expect("create stale key");
    fs::write(out.join("ca.pem"), "stale").expect("write");

    success(&init(out, "edge-1", &["--force"]));
    assert_eq!(mode(&out.join("edge-1.key")), 0o600 & !umask());
    let ca = fs::read_to_string(out.join("ca.pem")).expect("read");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
}

#[test]
fn init_json_lists_the_files_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = init(
        tmp.path(),
        "edge-1,edge-2,edge-3",
        &["--admin-client", "--json"],
    );
    let doc: Value = serde_json::from_str(&success(&out)).expect("stdout is one JSON document");

    assert_eq!(doc["dir"], tmp.path().to_str().expect("utf-8"));
    let files = doc["files"].as_array().expect("files array");
    let mut names: Vec<String> = files
        .iter()
        .map(|f| {
            let path = Path::new(f["path"].as_str().expect("path"));
            assert!(path.exists(), "{}", path.display());
            assert_eq!(f["mode"], format!("{:04o}", mode(path)));
            path.file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, FLEET_FILES);

    let find = |name: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    assert_eq!(find("ca.pem")["kind"], "ca-certificate");
    assert_eq!(find("ca.pem")["subject"], "sluice fleet CA");
    assert_eq!(find("edge-2.pem")["kind"], "node-certificate");
    assert_eq!(find("edge-2.pem")["subject"], "edge-2");
    assert!(find("edge-2.pem")["not_after"].is_string());
    assert_eq!(find("edge-2.key")["kind"], "node-key");
    assert!(find("edge-2.key")["not_after"].is_null());
    assert_eq!(find("admin.pem")["kind"], "admin-certificate");
    assert_eq!(find("admin.pem")["subject"], "sluicectl");
    assert_eq!(find("admin.key")["kind"], "admin-key");
}

#[test]
fn init_human_output_lists_each_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = success(&init(tmp.path(), "edge-1", &[]));
    assert!(text.starts_with("wrote 4 files to "), "{text}");
    for name in ["ca.pem", "ca.key", "edge-1.pem", "edge-1.key"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn bad_node_names_are_rejected_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("certs");
    for (nodes, named) in [
        ("Edge-1", "Edge-1"),
        ("edge_1", "edge_1"),
        ("-edge", "-edge"),
        ("edge-", "edge-"),
        ("edge.1", "edge.1"),
        ("123", "123"),
        ("edge-1,,edge-2", "empty"),
        (&"a".repeat(64), "64 characters"),
        ("edge-1,edge-2,edge-1", "edge-1"),
        ("ca", "reserved"),
        ("admin", "reserved"),
        ("sluicectl", "reserved"),
    ] {
        let refused = init(&out, nodes, &[]);
        assert!(!refused.status.success(), "{nodes} accepted");
        let message = stderr(&refused);
        assert!(message.contains(named), "{nodes}: {message}");
        assert!(!out.exists(), "{nodes}: wrote something");
    }
    let refused = add(tmp.path(), "Edge-4", &[]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("Edge-4"), "{}", stderr(&refused));
}

#[test]
fn days_out_of_range_is_a_usage_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for days in ["0", "3651", "-1", "x"] {
        let refused = init(tmp.path(), "edge-1", &[&format!("--days={days}")]);
        assert_eq!(refused.status.code(), Some(2), "--days {days}");
        assert!(stderr(&refused).contains("--days"), "{}", stderr(&refused));
    }
    assert!(listing(tmp.path()).is_empty());
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).expect("parse certificate").1
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    let cn = cert.subject().iter_common_name().next().expect("a CN");
    cn.as_str().expect("CN is a string").to_owned()
}

fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .expect("well-formed SAN")
        .expect("a SAN extension");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

/// (serverAuth, clientAuth)
fn ekus(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert
        .extended_key_usage()
        .expect("well-formed EKU")
        .expect("an EKU extension")
        .value;
    assert!(
        !eku.any && eku.other.is_empty(),
        "only serverAuth/clientAuth: {eku:?}"
    );
    (eku.server_auth, eku.client_auth)
}

fn is_p256(cert: &X509Certificate<'_>) -> bool {
    use x509_parser::public_key::PublicKey;
    matches!(cert.public_key().parsed(), Ok(PublicKey::EC(point)) if point.key_size() == 256)
        && cert
            .public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            == Some(x509_parser::oid_registry::OID_EC_P256)
}

#[test]
fn certificates_follow_the_documented_conventions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    init_fleet(dir, "edge-1,edge-2,edge-3");

    let ca_der = read_cert_der(&dir.join("ca.pem"));
    let ca = parse(&ca_der);
    assert_eq!(common_name(&ca), "sluice fleet CA");
    assert_eq!(ca.issuer(), ca.subject(), "self-signed");
    let constraints = ca
        .basic_constraints()
        .expect("ok")
        .expect("basic constraints")
        .value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = ca.key_usage().expect("ok").expect("key usage").value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(is_p256(&ca));
    let ca_days =
        (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400;
    assert_eq!(ca_days, 3650, "ten years, plus the one-hour back-dating");

    for node in ["edge-1", "edge-2", "edge-3"] {
        let der = read_cert_der(&dir.join(format!("{node}.pem")));
        let cert = parse(&der);
        assert_eq!(common_name(&cert), node);
        assert_eq!(dns_names(&cert), [node]);
        assert_eq!(
            ekus(&cert),
            (true, true),
            "{node}: serverAuth and clientAuth"
        );
        assert_eq!(cert.issuer(), ca.subject());
        assert!(!cert.is_ca());
        assert!(
            cert.key_usage()
                .expect("ok")
                .expect("key usage")
                .value
                .digital_signature()
        );
        assert!(is_p256(&cert), "{node}: ECDSA P-256");
        let seconds =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(
            seconds,
            365 * 86_400 + 3600,
            "{node}: 365 days from an hour ago"
        );
    }

    let admin_der = read_cert_der(&dir.join("admin.pem"));
    let admin = parse(&admin_der);
    assert_eq!(common_name(&admin), "sluicectl");
    assert_eq!(dns_names(&admin), ["sluicectl"]);
    assert_eq!(ekus(&admin), (false, true), "admin: clientAuth only");
    assert_eq!(admin.issuer(), ca.subject());
    assert!(is_p256(&admin));
}

#[test]
fn days_sets_the_validity_of_issued_certs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    success(&init(tmp.path(), "edge-1", &["--days", "30"]));
    success(&add(tmp.path(), "edge-2", &["--days", "7"]));
    for (node, days) in [("edge-1", 30), ("edge-2", 7)] {
        let der = read_cert_der(&tmp.path().join(format!("{node}.pem")));
        let cert = parse(&der);
        let seconds =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(seconds, days * 86_400 + 3600, "{node}");
    }
}

#[test]
fn add_writes_one_node_next_to_the_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    init_fleet(dir, "edge-1,edge-2,edge-3");
    let doc: Value =
        serde_json::from_str(&success(&add(dir, "edge-4", &["--json"]))).expect("JSON");
    let files = doc["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["kind"], "node-certificate");
    assert_eq!(files[1]["kind"], "node-key");

    let mut expected: Vec<&str> = FLEET_FILES.to_vec();
    expected.extend(["edge-4.key", "edge-4.pem"]);
    expected.sort_unstable();
    assert_eq!(listing(dir), expected);
    assert_eq!(mode(&dir.join("edge-4.key")), 0o600 & !umask());

    let der = read_cert_der(&dir.join("edge-4.pem"));
    let cert = parse(&der);
    assert_eq!(dns_names(&cert), ["edge-4"]);
    assert_eq!(ekus(&cert), (true, true));
    let ca_der = read_cert_der(&dir.join("ca.pem"));
    assert_eq!(cert.issuer(), parse(&ca_der).subject());
}

#[test]
fn add_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    init_fleet(dir, "edge-1,edge-2");
    let before = snapshot(dir);
    let refused = add(dir, "edge-2", &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("edge-2.pem"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(snapshot(dir), before);

    success(&add(dir, "edge-2", &["--force"]));
    assert_ne!(
        fs::read(dir.join("edge-2.pem")).expect("read"),
        before
            .iter()
            .find(|(n, _)| n == "edge-2.pem")
            .map(|(_, b)| b.clone())
            .expect("was there")
    );
}

#[test]
fn add_refuses_an_unusable_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init_fleet(&a, "edge-1");
    init_fleet(&b, "edge-1");

    let case = |name: &str, cert: Option<&Path>, key: Option<&Path>, expect: &str| {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).expect("mkdir");
        if let Some(cert) = cert {
            fs::copy(cert, dir.join("ca.pem")).expect("copy cert");
        }
        if let Some(key) = key {
            fs::copy(key, dir.join("ca.key")).expect("copy key");
        }
        let before = snapshot(&dir);
        let refused = add(&dir, "edge-2", &[]);
        assert!(!refused.status.success(), "{name}: accepted");
        let message = stderr(&refused);
        assert!(message.contains(expect), "{name}: {message}");
        assert_eq!(snapshot(&dir), before, "{name}: wrote something");
    };
    case("missing", None, None, "ca.pem");
    case("no-key", Some(&a.join("ca.pem")), None, "ca.key");
    case(
        "mismatched",
        Some(&a.join("ca.pem")),
        Some(&b.join("ca.key")),
        "does not belong",
    );
    case(
        "not-a-ca",
        Some(&a.join("edge-1.pem")),
        Some(&a.join("edge-1.key")),
        "not a CA",
    );
    case(
        "garbage",
        Some(&a.join("ca.key")),
        Some(&a.join("ca.key")),
        "ca.pem",
    );
}

#[test]
fn keep_existing_succeeds_without_writing_when_the_fleet_exists() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let init = |extra: &[&str]| {
        let mut args = vec![
            "certs",
            "init",
            "--out",
            out.to_str().unwrap(),
            "--nodes",
            "edge-1,edge-2",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_sluicectl"))
            .args(&args)
            .output()
            .unwrap()
    };
    assert!(
        init(&["--keep-existing"]).status.success(),
        "the first run writes the fleet"
    );
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    let again = init(&["--keep-existing"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept the existing files"));
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        ca,
        "nothing was rewritten"
    );
    // Only part of the fleet in place: refused as without the flag, nothing written.
    std::fs::remove_file(out.join("edge-2.key")).unwrap();
    let partial = init(&["--keep-existing"]);
    assert!(!partial.status.success());
    assert!(!out.join("edge-2.key").exists());
    assert!(
        !init(&["--keep-existing", "--force"]).status.success(),
        "the two flags conflict"
    );
}
