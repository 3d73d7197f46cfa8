//! `sluice.sync.v1.TableContributions` by hand, kept in its encoded form.
//!
//! Snapshots and batches carry thousands of contributions per message. Generated code would
//! build a `Contribution` with its own key and data allocations for each, recompute every
//! nested length once per enclosing message while encoding, and allocate them all again on
//! the receiving side. Here the contributions stay as the bytes of field 3: a sender appends
//! each one straight from its table, a receiver reads them in place ([`ContributionRef`]), and
//! the message's length is known without walking them. The bytes on the wire are exactly what
//! the generated type would produce, so peers built either way understand each other.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::sync::v1::{Contribution, Datum, Origin};

const TABLE: u32 = 1;
const ORIGIN: u32 = 2;
const CONTRIBUTIONS: u32 = 3;

const KEY: u32 = 1;
const VERSION: u32 = 2;
const IDLE_MS: u32 = 3;
const EPOCH: u32 = 4;
const DATA: u32 = 5;

/// One table's contributions from one origin (`sluice.sync.v1.TableContributions`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct TableContributions {
    /// The table's name.
    pub table: String,
    /// Whose contributions these are.
    pub origin: Option<Origin>,
    /// Every occurrence of field 3 (tag, length, `Contribution`), as on the wire.
    encoded: Vec<u8>,
    count: usize,
}

impl TableContributions {
    /// No contributions yet, of `origin` to `table`.
    pub fn new(table: impl Into<String>, origin: Origin) -> TableContributions {
        TableContributions {
            table: table.into(),
            origin: Some(origin),
            encoded: Vec::new(),
            count: 0,
        }
    }

    /// How many contributions it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a contribution; zero fields are left out, as proto3 does.
    pub fn push(&mut self, key: &[u8], version: u64, idle_ms: u32, epoch: u64, data: &[Datum]) {
        let varint = |tag: u32, v: u64| {
            if v == 0 {
                0
            } else {
                encoding::key_len(tag) + encoding::encoded_len_varint(v)
            }
        };
        let delimited = |tag: u32, len: usize| {
            encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
        };
        let mut len = varint(VERSION, version)
            + varint(IDLE_MS, u64::from(idle_ms))
            + varint(EPOCH, epoch)
            + data
                .iter()
                .map(|d| delimited(DATA, d.encoded_len()))
                .sum::<usize>();
        if !key.is_empty() {
            len += delimited(KEY, key.len());
        }
        let buf = &mut self.encoded;
        buf.reserve(delimited(CONTRIBUTIONS, len));
        encoding::encode_key(CONTRIBUTIONS, WireType::LengthDelimited, buf);
        encoding::encode_varint(len as u64, buf);
        if !key.is_empty() {
            encoding::encode_key(KEY, WireType::LengthDelimited, buf);
            encoding::encode_varint(key.len() as u64, buf);
            buf.put_slice(key);
        }
        for (tag, v) in [
            (VERSION, version),
            (IDLE_MS, u64::from(idle_ms)),
            (EPOCH, epoch),
        ] {
            if v != 0 {
                encoding::encode_key(tag, WireType::Varint, buf);
                encoding::encode_varint(v, buf);
            }
        }
        for d in data {
            encoding::message::encode(DATA, d, buf);
        }
        self.count += 1;
    }

    /// Appends a contribution given as the generated message (tests and tools; the engine
    /// uses [`TableContributions::push`]).
    pub fn push_message(&mut self, c: &Contribution) {
        encoding::message::encode(CONTRIBUTIONS, c, &mut self.encoded);
        self.count += 1;
    }

    /// The contributions, read in place. Each item fails alone if its bytes are malformed.
    pub fn contributions(&self) -> ContributionIter<'_> {
        ContributionIter {
            rest: &self.encoded,
        }
    }
}

