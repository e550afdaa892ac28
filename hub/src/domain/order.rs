//! Orders and their saga, pure: what an order request must be, the
//! statuses an order goes through, the saga's steps and what each
//! provider answer makes it do, and what a finished saga tells the caller.

use serde::{Deserialize, Serialize};
use storegate_protocol::Sku;
use storegate_protocol::event::{CardToken, Last4};
use utoipa::ToSchema;

use super::lines::{self, QtyRule};
use super::machine::{Machine, states};
use super::payment::PaymentMethod;

/// A line of an order request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LineInput {
    /// Product.
    pub sku: String,
    /// Items, or grams for weighed goods.
    pub qty: i64,
}

/// The card (or gift card) that pays.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentInput {
    /// `card` or `gift_card` (online orders take no cash).
    pub method: PaymentMethod,
    /// Token from the payment page (never a card number).
    pub token: String,
    /// Last four digits.
    pub last4: String,
}

/// An online order request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderInput {
    /// What to buy.
    pub lines: Vec<LineInput>,
    /// How it reaches the customer.
    pub fulfilment: Fulfilment,
    /// Store to collect from (`collect`).
    pub collect_at: Option<String>,
    /// Region to ship to (`ship`).
    pub ship_region: Option<String>,
    /// May lines come from different locations (several shipments)?
    #[serde(default)]
    pub allow_split: bool,
    /// How it is paid.
    pub payment: PaymentInput,
    /// The customer (operators placing an order for one; clients: themselves).
    pub customer_id: Option<String>,
}

/// Most lines in an online order.
pub const MAX_ORDER_LINES: usize = 200;
/// Most items (or grams) of one SKU in an online order.
pub const MAX_LINE_QTY: i64 = 1_000_000;

pub use super::Invalid;

/// Where an order goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Collected at this store.
    Collect(String),
    /// Shipped to this region.
    Ship(String),
}

/// A checked order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    /// One line per SKU, quantities summed.
    pub lines: Vec<(Sku, i64)>,
    /// Where it goes.
    pub destination: Destination,
    /// Card or gift card.
    pub method: PaymentMethod,
    /// The payment token.
    pub token: CardToken,
    /// The card's last four digits.
    pub last4: Last4,
}

impl Valid {
    /// The store it is collected at.
    pub fn collect_at(&self) -> Option<&str> {
        match &self.destination {
            Destination::Collect(s) => Some(s),
            Destination::Ship(_) => None,
        }
    }

    /// The region it ships to.
    pub fn region(&self) -> Option<&str> {
        match &self.destination {
            Destination::Ship(r) => Some(r),
            Destination::Collect(_) => None,
        }
    }

    /// How it reaches the customer.
    pub fn fulfilment(&self) -> Fulfilment {
        match self.destination {
            Destination::Collect(_) => Fulfilment::Collect,
            Destination::Ship(_) => Fulfilment::Ship,
        }
    }
}

/// Checks an order request: 1 to 200 lines, lines of one SKU merged,
/// quantities in range, a destination that fits the fulfilment, a card or
/// gift card token (never a card number).
pub fn validate(input: &OrderInput) -> Result<Valid, Invalid> {
    let bad = |m: String| Err(Invalid(m));
    if input.lines.is_empty() || input.lines.len() > MAX_ORDER_LINES {
        return bad(format!("an order has 1 to {MAX_ORDER_LINES} lines"));
    }
    let merged = lines::merge(
        input.lines.iter().map(|l| (l.sku.as_str(), l.qty)),
        QtyRule::Positive,
    )
    .map_err(|e| Invalid(e.to_string()))?;
    if let Some((sku, _)) = merged.iter().find(|(_, q)| *q > MAX_LINE_QTY) {
        return bad(format!("{sku}: qty must be 1 to {MAX_LINE_QTY}"));
    }
    let non_empty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let destination = match input.fulfilment {
        Fulfilment::Collect => match non_empty(&input.collect_at) {
            Some(s) => Destination::Collect(s),
            None => return bad("fulfilment `collect` needs collect_at (a store id)".into()),
        },
        Fulfilment::Ship => match non_empty(&input.ship_region) {
            Some(r) => Destination::Ship(r),
            None => return bad("fulfilment `ship` needs ship_region".into()),
        },
    };
    let method = match input.payment.method {
        m @ (PaymentMethod::Card | PaymentMethod::GiftCard) => m,
        PaymentMethod::Cash => {
            return bad("payment method \"cash\": online orders take `card` or `gift_card`".into());
        }
    };
    let token =
        CardToken::parse(input.payment.token.as_str()).map_err(|e| Invalid(format!("payment.token: {e}")))?;
    let last4 = Last4::parse(&input.payment.last4).map_err(|e| Invalid(format!("payment.last4: {e}")))?;
    Ok(Valid {
        lines: merged,
        destination,
        method,
        token,
        last4,
    })
}

