//! The hub's rules, pure: typed values and the decisions made on them,
//! with no database, HTTP or MQTT in sight (nothing here depends on sqlx,
//! axum or rumqttc). Services (the modules beside `domain`) read what a
//! rule needs, call it, and write what it decided in one transaction;
//! the adapters (`api`, `mqtt`) turn requests and messages into service
//! calls.
//!
//! - [`allocation`]: which locations serve an online order.
//! - [`machine`]: the state-machine pattern every status follows.
//! - [`order`]: order statuses, fulfilment, the saga's steps and moves.
//! - [`payment`]: payment methods and statuses, refunds, exceptions.
//! - [`task`]: store task statuses.
//! - [`shipment`]: shipment statuses; when goods leave.
//! - [`price`]: price scopes, the price in force, a store's schedule.
//! - [`product`]: products, promotions, suppliers and categories: what
//!   makes them valid.
//! - [`lines`]: lines of goods as callers send them, merged per SKU.
//! - [`stock`]: movement kinds; what transfers and counts book.

/// A request that breaks a rule; the text says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub mod allocation;
pub mod lines;
pub mod machine;
pub mod order;
pub mod payment;
pub mod price;
pub mod product;
pub mod shipment;
pub mod stock;
pub mod task;
