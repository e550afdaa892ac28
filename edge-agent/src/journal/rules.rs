//! The journal's checks and keys that need no database.

use storegate_protocol::event::EventBody;
use storegate_protocol::{Currency, EventId, Money};

use super::JournalError;

/// An idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A sale's own id (looked up in `sales`).
    Sale(EventId),
    /// Any other key (kept in `journal_keys`).
    Named(String),
}

/// The idempotency key a body carries by itself.
pub(crate) fn natural_key(body: &EventBody) -> Option<Key> {
    match body {
        EventBody::Sale(s) => Some(Key::Sale(s.sale_id)),
        EventBody::SaleVoided(v) => Some(Key::Named(format!("void:{}", v.sale_id))),
        EventBody::Return(r) => Some(Key::Named(format!("return:{}", r.return_id))),
        EventBody::PaymentVoided(p) => Some(Key::Named(format!("payment-void:{}", p.payment_key))),
        _ => None,
    }
}

/// Checks what can be checked without the database.
pub(crate) fn validate(body: &EventBody, currency: Currency) -> Result<(), JournalError> {
    let bad = |m: String| Err(JournalError::Invalid(m));
    let check_money = |what: &str, m: &Money| {
        if m.currency != currency {
            Err(JournalError::Invalid(format!(
                "{what} is in {} but this store works in {currency}",
                m.currency
            )))
        } else {
            Ok(())
        }
    };
    // No card data in any free-text field, whoever records the event (a
    // lane, a device, the local HTTP API).
    body.card_data()
        .map_err(|e| JournalError::Invalid(e.to_string()))?;
    match body {
        EventBody::TelemetryDropped(_) => {
            return bad("TelemetryDropped is written by the journal itself, never recorded".into());
        }
        EventBody::Sale(s) => {
            if s.lines.is_empty() {
                return bad("a sale needs at least one line".into());
            }
            check_money("sale total", &s.totals.total)?;
            for l in &s.lines {
                check_money("line total", &l.total)?;
                check_money("unit price", &l.unit_price)?;
            }
            for t in &s.tenders {
                check_money("tender", &t.amount)?;
            }
            let paid = Money::sum(currency, s.tenders.iter().map(|t| &t.amount))
                .map_err(|e| JournalError::Invalid(e.to_string()))?;
            if paid != s.totals.total {
                return bad(format!(
                    "tenders sum to {paid} but the sale total is {}",
                    s.totals.total
                ));
            }
        }
        EventBody::Return(r) => {
            if r.lines.is_empty() {
                return bad("a return needs at least one line".into());
            }
            for l in &r.lines {
                check_money("return line", &l.amount)?;
            }
        }
        _ => {}
    }
    Ok(())
}
