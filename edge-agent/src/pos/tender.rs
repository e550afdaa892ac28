//! Tenders: cash, and cards authorised through the hub, or taken offline
//! (store-and-forward) within the store's caps when the hub cannot answer.

use std::collections::HashMap;

use storegate_protocol::device::{BusError, ErrorCode, PosResult};
use storegate_protocol::event::{
    CardAuth, CardPayment, CardRef, EventBody, PaymentVoid, Tender, TenderMethod,
};
use storegate_protocol::rpc::{CardKind, RpcCall, RpcRequest, RpcResult};
use storegate_protocol::{EventId, Money};

use super::offline::{CONFIG_KEYS, OfflineCaps};
use super::{Lane, err, internal, new_id};
use crate::journal::now_ms;
use crate::sync::RpcError;

impl Lane {
    pub(super) async fn tender_cash(&mut self, amount: i64) -> Result<PosResult, BusError> {
        if amount <= 0 {
            return Err(err(ErrorCode::InvalidAmount, "cash amount must be positive"));
        }
        let due = self.due().await?;
        if due <= 0 {
            return Err(err(ErrorCode::InvalidAmount, "nothing is due"));
        }
        let currency = self.ctx.cfg.currency;
        let applied = amount.min(due);
        let b = self.open_basket()?;
        b.change += amount - applied;
        b.tenders.push(Tender {
            payment_key: new_id(),
            amount: Money::new(applied, currency),
            method: TenderMethod::Cash {
                received: Money::new(amount, currency),
            },
        });
        self.basket_view().await
    }

    pub(super) async fn tender_card(
        &mut self,
        kind: CardKind,
        card: CardRef,
        amount: i64,
    ) -> Result<PosResult, BusError> {
        if amount <= 0 {
            return Err(err(ErrorCode::InvalidAmount, "card amount must be positive"));
        }
        let due = self.due().await?;
        if amount > due {
            return Err(err(ErrorCode::InvalidAmount, format!("only {due} is due")));
        }
        let currency = self.ctx.cfg.currency;
        let payment_key = new_id();
        let request = RpcRequest {
            correlation_id: new_id(),
            sent_at_ms: now_ms(),
            timeout_ms: self.ctx.cfg.card_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            call: RpcCall::CardAuthorize {
                payment_key,
                lane: self.id.clone(),
                kind,
                card: card.clone(),
                amount: Money::new(amount, currency),
            },
        };
        let answer = self.ctx.sync.call(request).await;
        let auth = match answer {
            Ok(r) => match r.result {
                RpcResult::CardAuthorized {
                    authorization_id,
                    auth_code,
                } => Some(CardAuth::Online {
                    authorization_id,
                    auth_code,
                }),
                RpcResult::CardDeclined { reason } => {
                    metrics::counter!("edge_card_payments_total", "result" => "declined").increment(1);
                    return Err(err(ErrorCode::CardDeclined, format!("card declined: {reason}")));
                }
                other => {
                    tracing::info!(?other, "hub could not authorise; trying offline");
                    None
                }
            },
            Err(RpcError::Timeout) => {
                // The hub may have authorised after all: release it.
                self.void_remote(
                    payment_key,
                    Money::new(amount, currency),
                    "authorisation answer came too late",
                );
                None
            }
            Err(RpcError::Offline) => None,
        };
        let auth = match auth {
            Some(a) => a,
            None => {
                if kind == CardKind::GiftCard {
                    return Err(err(
                        ErrorCode::PaymentUnavailable,
                        "gift cards need the hub and it cannot be reached; take another tender",
                    ));
                }
                self.offline_allowed(amount).await?;
                metrics::counter!("edge_card_payments_total", "result" => "offline").increment(1);
                CardAuth::StoreAndForward {
                    taken_at_ms: now_ms(),
                }
            }
        };
        if matches!(auth, CardAuth::Online { .. }) {
            metrics::counter!("edge_card_payments_total", "result" => "online").increment(1);
        }
        let payment = CardPayment { card, auth };
        let b = self.open_basket()?;
        b.tenders.push(Tender {
            payment_key,
            amount: Money::new(amount, currency),
            method: match kind {
                CardKind::Payment => TenderMethod::Card(payment),
                CardKind::GiftCard => TenderMethod::GiftCard(payment),
            },
        });
        self.basket_view().await
    }

    /// Asks the hub to release an authorisation, and records the void so the
    /// hub learns of it even if the request is lost.
    pub(super) fn void_remote(&self, payment_key: EventId, amount: Money, reason: &str) {
        let sync = self.ctx.sync.clone();
        let journal = self.ctx.journal.clone();
        let timeout_ms = self.ctx.cfg.card_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        let reason = reason.to_owned();
        tokio::spawn(async move {
            let _ = sync
                .call(RpcRequest {
                    correlation_id: new_id(),
                    sent_at_ms: now_ms(),
                    timeout_ms,
                    call: RpcCall::CardVoid { payment_key },
                })
                .await;
            let body = EventBody::PaymentVoided(PaymentVoid {
                payment_key,
                amount,
                reason,
            });
            if let Err(e) = journal.record(body, None).await {
                tracing::error!(error = %e, "payment void not recorded");
            }
        });
    }

    /// The store's caps, with the hub's overrides.
    async fn caps(&self) -> OfflineCaps {
        let mut set = HashMap::new();
        for k in CONFIG_KEYS {
            if let Ok(Some(v)) = self.ctx.catalog.config(k).await {
                set.insert(k, v);
            }
        }
        self.ctx.cfg.offline.configured(|k| set.get(k).cloned())
    }

    /// Whether an offline card payment of `amount` fits the caps; the
    /// reason for the lane if not.
    async fn offline_allowed(&mut self, amount: i64) -> Result<(), BusError> {
        let caps = self.caps().await;
        let unsettled = self.ctx.journal.unsettled_offline().await.map_err(internal)?;
        let in_basket: i64 = self
            .basket
            .as_ref()
            .map(|b| {
                b.tenders
                    .iter()
                    .filter(|t| {
                        matches!(&t.method, TenderMethod::Card(c) if matches!(c.auth, CardAuth::StoreAndForward { .. }))
                    })
                    .map(|t| t.amount.minor)
                    .sum()
            })
            .unwrap_or(0);
        caps.check(amount, unsettled, in_basket, now_ms(), self.ctx.cfg.currency)
            .map_err(|why| err(ErrorCode::OfflineLimit, format!("{why}; take another tender")))
    }
}
