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
//!
//! Files: this one (the lane, its basket, completing a sale), `lookup`
//! (barcodes, the scale, price checks), `tender` (cash and cards),
//! `offline` (the store-and-forward caps, pure), `returns` (voids and
//! returns, with the pure rules of what may be returned and how it is
//! refunded), `views` (what lanes are shown).

pub mod approvals;
mod lookup;
mod offline;
mod returns;
mod tender;
mod views;

use std::sync::Arc;
use std::time::Duration;

use storegate_protocol::device::{BasketView, BusError, ErrorCode, PosOp, PosResult};
use storegate_protocol::event::{
    CardAuth, CardRef, CardToken, EventBody, Last4, Sale, SaleLine, Tender, TenderMethod, Totals,
};
use storegate_protocol::rpc::CardKind;
use storegate_protocol::{Currency, EventId, Gtin, LaneId, Measure, Money, Qty, Sku, StoreId};

pub use self::offline::OfflineCaps;
use self::views::{line_view, receipt, tender_view};
use crate::barcode::VariableLayout;
use crate::catalog::Catalog;
use crate::journal::{Journal, JournalError, now_ms};
use crate::pricing::{self, LineInput};
use crate::scale::ScaleHandle;
use crate::sync::SyncHandle;

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
    /// Which operations need a supervisor's approval.
    pub approvals: approvals::ApprovalRules,
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
    /// Supervisor approvals asked and given.
    pub approvals: Arc<approvals::Approvals>,
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

pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> BusError {
    BusError::new(code, message)
}

pub(crate) fn internal(e: impl std::fmt::Display) -> BusError {
    tracing::error!(error = %e, "lane internal error");
    err(ErrorCode::Internal, "internal error; retry")
}

pub(crate) fn new_id() -> EventId {
    EventId::from_parts(now_ms().max(0) as u64, rand::random::<u128>())
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
            PosOp::VoidSale {
                sale_id,
                reason,
                approval,
            } => self.void(sale_id, reason, approval).await,
            PosOp::ReturnItems {
                sale_id,
                lines,
                refund,
                reason,
                approval,
            } => self.return_items(sale_id, lines, refund, reason, approval).await,
            PosOp::PriceLookup { code, sku } => self.price_lookup(code, sku).await,
            PosOp::Receipt { sale_id } => {
                let r = self.load_sale(sale_id).await?;
                Ok(PosResult::Sale(receipt(&r.sale, r.seq.0, r.voided)))
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
        Ok(PosResult::Sale(receipt(&sale, recorded.seq.0, false)))
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
}

/// Parses a card token and last four digits from strings (for simulators).
pub fn card(token: &str, last4: &str) -> Option<CardRef> {
    Some(CardRef {
        token: CardToken::parse(token).ok()?,
        last4: Last4::parse(last4).ok()?,
        brand: None,
    })
}
