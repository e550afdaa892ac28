//! Payments: card, cash and gift card; authorise, capture, void, refund.
//!
//! - The card side goes through a [`PaymentProvider`]; this crate ships a
//!   simulated one ([`SimProvider`]) with configurable declines, latency
//!   and timeouts. A provider is idempotent by key, as real ones are: the
//!   same key never charges twice, whoever asks and however often.
//! - Gift card balances are the hub's own (`gift_cards`); an authorisation
//!   takes the money off the balance at once, a void or refund puts it back.
//! - Every payment is a row in `payments`, unique by `payment_key`. Work
//!   that needs the provider after a commit (capture, void, refund) is a
//!   status (`pending_capture`, `void_pending`, `refund_pending`) that the
//!   [`worker`] claims with a lease, so a crash or a second replica never
//!   loses or doubles it.
//! - Card authorisations asked by store lanes over the RPC topic are
//!   answered within the request's deadline ([`Payments::answer_rpc`]); an
//!   authorisation that comes back too late is voided and not answered.
//! - Store-and-forward card payments arriving from edges are captured on
//!   arrival; a decline becomes a row in `payment_exceptions` (the goods
//!   have left: back office collects) and a `PaymentDecision` downlink.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use storegate_protocol::downlink::{DownBody, PaymentDecision, PaymentOutcome};
use storegate_protocol::rpc::{
    CardKind, LocationStock, RpcCall, RpcErrorCode, RpcRequest, RpcResponse, RpcResult,
};
use storegate_protocol::{Currency, EventId, Money, StoreId};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::{audit, sql};

/// A provider's answer to an authorisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOutcome {
    /// Money held.
    Authorized {
        /// The provider's authorisation id.
        id: String,
        /// Approval code for receipts.
        code: String,
    },
    /// Refused.
    Declined {
        /// The provider's reason.
        reason: String,
    },
}

/// A provider's answer to a capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptureOutcome {
    /// Money taken.
    Captured {
        /// The provider's capture id.
        id: String,
    },
    /// Refused (store-and-forward payments only: an authorised one cannot be).
    Declined {
        /// The provider's reason.
        reason: String,
    },
}

/// The provider could not be asked, or did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No answer in time (the operation may or may not have happened).
    #[error("payment provider timed out")]
    Timeout,
    /// The provider or its storage failed.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
}

/// A boxed provider future.
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// A card payment provider. Every call is idempotent by `key`.
pub trait PaymentProvider: Send + Sync + fmt::Debug {
    /// Holds `amount` on the card.
    fn authorize<'a>(
        &'a self,
        key: &'a str,
        amount: Money,
        card_token: &'a str,
    ) -> ProviderFuture<'a, AuthOutcome>;
    /// Takes money: an authorisation's (`authorization` set) or, for
    /// store-and-forward payments, a direct sale.
    fn capture<'a>(
        &'a self,
        key: &'a str,
        authorization: Option<&'a str>,
        amount: Money,
        card_token: &'a str,
    ) -> ProviderFuture<'a, CaptureOutcome>;
    /// Releases an authorisation.
    fn void<'a>(&'a self, key: &'a str) -> ProviderFuture<'a, ()>;
    /// Gives money back; returns the refund id.
    fn refund<'a>(&'a self, key: &'a str, amount: Money, card_token: &'a str) -> ProviderFuture<'a, String>;
}

/// The simulated provider. It keeps its memory in the hub database
/// (`sim_provider`), as a real provider keeps its own, so that it stays
/// idempotent across hub restarts.
#[derive(Debug, Clone)]
pub struct SimProvider {
    db: Db,
    latency: Duration,
    decline_cents: u8,
}

impl SimProvider {
    /// A provider with `latency` per call that declines amounts ending in
    /// `decline_cents` (and tokens starting `decline`) and never answers
    /// tokens starting `timeout`.
    pub fn new(db: Db, latency: Duration, decline_cents: u8) -> Self {
        SimProvider {
            db,
            latency,
            decline_cents,
        }
    }

