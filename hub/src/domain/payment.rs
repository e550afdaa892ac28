//! Payments, pure: methods, statuses and their moves, and what a
//! back-office action may do to a payment.

use storegate_protocol::Money;

use super::machine::{Machine, states};

states! {
    /// How a payment was made.
    pub enum PaymentMethod: "payment method" {
        /// A payment card, through the provider.
        Card = "card",
        /// Cash at a till.
        Cash = "cash",
        /// A gift card: a balance the hub keeps.
        GiftCard = "gift_card",
    }
}

states! {
    /// Where a payment is. The `*_pending` states are work for the
    /// payment worker (a provider call after the commit that asked for it).
    pub enum PaymentStatus: "payment" {
        /// Money held, not taken.
        Authorized = "authorized",
        /// To be captured by the worker.
        PendingCapture = "pending_capture",
        /// Money taken.
        Captured = "captured",
        /// Refused (at authorisation or, store-and-forward, at capture).
        Declined = "declined",
        /// To be released by the worker.
        VoidPending = "void_pending",
        /// Released.
        Voided = "voided",
        /// A refund row, to be paid back by the worker.
        RefundPending = "refund_pending",
        /// A refund row, paid back.
        Refunded = "refunded",
    }
}

impl Machine for PaymentStatus {
    fn can_become(self, to: Self) -> bool {
        use PaymentStatus::*;
        match self {
            Authorized => matches!(to, PendingCapture | VoidPending),
            PendingCapture => matches!(to, Captured | Declined),
            VoidPending => matches!(to, Voided),
            // Declined: the payment it returns was never captured.
            RefundPending => matches!(to, Refunded | Declined),
            // A gift card a lane took (debited at once) and voided before
            // the sale completed: the balance goes back.
            Captured => matches!(to, Voided),
            Declined | Voided | Refunded => false,
        }
    }
}

impl PaymentStatus {
    /// What a lane asking again for a payment it asked before is told.
    pub fn lane_answer(self) -> LaneAnswer {
        use PaymentStatus::*;
        match self {
            Authorized | PendingCapture | Captured => LaneAnswer::Authorized,
            VoidPending | Voided => LaneAnswer::Voided,
            Declined | RefundPending | Refunded => LaneAnswer::Declined,
        }
    }

    /// The states the worker settles.
    pub const WORK: [PaymentStatus; 3] = [
        PaymentStatus::PendingCapture,
        PaymentStatus::VoidPending,
        PaymentStatus::RefundPending,
    ];

    /// Whether the worker has something to do.
    pub fn is_work(self) -> bool {
        Self::WORK.contains(&self)
    }
}

/// What a lane's repeated authorisation request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneAnswer {
    /// The same approval as the first time.
    Authorized,
    /// Voided meanwhile: declined.
    Voided,
    /// Declined (with the first answer's reason).
    Declined,
}

/// What the payment worker does with a payment it claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Capture through the provider (cards).
    CaptureCard,
    /// Debit the balance now (a gift card taken offline at a store).
    DebitGiftCard,
    /// Mark it captured: the money was taken already (gift cards at
    /// authorisation, cash).
    MarkCaptured,
    /// Release it.
    Void {
        /// Ask the provider to release the authorisation.
        provider: bool,
        /// Put what was taken back on the gift card.
        credit_gift_card: bool,
    },
    /// Pay it back.
    Refund {
        /// Through the provider.
        provider: bool,
        /// Onto the gift card.
        credit_gift_card: bool,
    },
    /// Nothing to do.
    Nothing,
}

/// What the worker does with a payment in `status`.
pub fn settle(status: PaymentStatus, method: PaymentMethod, offline: bool, captured: i64) -> Settle {
    use PaymentMethod::*;
    match status {
        PaymentStatus::PendingCapture => match method {
            Card => Settle::CaptureCard,
            GiftCard if offline => Settle::DebitGiftCard,
            GiftCard | Cash => Settle::MarkCaptured,
        },
        PaymentStatus::VoidPending => Settle::Void {
            provider: method == Card,
            credit_gift_card: method == GiftCard && captured > 0,
        },
        PaymentStatus::RefundPending => Settle::Refund {
            provider: method == Card,
            credit_gift_card: method == GiftCard,
        },
        PaymentStatus::Authorized
        | PaymentStatus::Captured
        | PaymentStatus::Declined
        | PaymentStatus::Voided
        | PaymentStatus::Refunded => Settle::Nothing,
    }
}

