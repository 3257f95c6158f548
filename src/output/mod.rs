//! Output meant for people (aligned tables) and for scripts (`--output json`): the same facts.
//! One file per command's output; the helpers here are shared.

use chrono::{DateTime, Utc};

pub mod inventory;
pub mod pass;
pub mod plan;
pub mod revoke;

/// `--output table|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// A table with a header row; the last column is never padded (it holds sentences).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cols {
                l.push_str(cell);
            } else {
                l.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A time for a table cell; `-` for none.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(crate::time::rfc3339).unwrap_or_else(|| "-".into())
}

/// `--output json`: pretty, one value, a final newline.
pub fn json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "[]".into());
    s.push('\n');
    s
}

/// `93784` -> `1d2h`; coarse on purpose, the JSON has the exact seconds.
pub fn age(seconds: Option<i64>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    let neg = s < 0;
    let s = s.unsigned_abs();
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    let text = if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    };
    if neg { format!("-{text}") } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_leaves_the_last_column_free() {
        let t = table(
            &["A", "BB", "C"],
            &[vec!["xxx".into(), "y".into(), "a long sentence".into()]],
        );
        assert_eq!(t, "A    BB  C\nxxx  y   a long sentence\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(Some(93784)), "1d2h");
        assert_eq!(age(Some(3700)), "1h1m");
        assert_eq!(age(Some(59)), "59s");
        assert_eq!(age(None), "-");
    }
}