impl Message for TableContributions {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.table.is_empty() {
            encoding::string::encode(TABLE, &self.table, buf);
        }
        if let Some(o) = &self.origin {
            encoding::message::encode(ORIGIN, o, buf);
        }
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            TABLE => encoding::string::merge(wire_type, &mut self.table, buf, ctx),
            ORIGIN => encoding::message::merge(
                wire_type,
                self.origin.get_or_insert_with(Origin::default),
                buf,
                ctx,
            ),
            CONTRIBUTIONS => {
                // Only the framing is checked here; the body is parsed when read. A received
                // message is one contiguous buffer, so the body is copied from it directly;
                // anything else (including a length past the end) takes prost's path, which
                // copies or fails as it should.
                let out = &mut self.encoded;
                let mut chunk = buf.chunk();
                let whole = chunk.len();
                let framed = (wire_type == WireType::LengthDelimited)
                    .then(|| encoding::decode_varint(&mut chunk).ok())
                    .flatten()
                    .and_then(|len| usize::try_from(len).ok())
                    .filter(|&len| len <= chunk.len());
                if let Some(len) = framed {
                    put_contribution(out, &chunk[..len]);
                    buf.advance(whole - chunk.len() + len);
                } else {
                    let mut body = Bytes::new();
                    encoding::bytes::merge(wire_type, &mut body, buf, ctx)?;
                    put_contribution(out, &body);
                }
                self.count += 1;
                Ok(())
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let mut len = self.encoded.len();
        if !self.table.is_empty() {
            len += encoding::string::encoded_len(TABLE, &self.table);
        }
        if let Some(o) = &self.origin {
            len += encoding::message::encoded_len(ORIGIN, o);
        }
        len
    }

    fn clear(&mut self) {
        self.table.clear();
        self.origin = None;
        self.encoded.clear();
        self.count = 0;
    }
}

/// The contributions of a [`TableContributions`], in order.
#[derive(Clone, Debug)]
pub struct ContributionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ContributionIter<'a> {
    type Item = Result<ContributionRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_by(|_| Ok(()))
    }
}

impl<'a> ContributionIter<'a> {
    /// The next contribution, its data decoded onto the end of `data` as they are read: a
    /// receiver that wants every datum reads each contribution once instead of twice. When the
    /// item is an error, `data` is as it was.
    pub fn next_with_data(
        &mut self,
        data: &mut Vec<Datum>,
    ) -> Option<Result<ContributionRef<'a>, DecodeError>> {
        let start = data.len();
        let item = self.next_by(|body| {
            data.push(datum(body)?);
            Ok(())
        });
        if matches!(item, Some(Err(_))) {
            data.truncate(start);
        }
        item
    }

    fn next_by(
        &mut self,
        on_datum: impl FnMut(&'a [u8]) -> Result<(), DecodeError>,
    ) -> Option<Result<ContributionRef<'a>, DecodeError>> {
        if self.rest.is_empty() {
            return None;
        }
        let item = key(&mut self.rest)
            .and_then(|(tag, wt)| delimited(&mut self.rest, tag, wt))
            .and_then(|body| ContributionRef::parse(body, on_datum));
        if item.is_err() {
            // The rest cannot be framed past a malformed item.
            self.rest = &[];
        }
        Some(item)
    }
}

/// A `sluice.sync.v1.Contribution` read in place: the key borrows the message's bytes and the
/// data are decoded one at a time by [`ContributionRef::data`] (or while it is read, by
/// [`ContributionIter::next_with_data`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContributionRef<'a> {
    /// The entry's key.
    pub key: &'a [u8],
    /// The origin's version of this contribution.
    pub version: u64,
    /// Milliseconds since the origin last touched the entry.
    pub idle_ms: u32,
    /// The origin's reset epoch.
    pub epoch: u64,
    data: &'a [u8],
}

impl<'a> ContributionRef<'a> {
    /// Reads a contribution's fields, handing each datum's body to `on_datum` in order.
    fn parse(
        mut buf: &'a [u8],
        mut on_datum: impl FnMut(&'a [u8]) -> Result<(), DecodeError>,
    ) -> Result<ContributionRef<'a>, DecodeError> {
        let mut c = ContributionRef::default();
        let mut data: Option<(usize, usize)> = None;
        let whole = buf;
        while !buf.is_empty() {
            let (tag, wt) = key(&mut buf)?;
            match tag {
                KEY => c.key = delimited(&mut buf, tag, wt)?,
                VERSION => c.version = varint(&mut buf, wt)?,
                IDLE_MS => c.idle_ms = varint(&mut buf, wt)? as u32,
                EPOCH => c.epoch = varint(&mut buf, wt)?,
                DATA => {
                    // The data fields may be interleaved with others: remember the span from
                    // the first to the last and skip the others when reading them.
                    let start = whole.len() - buf.len() - encoding::key_len(tag);
                    on_datum(delimited(&mut buf, tag, wt)?)?;
                    let end = whole.len() - buf.len();
                    data = Some((data.map_or(start, |d| d.0), end));
                }
                _ => encoding::skip_field(wt, tag, &mut buf, DecodeContext::default())?,
            }
        }
        if let Some((start, end)) = data {
            c.data = &whole[start..end];
        }
        Ok(c)
    }

