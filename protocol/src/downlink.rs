//! Downlink: what the hub sends a store, each item with a per-store seq.
//!
//! The edge applies items in seq order, skips seqs it already applied, and
//! acks with `DownAck { applied_up_to }`; a gap is answered with the same ack
//! so the hub resends from there.

use serde::{Deserialize, Serialize};

use crate::event::TaskStatus;
use crate::gtin::Gtin;
use crate::ids::{EventId, Seq, Sku};
use crate::money::{Measure, Money};

/// One downlink item and its place in the store's downlink sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownItem {
    /// Per-store downlink seq, gap-free from 1.
    pub seq: Seq,
    /// What to apply.
    pub body: DownBody,
}

/// Everything the hub can send down. Append-only: new variants at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DownBody {
    /// Create or replace a product.
    ProductUpsert(Product),
    /// Stop selling a product.
    ProductRemoved {
        /// The product.
        sku: Sku,
    },
    /// A price, effective from a moment.
    PriceSet(Price),
    /// Create or replace a promotion.
    PromotionUpsert(Promotion),
    /// End a promotion.
    PromotionRemoved {
        /// The promotion.
        id: String,
    },
    /// The hub's level for one SKU at this store.
    StockLevel(StockLevel),
    /// A task for the store's devices.
    TaskAssigned(Task),
    /// A task withdrawn.
    TaskCancelled {
        /// The task.
        task_id: String,
    },
    /// Store configuration (offline card caps, budgets...).
    Config(ConfigSet),
    /// The outcome of a store-and-forward card payment.
    PaymentDecision(PaymentDecision),
}

/// A product as the store's catalog replica holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The key.
    pub sku: Sku,
    /// Name for the till and receipt.
    pub name: String,
    /// Sold by the item or by weight.
    pub measure: Measure,
    /// Tax rate in basis points (2000 = 20%).
    pub tax_rate_bp: u32,
    /// Every barcode that names this product.
    pub barcodes: Vec<Gtin>,
    /// Category code, for promotions and reports.
    pub category: Option<String>,
    /// False when the product may not be sold.
    pub active: bool,
}

/// A price for a product at this store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// The product.
    pub sku: Sku,
    /// Per item, or per kilogram for products sold by weight.
    pub price: Money,
    /// From when it applies (hub clock).
    pub effective_from_ms: i64,
    /// Until when, if limited.
    pub effective_to_ms: Option<i64>,
}

/// How a promotion changes a price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromotionRule {
    /// Percentage off each matching line, in basis points.
    PercentOff {
        /// 1500 = 15% off.
        bp: u32,
    },
    /// A fixed amount off each matching item.
    AmountOff {
        /// Taken off per item.
        amount: Money,
    },
    /// Buy `buy`, pay for `pay` (3-for-2: buy 3, pay 2).
    MultiBuy {
        /// Items in the group.
        buy: u32,
        /// Items paid for in the group.
        pay: u32,
    },
}

/// A promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The key.
    pub id: String,
    /// Receipt text.
    pub label: String,
    /// What it does.
    pub rule: PromotionRule,
    /// The products it applies to.
    pub skus: Vec<Sku>,
    /// Start (hub clock).
    pub starts_ms: i64,
    /// End, if limited.
    pub ends_ms: Option<i64>,
}

/// The hub's stock of one SKU at this store.
///
/// The edge shows `on_hand` plus its own movements with seq above
/// `as_of_edge_seq` (DESIGN.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The product.
    pub sku: Sku,
    /// On hand at the hub, in base units.
    pub on_hand: i64,
    /// Reserved for online orders.
    pub reserved: i64,
    /// The highest edge seq whose movements `on_hand` includes.
    pub as_of_edge_seq: Seq,
}

/// Kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Pick goods for an order.
    Pick,
    /// Pack picked goods.
    Pack,
    /// Hand a click-and-collect order to the customer.
    Collect,
    /// Count stock.
    Count,
    /// Refill shelves from the back room.
    Replenish,
}

/// A task line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLine {
    /// The product.
    pub sku: Sku,
    /// Base units to handle.
    pub qty: i64,
}

/// A task for the store's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The key.
    pub task_id: String,
    /// What to do.
    pub kind: TaskKind,
    /// The order it serves, if any.
    pub order_ref: Option<String>,
    /// The goods.
    pub lines: Vec<TaskLine>,
    /// When it is due (hub clock).
    pub due_ms: Option<i64>,
    /// Free text.
    pub note: Option<String>,
    /// Status the hub last knew of (for a re-sent task).
    pub status: Option<TaskStatus>,
}

/// A configuration value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigValue {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A flag.
    Bool(bool),
    /// An amount.
    Money(Money),
}

/// One configuration key and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// Dotted key, e.g. `payments.offline.per_txn_limit`.
    pub key: String,
    /// The value.
    pub value: ConfigValue,
}

/// A set of configuration changes, applied together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSet {
    /// The entries.
    pub entries: Vec<ConfigEntry>,
}

/// What became of a store-and-forward card payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentOutcome {
    /// Captured: the money is ours.
    Captured {
        /// The provider's capture id.
        capture_id: String,
    },
    /// Declined: a back-office exception ("collect"), never a stock release.
    Declined {
        /// The provider's reason.
        reason: String,
    },
}

/// The hub's decision on one payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDecision {
    /// The payment.
    pub payment_key: EventId,
    /// The sale it paid for.
    pub sale_id: Option<EventId>,
    /// Captured or declined.
    pub outcome: PaymentOutcome,
}
