//! Step 1 of the saga: order requests checked, allocated, priced and
//! reserved, one or a group of them in one transaction.
//!
//! A group shares its reads (products, stock, prices, promotions,
//! shipping rates: one query each for the whole group) and its writes
//! (orders, lines, history, sagas, idempotency keys, audit and the
//! reservations: one statement each). Orders are planned one after the
//! other against the stock the group has left, so a group never plans to
//! sell the same unit twice; the reservations are still conditional
//! updates per stock level (the group's quantities summed), so a
//! concurrent writer can make the group lose, never oversell.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Any, Transaction};
use storegate_protocol::pricing::{self, LineInput as PriceInput};
use storegate_protocol::{Money, Qty, Sku};

use super::repo::{self, NewLine, NewOrder, NewSaga};
use super::{Commerce, OrderError};
use crate::db::now_ms;
use crate::domain::allocation::{self, Ask, Holding, Rule};
use crate::domain::order::Valid;
use crate::domain::price::effective_price;
use crate::idempotency::KeyRef;
use crate::shipping::Quote;
use crate::{audit, catalog, shipping, stock, stores};

/// Most times an order is planned again after losing its stock to
/// concurrent orders.
const MAX_PLANS: u32 = 5;

/// An order request, checked, waiting for step 1.
pub(super) struct Request<'a> {
    /// Who places it (`user:ID`...).
    pub actor: &'a str,
    /// The customer it is for.
    pub customer: Option<&'a str>,
    /// Whether lines may come from different locations.
    pub allow_split: bool,
    /// The checked request.
    pub valid: &'a Valid,
    /// Its idempotency key.
    pub idem: Option<&'a KeyRef>,
}

/// What step 1 of a group gives each request: its order id and total, or
/// why it was refused (nothing written for it).
pub(super) type Outcomes = Vec<Result<(String, i64), OrderError>>;

