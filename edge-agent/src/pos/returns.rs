//! Voids and returns. A void gives every tender back and restocks the
//! whole sale (refused once anything was returned); a return gives back
//! each returned line's share of what was paid for it, to the sale's
//! tenders in order or in cash.

use storegate_protocol::device::{BusError, ErrorCode, PosResult, RefundMethod, ReturnItem, ReturnView};
use storegate_protocol::event::{EventBody, Return, ReturnLine, Sale, SaleVoid, Tender, TenderMethod};
use storegate_protocol::{Currency, EventId, Money, Qty, Sku};

use super::approvals::{Risky, Verdict, digest_of};
use super::{Lane, err, internal, new_id};
use crate::journal::{JournalError, SaleRecord, now_ms};
use crate::pricing::{self, LineInput};

/// Why a line cannot be returned against its receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    /// The lane's mistake.
    #[error("{0}")]
    Invalid(String),
    /// Amounts that do not fit (never with real receipts).
    #[error("{0}")]
    Overflow(String),
}

/// What returning `qty` of `sku` against `sale` refunds (its share of
/// what the sale's lines of that SKU were paid, and of their tax), given
/// `already` units of it returned before (this return's earlier lines
/// included).
pub(super) fn share_of(sale: &Sale, sku: &Sku, qty: Qty, already: i64) -> Result<(Money, Money), Refused> {
    let sold: Vec<_> = sale.lines.iter().filter(|l| l.sku == *sku).collect();
    let Some(first) = sold.first() else {
        return Err(Refused::Invalid(format!("{sku} is not on that receipt")));
    };
    if first.qty.measure() != qty.measure() {
        return Err(Refused::Invalid(format!(
            "{sku} was sold by {:?}",
            first.qty.measure()
        )));
    }
    let units: i64 = sold.iter().map(|l| l.qty.base_units()).sum();
    if already.saturating_add(qty.base_units()) > units {
        return Err(Refused::Invalid(format!(
            "{sku}: {units} sold, {already} returned already"
        )));
    }
    let currency = sale.totals.total.currency;
    let sum = |f: fn(&&storegate_protocol::event::SaleLine) -> i64| {
        sold.iter().map(f).try_fold(0i64, i64::checked_add)
    };
    let share = |v: Option<i64>| {
        let v = v.ok_or_else(|| Refused::Overflow(format!("{sku}: the sale's amounts overflow")))?;
        Money::new(v, currency)
            .mul_div_round(qty.base_units(), units.max(1))
            .map_err(|e| Refused::Overflow(e.to_string()))
    };
    Ok((share(sum(|l| l.total.minor))?, share(sum(|l| l.tax.minor))?))
}