    /// The contribution as the generated message, its data decoded (tests and tools).
    pub fn to_message(&self) -> Result<Contribution, DecodeError> {
        Ok(Contribution {
            key: self.key.to_vec(),
            version: self.version,
            idle_ms: self.idle_ms,
            epoch: self.epoch,
            data: self.data().collect::<Result<_, _>>()?,
        })
    }

    /// The data, decoded one by one.
    pub fn data(&self) -> impl Iterator<Item = Result<Datum, DecodeError>> + 'a {
        let mut rest = self.data;
        std::iter::from_fn(move || {
            while !rest.is_empty() {
                let item = key(&mut rest).and_then(|(tag, wt)| {
                    if tag == DATA {
                        delimited(&mut rest, tag, wt).map(Some)
                    } else {
                        // Another field between two data: skip it.
                        encoding::skip_field(wt, tag, &mut rest, DecodeContext::default())
                            .map(|()| None)
                    }
                });
                match item {
                    Ok(Some(body)) => return Some(datum(body)),
                    Ok(None) => {}
                    Err(e) => {
                        rest = &[];
                        return Some(Err(e));
                    }
                }
            }
            None
        })
    }
}

/// Appends one occurrence of field 3 holding `body`, an encoded `Contribution`.
fn put_contribution(out: &mut Vec<u8>, body: &[u8]) {
    encoding::encode_key(CONTRIBUTIONS, WireType::LengthDelimited, out);
    encoding::encode_varint(body.len() as u64, out);
    out.put_slice(body);
}

/// Reads a length-delimited field's body, checking its wire type and length.
fn delimited<'a>(buf: &mut &'a [u8], tag: u32, wt: WireType) -> Result<&'a [u8], DecodeError> {
    encoding::check_wire_type(WireType::LengthDelimited, wt)?;
    let mut rest = *buf;
    let len = varint(&mut rest, WireType::Varint)?;
    match usize::try_from(len) {
        Ok(len) if len <= rest.len() => {
            let (body, after) = rest.split_at(len);
            *buf = after;
            Ok(body)
        }
        // Past the end: prost says so in its own words.
        _ => encoding::skip_field(wt, tag, buf, DecodeContext::default()).map(|()| &[][..]),
    }
}

/// Decodes a `Datum` (all its fields are varints) without the generic message machinery.
#[inline]
fn datum(mut buf: &[u8]) -> Result<Datum, DecodeError> {
    let mut d = Datum::default();
    while let Some((&k, rest)) = buf.split_first() {
        // Bits 3–5 alone: a one-byte key of varint fields 1–7, every field a `Datum` has.
        let (tag, wt) = if k & !0x38 == 0 && k != 0 {
            buf = rest;
            (u32::from(k >> 3), WireType::Varint)
        } else {
            let (tag, wt) = key(&mut buf)?;
            if !(1..=7).contains(&tag) {
                encoding::skip_field(wt, tag, &mut buf, DecodeContext::default())?;
                continue;
            }
            (tag, wt)
        };
        let v = varint(&mut buf, wt)?;
        // Truncating casts are what protobuf does for 32-bit fields.
        match tag {
            1 => d.r#type = v as i32,
            2 => d.period_ms = v as u32,
            3 => d.value = ((v >> 1) as i64) ^ -((v & 1) as i64),
            4 => d.stamp = v,
            5 => d.age_ms = v as u32,
            6 => d.curr = v,
            _ => d.prev = v,
        }
    }
    Ok(d)
}

/// Reads a varint field, checking its wire type.
#[inline(always)]
fn varint(buf: &mut &[u8], wt: WireType) -> Result<u64, DecodeError> {
    encoding::check_wire_type(WireType::Varint, wt)?;
    match buf.split_first() {
        // Most values of a contribution fit in one byte: read them without a call.
        Some((&b, rest)) if b < 0x80 => {
            *buf = rest;
            Ok(u64::from(b))
        }
        _ => encoding::decode_varint(buf),
    }
}

