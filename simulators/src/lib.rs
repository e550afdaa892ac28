//! storegate-sim: simulators, fault injection and benchmarks.
//!
//! - [`catalog`]: a demo catalog (products, GTINs, prices, a promotion).
//! - [`devices`]: an MT-SICS scale and a barcode scanner on pseudo-terminals.
//! - [`lane`]: a POS lane client over the store's device bus.
//! - [`netfault`]: a TCP proxy that cuts and restores a link (a store's WAN).
//! - [`responder`]: a stand-in for the hub's side of the sync contract, to
//!   run an edge without a hub.
//! - [`pg`]: scratch PostgreSQL databases for tests and benchmarks.
//! - [`store`]: a whole simulated store (edge agent, devices, shoppers).
//! - [`stats`]: latency percentiles and table printing for benchmarks.
//! - [`bench`]: the benchmark commands (`storegate-sim bench ...`).

pub mod bench;
pub mod catalog;
pub mod devices;
pub mod lane;
pub mod netfault;
pub mod pg;
pub mod responder;
pub mod stats;
pub mod store;
