//! The fleet's certificate tooling behind `sluicectl certs init` and `sluicectl certs add`.
//!
//! One fleet CA signs every node's certificate; nodes authenticate each other with them in both
//! directions (SPEC §6). The conventions here are a contract other code relies on, and
//! `docs/certificates.md` states them for operators:
//!
//! - **CA** (`ca.pem`, `ca.key`): subject CN `sluice fleet CA`, `CA:TRUE` with path length 0,
//!   key usage keyCertSign + cRLSign + digitalSignature, valid [`CA_VALIDITY_DAYS`].
//! - **Node** (`NAME.pem`, `NAME.key`): subject CN = node name, one SAN DNS name = node name,
//!   `CA:FALSE`, key usage digitalSignature, extended key usage serverAuth + clientAuth. A dialer
//!   uses the peer's node name as the TLS server name; a listener reads the dialing node's name
//!   from the SAN DNS name of its client certificate.
//! - **Admin client** (`admin.pem`, `admin.key`): CN and SAN DNS name [`ADMIN_NAME`],
//!   extended key usage clientAuth only, so it cannot serve as a node.
//! - Keys are ECDSA P-256, PKCS#8 PEM (`PRIVATE KEY`), written with mode 0600 at creation;
//!   certificates are PEM, mode 0644 (both less any bits the umask removes).
//! - Certificates are back-dated by [`BACKDATE`] to tolerate clock skew between machines.
//!
//! Every certificate and key is made in memory first, then every target path is checked, and
//! only then is anything written: without `force`, one existing file refuses the whole run. The
//! current time is passed in by the caller (STYLE §14).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::node_name::NodeName;

/// File name of the fleet CA certificate.
pub(crate) const CA_CERT_FILE: &str = "ca.pem";
/// File name of the fleet CA private key.
pub(crate) const CA_KEY_FILE: &str = "ca.key";
/// Subject common name of the fleet CA.
pub(crate) const CA_COMMON_NAME: &str = "sluice fleet CA";
/// Common name and SAN DNS name of the admin client certificate.
pub(crate) const ADMIN_NAME: &str = "sluicectl";
/// File stem of the admin client certificate and key (`admin.pem`, `admin.key`).
const ADMIN_FILE_STEM: &str = "admin";
/// How long a fleet CA made by `certs init` is valid.
pub(crate) const CA_VALIDITY_DAYS: u32 = 3650;
/// Default validity of node and admin certificates (`--days`).
pub(crate) const DEFAULT_DAYS: u32 = 365;
/// Longest validity `--days` accepts: no certificate may outlive a fresh CA.
pub(crate) const MAX_DAYS: u32 = CA_VALIDITY_DAYS;
/// Certificates start being valid this long before they are made, so a node whose clock is a
/// little behind the issuing machine's does not refuse them.
const BACKDATE: Duration = Duration::hours(1);
/// Node names whose files would collide with the CA's or the admin client's, or that would make
/// a node indistinguishable from the admin client.
const RESERVED_NODE_NAMES: [&str; 3] = ["ca", ADMIN_FILE_STEM, ADMIN_NAME];

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// What can go wrong while issuing or writing certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CertError {
    /// The same node name was given twice.
    #[error("node `{0}` is named more than once")]
    DuplicateNode(NodeName),
    /// The node name is taken by the CA's or the admin client's files.
    #[error("node name `{0}` is reserved (it would collide with the CA or admin client files)")]
    ReservedNode(NodeName),
    /// Targets exist and `--force` was not given; nothing was written.
    #[error(
        "refusing to overwrite existing {} (use --force to replace); nothing was written",
        list_paths(.0)
    )]
    WouldOverwrite(Vec<PathBuf>),
    /// A filesystem operation failed.
    #[error("cannot {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The CA files in `--ca-dir` are unusable.
    #[error("cannot use {} as the fleet CA: {reason}", .path.display())]
    BadCa { path: PathBuf, reason: String },
    /// `--days` asks for a certificate that would outlive the CA that signs it.
    #[error(
        "a certificate valid for {days} days would outlive the fleet CA, which expires {ca_not_after}; use a smaller --days or a new CA"
    )]
    OutlivesCa { days: u32, ca_not_after: String },
    /// The requested validity does not fit the calendar `time` supports.
    #[error("validity of {days} days from now is out of range")]
    ValidityOutOfRange { days: u32 },
    /// rcgen refused to build or sign a certificate.
    #[error("cannot generate {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `certs init` should produce.
