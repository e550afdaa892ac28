//! Events: the facts an edge records in its journal and syncs to the hub.
//!
//! An [`Event`] is written to the edge's outbox in the same SQLite
//! transaction as the business fact it describes, with a per-store `seq`.
//! The hub applies events idempotently by `(store, seq)` and by `id`.
//!
//! Events are either business facts (sales, payments, stock) that are never
//! dropped, or telemetry (scans, weights, device health) that an edge may
//! drop oldest-first when its outbox is over budget; a dropped telemetry
//! event keeps its seq and travels as [`EventBody::TelemetryDropped`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gtin::Gtin;
use crate::ids::{DeviceId, EventId, LaneId, Seq, Sku, StoreId};
use crate::money::{Money, Qty};

/// One recorded fact with its place in the store's sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Globally unique, time-ordered id; the hub's second idempotency key.
    pub id: EventId,
    /// Per-store gap-free position; the hub's high-water mark is a seq.
    pub seq: Seq,
    /// Edge wall clock when recorded. Informs; never orders.
    pub recorded_at_ms: i64,
    /// What happened.
    pub body: EventBody,
}

/// Everything an edge can record. Append-only: new variants go at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventBody {
    /// A completed sale at a lane.
    Sale(Sale),
    /// A completed sale reversed after the fact (post-void).
    SaleVoided(SaleVoid),
    /// Goods brought back, with or without the original receipt.
    Return(Return),
    /// An online card authorisation released without a sale (basket abandoned).
    PaymentVoided(PaymentVoid),
    /// A stock count: what was on the shelf.
    StockCounted(StockCount),
    /// A stock correction with a reason (damage, theft, found...).
    StockAdjusted(StockAdjustment),
    /// Goods received from a supplier.
    GoodsReceived(GoodsReceipt),
    /// Goods sent to another location.
    TransferOut(Transfer),
    /// Goods received from another location.
    TransferIn(Transfer),
    /// A barcode scan (telemetry).
    Scan(ScanRecord),
    /// A scale reading (telemetry).
    Weight(WeightRecord),
    /// A device's health report (telemetry).
    DeviceHealth(DeviceHealthRecord),
    /// Progress on a task the hub sent down (pick, pack, collect).
    TaskUpdated(TaskUpdate),
    /// Placeholder for a telemetry event dropped by the edge's disk budget.
    TelemetryDropped(TelemetryDropped),
}

/// Whether an event may be dropped under disk pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventClass {
    /// Sales, payments, stock, tasks: never dropped.
    Business,
    /// Scans, weights, device health: dropped oldest first when over budget.
    Telemetry,
}