states! {
    /// Where an order is. Online orders: `created` (history only) →
    /// `reserved` → `confirmed` → `picking` (click and collect) or
    /// `awaiting_shipment` → `shipped` → `completed`; `failed` or
    /// `cancelled` on the way. Store sales arrive `completed` and may be
    /// `voided` at the till.
    pub enum OrderStatus: "order" {
        /// Written (the first history entry only).
        Created = "created",
        /// Stock reserved; the payment is being authorised.
        Reserved = "reserved",
        /// Paid (authorised); fulfilment starts at once.
        Confirmed = "confirmed",
        /// A store picks it for collection.
        Picking = "picking",
        /// Picked for, or waiting on, its shipments.
        AwaitingShipment = "awaiting_shipment",
        /// Every shipment has left.
        Shipped = "shipped",
        /// Collected or delivered (store sales: sold).
        Completed = "completed",
        /// The payment was declined or never authorised.
        Failed = "failed",
        /// Cancelled before its goods left.
        Cancelled = "cancelled",
        /// A store sale voided at the till.
        Voided = "voided",
    }
}

impl Machine for OrderStatus {
    fn can_become(self, to: Self) -> bool {
        use OrderStatus::*;
        match self {
            Created => matches!(to, Reserved),
            Reserved => matches!(to, Confirmed | Failed | Cancelled),
            Confirmed => matches!(to, Picking | AwaitingShipment | Cancelled),
            Picking => matches!(to, Completed | Cancelled),
            AwaitingShipment => matches!(to, Shipped | Completed | Cancelled),
            Shipped => matches!(to, Completed),
            Completed => matches!(to, Voided),
            Failed | Cancelled | Voided => false,
        }
    }
}

impl OrderStatus {
    /// Whether an operator's cancel is carried out at once (the goods have
    /// not left and no saga step is running). `reserved` orders are
    /// cancelled through their saga's compensation instead.
    pub fn cancels_at_once(self) -> bool {
        matches!(
            self,
            OrderStatus::Confirmed | OrderStatus::Picking | OrderStatus::AwaitingShipment
        )
    }

    /// What a placed order's status tells its caller.
    pub fn placed(self) -> Placed {
        use OrderStatus::*;
        match self {
            Created | Reserved => Placed::Pending,
            Confirmed | Picking | AwaitingShipment | Shipped | Completed | Voided => Placed::Confirmed,
            Failed => Placed::Failed,
            Cancelled => Placed::Cancelled,
        }
    }
}

/// What became of a new order, by its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// The saga goes on (the provider did not answer yet).
    Pending,
    /// Paid and being fulfilled (or further along).
    Confirmed,
    /// The payment was declined; nothing is reserved.
    Failed,
    /// Cancelled while it was being placed.
    Cancelled,
}

states! {
    /// How an online order reaches its customer.
    pub enum Fulfilment: "fulfilment" {
        /// Shipped from a store or warehouse.
        Ship = "ship",
        /// Picked at a store and collected there.
        Collect = "collect",
    }
}

impl Fulfilment {
    /// The order status once paid.
    pub fn after_confirmed(self) -> OrderStatus {
        match self {
            Fulfilment::Ship => OrderStatus::AwaitingShipment,
            Fulfilment::Collect => OrderStatus::Picking,
        }
    }
}

states! {
    /// The step an order's saga is at (`sagas.step`).
    pub enum SagaStep: "saga" {
        /// Authorising the payment (or retrying it).
        Authorize = "authorize",
        /// Cancelled while authorising: compensate.
        Compensate = "compensate",
        /// Confirmed and fulfilment started.
        Done = "done",
        /// Compensated: nothing held.
        Failed = "failed",
    }
}

impl Machine for SagaStep {
    fn can_become(self, to: Self) -> bool {
        use SagaStep::*;
        match self {
            Authorize => matches!(to, Compensate | Done | Failed),
            Compensate => matches!(to, Failed),
            Done | Failed => false,
        }
    }
}

/// What a saga does after an authorisation that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaMove {
    /// Release everything; the order fails.
    Compensate {
        /// Whether an authorisation the provider may hold is voided.
        void: bool,
    },
    /// Try the provider again later, after this many seconds.
    Retry {
        /// Seconds until the next attempt.
        after_secs: i64,
    },
}

/// How an authorisation did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAuthorized {
    /// The provider refused: it holds nothing.
    Declined,
    /// No answer, or an error: it may or may not hold money.
    NoAnswer,
}

/// Most provider failures before a saga gives up.
pub const MAX_AUTH_ATTEMPTS: i64 = 3;

