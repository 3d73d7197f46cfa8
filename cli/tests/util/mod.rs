//! Helpers shared by the `sluicectl` black-box tests: run the real binary, read what it wrote,
//! and drive a mutual-TLS handshake over loopback TCP with the certificates it made.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Generous upper bound for one loopback handshake; reached only if something hangs.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(20);

/// Runs `sluicectl` with `args`, with `SLUICE_ADMIN` unset so the default address applies.
pub(crate) fn sluicectl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .output()
        .expect("run sluicectl")
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a zero exit and returns stdout.
pub(crate) fn success(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sluicectl failed ({}): {}",
        out.status,
        stderr(out)
    );
    stdout(out)
}

/// Runs `certs init` for `nodes` (comma-separated) into `dir`, with an admin client cert.
pub(crate) fn init_fleet(dir: &Path, nodes: &str) {
    success(&sluicectl([
        "certs".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
        "--nodes".as_ref(),
        nodes.as_ref(),
        "--admin-client".as_ref(),
    ]));
}

/// The process umask, which lowers the modes files are created with. Read from
/// `/proc/self/status` (Linux ≥ 4.7); the conventional 022 otherwise.
pub(crate) fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

pub(crate) fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The names of the files in `dir`, sorted.
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("read dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    names.sort();
    names
}

/// Parses the single certificate in a PEM file.
pub(crate) fn read_cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("certificate {}: {e}", path.display()))
}

/// A certificate and its private key, as a node or the admin client presents them.
#[derive(Debug)]
pub(crate) struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads `STEM.pem` and `STEM.key` from `dir`.
    pub(crate) fn load(dir: &Path, stem: &str) -> Self {
        let key_path: PathBuf = dir.join(format!("{stem}.key"));
        Self {
            cert: read_cert_der(&dir.join(format!("{stem}.pem"))),
            key: PrivateKeyDer::from_pem_file(&key_path)
                .unwrap_or_else(|e| panic!("key {}: {e}", key_path.display())),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Trust anchors: the `ca.pem` in `dir`.
fn roots(dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(read_cert_der(&dir.join("ca.pem")))
        .expect("ca.pem is a usable trust anchor");
    Arc::new(roots)
}

/// A listener's TLS config as SPEC §6 asks for replication: present `identity`, require a
/// client certificate chained to the CA in `ca_dir`.
pub(crate) fn server_config(ca_dir: &Path, identity: Identity) -> ServerConfig {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_dir), provider())
        .build()
        .expect("client verifier");
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert], identity.key)
        .expect("server certificate and key match")
}

/// A dialer's TLS config: trust the CA in `ca_dir`, present `identity`.
pub(crate) fn client_config(ca_dir: &Path, identity: Identity) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots(ca_dir))
        .with_client_auth_cert(vec![identity.cert], identity.key)
        .expect("client certificate and key match")
}

/// How a handshake ended on each side.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The listener: the client certificate's SAN DNS names once the handshake is done.
    pub(crate) server: io::Result<Vec<String>>,
    /// The dialer: `Ok` once it has read the listener's greeting over the finished session.
    pub(crate) client: io::Result<()>,
}

impl Outcome {
    pub(crate) fn is_success(&self) -> bool {
        self.server.is_ok() && self.client.is_ok()
    }
}

const GREETING: &[u8] = b"ok";

/// Connects over real TCP on 127.0.0.1 with TLS server name `server_name` and completes a
/// handshake. The listener writes a greeting after its side succeeds; the dialer reads it, so
/// with TLS 1.3 (where the dialer finishes before the listener has checked its certificate)
/// a refused client certificate still shows on the client side as a failed read.
pub(crate) async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(server_name.to_owned()).expect("valid server name");

    let serve = async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let sans = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| san_dns_names(leaf))
            .unwrap_or_default();
        tls.write_all(GREETING).await?;
        tls.shutdown().await?;
        Ok(sans)
    };
    let dial = async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await?;
        if got == GREETING {
            Ok(())
        } else {
            Err(io::Error::other(format!("unexpected greeting {got:?}")))
        }
    };
    let (server, client) =
        tokio::time::timeout(HANDSHAKE_DEADLINE, async { tokio::join!(serve, dial) })
            .await
            .expect("handshake finished within the deadline");
    Outcome { server, client }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
pub(crate) fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The SAN DNS names of a certificate.
pub(crate) fn san_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert).expect("parse certificate");
    x509.subject_alternative_name()
        .expect("well-formed SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
