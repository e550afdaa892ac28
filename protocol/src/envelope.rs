//! The versioned postcard envelope for every edge <-> hub message.
//!
//! A message's *body* is the postcard encoding of [`Message`]
//! (`varint(variant index)` then the variant's fields in declaration order).
//! Version 2 (what this build writes) wraps the body in a signature bound to
//! the topic ([`crate::seal`]); version 1 was `varint(1)` then the body,
//! unsigned, and is read only where a receiver is explicitly set to accept
//! unsigned messages. See the crate docs for how the format evolves.

use serde::{Deserialize, Serialize};

use crate::downlink::DownItem;
use crate::event::Event;
use crate::ids::{Seq, StoreId};
use crate::rpc::{RpcRequest, RpcResponse};

/// The version this build writes: signed ([`crate::seal`]).
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest version this build still reads (version 1, unsigned, only
/// where a receiver accepts unsigned messages).
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The unsigned layout: `varint(1)` then the body.
pub const UNSIGNED_VERSION: u16 = 1;

/// A batch of outbox events, in seq order, from one store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpBatch {
    /// The sending store; must match the topic's store.
    pub store: StoreId,
    /// Seq of the first event. With `last`, lets a receiver see a
    /// duplicate or a gap from the header alone ([`peek_up_batch`]).
    pub first: Seq,
    /// Seq of the last event.
    pub last: Seq,
    /// Events `first..=last`, in ascending, contiguous seq order.
    pub events: Vec<Event>,
    /// Events still waiting in the edge's outbox after this batch.
    pub backlog: u64,
    /// Telemetry events the edge has dropped since it was installed.
    pub dropped_telemetry: u64,
}

/// "Committed up to seq N": the edge may delete its outbox rows up to N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppAck {
    /// Highest seq the hub has durably applied for this store.
    pub committed_up_to: Seq,
}

/// "Resend from seq N": the hub saw a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendRequest {
    /// First seq the hub is missing.
    pub from: Seq,
}

/// "Send everything unacked again": the hub (re)subscribed without its
/// broker session, so uplinks published while it was away may be gone.
/// Unlike [`ResendRequest`] it implies no ack: the edge only rewinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendUnacked {}

/// Downlink items for one store, in downlink seq order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownBatch {
    /// The receiving store.
    pub store: StoreId,
    /// Items in ascending seq order.
    pub items: Vec<DownItem>,
}

/// The edge applied the downlink up to seq N (also its answer to a gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownAck {
    /// Highest downlink seq durably applied.
    pub applied_up_to: Seq,
}

/// Presence, published retained on the status topic. The edge's last will
/// is the same message with `online: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The store.
    pub store: StoreId,
    /// Connected or not.
    pub online: bool,
    /// The edge agent's version string.
    pub agent_version: String,
    /// The newest envelope version the agent reads.
    pub protocol_version: u16,
    /// Edge clock when published.
    pub at_ms: i64,
}

/// Every edge <-> hub message. Append-only: new variants at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// edge -> hub, on `up`.
    UpBatch(UpBatch),
    /// hub -> edge, on `ack`.
    AppAck(AppAck),
    /// hub -> edge, on `ack`.
    ResendRequest(ResendRequest),
    /// hub -> edge, on `down`.
    DownBatch(DownBatch),
    /// edge -> hub, on `up`.
    DownAck(DownAck),
    /// either way, on `rpc/{side}/req`.
    RpcRequest(RpcRequest),
    /// either way, on `rpc/{side}/res`.
    RpcResponse(RpcResponse),
    /// edge -> all, on `status` (retained).
    Presence(Presence),
    /// hub -> edge, on `ack`.
    ResendUnacked(ResendUnacked),
}

impl Message {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Message::UpBatch(_) => "up_batch",
            Message::AppAck(_) => "app_ack",
            Message::ResendRequest(_) => "resend_request",
            Message::DownBatch(_) => "down_batch",
            Message::DownAck(_) => "down_ack",
            Message::RpcRequest(_) => "rpc_request",
            Message::RpcResponse(_) => "rpc_response",
            Message::Presence(_) => "presence",
            Message::ResendUnacked(_) => "resend_unacked",
        }
    }
}