/// Reads a field's key.
#[inline(always)]
fn key(buf: &mut &[u8]) -> Result<(u32, WireType), DecodeError> {
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
        && b >> 3 != 0
        && let Ok(wt) = WireType::try_from(u64::from(b & 7))
    {
        // A one-byte key: every field sluice defines.
        *buf = rest;
        return Ok((u32::from(b >> 3), wt));
    }
    // Longer keys, and prost's own errors for bad ones.
    encoding::decode_key(buf)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sync::v1::{Contributions, DataType};

    fn origin() -> Origin {
        Origin {
            node: "edge-1".into(),
            incarnation: 7,
        }
    }

    fn datum(ty: DataType, value: i64, curr: u64) -> Datum {
        Datum {
            r#type: ty as i32,
            value,
            curr,
            ..Default::default()
        }
    }

    fn contribution() -> impl Strategy<Value = Contribution> {
        let datum = (
            1i32..19,
            any::<i64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(t, value, period_ms, stamp, curr)| Datum {
                r#type: t,
                period_ms,
                value,
                stamp,
                age_ms: period_ms / 2,
                curr,
                prev: curr / 3,
            });
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(datum, 0..5),
        )
            .prop_map(|(key, version, idle_ms, epoch, data)| Contribution {
                key,
                version,
                idle_ms,
                epoch,
                data,
            })
    }

    fn read(tc: &TableContributions) -> Vec<Contribution> {
        tc.contributions()
            .map(|c| c.and_then(|c| c.to_message()).expect("well-formed"))
            .collect()
    }

    proptest! {
        /// `push` writes exactly the bytes the generated encoder writes, and a message survives
        /// the wire with every contribution as it was.
        #[test]
        fn same_bytes_as_generated_code_and_round_trips(cs in proptest::collection::vec(contribution(), 0..20)) {
            let mut by_hand = TableContributions::new("per_ip", origin());
            let mut generated = TableContributions::new("per_ip", origin());
            for c in &cs {
                by_hand.push(&c.key, c.version, c.idle_ms, c.epoch, &c.data);
                generated.push_message(c);
            }
            prop_assert_eq!(&by_hand, &generated);
            let msg = Contributions { seq: 3, tables: vec![by_hand] };
            let bytes = msg.encode_to_vec();
            prop_assert_eq!(bytes.len(), msg.encoded_len());
            let back = Contributions::decode(bytes.as_slice()).expect("decodes");
            prop_assert_eq!(&back, &msg);
            // The same bytes in two pieces (a buffer that is not contiguous).
            let cut = bytes.len() / 3;
            let chained = Contributions::decode(bytes[..cut].chain(&bytes[cut..])).expect("decodes");
            prop_assert_eq!(&chained, &msg);
            prop_assert_eq!(back.tables[0].len(), cs.len());
            prop_assert_eq!(read(&back.tables[0]), cs.clone());
            // Read once, data onto one vector: the same contributions and data.
            let mut it = back.tables[0].contributions();
            let mut data = Vec::new();
            let mut spans = Vec::new();
            while let Some(c) = it.next_with_data(&mut data) {
                let c = c.expect("well-formed");
                spans.push((c.key.to_vec(), c.version, data.len()));
            }
            let mut from = 0;
            for ((key, version, to), c) in spans.into_iter().zip(&cs) {
                prop_assert_eq!(&key, &c.key);
                prop_assert_eq!(version, c.version);
                prop_assert_eq!(&data[from..to], &c.data[..]);
                from = to;
            }
            prop_assert_eq!(from, data.len());
        }

        /// Any bytes at all: decoding and reading fail cleanly or succeed, never panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(tc) = TableContributions::decode(bytes.as_slice()) {
                for c in tc.contributions().flatten() {
                    for d in c.data() {
                        let _ = d;
                    }
                }
                let mut it = tc.contributions();
                let mut data = Vec::new();
                while let Some(c) = it.next_with_data(&mut data) {
                    let _ = c;
                }
            }
        }
    }

    /// One contribution framed as field 3 of a `TableContributions`, decoded.
    fn one(body: &[u8]) -> TableContributions {
        let mut msg = Vec::new();
        encoding::encode_key(CONTRIBUTIONS, WireType::LengthDelimited, &mut msg);
        encoding::encode_varint(body.len() as u64, &mut msg);
        msg.extend_from_slice(body);
        TableContributions::decode(msg.as_slice()).expect("framing is sound")
    }

    #[test]
    fn a_datum_with_a_long_key_or_a_wrong_wire_type_takes_the_slow_path() {
        // Field 1 (type) with its key as two bytes (a valid, non-minimal varint) holding 3 (gpc0),
        // then field 3 (value) holding 4, zigzag-encoded.
        let long = [0x88, 0x00, 3, (3 << 3) as u8, 8];
        let mut body = Vec::new();
        encoding::bytes::encode(DATA, &long.to_vec(), &mut body);
        let tc = one(&body);
        let mut data = Vec::new();
        let c = tc.contributions().next_with_data(&mut data);
        assert!(matches!(c, Some(Ok(_))));
        assert_eq!(data, vec![datum(DataType::Gpc0, 4, 0)]);
        // Field 1 as length-delimited: refused, and the data read before it are taken back.
        let mut body = Vec::new();
        encoding::message::encode(DATA, &datum(DataType::Gpc0, 4, 0), &mut body);
        encoding::bytes::encode(DATA, &vec![(1 << 3 | 2) as u8, 1, 0], &mut body);
        let tc = one(&body);
        let mut data = vec![datum(DataType::Gpc1, 1, 0)];
        let c = tc.contributions().next_with_data(&mut data);
        assert!(matches!(c, Some(Err(_))));
        assert_eq!(data, vec![datum(DataType::Gpc1, 1, 0)]);
    }

    #[test]
    fn reads_fields_in_any_order_and_skips_unknown_ones() {
        // key after the data, an unknown varint field 9 between two data.
        let mut body = Vec::new();
        encoding::message::encode(DATA, &datum(DataType::Gpc0, 4, 0), &mut body);
        encoding::encode_key(9, WireType::Varint, &mut body);
        encoding::encode_varint(99, &mut body);
        encoding::message::encode(DATA, &datum(DataType::HttpReqRate, 0, 12), &mut body);
        encoding::encode_key(VERSION, WireType::Varint, &mut body);
        encoding::encode_varint(5, &mut body);
        encoding::encode_key(KEY, WireType::LengthDelimited, &mut body);
        encoding::encode_varint(4, &mut body);
        body.extend_from_slice(&[10, 0, 0, 1]);
        let mut msg = Vec::new();
        encoding::encode_key(CONTRIBUTIONS, WireType::LengthDelimited, &mut msg);
        encoding::encode_varint(body.len() as u64, &mut msg);
        msg.extend_from_slice(&body);
        encoding::string::encode(TABLE, &"t".to_string(), &mut msg);
        let tc = TableContributions::decode(msg.as_slice()).expect("decodes");
        assert_eq!(tc.table, "t");
        let got = read(&tc);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, vec![10, 0, 0, 1]);
        assert_eq!(got[0].version, 5);
        assert_eq!(
            got[0].data,
            vec![
                datum(DataType::Gpc0, 4, 0),
                datum(DataType::HttpReqRate, 0, 12)
            ]
        );
    }

    #[test]
    fn a_malformed_contribution_is_an_error_not_a_panic() {
        // Field 3 holding a key whose length runs past the contribution's end.
        let body = [(KEY << 3 | 2) as u8, 50, 1, 2];
        let mut msg = Vec::new();
        encoding::encode_key(CONTRIBUTIONS, WireType::LengthDelimited, &mut msg);
        encoding::encode_varint(body.len() as u64, &mut msg);
        msg.extend_from_slice(&body);
        let tc = TableContributions::decode(msg.as_slice()).expect("framing is sound");
        let items: Vec<_> = tc.contributions().collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
        // A truncated message does not decode at all.
        assert!(TableContributions::decode(&msg[..msg.len() - 1]).is_err());
        // A varint where a contribution should be.
        let mut bad = Vec::new();
        encoding::encode_key(CONTRIBUTIONS, WireType::Varint, &mut bad);
        encoding::encode_varint(1, &mut bad);
        assert!(TableContributions::decode(bad.as_slice()).is_err());
    }
}
