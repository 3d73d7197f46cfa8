//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by L4 balancers and anycast
//! routers in front of a node, so the client address the rules and backends see is the real one.
//!
//! [`parse`] is incremental and never reads past the header: it reports how many bytes the
//! header took, and the caller hands anything after it to the protocol that follows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (spec §2.1).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted (16 fixed bytes and up to 4 KiB of addresses and TLVs).
pub const V2_MAX_LEN: usize = 16 + 4096;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection from `source` to `destination`.
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The sender speaks for itself (v2 `LOCAL`, v1 `UNKNOWN`, or a non-IP family): keep the
    /// connection's own addresses.
    Local,
}

/// A header that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// Neither signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A v1 line longer than 107 bytes.
    #[error("PROXY v1 line too long")]
    V1TooLong,
    /// A v1 line that does not follow the grammar.
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// A v2 header with a bad version or command.
    #[error("unsupported PROXY v2 version or command {0:#04x}")]
    V2BadVersion(u8),
    /// A v2 address block shorter than its family needs, or longer than we accept.
    #[error("bad PROXY v2 length {0}")]
    V2BadLength(usize),
    /// A v2 family byte we do not know.
    #[error("unknown PROXY v2 address family {0:#04x}")]
    V2BadFamily(u8),
}

/// Parses a header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is a valid prefix of a header but more bytes are needed, and
/// `Ok(Some((header, len)))` when the header is complete and took `len` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Err(ProxyHeaderError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(ProxyHeaderError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.contains(&b'\n') {
            return Err(ProxyHeaderError::V1Malformed(
                "line feed without carriage return",
            ));
        }
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyHeaderError::V1TooLong);
        }
        return Ok(None);
    };
    if cr + 1 >= buf.len() {
        if cr + 1 >= V1_MAX_LEN {
            return Err(ProxyHeaderError::V1TooLong);
        }
        return Ok(None);
    }
    if buf[cr + 1] != b'\n' {
        return Err(ProxyHeaderError::V1Malformed(
            "carriage return without line feed",
        ));
    }
    let len = cr + 2;
    let line = std::str::from_utf8(&buf[PREFIX.len()..cr])
        .map_err(|_| ProxyHeaderError::V1Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or_default();
    if proto == "UNKNOWN" {
        return Ok(Some((Header::Local, len)));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(ProxyHeaderError::V1Malformed(
            "expected 4 fields after the protocol",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(
                src.parse()
                    .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv4 source"))?,
            ),
            IpAddr::V4(
                dst.parse()
                    .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv4 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                src.parse()
                    .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv6 source"))?,
            ),
            IpAddr::V6(
                dst.parse()
                    .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv6 destination"))?,
            ),
        ),
        _ => {
            return Err(ProxyHeaderError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let port = |s: &str| -> Result<u16, ProxyHeaderError> {
        // The spec forbids leading zeros and signs; `u16::from_str` accepts `+1`, so check digits.
        if s.is_empty()
            || s.len() > 5
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return Err(ProxyHeaderError::V1Malformed("bad port"));
        }
        s.parse()
            .map_err(|_| ProxyHeaderError::V1Malformed("bad port"))
    };
    Ok(Some((
        Header::Proxied {
            source: SocketAddr::new(src, port(sport)?),
            destination: SocketAddr::new(dst, port(dport)?),
        },
        len,
    )))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyHeaderError::NotProxy);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyHeaderError::V2BadVersion(ver_cmd));
    }
    let family = buf[13];
    let addr_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + addr_len > V2_MAX_LEN {
        return Err(ProxyHeaderError::V2BadLength(addr_len));
    }
    // Validate what we can before the whole block arrives.
    let needed = match family >> 4 {
        0x0 => 0,
        0x1 => 12,
        0x2 => 36,
        0x3 => 216,
        _ => return Err(ProxyHeaderError::V2BadFamily(family)),
    };
    if !matches!(family & 0x0f, 0..=2) {
        return Err(ProxyHeaderError::V2BadFamily(family));
    }
    if addr_len < needed {
        return Err(ProxyHeaderError::V2BadLength(addr_len));
    }
    let len = 16 + addr_len;
    if buf.len() < len {
        return Ok(None);
    }
    // LOCAL: health checks from the balancer itself; keep the real addresses.
    if ver_cmd & 0x0f == 0 {
        return Ok(Some((Header::Local, len)));
    }
    let a = &buf[16..len];
    let header = match family >> 4 {
        0x1 => Header::Proxied {
            source: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
                u16::from_be_bytes([a[8], a[9]]),
            ),
            destination: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(a[4], a[5], a[6], a[7])),
                u16::from_be_bytes([a[10], a[11]]),
            ),
        },
        0x2 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        // AF_UNSPEC and AF_UNIX carry no IP address to use.
        _ => Header::Local,
    };
    Ok(Some((header, len)))
}