    /// Returns the stored answer for `(kind, key)`, or stores `fresh` and
    /// returns it (the first writer wins under races).
    async fn remember<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
        amount: i64,
        fresh: T,
    ) -> Result<T, ProviderError> {
        let unavailable = |e: sqlx::Error| ProviderError::Unavailable(e.to_string());
        let json = serde_json::to_string(&fresh).map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let k = format!("{kind}:{key}");
        let inserted = sqlx::query(
            "INSERT INTO sim_provider (key, kind, amount, result, created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(k.as_str())
        .bind(kind)
        .bind(amount)
        .bind(json)
        .bind(now_ms())
        .execute(&self.db.pool)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        if inserted {
            return Ok(fresh);
        }
        let stored: String = sqlx::query_scalar("SELECT result FROM sim_provider WHERE key = $1")
            .bind(k.as_str())
            .fetch_one(&self.db.pool)
            .await
            .map_err(unavailable)?;
        serde_json::from_str(&stored).map_err(|e| ProviderError::Unavailable(e.to_string()))
    }

    async fn delay(&self, card_token: &str) {
        if card_token.starts_with("timeout") {
            // Never answers; the caller's timeout fires.
            std::future::pending::<()>().await;
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    fn declines(&self, amount: Money, card_token: &str) -> bool {
        card_token.starts_with("decline") || amount.minor.rem_euclid(100) == i64::from(self.decline_cents)
    }
}

fn short(key: &str) -> String {
    // Stable, provider-looking ids derived from the key.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl PaymentProvider for SimProvider {
    fn authorize<'a>(
        &'a self,
        key: &'a str,
        amount: Money,
        card_token: &'a str,
    ) -> ProviderFuture<'a, AuthOutcome> {
        Box::pin(async move {
            self.delay(card_token).await;
            let fresh = if self.declines(amount, card_token) {
                AuthOutcome::Declined {
                    reason: "do not honour".into(),
                }
            } else {
                let id = short(key);
                AuthOutcome::Authorized {
                    code: id[..6].to_ascii_uppercase(),
                    id: format!("sim-auth-{id}"),
                }
            };
            self.remember("auth", key, amount.minor, fresh).await
        })
    }

    fn capture<'a>(
        &'a self,
        key: &'a str,
        authorization: Option<&'a str>,
        amount: Money,
        card_token: &'a str,
    ) -> ProviderFuture<'a, CaptureOutcome> {
        Box::pin(async move {
            self.delay(card_token).await;
            let fresh = if authorization.is_none() && self.declines(amount, card_token) {
                CaptureOutcome::Declined {
                    reason: "do not honour".into(),
                }
            } else {
                CaptureOutcome::Captured {
                    id: format!("sim-cap-{}", short(key)),
                }
            };
            self.remember("capture", key, amount.minor, fresh).await
        })
    }

    fn void<'a>(&'a self, key: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            self.delay("").await;
            self.remember("void", key, 0, ()).await
        })
    }

    fn refund<'a>(&'a self, key: &'a str, amount: Money, card_token: &'a str) -> ProviderFuture<'a, String> {
        Box::pin(async move {
            self.delay(card_token).await;
            self.remember("refund", key, amount.minor, format!("sim-ref-{}", short(key)))
                .await
        })
    }
}

/// Payments: the provider, its time limit, and the database.
#[derive(Debug, Clone)]
pub struct Payments {
    /// The database.
    pub db: Db,
    /// The card provider.
    pub provider: Arc<dyn PaymentProvider>,
    /// Longest wait for the provider.
    pub timeout: Duration,
}

/// A payment row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    /// Id.
    pub id: String,
    /// Idempotency key.
    pub payment_key: String,
    /// The order it pays for.
    pub order_id: Option<String>,
    /// The store that took it.
    pub store_id: Option<String>,
    /// `card`, `cash` or `gift_card`.
    pub method: String,
    /// authorized, pending_capture, captured, declined, void_pending,
    /// voided, refund_pending, refunded.
    pub status: String,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Captured so far.
    pub captured_minor: i64,
    /// Refunded so far.
    pub refunded_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Last four digits of the card.
    pub card_last4: Option<String>,
    /// The provider's authorisation (or capture) id.
    pub provider_ref: Option<String>,
    /// Taken offline at a store (store-and-forward).
    pub offline: bool,
    /// For refunds: the payment refunded.
    pub parent_id: Option<String>,
    /// Provider reason, approval code, notes.
    pub detail: String,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

const PAYMENT_SELECT: &str = "SELECT id, payment_key, order_id, store_id, method, status, amount_minor, captured_minor, \
     refunded_minor, currency, card_last4, provider_ref, offline, parent_id, detail, created_ms, updated_ms, card_token \
     FROM payments";

fn payment_from_row(r: &sqlx::any::AnyRow) -> Result<(PaymentView, Option<String>), sqlx::Error> {
    let offline: i64 = r.try_get(12)?;
    Ok((
        PaymentView {
            id: r.try_get(0)?,
            payment_key: r.try_get(1)?,
            order_id: r.try_get(2)?,
            store_id: r.try_get(3)?,
            method: r.try_get(4)?,
            status: r.try_get(5)?,
            amount_minor: r.try_get(6)?,
            captured_minor: r.try_get(7)?,
            refunded_minor: r.try_get(8)?,
            currency: r.try_get(9)?,
            card_last4: r.try_get(10)?,
            provider_ref: r.try_get(11)?,
            offline: offline != 0,
            parent_id: r.try_get(13)?,
            detail: r.try_get(14)?,
            created_ms: r.try_get(15)?,
            updated_ms: r.try_get(16)?,
        },
        r.try_get(17)?,
    ))
}

/// One payment by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<PaymentView>, sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!("{PAYMENT_SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .map(|r| payment_from_row(&r).map(|(p, _)| p))
        .transpose()
}

/// Payments, filtered, by id after `after`.
pub async fn list(
    db: &Db,
    order_id: Option<&str>,
    status: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<PaymentView>, sqlx::Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{PAYMENT_SELECT} WHERE ($1 = '' OR order_id = $1) AND ($2 = '' OR status = $2) AND id > $3 ORDER BY id LIMIT $4"
    )))
    .bind(order_id.unwrap_or(""))
    .bind(status.unwrap_or(""))
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| payment_from_row(r).map(|(p, _)| p)).collect()
}

