//! The payment worker: claims payments in a work state and settles them
//! with the provider (capture, void, refund), then tells stores the
//! outcome of their store-and-forward payments.

use std::time::Duration;

use storegate_protocol::downlink::{DownBody, PaymentDecision, PaymentOutcome};
use storegate_protocol::{Currency, EventId, Money, StoreId};
use tokio_util::sync::CancellationToken;

use super::repo::{self, PaymentRow};
use super::{CaptureOutcome, Payments, ProviderError, limited};
use crate::audit;
use crate::db::now_ms;
use crate::domain::payment::{PaymentStatus, Settle, settle as plan};

/// How long a claimed payment is leased to the worker that claimed it.
const LEASE_MS: i64 = 30_000;
/// How soon a payment whose settling failed is tried again.
const RETRY_MS: i64 = 2_000;
/// Who the audit log says settled a payment.
const ACTOR: &str = "hub:payments";

/// Runs the payment worker until `shutdown`: captures, voids and refunds
/// whatever is pending, and tells stores about store-and-forward outcomes.
pub async fn worker(
    payments: Payments,
    kick: crate::downlink::Kick,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match process_pending(&payments, 100).await {
            Ok(stores) => {
                for s in stores {
                    kick.send(&s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "payment worker pass failed"),
        }
    }
}

/// One pass of the worker; returns stores with new downlink.
pub async fn process_pending(payments: &Payments, limit: i64) -> Result<Vec<StoreId>, sqlx::Error> {
    let db = &payments.db;
    let now = now_ms();
    let mut stores = Vec::new();
    for p in repo::work(db, now, limit).await? {
        // Claim: only one worker (or replica) gets it.
        if !repo::claim(db, &p, now + LEASE_MS).await? {
            continue;
        }
        match settle(payments, &p).await {
            Ok(Some(s)) => stores.push(s),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(payment = %p.id, error = %e, "payment not settled; retrying later");
                // Retry after a short pause rather than the full lease.
                let _ = repo::retry_at(db, &p.id, now_ms() + RETRY_MS).await;
            }
        }
    }
    stores.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    stores.dedup();
    Ok(stores)
}

#[derive(Debug, thiserror::Error)]
enum SettleError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Settles one claimed payment; returns the store told of a
/// store-and-forward outcome.
async fn settle(payments: &Payments, p: &PaymentRow) -> Result<Option<StoreId>, SettleError> {
    let db = &payments.db;
    let currency = Currency::parse(&p.currency).map_err(|e| {
        ProviderError::Unavailable(format!("payment {} has currency {:?}: {e}", p.id, p.currency))
    })?;
    let amount = Money::new(p.amount_minor, currency);
    let limit = payments.timeout;
    let provider = &payments.provider;
    match plan(p.status, p.method, p.offline != 0, p.captured_minor) {
        Settle::CaptureCard => {
            let outcome = limited(
                limit,
                provider.capture(&p.payment_key, p.provider_ref.as_deref(), amount, p.token()),
            )
            .await?;
            captured(payments, p, outcome).await
        }
        Settle::DebitGiftCard => {
            let mut tx = db.begin().await?;
            let outcome = match repo::gift_card_debit(&mut tx, p.token(), amount).await? {
                Ok(()) => CaptureOutcome::Captured {
                    id: format!("gift-{}", p.payment_key),
                },
                Err(reason) => CaptureOutcome::Declined { reason },
            };
            record_capture(payments, p, tx, outcome).await
        }
        Settle::MarkCaptured => {
            let mut tx = db.begin().await?;
            repo::settled(&mut tx, &p.id, p.status, PaymentStatus::Captured, None, None).await?;
            tx.commit().await?;
            Ok(None)
        }
        Settle::Void {
            provider: ask,
            credit_gift_card,
        } => {
            if ask {
                limited(limit, provider.void(&p.payment_key)).await?;
            }
            let mut tx = db.begin().await?;
            if credit_gift_card {
                repo::gift_card_credit(&mut tx, p.token(), p.captured_minor).await?;
            }
            repo::settled(&mut tx, &p.id, p.status, PaymentStatus::Voided, None, None).await?;
            audit::record(
                &mut tx,
                ACTOR,
                "payment_voided",
                "payment",
                &p.id,
                serde_json::json!({"amount": p.amount_minor}),
            )
            .await?;
            tx.commit().await?;
            Ok(None)
        }
        Settle::Refund {
            provider: ask,
            credit_gift_card,
        } => {
            // Money goes back only once the payment it returns was taken:
            // a refund of a payment still being captured waits; one of a
            // payment that was never captured is declined, paying nothing.
            if let Some(parent) = &p.parent_id {
                let mut conn = db.pool.acquire().await?;
                let original = repo::by_id(&mut conn, None, parent).await?.map(|o| o.status);
                drop(conn);
                match refund_gate(original) {
                    RefundGate::Pay => {}
                    RefundGate::Wait => {
                        repo::retry_at(db, &p.id, now_ms() + RETRY_MS).await?;
                        return Ok(None);
                    }
                    RefundGate::Decline => {
                        let mut tx = db.begin().await?;
                        let why = format!("payment {parent} it returns was never captured");
                        repo::settled(
                            &mut tx,
                            &p.id,
                            p.status,
                            PaymentStatus::Declined,
                            None,
                            Some(&why),
                        )
                        .await?;
                        audit::record(
                            &mut tx,
                            ACTOR,
                            "refund_declined",
                            "payment",
                            &p.id,
                            serde_json::json!({"amount": p.amount_minor, "parent": parent}),
                        )
                        .await?;
                        tx.commit().await?;
                        return Ok(None);
                    }
                }
            }
            let reference = if ask {
                limited(limit, provider.refund(&p.payment_key, amount, p.token())).await?
            } else {
                String::new()
            };
            let mut tx = db.begin().await?;
            if credit_gift_card {
                repo::gift_card_credit(&mut tx, p.token(), p.amount_minor).await?;
            }
            repo::settled(
                &mut tx,
                &p.id,
                p.status,
                PaymentStatus::Refunded,
                Some(&reference),
                None,
            )
            .await?;
            audit::record(
                &mut tx,
                ACTOR,
                "payment_refunded",
                "payment",
                &p.id,
                serde_json::json!({"amount": p.amount_minor, "parent": p.parent_id}),
            )
            .await?;
            tx.commit().await?;
            Ok(None)
        }
        Settle::Nothing => Ok(None),
    }
}