#[derive(Debug)]
pub(crate) struct InitOptions<'a> {
    /// Directory to write into; created if missing.
    pub(crate) out: &'a Path,
    /// One certificate per node.
    pub(crate) nodes: &'a [NodeName],
    /// Also issue `admin.pem`/`admin.key` for `sluicectl`.
    pub(crate) admin_client: bool,
    /// Replace existing files.
    pub(crate) force: bool,
    /// Write nothing, successfully, when every target exists.
    pub(crate) keep_existing: bool,
    /// Validity of node and admin certificates, in days.
    pub(crate) days: u32,
}

/// What `certs add` should produce.
#[derive(Debug)]
pub(crate) struct AddOptions<'a> {
    /// Directory holding `ca.pem` and `ca.key`; the new files are written there too.
    pub(crate) ca_dir: &'a Path,
    /// The node to issue a certificate for.
    pub(crate) node: &'a NodeName,
    /// Replace existing files.
    pub(crate) force: bool,
    /// Write nothing, successfully, when every target exists.
    pub(crate) keep_existing: bool,
    /// Validity of the node certificate, in days.
    pub(crate) days: u32,
}

/// The files a command wrote, for the human listing or `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The directory written into.
    pub(crate) dir: PathBuf,
    /// Every file written, in write order.
    pub(crate) files: Vec<WrittenFile>,
    /// `--keep-existing` found every file in place and wrote nothing.
    pub(crate) kept_existing: bool,
}

/// One file written.
#[derive(Debug, Serialize)]
pub(crate) struct WrittenFile {
    /// Where it is.
    pub(crate) path: PathBuf,
    /// What it holds.
    pub(crate) kind: FileKind,
    /// Whose certificate or key it is: the node name, `sluicectl` or `sluice fleet CA`.
    pub(crate) subject: String,
    /// Permission bits as written, in octal (`0600`).
    pub(crate) mode: String,
    /// End of validity (RFC 3339, UTC) for certificates; `null` for keys.
    pub(crate) not_after: Option<String>,
}

/// What a written file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FileKind {
    /// The fleet CA certificate.
    CaCertificate,
    /// The fleet CA private key.
    CaKey,
    /// A node certificate.
    NodeCertificate,
    /// A node private key.
    NodeKey,
    /// The admin client certificate.
    AdminCertificate,
    /// The admin client private key.
    AdminKey,
}

impl FileKind {
    /// A short description for people.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::CaCertificate => "CA certificate",
            Self::CaKey => "CA private key",
            Self::NodeCertificate => "node certificate",
            Self::NodeKey => "node private key",
            Self::AdminCertificate => "admin client certificate",
            Self::AdminKey => "admin client private key",
        }
    }

    fn is_key(self) -> bool {
        matches!(self, Self::CaKey | Self::NodeKey | Self::AdminKey)
    }
}