/// A new payment row.
#[derive(Debug, Clone)]
pub struct NewPayment {
    /// Id (defaults to the key).
    pub id: String,
    /// Idempotency key.
    pub key: String,
    /// Order paid for.
    pub order_id: Option<String>,
    /// Store that took it.
    pub store_id: Option<String>,
    /// Sale paid for.
    pub sale_id: Option<Vec<u8>>,
    /// card | cash | gift_card.
    pub method: &'static str,
    /// Initial status.
    pub status: &'static str,
    /// Amount.
    pub amount: Money,
    /// Captured at once (cash, gift cards).
    pub captured: i64,
    /// Card token.
    pub card_token: Option<String>,
    /// Card last four.
    pub card_last4: Option<String>,
    /// Provider reference.
    pub provider_ref: Option<String>,
    /// Store-and-forward.
    pub offline: bool,
    /// Refunded payment.
    pub parent_id: Option<String>,
    /// Notes.
    pub detail: String,
}

/// Column count of [`insert_rows`].
const PAYMENT_COLS: usize = 18;

/// Inserts payment rows. On a key that exists, attaches the order, sale and
/// store and turns an `authorized` payment into `pending_capture` (a sale
/// arriving for a lane authorisation); other statuses stay.
pub async fn upsert_rows(tx: &mut Transaction<'static, Any>, rows: &[NewPayment]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<&NewPayment> = rows.iter().filter(|r| seen.insert(r.key.clone())).collect();
    for chunk in rows.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO payments (id, payment_key, order_id, store_id, sale_id, method, status, amount_minor, \
             captured_minor, currency, card_token, card_last4, provider_ref, offline, parent_id, detail, created_ms, updated_ms)",
            chunk.len(),
            PAYMENT_COLS,
            "ON CONFLICT (payment_key) DO UPDATE SET order_id = COALESCE(payments.order_id, excluded.order_id), \
             store_id = COALESCE(payments.store_id, excluded.store_id), sale_id = COALESCE(payments.sale_id, excluded.sale_id), \
             status = CASE WHEN payments.status = 'authorized' AND excluded.status = 'pending_capture' \
             THEN 'pending_capture' ELSE payments.status END, updated_ms = excluded.created_ms",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for r in chunk {
            q = q
                .bind(r.id.as_str())
                .bind(r.key.as_str())
                .bind(r.order_id.clone())
                .bind(r.store_id.clone())
                .bind(r.sale_id.clone())
                .bind(r.method)
                .bind(r.status)
                .bind(r.amount.minor)
                .bind(r.captured)
                .bind(r.amount.currency.as_str())
                .bind(r.card_token.clone())
                .bind(r.card_last4.clone())
                .bind(r.provider_ref.clone())
                .bind(i64::from(r.offline))
                .bind(r.parent_id.clone())
                .bind(sql::text(&r.detail))
                .bind(now)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Moves a payment to a work status (`void_pending`...) if it is in one of
/// `from`; returns whether it moved.
pub async fn transition(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    from: &[&str],
    to: &str,
) -> Result<bool, sqlx::Error> {
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "UPDATE payments SET status = $1, updated_ms = $2, lease_until_ms = 0 WHERE id = $3 AND status IN {}",
        sql::list(4, from.len())
    )))
    .bind(to)
    .bind(now_ms())
    .bind(id);
    for f in from {
        q = q.bind(*f);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected() == 1)
}

/// Takes `amount` off a gift card; `Err(reason)` if it cannot.
pub async fn gift_card_debit(
    tx: &mut Transaction<'static, Any>,
    token: &str,
    amount: Money,
) -> Result<Result<(), String>, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE gift_cards SET balance_minor = balance_minor - $2 WHERE token = $1 AND currency = $3 AND balance_minor >= $2",
    )
    .bind(token)
    .bind(amount.minor)
    .bind(amount.currency.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n == 1 {
        return Ok(Ok(()));
    }
    let known: Option<i64> = sqlx::query_scalar("SELECT balance_minor FROM gift_cards WHERE token = $1")
        .bind(token)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(Err(match known {
        Some(b) => format!("insufficient gift card balance ({b} left)"),
        None => "unknown gift card".into(),
    }))
}

/// Puts `amount` back on a gift card.
pub async fn gift_card_credit(
    tx: &mut Transaction<'static, Any>,
    token: &str,
    amount: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE gift_cards SET balance_minor = balance_minor + $2 WHERE token = $1")
        .bind(token)
        .bind(amount)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A gift card.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GiftCardView {
    /// The card's token (what the terminal reads).
    pub token: String,
    /// Last four digits printed on it.
    pub last4: String,
    /// Balance, minor units.
    pub balance_minor: i64,
    /// ISO currency.
    pub currency: String,
}

/// Issues a gift card (or tops one up when it exists).
pub async fn issue_gift_card(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    g: &GiftCardView,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO gift_cards (token, last4, balance_minor, currency) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (token) DO UPDATE SET balance_minor = gift_cards.balance_minor + excluded.balance_minor",
    )
    .bind(g.token.as_str())
    .bind(g.last4.as_str())
    .bind(g.balance_minor)
    .bind(g.currency.as_str())
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        "gift_card_issued",
        "gift_card",
        &g.last4,
        serde_json::json!({"amount": g.balance_minor, "currency": g.currency}),
    )
    .await
}