/// Why bytes could not be decoded. Never a panic, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty payload")]
    Empty,
    /// A version this build does not read.
    #[error("envelope version {found} is not supported (this build reads {min}..={max})")]
    UnsupportedVersion {
        /// Version in the payload.
        found: u16,
        /// Oldest version read.
        min: u16,
        /// Newest version read.
        max: u16,
    },
    /// The bytes are not a valid message of this version (including an
    /// unknown enum variant from a newer peer).
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// The body of a message: its postcard encoding, which the envelope wraps.
pub fn encode_body(message: &Message) -> Vec<u8> {
    postcard::to_allocvec(message).expect("protocol types have known lengths and no fallible Serialize impls")
}

/// Decodes a body ([`encode_body`]). Trailing bytes after the message are
/// ignored (a newer peer may have appended fields to the top-level message).
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    postcard::take_from_bytes::<Message>(body)
        .map(|(m, _)| m)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// A version 1 (unsigned) envelope: `varint(1)` then the body. Only for
/// receivers set to accept unsigned messages (the insecure mode), and for
/// tests that prove signed receivers refuse it.
pub fn encode_unsigned(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    push_varint(&mut out, u64::from(UNSIGNED_VERSION));
    out.extend_from_slice(&encode_body(message));
    out
}

/// Encodes one event on its own (no envelope), as the edge's outbox stores it.
pub fn encode_event(event: &Event) -> Vec<u8> {
    postcard::to_allocvec(event).expect("protocol types have known lengths and no fallible Serialize impls")
}

/// Decodes [`encode_event`]'s output.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Builds the body of `Message::UpBatch` from `event_count` events already
/// encoded with [`encode_event`] and concatenated, without decoding them:
/// the edge's publish path splices outbox rows straight into the batch.
/// Byte-identical to [`encode_body`] of the same batch (tested).
pub fn up_batch_body_from_encoded(
    store: &StoreId,
    (first, last): (Seq, Seq),
    event_count: usize,
    concatenated_events: &[u8],
    backlog: u64,
    dropped_telemetry: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(concatenated_events.len() + store.as_str().len() + 48);
    // varint(variant index of UpBatch = 0).
    push_varint(&mut out, 0);
    push_varint(&mut out, store.as_str().len() as u64);
    out.extend_from_slice(store.as_str().as_bytes());
    push_varint(&mut out, first.0);
    push_varint(&mut out, last.0);
    push_varint(&mut out, event_count as u64);
    out.extend_from_slice(concatenated_events);
    push_varint(&mut out, backlog);
    push_varint(&mut out, dropped_telemetry);
    out
}

/// The header of an `UpBatch`: enough to tell a duplicate or a gap without
/// decoding the events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpBatchHeader {
    /// The sending store.
    pub store: StoreId,
    /// Seq of the first event.
    pub first: Seq,
    /// Seq of the last event.
    pub last: Seq,
    /// Number of events that follow.
    pub count: u64,
}

/// Reads only the header of a body holding an `UpBatch`. Returns
/// `Ok(None)` for any other message.
pub fn peek_up_batch_body(body: &[u8]) -> Result<Option<UpBatchHeader>, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    let malformed = |e: postcard::Error| DecodeError::Malformed(e.to_string());
    let (variant, rest) = postcard::take_from_bytes::<u32>(body).map_err(malformed)?;
    if variant != 0 {
        return Ok(None);
    }
    let (header, _) = postcard::take_from_bytes::<UpBatchHeader>(rest).map_err(malformed)?;
    Ok(Some(header))
}

use crate::seal::push_varint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_range_are_refused_clearly() {
        let mut bytes = encode_unsigned(&Message::AppAck(AppAck {
            committed_up_to: Seq(7),
        }));
        bytes[0] = 3;
        assert!(matches!(
            crate::seal::frame(&bytes),
            Err(DecodeError::UnsupportedVersion {
                found: 3,
                min: 1,
                max: 2
            })
        ));
        assert_eq!(crate::seal::frame(&[]).err(), Some(DecodeError::Empty));
        assert_eq!(decode_body(&[]), Err(DecodeError::Empty));
        assert!(matches!(decode_body(&[99]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_from_a_newer_peer_are_ignored() {
        let msg = Message::ResendRequest(ResendRequest { from: Seq(3) });
        let mut bytes = encode_body(&msg);
        bytes.extend_from_slice(&[5, 6, 7]);
        assert_eq!(decode_body(&bytes), Ok(msg));
    }

    #[test]
    fn varint_matches_postcard() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            push_varint(&mut ours, v);
            assert_eq!(ours, postcard::to_allocvec(&v).unwrap(), "{v}");
        }
    }
}