/// Creates a fleet CA and one certificate per node (plus the admin client's on request).
pub(crate) fn init(opts: &InitOptions<'_>, now: SystemTime) -> Result<Report, CertError> {
    let mut seen = BTreeSet::new();
    for node in opts.nodes {
        check_not_reserved(node)?;
        if !seen.insert(node) {
            return Err(CertError::DuplicateNode(node.clone()));
        }
    }

    let ca_window = Validity::from_now(now, CA_VALIDITY_DAYS)?;
    let leaf_window = Validity::from_now(now, opts.days)?;

    let ca_key = generate_key("the fleet CA key")?;
    let ca_params = ca_params(&ca_window);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate_error("the fleet CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let ca_not_after = Some(ca_window.not_after_rfc3339()?);
    let mut files = vec![
        Planned {
            path: opts.out.join(CA_CERT_FILE),
            kind: FileKind::CaCertificate,
            subject: CA_COMMON_NAME.to_owned(),
            contents: ca_cert.pem(),
            not_after: ca_not_after,
        },
        Planned {
            path: opts.out.join(CA_KEY_FILE),
            kind: FileKind::CaKey,
            subject: CA_COMMON_NAME.to_owned(),
            contents: issuer.key().serialize_pem(),
            not_after: None,
        },
    ];
    for node in opts.nodes {
        files.extend(issue_leaf(
            &issuer,
            opts.out,
            node.as_str(),
            Role::Node,
            &leaf_window,
        )?);
    }
    if opts.admin_client {
        files.extend(issue_leaf(
            &issuer,
            opts.out,
            ADMIN_NAME,
            Role::Admin,
            &leaf_window,
        )?);
    }

    if check_targets(&files, opts.force, opts.keep_existing)? == Targets::AllExist {
        return Ok(Report::kept(opts.out));
    }
    create_dir(opts.out)?;
    write_files(opts.out, files, opts.force)
}

/// Issues one more node certificate from the CA in `opts.ca_dir`, into the same directory.
pub(crate) fn add(opts: &AddOptions<'_>, now: SystemTime) -> Result<Report, CertError> {
    check_not_reserved(opts.node)?;
    let (issuer, ca_not_after) = load_ca(opts.ca_dir, now)?;
    let window = Validity::from_now(now, opts.days)?;
    if window.not_after > ca_not_after {
        return Err(CertError::OutlivesCa {
            days: opts.days,
            ca_not_after: rfc3339(ca_not_after, opts.days)?,
        });
    }
    let files = issue_leaf(
        &issuer,
        opts.ca_dir,
        opts.node.as_str(),
        Role::Node,
        &window,
    )?;
    if check_targets(&files, opts.force, opts.keep_existing)? == Targets::AllExist {
        return Ok(Report::kept(opts.ca_dir));
    }
    write_files(opts.ca_dir, files.into(), opts.force)
}

fn check_not_reserved(node: &NodeName) -> Result<(), CertError> {
    if RESERVED_NODE_NAMES.contains(&node.as_str()) {
        return Err(CertError::ReservedNode(node.clone()));
    }
    Ok(())
}

/// What the targets of a run look like.
#[derive(Debug, PartialEq, Eq)]
enum Targets {
    /// Write them (none exists, or `force`).
    Write,
    /// Every one exists and `keep_existing` asked to keep them.
    AllExist,
}

impl Report {
    fn kept(dir: &Path) -> Report {
        Report {
            dir: dir.to_owned(),
            files: Vec::new(),
            kept_existing: true,
        }
    }
}

/// Fails with every existing target unless `force` (or, with `keep`, unless all exist).
/// Anything at the path counts as existing, including a dangling symlink, since writing would
/// replace it.
fn check_targets(files: &[Planned], force: bool, keep: bool) -> Result<Targets, CertError> {
    let mut existing = Vec::new();
    for Planned { path, .. } in files {
        match fs::symlink_metadata(path) {
            Ok(_) => existing.push(path.to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CertError::Io {
                    action: "inspect",
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    if existing.is_empty() || force {
        Ok(Targets::Write)
    } else if keep && existing.len() == files.len() {
        Ok(Targets::AllExist)
    } else {
        Err(CertError::WouldOverwrite(existing))
    }
}

// === validity ===

/// A certificate's validity window.
#[derive(Debug)]
struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    days: u32,
}

impl Validity {
    /// From [`BACKDATE`] before `now` until `days` after it, in whole seconds (X.509 times
    /// have no fractions).
    fn from_now(now: SystemTime, days: u32) -> Result<Self, CertError> {
        let out_of_range = || CertError::ValidityOutOfRange { days };
        let now = OffsetDateTime::from(now)
            .replace_nanosecond(0)
            .map_err(|_| out_of_range())?;
        Ok(Self {
            not_before: now.checked_sub(BACKDATE).ok_or_else(out_of_range)?,
            not_after: now
                .checked_add(Duration::days(i64::from(days)))
                .ok_or_else(out_of_range)?,
            days,
        })
    }

    fn not_after_rfc3339(&self) -> Result<String, CertError> {
        rfc3339(self.not_after, self.days)
    }
}

fn rfc3339(t: OffsetDateTime, days: u32) -> Result<String, CertError> {
    // Formatting fails only for years outside 0..=9999, which `Validity` cannot reach with
    // `--days` bounded by MAX_DAYS; report it as out of range rather than panic.
    t.format(&Rfc3339)
        .map_err(|_| CertError::ValidityOutOfRange { days })
}

// === issuing ===

/// Which kind of leaf certificate to issue.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Serves and dials replication: serverAuth + clientAuth.
    Node,
    /// `sluicectl` talking to the admin API: clientAuth only.
    Admin,
}

/// A file to write: its contents are complete before anything touches the disk.
#[derive(Debug)]
struct Planned {
    path: PathBuf,
    kind: FileKind,
    subject: String,
    contents: String,
    not_after: Option<String>,
}

fn generate_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error(what))
}

fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        what: what.to_owned(),
        source,
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(window: &Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    // Path length 0: the CA signs node and admin certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = window.not_before;
    params.not_after = window.not_after;
    params
}

/// Generates a key and a certificate for `name`, signed by `issuer`.
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    name: &str,
    role: Role,
    window: &Validity,
) -> Result<[Planned; 2], CertError> {
    let what = format!("the certificate for `{name}`");
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    // `name` is a validated DNS label (or ADMIN_NAME), so it is always valid IA5.
    let dns = Ia5String::try_from(name).map_err(generate_error(&what))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = window.not_before;
    params.not_after = window.not_after;

    let key = generate_key(&format!("the key for `{name}`"))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(generate_error(&what))?;

    let (stem, cert_kind, key_kind) = match role {
        Role::Node => (name, FileKind::NodeCertificate, FileKind::NodeKey),
        Role::Admin => (
            ADMIN_FILE_STEM,
            FileKind::AdminCertificate,
            FileKind::AdminKey,
        ),
    };
    Ok([
        Planned {
            path: dir.join(format!("{stem}.pem")),
            kind: cert_kind,
            subject: name.to_owned(),
            contents: cert.pem(),
            not_after: Some(window.not_after_rfc3339()?),
        },
        Planned {
            path: dir.join(format!("{stem}.key")),
            kind: key_kind,
            subject: name.to_owned(),
            contents: key.serialize_pem(),
            not_after: None,
        },
    ])
}

