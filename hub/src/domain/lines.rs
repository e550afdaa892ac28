//! Lines of goods as callers send them: validated, and lines of the same
//! SKU merged (quantities summed, checked), so that nothing downstream can
//! check two lines of one SKU against the same stock read.

use std::collections::HashMap;

use storegate_protocol::Sku;

/// Most lines in one operation.
pub const MAX_LINES: usize = 1000;

/// Why lines were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// No line at all, or too many.
    #[error("1 to {MAX_LINES} lines, not {0}")]
    Count(usize),
    /// A SKU that is not one.
    #[error("sku {sku:?}: {message}")]
    BadSku {
        /// What was sent.
        sku: String,
        /// Why it is not a SKU.
        message: String,
    },
    /// A quantity outside what the operation allows.
    #[error("sku {sku}: quantity {qty} {rule}")]
    Quantity {
        /// The SKU.
        sku: Sku,
        /// The quantity.
        qty: i64,
        /// What it must be.
        rule: &'static str,
    },
    /// The lines of one SKU add up past what can be represented.
    #[error("sku {0}: the lines' quantities overflow")]
    Overflow(Sku),
}

/// What quantities an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QtyRule {
    /// Greater than zero (receipts, transfers, order lines).
    Positive,
    /// Zero or more (counts).
    NonNegative,
    /// Any (adjustments: a zero line books nothing).
    Any,
}

impl QtyRule {
    fn allows(self, q: i64) -> bool {
        match self {
            QtyRule::Positive => q > 0,
            QtyRule::NonNegative => q >= 0,
            QtyRule::Any => true,
        }
    }

    fn text(self) -> &'static str {
        match self {
            QtyRule::Positive => "must be positive",
            QtyRule::NonNegative => "cannot be negative",
            QtyRule::Any => "",
        }
    }
}

/// Parses and merges `(sku, qty)` lines: each SKU once, in the order it
/// first appears, with the sum of its quantities. Every quantity, and every
/// sum, must follow `rule`.
pub fn merge<'a>(
    lines: impl IntoIterator<Item = (&'a str, i64)>,
    rule: QtyRule,
) -> Result<Vec<(Sku, i64)>, LineError> {
    let mut out: Vec<(Sku, i64)> = Vec::new();
    let mut at: HashMap<Sku, usize> = HashMap::new();
    let mut seen = 0usize;
    for (sku, qty) in lines {
        seen += 1;
        if seen > MAX_LINES {
            return Err(LineError::Count(seen));
        }
        let sku = Sku::parse(sku).map_err(|e| LineError::BadSku {
            sku: sku.to_owned(),
            message: e.to_string(),
        })?;
        if !rule.allows(qty) {
            return Err(LineError::Quantity {
                sku,
                qty,
                rule: rule.text(),
            });
        }
        match at.get(&sku) {
            Some(&i) => {
                let sum = out[i]
                    .1
                    .checked_add(qty)
                    .ok_or_else(|| LineError::Overflow(sku.clone()))?;
                out[i].1 = sum;
            }
            None => {
                at.insert(sku.clone(), out.len());
                out.push((sku, qty));
            }
        }
    }
    if out.is_empty() {
        return Err(LineError::Count(0));
    }
    for (sku, qty) in &out {
        if !rule.allows(*qty) {
            return Err(LineError::Quantity {
                sku: sku.clone(),
                qty: *qty,
                rule: rule.text(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    #[test]
    fn lines_of_one_sku_are_summed_in_first_seen_order() {
        let merged = merge([("B", 5), ("A", 1), ("B", 5)], QtyRule::Positive).unwrap();
        assert_eq!(merged, vec![(sku("B"), 10), (sku("A"), 1)]);
    }

    #[test]
    fn quantities_follow_the_rule_line_by_line_and_summed() {
        assert!(matches!(
            merge([("A", 0)], QtyRule::Positive),
            Err(LineError::Quantity { .. })
        ));
        assert!(merge([("A", 0)], QtyRule::NonNegative).is_ok());
        assert_eq!(
            merge([("A", 3), ("A", -3)], QtyRule::Any),
            Ok(vec![(sku("A"), 0)]),
            "two adjustments cancelling out book nothing"
        );
        assert_eq!(
            merge([("A", i64::MAX), ("A", 1)], QtyRule::Positive),
            Err(LineError::Overflow(sku("A")))
        );
    }

    #[test]
    fn empty_too_many_and_bad_skus_are_refused() {
        assert_eq!(merge([], QtyRule::Positive), Err(LineError::Count(0)));
        let many: Vec<(String, i64)> = (0..=MAX_LINES).map(|i| (format!("S{i}"), 1)).collect();
        assert!(matches!(
            merge(many.iter().map(|(s, q)| (s.as_str(), *q)), QtyRule::Positive),
            Err(LineError::Count(_))
        ));
        assert!(matches!(
            merge([("bad sku", 1)], QtyRule::Positive),
            Err(LineError::BadSku { .. })
        ));
    }
}
