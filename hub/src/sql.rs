//! Small SQL text helpers that emit `$N` placeholders, valid on both
//! PostgreSQL and SQLite (sqlx's `QueryBuilder` emits `?` under `Any`,
//! which PostgreSQL refuses).

use std::fmt::Write as _;

/// `prefix VALUES ($1, $2), ($3, $4) suffix` for `rows` rows of `cols`
/// columns, placeholders starting at `$1`.
pub fn values(prefix: &str, rows: usize, cols: usize, suffix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + suffix.len() + rows * cols * 5 + 16);
    s.push_str(prefix);
    s.push_str(" VALUES ");
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "${n}");
            n += 1;
        }
        s.push(')');
    }
    if !suffix.is_empty() {
        s.push(' ');
        s.push_str(suffix);
    }
    s
}

/// `($from, $from+1, ... )` with `count` placeholders, for `IN` lists.
pub fn list(from: usize, count: usize) -> String {
    let mut s = String::from("(");
    for i in 0..count {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "${}", from + i);
    }
    s.push(')');
    s
}

/// Rows per multi-row statement: under SQLite's 32766 and PostgreSQL's
/// 65535 bound parameters for tables of up to 60 columns.
pub const CHUNK: usize = 500;

/// Text safe for a PostgreSQL TEXT column (which refuses NUL bytes).
pub fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_from_one() {
        assert_eq!(
            values("INSERT INTO t (a, b)", 2, 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(list(3, 3), "($3, $4, $5)");
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
