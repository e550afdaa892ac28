//! The saga after step 1: authorise, then confirm and fulfil, or
//! compensate; and the worker that resumes sagas whose runner died.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::AnyConnection;
use storegate_protocol::downlink::TaskKind;
use storegate_protocol::{Currency, Money};
use tokio_util::sync::CancellationToken;

use super::Commerce;
use super::repo;
use crate::db::now_ms;
use crate::domain::order::{Fulfilment, NotAuthorized, OrderStatus, SagaMove, SagaStep, after_failure};
use crate::domain::payment::{PaymentMethod, PaymentStatus};
use crate::payments::{self, AuthOutcome, NewPayment};
use crate::{audit, catalog, shipping, stock, tasks};

/// The payment key of an online order (the provider's idempotency key).
pub(super) fn payment_key(order_id: &str) -> String {
    format!("order-{order_id}")
}

/// Why a saga compensates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The payment was declined or never authorised: `failed`.
    Failed,
    /// Cancelled while authorising: `cancelled`.
    Cancelled,
}

impl Commerce {
    /// Runs a saga from its current step until it is done, failed, or
    /// waiting for a provider retry.
    pub async fn run_saga(&self, order_id: &str) -> Result<(), sqlx::Error> {
        let Some(s) = repo::saga(&self.db, order_id).await? else {
            return Ok(());
        };
        let amount = Money::new(
            s.total_minor,
            Currency::parse(&s.currency).unwrap_or(self.currency),
        );
        let key = payment_key(order_id);
        let card = Card {
            key: &key,
            token: &s.card_token,
            last4: &s.card_last4,
            amount,
        };
        match s.step {
            SagaStep::Authorize if s.method == PaymentMethod::GiftCard => {
                self.confirm(order_id, &card, None).await
            }
            SagaStep::Authorize => {
                let outcome = self
                    .payments
                    .authorize_card(&key, amount, &s.card_token, self.payments.timeout)
                    .await;
                if self.abort_after_authorize {
                    tracing::error!(order_id, "failpoint abort_after_authorize: aborting");
                    std::process::abort();
                }
                let (how, why) = match outcome {
                    Ok(AuthOutcome::Authorized { id, code }) => {
                        return self.confirm(order_id, &card, Some((id, code))).await;
                    }
                    Ok(AuthOutcome::Declined { reason }) => {
                        (NotAuthorized::Declined, format!("payment declined: {reason}"))
                    }
                    Err(e) => {
                        tracing::warn!(order_id, error = %e, attempt = s.attempts + 1, "authorisation failed");
                        (
                            NotAuthorized::NoAnswer,
                            format!("payment provider failed {} times: {e}", s.attempts + 1),
                        )
                    }
                };
                match after_failure(how, s.attempts) {
                    SagaMove::Compensate { void } => {
                        self.compensate(order_id, Ending::Failed, &why, void).await
                    }
                    SagaMove::Retry { after_secs } => {
                        repo::saga_retry_at(&self.db, order_id, now_ms() + 1_000 * after_secs).await
                    }
                }
            }
            SagaStep::Compensate => {
                self.compensate(order_id, Ending::Cancelled, "cancelled", true)
                    .await
            }
            SagaStep::Done | SagaStep::Failed => Ok(()),
        }
    }

