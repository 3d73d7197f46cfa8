//! Output for people and for scripts: aligned text tables and single JSON documents on stdout.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `rows` as left-aligned columns separated by two spaces, without trailing blanks.
pub(crate) fn write_table<const N: usize>(
    out: &mut impl Write,
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
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
}