/// The variant of an [`EventBody`], without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// [`EventBody::Sale`]
    Sale,
    /// [`EventBody::SaleVoided`]
    SaleVoided,
    /// [`EventBody::Return`]
    Return,
    /// [`EventBody::PaymentVoided`]
    PaymentVoided,
    /// [`EventBody::StockCounted`]
    StockCounted,
    /// [`EventBody::StockAdjusted`]
    StockAdjusted,
    /// [`EventBody::GoodsReceived`]
    GoodsReceived,
    /// [`EventBody::TransferOut`]
    TransferOut,
    /// [`EventBody::TransferIn`]
    TransferIn,
    /// [`EventBody::Scan`]
    Scan,
    /// [`EventBody::Weight`]
    Weight,
    /// [`EventBody::DeviceHealth`]
    DeviceHealth,
    /// [`EventBody::TaskUpdated`]
    TaskUpdated,
    /// [`EventBody::TelemetryDropped`]
    TelemetryDropped,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 14] = [
        EventKind::Sale,
        EventKind::SaleVoided,
        EventKind::Return,
        EventKind::PaymentVoided,
        EventKind::StockCounted,
        EventKind::StockAdjusted,
        EventKind::GoodsReceived,
        EventKind::TransferOut,
        EventKind::TransferIn,
        EventKind::Scan,
        EventKind::Weight,
        EventKind::DeviceHealth,
        EventKind::TaskUpdated,
        EventKind::TelemetryDropped,
    ];

    /// A stable snake_case name for databases, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sale => "sale",
            EventKind::SaleVoided => "sale_voided",
            EventKind::Return => "return",
            EventKind::PaymentVoided => "payment_voided",
            EventKind::StockCounted => "stock_counted",
            EventKind::StockAdjusted => "stock_adjusted",
            EventKind::GoodsReceived => "goods_received",
            EventKind::TransferOut => "transfer_out",
            EventKind::TransferIn => "transfer_in",
            EventKind::Scan => "scan",
            EventKind::Weight => "weight",
            EventKind::DeviceHealth => "device_health",
            EventKind::TaskUpdated => "task_updated",
            EventKind::TelemetryDropped => "telemetry_dropped",
        }
    }

    /// Parses [`EventKind::as_str`]'s output.
    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Business facts are kept at any cost; telemetry may be dropped.
    pub fn class(self) -> EventClass {
        match self {
            EventKind::Scan | EventKind::Weight | EventKind::DeviceHealth => EventClass::Telemetry,
            _ => EventClass::Business,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventBody {
    /// Every free-text field of the event (name, text): what people type
    /// or devices report in words. [`crate::pan::find`] is run over these at
    /// every entry; codes, ids and money are typed and checked elsewhere.
    pub fn free_text(&self) -> Vec<(&'static str, &str)> {
        fn some<'a>(out: &mut Vec<(&'static str, &'a str)>, name: &'static str, v: Option<&'a String>) {
            if let Some(v) = v {
                out.push((name, v.as_str()));
            }
        }
        fn tenders<'a>(out: &mut Vec<(&'static str, &'a str)>, ts: &'a [Tender]) {
            for t in ts {
                if let TenderMethod::Card(c) | TenderMethod::GiftCard(c) = &t.method {
                    some(out, "brand", c.card.brand.as_ref());
                }
            }
        }
        let mut out = Vec::new();
        match self {
            EventBody::Sale(s) => {
                some(&mut out, "cashier", s.cashier.as_ref());
                some(&mut out, "customer", s.customer.as_ref());
                for l in &s.lines {
                    for d in &l.discounts {
                        out.push(("discount.label", d.label.as_str()));
                        some(&mut out, "discount.promotion_id", d.promotion_id.as_ref());
                    }
                }
                for d in &s.basket_discounts {
                    out.push(("discount.label", d.label.as_str()));
                    some(&mut out, "discount.promotion_id", d.promotion_id.as_ref());
                }
                tenders(&mut out, &s.tenders);
            }
            EventBody::SaleVoided(v) => {
                out.push(("reason", v.reason.as_str()));
                tenders(&mut out, &v.refunds);
            }
            EventBody::Return(r) => {
                out.push(("reason", r.reason.as_str()));
                tenders(&mut out, &r.refunds);
            }
            EventBody::PaymentVoided(v) => out.push(("reason", v.reason.as_str())),
            EventBody::StockCounted(c) => some(&mut out, "counted_by", c.counted_by.as_ref()),
            EventBody::StockAdjusted(a) => some(&mut out, "note", a.note.as_ref()),
            EventBody::GoodsReceived(g) => {
                out.push(("reference", g.reference.as_str()));
                some(&mut out, "supplier", g.supplier.as_ref());
            }
            EventBody::TransferOut(t) | EventBody::TransferIn(t) => {
                out.push(("transfer_id", t.transfer_id.as_str()))
            }
            // A code that is not a barcode is text someone typed or swiped.
            EventBody::Scan(s) => {
                if let ScanOutcome::Invalid { reason } = &s.outcome {
                    out.push(("code", s.code.as_str()));
                    out.push(("reason", reason.as_str()));
                }
            }
            EventBody::DeviceHealth(h) => out.push(("detail", h.detail.as_str())),
            EventBody::TaskUpdated(u) => some(&mut out, "note", u.note.as_ref()),
            EventBody::Weight(_) | EventBody::TelemetryDropped(_) => {}
        }
        out
    }

    /// Calls `f` with every free-text field, mutably, in the order of
    /// [`EventBody::free_text`].
    pub fn for_each_free_text_mut(&mut self, f: &mut dyn FnMut(&'static str, &mut String)) {
        fn tenders(f: &mut dyn FnMut(&'static str, &mut String), ts: &mut [Tender]) {
            for t in ts {
                if let TenderMethod::Card(c) | TenderMethod::GiftCard(c) = &mut t.method
                    && let Some(b) = c.card.brand.as_mut()
                {
                    f("brand", b);
                }
            }
        }
        let some = |name, v: Option<&mut String>, f: &mut dyn FnMut(&'static str, &mut String)| {
            if let Some(v) = v {
                f(name, v);
            }
        };
        match self {
            EventBody::Sale(s) => {
                some("cashier", s.cashier.as_mut(), f);
                some("customer", s.customer.as_mut(), f);
                let discounts = s.lines.iter_mut().flat_map(|l| l.discounts.iter_mut());
                for d in discounts.chain(s.basket_discounts.iter_mut()) {
                    f("discount.label", &mut d.label);
                    some("discount.promotion_id", d.promotion_id.as_mut(), f);
                }
                tenders(f, &mut s.tenders);
            }
            EventBody::SaleVoided(v) => {
                f("reason", &mut v.reason);
                tenders(f, &mut v.refunds);
            }
            EventBody::Return(r) => {
                f("reason", &mut r.reason);
                tenders(f, &mut r.refunds);
            }
            EventBody::PaymentVoided(v) => f("reason", &mut v.reason),
            EventBody::StockCounted(c) => some("counted_by", c.counted_by.as_mut(), f),
            EventBody::StockAdjusted(a) => some("note", a.note.as_mut(), f),
            EventBody::GoodsReceived(g) => {
                f("reference", &mut g.reference);
                some("supplier", g.supplier.as_mut(), f);
            }
            EventBody::TransferOut(t) | EventBody::TransferIn(t) => f("transfer_id", &mut t.transfer_id),
            EventBody::Scan(s) => {
                if let ScanOutcome::Invalid { reason } = &mut s.outcome {
                    f("code", &mut s.code);
                    f("reason", reason);
                }
            }
            EventBody::DeviceHealth(h) => f("detail", &mut h.detail),
            EventBody::TaskUpdated(u) => some("note", u.note.as_mut(), f),
            EventBody::Weight(_) | EventBody::TelemetryDropped(_) => {}
        }
    }

    /// Replaces every free-text field that holds card data with
    /// [`crate::pan::REDACTED`]; returns the fields it replaced. For a
    /// receiver that must keep the event (its seq is part of a stream) but
    /// may not keep the card data.
    pub fn redact_card_data(&mut self) -> Vec<&'static str> {
        let mut out = Vec::new();
        self.for_each_free_text_mut(&mut |name, v| {
            if crate::pan::find(v).is_some() {
                crate::pan::REDACTED.clone_into(v);
                out.push(name);
            }
        });
        out
    }

    /// The first free-text field holding card data, if any
    /// ([`EventBody::free_text`], [`crate::pan::check`]).
    pub fn card_data(&self) -> Result<(), crate::pan::HoldsCardData> {
        self.free_text()
            .into_iter()
            .try_for_each(|(field, text)| crate::pan::check(field, text))
    }

    /// The variant without its data.
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Sale(_) => EventKind::Sale,
            EventBody::SaleVoided(_) => EventKind::SaleVoided,
            EventBody::Return(_) => EventKind::Return,
            EventBody::PaymentVoided(_) => EventKind::PaymentVoided,
            EventBody::StockCounted(_) => EventKind::StockCounted,
            EventBody::StockAdjusted(_) => EventKind::StockAdjusted,
            EventBody::GoodsReceived(_) => EventKind::GoodsReceived,
            EventBody::TransferOut(_) => EventKind::TransferOut,
            EventBody::TransferIn(_) => EventKind::TransferIn,
            EventBody::Scan(_) => EventKind::Scan,
            EventBody::Weight(_) => EventKind::Weight,
            EventBody::DeviceHealth(_) => EventKind::DeviceHealth,
            EventBody::TaskUpdated(_) => EventKind::TaskUpdated,
            EventBody::TelemetryDropped(_) => EventKind::TelemetryDropped,
        }
    }

    /// Business or telemetry.
    pub fn class(&self) -> EventClass {
        self.kind().class()
    }

    /// The stock movements this event implies at the recording store, in
    /// base units (items or grams); negative leaves the store. A count is not
    /// a movement (its delta depends on the level it is compared with) and
    /// is not included.
    pub fn stock_deltas(&self) -> Vec<(Sku, i64)> {
        match self {
            EventBody::Sale(s) => s
                .lines
                .iter()
                .map(|l| (l.sku.clone(), -l.qty.base_units()))
                .collect(),
            EventBody::SaleVoided(_) => Vec::new(),
            EventBody::Return(r) => r
                .lines
                .iter()
                .filter(|l| l.restock)
                .map(|l| (l.sku.clone(), l.qty.base_units()))
                .collect(),
            EventBody::StockAdjusted(a) => a.lines.iter().map(|l| (l.sku.clone(), l.delta)).collect(),
            EventBody::GoodsReceived(g) => g.lines.iter().map(|l| (l.sku.clone(), l.delta)).collect(),
            EventBody::TransferOut(t) => t
                .lines
                .iter()
                .map(|l| (l.sku.clone(), l.delta.saturating_neg()))
                .collect(),
            EventBody::TransferIn(t) => t.lines.iter().map(|l| (l.sku.clone(), l.delta)).collect(),
            _ => Vec::new(),
        }
    }
}