/// A gift card by token.
pub async fn gift_card(db: &Db, token: &str) -> Result<Option<GiftCardView>, sqlx::Error> {
    sqlx::query("SELECT token, last4, balance_minor, currency FROM gift_cards WHERE token = $1")
        .bind(token)
        .fetch_optional(&db.pool)
        .await?
        .map(|r| {
            Ok(GiftCardView {
                token: r.try_get(0)?,
                last4: r.try_get(1)?,
                balance_minor: r.try_get(2)?,
                currency: r.try_get(3)?,
            })
        })
        .transpose()
}

/// The result of authorising a payment for an order or a lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Held (cards) or taken (gift cards).
    Approved {
        /// Provider authorisation id (or gift card reference).
        reference: String,
        /// Approval code.
        code: String,
    },
    /// Refused.
    Declined(String),
}

impl Payments {
    /// Authorises a card through the provider within `limit`.
    pub async fn authorize_card(
        &self,
        key: &str,
        amount: Money,
        token: &str,
        limit: Duration,
    ) -> Result<AuthOutcome, ProviderError> {
        match tokio::time::timeout(
            limit.min(self.timeout),
            self.provider.authorize(key, amount, token),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Timeout),
        }
    }

    async fn payment_by_key(&self, key: &str) -> Result<Option<(PaymentView, Option<String>)>, sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("{PAYMENT_SELECT} WHERE payment_key = $1")))
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?
            .map(|r| payment_from_row(&r))
            .transpose()
    }

    /// Answers a store's RPC request, or `None` when the answer would be
    /// too late (the lane has given up; any authorisation is voided).
    pub async fn answer_rpc(
        &self,
        store: &StoreId,
        req: RpcRequest,
        received: Instant,
    ) -> Option<RpcResponse> {
        let budget = Duration::from_millis(u64::from(req.timeout_ms));
        // Leave time for the answer to travel back.
        let margin = (budget / 10).min(Duration::from_millis(200));
        let deadline = received + budget.saturating_sub(margin);
        let result = match req.call {
            RpcCall::CardAuthorize {
                payment_key,
                lane,
                kind,
                card,
                amount,
            } => {
                match self
                    .lane_authorize(
                        store,
                        payment_key,
                        kind,
                        card.token.as_str(),
                        card.last4.as_str(),
                        amount,
                        deadline,
                    )
                    .await
                {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        tracing::warn!(store = %store, lane = %lane, key = %payment_key, "authorisation answered too late; voided");
                        metrics::counter!("hub_rpc_too_late_total").increment(1);
                        return None;
                    }
                    Err(e) => RpcResult::Error {
                        code: RpcErrorCode::Internal,
                        message: e.to_string(),
                    },
                }
            }
            RpcCall::CardVoid { payment_key } => match self.lane_void(store, payment_key).await {
                Ok(()) => RpcResult::CardVoided,
                Err(e) => RpcResult::Error {
                    code: RpcErrorCode::Internal,
                    message: e.to_string(),
                },
            },
            RpcCall::PriceLookup { sku } => {
                let found = async {
                    let mut tx = self.db.pool.begin().await?;
                    let p = crate::catalog::current_price(&mut tx, sku.as_str(), store.as_str()).await?;
                    tx.rollback().await?;
                    Ok::<_, sqlx::Error>(p)
                }
                .await;
                match found {
                    Ok(p) => RpcResult::Price(p.and_then(|(minor, cur)| {
                        Some(storegate_protocol::downlink::Price {
                            sku: sku.clone(),
                            price: Money::new(minor, Currency::parse(&cur).ok()?),
                            effective_from_ms: 0,
                            effective_to_ms: None,
                        })
                    })),
                    Err(e) => RpcResult::Error {
                        code: RpcErrorCode::Internal,
                        message: e.to_string(),
                    },
                }
            }
            RpcCall::StockLookup { sku } => {
                match crate::stock::levels(&self.db, None, Some(sku.as_str()), false, None, 500).await {
                    Ok(levels) => RpcResult::Stock(
                        levels
                            .into_iter()
                            .filter_map(|l| {
                                Some(LocationStock {
                                    location: StoreId::parse(l.location).ok()?,
                                    available: l.available,
                                })
                            })
                            .collect(),
                    ),
                    Err(e) => RpcResult::Error {
                        code: RpcErrorCode::Internal,
                        message: e.to_string(),
                    },
                }
            }
        };
        if Instant::now() > deadline + margin {
            return None;
        }
        Some(RpcResponse {
            correlation_id: req.correlation_id,
            result,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn lane_authorize(
        &self,
        store: &StoreId,
        payment_key: EventId,
        kind: CardKind,
        token: &str,
        last4: &str,
        amount: Money,
        deadline: Instant,
    ) -> Result<Option<RpcResult>, sqlx::Error> {
        let key = payment_key.to_string();
        if amount.minor <= 0 {
            return Ok(Some(RpcResult::Error {
                code: RpcErrorCode::BadRequest,
                message: "amount must be positive".into(),
            }));
        }
        // Asked before (a retry): the same answer.
        if let Some((p, _)) = self.payment_by_key(&key).await? {
            return Ok(Some(match p.status.as_str() {
                "authorized" | "pending_capture" | "captured" => RpcResult::CardAuthorized {
                    authorization_id: p.provider_ref.unwrap_or_default(),
                    auth_code: p.detail,
                },
                "voided" | "void_pending" => RpcResult::CardDeclined {
                    reason: "this payment was voided".into(),
                },
                _ => RpcResult::CardDeclined { reason: p.detail },
            }));
        }
        let row = |status: &'static str, method: &'static str, reference: Option<String>, detail: String| {
            NewPayment {
                id: key.clone(),
                key: key.clone(),
                order_id: None,
                store_id: Some(store.to_string()),
                sale_id: None,
                method,
                status,
                amount,
                captured: if method == "gift_card" && status == "captured" {
                    amount.minor
                } else {
                    0
                },
                card_token: Some(token.to_owned()),
                card_last4: Some(last4.to_owned()),
                provider_ref: reference,
                offline: false,
                parent_id: None,
                detail,
            }
        };
        if kind == CardKind::GiftCard {
            let mut tx = self.db.begin().await?;
            let result = match gift_card_debit(&mut tx, token, amount).await? {
                Ok(()) => {
                    upsert_rows(
                        &mut tx,
                        &[row(
                            "captured",
                            "gift_card",
                            Some(format!("gift-{key}")),
                            "GIFT".into(),
                        )],
                    )
                    .await?;
                    RpcResult::CardAuthorized {
                        authorization_id: format!("gift-{key}"),
                        auth_code: "GIFT".into(),
                    }
                }
                Err(reason) => {
                    upsert_rows(&mut tx, &[row("declined", "gift_card", None, reason.clone())]).await?;
                    RpcResult::CardDeclined { reason }
                }
            };
            if Instant::now() > deadline {
                // Too late: give the money back.
                drop(tx);
                return Ok(None);
            }
            tx.commit().await?;
            return Ok(Some(result));
        }
        let limit = deadline.saturating_duration_since(Instant::now());
        let outcome = self.authorize_card(&key, amount, token, limit).await;
        let late = Instant::now() > deadline;
        let mut tx = self.db.begin().await?;
        let answer = match outcome {
            Ok(AuthOutcome::Authorized { id, code }) if late => {
                upsert_rows(&mut tx, &[row("void_pending", "card", Some(id), code)]).await?;
                None
            }
            Ok(AuthOutcome::Authorized { id, code }) => {
                upsert_rows(
                    &mut tx,
                    &[row("authorized", "card", Some(id.clone()), code.clone())],
                )
                .await?;
                Some(RpcResult::CardAuthorized {
                    authorization_id: id,
                    auth_code: code,
                })
            }
            Ok(AuthOutcome::Declined { reason }) => {
                upsert_rows(&mut tx, &[row("declined", "card", None, reason.clone())]).await?;
                (!late).then_some(RpcResult::CardDeclined { reason })
            }
            Err(e) => {
                // The provider may have authorised: void by key to be sure.
                upsert_rows(&mut tx, &[row("void_pending", "card", None, e.to_string())]).await?;
                (!late).then(|| RpcResult::Error {
                    code: RpcErrorCode::Unavailable,
                    message: e.to_string(),
                })
            }
        };
        // A void that raced ahead of us wins: release what we got.
        let voided = sqlx::query_scalar::<_, String>("SELECT status FROM payments WHERE payment_key = $1")
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        if matches!(voided.as_deref(), Some("voided" | "void_pending")) && answer.is_some() {
            return Ok(Some(RpcResult::CardDeclined {
                reason: "this payment was voided".into(),
            }));
        }
        Ok(answer)
    }

    async fn lane_void(&self, store: &StoreId, payment_key: EventId) -> Result<(), sqlx::Error> {
        let key = payment_key.to_string();
        let mut tx = self.db.begin().await?;
        let moved = transition(&mut tx, &key, &["authorized"], "void_pending").await?;
        if !moved {
            // Not seen yet: leave a tombstone so a late authorisation is
            // voided rather than kept.
            let gift: Option<(String, String, i64)> = sqlx::query(
                "SELECT status, COALESCE(card_token, ''), amount_minor FROM payments WHERE payment_key = $1 AND method = 'gift_card'",
            )
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()?;
            match gift {
                Some((status, token, amount)) if status == "captured" => {
                    gift_card_credit(&mut tx, &token, amount).await?;
                    transition(&mut tx, &key, &["captured"], "voided").await?;
                }
                Some(_) => {}
                None => {
                    sqlx::query(
                        "INSERT INTO payments (id, payment_key, store_id, method, status, amount_minor, currency, detail, created_ms, updated_ms) \
                         VALUES ($1, $1, $2, 'card', 'voided', 0, 'XXX', 'voided before it was authorised', $3, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(key.as_str())
                    .bind(store.as_str())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        audit::record(
            &mut tx,
            &format!("store:{store}"),
            "payment_void_requested",
            "payment",
            &key,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await
    }
}

/// A checked RPC request from a store (the transport checked who sent it),
/// with when it arrived (deadlines are measured from here: clocks across
/// machines are not trusted).
#[derive(Debug)]
pub struct RpcJob {
    /// The store (whose credential signed the request).
    pub store: StoreId,
    /// The request.
    pub request: storegate_protocol::rpc::RpcRequest,
    /// Arrival.
    pub received: std::time::Instant,
}

/// An answer for the transport to send back to a store.
#[derive(Debug)]
pub struct RpcReply {
    /// The store.
    pub store: StoreId,
    /// The answer.
    pub response: storegate_protocol::rpc::RpcResponse,
}

/// Answers stores' RPC requests until `shutdown`, each in its own task
/// (at most 256 at once; more wait).
pub async fn rpc_loop(
    payments: Payments,
    mut rx: tokio::sync::mpsc::Receiver<RpcJob>,
    replies: tokio::sync::mpsc::Sender<RpcReply>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    loop {
        let job = tokio::select! {
            () = shutdown.cancelled() => return,
            j = rx.recv() => match j { Some(j) => j, None => return },
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let payments = payments.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(response) = payments.answer_rpc(&job.store, job.request, job.received).await {
                let _ = replies
                    .send(RpcReply {
                        store: job.store,
                        response,
                    })
                    .await;
            }
        });
    }
}

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
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{PAYMENT_SELECT} WHERE status IN ('pending_capture', 'void_pending', 'refund_pending') AND lease_until_ms < $1 \
         ORDER BY lease_until_ms, id LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut stores = Vec::new();
    for r in rows {
        let (p, token) = payment_from_row(&r)?;
        let old_lease: i64 = sqlx::query_scalar("SELECT lease_until_ms FROM payments WHERE id = $1")
            .bind(p.id.as_str())
            .fetch_one(&db.pool)
            .await?;
        // Claim: only one worker (or replica) gets it.
        let claimed = sqlx::query(
            "UPDATE payments SET lease_until_ms = $2 WHERE id = $1 AND lease_until_ms = $3 AND status = $4",
        )
        .bind(p.id.as_str())
        .bind(now + 30_000)
        .bind(old_lease)
        .bind(p.status.as_str())
        .execute(&db.pool)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            continue;
        }
        match settle(payments, &p, token.as_deref().unwrap_or("")).await {
            Ok(Some(s)) => stores.push(s),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(payment = %p.id, error = %e, "payment not settled; retrying later");
                // Retry after a short pause rather than the full lease.
                let _ = sqlx::query("UPDATE payments SET lease_until_ms = $2 WHERE id = $1")
                    .bind(p.id.as_str())
                    .bind(now_ms() + 2_000)
                    .execute(&db.pool)
                    .await;
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

async fn limited<T>(limit: Duration, f: ProviderFuture<'_, T>) -> Result<T, ProviderError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::Timeout),
    }
}

async fn settle(payments: &Payments, p: &PaymentView, token: &str) -> Result<Option<StoreId>, SettleError> {
    let db = &payments.db;
    let currency = Currency::parse(&p.currency).unwrap_or(
        Currency::parse("EUR")
            .map_err(|e| SettleError::Provider(ProviderError::Unavailable(e.to_string())))?,
    );
    let amount = Money::new(p.amount_minor, currency);
    let limit = payments.timeout;
    let actor = "hub:payments";
    match p.status.as_str() {
        "pending_capture" if p.method == "card" || (p.method == "gift_card" && p.offline) => {
            let card_outcome = if p.method == "card" {
                Some(
                    limited(
                        limit,
                        payments
                            .provider
                            .capture(&p.payment_key, p.provider_ref.as_deref(), amount, token),
                    )
                    .await?,
                )
            } else {
                None
            };
            let mut tx = db.begin().await?;
            let outcome = match card_outcome {
                Some(o) => o,
                // A gift card taken offline: debit the balance now.
                None => match gift_card_debit(&mut tx, token, amount).await? {
                    Ok(()) => CaptureOutcome::Captured {
                        id: format!("gift-{}", p.payment_key),
                    },
                    Err(reason) => CaptureOutcome::Declined { reason },
                },
            };
            let sale_id: Option<Vec<u8>> = sqlx::query_scalar("SELECT sale_id FROM payments WHERE id = $1")
                .bind(p.id.as_str())
                .fetch_one(&mut *tx)
                .await?;
            let decision = match &outcome {
                CaptureOutcome::Captured { id } => {
                    sqlx::query(
                        "UPDATE payments SET status = 'captured', captured_minor = amount_minor, \
                         provider_ref = COALESCE(provider_ref, $2), updated_ms = $3 WHERE id = $1 AND status = 'pending_capture'",
                    )
                    .bind(p.id.as_str())
                    .bind(id.as_str())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    audit::record(
                        &mut tx,
                        actor,
                        "payment_captured",
                        "payment",
                        &p.id,
                        serde_json::json!({"amount": p.amount_minor, "capture_id": id}),
                    )
                    .await?;
                    metrics::counter!("hub_payments_total", "result" => "captured").increment(1);
                    PaymentOutcome::Captured {
                        capture_id: id.clone(),
                    }
                }
                CaptureOutcome::Declined { reason } => {
                    sqlx::query(
                        "UPDATE payments SET status = 'declined', detail = $2, updated_ms = $3 WHERE id = $1 AND status = 'pending_capture'",
                    )
                    .bind(p.id.as_str())
                    .bind(sql::text(reason))
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO payment_exceptions (payment_id, store_id, amount_minor, currency, reason, status, created_ms) \
                         VALUES ($1, $2, $3, $4, $5, 'open', $6) ON CONFLICT DO NOTHING",
                    )
                    .bind(p.id.as_str())
                    .bind(p.store_id.clone())
                    .bind(p.amount_minor)
                    .bind(p.currency.as_str())
                    .bind(sql::text(reason))
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    audit::record(
                        &mut tx,
                        actor,
                        "payment_declined_after_sale",
                        "payment",
                        &p.id,
                        serde_json::json!({"amount": p.amount_minor, "reason": reason, "store": p.store_id}),
                    )
                    .await?;
                    metrics::counter!("hub_payments_total", "result" => "exception").increment(1);
                    PaymentOutcome::Declined {
                        reason: reason.clone(),
                    }
                }
            };
            let mut kicked = None;
            if p.offline
                && let Some(store) = &p.store_id
                && let Ok(key) = p.payment_key.parse::<EventId>()
            {
                let body = DownBody::PaymentDecision(PaymentDecision {
                    payment_key: key,
                    sale_id: sale_id.as_deref().and_then(EventId::from_slice),
                    outcome: decision,
                });
                crate::downlink::enqueue(&mut tx, db, store, &[body]).await?;
                kicked = StoreId::parse(store.as_str()).ok();
            }
            tx.commit().await?;
            Ok(kicked)
        }
        "pending_capture" => {
            // Gift cards are taken at authorisation; cash is cash.
            let mut tx = db.begin().await?;
            sqlx::query(
                "UPDATE payments SET status = 'captured', captured_minor = amount_minor, updated_ms = $2 WHERE id = $1",
            )
            .bind(p.id.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(None)
        }
        "void_pending" => {
            if p.method == "card" {
                limited(limit, payments.provider.void(&p.payment_key)).await?;
            }
            let mut tx = db.begin().await?;
            if p.method == "gift_card" && p.captured_minor > 0 {
                gift_card_credit(&mut tx, token, p.captured_minor).await?;
            }
            transition(&mut tx, &p.id, &["void_pending"], "voided").await?;
            audit::record(
                &mut tx,
                actor,
                "payment_voided",
                "payment",
                &p.id,
                serde_json::json!({"amount": p.amount_minor}),
            )
            .await?;
            tx.commit().await?;
            Ok(None)
        }
        "refund_pending" => {
            let reference = match p.method.as_str() {
                "card" => limited(limit, payments.provider.refund(&p.payment_key, amount, token)).await?,
                _ => String::new(),
            };
            let mut tx = db.begin().await?;
            if p.method == "gift_card" {
                gift_card_credit(&mut tx, token, p.amount_minor).await?;
            }
            sqlx::query(
                "UPDATE payments SET status = 'refunded', provider_ref = $2, updated_ms = $3 WHERE id = $1 AND status = 'refund_pending'",
            )
            .bind(p.id.as_str())
            .bind(reference)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                actor,
                "payment_refunded",
                "payment",
                &p.id,
                serde_json::json!({"amount": p.amount_minor, "parent": p.parent_id}),
            )
            .await?;
            tx.commit().await?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

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

/// Refunds `amount` of a captured payment (partial or full): a new
/// `refund_pending` row the worker settles. `key` makes it idempotent.
pub async fn refund(
    db: &Db,
    actor: &str,
    payment_id: &str,
    amount: i64,
    key: &str,
    reason: &str,
) -> Result<PaymentView, ActionError> {
    if amount <= 0 {
        return Err(ActionError::Invalid("amount_minor must be positive".into()));
    }
    let mut tx = db.begin().await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "{PAYMENT_SELECT} WHERE id = $1{}",
        db.for_update()
    )))
    .bind(payment_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ActionError::NotFound(payment_id.into()))?;
    let (p, token) = payment_from_row(&row)?;
    let refund_key = format!("refund-{key}");
    if let Some(existing) = sqlx::query_scalar::<_, String>("SELECT id FROM payments WHERE payment_key = $1")
        .bind(refund_key.as_str())
        .fetch_optional(&mut *tx)
        .await?
    {
        drop(tx);
        return get(db, &existing).await?.ok_or(ActionError::NotFound(existing));
    }
    if !matches!(p.status.as_str(), "captured" | "tendered") || p.parent_id.is_some() {
        return Err(ActionError::State(format!(
            "payment {} is {}; only captured payments can be refunded",
            p.id, p.status
        )));
    }
    let left = p.captured_minor - p.refunded_minor;
    if amount > left {
        return Err(ActionError::Invalid(format!("only {left} is left to refund")));
    }
    sqlx::query("UPDATE payments SET refunded_minor = refunded_minor + $2, updated_ms = $3 WHERE id = $1")
        .bind(p.id.as_str())
        .bind(amount)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    let id = crate::auth::new_id();
    let currency = Currency::parse(&p.currency).map_err(|e| ActionError::Invalid(e.to_string()))?;
    upsert_rows(
        &mut tx,
        &[NewPayment {
            id: id.clone(),
            key: refund_key,
            order_id: p.order_id.clone(),
            store_id: p.store_id.clone(),
            sale_id: None,
            method: match p.method.as_str() {
                "cash" => "cash",
                "gift_card" => "gift_card",
                _ => "card",
            },
            status: if p.method == "cash" {
                "refunded"
            } else {
                "refund_pending"
            },
            amount: Money::new(amount, currency),
            captured: 0,
            card_token: token,
            card_last4: p.card_last4.clone(),
            provider_ref: None,
            offline: false,
            parent_id: Some(p.id.clone()),
            detail: sql::text(reason),
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
    get(db, &id).await?.ok_or(ActionError::NotFound(id))
}

/// Voids an authorised (not yet captured) payment.
pub async fn void(db: &Db, actor: &str, payment_id: &str) -> Result<PaymentView, ActionError> {
    let mut tx = db.begin().await?;
    if !transition(&mut tx, payment_id, &["authorized"], "void_pending").await? {
        let p = get(db, payment_id)
            .await?
            .ok_or_else(|| ActionError::NotFound(payment_id.into()))?;
        return Err(ActionError::State(format!(
            "payment {} is {}; only authorised payments can be voided (refund captured ones)",
            p.id, p.status
        )));
    }
    audit::record(
        &mut tx,
        actor,
        "void_requested",
        "payment",
        payment_id,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    get(db, payment_id)
        .await?
        .ok_or_else(|| ActionError::NotFound(payment_id.into()))
}

/// Captures an authorised payment now.
pub async fn capture(db: &Db, actor: &str, payment_id: &str) -> Result<PaymentView, ActionError> {
    let mut tx = db.begin().await?;
    if !transition(&mut tx, payment_id, &["authorized"], "pending_capture").await? {
        let p = get(db, payment_id)
            .await?
            .ok_or_else(|| ActionError::NotFound(payment_id.into()))?;
        return Err(ActionError::State(format!(
            "payment {} is {}; only authorised payments can be captured",
            p.id, p.status
        )));
    }
    audit::record(
        &mut tx,
        actor,
        "capture_requested",
        "payment",
        payment_id,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    get(db, payment_id)
        .await?
        .ok_or_else(|| ActionError::NotFound(payment_id.into()))
}

/// A store-and-forward payment the provider declined.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExceptionView {
    /// Id.
    pub id: i64,
    /// The payment.
    pub payment_id: String,
    /// The store that took it.
    pub store_id: Option<String>,
    /// Amount to collect.
    pub amount_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// The provider's reason.
    pub reason: String,
    /// open, collected or written_off.
    pub status: String,
    /// Created, ms.
    pub created_ms: i64,
    /// Resolved, ms.
    pub resolved_ms: Option<i64>,
}

/// Exceptions, open first unless `all`.
pub async fn exceptions(
    db: &Db,
    all: bool,
    after: i64,
    limit: i64,
) -> Result<Vec<ExceptionView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, payment_id, store_id, amount_minor, currency, reason, status, created_ms, resolved_ms \
         FROM payment_exceptions WHERE ($1 = 1 OR status = 'open') AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(i64::from(all))
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ExceptionView {
                id: r.try_get(0)?,
                payment_id: r.try_get(1)?,
                store_id: r.try_get(2)?,
                amount_minor: r.try_get(3)?,
                currency: r.try_get(4)?,
                reason: r.try_get(5)?,
                status: r.try_get(6)?,
                created_ms: r.try_get(7)?,
                resolved_ms: r.try_get(8)?,
            })
        })
        .collect()
}

/// Closes an exception as `collected` or `written_off`.
pub async fn resolve_exception(
    db: &Db,
    actor: &str,
    id: i64,
    status: &str,
    note: &str,
) -> Result<bool, ActionError> {
    if !matches!(status, "collected" | "written_off") {
        return Err(ActionError::Invalid(
            "status is `collected` or `written_off`".into(),
        ));
    }
    let mut tx = db.begin().await?;
    let n = sqlx::query(
        "UPDATE payment_exceptions SET status = $2, resolved_ms = $3 WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(status)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 1 {
        audit::record(
            &mut tx,
            actor,
            "payment_exception_resolved",
            "payment_exception",
            &id.to_string(),
            serde_json::json!({"status": status, "note": note}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_are_stable_per_key() {
        assert_eq!(short("a"), short("a"));
        assert_ne!(short("a"), short("b"));
    }
}
