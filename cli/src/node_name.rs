//! [`NodeName`]: a validated fleet node name.
//!
//! A node name is the node's identity on the wire: it is the DNS name in its certificate, the
//! TLS server name its peers expect, and the name `peer add` registers. It is therefore
//! restricted to one DNS label (RFC 1123): 1–63 characters of lowercase ASCII letters, digits
//! and `-`, neither starting nor ending with `-`. Lowercase only, because certificate name
//! matching is case-insensitive while file names and config keys are not. A name that reads as
//! a number (`123`, `0x1f`) is refused too: rustls will not take it as a TLS server name, for
//! fear of confusing it with an IPv4 address.

use std::fmt;
use std::str::FromStr;

/// The longest DNS label (RFC 1035 §2.3.4).
const MAX_LEN: usize = 63;

/// A node name that is a valid lowercase DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeName(String);

/// Why a string is not a valid [`NodeName`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum NodeNameError {
    /// The name is empty.
    #[error("a node name must not be empty")]
    Empty,
    /// The name is longer than a DNS label may be.
    #[error("node name `{name}` is {len} characters long; a DNS label has at most 63")]
    TooLong { name: String, len: usize },
    /// The name holds a character outside `a-z`, `0-9`, `-`.
    #[error(
        "node name `{name}` contains {found:?}; only lowercase letters, digits and `-` are allowed"
    )]
    BadChar { name: String, found: char },
    /// The name starts or ends with `-`.
    #[error("node name `{name}` must not start or end with `-`")]
    EdgeHyphen { name: String },
    /// The name reads as a decimal or hexadecimal number.
    #[error(
        "node name `{name}` reads as a number, which TLS does not accept as a server name; add a letter"
    )]
    Numeric { name: String },
}

impl NodeName {
    /// The name as a string slice.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NodeNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NodeNameError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_LEN {
            return Err(NodeNameError::TooLong {
                name: s.to_owned(),
                len,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NodeNameError::BadChar {
                name: s.to_owned(),
                found,
            });
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(NodeNameError::EdgeHyphen { name: s.to_owned() });
        }
        if reads_as_number(s) {
            return Err(NodeNameError::Numeric { name: s.to_owned() });
        }
        Ok(Self(s.to_owned()))
    }
}

/// Whether rustls' server-name check would take `s` (already lowercase) for a number: all
/// decimal digits, or `0x` followed by hex digits only.
fn reads_as_number(s: &str) -> bool {
    let all_hex = |t: &str| t.bytes().all(|b| b.is_ascii_hexdigit());
    s.bytes().all(|b| b.is_ascii_digit()) || s.strip_prefix("0x").is_some_and(all_hex)
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in [
            "edge-1",
            "a",
            "1a",
            "0xbeefy",
            "0x1-2",
            "n0de-x-9",
            &"a".repeat(63),
        ] {
            assert_eq!(ok.parse::<NodeName>().map(|n| n.0), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!("".parse::<NodeName>(), Err(NodeNameError::Empty));
        assert!(matches!(
            "a".repeat(64).parse::<NodeName>(),
            Err(NodeNameError::TooLong { len: 64, .. })
        ));
        for (bad, found) in [
            ("Edge-1", 'E'),
            ("edge_1", '_'),
            ("edge.1", '.'),
            ("edge 1", ' '),
            ("edgé", 'é'),
            ("../x", '.'),
        ] {
            assert!(
                matches!(bad.parse::<NodeName>(), Err(NodeNameError::BadChar { found: f, .. }) if f == found),
                "{bad}"
            );
        }
        for bad in ["0", "123", "0x", "0x1f", "0xdead"] {
            assert!(
                matches!(bad.parse::<NodeName>(), Err(NodeNameError::Numeric { .. })),
                "{bad}"
            );
        }
        for bad in ["-edge", "edge-", "-"] {
            assert!(
                matches!(
                    bad.parse::<NodeName>(),
                    Err(NodeNameError::EdgeHyphen { .. })
                ),
                "{bad}"
            );
        }
    }

    /// Every accepted name must also be a TLS server name, since peers dial each other by it.
    #[test]
    fn accepted_names_are_tls_server_names() {
        use tokio_rustls::rustls::pki_types::ServerName;
        // Within this alphabet (no uppercase, `_` or `.`, which rustls accepts and we refuse
        // on purpose) the two checks must agree exactly.
        let mut candidates = vec!["edge-1".to_owned(), "a".repeat(63)];
        let alphabet = ["0", "1", "9", "a", "f", "x", "z", "-"];
        for a in alphabet {
            candidates.push(a.to_owned());
            for b in alphabet {
                for c in alphabet {
                    candidates.push(format!("{a}{b}{c}"));
                    candidates.push(format!("{a}{b}"));
                }
            }
        }
        for name in candidates {
            let ours = name.parse::<NodeName>().is_ok();
            let tls = ServerName::try_from(name.as_str())
                .is_ok_and(|n| matches!(n, ServerName::DnsName(_)));
            assert_eq!(ours, tls, "`{name}`: ours {ours}, rustls {tls}");
        }
    }
}
