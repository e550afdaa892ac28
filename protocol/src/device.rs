//! The store LAN device bus: JSON messages any MQTT client can send.
//!
//! Devices (scanners, scales, handhelds, POS terminals) talk to the edge
//! agent's local broker with plain JSON, so third-party hardware and scripts
//! (`mosquitto_pub`, paho) can take part. Topics are in [`crate::topic`].
//!
//! # Schema (stable; fields are only ever added, as optional)
//!
//! Amounts are integers in minor units of the store's currency (cents).
//! Weights are integer milligrams or grams as the field name says. Unknown
//! fields are ignored.
//!
//! Device -> edge:
//!
//! ```text
//! store/{s}/device/{d}/scan    {"code":"4006381333931","symbology":"]E0","lane":"1"}
//! store/{s}/device/{d}/weight  {"milligrams":1250000,"stable":true}
//! store/{s}/device/{d}/health  {"kind":"scanner","status":"ok","detail":""}
//! store/{s}/task/update        {"task_id":"T1","status":"done","device":"hh-1","lines":[{"sku":"A1","done":2}],"note":null}
//! ```
//!
//! POS requests on `store/{s}/pos/{lane}/req`, one JSON object with an `id`
//! (echoed in the reply) and an `op`:
//!
//! ```text
//! {"id":"1","op":"open_basket","cashier":"c7"}
//! {"id":"2","op":"add_item","code":"4006381333931","qty":2}
//! {"id":"3","op":"add_item","sku":"APPLES"}                 (sold by weight: the lane's scale is asked)
//! {"id":"4","op":"add_item","sku":"APPLES","grams":1250}
//! {"id":"5","op":"remove_line","line":1}
//! {"id":"6","op":"totals"}
//! {"id":"7","op":"tender_cash","amount":2000}
//! {"id":"8","op":"tender_card","token":"tok_abc","last4":"4242","amount":1599}
//! {"id":"9","op":"tender_gift_card","token":"gc_1","last4":"0001","amount":500}
//! {"id":"10","op":"complete"}
//! {"id":"11","op":"cancel_basket"}
//! {"id":"12","op":"void_sale","sale_id":"01J...","reason":"customer changed mind"}
//! {"id":"13","op":"return_items","sale_id":"01J...","lines":[{"sku":"A1","qty":1}],"refund":"cash","reason":"faulty"}
//! {"id":"14","op":"price_lookup","code":"4006381333931"}
//! {"id":"15","op":"receipt","sale_id":"01J..."}
//! ```
//!
//! Replies on `store/{s}/pos/{lane}/reply`:
//!
//! ```text
//! {"id":"2","ok":true,"result":{"kind":"basket", ...BasketView}}
//! {"id":"2","ok":false,"error":{"code":"unknown_barcode","message":"..."}}
//! ```
//!
//! A request that cannot be parsed at all still gets a reply, with `id`
//! null when no id could be read and `error.code` = `malformed_request`.
//!
//! Requests are idempotent by `id`: a lane remembers its last 64 replies
//! and answers a repeated id with the first reply, without doing the work
//! again. So publish requests at QoS 0 (the reply is the acknowledgment)
//! and, if no reply comes in time, send the same request with the same id
//! again. QoS 1 works too, but the embedded broker then sends its PUBACK and
//! the reply as two small writes, and without TCP_NODELAY on its sockets
//! the reply can wait up to 40 ms for the client's delayed ACK.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{CardToken, DeviceKind, HealthStatus, Last4};
use crate::ids::{EventId, LaneId, Sku};
use crate::money::Measure;

/// A scanned code, as a scanner or a script publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanMsg {
    /// The code as read (digits for EAN/UPC).
    pub code: String,
    /// AIM symbology identifier (`]E0`) or name, if known.
    #[serde(default)]
    pub symbology: Option<String>,
    /// The lane whose basket the item goes into, if the scanner serves one.
    #[serde(default)]
    pub lane: Option<LaneId>,
}

/// A weight reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightMsg {
    /// Net weight in milligrams.
    pub milligrams: i64,
    /// Whether the scale says the reading is stable.
    pub stable: bool,
}

/// A device's health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthMsg {
    /// What kind of device.
    pub kind: DeviceKind,
    /// Its condition.
    pub status: HealthStatus,
    /// Free text.
    #[serde(default)]
    pub detail: String,
}

/// The edge's reply to a device message that did not come from a POS lane
/// (a refused scan, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReply {
    /// Whether the message was accepted.
    pub ok: bool,
    /// What went wrong, if not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
    /// The SKU a scan matched, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
}

