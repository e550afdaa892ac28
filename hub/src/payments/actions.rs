//! What back office asks of payments: capture or void an authorised one,
//! refund a captured one (idempotent by key), close an exception, issue a
//! gift card. Each is one transaction, audited; the provider is asked by
//! the worker after the commit.

use storegate_protocol::event::{CardToken, Last4};
use storegate_protocol::{Currency, Money};

use super::{GiftCardView, NewGiftCard, NewPayment, PaymentView, repo};
use crate::audit;
use crate::db::Db;
use crate::domain::payment::{Action, ExceptionStatus, RefundRefused, check_refund};

/// Why a back-office payment action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such payment.
    #[error("payment {0} not found")]
    NotFound(String),
    /// Not possible in its state.
    #[error("{0}")]
    State(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<RefundRefused> for ActionError {
    fn from(e: RefundRefused) -> Self {
        match e {
            RefundRefused::State { .. } => ActionError::State(e.to_string()),
            RefundRefused::NotPositive | RefundRefused::TooMuch { .. } => ActionError::Invalid(e.to_string()),
        }
    }
}

/// Captures an authorised payment now.
pub async fn capture(db: &Db, actor: &str, payment_id: &str) -> Result<PaymentView, ActionError> {
    request(db, actor, payment_id, Action::Capture).await
}

/// Voids an authorised (not yet captured) payment.
pub async fn void(db: &Db, actor: &str, payment_id: &str) -> Result<PaymentView, ActionError> {
    request(db, actor, payment_id, Action::Void).await
}

/// Moves an authorised payment to the work state of `action`, for the
/// worker to settle.
async fn request(db: &Db, actor: &str, payment_id: &str, action: Action) -> Result<PaymentView, ActionError> {
    let mut tx = db.begin().await?;
    if !repo::transition(&mut tx, payment_id, action.target()).await? {
        let p = repo::get(db, payment_id)
            .await?
            .ok_or_else(|| ActionError::NotFound(payment_id.into()))?;
        return Err(ActionError::State(action.refusal(&p.id, p.status)));
    }
    audit::record(
        &mut tx,
        actor,
        action.audit_name(),
        "payment",
        payment_id,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    repo::get(db, payment_id)
        .await?
        .ok_or_else(|| ActionError::NotFound(payment_id.into()))
}

/// Refunds `amount` of a captured payment (partial or full): a new
/// refund row the worker settles (cash: refunded at once). `key` makes it
/// idempotent.
pub async fn refund(
    db: &Db,
    actor: &str,
    payment_id: &str,
    amount: i64,
    key: &str,
    reason: &str,
) -> Result<PaymentView, ActionError> {
    let mut tx = db.begin().await?;
    let p = repo::by_id(&mut tx, Some(db), payment_id)
        .await?
        .ok_or_else(|| ActionError::NotFound(payment_id.into()))?;
    // Keys are the caller's per payment: the same key on another payment
    // is another refund, never this one's answer.
    let refund_key = format!("refund-{}-{key}", p.id);
    if let Some(existing) = repo::by_key(&mut tx, &refund_key).await? {
        return Ok(existing.view());
    }
    let status = check_refund(
        &p.id,
        p.status,
        p.method,
        p.parent_id.is_some(),
        p.captured_minor,
        p.refunded_minor,
        amount,
    )?;
    let currency = Currency::parse(&p.currency).map_err(|e| ActionError::Invalid(e.to_string()))?;
    repo::add_refunded(&mut tx, &p.id, amount).await?;
    let id = crate::auth::new_id();
    repo::upsert_rows(
        &mut tx,
        &[NewPayment {
            id: id.clone(),
            key: refund_key,
            order_id: p.order_id.clone(),
            store_id: p.store_id.clone(),
            sale_id: None,
            method: p.method,
            status,
            amount: Money::new(amount, currency),
            captured: 0,
            card_token: p.card_token.clone(),
            card_last4: p.card_last4.clone(),
            provider_ref: None,
            offline: false,
            parent_id: Some(p.id.clone()),
            detail: reason.to_owned(),
        }],
    )
    .await?;
    audit::record(
        &mut tx,
        actor,
        "refund_requested",
        "payment",
        &p.id,
        serde_json::json!({"amount": amount, "refund_id": id, "reason": reason}),
    )
    .await?;
    tx.commit().await?;
    repo::get(db, &id).await?.ok_or(ActionError::NotFound(id))
}

/// Closes an open exception as `collected` or `written_off`; returns
/// whether there was one to close.
pub async fn resolve_exception(
    db: &Db,
    actor: &str,
    id: i64,
    to: ExceptionStatus,
    note: &str,
) -> Result<bool, ActionError> {
    if to == ExceptionStatus::Open {
        return Err(ActionError::Invalid(
            "status is `collected` or `written_off`".into(),
        ));
    }
    let mut tx = db.begin().await?;
    let closed = repo::close_exception(&mut tx, id, to).await?;
    if closed {
        audit::record(
            &mut tx,
            actor,
            "payment_exception_resolved",
            "payment_exception",
            &id.to_string(),
            serde_json::json!({"status": to, "note": note}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(closed)
}

/// Issues a gift card (or tops one up in its currency); returns it.
pub async fn issue_gift_card(db: &Db, actor: &str, g: &NewGiftCard) -> Result<GiftCardView, ActionError> {
    CardToken::parse(g.token.as_str()).map_err(|e| ActionError::Invalid(format!("token: {e}")))?;
    Last4::parse(&g.last4).map_err(|e| ActionError::Invalid(format!("last4: {e}")))?;
    Currency::parse(&g.currency).map_err(|e| ActionError::Invalid(format!("currency: {e}")))?;
    if g.balance_minor <= 0 {
        return Err(ActionError::Invalid("balance_minor must be positive".into()));
    }
    let mut tx = db.begin().await?;
    if !repo::upsert_gift_card(&mut tx, g).await? {
        return Err(ActionError::Invalid(format!(
            "gift card …{} holds another currency than {}",
            g.last4, g.currency
        )));
    }
    audit::record(
        &mut tx,
        actor,
        "gift_card_issued",
        "gift_card",
        &g.last4,
        serde_json::json!({"amount": g.balance_minor, "currency": g.currency}),
    )
    .await?;
    tx.commit().await?;
    repo::gift_card(db, &g.token)
        .await?
        .ok_or_else(|| ActionError::NotFound(format!("gift card {}", g.last4)))
}
