//! POS lanes: what a till asks the edge, request by request.
//!
//! Each lane has at most one open basket, held in memory until the sale
//! completes; completion records the sale durably (journal commit) before
//! the lane is told it is done. Prices, promotions and products come from
//! the store's catalog replica, so a lane keeps selling with the WAN down.
//!
//! Card payments are authorised online through the hub (RPC with a
//! deadline). When the hub cannot be asked (no connection, no answer in
//! time, or the hub says its provider is unavailable) a payment card may be
//! taken offline, store-and-forward, within the store's caps: a limit per
//! transaction, a cumulative limit on unsettled offline payments, and a
//! time window for the oldest unsettled one. Beyond them the lane is told
//! to take another tender. Gift cards are online only. After a timeout the
//! edge asks the hub to void the authorisation it may have made, so
//! nothing is left dangling. Card data is a terminal token and the last
//! four digits, never a card number.

use std::sync::Arc;
use std::time::Duration;

use storegate_protocol::device::{
    BasketView, BusError, ErrorCode, LineView, PosOp, PosResult, PriceView, ReceiptView, RefundMethod,
    ReturnItem, ReturnView, TenderView,
};
use storegate_protocol::downlink::ConfigValue;
use storegate_protocol::event::{
    CardAuth, CardPayment, CardRef, CardToken, EventBody, Last4, PaymentVoid, Return, ReturnLine, Sale,
    SaleLine, SaleVoid, Tender, TenderMethod, Totals, WeightRecord,
};
use storegate_protocol::rpc::{CardKind, RpcCall, RpcRequest, RpcResult};
use storegate_protocol::{Currency, EventId, Gtin, LaneId, Measure, Money, Qty, Sku, StoreId};

use crate::barcode::{self, Decoded, VariableLayout};
use crate::catalog::{Catalog, ProductRow};
use crate::journal::{Journal, JournalError, now_ms};
use crate::pricing::{self, LineInput};
use crate::scale::{ScaleError, ScaleHandle};
use crate::sync::{RpcError, SyncHandle};

/// Offline card payment caps (the hub may override them with config
/// `payments.offline.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineCaps {
    /// Offline card payments allowed at all.
    pub enabled: bool,
    /// Most per payment, minor units.
    pub per_txn_minor: i64,
    /// Most unsettled in all, minor units.
    pub total_minor: i64,
    /// Oldest unsettled payment allowed, seconds.
    pub window_secs: i64,
}

/// Settings of the lanes.
#[derive(Debug, Clone)]
pub struct PosConfig {
    /// This store.
    pub store: StoreId,
    /// Its currency.
    pub currency: Currency,
    /// Prices include tax (EU) or not (US).
    pub tax_included: bool,
    /// How long a card authorisation may take.
    pub card_timeout: Duration,
    /// How long the scale may take to settle.
    pub weigh_timeout: Duration,
    /// Offline caps unless the hub set others.
    pub offline: OfflineCaps,
    /// GS1 variable-measure layouts.
    pub layouts: Vec<VariableLayout>,
}

/// What every lane shares.
#[derive(Debug, Clone)]
pub struct PosCtx {
    /// Where sales go.
    pub journal: Journal,
    /// Products and prices.
    pub catalog: Catalog,
    /// The hub, for card authorisations.
    pub sync: SyncHandle,
    /// Settings.
    pub cfg: Arc<PosConfig>,
}

#[derive(Debug, Clone)]
struct Line {
    sku: Sku,
    name: String,
    measure: Measure,
    qty: Qty,
    unit_price: Money,
    fixed: Option<Money>,
    tax_rate_bp: u32,
    gtin: Option<Gtin>,
}

#[derive(Debug, Clone)]
struct Basket {
    id: EventId,
    cashier: Option<String>,
    customer: Option<String>,
    started_ms: i64,
    lines: Vec<Line>,
    tenders: Vec<Tender>,
    change: i64,
}

/// One lane.
#[derive(Debug)]
pub struct Lane {
    /// Its id.
    pub id: LaneId,
    /// The scale weighed goods go on, if the lane has one.
    scale: Option<ScaleHandle>,
    /// The open basket.
    basket: Option<Basket>,
    /// Shared context.
    ctx: PosCtx,
}

fn err(code: ErrorCode, message: impl Into<String>) -> BusError {
    BusError::new(code, message)
}

fn internal(e: impl std::fmt::Display) -> BusError {
    tracing::error!(error = %e, "lane internal error");
    err(ErrorCode::Internal, "internal error; retry")
}

fn new_id() -> EventId {
    EventId::from_parts(now_ms().max(0) as u64, rand::random::<u128>())
}

