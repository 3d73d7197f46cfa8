//! Output for people and for scripts: aligned text tables and single JSON documents on stdout.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `rows` as left-aligned columns separated by two spaces, without trailing blanks.
/// Rows may have different lengths; missing cells are blank.
pub(crate) fn write_table<R: AsRef<[String]>>(out: &mut impl Write, rows: &[R]) -> io::Result<()> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.as_ref().iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Writes `value` as one pretty-printed JSON document followed by a newline.
pub(crate) fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// A duration for people, to the precision that matters at its size: `850ms`, `12.3s`,
/// `5m3s`, `2h7m`, `3d4h`.
pub(crate) fn fmt_ms(ms: u64) -> String {
    const S: u64 = 1000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    match ms {
        ms if ms < S => format!("{ms}ms"),
        ms if ms < M => format!("{}.{}s", ms / S, ms % S / 100),
        ms if ms < H => format!("{}m{}s", ms / M, ms % M / S),
        ms if ms < D => format!("{}h{}m", ms / H, ms % H / M),
        ms => format!("{}d{}h", ms / D, ms % D / H),
    }
}

/// A configured period exactly, in its largest whole unit: `10s`, `1m`, `1500ms`.
pub(crate) fn fmt_period(ms: u64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= len && ms.is_multiple_of(len) {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &[
                ["a".into(), "bb".into(), "c".into()],
                ["dddd".into(), "e".into(), String::new()],
            ],
        )
        .expect("write to a Vec");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "a     bb  c\ndddd  e\n"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_ms(0), "0ms");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt_ms(303_000), "5m3s");
        assert_eq!(fmt_ms(2 * 3_600_000 + 7 * 60_000 + 5), "2h7m");
        assert_eq!(fmt_ms(3 * 86_400_000 + 4 * 3_600_000), "3d4h");
        assert_eq!(fmt_period(10_000), "10s");
        assert_eq!(fmt_period(60_000), "1m");
        assert_eq!(fmt_period(1_500), "1500ms");
        assert_eq!(fmt_period(86_400_000), "1d");
    }
}
