//! Comparing secrets (API tokens, shared keys) without leaking, through
//! timing, how much of a guess was right.

/// Whether `a` and `b` are the same bytes. Every byte is compared whatever
/// the earlier ones were; only the length can show in the timing, and a
/// secret's length is no secret worth keeping.
#[must_use]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(same(b"", b""));
        assert!(same(b"token-123", b"token-123"));
        assert!(!same(b"token-123", b"token-124"));
        assert!(!same(b"Token-123", b"token-123"));
        assert!(!same(b"token-12", b"token-123"));
        assert!(!same(b"", b"x"));
    }
}
