//! Orders: store sales (written by ingestion) and online orders (the API),
//! one model with lines, totals, status history and payments.
//!
//! - `place`: step 1 of the saga (validate, allocate, price, reserve),
//!   for one order or a group.
//! - `group`: orders in groups ([`Commerce::place`]): one transaction for
//!   step 1 and one for confirmation, for every order that queued meanwhile.
//! - `saga`: the saga's steps after that, and the worker that resumes
//!   sagas whose runner died.
//! - `fulfil`: what happens after confirmation: cancels, shipment events,
//!   store task updates.
//! - `repo`: the SQL (orders, lines, history, sagas, allocation rules).
//! - The rules are in [`crate::domain::order`] (statuses, saga moves,
//!   request checks) and [`crate::domain::allocation`].
//!
//! # The online order saga (durable in `sagas`)
//!
//! Orders are taken in groups (`group`): the steps below run for every
//! order of a group at once, each step one transaction for the group.
//!
//! 1. **create + reserve** (one transaction): the order, its lines, its
//!    history, the reservations at the allocated location(s), and the saga
//!    row at step `authorize`, leased to the request that runs it.
//! 2. **authorize**: the provider call, idempotent by the key
//!    `order-{id}` (gift cards: a balance debit inside step 3).
//! 3. **confirm + fulfil** (one transaction, conditional on the saga still
//!    being at `authorize`): the payment row, status `confirmed`, then a
//!    pick task to the store (click-and-collect) or a shipment and a pick
//!    task at the warehouse (ship). The saga is `done`.
//!
//! A decline (or a provider that keeps failing) runs the compensation in
//! one transaction: reservations released, any authorisation voided
//! (through the payment worker), order `failed`. A hub killed between
//! steps leaves the saga leased; when the lease expires the saga
//! [`worker`] resumes it from its step, and the provider's idempotency by
//! key means a repeated authorisation never charges twice.
//!
//! Goods leave (stock `fulfilment`, payment capture) when the store
//! confirms the pick task (collect) or a shipment first leaves (ship).

mod fulfil;
mod group;
mod place;
mod repo;
mod saga;

use serde::Serialize;
use storegate_protocol::Currency;
use utoipa::ToSchema;

pub use self::fulfil::on_task_update;
pub use self::group::{Groups, Queue, queue, run as run_groups};
pub(crate) use self::repo::void_store_sales;
pub use self::repo::{get, list, rules, save_rules};
pub use self::saga::{resume_expired, worker};
pub use crate::domain::order::{Fulfilment, LineInput, OrderInput, OrderStatus, PaymentInput, SagaStep};
use crate::payments::{PaymentView, Payments};
use crate::settings::CommerceSettings;
use crate::shipping::ShipmentView;
use crate::tasks::TaskView;

/// What orders need.
#[derive(Debug, Clone)]
pub struct Commerce {
    /// The database.
    pub db: crate::db::Db,
    /// Payments.
    pub payments: Payments,
    /// Settings.
    pub settings: CommerceSettings,
    /// Order currency.
    pub currency: Currency,
    /// To kick downlink sends.
    pub kick: crate::downlink::Kick,
    /// Test failpoint: abort the process right after a saga's authorisation.
    pub abort_after_authorize: bool,
    /// The queue of order groups, if orders are taken in groups.
    pub groups: Option<Groups>,
}

impl Commerce {
    /// Tells the stores' edges there is downlink for them.
    fn kick_all<S: AsRef<str>>(&self, stores: impl IntoIterator<Item = S>) {
        for s in stores {
            if let Ok(id) = storegate_protocol::StoreId::parse(s.as_ref()) {
                self.kick.send(&id);
            }
        }
    }
}

