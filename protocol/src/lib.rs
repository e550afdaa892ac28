//! storegate-protocol: the words edges, hubs and devices say to each other.
//!
//! No I/O, no async runtime, no database: types, validation, topics and
//! encodings only, so every other crate (and any third-party tool written
//! in Rust) can depend on it cheaply.
//!
//! # Modules
//!
//! - [`ids`]: `StoreId`, `DeviceId`, `LaneId`, `Sku` (topic-safe strings),
//!   `EventId` (ULID, time-ordered), `Seq`, and a pure `EventIdGenerator`.
//! - [`gtin`]: GTIN-8/12/13/14 with GS1 check digits.
//! - [`money`]: `Money` (integer minor units + ISO 4217 currency, checked
//!   arithmetic), `Qty` (items or grams), `Measure`.
//! - [`topic`]: every MQTT topic, built and parsed (WAN and store LAN).
//! - [`event`]: what an edge records and syncs up (sales, returns, voids,
//!   payments, stock, telemetry, task updates).
//! - [`downlink`]: what the hub sends down (catalog, prices, promotions,
//!   stock levels, tasks, config, payment decisions).
//! - [`pricing`]: basket pricing (line amounts, best promotion per line,
//!   tax), pure; the edge prices baskets and the hub online orders with it.
//! - [`rpc`]: request/response with correlation id and timeout (card
//!   authorisation, lookups).
//! - [`envelope`]: the versioned postcard envelope around all of the above.
//! - [`seal`]: end-to-end signatures on that envelope (Ed25519, bound to
//!   the topic), key ids, keyrings; why a message was refused.
//! - [`bundle`]: what a store's edge needs to join the chain (its
//!   credentials, the chain CA, the hub's keys, the broker address).
//! - [`endpoint`]: `mqtt://host:port` broker addresses.
//! - [`device`]: JSON messages on the store LAN device bus, with their schema.
//! - [`pan`]: the card-number detector (Luhn runs, track data) every
//!   free-text field passes through; `last4` for showing tokens.
//! - [`secret`]: comparing secrets in constant time.
//! - [`samples`]: one realistic value of every message, for tests, golden
//!   bytes, simulators and size reports.
//!
//! # Wire format and how it evolves
//!
//! Edge <-> hub payloads are [postcard] (compact, not self-describing) in an
//! envelope: `varint(version)` followed, in version 2, by the signer's key
//! id, the length-prefixed [`envelope::Message`] and an Ed25519 signature
//! bound to the topic ([`seal`]); version 1 had the message alone. Postcard
//! encodes structs as their fields in order and enums as `varint(variant
//! index)` followed by the variant's fields. Because nothing names a field
//! on the wire, the rules are strict:
//!
//! 1. **Enums are append-only.** A new variant goes at the end and never
//!    reuses an index. An old decoder that meets a new variant fails with
//!    [`envelope::DecodeError::Malformed`]: the receiver counts it and
//!    quarantines or rejects that one message, and carries on with the next.
//!    A hub must not send a variant newer than the `protocol_version` an edge
//!    announced in its [`envelope::Presence`].
//! 2. **Fields are never removed, reordered or retyped.**
//! 3. **A field may be appended only at the end of a top-level message
//!    struct.** An old decoder ignores the trailing bytes
//!    ([`envelope::decode_body`] ignores what follows the message; in a
//!    signed envelope they are inside the signed body). A new decoder cannot read an old message
//!    that lacks the field, so appending a field bumps
//!    [`envelope::PROTOCOL_VERSION`], and the decoder keeps reading the
//!    previous layout until [`envelope::MIN_PROTOCOL_VERSION`] moves past it.
//! 4. Any other change (a field inside a nested struct or a variant) is a
//!    new message variant or a new version with a conversion from the old.
//! 5. A version outside `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` is refused
//!    with [`envelope::DecodeError::UnsupportedVersion`], never guessed at.
//!
//! The golden-bytes tests (`tests/golden.rs`) pin the encoding of every
//! message; a change that alters them is a wire-format change and must
//! follow these rules.
//!
//! The device bus is JSON (see [`device`]): fields are only added, as
//! optional, and unknown fields are ignored, so old and new devices mix.
//!
//! Decoding never panics, whatever the bytes (property-tested).

pub mod bundle;
pub mod device;
pub mod downlink;
pub mod endpoint;
pub mod envelope;
pub mod event;
pub mod gtin;
pub mod ids;
pub mod money;
pub mod pan;
pub mod pricing;
pub mod rpc;
pub mod samples;
pub mod seal;
pub mod secret;
pub mod topic;

pub use envelope::{DecodeError, Message, PROTOCOL_VERSION};
pub use gtin::{Gtin, GtinError};
pub use ids::{DeviceId, EventId, IdError, LaneId, Seq, Sku, StoreId};
pub use money::{Currency, Measure, Money, MoneyError, Qty};