/// What a back-office caller may ask of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Capture an authorised payment now.
    Capture,
    /// Release an authorised payment.
    Void,
}

impl Action {
    /// The status the payment moves to (the worker does the rest).
    pub fn target(self) -> PaymentStatus {
        match self {
            Action::Capture => PaymentStatus::PendingCapture,
            Action::Void => PaymentStatus::VoidPending,
        }
    }

    /// Its name in the audit log (`capture_requested`...).
    pub fn audit_name(self) -> &'static str {
        match self {
            Action::Capture => "capture_requested",
            Action::Void => "void_requested",
        }
    }

    /// Why a payment in `status` refuses it.
    pub fn refusal(self, id: &str, status: PaymentStatus) -> String {
        match self {
            Action::Capture => format!("payment {id} is {status}; only authorised payments can be captured"),
            Action::Void => format!(
                "payment {id} is {status}; only authorised payments can be voided (refund captured ones)"
            ),
        }
    }
}

/// Why a refund is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    /// Not a positive amount.
    #[error("amount_minor must be positive")]
    NotPositive,
    /// The payment is not captured, or is itself a refund.
    #[error("payment {id} is {status}; only captured payments can be refunded")]
    State {
        /// The payment.
        id: String,
        /// Its status.
        status: PaymentStatus,
    },
    /// More than what is left.
    #[error("only {left} is left to refund")]
    TooMuch {
        /// Captured minus refunded.
        left: i64,
    },
}

/// Checks a refund of `amount` from a payment: captured, not a refund
/// itself, and at most what is left. Returns the refund row's initial
/// status (cash is paid back at once, the rest by the worker).
pub fn check_refund(
    id: &str,
    status: PaymentStatus,
    method: PaymentMethod,
    is_refund: bool,
    captured: i64,
    refunded: i64,
    amount: i64,
) -> Result<PaymentStatus, RefundRefused> {
    if amount <= 0 {
        return Err(RefundRefused::NotPositive);
    }
    if status != PaymentStatus::Captured || is_refund {
        return Err(RefundRefused::State {
            id: id.to_owned(),
            status,
        });
    }
    let left = captured.saturating_sub(refunded);
    if amount > left {
        return Err(RefundRefused::TooMuch { left });
    }
    Ok(match method {
        PaymentMethod::Cash => PaymentStatus::Refunded,
        PaymentMethod::Card | PaymentMethod::GiftCard => PaymentStatus::RefundPending,
    })
}

states! {
    /// A store-and-forward payment the provider declined after the goods
    /// left: back office collects or writes it off.
    pub enum ExceptionStatus: "payment exception" {
        /// Waiting for back office.
        Open = "open",
        /// The money was collected another way.
        Collected = "collected",
        /// Given up.
        WrittenOff = "written_off",
    }
}

impl Machine for ExceptionStatus {
    fn can_become(self, to: Self) -> bool {
        use ExceptionStatus::*;
        match self {
            Open => matches!(to, Collected | WrittenOff),
            Collected | WrittenOff => false,
        }
    }
}