/// Sale totals. `total = subtotal - discount (+ tax unless prices include it)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of line amounts before discounts.
    pub subtotal: Money,
    /// Sum of all discounts (positive).
    pub discount: Money,
    /// Tax contained in (or added to) the total.
    pub tax: Money,
    /// What the customer pays.
    pub total: Money,
}

/// A completed sale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sale {
    /// The receipt's id (printed on it; returns refer to it).
    pub sale_id: EventId,
    /// The till it was rung up on.
    pub lane: LaneId,
    /// Operator id at the till, if any.
    pub cashier: Option<String>,
    /// Loyalty or customer account, if any.
    pub customer: Option<String>,
    /// Whether unit prices include tax (EU) or tax is added (US).
    pub tax_included: bool,
    /// The lines, in the order rung up.
    pub lines: Vec<SaleLine>,
    /// Discounts on the whole basket, not attributed to a line.
    pub basket_discounts: Vec<Discount>,
    /// Totals of the lines and basket discounts.
    pub totals: Totals,
    /// How it was paid; amounts sum to `totals.total`.
    pub tenders: Vec<Tender>,
    /// Cash handed back to the customer.
    pub change: Money,
    /// Edge clock when the basket was opened.
    pub started_at_ms: i64,
    /// Edge clock when the sale was committed.
    pub completed_at_ms: i64,
}