struct Resolved {
    product: ProductRow,
    gtin: Option<Gtin>,
    grams: Option<u32>,
    fixed_minor: Option<i64>,
}

fn tender_view(t: &Tender) -> TenderView {
    let (method, last4, auth_code, offline) = match &t.method {
        TenderMethod::Cash { .. } => ("cash", None, None, false),
        TenderMethod::Card(c) | TenderMethod::GiftCard(c) => {
            let m = if matches!(t.method, TenderMethod::Card(_)) {
                "card"
            } else {
                "gift_card"
            };
            match &c.auth {
                CardAuth::Online { auth_code, .. } => (
                    m,
                    Some(c.card.last4.as_str().to_owned()),
                    Some(auth_code.clone()),
                    false,
                ),
                CardAuth::StoreAndForward { .. } => (m, Some(c.card.last4.as_str().to_owned()), None, true),
            }
        }
    };
    TenderView {
        method: method.into(),
        amount: t.amount.minor,
        last4,
        auth_code,
        offline,
    }
}

fn line_view(i: usize, l: &Line, p: &pricing::PricedLine) -> LineView {
    LineView {
        line: (i + 1) as u16,
        sku: l.sku.clone(),
        name: l.name.clone(),
        measure: l.measure,
        quantity: l.qty.base_units() as u32,
        unit_price: l.unit_price.minor,
        discount: p.gross.minor - p.total.minor,
        tax: p.tax.minor,
        total: p.total.minor,
    }
}

impl Lane {
    /// A lane with an optional scale.
    pub fn new(id: LaneId, scale: Option<ScaleHandle>, ctx: PosCtx) -> Self {
        Lane {
            id,
            scale,
            basket: None,
            ctx,
        }
    }

    /// Handles one request.
    pub async fn handle(&mut self, op: PosOp) -> Result<PosResult, BusError> {
        match op {
            PosOp::OpenBasket { cashier, customer } => {
                if self.basket.is_some() {
                    return Err(err(
                        ErrorCode::BasketOpen,
                        "a basket is already open at this lane",
                    ));
                }
                self.open(cashier, customer);
                self.basket_view().await
            }
            PosOp::AddItem {
                code,
                sku,
                qty,
                grams,
            } => self.add_item(code, sku, qty, grams).await,
            PosOp::RemoveLine { line } => {
                let b = self.open_basket()?;
                if !b.tenders.is_empty() {
                    return Err(err(
                        ErrorCode::TendersTaken,
                        "tenders were taken; cancel the basket to change it",
                    ));
                }
                let idx = usize::from(line).checked_sub(1).filter(|i| *i < b.lines.len());
                let Some(i) = idx else {
                    return Err(err(ErrorCode::LineNotFound, format!("no line {line}")));
                };
                b.lines.remove(i);
                self.basket_view().await
            }
            PosOp::Totals => {
                self.open_basket()?;
                self.basket_view().await
            }
            PosOp::TenderCash { amount } => self.tender_cash(amount).await,
            PosOp::TenderCard {
                token,
                last4,
                brand,
                amount,
            } => {
                self.tender_card(CardKind::Payment, CardRef { token, last4, brand }, amount)
                    .await
            }
            PosOp::TenderGiftCard { token, last4, amount } => {
                self.tender_card(
                    CardKind::GiftCard,
                    CardRef {
                        token,
                        last4,
                        brand: None,
                    },
                    amount,
                )
                .await
            }
            PosOp::Complete => self.complete().await,
            PosOp::CancelBasket => self.cancel().await,
            PosOp::VoidSale { sale_id, reason } => self.void(sale_id, reason).await,
            PosOp::ReturnItems {
                sale_id,
                lines,
                refund,
                reason,
            } => self.return_items(sale_id, lines, refund, reason).await,
            PosOp::PriceLookup { code, sku } => self.price_lookup(code, sku).await,
            PosOp::Receipt { sale_id } => {
                let (sale, seq, voided) = self.load_sale(sale_id).await?;
                Ok(PosResult::Sale(self.receipt(&sale, seq, voided)))
            }
        }
    }

    /// A scan from the lane's scanner: adds the item.
    pub async fn scan(&mut self, code: String) -> Result<PosResult, BusError> {
        self.add_item(Some(code), None, None, None).await
    }

    fn open(&mut self, cashier: Option<String>, customer: Option<String>) {
        self.basket = Some(Basket {
            id: new_id(),
            cashier,
            customer,
            started_ms: now_ms(),
            lines: Vec::new(),
            tenders: Vec::new(),
            change: 0,
        });
    }

