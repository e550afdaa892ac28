//! Shipments, pure: their statuses and moves, and when the goods leave.

use super::machine::{Machine, states};

states! {
    /// Where a shipment is.
    pub enum ShipmentStatus: "shipment" {
        /// Label printed; the goods are still here.
        LabelCreated = "label_created",
        /// With the carrier.
        InTransit = "in_transit",
        /// Delivered.
        Delivered = "delivered",
        /// The carrier reports a problem (before or after pick-up).
        Exception = "exception",
        /// Withdrawn with its order, before it left.
        Cancelled = "cancelled",
    }
}

impl Machine for ShipmentStatus {
    fn can_become(self, to: Self) -> bool {
        use ShipmentStatus::*;
        match self {
            LabelCreated => matches!(to, InTransit | Exception | Cancelled),
            InTransit => matches!(to, InTransit | Delivered | Exception),
            Exception => matches!(to, InTransit | Delivered),
            Delivered | Cancelled => false,
        }
    }
}

impl ShipmentStatus {
    /// Whether being here means the goods have left the location.
    pub fn has_left(self) -> bool {
        matches!(self, ShipmentStatus::InTransit | ShipmentStatus::Delivered)
    }

    /// Whether a shipment whose earlier statuses were `before` makes its
    /// goods leave by moving to `self`: the first status that means they
    /// left (so `label_created` → `exception` → `in_transit` books them
    /// once, on the `in_transit`).
    pub fn departs(self, before: &[ShipmentStatus]) -> bool {
        self.has_left() && !before.iter().any(|s| s.has_left())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goods_leave_once_on_the_first_departure() {
        use ShipmentStatus::*;
        assert!(InTransit.departs(&[LabelCreated]));
        assert!(
            InTransit.departs(&[LabelCreated, Exception]),
            "a problem before pick-up does not skip the departure"
        );
        assert!(Delivered.departs(&[LabelCreated, Exception]));
        assert!(!InTransit.departs(&[LabelCreated, InTransit]));
        assert!(!Delivered.departs(&[LabelCreated, InTransit, Exception]));
        assert!(!Exception.departs(&[LabelCreated]));
    }

    #[test]
    fn shipment_moves() {
        use ShipmentStatus::*;
        assert!(LabelCreated.can_become(InTransit));
        assert!(!Delivered.can_become(InTransit));
        assert!(
            !InTransit.can_become(Cancelled),
            "goods that left are not cancelled"
        );
        assert_eq!(ShipmentStatus::sources(Cancelled), vec![LabelCreated]);
        assert_eq!(ShipmentStatus::parse("in_transit"), Ok(InTransit));
    }
}
