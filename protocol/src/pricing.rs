//! Basket pricing: line amounts, automatic promotions, tax. Pure.
//!
//! - A line's gross is `unit_price * items`, or for goods sold by weight
//!   `unit_price (per kg) * grams / 1000`, rounded half away from zero; or
//!   the price a price-embedded barcode carries.
//! - Each line gets the single best promotion that applies to it (no
//!   stacking): percent off, amount off per item (capped at the line), or
//!   multi-buy (`buy` items for the price of `pay`, counted per SKU across
//!   the basket; the free items' discount goes to that SKU's first line).
//! - Tax per line at its rate: extracted from the amount when prices
//!   include tax (`tax = total * r / (1 + r)`), added on top otherwise.

use crate::downlink::{Promotion, PromotionRule};
use crate::event::Discount;
use crate::{Currency, Money, MoneyError, Qty, Sku};

/// A line to price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    /// The product.
    pub sku: Sku,
    /// Items or grams.
    pub qty: Qty,
    /// Per item or per kilogram.
    pub unit_price: Money,
    /// A fixed line amount from a price-embedded barcode, if any.
    pub fixed_amount: Option<Money>,
    /// Tax rate, basis points.
    pub tax_rate_bp: u32,
}

/// A priced line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    /// Before discounts.
    pub gross: Money,
    /// Discounts applied.
    pub discounts: Vec<Discount>,
    /// Tax in (or on) the line.
    pub tax: Money,
    /// After discounts (excluding added tax).
    pub total: Money,
}

/// A priced basket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// Per line, in order.
    pub lines: Vec<PricedLine>,
    /// Sum of gross.
    pub subtotal: Money,
    /// Sum of discounts.
    pub discount: Money,
    /// Sum of tax.
    pub tax: Money,
    /// What the customer pays.
    pub total: Money,
}

fn gross(l: &LineInput) -> Result<Money, MoneyError> {
    if let Some(fixed) = l.fixed_amount {
        return Ok(fixed);
    }
    match l.qty {
        Qty::Each(n) => l.unit_price.checked_mul(i64::from(n)),
        Qty::Grams(g) => l.unit_price.mul_div_round(i64::from(g), 1000),
    }
}

/// Prices `lines` with the `promotions` in effect.
pub fn price(
    lines: &[LineInput],
    promotions: &[Promotion],
    tax_included: bool,
    currency: Currency,
) -> Result<Priced, MoneyError> {
    let gross: Vec<Money> = lines.iter().map(gross).collect::<Result<_, _>>()?;
    let mut best: Vec<Option<Discount>> = vec![None; lines.len()];
    let mut consider = |i: usize, d: Discount| {
        let better = best[i].as_ref().is_none_or(|b| d.amount.minor > b.amount.minor);
        if d.amount.minor > 0 && better {
            best[i] = Some(d);
        }
    };
    for p in promotions {
        let applies = |sku: &Sku| p.skus.iter().any(|s| s == sku);
        match &p.rule {
            PromotionRule::PercentOff { bp } => {
                for (i, l) in lines.iter().enumerate() {
                    if applies(&l.sku) {
                        let amount = gross[i].mul_div_round(i64::from((*bp).min(10_000)), 10_000)?;
                        consider(i, discount(p, amount));
                    }
                }
            }
            PromotionRule::AmountOff { amount } => {
                for (i, l) in lines.iter().enumerate() {
                    if applies(&l.sku) && amount.currency == currency {
                        let per = match l.qty {
                            Qty::Each(n) => amount.checked_mul(i64::from(n))?,
                            Qty::Grams(_) => *amount,
                        };
                        let capped = Money::new(per.minor.min(gross[i].minor).max(0), currency);
                        consider(i, discount(p, capped));
                    }
                }
            }
            PromotionRule::MultiBuy { buy, pay } if *buy > *pay && *buy > 0 => {
                // Per SKU: every `buy` items, `buy - pay` are free.
                let mut seen: Vec<&Sku> = Vec::new();
                for l in lines {
                    if !applies(&l.sku) || seen.contains(&&l.sku) {
                        continue;
                    }
                    seen.push(&l.sku);
                    let idx: Vec<usize> = lines
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| {
                            x.sku == l.sku && matches!(x.qty, Qty::Each(_)) && x.fixed_amount.is_none()
                        })
                        .map(|(i, _)| i)
                        .collect();
                    let items: i64 = idx.iter().map(|&i| lines[i].qty.base_units()).sum();
                    let free = (items / i64::from(*buy)) * i64::from(buy - pay);
                    if free > 0
                        && let Some(&first) = idx.first()
                    {
                        let amount = lines[first].unit_price.checked_mul(free)?;
                        consider(first, discount(p, amount));
                    }
                }
            }
            PromotionRule::MultiBuy { .. } => {}
        }
    }
    let zero = Money::zero(currency);
    let mut out = Vec::with_capacity(lines.len());
    let (mut subtotal, mut disc, mut tax, mut total) = (zero, zero, zero, zero);
    for (i, l) in lines.iter().enumerate() {
        let discounts: Vec<Discount> = best[i].take().into_iter().collect();
        let d = Money::sum(currency, discounts.iter().map(|d| &d.amount))?;
        let line_total = gross[i].checked_sub(d)?;
        let rate = i64::from(l.tax_rate_bp);
        let line_tax = if tax_included {
            line_total.mul_div_round(rate, 10_000 + rate)?
        } else {
            line_total.mul_div_round(rate, 10_000)?
        };
        subtotal = subtotal.checked_add(gross[i])?;
        disc = disc.checked_add(d)?;
        tax = tax.checked_add(line_tax)?;
        total = total.checked_add(line_total)?;
        out.push(PricedLine {
            gross: gross[i],
            discounts,
            tax: line_tax,
            total: line_total,
        });
    }
    if !tax_included {
        total = total.checked_add(tax)?;
    }
    Ok(Priced {
        lines: out,
        subtotal,
        discount: disc,
        tax,
        total,
    })
}

