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
//! - [`lines`]: lines of goods as callers send them, merged per SKU.
//! - [`stock`]: movement kinds; what transfers and counts book.

pub mod allocation;
pub mod lines;
pub mod machine;
pub mod order;
pub mod payment;
pub mod shipment;
pub mod stock;
pub mod task;
