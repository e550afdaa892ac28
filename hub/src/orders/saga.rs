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
use crate::payments::{self, AuthOutcome, NewPayment, ProviderError};
use crate::{audit, catalog, shipping, stock, tasks};

/// What an online order's payment key starts with.
pub(super) const PAYMENT_KEY_PREFIX: &str = "order-";

/// The payment key of an online order (the provider's idempotency key).
pub(super) fn payment_key(order_id: &str) -> String {
    format!("{PAYMENT_KEY_PREFIX}{order_id}")
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
                self.confirm_gift(order_id, &card).await
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
                self.after_authorize(order_id, &card, s.attempts, outcome).await
            }
            SagaStep::Compensate => {
                self.compensate(order_id, Ending::Cancelled, "cancelled", true)
                    .await
            }
            SagaStep::Done | SagaStep::Failed => Ok(()),
        }
    }

    /// Step 2's outcome: confirm, compensate, or retry later (`attempts`
    /// failed before this one).
    pub(super) async fn after_authorize(
        &self,
        order_id: &str,
        card: &Card<'_>,
        attempts: i64,
        outcome: Result<AuthOutcome, ProviderError>,
    ) -> Result<(), sqlx::Error> {
        let (how, why) = match outcome {
            Ok(AuthOutcome::Authorized { id, code }) => {
                return self
                    .confirm(&[Authorised {
                        order_id,
                        card,
                        id,
                        code,
                    }])
                    .await;
            }
            Ok(AuthOutcome::Declined { reason }) => {
                (NotAuthorized::Declined, format!("payment declined: {reason}"))
            }
            Err(e) => {
                tracing::warn!(order_id, error = %e, attempt = attempts + 1, "authorisation failed");
                (
                    NotAuthorized::NoAnswer,
                    format!("payment provider failed {} times: {e}", attempts + 1),
                )
            }
        };
        match after_failure(how, attempts) {
            SagaMove::Compensate { void } => self.compensate(order_id, Ending::Failed, &why, void).await,
            SagaMove::Retry { after_secs } => {
                repo::saga_retry_at(&self.db, order_id, now_ms() + 1_000 * after_secs).await
            }
        }
    }

    /// Step 3 for card orders the provider authorised, all in one
    /// transaction: each payment row, `confirmed`, then shipments and pick
    /// tasks; conditional on each saga still being at `authorize`.
    pub(super) async fn confirm(&self, done: &[Authorised<'_>]) -> Result<(), sqlx::Error> {
        if done.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = done.iter().map(|a| a.order_id).collect();
        let moved = repo::finish_sagas(&mut tx, &ids).await?;
        let mut rows = Vec::with_capacity(done.len());
        let mut confirmed = Vec::with_capacity(done.len());
        for a in done {
            if moved.iter().any(|m| m == a.order_id) {
                rows.push(a.card.row(
                    a.order_id,
                    PaymentStatus::Authorized,
                    Some(a.id.clone()),
                    a.code.clone(),
                    0,
                    false,
                ));
                confirmed.push((a.order_id, a.card.amount, PaymentMethod::Card));
            } else if !payments::key_exists(&mut tx, a.card.key).await? {
                // Cancelled (or done by another worker) meanwhile. An
                // authorisation we hold but nobody recorded must be released.
                rows.push(a.card.row(
                    a.order_id,
                    PaymentStatus::VoidPending,
                    Some(a.id.clone()),
                    a.code.clone(),
                    0,
                    false,
                ));
            }
        }
        payments::upsert_rows(&mut tx, &rows).await?;
        let stores = self.fulfil(&mut tx, &confirmed).await?;
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "confirmed").increment(confirmed.len() as u64);
        self.kick_all(stores);
        Ok(())
    }

    /// Step 3 for a gift card: the balance debited in the same transaction
    /// as the confirmation (a short balance fails the order).
    async fn confirm_gift(&self, order_id: &str, card: &Card<'_>) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        if !repo::move_saga(&mut tx, order_id, SagaStep::Done, Some(card.key), false).await? {
            return tx.commit().await;
        }
        if let Err(reason) = payments::gift_card_debit(&mut tx, card.token, card.amount).await? {
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
        let row = card.row(
            order_id,
            PaymentStatus::Authorized,
            Some(format!("gift-{}", card.key)),
            "GIFT".into(),
            card.amount.minor,
            true,
        );
        payments::upsert_rows(&mut tx, &[row]).await?;
        let stores = self
            .fulfil(&mut tx, &[(order_id, card.amount, PaymentMethod::GiftCard)])
            .await?;
        tx.commit().await?;
        metrics::counter!("hub_orders_total", "step" => "confirmed").increment(1);
        self.kick_all(stores);
        Ok(())
    }

    /// Fulfils paid orders (order, amount, how paid): their lines grouped
    /// by location, a shipment per location (ship) at the cheapest quote,
    /// `confirmed` then `awaiting_shipment` or `picking`, the audit trail,
    /// and last a pick task per location. Returns the locations told.
    async fn fulfil(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        paid: &[(&str, Money, PaymentMethod)],
    ) -> Result<Vec<String>, sqlx::Error> {
        if paid.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = paid.iter().map(|(id, ..)| *id).collect();
        let mut groups: BTreeMap<String, BTreeMap<String, Vec<(String, i64)>>> = BTreeMap::new();
        for l in repo::pick_lines(tx, &ids).await? {
            groups
                .entry(l.order_id)
                .or_default()
                .entry(l.location.unwrap_or_default())
                .or_default()
                .push((l.sku, l.qty));
        }
        let ship_to: BTreeMap<String, repo::ShipTo> = repo::ship_to(tx, &ids)
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let skus: Vec<&str> = groups
            .values()
            .flat_map(|g| g.values().flatten().map(|(s, _)| s.as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let products: BTreeMap<String, catalog::ProductView> = catalog::products_lite(tx, &skus)
            .await?
            .into_iter()
            .map(|p| (p.sku.clone(), p))
            .collect();
        let default = self.settings.default_item_grams;
        let fulfilment_of = |id: &str| {
            ship_to
                .get(id)
                .and_then(|s| s.fulfilment)
                .unwrap_or(Fulfilment::Ship)
        };
        // Shipments: the cheapest quote in the payment's currency.
        let mut quotes: BTreeMap<(String, i64), Vec<shipping::Quote>> = BTreeMap::new();
        let mut to_ship: Vec<(&str, &str, shipping::Quote)> = Vec::new();
        for (id, amount, _) in paid {
            let region = ship_to.get(*id).and_then(|s| s.ship_region.as_deref());
            let (Fulfilment::Ship, Some(region)) = (fulfilment_of(id), region) else {
                continue;
            };
            for (loc, lines) in groups.get(*id).into_iter().flatten() {
                let grams = lines
                    .iter()
                    .map(|(sku, qty)| {
                        products
                            .get(sku)
                            .map_or(default, |p| p.unit_grams(default))
                            .saturating_mul(*qty)
                    })
                    .fold(0i64, i64::saturating_add);
                let key = (region.to_owned(), grams);
                if !quotes.contains_key(&key) {
                    let q = shipping::quote(tx, region, grams).await?;
                    quotes.insert(key.clone(), q);
                }
                if let Some(best) = quotes[&key]
                    .iter()
                    .find(|q| q.currency == amount.currency.as_str())
                {
                    to_ship.push((id, loc, best.clone()));
                }
            }
        }
        let new: Vec<(&str, &str, &shipping::Quote)> = to_ship.iter().map(|(o, l, q)| (*o, *l, q)).collect();
        let shipment_ids = shipping::create(tx, &new).await?;
        repo::set_status_many(tx, &ids, OrderStatus::Confirmed, "payment authorised").await?;
        for f in [Fulfilment::Ship, Fulfilment::Collect] {
            let these: Vec<&str> = ids.iter().copied().filter(|id| fulfilment_of(id) == f).collect();
            if !these.is_empty() {
                repo::set_status_many(tx, &these, f.after_confirmed(), "").await?;
            }
        }
        // The audit trail, and last the pick tasks (they lock each
        // location's sync row, which every order for that location takes:
        // hold it for the least time).
        let mut task_ids: Vec<(&str, &str, String)> = Vec::new();
        for id in &ids {
            for loc in groups.get(*id).into_iter().flat_map(BTreeMap::keys) {
                task_ids.push((id, loc, crate::auth::new_id()));
            }
        }
        let mut events = Vec::new();
        for (id, amount, method) in paid {
            events.push(audit::Event {
                actor: "hub:saga",
                action: "payment_authorized",
                entity: "order",
                entity_id: id,
                detail: serde_json::json!({"amount": amount.minor, "method": method}),
            });
            for ((o, loc, q), shipment) in to_ship.iter().zip(&shipment_ids) {
                if o == id {
                    events.push(audit::Event {
                        actor: "hub:saga",
                        action: "shipment_created",
                        entity: "order",
                        entity_id: id,
                        detail: serde_json::json!({"shipment": shipment, "carrier": q.carrier, "from": loc}),
                    });
                }
            }
            let listed: Vec<serde_json::Value> = task_ids
                .iter()
                .filter(|(o, ..)| o == id)
                .map(|(_, loc, task)| serde_json::json!({"task": task, "location": loc}))
                .collect();
            events.push(audit::Event {
                actor: "hub:saga",
                action: "pick_tasks_created",
                entity: "order",
                entity_id: id,
                detail: serde_json::json!({ "tasks": listed }),
            });
        }
        audit::record_rows(tx, &events).await?;
        let new_tasks: Vec<tasks::NewTask<'_>> = task_ids
            .iter()
            .map(|(id, loc, task)| tasks::NewTask {
                id: task,
                store: loc,
                kind: TaskKind::Pick,
                order_id: Some(id),
                lines: &groups[*id][*loc],
                note: Some(
                    match fulfilment_of(id) {
                        Fulfilment::Collect => "click and collect: pick and hold for the customer",
                        Fulfilment::Ship => "pick for shipment",
                    }
                    .into(),
                ),
            })
            .collect();
        tasks::create_many(tx, &self.db, &new_tasks).await?;
        let mut stores: Vec<String> = task_ids.iter().map(|(_, loc, _)| (*loc).to_owned()).collect();
        stores.sort_unstable();
        stores.dedup();
        Ok(stores)
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

/// An order the provider authorised: step 3 confirms it.
pub(super) struct Authorised<'a> {
    pub order_id: &'a str,
    pub card: &'a Card<'a>,
    /// The provider's authorisation id.
    pub id: String,
    /// Its approval code.
    pub code: String,
}

/// The card (or gift card) a saga charges.
pub(super) struct Card<'a> {
    pub key: &'a str,
    pub token: &'a str,
    pub last4: &'a str,
    pub amount: Money,
}

impl Card<'_> {
    pub(super) fn row(
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
