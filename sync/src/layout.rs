//! How a table's schema maps onto the words of a record, so an entry is a flat array of
//! `u64` with no per-field allocation or enum tags. A record is one origin's contribution:
//!
//! ```text
//! word 0   version
//! word 1   touched tick (bits 0..32) | origin id (bits 32..48)
//! word 2   epoch: stamp of the newest reset the origin counts from
//! word 3.. the stored data types in schema order:
//!          counter, gauge  1 word  (i64)
//!          register        2 words (stamp, value)
//!          rate            2 words (start tick | curr << 32, prev) — counts of events;
//!                          3 words (start tick, curr, prev) for byte rates, which overflow u32
//! ```

use crate::clock::{Stamp, Tick};
use crate::origin::OriginId;
use crate::rate::Window;
use crate::schema::{DataType, Kind, TableSchema};

pub(crate) const VERSION: usize = 0;
pub(crate) const META: usize = 1;
pub(crate) const EPOCH: usize = 2;
pub(crate) const HEADER: usize = 3;

/// One stored data type's place in a record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    pub(crate) ty: DataType,
    pub(crate) cell: Cell,
    pub(crate) off: usize,
}

/// The storage shape of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    Counter,
    Gauge,
    Register,
    Rate { period: u32, wide: bool },
}

/// The record layout of one table.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) fields: Vec<Field>,
    /// Field index by `DataType::wire()`, `u8::MAX` when not stored.
    by_type: [u8; 32],
    pub(crate) record_words: usize,
}

impl Layout {
    pub(crate) fn new(schema: &TableSchema) -> Layout {
        let mut fields = Vec::with_capacity(schema.store.len());
        let mut by_type = [u8::MAX; 32];
        let mut off = HEADER;
        for s in &schema.store {
            let cell = match s.ty.kind() {
                Kind::Counter => Cell::Counter,
                Kind::Gauge => Cell::Gauge,
                Kind::Register => Cell::Register,
                Kind::Rate => Cell::Rate {
                    period: s.period_ms,
                    wide: matches!(s.ty, DataType::BytesInRate | DataType::BytesOutRate),
                },
            };
            // At most 18 distinct types (the schema refuses duplicates), so the index fits u8
            // and wire numbers (1..=18) fit the array.
            by_type[s.ty.wire() as usize] = fields.len() as u8;
            fields.push(Field {
                ty: s.ty,
                cell,
                off,
            });
            off += cell.words();
        }
        Layout {
            fields,
            by_type,
            record_words: off,
        }
    }

    /// The field storing `ty`, if the table stores it.
    pub(crate) fn field(&self, ty: DataType) -> Option<&Field> {
        let i = self.by_type[ty.wire() as usize];
        self.fields.get(usize::from(i))
    }
}

impl Cell {
    pub(crate) fn words(self) -> usize {
        match self {
            Cell::Counter | Cell::Gauge => 1,
            Cell::Register => 2,
            Cell::Rate { wide: false, .. } => 2,
            Cell::Rate { wide: true, .. } => 3,
        }
    }
}

// === record accessors ===

pub(crate) fn origin(rec: &[u64]) -> OriginId {
    (rec[META] >> 32) as OriginId
}

pub(crate) fn touched(rec: &[u64]) -> Tick {
    Tick(rec[META] as u32)
}

pub(crate) fn set_meta(rec: &mut [u64], origin: OriginId, touched: Tick) {
    rec[META] = u64::from(origin) << 32 | u64::from(touched.0);
}

pub(crate) fn epoch(rec: &[u64]) -> Stamp {
    rec[EPOCH]
}

pub(crate) fn load_rate(rec: &[u64], off: usize, wide: bool) -> Window {
    if wide {
        Window {
            start: Tick(rec[off] as u32),
            curr: rec[off + 1],
            prev: rec[off + 2],
        }
    } else {
        Window {
            start: Tick(rec[off] as u32),
            curr: rec[off] >> 32,
            prev: rec[off + 1],
        }
    }
}

pub(crate) fn store_rate(rec: &mut [u64], off: usize, wide: bool, w: Window) {
    if wide {
        rec[off] = u64::from(w.start.0);
        rec[off + 1] = w.curr;
        rec[off + 2] = w.prev;
    } else {
        // Event counts saturate at u32::MAX per period, as HAProxy's freq_ctr does.
        let curr = w.curr.min(u64::from(u32::MAX));
        rec[off] = curr << 32 | u64::from(w.start.0);
        rec[off + 1] = w.prev.min(u64::from(u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::KeyType;
    use std::time::Duration;

    #[test]
    fn layout_of_the_reference_schema_is_seven_words() {
        let store = TableSchema::parse_store(&["http_req_rate(10s)", "conn_cur", "gpc0"]).unwrap();
        let s =
            TableSchema::new("t", KeyType::Ip, 1, Duration::from_secs(60), store, true).unwrap();
        let l = Layout::new(&s);
        assert_eq!(l.record_words, 7);
        assert_eq!(l.field(DataType::HttpReqRate).map(|f| f.off), Some(3));
        assert_eq!(l.field(DataType::ConnCur).map(|f| f.off), Some(5));
        assert_eq!(l.field(DataType::Gpc0).map(|f| f.off), Some(6));
        assert!(l.field(DataType::Gpc1).is_none());
    }

    #[test]
    fn narrow_rates_saturate_and_wide_ones_do_not() {
        let mut rec = [0u64; 5];
        let w = Window {
            start: Tick(7),
            curr: u64::from(u32::MAX) + 5,
            prev: 3,
        };
        store_rate(&mut rec, 0, false, w);
        assert_eq!(
            load_rate(&rec, 0, false),
            Window {
                curr: u64::from(u32::MAX),
                ..w
            }
        );
        store_rate(&mut rec, 2, true, w);
        assert_eq!(load_rate(&rec, 2, true), w);
    }
}
