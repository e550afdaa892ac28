//! Store lanes' RPC requests: card and gift card authorisations answered
//! within the request's deadline (a late authorisation is voided and not
//! answered), lane voids, price and stock lookups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use storegate_protocol::rpc::{
    CardKind, LocationStock, RpcCall, RpcErrorCode, RpcRequest, RpcResponse, RpcResult,
};
use storegate_protocol::{Currency, EventId, Money, StoreId};
use tokio_util::sync::CancellationToken;

use super::{AuthOutcome, NewPayment, Payments, repo};
use crate::audit;
use crate::domain::payment::{LaneAnswer, PaymentMethod, PaymentStatus};

impl Payments {
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
        let mut conn = self.db.pool.acquire().await?;
        if let Some(p) = repo::by_key(&mut conn, &key).await? {
            if p.store_id.as_deref() != Some(store.as_str()) {
                return Ok(Some(RpcResult::Error {
                    code: RpcErrorCode::BadRequest,
                    message: "this payment key is taken".into(),
                }));
            }
            return Ok(Some(match p.status.lane_answer() {
                LaneAnswer::Authorized => RpcResult::CardAuthorized {
                    authorization_id: p.provider_ref.unwrap_or_default(),
                    auth_code: p.detail,
                },
                LaneAnswer::Voided => voided(),
                LaneAnswer::Declined => RpcResult::CardDeclined { reason: p.detail },
            }));
        }
        drop(conn);
        let row = |status: PaymentStatus,
                   method: PaymentMethod,
                   reference: Option<String>,
                   detail: String| NewPayment {
            id: key.clone(),
            key: key.clone(),
            order_id: None,
            store_id: Some(store.to_string()),
            sale_id: None,
            method,
            status,
            amount,
            captured: if status == PaymentStatus::Captured {
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
        };
        if kind == CardKind::GiftCard {
            let mut tx = self.db.begin().await?;
            let gift = PaymentMethod::GiftCard;
            let result = match repo::gift_card_debit(&mut tx, token, amount).await? {
                Ok(()) => {
                    let reference = format!("gift-{key}");
                    repo::upsert_rows(
                        &mut tx,
                        &[row(
                            PaymentStatus::Captured,
                            gift,
                            Some(reference.clone()),
                            "GIFT".into(),
                        )],
                    )
                    .await?;
                    RpcResult::CardAuthorized {
                        authorization_id: reference,
                        auth_code: "GIFT".into(),
                    }
                }
                Err(reason) => {
                    repo::upsert_rows(
                        &mut tx,
                        &[row(PaymentStatus::Declined, gift, None, reason.clone())],
                    )
                    .await?;
                    RpcResult::CardDeclined { reason }
                }
            };
            if Instant::now() > deadline {
                // Too late: give the money back (the debit rolls back).
                drop(tx);
                return Ok(None);
            }
            tx.commit().await?;
            return Ok(Some(result));
        }
        let card = PaymentMethod::Card;
        let limit = deadline.saturating_duration_since(Instant::now());
        let outcome = self.authorize_card(&key, amount, token, limit).await;
        let late = Instant::now() > deadline;
        let mut tx = self.db.begin().await?;
        let answer = match outcome {
            Ok(AuthOutcome::Authorized { id, code }) if late => {
                repo::upsert_rows(&mut tx, &[row(PaymentStatus::VoidPending, card, Some(id), code)]).await?;
                None
            }
            Ok(AuthOutcome::Authorized { id, code }) => {
                repo::upsert_rows(
                    &mut tx,
                    &[row(
                        PaymentStatus::Authorized,
                        card,
                        Some(id.clone()),
                        code.clone(),
                    )],
                )
                .await?;
                Some(RpcResult::CardAuthorized {
                    authorization_id: id,
                    auth_code: code,
                })
            }
            Ok(AuthOutcome::Declined { reason }) => {
                repo::upsert_rows(
                    &mut tx,
                    &[row(PaymentStatus::Declined, card, None, reason.clone())],
                )
                .await?;
                (!late).then_some(RpcResult::CardDeclined { reason })
            }
            Err(e) => {
                // The provider may have authorised: void by key to be sure.
                repo::upsert_rows(
                    &mut tx,
                    &[row(PaymentStatus::VoidPending, card, None, e.to_string())],
                )
                .await?;
                (!late).then(|| RpcResult::Error {
                    code: RpcErrorCode::Unavailable,
                    message: e.to_string(),
                })
            }
        };
        // A void that raced ahead of us wins: release what we got.
        let now = repo::by_key(&mut tx, &key).await?.map(|p| p.status);
        tx.commit().await?;
        if now.is_some_and(|s| s.lane_answer() == LaneAnswer::Voided) && answer.is_some() {
            return Ok(Some(voided()));
        }
        Ok(answer)
    }