/// A line of an order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineView {
    /// Position.
    pub line_no: i64,
    /// Product.
    pub sku: String,
    /// Items or grams.
    pub qty: i64,
    /// Price per item (per kilogram for weighed goods), minor units.
    pub unit_price_minor: i64,
    /// Line total after its discount, minor units.
    pub total_minor: i64,
    /// Tax in (or on) the line.
    pub tax_minor: i64,
    /// Location the goods come from.
    pub location: Option<String>,
    /// Promotion discount on the line, minor units.
    pub discount_minor: i64,
    /// The promotion that gave it.
    pub promotion_id: Option<String>,
}

/// One status change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    /// The status entered.
    pub status: OrderStatus,
    /// When, ms.
    pub at_ms: i64,
    /// Why.
    pub note: String,
}

/// An order with everything about it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    /// Id.
    pub id: String,
    /// `store` (a till sale) or `online`.
    pub kind: String,
    /// Where it is.
    pub status: OrderStatus,
    /// The customer.
    pub customer_id: Option<String>,
    /// Selling or allocated location.
    pub location: Option<String>,
    /// How it reaches the customer (online).
    pub fulfilment: Option<Fulfilment>,
    /// Ship-to region.
    pub ship_region: Option<String>,
    /// ISO currency.
    pub currency: String,
    /// Sum of lines.
    pub subtotal_minor: i64,
    /// Discounts.
    pub discount_minor: i64,
    /// Tax.
    pub tax_minor: i64,
    /// Shipping.
    pub shipping_minor: i64,
    /// What the customer pays.
    pub total_minor: i64,
    /// The till that sold it (store sales).
    pub store_id: Option<String>,
    /// Lines.
    pub lines: Vec<LineView>,
    /// Status history, oldest first.
    pub history: Vec<HistoryView>,
    /// Payments.
    pub payments: Vec<PaymentView>,
    /// Shipments.
    pub shipments: Vec<ShipmentView>,
    /// Tasks.
    pub tasks: Vec<TaskView>,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

impl OrderView {
    /// The note of its last status change.
    pub fn last_note(&self) -> String {
        self.history.last().map(|h| h.note.clone()).unwrap_or_default()
    }
}

/// An order in a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderSummary {
    /// Id.
    pub id: String,
    /// store | online.
    pub kind: String,
    /// Status.
    pub status: OrderStatus,
    /// Customer.
    pub customer_id: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// Total, minor units.
    pub total_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Created, ms.
    pub created_ms: i64,
}

/// Why an order request failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Not enough stock anywhere that may serve it.
    #[error("{0}")]
    OutOfStock(String),
    /// No such order (or shipment).
    #[error("{0} not found")]
    NotFound(String),
    /// Its goods have left (or it is finished): refund instead.
    #[error("order {id} is {status}; only orders whose goods have not left can be cancelled")]
    NotCancellable {
        /// The order.
        id: String,
        /// Its status.
        status: OrderStatus,
    },
    /// A shipment of it has left.
    #[error("a shipment has left; cancel is not possible, refund instead")]
    ShipmentLeft,
    /// A shipment event its shipment's status does not allow.
    #[error(transparent)]
    Shipment(#[from] crate::domain::machine::Refused),
    /// Internal: another order took the planned stock; the plan is redone.
    #[error("the stock was taken by other orders while this one was placed; try again")]
    Raced,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What became of a new order.
#[derive(Debug, Clone)]
pub enum Created {
    /// Paid (authorised) and being fulfilled.
    Confirmed(OrderView),
    /// Payment declined; nothing reserved any more.
    Failed(OrderView, String),
    /// Cancelled while it was placed; nothing reserved any more.
    Cancelled(OrderView, String),
    /// The provider did not answer yet; the saga goes on in the background.
    Pending(OrderView),
}

impl Created {
    /// What an order's status says became of it.
    pub fn of(order: OrderView) -> Created {
        use crate::domain::order::Placed;
        match order.status.placed() {
            Placed::Pending => Created::Pending(order),
            Placed::Confirmed => Created::Confirmed(order),
            Placed::Failed => {
                let why = order.last_note();
                Created::Failed(order, why)
            }
            Placed::Cancelled => {
                let why = order.last_note();
                Created::Cancelled(order, why)
            }
        }
    }
}