async fn captured(
    payments: &Payments,
    p: &PaymentRow,
    outcome: CaptureOutcome,
) -> Result<Option<StoreId>, SettleError> {
    let tx = payments.db.begin().await?;
    record_capture(payments, p, tx, outcome).await
}

/// Records a capture's outcome: captured, or declined with an exception
/// for back office; a store-and-forward payment's store is told.
async fn record_capture(
    payments: &Payments,
    p: &PaymentRow,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    outcome: CaptureOutcome,
) -> Result<Option<StoreId>, SettleError> {
    let decision = match outcome {
        CaptureOutcome::Captured { id } => {
            repo::settled(&mut tx, &p.id, p.status, PaymentStatus::Captured, Some(&id), None).await?;
            audit::record(
                &mut tx,
                ACTOR,
                "payment_captured",
                "payment",
                &p.id,
                serde_json::json!({"amount": p.amount_minor, "capture_id": id}),
            )
            .await?;
            metrics::counter!("hub_payments_total", "result" => "captured").increment(1);
            PaymentOutcome::Captured { capture_id: id }
        }
        CaptureOutcome::Declined { reason } => {
            repo::settled(
                &mut tx,
                &p.id,
                p.status,
                PaymentStatus::Declined,
                None,
                Some(&reason),
            )
            .await?;
            repo::open_exception(&mut tx, p, &reason).await?;
            audit::record(
                &mut tx,
                ACTOR,
                "payment_declined_after_sale",
                "payment",
                &p.id,
                serde_json::json!({"amount": p.amount_minor, "reason": reason, "store": p.store_id}),
            )
            .await?;
            metrics::counter!("hub_payments_total", "result" => "exception").increment(1);
            PaymentOutcome::Declined { reason }
        }
    };
    let mut told = None;
    if p.offline != 0
        && let Some(store) = &p.store_id
        && let Ok(key) = p.payment_key.parse::<EventId>()
    {
        let body = DownBody::PaymentDecision(PaymentDecision {
            payment_key: key,
            sale_id: p.sale_id.as_deref().and_then(EventId::from_slice),
            outcome: decision,
        });
        crate::downlink::enqueue(&mut tx, &payments.db, store, &[body]).await?;
        told = StoreId::parse(store.as_str()).ok();
    }
    tx.commit().await?;
    Ok(told)
}

/// What a refund does given the status of the payment it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefundGate {
    /// The payment was taken: pay the refund.
    Pay,
    /// The payment is still being authorised or captured: try later.
    Wait,
    /// The payment was declined, voided or is unknown: pay nothing.
    Decline,
}

fn refund_gate(original: Option<PaymentStatus>) -> RefundGate {
    use PaymentStatus::*;
    match original {
        Some(Captured | Refunded) => RefundGate::Pay,
        Some(Authorized | PendingCapture | VoidPending | RefundPending) => RefundGate::Wait,
        Some(Declined | Voided) | None => RefundGate::Decline,
    }
}

#[cfg(test)]
mod refund_gate_tests {
    use super::*;
    use crate::domain::machine::Machine;

    #[test]
    fn a_refund_waits_for_its_capture_and_never_pays_for_a_declined_one() {
        use PaymentStatus::*;
        assert_eq!(refund_gate(Some(Captured)), RefundGate::Pay);
        assert_eq!(refund_gate(Some(PendingCapture)), RefundGate::Wait);
        assert_eq!(refund_gate(Some(Authorized)), RefundGate::Wait);
        assert_eq!(refund_gate(Some(Declined)), RefundGate::Decline);
        assert_eq!(refund_gate(Some(Voided)), RefundGate::Decline);
        assert_eq!(refund_gate(None), RefundGate::Decline);
        assert!(
            RefundPending.can_become(Declined),
            "a refund of nothing is declined"
        );
    }
}