fn discount(p: &Promotion, amount: Money) -> Discount {
    Discount {
        promotion_id: Some(p.id.clone()),
        label: p.label.clone(),
        amount,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(m: i64) -> Money {
        Money::new(m, Currency::EUR)
    }
    fn line(sku: &str, qty: Qty, price: i64) -> LineInput {
        LineInput {
            sku: Sku::parse(sku).unwrap(),
            qty,
            unit_price: eur(price),
            fixed_amount: None,
            tax_rate_bp: 2000,
        }
    }
    fn promo(id: &str, rule: PromotionRule, skus: &[&str]) -> Promotion {
        Promotion {
            id: id.into(),
            label: id.into(),
            rule,
            skus: skus.iter().map(|s| Sku::parse(*s).unwrap()).collect(),
            starts_ms: 0,
            ends_ms: None,
        }
    }

    #[test]
    fn items_and_weights_price_with_vat_included() {
        let p = price(
            &[line("A", Qty::Each(2), 199), line("APPLE", Qty::Grams(1250), 299)],
            &[],
            true,
            Currency::EUR,
        )
        .unwrap();
        assert_eq!(p.lines[0].total, eur(398));
        assert_eq!(p.lines[1].total, eur(374)); // 2.99/kg * 1.25 kg = 3.7375
        assert_eq!(p.total, eur(772));
        assert_eq!(p.lines[0].tax, eur(66)); // 398 * 20/120 = 66.33
        assert_eq!(p.tax, eur(66 + 62));
    }

    #[test]
    fn tax_added_on_top_when_prices_exclude_it() {
        let p = price(&[line("A", Qty::Each(1), 1000)], &[], false, Currency::EUR).unwrap();
        assert_eq!(p.tax, eur(200));
        assert_eq!(p.total, eur(1200));
    }

    #[test]
    fn the_best_single_promotion_applies() {
        let promos = [
            promo("10PC", PromotionRule::PercentOff { bp: 1000 }, &["A"]),
            promo("50C", PromotionRule::AmountOff { amount: eur(50) }, &["A"]),
            promo("3FOR2", PromotionRule::MultiBuy { buy: 3, pay: 2 }, &["B"]),
        ];
        let p = price(
            &[
                line("A", Qty::Each(2), 199),
                line("B", Qty::Each(2), 100),
                line("B", Qty::Each(4), 100),
            ],
            &promos,
            true,
            Currency::EUR,
        )
        .unwrap();
        assert_eq!(p.lines[0].discounts[0].promotion_id.as_deref(), Some("50C")); // 100 > 39.8
        assert_eq!(p.lines[0].total, eur(298));
        assert_eq!(
            p.lines[1].discounts[0].amount,
            eur(200),
            "6 B: two free, booked on the first B line"
        );
        assert!(p.lines[2].discounts.is_empty());
        assert_eq!(p.discount, eur(300));
        assert_eq!(p.total, eur(298 + 600 - 200));
    }

    #[test]
    fn a_fixed_amount_from_a_price_barcode_wins_over_the_unit_price() {
        let mut l = line("CHEESE", Qty::Grams(300), 2000);
        l.fixed_amount = Some(eur(617));
        assert_eq!(price(&[l], &[], true, Currency::EUR).unwrap().total, eur(617));
    }
}