/// Encodes a v2 header (for tests and tools).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        let (hdr, len) = parse(h).unwrap().unwrap();
        assert_eq!(len, h.len() - 5);
        assert_eq!(
            hdr,
            Header::Proxied {
                source: sa("192.0.2.1:56324"),
                destination: sa("198.51.100.2:443")
            }
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        let (hdr, len) = parse(h).unwrap().unwrap();
        assert_eq!(len, h.len());
        assert_eq!(
            hdr,
            Header::Proxied {
                source: sa("[2001:db8::1]:1"),
                destination: sa("[2001:db8::2]:65535")
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((Header::Local, 15))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
                .unwrap()
                .unwrap()
                .0,
            Header::Local
        );
    }

    #[test]
    fn v1_truncated_needs_more() {
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]).unwrap(), None, "prefix of {n} bytes");
        }
    }

    #[test]
    fn v1_garbled() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXZ TCP4",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
    }

    #[test]
    fn v2_round_trip_and_truncation() {
        for (s, d) in [
            ("192.0.2.1:5000", "10.0.0.1:80"),
            ("[2001:db8::7]:5000", "[2001:db8::1]:443"),
        ] {
            let mut h = encode_v2(sa(s), sa(d));
            let n = h.len();
            for cut in 0..n {
                assert_eq!(parse(&h[..cut]).unwrap(), None, "prefix of {cut} bytes");
            }
            h.extend_from_slice(b"GET");
            assert_eq!(
                parse(&h).unwrap(),
                Some((
                    Header::Proxied {
                        source: sa(s),
                        destination: sa(d)
                    },
                    n
                ))
            );
        }
    }

    #[test]
    fn v2_local_tlvs_and_garbage() {
        // LOCAL with an unspecified family.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&h).unwrap(), Some((Header::Local, 16)));
        // TLVs after the addresses are skipped.
        let mut h = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        h[15] = 12 + 5;
        h.extend_from_slice(&[0x04, 0x00, 0x02, b'o', b'k']);
        assert_eq!(parse(&h).unwrap().unwrap().1, 16 + 17);
        // Bad version, command, family, short address block, oversize.
        let base = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        let mut bad = base.clone();
        bad[12] = 0x11;
        assert!(parse(&bad).is_err());
        let mut bad = base.clone();
        bad[12] = 0x22;
        assert!(parse(&bad).is_err());
        let mut bad = base.clone();
        bad[13] = 0x41;
        assert!(parse(&bad).is_err());
        let mut bad = base.clone();
        bad[15] = 4;
        assert!(parse(&bad).is_err());
        let mut bad = base.clone();
        bad[14] = 0xff;
        assert!(parse(&bad).is_err());
        let mut bad = base;
        bad[5] = b'X';
        assert_eq!(parse(&bad), Err(ProxyHeaderError::NotProxy));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let start: &[u8] = if x & 1 == 0 { b"PROXY " } else { &V2_SIGNATURE };
            buf.extend_from_slice(&start[..(x as usize >> 8) % (start.len() + 1)]);
            for i in 0..len {
                buf.push((x >> (i % 56)) as u8);
            }
            let _ = parse(&buf);
        }
    }
}