/// One line of a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLine {
    /// 1-based position on the receipt.
    pub line_no: u16,
    /// The product.
    pub sku: Sku,
    /// The barcode scanned, if it was scanned.
    pub gtin: Option<Gtin>,
    /// Items or grams sold.
    pub qty: Qty,
    /// Price per item, or per kilogram for weighed goods.
    pub unit_price: Money,
    /// Discounts applied to this line (positive amounts).
    pub discounts: Vec<Discount>,
    /// Tax rate in basis points (2000 = 20%).
    pub tax_rate_bp: u32,
    /// Tax contained in (or added to) this line.
    pub tax: Money,
    /// Line amount after discounts.
    pub total: Money,
}

/// A discount from a promotion or granted by staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    /// The promotion that granted it, if any.
    pub promotion_id: Option<String>,
    /// Text for the receipt.
    pub label: String,
    /// Amount taken off (positive).
    pub amount: Money,
}

/// Why a string was refused as card data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardDataError {
    /// `last4` is not four digits.
    #[error("last4 must be exactly four digits")]
    Last4,
    /// The token is empty, too long, or looks like a card number (PAN).
    #[error("card token refused: {0}")]
    Token(&'static str),
}

/// The last four digits of a card number: the only digits ever kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Last4([u8; 4]);

impl Last4 {
    /// Validates four ASCII digits.
    pub fn parse(s: &str) -> Result<Self, CardDataError> {
        let b = s.as_bytes();
        if b.len() == 4 && b.iter().all(u8::is_ascii_digit) {
            Ok(Last4([b[0], b[1], b[2], b[3]]))
        } else {
            Err(CardDataError::Last4)
        }
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}

impl fmt::Debug for Last4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Last4({})", self.as_str())
    }
}

