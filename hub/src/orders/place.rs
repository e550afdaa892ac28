//! Step 1 of the saga: an order request checked, allocated, priced and
//! reserved in one transaction.

use std::collections::{BTreeMap, HashMap};

use storegate_protocol::pricing::{self, LineInput as PriceInput};
use storegate_protocol::{Money, Qty, Sku};

use super::repo::{self, NewLine, NewOrder};
use super::{Commerce, Created, OrderError, OrderInput};
use crate::db::now_ms;
use crate::domain::allocation::{self, Ask, Rule};
use crate::domain::order::{self, Valid};
use crate::idempotency::KeyRef;
use crate::{audit, catalog, shipping, stock, stores};

/// Most times an order is planned again after losing its stock to
/// concurrent orders.
const MAX_PLANS: u32 = 5;

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
        let v = order::validate(input).map_err(|e| OrderError::Invalid(e.0))?;
        let rules = repo::rules(&self.db).await?;
        let mut attempt = 0;
        let order_id = loop {
            attempt += 1;
            match self
                .reserve(actor, customer, input.allow_split, &v, &rules, idem)
                .await
            {
                Err(OrderError::Raced) if attempt < MAX_PLANS => {
                    metrics::counter!("hub_orders_replanned_total").increment(1);
                }
                Err(OrderError::Raced) => {
                    return Err(OrderError::OutOfStock(OrderError::Raced.to_string()));
                }
                other => break other?,
            }
        };
        self.run_saga(&order_id).await?;
        let order = repo::get(&self.db, &order_id)
            .await?
            .ok_or_else(|| OrderError::NotFound(order_id.clone()))?;
        Ok(Created::of(order))
    }

    /// Step 1 of the saga; returns the order id.
    async fn reserve(
        &self,
        actor: &str,
        customer: Option<&str>,
        allow_split: bool,
        v: &Valid,
        rules: &[Rule],
        idem: Option<&KeyRef>,
    ) -> Result<String, OrderError> {
        let order_id = crate::auth::new_id();
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        if let Some(c) = v.collect_at()
            && stores::kind(&mut tx, c).await?.as_deref() != Some("store")
        {
            return Err(OrderError::Invalid(format!("collect_at {c:?} is not a store")));
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
        let held = repo::availability(&mut tx, &v.lines.iter().map(|(s, _)| s).collect::<Vec<_>>()).await?;
        let ask = Ask {
            lines: &v.lines,
            only_at: v.collect_at(),
            region: v.region(),
            allow_split,
        };
        let locations = allocation::plan(rules, &held, ask).map_err(|e| OrderError::OutOfStock(e.0))?;

        // Price each line where it is allocated.
        let mut prices: HashMap<&str, HashMap<String, (i64, String)>> = HashMap::new();
        for loc in &locations {
            if !prices.contains_key(loc.as_str()) {
                let here: Vec<String> = v
                    .lines
                    .iter()
                    .zip(&locations)
                    .filter(|(_, l)| *l == loc)
                    .map(|((s, _), _)| s.to_string())
                    .collect();
                prices.insert(loc.as_str(), catalog::current_prices(&mut tx, &here, loc).await?);
            }
        }
        let mut inputs = Vec::with_capacity(v.lines.len());
        let mut units = Vec::with_capacity(v.lines.len());
        let mut grams_by_location: BTreeMap<&str, i64> = BTreeMap::new();
        for ((sku, qty), loc) in v.lines.iter().zip(&locations) {
            let p = by_sku[sku.as_str()];
            let Some((unit, currency)) = prices
                .get(loc.as_str())
                .and_then(|m| m.get(sku.as_str()))
                .cloned()
            else {
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
            inputs.push(price_input(sku, *qty, p, Money::new(unit, self.currency))?);
            units.push(unit);
            *grams_by_location.entry(loc.as_str()).or_insert(0) += p
                .unit_grams(self.settings.default_item_grams)
                .saturating_mul(*qty);
        }
        // The promotions stores apply, by the same rules (best one per line).
        let promotions = catalog::promotions_at(&mut tx, now).await?;
        let priced = pricing::price(&inputs, &promotions, self.settings.tax_included, self.currency)
            .map_err(|e| OrderError::Invalid(format!("the order's amounts do not add up: {e}")))?;
        let mut shipping_total = 0i64;
        if let Some(region) = v.region() {
            for (loc, grams) in &grams_by_location {
                let q = shipping::quote(&mut tx, region, *grams).await?;
                let Some(best) = q.into_iter().find(|q| q.currency == self.currency.as_str()) else {
                    return Err(OrderError::Invalid(format!(
                        "no carrier ships {grams} g from {loc} to region {region} (see /api/v1/shipping/rates)"
                    )));
                };
                shipping_total = shipping_total.saturating_add(best.price_minor);
            }
        }
        let total = priced.total.minor.saturating_add(shipping_total);
        let single = locations
            .first()
            .filter(|l| locations.iter().all(|x| x == *l))
            .map(String::as_str);
        let lines: Vec<NewLine<'_>> = v
            .lines
            .iter()
            .zip(&locations)
            .zip(&units)
            .zip(&priced.lines)
            .map(|((((sku, qty), loc), unit), p)| NewLine {
                sku,
                qty: *qty,
                unit_price: *unit,
                total: p.total.minor,
                tax: p.tax.minor,
                location: loc,
                discount: p.discounts.iter().map(|d| d.amount.minor).sum(),
                promotion_id: p.discounts.first().and_then(|d| d.promotion_id.clone()),
            })
            .collect();
        let places = distinct(&locations);
        repo::insert_online(
            &mut tx,
            &NewOrder {
                id: &order_id,
                customer,
                location: single,
                fulfilment: v.fulfilment(),
                region: v.region(),
                currency: self.currency.as_str(),
                subtotal: priced.subtotal.minor,
                discount: priced.discount.minor,
                tax: priced.tax.minor,
                shipping: shipping_total,
                total,
                allow_split,
                now,
            },
            &lines,
            &format!("stock reserved at {}", places.join(", ")),
        )
        .await?;
        repo::insert_saga(
            &mut tx,
            &order_id,
            now + self.settings.saga_lease_ms as i64,
            v.token.as_str(),
            v.last4.as_str(),
            v.method,
            now,
        )
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
            serde_json::json!({"total": total, "lines": lines.len(), "fulfilment": v.fulfilment()}),
        )
        .await?;
        audit::record(
            &mut tx,
            "hub:saga",
            "stock_reserved",
            "order",
            &order_id,
            serde_json::json!({ "locations": places }),
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
            return Err(OrderError::Raced);
        }
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "reserved").increment(1);
        Ok(order_id)
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
