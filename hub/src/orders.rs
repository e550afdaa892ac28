//! Orders: store sales (written by ingestion) and online orders (the API),
//! one model with lines, totals, status history and payments.
//!
//! # The online order saga (durable in `sagas`)
//!
//! 1. **create + reserve** (one transaction): the order, its lines, its
//!    history, the reservations at the allocated location(s), and the saga
//!    row at step `authorize`, leased to the request that runs it.
//! 2. **authorize**: the provider call, idempotent by the key
//!    `order-{id}` (gift cards: a balance debit inside step 3).
//! 3. **confirm + fulfil** (one transaction, conditional on the saga still
//!    being at `authorize`): the payment row, status `confirmed`, then a
//!    pick task to the store (click-and-collect) or a shipment and a pick
//!    task at the warehouse (ship). The saga is `done`.
//!
//! A decline (or a provider that keeps failing) runs the compensation in
//! one transaction: reservations released, any authorisation voided
//! (through the payment worker), order `failed`. A hub killed between
//! steps leaves the saga leased; when the lease expires the saga
//! [`worker`] resumes it from its step, and the provider's idempotency by
//! key means a repeated authorisation never charges twice.
//!
//! Goods leave (stock `fulfilment`, payment capture) when the store
//! confirms the pick task (collect) or the shipment goes in transit (ship).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use storegate_protocol::downlink::TaskKind;
use storegate_protocol::event::{CardToken, EventBody, Last4};
use storegate_protocol::pricing::{self, LineInput as PriceInput};
use storegate_protocol::{Currency, Money, Qty, Sku, StoreId};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::allocation::{self, Candidate};
use crate::db::{Db, now_ms};
use crate::idempotency::KeyRef;
use crate::payments::{self, AuthOutcome, NewPayment, PaymentView, Payments};
use crate::settings::CommerceSettings;
use crate::shipping::{self, ShipmentView};
use crate::tasks::{self, TaskView};
use crate::{audit, catalog, sql, stock};

/// What orders need.
#[derive(Debug, Clone)]
pub struct Commerce {
    /// The database.
    pub db: Db,
    /// Payments.
    pub payments: Payments,
    /// Settings.
    pub settings: CommerceSettings,
    /// Order currency.
    pub currency: Currency,
    /// To kick downlink sends.
    pub kick: crate::downlink::Kick,
    /// Test failpoint: abort the process right after a saga's authorisation.
    pub abort_after_authorize: bool,
}

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
    /// `card` or `gift_card`.
    pub method: String,
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
    /// `ship` or `collect`.
    pub fulfilment: String,
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

/// A line of an order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineView {
    /// Position.
    pub line_no: i64,
    /// Product.
    pub sku: String,
    /// Items or grams.
    pub qty: i64,
    /// Price per item (per kilogram for weighed goods), minor units.
    pub unit_price_minor: i64,
    /// Line total after its discount, minor units.
    pub total_minor: i64,
    /// Tax in (or on) the line.
    pub tax_minor: i64,
    /// Location the goods come from.
    pub location: Option<String>,
    /// Promotion discount on the line, minor units.
    pub discount_minor: i64,
    /// The promotion that gave it.
    pub promotion_id: Option<String>,
}

/// One status change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    /// The status entered.
    pub status: String,
    /// When, ms.
    pub at_ms: i64,
    /// Why.
    pub note: String,
}

/// An order with everything about it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    /// Id.
    pub id: String,
    /// `store` (a till sale) or `online`.
    pub kind: String,
    /// reserved, confirmed, picking, awaiting_shipment, shipped, completed,
    /// failed, cancelled, voided.
    pub status: String,
    /// The customer.
    pub customer_id: Option<String>,
    /// Selling or allocated location.
    pub location: Option<String>,
    /// `ship` or `collect` (online).
    pub fulfilment: Option<String>,
    /// Ship-to region.
    pub ship_region: Option<String>,
    /// ISO currency.
    pub currency: String,
    /// Sum of lines.
    pub subtotal_minor: i64,
    /// Discounts.
    pub discount_minor: i64,
    /// Tax.
    pub tax_minor: i64,
    /// Shipping.
    pub shipping_minor: i64,
    /// What the customer pays.
    pub total_minor: i64,
    /// The till that sold it (store sales).
    pub store_id: Option<String>,
    /// Lines.
    pub lines: Vec<LineView>,
    /// Status history, oldest first.
    pub history: Vec<HistoryView>,
    /// Payments.
    pub payments: Vec<PaymentView>,
    /// Shipments.
    pub shipments: Vec<ShipmentView>,
    /// Tasks.
    pub tasks: Vec<TaskView>,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

/// An order in a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderSummary {
    /// Id.
    pub id: String,
    /// store | online.
    pub kind: String,
    /// Status.
    pub status: String,
    /// Customer.
    pub customer_id: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// Total, minor units.
    pub total_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Created, ms.
    pub created_ms: i64,
}