/// What an `authorize` step does after attempt `attempts + 1` did not
/// succeed: a decline compensates at once; a provider that does not
/// answer is retried (1 s, 2 s...) until the third failure, which
/// compensates and voids what the provider may hold.
pub fn after_failure(how: NotAuthorized, attempts: i64) -> SagaMove {
    match how {
        NotAuthorized::Declined => SagaMove::Compensate { void: false },
        NotAuthorized::NoAnswer if attempts.saturating_add(1) >= MAX_AUTH_ATTEMPTS => {
            SagaMove::Compensate { void: true }
        }
        NotAuthorized::NoAnswer => SagaMove::Retry {
            after_secs: attempts.saturating_add(1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> OrderInput {
        OrderInput {
            lines: vec![
                LineInput {
                    sku: "A".into(),
                    qty: 2,
                },
                LineInput {
                    sku: "A".into(),
                    qty: 1,
                },
            ],
            fulfilment: Fulfilment::Ship,
            collect_at: None,
            ship_region: Some("north".into()),
            allow_split: false,
            payment: PaymentInput {
                method: PaymentMethod::Card,
                token: "tok_visa".into(),
                last4: "4242".into(),
            },
            customer_id: None,
        }
    }

    #[test]
    fn order_input_is_checked() {
        let mut input = input();
        let v = validate(&input).unwrap();
        assert_eq!(
            v.lines,
            vec![(Sku::parse("A").unwrap(), 3)],
            "lines of one SKU merge"
        );
        assert_eq!(v.destination, Destination::Ship("north".into()));
        assert_eq!(
            (v.region(), v.collect_at(), v.fulfilment()),
            (Some("north"), None, Fulfilment::Ship)
        );
        input.payment.token = "4242424242424242".into();
        assert!(validate(&input).unwrap_err().to_string().contains("card number"));
        input.payment.token = "tok".into();
        input.fulfilment = Fulfilment::Collect;
        assert!(validate(&input).unwrap_err().to_string().contains("collect_at"));
        input.collect_at = Some("s1".into());
        assert_eq!(validate(&input).unwrap().collect_at(), Some("s1"));
        input.payment.method = PaymentMethod::Cash;
        assert!(
            validate(&input)
                .unwrap_err()
                .to_string()
                .contains("online orders take")
        );
        input.payment.method = PaymentMethod::GiftCard;
        input.lines[0].qty = MAX_LINE_QTY;
        assert!(
            validate(&input).unwrap_err().to_string().contains("qty must be"),
            "the merged sum is checked"
        );
        input.lines.clear();
        assert!(validate(&input).is_err());
        assert!(serde_json::from_str::<Fulfilment>("\"teleport\"").is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in SagaStep::ALL {
            assert_eq!(SagaStep::parse(s.as_str()), Ok(*s));
        }
        assert!(OrderStatus::parse("paid").is_err());
    }

    #[test]
    fn an_online_order_goes_forward_only() {
        use OrderStatus::*;
        let ship = [Created, Reserved, Confirmed, AwaitingShipment, Shipped, Completed];
        let collect = [Created, Reserved, Confirmed, Picking, Completed];
        for path in [&ship[..], &collect[..]] {
            for w in path.windows(2) {
                assert!(w[0].can_become(w[1]), "{} -> {}", w[0], w[1]);
                assert!(!w[1].can_become(w[0]), "{} -> {} back", w[1], w[0]);
            }
        }
        assert!(
            Shipped.check(Cancelled).is_err(),
            "goods that left are refunded, not cancelled"
        );
        assert_eq!(
            Completed.check(Reserved).unwrap_err().to_string(),
            "order cannot go from completed to reserved"
        );
        for s in [Failed, Cancelled, Voided] {
            assert!(s.is_final());
        }
        assert_eq!(
            OrderStatus::sources(Cancelled),
            vec![Reserved, Confirmed, Picking, AwaitingShipment]
        );
        assert!(
            OrderStatus::ALL
                .iter()
                .all(|s| !s.cancels_at_once() || s.can_become(Cancelled))
        );
    }

    #[test]
    fn a_placed_order_answers_by_its_status() {
        assert_eq!(OrderStatus::Reserved.placed(), Placed::Pending);
        assert_eq!(OrderStatus::Picking.placed(), Placed::Confirmed);
        assert_eq!(OrderStatus::Failed.placed(), Placed::Failed);
        assert_eq!(
            OrderStatus::Cancelled.placed(),
            Placed::Cancelled,
            "an order cancelled while placed is not reported confirmed"
        );
    }

    #[test]
    fn saga_steps_and_moves() {
        use SagaStep::*;
        assert!(Authorize.can_become(Done));
        assert!(Compensate.can_become(Failed));
        assert!(!Compensate.can_become(Done), "a cancelled saga never confirms");
        assert!(Done.is_final() && Failed.is_final());
        assert_eq!(SagaStep::sources(Failed), vec![Authorize, Compensate]);
        use NotAuthorized::*;
        assert_eq!(after_failure(Declined, 0), SagaMove::Compensate { void: false });
        assert_eq!(after_failure(NoAnswer, 0), SagaMove::Retry { after_secs: 1 });
        assert_eq!(after_failure(NoAnswer, 1), SagaMove::Retry { after_secs: 2 });
        assert_eq!(
            after_failure(NoAnswer, 2),
            SagaMove::Compensate { void: true },
            "the third failure gives up and voids what the provider may hold"
        );
        assert_eq!(
            after_failure(NoAnswer, i64::MAX),
            SagaMove::Compensate { void: true }
        );
    }

    #[test]
    fn fulfilment_decides_the_status_after_payment() {
        assert_eq!(Fulfilment::Ship.after_confirmed(), OrderStatus::AwaitingShipment);
        assert_eq!(Fulfilment::Collect.after_confirmed(), OrderStatus::Picking);
        assert!(OrderStatus::Confirmed.can_become(Fulfilment::Collect.after_confirmed()));
    }
}
