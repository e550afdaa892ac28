//! The card side: the [`PaymentProvider`] interface (idempotent by key, as
//! real providers are) and the simulated provider this crate ships
//! ([`SimProvider`]: configurable declines, latency and timeouts).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storegate_protocol::Money;

use crate::db::{Db, now_ms};

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
        // A real provider's bookkeeping is not in the hub's database: this
        // one's does not make the hub's commits wait (see `Db::relaxed`).
        .execute(&self.db.relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_are_stable_per_key() {
        assert_eq!(short("a"), short("a"));
        assert_ne!(short("a"), short("b"));
    }
}