impl Commerce {
    /// Step 1 for one order, planned again when concurrent orders took
    /// its stock (at most 5 times); returns the order id.
    ///
    /// The plan (allocation from a read) comes first, the order is
    /// written, and the reservations come last (each a conditional
    /// update), so the contended stock rows are locked only for the end of
    /// the transaction; if another order took the stock in between, the
    /// transaction rolls back and the plan is made again.
    pub(super) async fn reserve_one(&self, req: &Request<'_>) -> Result<String, OrderError> {
        let rules = repo::rules(&self.db).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.reserve(std::slice::from_ref(req), &rules).await {
                Ok(mut one) => {
                    return one
                        .pop()
                        .unwrap_or_else(|| Err(OrderError::NotFound("the order's plan".into())))
                        .map(|(id, _)| id);
                }
                Err(OrderError::Raced) if attempt < MAX_PLANS => {
                    metrics::counter!("hub_orders_replanned_total").increment(1);
                }
                Err(OrderError::Raced) => {
                    return Err(OrderError::OutOfStock(OrderError::Raced.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Step 1 for a group, in one transaction: an outcome per request, in
    /// order. `Err` means nothing was written for any of them: a database
    /// error, or [`OrderError::Raced`] when a reservation lost to a
    /// concurrent writer (plan again).
    pub(super) async fn reserve(&self, reqs: &[Request<'_>], rules: &[Rule]) -> Result<Outcomes, OrderError> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let mut group = Group::read(&mut tx, reqs, now).await?;
        let mut outcomes = Vec::with_capacity(reqs.len());
        let mut planned: Vec<(NewOrder, &Request<'_>, Vec<String>)> = Vec::with_capacity(reqs.len());
        for r in reqs {
            match self.plan(&mut tx, r, &mut group, rules, now).await? {
                Ok((order, places)) => {
                    outcomes.push(Ok((order.id.clone(), order.total)));
                    planned.push((order, r, places));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        if planned.is_empty() {
            return Ok(outcomes);
        }
        let (orders, planned): (Vec<NewOrder>, Vec<(&Request<'_>, Vec<String>)>) =
            planned.into_iter().map(|(o, r, p)| (o, (r, p))).unzip();
        repo::insert_online(&mut tx, &orders).await?;
        let lease_until = now + self.settings.saga_lease_ms as i64;
        let sagas: Vec<NewSaga<'_>> = orders
            .iter()
            .zip(&planned)
            .map(|(o, (r, _))| NewSaga {
                order_id: &o.id,
                lease_until,
                token: r.valid.token.as_str(),
                last4: r.valid.last4.as_str(),
                method: r.valid.method,
                now,
            })
            .collect();
        repo::insert_sagas(&mut tx, &sagas).await?;
        let keys: Vec<(&KeyRef, &str)> = orders
            .iter()
            .zip(&planned)
            .filter_map(|(o, (r, _))| Some((r.idem?, o.id.as_str())))
            .collect();
        crate::idempotency::set_resources(&mut tx, &keys).await?;
        let mut events = Vec::with_capacity(orders.len() * 2);
        for (o, (r, places)) in orders.iter().zip(&planned) {
            events.push(audit::Event {
                actor: r.actor,
                action: "order_created",
                entity: "order",
                entity_id: &o.id,
                detail: serde_json::json!({"total": o.total, "lines": o.lines.len(), "fulfilment": o.fulfilment}),
            });
            events.push(audit::Event {
                actor: "hub:saga",
                action: "stock_reserved",
                entity: "order",
                entity_id: &o.id,
                detail: serde_json::json!({ "locations": places }),
            });
        }
        audit::record_rows(&mut tx, &events).await?;
        // Last, the contended rows: reserve where planned.
        let wanted: Vec<(&str, &str, i64, &str)> = orders
            .iter()
            .flat_map(|o| {
                o.lines
                    .iter()
                    .map(|l| (l.location.as_str(), l.sku.as_str(), l.qty, o.id.as_str()))
            })
            .collect();
        if !stock::reserve_many(&mut tx, &wanted).await? {
            return Err(OrderError::Raced);
        }
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "reserved").increment(orders.len() as u64);
        Ok(outcomes)
    }

    /// Plans one order against what the group has left: allocation,
    /// prices, promotions, shipping. The outer `Err` is a database error;
    /// the inner one refuses this order only.
    async fn plan(
        &self,
        tx: &mut Transaction<'static, Any>,
        r: &Request<'_>,
        g: &mut Group,
        rules: &[Rule],
        now: i64,
    ) -> Result<Result<(NewOrder, Vec<String>), OrderError>, OrderError> {
        let v = r.valid;
        if let Some(c) = v.collect_at()
            && g.kinds.get(c).map(String::as_str) != Some("store")
        {
            return Ok(Err(OrderError::Invalid(format!(
                "collect_at {c:?} is not a store"
            ))));
        }
        for (sku, _) in &v.lines {
            match g.products.get(sku.as_str()) {
                None => return Ok(Err(OrderError::Invalid(format!("product {sku} does not exist")))),
                Some(p) if !p.active => {
                    return Ok(Err(OrderError::Invalid(format!("product {sku} is not sold"))));
                }
                _ => {}
            }
        }
        let ask = Ask {
            lines: &v.lines,
            only_at: v.collect_at(),
            region: v.region(),
            allow_split: r.allow_split,
        };
        let locations = match allocation::plan(rules, &g.held, ask) {
            Ok(l) => l,
            Err(e) => return Ok(Err(OrderError::OutOfStock(e.0))),
        };
        // Price each line where it is allocated.
        let mut inputs = Vec::with_capacity(v.lines.len());
        let mut units = Vec::with_capacity(v.lines.len());
        let mut grams_by_location: BTreeMap<&str, i64> = BTreeMap::new();
        for ((sku, qty), loc) in v.lines.iter().zip(&locations) {
            let p = &g.products[sku.as_str()];
            let region = g.held.get(loc).and_then(|h| h.region.as_deref());
            let Some(price) = effective_price(&g.prices, sku.as_str(), loc, region, now) else {
                return Ok(Err(OrderError::Invalid(format!(
                    "product {sku} has no price at {loc}"
                ))));
            };
            if price.currency != self.currency.as_str() {
                return Ok(Err(OrderError::Invalid(format!(
                    "product {sku} is priced in {} at {loc}; online orders are in {}",
                    price.currency,
                    self.currency.as_str()
                ))));
            }
            match price_input(sku, *qty, p, Money::new(price.price_minor, self.currency)) {
                Ok(i) => inputs.push(i),
                Err(e) => return Ok(Err(e)),
            }
            units.push(price.price_minor);
            let grams = grams_by_location.entry(loc.as_str()).or_insert(0);
            *grams = grams.saturating_add(
                p.unit_grams(self.settings.default_item_grams)
                    .saturating_mul(*qty),
            );
        }
        // The promotions stores apply, by the same rules (best one per line).
        let priced = match pricing::price(&inputs, &g.promotions, self.settings.tax_included, self.currency) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err(OrderError::Invalid(format!(
                    "the order's amounts do not add up: {e}"
                ))));
            }
        };
        let mut shipping_total = 0i64;
        if let Some(region) = v.region() {
            for (loc, grams) in &grams_by_location {
                let quotes = g.quote(tx, region, *grams).await?;
                let Some(best) = quotes.iter().find(|q| q.currency == self.currency.as_str()) else {
                    return Ok(Err(OrderError::Invalid(format!(
                        "no carrier ships {grams} g from {loc} to region {region} (see /api/v1/shipping/rates)"
                    ))));
                };
                shipping_total = shipping_total.saturating_add(best.price_minor);
            }
        }
        // Planned: what it takes is no longer there for the rest of the group.
        for ((sku, qty), loc) in v.lines.iter().zip(&locations) {
            if let Some(left) = g.held.get_mut(loc).and_then(|h| h.available.get_mut(sku)) {
                *left = left.saturating_sub(*qty);
            }
        }
        let single = locations
            .first()
            .filter(|l| locations.iter().all(|x| x == *l))
            .cloned();
        let lines: Vec<NewLine> = v
            .lines
            .iter()
            .zip(&locations)
            .zip(&units)
            .zip(&priced.lines)
            .map(|((((sku, qty), loc), unit), p)| NewLine {
                sku: sku.clone(),
                qty: *qty,
                unit_price: *unit,
                total: p.total.minor,
                tax: p.tax.minor,
                location: loc.clone(),
                discount: p.discounts.iter().map(|d| d.amount.minor).sum(),
                promotion_id: p.discounts.first().and_then(|d| d.promotion_id.clone()),
            })
            .collect();
        let places: Vec<String> = distinct(&locations).into_iter().map(str::to_owned).collect();
        Ok(Ok((
            NewOrder {
                id: crate::auth::new_id(),
                customer: r.customer.map(str::to_owned),
                location: single,
                fulfilment: v.fulfilment(),
                region: v.region().map(str::to_owned),
                currency: self.currency.as_str().to_owned(),
                subtotal: priced.subtotal.minor,
                discount: priced.discount.minor,
                tax: priced.tax.minor,
                shipping: shipping_total,
                total: priced.total.minor.saturating_add(shipping_total),
                allow_split: r.allow_split,
                now,
                lines,
                note: format!("stock reserved at {}", places.join(", ")),
            },
            places,
        )))
    }
}

/// What a group's plans read, once for the whole group.
struct Group {
    /// Kinds of the stores orders are collected at.
    kinds: HashMap<String, String>,
    /// The products ordered, by SKU.
    products: HashMap<String, catalog::ProductView>,
    /// What each location holds of them, less what earlier orders of the
    /// group planned to take.
    held: BTreeMap<String, Holding>,
    /// Their price rows.
    prices: Vec<catalog::PriceView>,
    /// Promotions in force.
    promotions: Vec<storegate_protocol::downlink::Promotion>,
    /// Shipping quotes by region and weight, read when first needed.
    quotes: HashMap<(String, i64), Vec<Quote>>,
}

impl Group {
    async fn read(
        tx: &mut Transaction<'static, Any>,
        reqs: &[Request<'_>],
        now: i64,
    ) -> Result<Self, sqlx::Error> {
        let collect: Vec<&str> = reqs
            .iter()
            .filter_map(|r| r.valid.collect_at())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let skus: BTreeSet<&Sku> = reqs
            .iter()
            .flat_map(|r| r.valid.lines.iter().map(|(s, _)| s))
            .collect();
        let skus: Vec<&Sku> = skus.into_iter().collect();
        let names: Vec<&str> = skus.iter().map(|s| s.as_str()).collect();
        let owned: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        Ok(Self {
            kinds: stores::kinds(tx, &collect).await?,
            products: catalog::products_lite(tx, &names)
                .await?
                .into_iter()
                .map(|p| (p.sku.clone(), p))
                .collect(),
            held: repo::availability(tx, &skus).await?,
            prices: catalog::price_rows(tx, Some(&owned)).await?,
            promotions: catalog::promotions_at(tx, now).await?,
            quotes: HashMap::new(),
        })
    }

    async fn quote(
        &mut self,
        tx: &mut Transaction<'static, Any>,
        region: &str,
        grams: i64,
    ) -> Result<&[Quote], sqlx::Error> {
        let key = (region.to_owned(), grams);
        if !self.quotes.contains_key(&key) {
            let q = shipping::quote(tx, region, grams).await?;
            self.quotes.insert(key.clone(), q);
        }
        Ok(self.quotes.get(&key).map_or(&[], Vec::as_slice))
    }
}

/// A line as the pricing engine takes it.
fn price_input(sku: &Sku, qty: i64, p: &catalog::ProductView, unit: Money) -> Result<PriceInput, OrderError> {
    let n = u32::try_from(qty).map_err(|_| OrderError::Invalid(format!("{sku}: qty too large")))?;
    let qty = if p.measure == crate::domain::product::Measure::Grams {
        Qty::grams(n)
    } else {
        Qty::each(n)
    }
    .map_err(|e| OrderError::Invalid(format!("{sku}: {e}")))?;
    Ok(PriceInput {
        sku: sku.clone(),
        qty,
        unit_price: unit,
        fixed_amount: None,
        tax_rate_bp: p.tax_rate_bp,
    })
}

/// The locations in order of first appearance, once each.
pub(super) fn distinct(v: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for x in v {
        if !out.contains(&x.as_str()) {
            out.push(x);
        }
    }
    out
}