/// How a return is refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundMethod {
    /// Cash from the drawer.
    Cash,
    /// Back to the card(s) of the original sale (needs the receipt).
    OriginalTender,
}

/// One returned item in a POS request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnItem {
    /// The product.
    pub sku: Sku,
    /// Items returned (for products sold by the item).
    #[serde(default)]
    pub qty: Option<u32>,
    /// Grams returned (for products sold by weight).
    #[serde(default)]
    pub grams: Option<u32>,
    /// Back to sellable stock; default true.
    #[serde(default)]
    pub restock: Option<bool>,
}

/// A POS operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PosOp {
    /// Start a basket.
    OpenBasket {
        /// Operator id.
        #[serde(default)]
        cashier: Option<String>,
        /// Loyalty or customer account.
        #[serde(default)]
        customer: Option<String>,
    },
    /// Add an item by barcode or SKU.
    AddItem {
        /// Barcode as scanned (GTIN or GS1 variable-measure).
        #[serde(default)]
        code: Option<String>,
        /// SKU typed in.
        #[serde(default)]
        sku: Option<Sku>,
        /// Items (default 1) for products sold by the item.
        #[serde(default)]
        qty: Option<u32>,
        /// Grams for products sold by weight; absent: ask the lane's scale.
        #[serde(default)]
        grams: Option<u32>,
    },
    /// Remove a line.
    RemoveLine {
        /// 1-based line number.
        line: u16,
    },
    /// The basket as it stands.
    Totals,
    /// Cash handed over.
    TenderCash {
        /// Minor units received.
        amount: i64,
    },
    /// A card payment (authorised online when the hub is reachable).
    TenderCard {
        /// Terminal token.
        token: CardToken,
        /// Last four digits.
        last4: Last4,
        /// Scheme name, if known.
        #[serde(default)]
        brand: Option<String>,
        /// Minor units to charge.
        amount: i64,
    },
    /// A gift card payment (online only).
    TenderGiftCard {
        /// Terminal token.
        token: CardToken,
        /// Last four digits.
        last4: Last4,
        /// Minor units to charge.
        amount: i64,
    },
    /// Commit the sale (durably) once fully paid.
    Complete,
    /// Abandon the basket; online authorisations are voided.
    CancelBasket,
    /// Reverse a completed sale.
    VoidSale {
        /// The receipt.
        sale_id: EventId,
        /// Why.
        reason: String,
        /// The supervisor approval this repeats the request with, when the
        /// store's rules want one (the id an `approval_required` error gave).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<String>,
    },
    /// Take goods back.
    ReturnItems {
        /// The receipt, if the customer has one.
        #[serde(default)]
        sale_id: Option<EventId>,
        /// What comes back.
        lines: Vec<ReturnItem>,
        /// How the money goes back.
        refund: RefundMethod,
        /// Why.
        #[serde(default)]
        reason: String,
        /// The supervisor approval this repeats the request with, when the
        /// store's rules want one (the id an `approval_required` error gave).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<String>,
    },
    /// What does this cost?
    PriceLookup {
        /// Barcode.
        #[serde(default)]
        code: Option<String>,
        /// Or SKU.
        #[serde(default)]
        sku: Option<Sku>,
    },
    /// Receipt data of a completed sale.
    Receipt {
        /// The receipt.
        sale_id: EventId,
    },
}

/// A request from a POS lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosRequest {
    /// Chosen by the lane, echoed in the reply.
    pub id: String,
    /// What to do.
    #[serde(flatten)]
    pub op: PosOp,
}

/// Error codes on the device bus. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not the shape of any request.
    MalformedRequest,
    /// Fields present but their values are wrong.
    BadRequest,
    /// Not a valid barcode (length, digits, check digit).
    InvalidBarcode,
    /// A valid barcode the catalog does not know.
    UnknownBarcode,
    /// A SKU the catalog does not know.
    UnknownSku,
    /// The product may not be sold.
    ProductInactive,
    /// The product has no price.
    NoPrice,
    /// The operation needs an open basket.
    NoOpenBasket,
    /// A basket is already open at this lane.
    BasketOpen,
    /// No such line.
    LineNotFound,
    /// A weighed product needs a weight and the lane has no scale.
    WeightRequired,
    /// The scale did not answer in time.
    ScaleUnavailable,
    /// The scale did not settle.
    ScaleUnstable,
    /// The scale reports overload or underload.
    ScaleRange,
    /// An amount is zero, negative or too large.
    InvalidAmount,
    /// Offline card payment refused by the store's caps; take another tender.
    OfflineLimit,
    /// The card was declined.
    CardDeclined,
    /// The payment service did not answer in time (and this tender cannot
    /// be taken offline).
    PaymentUnavailable,
    /// Complete refused: the basket is not fully paid.
    NotFullyPaid,
    /// Remove or cancel refused: tenders have already been taken.
    TendersTaken,
    /// No such sale.
    SaleNotFound,
    /// The sale was already voided.
    AlreadyVoided,
    /// A return that does not match its receipt.
    ReturnInvalid,
    /// The store's rules want a supervisor's approval (a post-void, a
    /// return without a receipt, a refund above the limit): the error's
    /// `approval` id went to the supervisors; repeat the request with it
    /// once one approves. Also: still waiting, denied, or expired.
    ApprovalRequired,
    /// An internal failure; the lane may retry.
    Internal,
}