    /// Step 3: the payment row, `confirmed`, then shipments and pick tasks,
    /// conditional on the saga still being at `authorize`.
    async fn confirm(
        &self,
        order_id: &str,
        card: &Card<'_>,
        auth: Option<(String, String)>,
    ) -> Result<(), sqlx::Error> {
        let gift = auth.is_none();
        let mut tx = self.db.begin().await?;
        if !repo::move_saga(&mut tx, order_id, SagaStep::Done, Some(card.key), false).await? {
            // Cancelled (or done by another worker) meanwhile. An
            // authorisation we hold but nobody recorded must be released.
            if !payments::key_exists(&mut tx, card.key).await?
                && let Some((id, code)) = auth
            {
                payments::upsert_rows(
                    &mut tx,
                    &[card.row(order_id, PaymentStatus::VoidPending, Some(id), code, 0, false)],
                )
                .await?;
            }
            return tx.commit().await;
        }
        let method = if gift {
            PaymentMethod::GiftCard
        } else {
            PaymentMethod::Card
        };
        let row = match auth {
            Some((id, code)) => card.row(order_id, PaymentStatus::Authorized, Some(id), code, 0, false),
            None => match payments::gift_card_debit(&mut tx, card.token, card.amount).await? {
                Ok(()) => card.row(
                    order_id,
                    PaymentStatus::Authorized,
                    Some(format!("gift-{}", card.key)),
                    "GIFT".into(),
                    card.amount.minor,
                    true,
                ),
                Err(reason) => {
                    drop(tx);
                    return self
                        .compensate(
                            order_id,
                            Ending::Failed,
                            &format!("payment declined: {reason}"),
                            false,
                        )
                        .await;
                }
            },
        };
        payments::upsert_rows(&mut tx, &[row]).await?;
        let mut events = vec![(
            "payment_authorized",
            serde_json::json!({"amount": card.amount.minor, "method": method}),
        )];
        // Fulfil: group lines by location.
        let mut groups: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for l in repo::pick_lines(&mut tx, order_id).await? {
            groups
                .entry(l.location.unwrap_or_default())
                .or_default()
                .push((l.sku, l.qty));
        }
        let ship_to = repo::ship_to(&mut tx, order_id).await?;
        let fulfilment = ship_to.fulfilment.unwrap_or(Fulfilment::Ship);
        if fulfilment == Fulfilment::Ship
            && let Some(region) = &ship_to.ship_region
        {
            for (loc, lines) in &groups {
                let grams = self.grams(&mut tx, lines).await?;
                let q = shipping::quote(&mut tx, region, grams).await?;
                if let Some(best) = q
                    .into_iter()
                    .find(|q| q.currency == card.amount.currency.as_str())
                {
                    let id = shipping::create(&mut tx, order_id, loc, &best).await?;
                    events.push((
                        "shipment_created",
                        serde_json::json!({"shipment": id, "carrier": best.carrier, "from": loc}),
                    ));
                }
            }
        }
        repo::set_status(&mut tx, order_id, OrderStatus::Confirmed, "payment authorised").await?;
        repo::set_status(&mut tx, order_id, fulfilment.after_confirmed(), "").await?;
        // Last: the pick tasks (they lock each location's sync row, which
        // every order for that location takes: hold it for the least time).
        let task_ids: Vec<String> = groups.keys().map(|_| crate::auth::new_id()).collect();
        let listed: Vec<serde_json::Value> = groups
            .keys()
            .zip(&task_ids)
            .map(|(loc, task)| serde_json::json!({"task": task, "location": loc}))
            .collect();
        events.push(("pick_tasks_created", serde_json::json!({ "tasks": listed })));
        audit::record_many(&mut tx, "hub:saga", "order", order_id, &events).await?;
        let note = match fulfilment {
            Fulfilment::Collect => "click and collect: pick and hold for the customer",
            Fulfilment::Ship => "pick for shipment",
        };
        for ((loc, lines), task) in groups.iter().zip(&task_ids) {
            tasks::create_as(
                &mut tx,
                &self.db,
                task,
                loc,
                TaskKind::Pick,
                Some(order_id),
                lines,
                Some(note.into()),
            )
            .await?;
        }
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "confirmed").increment(1);
        self.kick_all(groups.keys());
        Ok(())
    }

    async fn grams(
        &self,
        conn: &mut sqlx::Transaction<'static, sqlx::Any>,
        lines: &[(String, i64)],
    ) -> Result<i64, sqlx::Error> {
        let skus: Vec<&str> = lines.iter().map(|(s, _)| s.as_str()).collect();
        let products = catalog::products_lite(conn, &skus).await?;
        let default = self.settings.default_item_grams;
        Ok(lines
            .iter()
            .map(|(sku, qty)| {
                products
                    .iter()
                    .find(|p| &p.sku == sku)
                    .map_or(default, |p| p.unit_grams(default))
                    .saturating_mul(*qty)
            })
            .sum())
    }

    /// Releases everything an order holds and ends it (`failed` or
    /// `cancelled`), once: conditional on the saga's step. `void` asks the
    /// provider to release an authorisation it may hold.
    async fn compensate(
        &self,
        order_id: &str,
        ending: Ending,
        why: &str,
        void: bool,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        if !repo::move_saga(&mut tx, order_id, SagaStep::Failed, None, false).await? {
            return tx.commit().await;
        }
        let key = payment_key(order_id);
        if void {
            // The provider may hold an authorisation we never heard of.
            let t = repo::total(&mut tx, order_id).await?;
            let amount = Money::new(
                t.total_minor,
                Currency::parse(&t.currency).unwrap_or(self.currency),
            );
            let tombstone = Card {
                key: &key,
                token: "",
                last4: "",
                amount,
            };
            let mut row = tombstone.row(
                order_id,
                PaymentStatus::VoidPending,
                None,
                why.to_owned(),
                0,
                false,
            );
            row.card_token = None;
            row.card_last4 = None;
            payments::upsert_rows(&mut tx, &[row]).await?;
            payments::transition(&mut tx, &key, PaymentStatus::VoidPending).await?;
        } else {
            payments::record_declined_order(&mut tx, &key, order_id, why).await?;
            audit::record(
                &mut tx,
                "hub:saga",
                "payment_declined",
                "order",
                order_id,
                serde_json::json!({"reason": why}),
            )
            .await?;
        }
        let stores = release_all(&mut tx, &self.db, order_id, why).await?;
        let (status, action) = match ending {
            Ending::Failed => (OrderStatus::Failed, "order_failed"),
            Ending::Cancelled => (OrderStatus::Cancelled, "order_cancelled"),
        };
        repo::set_status(&mut tx, order_id, status, why).await?;
        audit::record(
            &mut tx,
            "hub:saga",
            action,
            "order",
            order_id,
            serde_json::json!({"reason": why}),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => status.as_str()).increment(1);
        self.kick_all(stores);
        Ok(())
    }
}

