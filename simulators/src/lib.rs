//! storegate-sim: simulators, fault injection and benchmarks.
//!
//! - [`demo`]: `storegate-sim demo`, the whole chain in one process.
//! - [`load`]: `storegate-sim load`, chain-scale load with faults and checks.
//! - [`chain`]: seeding a hub through its API, online shoppers, handhelds.
//! - [`catalog`]: a demo catalog (products, GTINs, prices, a promotion).
//! - [`devices`]: an MT-SICS scale and a barcode scanner on pseudo-terminals.
//! - [`lane`]: a POS lane client over the store's device bus.
//! - [`netfault`]: a TCP proxy that cuts and restores a link (a store's WAN).
//! - [`responder`]: a stand-in for the hub's side of the sync contract, to
//!   run an edge without a hub.
//! - [`procs`]: reading what the real binaries print when they are up.
//! - [`pg`]: scratch PostgreSQL databases for tests and benchmarks.
//! - [`store`]: a whole simulated store (edge agent, devices, shoppers).
//! - [`vstore`]: a light virtual store for chain-scale load (sync protocol only).
//! - [`trust`]: store credentials for simulators and tests (a chain CA in
//!   memory, or provisioning at a real hub).
//! - [`stats`]: latency percentiles and table printing for benchmarks.
//! - [`bench`]: the benchmark commands (`storegate-sim bench ...`).

pub mod bench;
pub mod catalog;
pub mod chain;
pub mod demo;
pub mod devices;
pub mod lane;
pub mod load;
pub mod netfault;
pub mod pg;
pub mod procs;
pub mod responder;
pub mod stats;
pub mod store;
pub mod trust;
pub mod vstore;