/// An error on the device bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusError {
    /// Machine-readable category.
    pub code: ErrorCode,
    /// Human-readable text for the operator.
    pub message: String,
    /// With `approval_required`: the approval to wait for and repeat the
    /// request with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

impl BusError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BusError {
            code,
            message: message.into(),
            approval: None,
        }
    }
}

/// A risky lane operation waiting for a supervisor, as the edge announces
/// it on `store/{store}/approval` (supervisor devices only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Its id.
    pub approval: String,
    /// The lane that asks.
    pub lane: LaneId,
    /// What is to be approved, for the supervisor's screen.
    pub what: String,
    /// The money it moves, minor units.
    pub amount: i64,
    /// Its currency.
    pub currency: String,
}

/// A supervisor's answer, on `store/{store}/device/{device}/approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// The approval answered.
    pub approval: String,
    /// Approved (or denied).
    pub approve: bool,
}

/// A basket line as the lane displays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    /// 1-based line number.
    pub line: u16,
    /// The product.
    pub sku: Sku,
    /// Name for the display.
    pub name: String,
    /// Items or grams.
    pub measure: Measure,
    /// Count or grams.
    pub quantity: u32,
    /// Per item or per kilogram.
    pub unit_price: i64,
    /// Discount on the line.
    pub discount: i64,
    /// Tax in the line.
    pub tax: i64,
    /// Line amount after discount.
    pub total: i64,
}

/// A tender as the lane displays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenderView {
    /// `cash`, `card` or `gift_card`.
    pub method: String,
    /// Amount applied.
    pub amount: i64,
    /// Card's last four digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
    /// Approval code, for online authorisations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_code: Option<String>,
    /// Taken offline (store-and-forward).
    #[serde(default)]
    pub offline: bool,
}

/// The open basket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketView {
    /// Becomes the sale id when completed.
    pub basket_id: EventId,
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// Lines.
    pub lines: Vec<LineView>,
    /// Before discounts.
    pub subtotal: i64,
    /// All discounts.
    pub discount: i64,
    /// Tax.
    pub tax: i64,
    /// To pay.
    pub total: i64,
    /// Tendered so far.
    pub paid: i64,
    /// Still to pay (0 when paid).
    pub due: i64,
    /// Change owed.
    pub change: i64,
    /// Tenders taken.
    pub tenders: Vec<TenderView>,
}

/// A completed sale's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptView {
    /// The sale id (print it; returns need it).
    pub sale_id: EventId,
    /// The store's outbox seq of the sale event.
    pub seq: u64,
    /// The lane.
    pub lane: LaneId,
    /// ISO 4217 code.
    pub currency: String,
    /// Lines.
    pub lines: Vec<LineView>,
    /// Before discounts.
    pub subtotal: i64,
    /// Discounts.
    pub discount: i64,
    /// Tax.
    pub tax: i64,
    /// Paid.
    pub total: i64,
    /// Tenders.
    pub tenders: Vec<TenderView>,
    /// Change given.
    pub change: i64,
    /// Edge clock at completion.
    pub completed_at_ms: i64,
    /// Whether the sale has been voided.
    #[serde(default)]
    pub voided: bool,
}

/// A price lookup's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceView {
    /// The product.
    pub sku: Sku,
    /// Name.
    pub name: String,
    /// Per item or per kilogram.
    pub measure: Measure,
    /// Price in minor units.
    pub price: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Promotions that apply now.
    pub promotions: Vec<String>,
    /// Stock this store shows (hub level + local movements).
    pub stock: i64,
}

/// A return's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnView {
    /// The return's id.
    pub return_id: EventId,
    /// Refunded, minor units.
    pub refunded: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// How.
    pub refund: RefundMethod,
}

