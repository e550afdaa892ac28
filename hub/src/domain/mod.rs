//! The hub's rules, pure: typed values and the decisions made on them,
//! with no database, HTTP or MQTT in sight (nothing here depends on sqlx,
//! axum or rumqttc). Services (the modules beside `domain`) read what a
//! rule needs, call it, and write what it decided in one transaction;
//! the adapters (`api`, `mqtt`) turn requests and messages into service
//! calls.
//!
//! - [`lines`]: lines of goods as callers send them, merged per SKU.
//! - [`stock`]: movement kinds; what transfers and counts book.

pub mod lines;
pub mod stock;
