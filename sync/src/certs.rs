//! A throwaway fleet CA (feature `certs`) that issues real node certificates with rcgen,
//! written to files the way `sluicectl certs init` writes them: for tests that drive
//! replication, and for `sluice demo`. Operators use `sluicectl certs init`. [`Ca::new`] and
//! [`Ca::node`] panic on errors, as befits test set-up; [`Ca::try_new`] and [`Ca::try_node`]
//! report them.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::replication::TlsPaths;

/// A fleet CA and the certificates it issues, in a directory.
pub struct Ca {
    /// Where `ca.pem` and the issued files are.
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir).finish()
    }
}

/// A certificate that cannot be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Generating or signing failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write a certificate file: {0}")]
    Io(#[from] std::io::Error),
}

impl Ca {
    /// A new CA written to `dir/ca.pem`; panics on errors.
    pub fn new(dir: &Path, label: &str) -> Ca {
        Ca::try_new(dir, label).expect("create a fleet CA")
    }

    /// A new CA written to `dir/ca.pem`.
    pub fn try_new(dir: &Path, label: &str) -> Result<Ca, CertError> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("sluice fleet CA ({label})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.pem"), cert.pem())?;
        Ok(Ca {
            dir: dir.into(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes `NAME.pem`/`NAME.key` for a node certificate naming `name`; panics on errors.
    pub fn node(&self, name: &str) -> TlsPaths {
        self.node_as(name, name)
    }

    /// Writes files called `file` holding a certificate that names `cert_name`; panics on
    /// errors.
    pub fn node_as(&self, file: &str, cert_name: &str) -> TlsPaths {
        self.try_node(file, cert_name)
            .expect("issue a node certificate")
    }

    /// Writes files called `file` holding a certificate that names `cert_name`, the key with
    /// mode 0600.
    pub fn try_node(&self, file: &str, cert_name: &str) -> Result<TlsPaths, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![cert_name.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, cert_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let paths = TlsPaths {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&paths.cert, cert.pem())?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&paths.key)?;
        f.write_all(key.serialize_pem().as_bytes())?;
        Ok(paths)
    }
}

/// A free port on loopback (bound, then released for the caller to bind).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address")
}