/// The card (or gift card) a saga charges.
struct Card<'a> {
    key: &'a str,
    token: &'a str,
    last4: &'a str,
    amount: Money,
}

impl Card<'_> {
    fn row(
        &self,
        order_id: &str,
        status: PaymentStatus,
        reference: Option<String>,
        detail: String,
        captured: i64,
        gift: bool,
    ) -> NewPayment {
        NewPayment {
            id: self.key.to_owned(),
            key: self.key.to_owned(),
            order_id: Some(order_id.to_owned()),
            store_id: None,
            sale_id: None,
            method: if gift {
                PaymentMethod::GiftCard
            } else {
                PaymentMethod::Card
            },
            status,
            amount: self.amount,
            captured,
            card_token: Some(self.token.to_owned()),
            card_last4: Some(self.last4.to_owned()),
            provider_ref: reference,
            offline: false,
            parent_id: None,
            detail,
        }
    }
}

/// Releases every reservation an order still holds (lines whose goods
/// have not left) and withdraws its open tasks; returns the stores told.
pub(super) async fn release_all(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    db: &crate::db::Db,
    order_id: &str,
    why: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let released = release_held(tx, order_id).await?;
    if !released.is_empty() {
        audit::record(
            tx,
            "hub:saga",
            "stock_released",
            "order",
            order_id,
            serde_json::json!({"released": released, "why": why}),
        )
        .await?;
    }
    tasks::cancel_for_order(tx, db, order_id).await
}

/// Releases what the ledger says `order_id` still holds.
async fn release_held(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    let mut released = Vec::new();
    for h in stock::held_by(conn, order_id).await? {
        if h.held > 0 {
            stock::release(conn, &h.location, &h.sku, h.held, order_id).await?;
            released.push(serde_json::json!({"location": h.location, "sku": h.sku, "qty": h.held}));
        }
    }
    Ok(released)
}

/// Resumes sagas whose lease expired (their runner died) until `shutdown`.
pub async fn worker(c: Commerce, poll: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = resume_expired(&c, 50).await {
            tracing::warn!(error = %e, "saga worker pass failed");
        }
    }
}

/// One pass: claims and runs sagas whose lease expired; returns how many.
pub async fn resume_expired(c: &Commerce, limit: i64) -> Result<usize, sqlx::Error> {
    let now = now_ms();
    let mut n = 0;
    for e in repo::expired_sagas(&c.db, now, limit).await? {
        let until = now + c.settings.saga_lease_ms as i64;
        if repo::claim_saga(&c.db, &e.order_id, e.lease_until_ms, until).await? {
            tracing::info!(order_id = %e.order_id, "resuming saga");
            metrics::counter!("hub_sagas_resumed_total").increment(1);
            c.run_saga(&e.order_id).await?;
            n += 1;
        }
    }
    Ok(n)
}