/// Loads the fleet CA from `dir` and checks that it can sign: the certificate is a CA, it has
/// not expired, and the key is the certificate's. Returns the issuer and the CA's expiry.
fn load_ca(
    dir: &Path,
    now: SystemTime,
) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), CertError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let bad = |path: &Path, reason: String| CertError::BadCa {
        path: path.to_owned(),
        reason,
    };

    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| bad(&key_path, format!("not a PKCS#8 PEM private key ({e})")))?;

    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad(&cert_path, format!("not a PEM certificate ({e})")))?;
    let x509 = pem
        .parse_x509()
        .map_err(|e| bad(&cert_path, format!("not an X.509 certificate ({e})")))?;
    if !x509.is_ca() {
        return Err(bad(
            &cert_path,
            "the certificate is not a CA (no CA:TRUE)".to_owned(),
        ));
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            &key_path,
            format!("the key does not belong to the certificate in `{CA_CERT_FILE}`"),
        ));
    }
    let not_after = OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
        .map_err(|e| bad(&cert_path, format!("unreadable expiry ({e})")))?;
    if not_after <= OffsetDateTime::from(now) {
        return Err(bad(
            &cert_path,
            format!("the CA expired at {}", x509.validity().not_after),
        ));
    }

    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| bad(&cert_path, format!("cannot sign with it ({e})")))?;
    Ok((issuer, not_after))
}

// === writing ===

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

/// Writes every planned file. If one fails, the files this call created are removed again, so
/// a failed run leaves no half-made fleet behind (files replaced under `force` stay replaced).
fn write_files(dir: &Path, planned: Vec<Planned>, force: bool) -> Result<Report, CertError> {
    let mut written: Vec<WrittenFile> = Vec::with_capacity(planned.len());
    for file in planned {
        match write_file(&file, force) {
            Ok(mode) => written.push(WrittenFile {
                path: file.path,
                kind: file.kind,
                subject: file.subject,
                mode: format!("{mode:04o}"),
                not_after: file.not_after,
            }),
            Err(e) => {
                for done in &written {
                    // Best effort: the error being returned is the one that matters.
                    let _ = fs::remove_file(&done.path);
                }
                return Err(e);
            }
        }
    }
    Ok(Report {
        dir: dir.to_owned(),
        files: written,
        kept_existing: false,
    })
}

