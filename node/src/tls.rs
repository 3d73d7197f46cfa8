//! TLS termination on frontends: rustls with the `ring` provider, certificates read from PEM
//! files when a config is loaded (so a reload picks up rotated certificates).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, FrontendTlsConfig, Mode};

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("cannot read certificates from {path}: {why}")]
    Cert {
        /// File.
        path: PathBuf,
        /// Reason.
        why: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("cannot read a private key from {path}: {why}")]
    Key {
        /// File.
        path: PathBuf,
        /// Reason.
        why: String,
    },
    /// rustls refused the pair (for example, the key does not match).
    #[error("unusable certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor of a frontend. HTTP frontends offer `h2` and `http/1.1` by ALPN.
pub fn acceptor(cfg: &FrontendTlsConfig, mode: Mode) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(&cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| TlsError::Key {
        path: cfg.key.clone(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    if mode == Mode::Http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Loads every frontend certificate and key of `config`, as starting the node would; the
/// error names the frontend's field path (`frontend[1].tls`). `sluice check` runs this.
pub fn check(config: &Config) -> Result<(), (String, TlsError)> {
    for (i, fe) in config.frontends.iter().enumerate() {
        if let Some(t) = &fe.tls {
            acceptor(t, fe.mode).map_err(|e| (format!("frontend[{i}].tls"), e))?;
        }
    }
    Ok(())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Cert {
            path: path.to_owned(),
            why: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Cert {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: path.to_owned(),
            why: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}
