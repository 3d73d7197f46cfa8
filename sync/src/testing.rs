//! Test support for crates that drive replication (feature `testing`): a fleet CA that issues
//! real node certificates with rcgen, written to files as `sluicectl certs init` would.

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

impl Ca {
    /// A new CA written to `dir/ca.pem` (test code: panics on I/O errors).
    pub fn new(dir: &Path, label: &str) -> Ca {
        std::fs::create_dir_all(dir).expect("create the certificate directory");
        let key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test fleet CA {label}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
        Ca {
            dir: dir.into(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `NAME.pem`/`NAME.key` for a node certificate naming `name`.
    pub fn node(&self, name: &str) -> TlsPaths {
        self.node_as(name, name)
    }

    /// Writes files called `file` holding a certificate that names `cert_name`.
    pub fn node_as(&self, file: &str, cert_name: &str) -> TlsPaths {
        let key = KeyPair::generate().expect("generate a key");
        let mut params =
            CertificateParams::new(vec![cert_name.to_string()]).expect("node parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, cert_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the node certificate");
        let paths = TlsPaths {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&paths.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&paths.key, key.serialize_pem()).expect("write the key");
        paths
    }
}

/// A free port on loopback (bound, then released for the caller to bind).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address")
}