/// Writes one file and returns its permission bits. The file is created fresh with its final
/// mode (`O_CREAT | O_EXCL`), so a private key is never readable by others, not even briefly,
/// and an existing file's looser mode is never inherited: under `force` the old file is removed
/// first. `O_EXCL` also refuses to follow a symlink planted at the path.
fn write_file(file: &Planned, force: bool) -> Result<u32, CertError> {
    let io_err = |action: &'static str| {
        move |source| CertError::Io {
            action,
            path: file.path.clone(),
            source,
        }
    };
    if force {
        match fs::remove_file(&file.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("replace")(e)),
        }
    }
    let mode = if file.kind.is_key() {
        KEY_MODE
    } else {
        CERT_MODE
    };
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&file.path)
        .map_err(io_err("create"))?;
    out.write_all(file.contents.as_bytes())
        .map_err(io_err("write"))?;
    out.sync_all().map_err(io_err("write"))?;
    let meta = out.metadata().map_err(io_err("inspect"))?;
    Ok(meta.permissions().mode() & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<NodeName> {
        list.iter()
            .map(|n| n.parse().expect("test names are valid"))
            .collect()
    }

    #[test]
    fn duplicate_and_reserved_names_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("certs");
        for (list, want_dup) in [(&["edge-1", "edge-1"][..], true), (&["ca"][..], false)] {
            let nodes = names(list);
            let err = init(
                &InitOptions {
                    out: &out,
                    nodes: &nodes,
                    admin_client: false,
                    force: false,
                    keep_existing: false,
                    days: DEFAULT_DAYS,
                },
                SystemTime::now(),
            )
            .expect_err("must refuse");
            assert_eq!(
                matches!(err, CertError::DuplicateNode(_)),
                want_dup,
                "{err}"
            );
            assert!(!out.exists(), "nothing may be created on refusal");
        }
    }

    #[test]
    fn add_refuses_a_cert_that_would_outlive_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issued = SystemTime::now();
        init(
            &InitOptions {
                out: dir.path(),
                nodes: &names(&["edge-1"]),
                admin_client: false,
                force: false,
                keep_existing: false,
                days: DEFAULT_DAYS,
            },
            issued,
        )
        .expect("init");
        let node: NodeName = "edge-2".parse().expect("valid");
        let add_at = |days_later: u64, days: u32| {
            add(
                &AddOptions {
                    ca_dir: dir.path(),
                    node: &node,
                    force: true,
                    keep_existing: false,
                    days,
                },
                issued + std::time::Duration::from_secs(days_later * 86_400),
            )
        };
        // A year before the CA expires, a two-year certificate would outlive it.
        let err = add_at(u64::from(CA_VALIDITY_DAYS) - 365, 2 * 365).expect_err("outlives");
        assert!(
            matches!(err, CertError::OutlivesCa { days: 730, .. }),
            "{err}"
        );
        add_at(u64::from(CA_VALIDITY_DAYS) - 365, 365).expect("fits");
        // After the CA expired, nothing is issued.
        let err = add_at(u64::from(CA_VALIDITY_DAYS) + 1, 1).expect_err("expired");
        assert!(matches!(err, CertError::BadCa { .. }), "{err}");
    }

    #[test]
    fn validity_is_backdated_and_whole_seconds() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let v = Validity::from_now(now, 2).expect("in range");
        assert_eq!(v.not_before.unix_timestamp(), 1_700_000_000 - 3600);
        assert_eq!(v.not_after.unix_timestamp(), 1_700_000_000 + 2 * 86_400);
        assert_eq!(v.not_after.nanosecond(), 0);
        assert_eq!(
            v.not_after_rfc3339().expect("formats"),
            "2023-11-16T22:13:20Z"
        );
    }
}
