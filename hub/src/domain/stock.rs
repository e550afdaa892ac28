//! Stock rules, pure: what kinds of movement there are, and what a
//! transfer or a count books, given what the database says.

use std::collections::HashMap;

use storegate_protocol::Sku;

/// Why stock moved; each ledger row has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MovementKind {
    /// A store sold it.
    Sale,
    /// A sale was voided after completion.
    Void,
    /// A customer returned it.
    Return,
    /// A supplier delivered it.
    Receipt,
    /// Damage, theft, found goods, corrections.
    Adjustment,
    /// A count set the level to what is on the shelf.
    Count,
    /// It left for another location.
    TransferOut,
    /// It arrived from another location.
    TransferIn,
    /// An online order's goods left.
    Fulfilment,
    /// Anything else a store reported.
    Other,
    /// Reserved for an online order (moves `reserved` only).
    Reservation,
    /// A reservation released (moves `reserved` only).
    Release,
}

impl MovementKind {
    /// Every kind.
    pub const ALL: [MovementKind; 12] = [
        MovementKind::Sale,
        MovementKind::Void,
        MovementKind::Return,
        MovementKind::Receipt,
        MovementKind::Adjustment,
        MovementKind::Count,
        MovementKind::TransferOut,
        MovementKind::TransferIn,
        MovementKind::Fulfilment,
        MovementKind::Other,
        MovementKind::Reservation,
        MovementKind::Release,
    ];

    /// Its name in the ledger and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Sale => "sale",
            MovementKind::Void => "void",
            MovementKind::Return => "return",
            MovementKind::Receipt => "receipt",
            MovementKind::Adjustment => "adjustment",
            MovementKind::Count => "count",
            MovementKind::TransferOut => "transfer_out",
            MovementKind::TransferIn => "transfer_in",
            MovementKind::Fulfilment => "fulfilment",
            MovementKind::Other => "other",
            MovementKind::Reservation => "reservation",
            MovementKind::Release => "release",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<MovementKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether it moves `reserved` (not `on_hand`).
    pub fn moves_reserved(self) -> bool {
        matches!(self, MovementKind::Reservation | MovementKind::Release)
    }
}

/// A transfer asks for more than is available at its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{available} of {sku} available, not {wanted}")]
pub struct Shortage {
    /// The SKU.
    pub sku: Sku,
    /// Available at the source.
    pub available: i64,
    /// Asked for (all its lines together).
    pub wanted: i64,
}

/// Checks merged transfer lines against what is available at the source
/// (`available`, by SKU; missing means 0).
pub fn check_transfer(lines: &[(Sku, i64)], available: &HashMap<Sku, i64>) -> Result<(), Shortage> {
    for (sku, qty) in lines {
        let have = available.get(sku).copied().unwrap_or(0);
        if have < *qty {
            return Err(Shortage {
                sku: sku.clone(),
                available: have,
                wanted: *qty,
            });
        }
    }
    Ok(())
}

/// The deltas a count books: what was counted minus what is on hand, per
/// SKU (merged lines; `on_hand` missing means 0). `None` if a difference
/// overflows.
pub fn count_deltas(counted: &[(Sku, i64)], on_hand: &HashMap<Sku, i64>) -> Option<Vec<(Sku, i64)>> {
    counted
        .iter()
        .map(|(sku, n)| {
            let level = on_hand.get(sku).copied().unwrap_or(0);
            n.checked_sub(level).map(|d| (sku.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::lines::{QtyRule, merge};

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in MovementKind::ALL {
            assert_eq!(MovementKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(MovementKind::parse("gift"), None);
        assert!(MovementKind::Reservation.moves_reserved());
        assert!(!MovementKind::Sale.moves_reserved());
    }

    #[test]
    fn a_transfer_of_two_lines_of_one_sku_is_checked_as_their_sum() {
        let lines = merge([("A", 5), ("A", 5)], QtyRule::Positive).unwrap();
        let available = HashMap::from([(sku("A"), 6)]);
        assert_eq!(
            check_transfer(&lines, &available),
            Err(Shortage {
                sku: sku("A"),
                available: 6,
                wanted: 10
            })
        );
        let lines = merge([("A", 3), ("A", 3)], QtyRule::Positive).unwrap();
        assert_eq!(check_transfer(&lines, &available), Ok(()));
        assert!(
            check_transfer(&lines, &HashMap::new()).is_err(),
            "nothing there is 0"
        );
    }

    #[test]
    fn a_count_of_a_sku_on_two_lines_corrects_once_to_their_sum() {
        let counted = merge([("A", 4), ("B", 0), ("A", 3)], QtyRule::NonNegative).unwrap();
        let on_hand = HashMap::from([(sku("A"), 10), (sku("B"), 2)]);
        assert_eq!(
            count_deltas(&counted, &on_hand),
            Some(vec![(sku("A"), -3), (sku("B"), -2)])
        );
        assert_eq!(
            count_deltas(&[(sku("A"), 1)], &HashMap::from([(sku("A"), i64::MIN)])),
            None
        );
    }
}