impl Serialize for Last4 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Last4 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Last4::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An opaque token from the payment terminal standing for a card.
///
/// Printable ASCII with no spaces, at most 128 bytes, and nothing
/// [`crate::pan::find`] takes for card data (a card number anywhere in it,
/// `tok_4111111111111111` included, or track data), so a misconfigured
/// terminal cannot leak PANs into the journal, the outbox or the hub.
/// `Debug` shows the last four characters only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CardToken(String);

impl CardToken {
    /// Validates a terminal token.
    pub fn parse(s: impl Into<String>) -> Result<Self, CardDataError> {
        let s = s.into();
        if s.is_empty() {
            return Err(CardDataError::Token("empty"));
        }
        if s.len() > 128 {
            return Err(CardDataError::Token("longer than 128 bytes"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CardDataError::Token(
                "only printable ASCII without spaces is accepted",
            ));
        }
        if crate::pan::find(&s).is_some() {
            return Err(CardDataError::Token(
                "looks like card data (a card number or track data); only terminal tokens are accepted",
            ));
        }
        Ok(CardToken(s))
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last four characters, for showing and logging.
    pub fn masked(&self) -> String {
        crate::pan::last4(&self.0)
    }
}

impl fmt::Debug for CardToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardToken({})", self.masked())
    }
}

impl Serialize for CardToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CardToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CardToken::parse(s).map_err(serde::de::Error::custom)
    }
}

/// A card as the edge knows it: a terminal token and the last four digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRef {
    /// Terminal token standing for the card.
    pub token: CardToken,
    /// Last four digits, for receipts and disputes.
    pub last4: Last4,
    /// Scheme name for the receipt ("VISA"), if the terminal said.
    pub brand: Option<String>,
}

/// How a card payment was authorised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardAuth {
    /// Authorised online through the hub before the sale completed.
    Online {
        /// The provider's authorisation id, to capture or void.
        authorization_id: String,
        /// The approval code printed on the receipt.
        auth_code: String,
    },
    /// Taken offline within the store's caps; the hub captures it on
    /// arrival and the merchant bears the decline risk.
    StoreAndForward {
        /// Edge clock when the card was taken.
        taken_at_ms: i64,
    },
}

/// A card or gift card payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardPayment {
    /// The card.
    pub card: CardRef,
    /// How it was authorised.
    pub auth: CardAuth,
}

/// How a tender was paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenderMethod {
    /// Cash; `received - amount` went back as change.
    Cash {
        /// What the customer handed over.
        received: Money,
    },
    /// A payment card.
    Card(CardPayment),
    /// A gift card (balance held by the hub).
    GiftCard(CardPayment),
}

/// One payment towards a sale (or one refund for a return or void).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tender {
    /// Idempotency key of this payment, unique across the chain.
    pub payment_key: EventId,
    /// Amount applied to the sale (refunds: amount given back).
    pub amount: Money,
    /// How it was paid.
    pub method: TenderMethod,
}

/// A completed sale reversed after the fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleVoid {
    /// The sale voided.
    pub sale_id: EventId,
    /// The lane that voided it.
    pub lane: LaneId,
    /// Why (free text from the supervisor).
    pub reason: String,
    /// Money given back; card refunds are settled by the hub.
    pub refunds: Vec<Tender>,
    /// Whether the goods went back on the shelf.
    pub restock: bool,
}

/// A returned line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLine {
    /// The product.
    pub sku: Sku,
    /// Items or grams returned.
    pub qty: Qty,
    /// Amount refunded for the line, tax included.
    pub amount: Money,
    /// Tax in that amount.
    pub tax: Money,
    /// Back to sellable stock (true) or written off (false).
    pub restock: bool,
}

/// Goods brought back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Return {
    /// Id of this return.
    pub return_id: EventId,
    /// The receipt it refers to, when the customer has one.
    pub original_sale: Option<EventId>,
    /// The lane that took it.
    pub lane: LaneId,
    /// The lines returned.
    pub lines: Vec<ReturnLine>,
    /// How the money went back.
    pub refunds: Vec<Tender>,
    /// Why (free text).
    pub reason: String,
}

/// An online authorisation released without a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoid {
    /// The payment released.
    pub payment_key: EventId,
    /// Amount that had been authorised.
    pub amount: Money,
    /// Why.
    pub reason: String,
}