    async fn lane_void(&self, store: &StoreId, payment_key: EventId) -> Result<(), sqlx::Error> {
        let key = payment_key.to_string();
        let mut tx = self.db.begin().await?;
        if !repo::transition_at_store(&mut tx, &key, store.as_str(), PaymentStatus::VoidPending).await? {
            match repo::by_key(&mut tx, &key).await? {
                // Another store's payment: not this lane's to void.
                Some(p) if p.store_id.as_deref() != Some(store.as_str()) => {
                    tracing::warn!(store = %store, payment = %key, "a lane asked to void another store's payment; refused");
                }
                // A gift card the lane took, before its sale completed:
                // the balance goes back. After, it is a refund's to give.
                Some(p)
                    if p.method == PaymentMethod::GiftCard
                        && p.status == PaymentStatus::Captured
                        && p.sale_id.is_none() =>
                {
                    repo::gift_card_credit(&mut tx, p.token(), p.amount_minor).await?;
                    repo::transition_at_store(&mut tx, &key, store.as_str(), PaymentStatus::Voided).await?;
                }
                Some(_) => {}
                // Not seen yet: leave a tombstone so a late authorisation
                // is voided rather than kept.
                None => {
                    repo::tombstone(&mut tx, &key, store.as_str(), "voided before it was authorised").await?
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

fn voided() -> RpcResult {
    RpcResult::CardDeclined {
        reason: "this payment was voided".into(),
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

/// Most RPC requests one store may have waiting; past it, the store is
/// told it is busy (its lanes fall back as when the hub cannot answer).
pub const RPC_PER_STORE: usize = 32;

/// Most RPC requests answered at once, across stores.
const RPC_IN_FLIGHT: usize = 256;

/// Answers lanes' RPC requests: each store's requests wait in a queue of
/// their own (at most [`RPC_PER_STORE`]), and the stores take turns, so one
/// store's flood cannot starve another's card authorisations.
pub async fn rpc_loop(
    payments: Payments,
    mut rx: tokio::sync::mpsc::Receiver<RpcJob>,
    replies: tokio::sync::mpsc::Sender<RpcReply>,
    shutdown: CancellationToken,
) {
    use std::collections::{HashMap, VecDeque};
    let permits = Arc::new(tokio::sync::Semaphore::new(RPC_IN_FLIGHT));
    let mut queues: HashMap<StoreId, VecDeque<RpcJob>> = HashMap::new();
    // Stores with requests waiting, in turn order.
    let mut turns: VecDeque<StoreId> = VecDeque::new();
    loop {
        while let Some(store) = turns.front().cloned() {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            turns.pop_front();
            let Some(queue) = queues.get_mut(&store) else {
                continue;
            };
            let Some(job) = queue.pop_front() else {
                queues.remove(&store);
                continue;
            };
            if queue.is_empty() {
                queues.remove(&store);
            } else {
                turns.push_back(store);
            }
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
        let waiting = !turns.is_empty();
        tokio::select! {
            () = shutdown.cancelled() => return,
            j = rx.recv() => {
                let Some(job) = j else { return };
                let queue = queues.entry(job.store.clone()).or_default();
                if queue.len() >= RPC_PER_STORE {
                    metrics::counter!("hub_rpc_refused_total", "reason" => "store_queue_full").increment(1);
                    let busy = RpcReply {
                        store: job.store,
                        response: RpcResponse {
                            correlation_id: job.request.correlation_id,
                            result: RpcResult::Error {
                                code: RpcErrorCode::Unavailable,
                                message: format!("this store has {RPC_PER_STORE} requests waiting; try again"),
                            },
                        },
                    };
                    let _ = replies.try_send(busy);
                    continue;
                }
                if queue.is_empty() {
                    turns.push_back(job.store.clone());
                }
                queue.push_back(job);
            }
            // A request finished: the next in turn may go.
            p = permits.clone().acquire_owned(), if waiting => drop(p),
        }
    }
}
