//! The connection to a node's admin API (`sluice.admin.v1`): plaintext to a loopback address,
//! mutual TLS with the fleet's certificates otherwise, and errors that say what went wrong in
//! words rather than as gRPC codes.
//!
//! With TLS, the node's certificate must chain to `--ca` and name the node: its SAN DNS name
//! is the node name (`edge-1`), so the client verifies it against `--server-name`, which
//! defaults to the host of `--node` when that is a name (`--node edge-1:9000`). When `--node` is
//! an IP address, `--server-name` is required: accepting any certificate of the fleet for any
//! address would let one node stand in for another unnoticed.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sluice_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::args::{ClientTls, PeerAddr};

/// How long connecting to the node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach the admin API, checked before any connection is made.
#[derive(Debug)]
pub(crate) struct Target {
    /// `--node` as given, for messages.
    pub(crate) node: String,
    addr: PeerAddr,
    tls: Option<TlsFiles>,
}

#[derive(Debug)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    server_name: String,
}

impl Target {
    /// Checks `--node` and the TLS options together; the message of an error names the option
    /// to fix, and the caller reports it as a usage error.
    pub(crate) fn new(node: &str, tls: &ClientTls) -> Result<Target, String> {
        let addr: PeerAddr = node.parse().map_err(|why| format!("--node: {why}"))?;
        let ip = addr.host.parse::<IpAddr>().ok();
        let files = match (&tls.ca, &tls.cert, &tls.key) {
            (Some(ca), Some(cert), Some(key)) => {
                let server_name = match (&tls.server_name, ip) {
                    (Some(name), _) => name.as_str().to_owned(),
                    (None, None) => addr.host.clone(),
                    (None, Some(ip)) => {
                        return Err(format!(
                            "--node {node} is an IP address ({ip}), but a node's certificate \
                             names the node: add --server-name NODE (e.g. --server-name edge-1)"
                        ));
                    }
                };
                Some(TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    server_name,
                })
            }
            _ => {
                if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                    return Err(format!(
                        "--node {node}: {ip} is not a loopback address, and a node's admin API \
                         off loopback requires mutual TLS: pass --ca, --cert and --key"
                    ));
                }
                None
            }
        };
        Ok(Target {
            node: node.to_owned(),
            addr,
            tls: files,
        })
    }

    /// Connects to the node.
    pub(crate) async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        let host = if self.addr.host.contains(':') {
            format!("[{}]", self.addr.host)
        } else {
            self.addr.host.clone()
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{host}:{}", self.addr.port);
        let mut endpoint = Endpoint::from_shared(uri)
            .with_context(|| format!("--node {}: not a usable address", self.node))?
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(t) = &self.tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&t.ca, "--ca")?))
                .identity(Identity::from_pem(
                    read(&t.cert, "--cert")?,
                    read(&t.key, "--key")?,
                ))
                .domain_name(t.server_name.clone());
            endpoint = endpoint
                .tls_config(config)
                .context("cannot use the certificates given with --ca, --cert and --key")?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let hint = match io_error_kind(&e) {
                Some(std::io::ErrorKind::ConnectionRefused) => {
                    " (is the node running, with this address as admin.listen?)"
                }
                _ if self.tls.is_some() => "",
                _ => self.hint(),
            };
            anyhow::anyhow!(
                "cannot reach the admin API at {}: {}{hint}",
                self.node,
                chain(&e),
            )
        })?;
        Ok(AdminClient::new(channel))
    }

    /// What a transport failure after connecting most likely means.
    fn hint(&self) -> &'static str {
        if self.tls.is_none() {
            " (is it a sluice admin API? If it uses TLS, pass --ca, --cert and --key)"
        } else {
            " (a node closes the connection of a client certificate that is not from its fleet \
             CA: check --cert and --key)"
        }
    }

    /// Turns a failed call into an error for people: the node's own message for the statuses
    /// it uses to refuse input, the transport's reason otherwise.
    pub(crate) fn call_error(&self, status: tonic::Status) -> anyhow::Error {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                anyhow::anyhow!("{}", status.message())
            }
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
                let reason = match std::error::Error::source(&status) {
                    Some(source) => format!("{}: {}", status.message(), chain(source)),
                    None => status.message().to_owned(),
                };
                anyhow::anyhow!(
                    "the admin API at {} failed: {reason}{}",
                    self.node,
                    self.hint()
                )
            }
            code => anyhow::anyhow!(
                "the admin API at {} answered {code:?}: {}",
                self.node,
                status.message()
            ),
        }
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// The kind of the I/O error behind `e`, if one is.
fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = c.source();
    }
    None
}

/// An error and its causes, `: `-separated, without repeating a cause already in the text.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}