/// A signed stock movement of one SKU in base units (items or grams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// The product.
    pub sku: Sku,
    /// Base units; the sign follows the event's documentation.
    pub delta: i64,
}

/// One counted SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountLine {
    /// The product.
    pub sku: Sku,
    /// What was on the shelf, in base units.
    pub counted: i64,
}

/// A stock count. The hub books `counted - level` as a count movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCount {
    /// Who or what counted.
    pub counted_by: Option<String>,
    /// The counts.
    pub lines: Vec<CountLine>,
}

/// Why stock was adjusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    /// Broken or spoiled.
    Damaged,
    /// Past its date.
    Expired,
    /// Shrinkage.
    Theft,
    /// Turned up.
    Found,
    /// A booking mistake corrected.
    Correction,
    /// Anything else (see the note).
    Other,
}

/// A stock correction; `delta` is signed (negative removes stock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdjustment {
    /// Why.
    pub reason: AdjustReason,
    /// Free text.
    pub note: Option<String>,
    /// The movements.
    pub lines: Vec<StockLine>,
}

/// Goods received from a supplier; `delta` is the positive quantity received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodsReceipt {
    /// Purchase order or delivery note number.
    pub reference: String,
    /// Supplier code, if known.
    pub supplier: Option<String>,
    /// What arrived.
    pub lines: Vec<StockLine>,
}

/// Goods moved between two locations; `delta` is the positive quantity moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Transfer document id shared by both ends.
    pub transfer_id: String,
    /// The other location.
    pub counterparty: StoreId,
    /// What moved.
    pub lines: Vec<StockLine>,
}

/// What came of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanOutcome {
    /// The code named a product.
    Matched {
        /// The product found.
        sku: Sku,
    },
    /// A valid code the catalog does not know.
    Unknown,
    /// Not a valid barcode.
    Invalid {
        /// Why it was refused.
        reason: String,
    },
}

/// A barcode scan (telemetry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// The scanner.
    pub device: DeviceId,
    /// The lane it serves, if any.
    pub lane: Option<LaneId>,
    /// The code as read.
    pub code: String,
    /// AIM symbology identifier or name, if the scanner sent one.
    pub symbology: Option<String>,
    /// What came of it.
    pub outcome: ScanOutcome,
}

/// A scale reading (telemetry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightRecord {
    /// The scale.
    pub device: DeviceId,
    /// Net weight in milligrams (negative when under zero).
    pub milligrams: i64,
    /// Whether the scale reported the reading stable.
    pub stable: bool,
}

/// Kinds of in-store devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// Barcode scanner.
    Scanner,
    /// Weighing scale.
    Scale,
    /// POS terminal or lane controller.
    Pos,
    /// Handheld (picking, counting).
    Handheld,
    /// Receipt or label printer.
    Printer,
    /// Anything else.
    Other,
}

/// A device's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Working.
    Ok,
    /// Working with errors.
    Degraded,
    /// Not working.
    Error,
    /// Not reachable.
    Offline,
}

/// A device's health report (telemetry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHealthRecord {
    /// The device.
    pub device: DeviceId,
    /// What kind of device.
    pub kind: DeviceKind,
    /// Its condition.
    pub status: HealthStatus,
    /// Free text (last error).
    pub detail: String,
    /// Errors since the agent started.
    pub error_count: u32,
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// A device took it.
    Accepted,
    /// Being worked on.
    InProgress,
    /// Finished.
    Done,
    /// Could not be finished (see the note and lines).
    Failed,
}

/// A task line as done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLineResult {
    /// The product.
    pub sku: Sku,
    /// Quantity actually picked, packed or handed over, in base units.
    pub done: i64,
}

/// Progress on a task sent down by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUpdate {
    /// The task.
    pub task_id: String,
    /// Where it stands.
    pub status: TaskStatus,
    /// The device that reported it.
    pub device: Option<DeviceId>,
    /// Per-line results, when finished.
    pub lines: Vec<TaskLineResult>,
    /// Free text.
    pub note: Option<String>,
}

/// A telemetry event the edge dropped to stay within its disk budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryDropped {
    /// Kind of the dropped event.
    pub kind: EventKind,
}