/// Why an order request failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Not enough stock anywhere that may serve it.
    #[error("{0}")]
    OutOfStock(String),
    /// No such order.
    #[error("{0} not found")]
    NotFound(String),
    /// Not possible in its state.
    #[error("{0}")]
    State(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What became of a new order.
#[derive(Debug, Clone)]
pub enum Created {
    /// Paid (authorised) and being fulfilled.
    Confirmed(OrderView),
    /// Payment declined; nothing reserved any more.
    Failed(OrderView, String),
    /// The provider did not answer yet; the saga goes on in the background.
    Pending(OrderView),
}

/// Marks a reservation lost to a concurrent order (the plan is redone).
const RACED: &str = "raced";

#[derive(Debug)]
struct Valid {
    lines: Vec<(String, i64)>,
    collect: Option<String>,
    region: Option<String>,
    token: String,
    last4: String,
    method: &'static str,
}

fn validate(input: &OrderInput) -> Result<Valid, OrderError> {
    let bad = |m: String| Err(OrderError::Invalid(m));
    if input.lines.is_empty() || input.lines.len() > 200 {
        return bad("an order has 1 to 200 lines".into());
    }
    // Lines of one SKU become one line with their sum.
    let merged = crate::domain::lines::merge(
        input.lines.iter().map(|l| (l.sku.as_str(), l.qty)),
        crate::domain::lines::QtyRule::Positive,
    )
    .map_err(|e| OrderError::Invalid(e.to_string()))?;
    if let Some((sku, _)) = merged.iter().find(|(_, q)| *q > 1_000_000) {
        return bad(format!("{sku}: qty must be 1 to 1000000"));
    }
    let (collect, region) = match input.fulfilment.as_str() {
        "collect" => {
            let Some(s) = input.collect_at.as_deref().filter(|s| !s.is_empty()) else {
                return bad("fulfilment `collect` needs collect_at (a store id)".into());
            };
            (Some(s.to_owned()), None)
        }
        "ship" => {
            let Some(r) = input.ship_region.as_deref().filter(|s| !s.is_empty()) else {
                return bad("fulfilment `ship` needs ship_region".into());
            };
            (None, Some(r.to_owned()))
        }
        other => return bad(format!("fulfilment {other:?}: use `ship` or `collect`")),
    };
    let method = match input.payment.method.as_str() {
        "card" => "card",
        "gift_card" => "gift_card",
        other => {
            return bad(format!(
                "payment method {other:?}: online orders take `card` or `gift_card`"
            ));
        }
    };
    let token = CardToken::parse(input.payment.token.as_str())
        .map_err(|e| OrderError::Invalid(format!("payment.token: {e}")))?;
    let last4 =
        Last4::parse(&input.payment.last4).map_err(|e| OrderError::Invalid(format!("payment.last4: {e}")))?;
    Ok(Valid {
        lines: merged.into_iter().map(|(s, q)| (s.to_string(), q)).collect(),
        collect,
        region,
        token: token.as_str().to_owned(),
        last4: last4.as_str().to_owned(),
        method,
    })
}

struct Stock {
    kind: String,
    region: Option<String>,
    available: HashMap<String, i64>,
}

async fn availability(
    tx: &mut Transaction<'static, Any>,
    skus: &[&str],
) -> Result<BTreeMap<String, Stock>, sqlx::Error> {
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "SELECT l.location, s.kind, s.region, l.sku, l.on_hand - l.reserved FROM stock_levels l \
         JOIN stores s ON s.store_id = l.location WHERE l.sku IN {} AND l.on_hand - l.reserved > 0",
        sql::list(1, skus.len())
    )));
    for s in skus {
        q = q.bind(*s);
    }
    let mut out: BTreeMap<String, Stock> = BTreeMap::new();
    for r in q.fetch_all(&mut **tx).await? {
        let loc: String = r.try_get(0)?;
        let e = out.entry(loc).or_insert(Stock {
            kind: r.try_get(1)?,
            region: r.try_get(2)?,
            available: HashMap::new(),
        });
        e.available.insert(r.try_get(3)?, r.try_get(4)?);
    }
    Ok(out)
}

/// Plans where each line comes from (reads only): the best-ranked location
/// holding the whole order, or, if splits are allowed, the best per line.
async fn plan(
    tx: &mut Transaction<'static, Any>,
    rules: &[allocation::Rule],
    v: &Valid,
    allow_split: bool,
) -> Result<Vec<String>, OrderError> {
    let skus: Vec<&str> = v.lines.iter().map(|(s, _)| s.as_str()).collect();
    let stock = availability(tx, &skus).await?;
    let mut whole: Vec<Candidate> = stock
        .iter()
        .filter(|(loc, _)| v.collect.as_ref().is_none_or(|c| c == *loc))
        .filter_map(|(loc, s)| {
            let min = v
                .lines
                .iter()
                .map(|(sku, qty)| s.available.get(sku).copied().unwrap_or(0) - qty)
                .min()?;
            (min >= 0).then(|| Candidate {
                location: loc.clone(),
                kind: s.kind.clone(),
                region: s.region.clone(),
                available: min,
            })
        })
        .collect();
    allocation::rank(rules, v.region.as_deref(), &mut whole);
    if let Some(best) = whole.first() {
        return Ok(vec![best.location.clone(); v.lines.len()]);
    }
    let short = || {
        let missing: Vec<String> = v
            .lines
            .iter()
            .filter(|(sku, qty)| {
                !stock.iter().any(|(loc, s)| {
                    v.collect.as_ref().is_none_or(|c| c == loc)
                        && s.available.get(sku).copied().unwrap_or(0) >= *qty
                })
            })
            .map(|(sku, qty)| format!("{sku} x{qty}"))
            .collect();
        if missing.is_empty() {
            "not enough stock in any one location; allow_split lets lines come from several".to_owned()
        } else {
            format!(
                "out of stock{}: {}",
                v.collect.as_ref().map(|c| format!(" at {c}")).unwrap_or_default(),
                missing.join(", ")
            )
        }
    };
    if !allow_split || v.collect.is_some() {
        return Err(OrderError::OutOfStock(short()));
    }
    let mut out = Vec::with_capacity(v.lines.len());
    for (sku, qty) in &v.lines {
        let mut cands: Vec<Candidate> = stock
            .iter()
            .filter_map(|(loc, s)| {
                let a = s.available.get(sku).copied().unwrap_or(0);
                (a >= *qty).then(|| Candidate {
                    location: loc.clone(),
                    kind: s.kind.clone(),
                    region: s.region.clone(),
                    available: a,
                })
            })
            .collect();
        allocation::rank(rules, v.region.as_deref(), &mut cands);
        match cands.first() {
            Some(c) => out.push(c.location.clone()),
            None => return Err(OrderError::OutOfStock(short())),
        }
    }
    Ok(out)
}