/// Refund tenders for `total` back to `tenders` in order, each up to what
/// it paid (cash as cash received); `key` mints each refund's payment key.
pub(super) fn to_tenders(
    total: i64,
    tenders: &[Tender],
    currency: Currency,
    mut key: impl FnMut() -> EventId,
) -> Vec<Tender> {
    let mut left = total;
    let mut out = Vec::new();
    for t in tenders {
        if left <= 0 {
            break;
        }
        let part = left.min(t.amount.minor);
        left -= part;
        out.push(Tender {
            payment_key: key(),
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

/// Units of each SKU in `returns`.
fn returned_units(returns: &[Return]) -> Vec<(Sku, i64)> {
    returns
        .iter()
        .flat_map(|r| r.lines.iter().map(|l| (l.sku.clone(), l.qty.base_units())))
        .collect()
}

impl Lane {
    /// A sale of this store, or a lane error.
    pub(super) async fn load_sale(&self, sale_id: EventId) -> Result<SaleRecord, BusError> {
        self.ctx
            .journal
            .sale(sale_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                err(
                    ErrorCode::SaleNotFound,
                    format!("no sale {sale_id} at this store"),
                )
            })
    }

    /// Checks the store's approval rules for `op`: `Ok(reason)` (with who
    /// approved it, if anyone had to) to go ahead, or why not.
    fn approved(
        &self,
        op: Risky,
        refund: i64,
        digest: [u8; 32],
        approval: Option<String>,
        reason: String,
    ) -> Result<String, BusError> {
        let Some(what) = self.ctx.cfg.approvals.needs(op, refund) else {
            return Ok(reason);
        };
        let required = |message: String, id: Option<String>| BusError {
            approval: id,
            ..err(ErrorCode::ApprovalRequired, message)
        };
        let Some(id) = approval else {
            let currency = self.ctx.cfg.currency.to_string();
            let id = self
                .ctx
                .approvals
                .ask(&self.id, digest, what.clone(), refund, currency);
            return Err(required(
                format!(
                    "{what}: a supervisor must approve; asked as {id}, repeat the request with it once approved"
                ),
                Some(id),
            ));
        };
        match self.ctx.approvals.take(&id, &self.id, digest) {
            Verdict::Approved(by) => Ok(if reason.is_empty() {
                format!("approved by {by} ({id})")
            } else {
                format!("{reason} (approved by {by}, {id})")
            }),
            Verdict::Waiting => Err(required(
                format!("{what}: approval {id} is still waiting for a supervisor"),
                Some(id),
            )),
            Verdict::Denied(by) => Err(required(format!("{what}: {by} denied approval {id}"), None)),
            Verdict::Unknown => Err(required(
                format!(
                    "{what}: {id} approves no such operation at this lane (other details, used, or expired); ask again"
                ),
                None,
            )),
        }
    }

    pub(super) async fn void(
        &mut self,
        sale_id: EventId,
        reason: String,
        approval: Option<String>,
    ) -> Result<PosResult, BusError> {
        let record = self.load_sale(sale_id).await?;
        if record.voided {
            return Err(err(
                ErrorCode::AlreadyVoided,
                format!("sale {sale_id} is already voided"),
            ));
        }
        if !self
            .ctx
            .journal
            .returns_of(sale_id)
            .await
            .map_err(internal)?
            .is_empty()
        {
            return Err(err(
                ErrorCode::ReturnInvalid,
                format!("sale {sale_id} has returns; return the remaining items instead of voiding it"),
            ));
        }
        let total = record
            .sale
            .tenders
            .iter()
            .fold(0i64, |sum, t| sum.saturating_add(t.amount.minor));
        let digest = digest_of(&(&self.id, "void", sale_id));
        let reason = self.approved(Risky::PostVoid, total, digest, approval, reason)?;
        let refunds = record
            .sale
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

    pub(super) async fn return_items(
        &mut self,
        sale_id: Option<EventId>,
        items: Vec<ReturnItem>,
        refund: RefundMethod,
        reason: String,
        approval: Option<String>,
    ) -> Result<PosResult, BusError> {
        if items.is_empty() {
            return Err(err(ErrorCode::ReturnInvalid, "nothing to return"));
        }
        let currency = self.ctx.cfg.currency;
        let invalid = |m: String| err(ErrorCode::ReturnInvalid, m);
        let original = match sale_id {
            Some(id) => Some(self.load_sale(id).await?),
            None => None,
        };
        if original.as_ref().is_some_and(|r| r.voided) {
            return Err(invalid("that sale was voided".into()));
        }
        let earlier = match sale_id {
            Some(id) => self.ctx.journal.returns_of(id).await.map_err(internal)?,
            None => Vec::new(),
        };
        let mut before = returned_units(&earlier);
        // The refund limit counts what this sale already refunded: a big
        // return split into small ones still needs its approval.
        let refunded_before = earlier
            .iter()
            .flat_map(|r| &r.refunds)
            .fold(0i64, |sum, t| sum.saturating_add(t.amount.minor));
        let mut lines = Vec::new();
        for item in &items {
            let qty = match (item.qty, item.grams) {
                (Some(n), None) => Qty::each(n),
                (None, Some(g)) => Qty::grams(g),
                (None, None) => Qty::each(1),
                (Some(_), Some(_)) => return Err(invalid(format!("{}: qty or grams, not both", item.sku))),
            }
            .map_err(|e| invalid(e.to_string()))?;
            let (amount, tax) = match &original {
                Some(r) => {
                    let already: i64 = before
                        .iter()
                        .filter(|(s, _)| *s == item.sku)
                        .map(|(_, n)| n)
                        .sum();
                    let share = share_of(&r.sale, &item.sku, qty, already).map_err(|e| match e {
                        Refused::Invalid(m) => invalid(m),
                        overflow @ Refused::Overflow(_) => internal(overflow),
                    })?;
                    before.push((item.sku.clone(), qty.base_units()));
                    share
                }
                None => {
                    if refund == RefundMethod::OriginalTender {
                        return Err(invalid(
                            "a refund to the original tender needs the receipt".into(),
                        ));
                    }
                    self.priced_now(&item.sku, qty).await?
                }
            };
            lines.push(ReturnLine {
                sku: item.sku.clone(),
                qty,
                amount,
                tax,
                restock: item.restock.unwrap_or(true),
            });
        }
        let total: i64 = lines.iter().map(|l| l.amount.minor).sum();
        let refunds = match (&refund, &original) {
            (RefundMethod::OriginalTender, Some(r)) => to_tenders(total, &r.sale.tenders, currency, new_id),
            _ => vec![Tender {
                payment_key: new_id(),
                amount: Money::new(total, currency),
                method: TenderMethod::Cash {
                    received: Money::new(total, currency),
                },
            }],
        };
        let digest = digest_of(&(&self.id, "return", sale_id, &items, &refund));
        let risky = Risky::Return {
            receipt: sale_id.is_some(),
        };
        let reason = self.approved(
            risky,
            total.saturating_add(refunded_before),
            digest,
            approval,
            reason,
        )?;
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

    /// What `qty` of `sku` costs now (a return without a receipt).
    async fn priced_now(&self, sku: &Sku, qty: Qty) -> Result<(Money, Money), BusError> {
        let catalog = &self.ctx.catalog;
        let product = catalog
            .by_sku(sku.as_str())
            .await
            .map_err(internal)?
            .ok_or_else(|| err(ErrorCode::UnknownSku, format!("no product {sku}")))?;
        let price = catalog
            .price(sku.as_str(), now_ms())
            .await
            .map_err(internal)?
            .ok_or_else(|| err(ErrorCode::NoPrice, format!("{sku} has no price")))?;
        let priced = pricing::price(
            &[LineInput {
                sku: sku.clone(),
                qty,
                unit_price: price,
                fixed_amount: None,
                tax_rate_bp: product.tax_rate_bp,
            }],
            &[],
            true,
            self.ctx.cfg.currency,
        )
        .map_err(internal)?;
        Ok((priced.total, priced.tax))
    }
}

#[cfg(test)]
mod tests {
    use storegate_protocol::samples;

    use super::*;

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap())
    }

    #[test]
    fn a_return_gets_its_share_of_what_was_paid_and_no_more_than_was_sold() {
        let sale = samples::sale(1);
        let line = &sale.lines[0];
        let units = line.qty.base_units();
        let sku = line.sku.clone();
        let one = match line.qty.measure() {
            storegate_protocol::Measure::Each => Qty::each(1).unwrap(),
            storegate_protocol::Measure::Grams => Qty::grams(1).unwrap(),
        };
        let (amount, tax) = share_of(&sale, &sku, one, 0).unwrap();
        assert_eq!(amount, line.total.mul_div_round(1, units).unwrap());
        assert_eq!(tax, line.tax.mul_div_round(1, units).unwrap());
        assert!(
            matches!(share_of(&sale, &sku, one, units), Err(Refused::Invalid(m)) if m.contains("returned already"))
        );
        let other = Sku::parse("NOT-SOLD").unwrap();
        assert!(
            matches!(share_of(&sale, &other, one, 0), Err(Refused::Invalid(m)) if m.contains("not on that receipt"))
        );
    }

    #[test]
    fn refunds_go_back_to_the_tenders_in_order() {
        let cur = Currency::parse("EUR").unwrap();
        let cash = Tender {
            payment_key: EventId::from_u128(1),
            amount: eur(300),
            method: TenderMethod::Cash { received: eur(500) },
        };
        let card = Tender {
            payment_key: EventId::from_u128(2),
            amount: eur(700),
            method: samples::sale(1).tenders[0].method.clone(),
        };
        let mut n = 10u128;
        let mut key = || {
            n += 1;
            EventId::from_u128(n)
        };
        let back = to_tenders(500, &[cash.clone(), card.clone()], cur, &mut key);
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].amount, back[1].amount), (eur(300), eur(200)));
        assert!(
            matches!(back[0].method, TenderMethod::Cash { received } if received == eur(300)),
            "cash back is what it is"
        );
        assert_eq!(back[1].method, card.method);
        assert_ne!(
            back[0].payment_key, cash.payment_key,
            "refunds get keys of their own"
        );
        assert_eq!(to_tenders(200, &[cash, card], cur, &mut key).len(), 1);
        assert!(to_tenders(0, &[], cur, &mut key).is_empty());
    }
}
