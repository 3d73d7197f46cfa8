//! The node's fleet identity for mutual TLS: the CA every peer's certificate must chain to,
//! and this node's certificate and key. Reloadable, so certificates rotate without a restart:
//! sessions already running keep the configuration they started with, new ones use the new
//! files. TLS 1.3 only; there is no plaintext mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the fleet identity lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// A fleet identity that cannot be loaded or a peer certificate that does not fit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot read {what} from {path}: {why}")]
    File {
        /// CA, certificate or key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The configuration cannot be built (bad key, unusable CA).
    #[error("bad TLS identity: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier cannot be built from the CA.
    #[error("bad fleet CA: {0}")]
    Verifier(String),
    /// The node's own certificate does not name it.
    #[error(
        "certificate {path} is not valid for node `{node}` (its DNS name must be the node name)"
    )]
    NotForNode {
        /// The certificate file.
        path: PathBuf,
        /// The node.
        node: String,
    },
    /// A peer presented no certificate, or one that does not name the node it claims to be.
    #[error("peer certificate does not name node `{0}`")]
    PeerName(String),
}

struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The node's reloadable mutual-TLS configuration.
pub struct Identity {
    node: String,
    paths: TlsPaths,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node", &self.node)
            .field("paths", &self.paths)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// Loads the CA, certificate and key, checking that the certificate names `node`.
    pub fn load(node: &str, paths: TlsPaths) -> Result<Identity, TlsError> {
        let loaded = build(node, &paths)?;
        Ok(Identity {
            node: node.into(),
            paths,
            current: RwLock::new(loaded),
        })
    }

    /// Re-reads the files; on error the current configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = build(&self.node, &self.paths)?;
        *self.current.write() = loaded;
        Ok(())
    }

    /// For accepting peers: requires a client certificate chained to the fleet CA.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().server.clone()
    }

    /// For dialing peers: presents this node's certificate and checks the server's against the
    /// fleet CA and the expected node name.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current.read().client.clone()
    }

    /// The files the identity is read from.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }
}

/// Checks that a verified peer certificate names `node`.
pub fn check_peer_name(cert: &CertificateDer<'_>, node: &str) -> Result<(), TlsError> {
    let name = ServerName::try_from(node).map_err(|_| TlsError::PeerName(node.into()))?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|_| TlsError::PeerName(node.into()))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| TlsError::PeerName(node.into()))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::File {
        what,
        path: path.into(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

fn build(node: &str, paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let ca = read_certs("the fleet CA", &paths.ca)?;
    let chain = read_certs("the node certificate", &paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| TlsError::File {
        what: "the node key",
        path: paths.key.clone(),
        why: e.to_string(),
    })?;
    check_peer_name(&chain[0], node).map_err(|_| TlsError::NotForNode {
        path: paths.cert.clone(),
        node: node.into(),
    })?;

    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c)?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}
