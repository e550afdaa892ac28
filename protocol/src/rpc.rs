//! Request/response over MQTT between an edge and the hub.
//!
//! A request carries a correlation id, the sender's clock and a timeout.
//! Clocks are not trusted across machines: the receiver measures the
//! timeout from when it received the request. An answer that would arrive
//! after the deadline is not sent, and any side effect it had (a card
//! authorisation) is voided, so nothing is left dangling.

use serde::{Deserialize, Serialize};

use crate::downlink::Price;
use crate::event::CardRef;
use crate::ids::{EventId, LaneId, Sku, StoreId};
use crate::money::Money;

/// A request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Matches the response to the request.
    pub correlation_id: EventId,
    /// Sender clock when sent (informational).
    pub sent_at_ms: i64,
    /// How long the sender waits, from the moment it sent.
    pub timeout_ms: u32,
    /// What is asked.
    pub call: RpcCall,
}

/// Card or gift card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    /// A payment card.
    Payment,
    /// A gift card whose balance the hub holds.
    GiftCard,
}

/// What can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RpcCall {
    /// Authorise a card payment at a lane.
    CardAuthorize {
        /// Idempotency key: asking twice authorises once.
        payment_key: EventId,
        /// The lane asking.
        lane: LaneId,
        /// Payment card or gift card.
        kind: CardKind,
        /// The card.
        card: CardRef,
        /// The amount.
        amount: Money,
    },
    /// Release an authorisation (basket abandoned, answer came too late).
    CardVoid {
        /// The payment.
        payment_key: EventId,
    },
    /// Current price of a product.
    PriceLookup {
        /// The product.
        sku: Sku,
    },
    /// Stock of a product across locations.
    StockLookup {
        /// The product.
        sku: Sku,
    },
}

/// Why an RPC failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcErrorCode {
    /// The service behind it is down; try another way.
    Unavailable,
    /// The deadline passed.
    DeadlineExceeded,
    /// The request was invalid.
    BadRequest,
    /// The thing asked about does not exist.
    NotFound,
    /// A bug or an unexpected failure.
    Internal,
}

/// Stock at one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationStock {
    /// The location.
    pub location: StoreId,
    /// Available (on hand minus reserved), base units.
    pub available: i64,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RpcResult {
    /// The card was authorised.
    CardAuthorized {
        /// The provider's authorisation id.
        authorization_id: String,
        /// The approval code for the receipt.
        auth_code: String,
    },
    /// The card was declined.
    CardDeclined {
        /// The provider's reason, for the cashier.
        reason: String,
    },
    /// The authorisation was released.
    CardVoided,
    /// The price, if the product has one.
    Price(Option<Price>),
    /// Stock by location.
    Stock(Vec<LocationStock>),
    /// The request failed.
    Error {
        /// Category.
        code: RpcErrorCode,
        /// Text for logs.
        message: String,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcResponse {
    /// The request answered.
    pub correlation_id: EventId,
    /// The answer.
    pub result: RpcResult,
}
