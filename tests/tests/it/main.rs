//! storegate's integration and end-to-end tests: one binary, one module per
//! area. Real components only (see the harness in `storegate_e2e`).

#![allow(clippy::unwrap_used)]

mod api_contract;
mod card_data;
mod chain;
mod commerce;
mod devices;
mod edge_crash;
mod edge_sync;
mod hub_auth;
mod hub_crash;
mod hub_ingest;
mod hub_schema;
mod pos;
mod stock_ops;
mod wan_trust;