/// Several status changes at once (the order ends in the last).
async fn history_many(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    changes: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    let Some((last, _)) = changes.last() else {
        return Ok(());
    };
    let now = now_ms();
    sqlx::query("UPDATE orders SET status = $2, updated_ms = $3 WHERE id = $1")
        .bind(order_id)
        .bind(*last)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    let text = sql::values(
        "INSERT INTO order_status_history (order_id, status, at_ms, note)",
        changes.len(),
        4,
        "",
    );
    let mut q = sqlx::query(AssertSqlSafe(text));
    for (status, note) in changes {
        q = q.bind(order_id).bind(*status).bind(now).bind(sql::text(note));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn history(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    status: &str,
    note: &str,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query("UPDATE orders SET status = $2, updated_ms = $3 WHERE id = $1")
        .bind(order_id)
        .bind(status)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO order_status_history (order_id, status, at_ms, note) VALUES ($1, $2, $3, $4)")
        .bind(order_id)
        .bind(status)
        .bind(now)
        .bind(sql::text(note))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Commerce {
    /// Places an online order and runs its saga; see the module docs.
    ///
    /// Step 1 plans the allocation from a read, writes the order, and
    /// reserves last (each reservation a conditional update), so the
    /// contended stock rows are locked only for the end of the transaction.
    /// If another order took the stock in between, the transaction rolls
    /// back and the plan is made again (at most 5 times).
    pub async fn create_order(
        &self,
        actor: &str,
        customer: Option<&str>,
        input: &OrderInput,
        idem: Option<&KeyRef>,
    ) -> Result<Created, OrderError> {
        let v = validate(input)?;
        let rules = allocation::load(&self.db).await?;
        let mut attempt = 0;
        let order_id = loop {
            attempt += 1;
            match self.reserve_order(actor, customer, input, &v, &rules, idem).await {
                Err(OrderError::State(m)) if m == RACED && attempt < 5 => {
                    metrics::counter!("hub_orders_replanned_total").increment(1);
                }
                Err(OrderError::State(m)) if m == RACED => {
                    return Err(OrderError::OutOfStock(
                        "the stock was taken by other orders while this one was placed; try again".into(),
                    ));
                }
                other => break other?,
            }
        };
        self.run_saga(&order_id).await?;
        let order = get(&self.db, &order_id)
            .await?
            .ok_or_else(|| OrderError::NotFound(order_id.clone()))?;
        Ok(match order.status.as_str() {
            "failed" => {
                let why = order.history.last().map(|h| h.note.clone()).unwrap_or_default();
                Created::Failed(order, why)
            }
            "reserved" => Created::Pending(order),
            _ => Created::Confirmed(order),
        })
    }

    /// Step 1 of the saga; returns the order id.
    async fn reserve_order(
        &self,
        actor: &str,
        customer: Option<&str>,
        input: &OrderInput,
        v: &Valid,
        rules: &[allocation::Rule],
        idem: Option<&KeyRef>,
    ) -> Result<String, OrderError> {
        let db = &self.db;
        let order_id = crate::auth::new_id();
        let now = now_ms();
        let mut tx = db.begin().await?;
        if let Some(c) = &v.collect {
            let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM stores WHERE store_id = $1")
                .bind(c.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if kind.as_deref() != Some("store") {
                return Err(OrderError::Invalid(format!("collect_at {c:?} is not a store")));
            }
        }
        let skus: Vec<&str> = v.lines.iter().map(|(s, _)| s.as_str()).collect();
        let products = catalog::products_lite(&mut tx, &skus).await?;
        let by_sku: HashMap<&str, &catalog::ProductView> =
            products.iter().map(|p| (p.sku.as_str(), p)).collect();
        for (sku, _) in &v.lines {
            match by_sku.get(sku.as_str()) {
                None => return Err(OrderError::Invalid(format!("product {sku} does not exist"))),
                Some(p) if !p.active => {
                    return Err(OrderError::Invalid(format!("product {sku} is not sold")));
                }
                _ => {}
            }
        }
        let locations = plan(&mut tx, rules, v, input.allow_split).await?;

        // Price each line where it is allocated.
        let mut lines = Vec::with_capacity(v.lines.len());
        let mut inputs = Vec::with_capacity(v.lines.len());
        let mut grams_by_location: BTreeMap<String, i64> = BTreeMap::new();
        let mut prices: HashMap<&str, HashMap<String, (i64, String)>> = HashMap::new();
        for loc in &locations {
            if !prices.contains_key(loc.as_str()) {
                let skus: Vec<String> = v
                    .lines
                    .iter()
                    .zip(&locations)
                    .filter(|(_, l)| *l == loc)
                    .map(|((s, _), _)| s.clone())
                    .collect();
                prices.insert(loc.as_str(), catalog::current_prices(&mut tx, &skus, loc).await?);
            }
        }
        for ((sku, qty), loc) in v.lines.iter().zip(&locations) {
            let p = by_sku[sku.as_str()];
            let Some((unit, currency)) = prices.get(loc.as_str()).and_then(|m| m.get(sku)).cloned() else {
                return Err(OrderError::Invalid(format!(
                    "product {sku} has no price at {loc}"
                )));
            };
            if currency != self.currency.as_str() {
                return Err(OrderError::Invalid(format!(
                    "product {sku} is priced in {currency} at {loc}; online orders are in {}",
                    self.currency.as_str()
                )));
            }
            let grams = p.measure == "grams";
            let n = u32::try_from(*qty).map_err(|_| OrderError::Invalid(format!("{sku}: qty too large")))?;
            let price_qty = if grams { Qty::grams(n) } else { Qty::each(n) }
                .map_err(|e| OrderError::Invalid(format!("{sku}: {e}")))?;
            inputs.push(PriceInput {
                sku: Sku::parse(sku.as_str()).map_err(|e| OrderError::Invalid(format!("{sku}: {e}")))?,
                qty: price_qty,
                unit_price: Money::new(unit, self.currency),
                fixed_amount: None,
                tax_rate_bp: p.tax_rate_bp,
            });
            *grams_by_location.entry(loc.clone()).or_insert(0) += p
                .unit_grams(self.settings.default_item_grams)
                .saturating_mul(*qty);
            lines.push((sku.clone(), *qty, unit, loc.clone()));
        }
        // The promotions stores apply, by the same rules (best one per line).
        let promotions = catalog::promotions_at(&mut tx, now).await?;
        let priced = pricing::price(&inputs, &promotions, self.settings.tax_included, self.currency)
            .map_err(|e| OrderError::Invalid(format!("the order's amounts do not add up: {e}")))?;
        let mut quotes = Vec::new();
        if let Some(region) = &v.region {
            for (loc, grams) in &grams_by_location {
                let q = shipping::quote(&mut tx, region, *grams).await?;
                let Some(best) = q.into_iter().find(|q| q.currency == self.currency.as_str()) else {
                    return Err(OrderError::Invalid(format!(
                        "no carrier ships {grams} g to region {region} (see /api/v1/shipping/rates)"
                    )));
                };
                quotes.push((loc.clone(), best));
            }
        }
        let (subtotal, discount, tax) = (priced.subtotal.minor, priced.discount.minor, priced.tax.minor);
        let shipping_total: i64 = quotes.iter().map(|(_, q)| q.price_minor).sum();
        let total = priced.total.minor + shipping_total;
        let single = locations
            .first()
            .filter(|l| locations.iter().all(|x| x == *l))
            .cloned();
        sqlx::query(
            "INSERT INTO orders (id, kind, status, customer_id, location, fulfilment, ship_region, currency, subtotal_minor, \
             discount_minor, tax_minor, shipping_minor, total_minor, allow_split, created_ms, updated_ms) \
             VALUES ($1, 'online', 'reserved', $2, $3, $4, $5, $6, $7, $13, $8, $9, $10, $11, $12, $12)",
        )
        .bind(order_id.as_str())
        .bind(customer)
        .bind(single)
        .bind(input.fulfilment.as_str())
        .bind(v.region.clone())
        .bind(self.currency.as_str())
        .bind(subtotal)
        .bind(tax)
        .bind(shipping_total)
        .bind(total)
        .bind(i64::from(input.allow_split))
        .bind(now)
        .bind(discount)
        .execute(&mut *tx)
        .await?;
        for (c, chunk) in lines.chunks(sql::CHUNK).enumerate() {
            let text = sql::values(
                "INSERT INTO order_lines (order_id, line_no, sku, qty, unit_price_minor, total_minor, tax_minor, location, \
                 discount_minor, promotion_id)",
                chunk.len(),
                10,
                "",
            );
            let mut q = sqlx::query(AssertSqlSafe(text));
            for (i, l) in chunk.iter().enumerate() {
                let n = c * sql::CHUNK + i;
                let p = &priced.lines[n];
                let promotion = p.discounts.first().and_then(|d| d.promotion_id.clone());
                let line_discount: i64 = p.discounts.iter().map(|d| d.amount.minor).sum();
                q = q
                    .bind(order_id.as_str())
                    .bind(n as i64 + 1)
                    .bind(l.0.as_str())
                    .bind(l.1)
                    .bind(l.2)
                    .bind(p.total.minor)
                    .bind(p.tax.minor)
                    .bind(l.3.as_str())
                    .bind(line_discount)
                    .bind(promotion);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO order_status_history (order_id, status, at_ms, note) VALUES ($1, 'created', $2, ''), ($1, 'reserved', $2, $3)")
            .bind(order_id.as_str())
            .bind(now)
            .bind(format!("stock reserved at {}", dedup(&locations).join(", ")))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sagas (order_id, step, attempts, lease_until_ms, card_token, card_last4, method, updated_ms) \
             VALUES ($1, 'authorize', 0, $2, $3, $4, $5, $6)",
        )
        .bind(order_id.as_str())
        .bind(now + self.settings.saga_lease_ms as i64)
        .bind(v.token.as_str())
        .bind(v.last4.as_str())
        .bind(v.method)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(k) = idem {
            crate::idempotency::set_resource(&mut tx, k, &order_id).await?;
        }
        audit::record(
            &mut tx,
            actor,
            "order_created",
            "order",
            &order_id,
            serde_json::json!({"total": total, "lines": lines.len(), "fulfilment": input.fulfilment}),
        )
        .await?;
        audit::record(
            &mut tx,
            "hub:saga",
            "stock_reserved",
            "order",
            &order_id,
            serde_json::json!({"locations": dedup(&locations)}),
        )
        .await?;
        // Last, the contended rows: reserve where planned.
        let wanted: Vec<(&str, &str, i64)> = v
            .lines
            .iter()
            .zip(&locations)
            .map(|((sku, qty), loc)| (loc.as_str(), sku.as_str(), *qty))
            .collect();
        if !stock::reserve_many(&mut tx, &wanted, &order_id).await? {
            return Err(OrderError::State(RACED.into()));
        }
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "reserved").increment(1);
        Ok(order_id)
    }

    /// Runs a saga from its current step until it is done, failed, or
    /// waiting for a provider retry.
    pub async fn run_saga(&self, order_id: &str) -> Result<(), sqlx::Error> {
        let db = &self.db;
        let row = sqlx::query(
            "SELECT s.step, s.attempts, COALESCE(s.card_token, ''), COALESCE(s.card_last4, ''), s.method, \
             o.total_minor, o.currency FROM sagas s JOIN orders o ON o.id = s.order_id WHERE s.order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&db.pool)
        .await?;
        let Some(row) = row else { return Ok(()) };
        let step: String = row.try_get(0)?;
        let attempts: i64 = row.try_get(1)?;
        let token: String = row.try_get(2)?;
        let last4: String = row.try_get(3)?;
        let method: String = row.try_get(4)?;
        let total: i64 = row.try_get(5)?;
        let currency: String = row.try_get(6)?;
        let amount = Money::new(total, Currency::parse(&currency).unwrap_or(self.currency));
        let key = format!("order-{order_id}");
        match step.as_str() {
            "authorize" if method == "gift_card" => {
                self.confirm(order_id, &key, None, &token, &last4, amount, true)
                    .await
            }
            "authorize" => {
                let outcome = self
                    .payments
                    .authorize_card(&key, amount, &token, self.payments.timeout)
                    .await;
                if self.abort_after_authorize {
                    tracing::error!(order_id, "failpoint abort_after_authorize: aborting");
                    std::process::abort();
                }
                match outcome {
                    Ok(AuthOutcome::Authorized { id, code }) => {
                        self.confirm(order_id, &key, Some((id, code)), &token, &last4, amount, false)
                            .await
                    }
                    Ok(AuthOutcome::Declined { reason }) => {
                        self.compensate(order_id, &format!("payment declined: {reason}"), false)
                            .await
                    }
                    Err(e) if attempts + 1 >= 3 => {
                        self.compensate(order_id, &format!("payment provider failed 3 times: {e}"), true)
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(order_id, error = %e, "authorisation failed; saga retries later");
                        sqlx::query(
                            "UPDATE sagas SET attempts = attempts + 1, lease_until_ms = $2, updated_ms = $3 \
                             WHERE order_id = $1 AND step = 'authorize'",
                        )
                        .bind(order_id)
                        .bind(now_ms() + 1_000 * (attempts + 1))
                        .bind(now_ms())
                        .execute(&db.pool)
                        .await?;
                        Ok(())
                    }
                }
            }
            "compensate" => self.compensate(order_id, "cancelled", true).await,
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn confirm(
        &self,
        order_id: &str,
        key: &str,
        auth: Option<(String, String)>,
        token: &str,
        last4: &str,
        amount: Money,
        gift: bool,
    ) -> Result<(), sqlx::Error> {
        let db = &self.db;
        let mut tx = db.begin().await?;
        let moved = sqlx::query(
            "UPDATE sagas SET step = 'done', payment_id = $2, updated_ms = $3 WHERE order_id = $1 AND step = 'authorize'",
        )
        .bind(order_id)
        .bind(key)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let row =
            |status: &'static str, reference: Option<String>, detail: String, captured: i64| NewPayment {
                id: key.to_owned(),
                key: key.to_owned(),
                order_id: Some(order_id.to_owned()),
                store_id: None,
                sale_id: None,
                method: if gift { "gift_card" } else { "card" },
                status,
                amount,
                captured,
                card_token: Some(token.to_owned()),
                card_last4: Some(last4.to_owned()),
                provider_ref: reference,
                offline: false,
                parent_id: None,
                detail,
            };
        if !moved {
            // Cancelled (or done by another worker) meanwhile. An
            // authorisation we hold but nobody recorded must be released.
            let recorded: Option<String> =
                sqlx::query_scalar("SELECT status FROM payments WHERE payment_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if recorded.is_none()
                && let Some((id, code)) = auth
            {
                payments::upsert_rows(&mut tx, &[row("void_pending", Some(id), code, 0)]).await?;
            }
            return tx.commit().await;
        }
        if gift {
            match payments::gift_card_debit(&mut tx, token, amount).await? {
                Ok(()) => {
                    payments::upsert_rows(
                        &mut tx,
                        &[row(
                            "authorized",
                            Some(format!("gift-{key}")),
                            "GIFT".into(),
                            amount.minor,
                        )],
                    )
                    .await?;
                }
                Err(reason) => {
                    drop(tx);
                    return self
                        .compensate(order_id, &format!("payment declined: {reason}"), false)
                        .await;
                }
            }
        } else if let Some((id, code)) = &auth {
            payments::upsert_rows(&mut tx, &[row("authorized", Some(id.clone()), code.clone(), 0)]).await?;
        }
        let mut events = vec![(
            "payment_authorized",
            serde_json::json!({"amount": amount.minor, "method": if gift { "gift_card" } else { "card" }}),
        )];
        // Fulfil: group lines by location.
        let rows = sqlx::query(
            "SELECT l.sku, l.qty, l.location, o.fulfilment, o.ship_region FROM order_lines l \
             JOIN orders o ON o.id = l.order_id WHERE l.order_id = $1 ORDER BY l.line_no",
        )
        .bind(order_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut groups: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        let (mut fulfilment, mut region) = (String::new(), None::<String>);
        for r in rows {
            let loc: Option<String> = r.try_get(2)?;
            groups
                .entry(loc.unwrap_or_default())
                .or_default()
                .push((r.try_get(0)?, r.try_get(1)?));
            fulfilment = r.try_get(3)?;
            region = r.try_get(4)?;
        }
        if fulfilment == "ship"
            && let Some(region) = &region
        {
            for (loc, lines) in &groups {
                let grams = self.grams(&mut tx, lines).await?;
                let q = shipping::quote(&mut tx, region, grams).await?;
                if let Some(best) = q.into_iter().find(|q| q.currency == amount.currency.as_str()) {
                    let id = shipping::create(&mut tx, order_id, loc, &best).await?;
                    events.push((
                        "shipment_created",
                        serde_json::json!({"shipment": id, "carrier": best.carrier, "from": loc}),
                    ));
                }
            }
        }
        let next = if fulfilment == "collect" {
            "picking"
        } else {
            "awaiting_shipment"
        };
        history_many(
            &mut tx,
            order_id,
            &[("confirmed", "payment authorised"), (next, "")],
        )
        .await?;
        // Last: the pick tasks (they lock each location's sync row, which
        // every order for that location takes: hold it for the least time).
        let task_ids: Vec<String> = groups.keys().map(|_| crate::auth::new_id()).collect();
        let listed: Vec<serde_json::Value> = groups
            .keys()
            .zip(&task_ids)
            .map(|(loc, task)| serde_json::json!({"task": task, "location": loc}))
            .collect();
        events.push(("pick_tasks_created", serde_json::json!({ "tasks": listed })));
        audit::record_many(&mut tx, "hub:saga", "order", order_id, &events).await?;
        for ((loc, lines), task) in groups.iter().zip(&task_ids) {
            tasks::create_as(
                &mut tx,
                db,
                task,
                loc,
                TaskKind::Pick,
                Some(order_id),
                lines,
                Some(if fulfilment == "collect" {
                    "click and collect: pick and hold for the customer".into()
                } else {
                    "pick for shipment".into()
                }),
            )
            .await?;
        }
        let kicked: Vec<String> = groups.keys().cloned().collect();
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "confirmed").increment(1);
        for s in kicked {
            if let Ok(id) = StoreId::parse(s) {
                self.kick.send(&id);
            }
        }
        Ok(())
    }

    async fn grams(
        &self,
        tx: &mut Transaction<'static, Any>,
        lines: &[(String, i64)],
    ) -> Result<i64, sqlx::Error> {
        let skus: Vec<&str> = lines.iter().map(|(s, _)| s.as_str()).collect();
        let products = catalog::products_lite(tx, &skus).await?;
        Ok(lines
            .iter()
            .map(|(sku, qty)| {
                products
                    .iter()
                    .find(|p| &p.sku == sku)
                    .map(|p| p.unit_grams(self.settings.default_item_grams))
                    .unwrap_or(self.settings.default_item_grams)
                    .saturating_mul(*qty)
            })
            .sum())
    }

    /// Releases everything an order holds and marks it failed (or
    /// cancelled). `void` asks the provider to release the authorisation.
    async fn compensate(&self, order_id: &str, why: &str, void: bool) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE sagas SET step = 'failed', updated_ms = $2 WHERE order_id = $1 AND step IN ('authorize', 'compensate')",
        )
        .bind(order_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !moved {
            return tx.commit().await;
        }
        let key = format!("order-{order_id}");
        let cancelled = why == "cancelled";
        if void {
            // The provider may hold an authorisation we never heard of.
            let (total, currency): (i64, String) =
                sqlx::query("SELECT total_minor, currency FROM orders WHERE id = $1")
                    .bind(order_id)
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|r| Ok((r.try_get(0)?, r.try_get(1)?)))?;
            let amount = Money::new(total, Currency::parse(&currency).unwrap_or(self.currency));
            payments::upsert_rows(
                &mut tx,
                &[NewPayment {
                    id: key.clone(),
                    key: key.clone(),
                    order_id: Some(order_id.to_owned()),
                    store_id: None,
                    sale_id: None,
                    method: "card",
                    status: "void_pending",
                    amount,
                    captured: 0,
                    card_token: None,
                    card_last4: None,
                    provider_ref: None,
                    offline: false,
                    parent_id: None,
                    detail: why.to_owned(),
                }],
            )
            .await?;
            payments::transition(&mut tx, &key, &["authorized"], "void_pending").await?;
        } else {
            sqlx::query(
                "INSERT INTO payments (id, payment_key, order_id, method, status, amount_minor, currency, detail, created_ms, updated_ms) \
                 SELECT $1, $1, id, 'card', 'declined', total_minor, currency, $2, $3, $3 FROM orders WHERE id = $4 \
                 ON CONFLICT (payment_key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(sql::text(why))
            .bind(now_ms())
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                "hub:saga",
                "payment_declined",
                "order",
                order_id,
                serde_json::json!({"reason": why}),
            )
            .await?;
        }
        let stores = self.release_all(&mut tx, order_id, why).await?;
        let status = if cancelled { "cancelled" } else { "failed" };
        history(&mut tx, order_id, status, why).await?;
        audit::record(
            &mut tx,
            "hub:saga",
            if cancelled {
                "order_cancelled"
            } else {
                "order_failed"
            },
            "order",
            order_id,
            serde_json::json!({"reason": why}),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => status).increment(1);
        for s in stores {
            if let Ok(id) = StoreId::parse(s) {
                self.kick.send(&id);
            }
        }
        Ok(())
    }

    /// Releases every reservation of an order still held (lines whose goods
    /// have not left) and withdraws its open tasks.
    async fn release_all(
        &self,
        tx: &mut Transaction<'static, Any>,
        order_id: &str,
        why: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        // Net reservation per location and SKU from the ledger: what this
        // order still holds.
        let rows = sqlx::query(
            "SELECT location, sku, CAST(SUM(delta) AS BIGINT) FROM stock_movements \
             WHERE reference = $1 AND kind IN ('reservation', 'release') GROUP BY location, sku",
        )
        .bind(order_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut released = Vec::new();
        for r in rows {
            let (loc, sku, held): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if held > 0 {
                stock::release(tx, &loc, &sku, held, order_id).await?;
                released.push(serde_json::json!({"location": loc, "sku": sku, "qty": held}));
            }
        }
        if !released.is_empty() {
            audit::record(
                tx,
                "hub:saga",
                "stock_released",
                "order",
                order_id,
                serde_json::json!({"released": released, "why": why}),
            )
            .await?;
        }
        tasks::cancel_for_order(tx, &self.db, order_id).await
    }

    /// Cancels an order whose goods have not left yet.
    pub async fn cancel(&self, actor: &str, order_id: &str, reason: &str) -> Result<OrderView, OrderError> {
        let db = &self.db;
        let mut tx = db.begin().await?;
        let status: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT status FROM orders WHERE id = $1 AND kind = 'online'{}",
            db.for_update()
        )))
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(status) = status else {
            return Err(OrderError::NotFound(format!("online order {order_id}")));
        };
        match status.as_str() {
            "reserved" => {
                // The saga is still running: hand it the compensation.
                sqlx::query("UPDATE sagas SET step = 'compensate', lease_until_ms = 0 WHERE order_id = $1 AND step = 'authorize'")
                    .bind(order_id)
                    .execute(&mut *tx)
                    .await?;
                audit::record(
                    &mut tx,
                    actor,
                    "order_cancel_requested",
                    "order",
                    order_id,
                    serde_json::json!({"reason": reason}),
                )
                .await?;
                tx.commit().await?;
                self.run_saga(order_id).await?;
            }
            "confirmed" | "picking" | "awaiting_shipment" => {
                let shipped: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM shipments WHERE order_id = $1 AND status <> 'label_created'",
                )
                .bind(order_id)
                .fetch_one(&mut *tx)
                .await?;
                if shipped > 0 {
                    return Err(OrderError::State(
                        "a shipment has left; cancel is not possible, refund instead".into(),
                    ));
                }
                let stores = self.release_all(&mut tx, order_id, reason).await?;
                let key = format!("order-{order_id}");
                payments::transition(&mut tx, &key, &["authorized"], "void_pending").await?;
                sqlx::query("UPDATE shipments SET status = 'cancelled', updated_ms = $2 WHERE order_id = $1")
                    .bind(order_id)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                history(&mut tx, order_id, "cancelled", reason).await?;
                audit::record(
                    &mut tx,
                    actor,
                    "order_cancelled",
                    "order",
                    order_id,
                    serde_json::json!({"reason": reason}),
                )
                .await?;
                tx.commit().await?;
                for s in stores {
                    if let Ok(id) = StoreId::parse(s) {
                        self.kick.send(&id);
                    }
                }
            }
            other => {
                return Err(OrderError::State(format!(
                    "order {order_id} is {other}; only orders whose goods have not left can be cancelled"
                )));
            }
        }
        get(db, order_id)
            .await?
            .ok_or_else(|| OrderError::NotFound(order_id.into()))
    }

    /// A shipment event (through the API): goods leave on the first
    /// `in_transit`; the order completes when every shipment is delivered.
    pub async fn shipment_event(
        &self,
        actor: &str,
        shipment_id: &str,
        e: &shipping::ShipmentEvent,
    ) -> Result<ShipmentView, OrderError> {
        let db = &self.db;
        let mut tx = db.begin().await?;
        let (order_id, from, old) = match shipping::add_event(&mut tx, db, shipment_id, e).await? {
            None => return Err(OrderError::NotFound(format!("shipment {shipment_id}"))),
            Some(Err(m)) => return Err(OrderError::State(m)),
            Some(Ok(x)) => x,
        };
        if old == "label_created" && e.status == "in_transit" {
            let rows = sqlx::query("SELECT sku, qty FROM order_lines WHERE order_id = $1 AND location = $2")
                .bind(order_id.as_str())
                .bind(from.as_str())
                .fetch_all(&mut *tx)
                .await?;
            for r in rows {
                let (sku, qty): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
                stock::fulfil(&mut tx, &from, &sku, qty, &order_id).await?;
            }
            payments::transition(
                &mut tx,
                &format!("order-{order_id}"),
                &["authorized"],
                "pending_capture",
            )
            .await?;
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM shipments WHERE order_id = $1 AND status NOT IN ('delivered', 'cancelled')",
        )
        .bind(order_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM shipments WHERE order_id = $1 AND status = 'label_created'",
        )
        .bind(order_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if open == 0 {
            history(&mut tx, &order_id, "completed", "delivered").await?;
        } else if waiting == 0 && e.status == "in_transit" && old == "label_created" {
            history(&mut tx, &order_id, "shipped", "").await?;
        }
        audit::record(
            &mut tx,
            actor,
            "shipment_event",
            "shipment",
            shipment_id,
            serde_json::to_value(e).unwrap_or_default(),
        )
        .await?;
        tx.commit().await?;
        shipping::list(db, None, Some(shipment_id))
            .await?
            .pop()
            .ok_or_else(|| OrderError::NotFound(format!("shipment {shipment_id}")))
    }
}

/// Applies a store's task update to the order it serves (inside the
/// ingest transaction): a click-and-collect pick `done` hands the goods
/// over (stock leaves, payment captured, order completed); `failed`
/// cancels the order with its compensations.
pub async fn on_task_update(
    tx: &mut Transaction<'static, Any>,
    store: &str,
    applied: &tasks::Applied,
) -> Result<(), sqlx::Error> {
    let Some(order_id) = &applied.order_id else {
        return Ok(());
    };
    let row = sqlx::query("SELECT status, fulfilment FROM orders WHERE id = $1")
        .bind(order_id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(()) };
    let (status, fulfilment): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
    let actor = format!("store:{store}");
    match applied.status {
        "done" if status == "picking" && fulfilment.as_deref() == Some("collect") => {
            let rows = sqlx::query("SELECT sku, qty FROM order_lines WHERE order_id = $1 AND location = $2")
                .bind(order_id.as_str())
                .bind(store)
                .fetch_all(&mut **tx)
                .await?;
            for r in rows {
                let (sku, qty): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
                stock::fulfil(tx, store, &sku, qty, order_id).await?;
            }
            payments::transition(
                tx,
                &format!("order-{order_id}"),
                &["authorized"],
                "pending_capture",
            )
            .await?;
            history(tx, order_id, "completed", "collected by the customer").await?;
            audit::record(
                tx,
                &actor,
                "order_collected",
                "order",
                order_id,
                serde_json::json!({"task": applied.task_id}),
            )
            .await?;
        }
        "done" => {
            audit::record(
                tx,
                &actor,
                "order_picked",
                "order",
                order_id,
                serde_json::json!({"task": applied.task_id}),
            )
            .await?;
        }
        "failed" if matches!(status.as_str(), "picking" | "awaiting_shipment" | "confirmed") => {
            let note = format!(
                "pick failed at {store}: {}",
                applied.note.as_deref().unwrap_or("no reason given")
            );
            let rows = sqlx::query(
                "SELECT location, sku, CAST(SUM(delta) AS BIGINT) FROM stock_movements \
                 WHERE reference = $1 AND kind IN ('reservation', 'release') GROUP BY location, sku",
            )
            .bind(order_id.as_str())
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                let (loc, sku, held): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                if held > 0 {
                    stock::release(tx, &loc, &sku, held, order_id).await?;
                }
            }
            payments::transition(tx, &format!("order-{order_id}"), &["authorized"], "void_pending").await?;
            sqlx::query("UPDATE shipments SET status = 'cancelled', updated_ms = $2 WHERE order_id = $1 AND status = 'label_created'")
                .bind(order_id.as_str())
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
            history(tx, order_id, "cancelled", &note).await?;
            audit::record(
                tx,
                &actor,
                "order_cancelled",
                "order",
                order_id,
                serde_json::json!({"reason": note}),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// Resumes sagas whose lease expired (their runner died) until `shutdown`.
pub async fn worker(c: Commerce, poll: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = resume_expired(&c, 50).await {
            tracing::warn!(error = %e, "saga worker pass failed");
        }
    }
}

/// One pass: claims and runs sagas whose lease expired; returns how many.
pub async fn resume_expired(c: &Commerce, limit: i64) -> Result<usize, sqlx::Error> {
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT order_id, lease_until_ms FROM sagas WHERE step NOT IN ('done', 'failed') AND lease_until_ms < $1 \
         ORDER BY lease_until_ms LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&c.db.pool)
    .await?;
    let mut n = 0;
    for r in rows {
        let (id, lease): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        let claimed =
            sqlx::query("UPDATE sagas SET lease_until_ms = $2 WHERE order_id = $1 AND lease_until_ms = $3")
                .bind(id.as_str())
                .bind(now + c.settings.saga_lease_ms as i64)
                .bind(lease)
                .execute(&c.db.pool)
                .await?
                .rows_affected()
                == 1;
        if claimed {
            tracing::info!(order_id = %id, "resuming saga");
            metrics::counter!("hub_sagas_resumed_total").increment(1);
            c.run_saga(&id).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// One order with its lines, history, payments, shipments and tasks.
pub async fn get(db: &Db, id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, kind, status, customer_id, location, fulfilment, ship_region, currency, subtotal_minor, discount_minor, \
         tax_minor, shipping_minor, total_minor, store_id, sale_id, created_ms, updated_ms FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let kind: String = r.try_get(1)?;
    let sale_id: Option<Vec<u8>> = r.try_get(14)?;
    let lines = if kind == "store" {
        store_sale_lines(db, sale_id.as_deref()).await?
    } else {
        sqlx::query(
            "SELECT line_no, sku, qty, unit_price_minor, total_minor, tax_minor, location, discount_minor, promotion_id \
             FROM order_lines WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|l| {
            Ok(LineView {
                line_no: l.try_get(0)?,
                sku: l.try_get(1)?,
                qty: l.try_get(2)?,
                unit_price_minor: l.try_get(3)?,
                total_minor: l.try_get(4)?,
                tax_minor: l.try_get(5)?,
                location: l.try_get(6)?,
                discount_minor: l.try_get(7)?,
                promotion_id: l.try_get(8)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?
    };
    let history =
        sqlx::query("SELECT status, at_ms, note FROM order_status_history WHERE order_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|h| {
                Ok(HistoryView {
                    status: h.try_get(0)?,
                    at_ms: h.try_get(1)?,
                    note: h.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(OrderView {
        id: r.try_get(0)?,
        kind,
        status: r.try_get(2)?,
        customer_id: r.try_get(3)?,
        location: r.try_get(4)?,
        fulfilment: r.try_get(5)?,
        ship_region: r.try_get(6)?,
        currency: r.try_get(7)?,
        subtotal_minor: r.try_get(8)?,
        discount_minor: r.try_get(9)?,
        tax_minor: r.try_get(10)?,
        shipping_minor: r.try_get(11)?,
        total_minor: r.try_get(12)?,
        store_id: r.try_get(13)?,
        lines,
        history,
        payments: payments::list(db, Some(id), None, "", 100).await?,
        shipments: shipping::list(db, Some(id), None).await?,
        tasks: tasks::list(db, None, None, Some(id), "", 100).await?,
        created_ms: r.try_get(15)?,
        updated_ms: r.try_get(16)?,
    }))
}

async fn store_sale_lines(db: &Db, sale_id: Option<&[u8]>) -> Result<Vec<LineView>, sqlx::Error> {
    let Some(sale_id) = sale_id else {
        return Ok(Vec::new());
    };
    let body: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM events WHERE ref_id = $1 AND kind = 'sale'")
            .bind(sale_id.to_vec())
            .fetch_optional(&db.pool)
            .await?;
    let Some(Ok(e)) = body.map(|b| storegate_protocol::envelope::decode_event(&b)) else {
        return Ok(Vec::new());
    };
    let EventBody::Sale(s) = e.body else {
        return Ok(Vec::new());
    };
    Ok(s.lines
        .iter()
        .map(|l| LineView {
            line_no: i64::from(l.line_no),
            sku: l.sku.to_string(),
            qty: l.qty.base_units(),
            unit_price_minor: l.unit_price.minor,
            total_minor: l.total.minor,
            tax_minor: l.tax.minor,
            location: None,
            discount_minor: l.discounts.iter().map(|d| d.amount.minor).sum(),
            promotion_id: l.discounts.first().and_then(|d| d.promotion_id.clone()),
        })
        .collect())
}

/// Orders, newest first, filtered; `before` is the id to continue after.
pub async fn list(
    db: &Db,
    customer: Option<&str>,
    status: Option<&str>,
    kind: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<OrderSummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, kind, status, customer_id, location, total_minor, currency, created_ms FROM orders \
         WHERE ($1 = '' OR customer_id = $1) AND ($2 = '' OR status = $2) AND ($3 = '' OR kind = $3) \
         AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $5",
    )
    .bind(customer.unwrap_or(""))
    .bind(status.unwrap_or(""))
    .bind(kind.unwrap_or(""))
    .bind(before.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OrderSummary {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                status: r.try_get(2)?,
                customer_id: r.try_get(3)?,
                location: r.try_get(4)?,
                total_minor: r.try_get(5)?,
                currency: r.try_get(6)?,
                created_ms: r.try_get(7)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_input_is_checked() {
        let mut input = OrderInput {
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
            fulfilment: "ship".into(),
            collect_at: None,
            ship_region: Some("north".into()),
            allow_split: false,
            payment: PaymentInput {
                method: "card".into(),
                token: "tok_visa".into(),
                last4: "4242".into(),
            },
            customer_id: None,
        };
        let v = validate(&input).unwrap();
        assert_eq!(v.lines, vec![("A".to_string(), 3)]);
        input.payment.token = "4242424242424242".into();
        assert!(validate(&input).unwrap_err().to_string().contains("card number"));
        input.payment.token = "tok".into();
        input.fulfilment = "collect".into();
        assert!(validate(&input).unwrap_err().to_string().contains("collect_at"));
        input.fulfilment = "teleport".into();
        assert!(validate(&input).is_err());
    }
}
