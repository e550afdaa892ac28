//! storegate-hub: the central service.
//!
//! Built so far: [`broker`], the embedded MQTT broker. Ingestion, the REST
//! API and the commerce domains are being built.

pub mod broker;
