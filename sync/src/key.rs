//! Table keys: a compact byte string, stored inline up to 22 bytes so that an IP key never
//! allocates, with conversions from and to the text of each key type.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::KeyError;
use crate::schema::KeyType;

const INLINE: usize = 22;

/// A key as the table stores it: IPv4 = 4 bytes, IPv6 = 16 bytes, integer = 8 bytes big
/// endian, string = UTF-8 bytes, binary = the bytes. 24 bytes in memory.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Key {
    /// A key from raw bytes (already in the table's encoding).
    pub fn from_bytes(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            // len <= 22 fits in u8.
            Key(Repr::Inline {
                len: bytes.len() as u8,
                buf,
            })
        } else {
            Key(Repr::Heap(bytes.into()))
        }
    }

    /// The key of an IP address; IPv4-mapped IPv6 addresses become IPv4 so that a client is one
    /// key whichever socket family it arrived on.
    pub fn from_ip(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => Key::from_bytes(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::from_bytes(&v4.octets()),
                None => Key::from_bytes(&v6.octets()),
            },
        }
    }

    /// The key of an integer.
    pub fn from_int(n: i64) -> Key {
        Key::from_bytes(&n.to_be_bytes())
    }

    /// The key of a string, cut at the last character boundary that fits `max` bytes, as
    /// HAProxy truncates string keys taken from requests.
    pub fn from_str_truncated(s: &str, max: usize) -> Key {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Key::from_bytes(&s.as_bytes()[..end])
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", Hex(self.as_bytes()))
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl KeyType {
    /// Parses the text form of a key (admin API, CLI): an address, a decimal integer, a string,
    /// or hexadecimal bytes.
    pub fn parse_key(self, text: &str) -> Result<Key, KeyError> {
        match self {
            KeyType::Ip => text
                .trim()
                .parse::<IpAddr>()
                .map(Key::from_ip)
                .map_err(|_| KeyError::NotAnIp(text.into())),
            KeyType::Integer => text
                .trim()
                .parse::<i64>()
                .map(Key::from_int)
                .map_err(|_| KeyError::NotAnInteger(text.into())),
            KeyType::String(max) => {
                if text.is_empty() {
                    return Err(KeyError::Empty);
                }
                if text.len() > max {
                    return Err(KeyError::TooLong {
                        len: text.len(),
                        max,
                    });
                }
                Ok(Key::from_bytes(text.as_bytes()))
            }
            KeyType::Binary(max) => {
                let bytes = parse_hex(text)?;
                if bytes.is_empty() {
                    return Err(KeyError::Empty);
                }
                if bytes.len() > max {
                    return Err(KeyError::TooLong {
                        len: bytes.len(),
                        max,
                    });
                }
                Ok(Key::from_bytes(&bytes))
            }
        }
    }

    /// Checks key bytes received from a peer.
    pub fn check_bytes(self, bytes: &[u8]) -> Result<Key, KeyError> {
        match self {
            KeyType::Ip if bytes.len() == 4 || bytes.len() == 16 => {}
            KeyType::Ip => {
                return Err(KeyError::BadLength {
                    ty: "ip",
                    len: bytes.len(),
                });
            }
            KeyType::Integer if bytes.len() == 8 => {}
            KeyType::Integer => {
                return Err(KeyError::BadLength {
                    ty: "integer",
                    len: bytes.len(),
                });
            }
            KeyType::String(max) | KeyType::Binary(max) => {
                if bytes.is_empty() {
                    return Err(KeyError::Empty);
                }
                if bytes.len() > max {
                    return Err(KeyError::TooLong {
                        len: bytes.len(),
                        max,
                    });
                }
                if matches!(self, KeyType::String(_)) && std::str::from_utf8(bytes).is_err() {
                    return Err(KeyError::NotUtf8);
                }
            }
        }
        Ok(Key::from_bytes(bytes))
    }

    /// The text form of a key of this type (the inverse of [`KeyType::parse_key`]).
    pub fn format_key(self, key: &Key) -> String {
        let b = key.as_bytes();
        match self {
            KeyType::Ip => match <[u8; 4]>::try_from(b) {
                Ok(v4) => Ipv4Addr::from(v4).to_string(),
                Err(_) => match <[u8; 16]>::try_from(b) {
                    Ok(v6) => Ipv6Addr::from(v6).to_string(),
                    Err(_) => Hex(b).to_string(),
                },
            },
            KeyType::Integer => match <[u8; 8]>::try_from(b) {
                Ok(n) => i64::from_be_bytes(n).to_string(),
                Err(_) => Hex(b).to_string(),
            },
            KeyType::String(_) => String::from_utf8_lossy(b).into_owned(),
            KeyType::Binary(_) => Hex(b).to_string(),
        }
    }
}

fn parse_hex(text: &str) -> Result<Vec<u8>, KeyError> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    if !t.len().is_multiple_of(2) {
        return Err(KeyError::NotHex(text.into()));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|_| KeyError::NotHex(text.into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys_are_compact_and_normalised() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        let v4 = KeyType::Ip.parse_key("10.0.0.7").unwrap();
        assert_eq!(v4.as_bytes(), &[10, 0, 0, 7]);
        let mapped = KeyType::Ip.parse_key("::ffff:10.0.0.7").unwrap();
        assert_eq!(mapped, v4);
        let v6 = KeyType::Ip.parse_key("2001:db8::1").unwrap();
        assert_eq!(v6.as_bytes().len(), 16);
        assert_eq!(KeyType::Ip.format_key(&v6), "2001:db8::1");
        assert_eq!(KeyType::Ip.format_key(&v4), "10.0.0.7");
        assert!(matches!(
            KeyType::Ip.parse_key("10.0.0.300"),
            Err(KeyError::NotAnIp(_))
        ));
    }

    #[test]
    fn integer_string_binary_keys() {
        let n = KeyType::Integer.parse_key("-42").unwrap();
        assert_eq!(KeyType::Integer.format_key(&n), "-42");
        assert!(KeyType::Integer.parse_key("4x").is_err());

        let s = KeyType::String(8).parse_key("abc").unwrap();
        assert_eq!(KeyType::String(8).format_key(&s), "abc");
        assert_eq!(
            KeyType::String(2).parse_key("abc"),
            Err(KeyError::TooLong { len: 3, max: 2 })
        );
        let long = "x".repeat(100);
        let heap = KeyType::String(200).parse_key(&long).unwrap();
        assert_eq!(heap.as_bytes(), long.as_bytes());

        let b = KeyType::Binary(4).parse_key("0xdeadbeef").unwrap();
        assert_eq!(b.as_bytes(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(KeyType::Binary(4).format_key(&b), "deadbeef");
        assert!(matches!(
            KeyType::Binary(4).parse_key("abc"),
            Err(KeyError::NotHex(_))
        ));
        assert!(matches!(
            KeyType::Binary(1).parse_key("abcd"),
            Err(KeyError::TooLong { .. })
        ));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let k = Key::from_str_truncated("héllo", 2);
        assert_eq!(k.as_bytes(), b"h");
        let k = Key::from_str_truncated("héllo", 3);
        assert_eq!(k.as_bytes(), "hé".as_bytes());
    }

    #[test]
    fn wire_bytes_are_checked() {
        assert!(KeyType::Ip.check_bytes(&[1, 2, 3]).is_err());
        assert!(KeyType::Ip.check_bytes(&[1, 2, 3, 4]).is_ok());
        assert!(KeyType::Integer.check_bytes(&[0; 4]).is_err());
        assert_eq!(
            KeyType::String(4).check_bytes(&[0xff]),
            Err(KeyError::NotUtf8)
        );
        assert_eq!(KeyType::Binary(4).check_bytes(&[]), Err(KeyError::Empty));
    }
}
