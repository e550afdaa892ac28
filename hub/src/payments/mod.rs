//! Payments: card, cash and gift card; authorise, capture, void, refund.
//!
//! - `provider`: the card side through a [`PaymentProvider`]; this crate
//!   ships a simulated one ([`SimProvider`]) with configurable declines,
//!   latency and timeouts. A provider is idempotent by key, as real ones
//!   are: the same key never charges twice, whoever asks and however often.
//! - Gift card balances are the hub's own (`gift_cards`); an authorisation
//!   takes the money off the balance at once, a void or refund puts it back.
//! - Every payment is a row in `payments`, unique by `payment_key`; its
//!   statuses and their moves are [`crate::domain::payment`]'s. Work that
//!   needs the provider after a commit (capture, void, refund) is a status
//!   (`pending_capture`, `void_pending`, `refund_pending`) that the
//!   [`worker`] (`settle`) claims with a lease, so a crash or a second
//!   replica never loses or doubles it.
//! - `lane`: card authorisations asked by store lanes over the RPC topic,
//!   answered within the request's deadline ([`Payments::answer_rpc`]); an
//!   authorisation that comes back too late is voided and not answered.
//! - Store-and-forward card payments arriving from edges are captured on
//!   arrival; a decline becomes a row in `payment_exceptions` (the goods
//!   have left: back office collects) and a `PaymentDecision` downlink.
//! - `actions`: what back office asks (capture, void, refund, exceptions,
//!   gift cards); `repo`: the SQL.

mod actions;
mod lane;
mod provider;
mod repo;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storegate_protocol::Money;
use utoipa::ToSchema;

pub use self::actions::{ActionError, capture, issue_gift_card, refund, resolve_exception, void};
pub use self::lane::{RpcJob, RpcReply, rpc_loop};
pub use self::provider::{
    AuthOutcome, CaptureOutcome, PaymentProvider, ProviderError, ProviderFuture, SimProvider,
};
pub use self::repo::{
    add_refunded, exceptions, for_orders, get, gift_card, gift_card_credit, gift_card_debit,
    hash_stored_gift_card_tokens, issued, key_exists, list, record_declined_order, sale_tenders, tombstone,
    transition, transition_at_store, upsert_rows,
};
pub use self::settle::{process_pending, worker};
use crate::db::Db;
pub use crate::domain::payment::{ExceptionStatus, NewPayment, PaymentMethod, PaymentStatus};
use crate::sql::row;

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

impl Payments {
    /// Authorises a card through the provider within `limit`.
    pub async fn authorize_card(
        &self,
        key: &str,
        amount: Money,
        token: &str,
        limit: Duration,
    ) -> Result<AuthOutcome, ProviderError> {
        limited(
            limit.min(self.timeout),
            self.provider.authorize(key, amount, token),
        )
        .await
    }
}

/// A provider call bounded by `limit`.
async fn limited<T>(limit: Duration, f: ProviderFuture<'_, T>) -> Result<T, ProviderError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::Timeout),
    }
}

/// A payment.
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
    /// How it was paid.
    pub method: PaymentMethod,
    /// Where it is.
    pub status: PaymentStatus,
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

/// A gift card to issue or top up.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewGiftCard {
    /// The card's token (what the terminal reads). Stored only as a hash,
    /// never shown again.
    pub token: String,
    /// Last four digits printed on it.
    pub last4: String,
    /// Amount to put on it, minor units.
    pub balance_minor: i64,
    /// ISO currency.
    pub currency: String,
}

/// Which gift card (its token goes in a body, never in a URL).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct GiftCardQuery {
    /// The card's token.
    pub token: String,
}

row! {
    /// A gift card, as shown: the last four digits, never the token.
    #[derive(Debug, Clone, Serialize, ToSchema)]
    pub struct GiftCardView {
        /// Last four digits printed on it.
        pub last4: String,
        /// Balance, minor units.
        pub balance_minor: i64,
        /// ISO currency.
        pub currency: String,
    }
}

row! {
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
        /// Where it is.
        pub status: ExceptionStatus,
        /// Created, ms.
        pub created_ms: i64,
        /// Resolved, ms.
        pub resolved_ms: Option<i64>,
    }
}