    fn open_basket(&mut self) -> Result<&mut Basket, BusError> {
        self.basket
            .as_mut()
            .ok_or_else(|| err(ErrorCode::NoOpenBasket, "no basket is open at this lane"))
    }

    async fn resolve(&self, code: Option<&str>, sku: Option<&Sku>) -> Result<Resolved, BusError> {
        let catalog = &self.ctx.catalog;
        if let Some(code) = code {
            let scan = barcode::decode(code, &self.ctx.cfg.layouts)
                .map_err(|e| err(ErrorCode::InvalidBarcode, e.to_string()))?;
            return match scan.decoded {
                Decoded::Gtin(g) => {
                    let product = catalog
                        .by_gtin14(&g.to_gtin14())
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| {
                            err(ErrorCode::UnknownBarcode, format!("no product has barcode {g}"))
                        })?;
                    Ok(Resolved {
                        product,
                        gtin: Some(g),
                        grams: None,
                        fixed_minor: None,
                    })
                }
                Decoded::Variable {
                    item_gtin,
                    grams,
                    price_minor,
                } => {
                    let product = catalog
                        .by_gtin14(&format!("{item_gtin:0>14}"))
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| {
                            err(
                                ErrorCode::UnknownBarcode,
                                format!("no product for variable-measure item {item_gtin}"),
                            )
                        })?;
                    Ok(Resolved {
                        product,
                        gtin: Gtin::parse(code.trim()).ok(),
                        grams,
                        fixed_minor: price_minor,
                    })
                }
            };
        }
        if let Some(sku) = sku {
            let product = catalog
                .by_sku(sku.as_str())
                .await
                .map_err(internal)?
                .ok_or_else(|| err(ErrorCode::UnknownSku, format!("no product {sku}")))?;
            return Ok(Resolved {
                product,
                gtin: None,
                grams: None,
                fixed_minor: None,
            });
        }
        Err(err(ErrorCode::BadRequest, "add_item needs a code or a sku"))
    }

    async fn weigh(&self) -> Result<u32, BusError> {
        let scale = self.scale.as_ref().ok_or_else(|| {
            err(
                ErrorCode::WeightRequired,
                "this product is sold by weight and the lane has no scale; send grams",
            )
        })?;
        let mg = scale
            .weigh(self.ctx.cfg.weigh_timeout)
            .await
            .map_err(|e| match e {
                ScaleError::Unstable => err(ErrorCode::ScaleUnstable, "the scale did not settle; try again"),
                ScaleError::Range(r) => err(ErrorCode::ScaleRange, format!("scale {r}")),
                other => err(ErrorCode::ScaleUnavailable, other.to_string()),
            })?;
        // The reading is telemetry too (dropped first under disk pressure).
        let journal = self.ctx.journal.clone();
        let body = EventBody::Weight(WeightRecord {
            device: scale.id.clone(),
            milligrams: mg,
            stable: true,
        });
        tokio::spawn(async move {
            let _ = journal.record(body, None).await;
        });
        let grams = (mg + 500) / 1000;
        if grams <= 0 {
            return Err(err(ErrorCode::ScaleUnstable, "nothing on the scale"));
        }
        u32::try_from(grams).map_err(|_| err(ErrorCode::ScaleRange, "weight out of range"))
    }

    async fn add_item(
        &mut self,
        code: Option<String>,
        sku: Option<Sku>,
        qty: Option<u32>,
        grams: Option<u32>,
    ) -> Result<PosResult, BusError> {
        if self.basket.as_ref().is_some_and(|b| !b.tenders.is_empty()) {
            return Err(err(
                ErrorCode::TendersTaken,
                "tenders were taken; complete or cancel first",
            ));
        }
        let r = self.resolve(code.as_deref(), sku.as_ref()).await?;
        if !r.product.active {
            return Err(err(
                ErrorCode::ProductInactive,
                format!("{} may not be sold", r.product.sku),
            ));
        }
        let currency = self.ctx.cfg.currency;
        let price = self
            .ctx
            .catalog
            .price(r.product.sku.as_str(), now_ms())
            .await
            .map_err(internal)?;
        let fixed = r.fixed_minor.map(|m| Money::new(m, currency));
        let unit_price = match (price, fixed) {
            (Some(p), _) => p,
            (None, Some(f)) => f,
            (None, None) => return Err(err(ErrorCode::NoPrice, format!("{} has no price", r.product.sku))),
        };
        if unit_price.currency != currency {
            return Err(err(
                ErrorCode::NoPrice,
                format!("{} is priced in {}", r.product.sku, unit_price.currency),
            ));
        }
        let qty = match r.product.measure {
            Measure::Each => {
                Qty::each(qty.unwrap_or(1)).map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?
            }
            Measure::Grams => {
                let g = match grams.or(r.grams) {
                    Some(g) => g,
                    None if fixed.is_some() => 1,
                    None => self.weigh().await?,
                };
                Qty::grams(g).map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?
            }
        };
        if self.basket.is_none() {
            self.open(None, None);
        }
        let b = self.open_basket()?;
        b.lines.push(Line {
            sku: r.product.sku,
            name: r.product.name,
            measure: r.product.measure,
            qty,
            unit_price,
            fixed,
            tax_rate_bp: r.product.tax_rate_bp,
            gtin: r.gtin,
        });
        metrics::counter!("edge_pos_items_total").increment(1);
        self.basket_view().await
    }

    async fn priced(&self, b: &Basket) -> Result<pricing::Priced, BusError> {
        let promotions = self
            .ctx
            .catalog
            .promotions(b.started_ms)
            .await
            .map_err(internal)?;
        let inputs: Vec<LineInput> = b
            .lines
            .iter()
            .map(|l| LineInput {
                sku: l.sku.clone(),
                qty: l.qty,
                unit_price: l.unit_price,
                fixed_amount: l.fixed,
                tax_rate_bp: l.tax_rate_bp,
            })
            .collect();
        pricing::price(
            &inputs,
            &promotions,
            self.ctx.cfg.tax_included,
            self.ctx.cfg.currency,
        )
        .map_err(internal)
    }

    async fn basket_view(&mut self) -> Result<PosResult, BusError> {
        let b = self
            .basket
            .clone()
            .ok_or_else(|| err(ErrorCode::NoOpenBasket, "no basket is open"))?;
        let p = self.priced(&b).await?;
        let paid: i64 = b.tenders.iter().map(|t| t.amount.minor).sum();
        Ok(PosResult::Basket(BasketView {
            basket_id: b.id,
            currency: self.ctx.cfg.currency.to_string(),
            lines: b
                .lines
                .iter()
                .zip(&p.lines)
                .enumerate()
                .map(|(i, (l, pl))| line_view(i, l, pl))
                .collect(),
            subtotal: p.subtotal.minor,
            discount: p.discount.minor,
            tax: p.tax.minor,
            total: p.total.minor,
            paid,
            due: (p.total.minor - paid).max(0),
            change: b.change,
            tenders: b.tenders.iter().map(tender_view).collect(),
        }))
    }

    async fn due(&mut self) -> Result<i64, BusError> {
        let b = self.open_basket()?.clone();
        if b.lines.is_empty() {
            return Err(err(ErrorCode::BadRequest, "the basket is empty"));
        }
        let p = self.priced(&b).await?;
        let paid: i64 = b.tenders.iter().map(|t| t.amount.minor).sum();
        Ok(p.total.minor - paid)
    }

    async fn tender_cash(&mut self, amount: i64) -> Result<PosResult, BusError> {
        if amount <= 0 {
            return Err(err(ErrorCode::InvalidAmount, "cash amount must be positive"));
        }
        let due = self.due().await?;
        if due <= 0 {
            return Err(err(ErrorCode::InvalidAmount, "nothing is due"));
        }
        let currency = self.ctx.cfg.currency;
        let applied = amount.min(due);
        let b = self.open_basket()?;
        b.change += amount - applied;
        b.tenders.push(Tender {
            payment_key: new_id(),
            amount: Money::new(applied, currency),
            method: TenderMethod::Cash {
                received: Money::new(amount, currency),
            },
        });
        self.basket_view().await
    }

    async fn caps(&self) -> OfflineCaps {
        let mut caps = self.ctx.cfg.offline;
        let c = &self.ctx.catalog;
        if let Ok(Some(ConfigValue::Bool(b))) = c.config("payments.offline.enabled").await {
            caps.enabled = b;
        }
        if let Ok(Some(ConfigValue::Money(m))) = c.config("payments.offline.per_txn_limit").await {
            caps.per_txn_minor = m.minor;
        }
        if let Ok(Some(ConfigValue::Money(m))) = c.config("payments.offline.total_limit").await {
            caps.total_minor = m.minor;
        }
        if let Ok(Some(ConfigValue::Int(s))) = c.config("payments.offline.window_secs").await {
            caps.window_secs = s;
        }
        caps
    }

    /// Whether an offline card payment of `amount` fits the caps; the
    /// reason for the lane if not.
    async fn offline_allowed(&mut self, amount: i64) -> Result<(), BusError> {
        let caps = self.caps().await;
        let refuse = |why: String| {
            Err(err(
                ErrorCode::OfflineLimit,
                format!("{why}; take another tender"),
            ))
        };
        let money = |m: i64| Money::new(m, self.ctx.cfg.currency).to_string();
        if !caps.enabled {
            return refuse("card payments cannot be taken offline at this store".into());
        }
        if amount > caps.per_txn_minor {
            return refuse(format!(
                "offline card payments are limited to {} each",
                money(caps.per_txn_minor)
            ));
        }
        let row: (i64, Option<i64>) = sqlx::query_as(
            "SELECT COALESCE(SUM(amount_minor), 0), MIN(created_ms) FROM payments WHERE offline = 1 AND status = 'pending_capture'",
        )
        .fetch_one(self.ctx.journal.reader())
        .await
        .map_err(internal)?;
        let in_basket: i64 = self
            .basket
            .as_ref()
            .map(|b| {
                b.tenders
                    .iter()
                    .filter(|t| {
                        matches!(&t.method, TenderMethod::Card(c) if matches!(c.auth, CardAuth::StoreAndForward { .. }))
                    })
                    .map(|t| t.amount.minor)
                    .sum()
            })
            .unwrap_or(0);
        if row.0 + in_basket + amount > caps.total_minor {
            return refuse(format!(
                "unsettled offline card payments would exceed {}",
                money(caps.total_minor)
            ));
        }
        if let Some(oldest) = row.1
            && now_ms() - oldest > caps.window_secs * 1000
        {
            return refuse(
                "offline card payments older than the settlement window are still unsettled".into(),
            );
        }
        Ok(())
    }

    async fn tender_card(
        &mut self,
        kind: CardKind,
        card: CardRef,
        amount: i64,
    ) -> Result<PosResult, BusError> {
        if amount <= 0 {
            return Err(err(ErrorCode::InvalidAmount, "card amount must be positive"));
        }
        let due = self.due().await?;
        if amount > due {
            return Err(err(ErrorCode::InvalidAmount, format!("only {due} is due")));
        }
        let currency = self.ctx.cfg.currency;
        let payment_key = new_id();
        let request = RpcRequest {
            correlation_id: new_id(),
            sent_at_ms: now_ms(),
            timeout_ms: self.ctx.cfg.card_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            call: RpcCall::CardAuthorize {
                payment_key,
                lane: self.id.clone(),
                kind,
                card: card.clone(),
                amount: Money::new(amount, currency),
            },
        };
        let answer = self.ctx.sync.call(request).await;
        let auth = match answer {
            Ok(r) => match r.result {
                RpcResult::CardAuthorized {
                    authorization_id,
                    auth_code,
                } => Some(CardAuth::Online {
                    authorization_id,
                    auth_code,
                }),
                RpcResult::CardDeclined { reason } => {
                    metrics::counter!("edge_card_payments_total", "result" => "declined").increment(1);
                    return Err(err(ErrorCode::CardDeclined, format!("card declined: {reason}")));
                }
                other => {
                    tracing::info!(?other, "hub could not authorise; trying offline");
                    None
                }
            },
            Err(RpcError::Timeout) => {
                // The hub may have authorised after all: release it.
                self.void_remote(
                    payment_key,
                    Money::new(amount, currency),
                    "authorisation answer came too late",
                );
                None
            }
            Err(RpcError::Offline) => None,
        };
        let auth = match auth {
            Some(a) => a,
            None => {
                if kind == CardKind::GiftCard {
                    return Err(err(
                        ErrorCode::PaymentUnavailable,
                        "gift cards need the hub and it cannot be reached; take another tender",
                    ));
                }
                self.offline_allowed(amount).await?;
                metrics::counter!("edge_card_payments_total", "result" => "offline").increment(1);
                CardAuth::StoreAndForward {
                    taken_at_ms: now_ms(),
                }
            }
        };
        if matches!(auth, CardAuth::Online { .. }) {
            metrics::counter!("edge_card_payments_total", "result" => "online").increment(1);
        }
        let payment = CardPayment { card, auth };
        let b = self.open_basket()?;
        b.tenders.push(Tender {
            payment_key,
            amount: Money::new(amount, currency),
            method: match kind {
                CardKind::Payment => TenderMethod::Card(payment),
                CardKind::GiftCard => TenderMethod::GiftCard(payment),
            },
        });
        self.basket_view().await
    }

    /// Asks the hub to release an authorisation, and records the void so the
    /// hub learns of it even if the request is lost.
    fn void_remote(&self, payment_key: EventId, amount: Money, reason: &str) {
        let sync = self.ctx.sync.clone();
        let journal = self.ctx.journal.clone();
        let timeout_ms = self.ctx.cfg.card_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        let reason = reason.to_owned();
        tokio::spawn(async move {
            let _ = sync
                .call(RpcRequest {
                    correlation_id: new_id(),
                    sent_at_ms: now_ms(),
                    timeout_ms,
                    call: RpcCall::CardVoid { payment_key },
                })
                .await;
            let body = EventBody::PaymentVoided(PaymentVoid {
                payment_key,
                amount,
                reason,
            });
            if let Err(e) = journal.record(body, None).await {
                tracing::error!(error = %e, "payment void not recorded");
            }
        });
    }

    async fn complete(&mut self) -> Result<PosResult, BusError> {
        let due = self.due().await?;
        if due > 0 {
            return Err(err(ErrorCode::NotFullyPaid, format!("{due} is still due")));
        }
        let b = self.open_basket()?.clone();
        let p = self.priced(&b).await?;
        let currency = self.ctx.cfg.currency;
        let sale = Sale {
            sale_id: b.id,
            lane: self.id.clone(),
            cashier: b.cashier.clone(),
            customer: b.customer.clone(),
            tax_included: self.ctx.cfg.tax_included,
            lines: b
                .lines
                .iter()
                .zip(&p.lines)
                .enumerate()
                .map(|(i, (l, pl))| SaleLine {
                    line_no: (i + 1) as u16,
                    sku: l.sku.clone(),
                    gtin: l.gtin.clone(),
                    qty: l.qty,
                    unit_price: l.unit_price,
                    discounts: pl.discounts.clone(),
                    tax_rate_bp: l.tax_rate_bp,
                    tax: pl.tax,
                    total: pl.total,
                })
                .collect(),
            basket_discounts: Vec::new(),
            totals: Totals {
                subtotal: p.subtotal,
                discount: p.discount,
                tax: p.tax,
                total: p.total,
            },
            tenders: b.tenders.clone(),
            change: Money::new(b.change, currency),
            started_at_ms: b.started_ms,
            completed_at_ms: now_ms(),
        };
        let recorded = self
            .ctx
            .journal
            .record(EventBody::Sale(sale.clone()), None)
            .await
            .map_err(|e| match e {
                JournalError::Invalid(m) => err(ErrorCode::BadRequest, m),
                other => internal(other),
            })?;
        self.basket = None;
        metrics::counter!("edge_pos_sales_total").increment(1);
        Ok(PosResult::Sale(self.receipt(&sale, recorded.seq.0, false)))
    }

    async fn cancel(&mut self) -> Result<PosResult, BusError> {
        let b = self
            .basket
            .take()
            .ok_or_else(|| err(ErrorCode::NoOpenBasket, "no basket is open"))?;
        for t in &b.tenders {
            if let TenderMethod::Card(c) | TenderMethod::GiftCard(c) = &t.method
                && matches!(c.auth, CardAuth::Online { .. })
            {
                self.void_remote(t.payment_key, t.amount, "basket cancelled");
            }
        }
        Ok(PosResult::Cancelled)
    }

    async fn load_sale(&self, sale_id: EventId) -> Result<(Sale, u64, bool), BusError> {
        let row: Option<(Vec<u8>, i64, i64)> =
            sqlx::query_as("SELECT body, seq, voided FROM sales WHERE sale_id = ?")
                .bind(sale_id.to_bytes().as_slice())
                .fetch_optional(self.ctx.journal.reader())
                .await
                .map_err(internal)?;
        let (body, seq, voided) = row.ok_or_else(|| {
            err(
                ErrorCode::SaleNotFound,
                format!("no sale {sale_id} at this store"),
            )
        })?;
        match storegate_protocol::envelope::decode_event(&body) {
            Ok(e) => match e.body {
                EventBody::Sale(s) => Ok((s, seq as u64, voided != 0)),
                _ => Err(internal("sales row holds another event")),
            },
            Err(e) => Err(internal(e)),
        }
    }

    fn receipt(&self, s: &Sale, seq: u64, voided: bool) -> ReceiptView {
        ReceiptView {
            sale_id: s.sale_id,
            seq,
            lane: s.lane.clone(),
            currency: s.totals.total.currency.to_string(),
            lines: s
                .lines
                .iter()
                .enumerate()
                .map(|(i, l)| LineView {
                    line: (i + 1) as u16,
                    sku: l.sku.clone(),
                    name: l.sku.to_string(),
                    measure: l.qty.measure(),
                    quantity: l.qty.base_units() as u32,
                    unit_price: l.unit_price.minor,
                    discount: l.discounts.iter().map(|d| d.amount.minor).sum(),
                    tax: l.tax.minor,
                    total: l.total.minor,
                })
                .collect(),
            subtotal: s.totals.subtotal.minor,
            discount: s.totals.discount.minor,
            tax: s.totals.tax.minor,
            total: s.totals.total.minor,
            tenders: s.tenders.iter().map(tender_view).collect(),
            change: s.change.minor,
            completed_at_ms: s.completed_at_ms,
            voided,
        }
    }

    async fn void(&mut self, sale_id: EventId, reason: String) -> Result<PosResult, BusError> {
        let (sale, _, voided) = self.load_sale(sale_id).await?;
        if voided {
            return Err(err(
                ErrorCode::AlreadyVoided,
                format!("sale {sale_id} is already voided"),
            ));
        }
        if !self.returned_before(sale_id).await?.is_empty() {
            return Err(err(
                ErrorCode::ReturnInvalid,
                format!("sale {sale_id} has returns; return the remaining items instead of voiding it"),
            ));
        }
        let refunds = sale
            .tenders
            .iter()
            .map(|t| Tender {
                payment_key: new_id(),
                amount: t.amount,
                method: t.method.clone(),
            })
            .collect();
        let body = EventBody::SaleVoided(SaleVoid {
            sale_id,
            lane: self.id.clone(),
            reason,
            refunds,
            restock: true,
        });
        match self.ctx.journal.record(body, None).await {
            Ok(_) => Ok(PosResult::Voided { sale_id }),
            Err(JournalError::Invalid(m)) => Err(err(ErrorCode::AlreadyVoided, m)),
            Err(e) => Err(internal(e)),
        }
    }

    /// Units of each SKU already returned against `sale_id`.
    async fn returned_before(&self, sale_id: EventId) -> Result<Vec<(Sku, i64)>, BusError> {
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM returns WHERE original_sale = ?")
            .bind(sale_id.to_bytes().as_slice())
            .fetch_all(self.ctx.journal.reader())
            .await
            .map_err(internal)?;
        let mut out: Vec<(Sku, i64)> = Vec::new();
        for b in bodies {
            if let Ok(e) = storegate_protocol::envelope::decode_event(&b)
                && let EventBody::Return(r) = e.body
            {
                for l in r.lines {
                    out.push((l.sku, l.qty.base_units()));
                }
            }
        }
        Ok(out)
    }

    async fn return_items(
        &mut self,
        sale_id: Option<EventId>,
        items: Vec<ReturnItem>,
        refund: RefundMethod,
        reason: String,
    ) -> Result<PosResult, BusError> {
        if items.is_empty() {
            return Err(err(ErrorCode::ReturnInvalid, "nothing to return"));
        }
        let currency = self.ctx.cfg.currency;
        let invalid = |m: String| err(ErrorCode::ReturnInvalid, m);
        let mut lines = Vec::new();
        let original = match sale_id {
            Some(id) => Some(self.load_sale(id).await?),
            None => None,
        };
        if original.as_ref().is_some_and(|(_, _, voided)| *voided) {
            return Err(invalid("that sale was voided".into()));
        }
        let before = match sale_id {
            Some(id) => self.returned_before(id).await?,
            None => Vec::new(),
        };
        for item in &items {
            let qty = match (item.qty, item.grams) {
                (Some(n), None) => Qty::each(n),
                (None, Some(g)) => Qty::grams(g),
                (None, None) => Qty::each(1),
                (Some(_), Some(_)) => return Err(invalid(format!("{}: qty or grams, not both", item.sku))),
            }
            .map_err(|e| invalid(e.to_string()))?;
            let restock = item.restock.unwrap_or(true);
            let (amount, tax) = match &original {
                Some((sale, _, _)) => {
                    let sold: Vec<&SaleLine> = sale.lines.iter().filter(|l| l.sku == item.sku).collect();
                    let Some(first) = sold.first() else {
                        return Err(invalid(format!("{} is not on that receipt", item.sku)));
                    };
                    if first.qty.measure() != qty.measure() {
                        return Err(invalid(format!(
                            "{} was sold by {:?}",
                            item.sku,
                            first.qty.measure()
                        )));
                    }
                    let units: i64 = sold.iter().map(|l| l.qty.base_units()).sum();
                    let paid: i64 = sold.iter().map(|l| l.total.minor).sum();
                    let taxed: i64 = sold.iter().map(|l| l.tax.minor).sum();
                    let already: i64 = before
                        .iter()
                        .filter(|(s, _)| *s == item.sku)
                        .map(|(_, n)| n)
                        .sum::<i64>()
                        + lines
                            .iter()
                            .filter(|l: &&ReturnLine| l.sku == item.sku)
                            .map(|l| l.qty.base_units())
                            .sum::<i64>();
                    if already + qty.base_units() > units {
                        return Err(invalid(format!(
                            "{}: {} sold, {} returned already",
                            item.sku, units, already
                        )));
                    }
                    let share =
                        |v: i64| Money::new(v, currency).mul_div_round(qty.base_units(), units.max(1));
                    (share(paid).map_err(internal)?, share(taxed).map_err(internal)?)
                }
                None => {
                    if refund == RefundMethod::OriginalTender {
                        return Err(invalid(
                            "a refund to the original tender needs the receipt".into(),
                        ));
                    }
                    let product = self
                        .ctx
                        .catalog
                        .by_sku(item.sku.as_str())
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| err(ErrorCode::UnknownSku, format!("no product {}", item.sku)))?;
                    let price = self
                        .ctx
                        .catalog
                        .price(item.sku.as_str(), now_ms())
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| err(ErrorCode::NoPrice, format!("{} has no price", item.sku)))?;
                    let priced = pricing::price(
                        &[LineInput {
                            sku: item.sku.clone(),
                            qty,
                            unit_price: price,
                            fixed_amount: None,
                            tax_rate_bp: product.tax_rate_bp,
                        }],
                        &[],
                        true,
                        currency,
                    )
                    .map_err(internal)?;
                    (priced.total, priced.tax)
                }
            };
            lines.push(ReturnLine {
                sku: item.sku.clone(),
                qty,
                amount,
                tax,
                restock,
            });
        }
        let total: i64 = lines.iter().map(|l| l.amount.minor).sum();
        let refunds = match (&refund, &original) {
            (RefundMethod::OriginalTender, Some((sale, _, _))) => {
                // Back to the sale's tenders in order, each up to what it paid.
                let mut left = total;
                let mut out = Vec::new();
                for t in &sale.tenders {
                    if left <= 0 {
                        break;
                    }
                    let part = left.min(t.amount.minor);
                    left -= part;
                    out.push(Tender {
                        payment_key: new_id(),
                        amount: Money::new(part, currency),
                        method: match &t.method {
                            TenderMethod::Cash { .. } => TenderMethod::Cash {
                                received: Money::new(part, currency),
                            },
                            other => other.clone(),
                        },
                    });
                }
                out
            }
            _ => vec![Tender {
                payment_key: new_id(),
                amount: Money::new(total, currency),
                method: TenderMethod::Cash {
                    received: Money::new(total, currency),
                },
            }],
        };
        let return_id = new_id();
        let body = EventBody::Return(Return {
            return_id,
            original_sale: sale_id,
            lane: self.id.clone(),
            lines,
            refunds,
            reason,
        });
        self.ctx.journal.record(body, None).await.map_err(|e| match e {
            JournalError::Invalid(m) => invalid(m),
            other => internal(other),
        })?;
        Ok(PosResult::Returned(ReturnView {
            return_id,
            refunded: total,
            currency: currency.to_string(),
            refund,
        }))
    }

    async fn price_lookup(&self, code: Option<String>, sku: Option<Sku>) -> Result<PosResult, BusError> {
        let r = self.resolve(code.as_deref(), sku.as_ref()).await?;
        let now = now_ms();
        let price = self
            .ctx
            .catalog
            .price(r.product.sku.as_str(), now)
            .await
            .map_err(internal)?;
        let Some(price) = price.or(r.fixed_minor.map(|m| Money::new(m, self.ctx.cfg.currency))) else {
            return Err(err(ErrorCode::NoPrice, format!("{} has no price", r.product.sku)));
        };
        let promotions = self
            .ctx
            .catalog
            .promotions(now)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|p| p.skus.contains(&r.product.sku))
            .map(|p| p.label)
            .collect();
        let stock = self
            .ctx
            .journal
            .stock_view(r.product.sku.as_str())
            .await
            .map_err(internal)?;
        Ok(PosResult::Price(PriceView {
            sku: r.product.sku,
            name: r.product.name,
            measure: r.product.measure,
            price: price.minor,
            currency: price.currency.to_string(),
            promotions,
            stock,
        }))
    }
}

/// Parses a card token and last four digits from strings (for simulators).
pub fn card(token: &str, last4: &str) -> Option<CardRef> {
    Some(CardRef {
        token: CardToken::parse(token).ok()?,
        last4: Last4::parse(last4).ok()?,
        brand: None,
    })
}