/// A new payment row.
#[derive(Debug, Clone)]
pub struct NewPayment {
    /// Id (defaults to the key).
    pub id: String,
    /// Idempotency key.
    pub key: String,
    /// Order paid for.
    pub order_id: Option<String>,
    /// Store that took it.
    pub store_id: Option<String>,
    /// Sale paid for.
    pub sale_id: Option<Vec<u8>>,
    /// How it is paid.
    pub method: PaymentMethod,
    /// Initial status.
    pub status: PaymentStatus,
    /// Amount.
    pub amount: Money,
    /// Captured at once (cash, gift cards).
    pub captured: i64,
    /// Card token.
    pub card_token: Option<String>,
    /// Card last four.
    pub card_last4: Option<String>,
    /// Provider reference.
    pub provider_ref: Option<String>,
    /// Store-and-forward.
    pub offline: bool,
    /// Refunded payment.
    pub parent_id: Option<String>,
    /// Notes.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_moves() {
        use PaymentStatus::*;
        for s in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(s.as_str()), Ok(*s));
        }
        assert_eq!(PaymentStatus::sources(VoidPending), vec![Authorized]);
        assert_eq!(PaymentStatus::sources(Captured), vec![PendingCapture]);
        assert!(
            !Captured.can_become(VoidPending),
            "captured money is refunded, not voided"
        );
        assert_eq!(PaymentStatus::sources(Voided), vec![Captured, VoidPending]);
        assert!(!Voided.can_become(PendingCapture));
        assert!(
            PaymentStatus::ALL
                .iter()
                .filter(|s| s.is_work())
                .all(|s| !s.is_final())
        );
        assert!([Declined, Voided, Refunded].iter().all(|s| s.is_final()));
        assert_eq!(Captured.lane_answer(), LaneAnswer::Authorized);
        assert_eq!(VoidPending.lane_answer(), LaneAnswer::Voided);
        assert_eq!(Refunded.lane_answer(), LaneAnswer::Declined);
    }

    #[test]
    fn the_worker_settles_each_pending_state_its_way() {
        use PaymentMethod::*;
        use PaymentStatus::*;
        assert_eq!(settle(PendingCapture, Card, false, 0), Settle::CaptureCard);
        assert_eq!(settle(PendingCapture, Card, true, 0), Settle::CaptureCard);
        assert_eq!(settle(PendingCapture, GiftCard, true, 0), Settle::DebitGiftCard);
        assert_eq!(settle(PendingCapture, GiftCard, false, 500), Settle::MarkCaptured);
        assert_eq!(settle(PendingCapture, Cash, false, 0), Settle::MarkCaptured);
        assert_eq!(
            settle(VoidPending, GiftCard, false, 500),
            Settle::Void {
                provider: false,
                credit_gift_card: true
            }
        );
        assert_eq!(
            settle(VoidPending, Card, false, 0),
            Settle::Void {
                provider: true,
                credit_gift_card: false
            }
        );
        assert_eq!(
            settle(RefundPending, GiftCard, false, 0),
            Settle::Refund {
                provider: false,
                credit_gift_card: true
            }
        );
        for s in PaymentStatus::ALL.iter().filter(|s| !s.is_work()) {
            assert_eq!(settle(*s, Card, false, 0), Settle::Nothing, "{s}");
        }
    }

    #[test]
    fn back_office_actions_need_an_authorised_payment() {
        for a in [Action::Capture, Action::Void] {
            assert_eq!(
                PaymentStatus::sources(a.target()),
                vec![PaymentStatus::Authorized]
            );
        }
        assert!(
            Action::Void
                .refusal("p1", PaymentStatus::Captured)
                .contains("refund captured ones")
        );
    }

    #[test]
    fn refunds_are_bounded_by_what_was_captured() {
        use PaymentMethod::*;
        use PaymentStatus::*;
        assert_eq!(
            check_refund("p", Captured, Card, false, 1000, 0, 1000),
            Ok(RefundPending)
        );
        assert_eq!(
            check_refund("p", Captured, Cash, false, 1000, 400, 600),
            Ok(Refunded)
        );
        assert_eq!(
            check_refund("p", Captured, GiftCard, false, 1000, 400, 601),
            Err(RefundRefused::TooMuch { left: 600 })
        );
        assert_eq!(
            check_refund("p", Captured, Card, false, 1000, 0, 0),
            Err(RefundRefused::NotPositive)
        );
        assert!(matches!(
            check_refund("p", Authorized, Card, false, 0, 0, 1),
            Err(RefundRefused::State { .. })
        ));
        assert!(
            check_refund("p", Captured, Card, true, 1000, 0, 1).is_err(),
            "a refund is not refunded"
        );
        assert_eq!(
            check_refund("p", Captured, Card, false, 10, i64::MIN, 1),
            Ok(RefundPending),
            "no overflow on garbage"
        );
    }

    #[test]
    fn exceptions_close_once() {
        assert!(ExceptionStatus::Open.can_become(ExceptionStatus::Collected));
        assert!(ExceptionStatus::Collected.is_final());
        assert_eq!(
            ExceptionStatus::parse("written_off"),
            Ok(ExceptionStatus::WrittenOff)
        );
    }
}