/// What a successful POS request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PosResult {
    /// The basket after the operation.
    Basket(BasketView),
    /// A completed sale (after `complete` or `receipt`).
    Sale(ReceiptView),
    /// A price.
    Price(PriceView),
    /// A return.
    Returned(ReturnView),
    /// A voided sale.
    Voided {
        /// The sale.
        sale_id: EventId,
    },
    /// The basket was abandoned.
    Cancelled,
}

/// The edge's reply to a POS request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosReply {
    /// The request's id; null when the request was unreadable.
    pub id: Option<String>,
    /// Success or not.
    pub ok: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PosResult>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
}

impl PosReply {
    /// A success.
    pub fn ok(id: impl Into<String>, result: PosResult) -> Self {
        PosReply {
            id: Some(id.into()),
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failure.
    pub fn err(id: Option<String>, error: BusError) -> Self {
        PosReply {
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

/// Parses a device bus payload, turning any failure into a
/// [`ErrorCode::MalformedRequest`] error that says what was wrong.
///
/// Every string in the message is searched for card data first
/// ([`crate::pan::find_in_json`]; barcodes and SKUs excepted): a message
/// holding some is refused with [`ErrorCode::BadRequest`] naming the field,
/// never the digits.
pub fn parse_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, BusError> {
    let malformed = |e: serde_json::Error| {
        BusError::new(ErrorCode::MalformedRequest, format!("invalid JSON message: {e}"))
    };
    let doc: serde_json::Value = serde_json::from_slice(payload).map_err(malformed)?;
    if let Some((path, found)) = crate::pan::find_in_json(&doc) {
        return Err(BusError::new(
            ErrorCode::BadRequest,
            format!("{path} holds {found}: card data may not be sent on the store bus"),
        ));
    }
    serde_json::from_value(doc).map_err(malformed)
}

/// Best effort to read the `id` of a request that failed to parse, so the
/// error reply can still be correlated.
pub fn salvage_request_id(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: serde_json::Value,
    }
    let v: IdOnly = serde_json::from_slice(payload).ok()?;
    match v.id {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Serializes a device bus message.
pub fn to_json<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("device bus types serialize to JSON without failure")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_pub_style_requests_parse() {
        let r: PosRequest =
            parse_json(br#"{"id":"2","op":"add_item","code":"4006381333931","qty":2}"#).unwrap();
        assert_eq!(
            r.op,
            PosOp::AddItem {
                code: Some("4006381333931".into()),
                sku: None,
                qty: Some(2),
                grams: None
            }
        );
        let r: PosRequest = parse_json(br#"{"id":"6","op":"totals","extra":1}"#).unwrap();
        assert_eq!(r.op, PosOp::Totals);
        let r: PosRequest =
            parse_json(br#"{"id":"8","op":"tender_card","token":"tok_1","last4":"4242","amount":1599}"#)
                .unwrap();
        assert!(matches!(r.op, PosOp::TenderCard { amount: 1599, .. }));
    }

    #[test]
    fn bad_requests_get_clear_errors_and_keep_their_id() {
        let e = parse_json::<PosRequest>(br#"{"id":"9","op":"fly"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedRequest);
        assert!(e.message.contains("fly"), "{}", e.message);
        assert_eq!(salvage_request_id(br#"{"id":"9","op":"fly"}"#), Some("9".into()));
        assert_eq!(salvage_request_id(br#"{"id":12}"#), Some("12".into()));
        assert_eq!(salvage_request_id(b"not json"), None);
        // A PAN where a token belongs is refused.
        let e = parse_json::<PosRequest>(
            br#"{"id":"1","op":"tender_card","token":"4242424242424242","last4":"4242","amount":1}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("card number"), "{}", e.message);
        assert!(
            !e.message.contains("4242424242"),
            "never the digits: {}",
            e.message
        );
        // Track data or a PAN in any text field, whatever the message.
        for payload in [
            br#"{"id":"1","op":"tender_card","token":";4242424242424242=2512?","last4":"4242","amount":1}"#
                .as_slice(),
            br#"{"id":"1","op":"open","cashier":"4242 4242 4242 4242"}"#.as_slice(),
        ] {
            let e = parse_json::<serde_json::Value>(payload).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
        }
    }

    #[test]
    fn replies_serialize_without_empty_fields() {
        let r = PosReply::err(
            Some("2".into()),
            BusError::new(ErrorCode::UnknownBarcode, "no product has barcode 4006381333931"),
        );
        assert_eq!(
            String::from_utf8(to_json(&r)).unwrap(),
            r#"{"id":"2","ok":false,"error":{"code":"unknown_barcode","message":"no product has barcode 4006381333931"}}"#
        );
    }
}
