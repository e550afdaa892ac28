//! What lanes are shown: basket lines, tenders, receipts.

use storegate_protocol::device::{LineView, ReceiptView, TenderView};
use storegate_protocol::event::{CardAuth, Sale, Tender, TenderMethod};

use super::Line;
use crate::pricing;

pub(super) fn tender_view(t: &Tender) -> TenderView {
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

pub(super) fn line_view(i: usize, l: &Line, p: &pricing::PricedLine) -> LineView {
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

/// A sale's receipt.
pub(super) fn receipt(s: &Sale, seq: u64, voided: bool) -> ReceiptView {
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
