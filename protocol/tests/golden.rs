//! Golden bytes: pins the postcard encoding of every edge <-> hub message and
//! the JSON of every device bus message.
//!
//! A failure here means the wire format changed. If that is intended (and
//! follows the evolution rules in the crate docs), regenerate with
//! `SG_BLESS=1 cargo test -p storegate-protocol --test golden` and commit the
//! diff of `tests/golden/`.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use storegate_protocol::device::{
    BasketView, BusError, DeviceReply, ErrorCode, HealthMsg, LineView, PosReply, PosRequest, PosResult,
    ScanMsg, TenderView, WeightMsg,
};
use storegate_protocol::envelope::{self, Message};
use storegate_protocol::event::{DeviceKind, HealthStatus};
use storegate_protocol::rpc::{RpcRequest, RpcResponse};
use storegate_protocol::seal::{self, Party, SigningKey, StaticKeys};
use storegate_protocol::topic::{RpcLeg, RpcSide, WanTopic};
use storegate_protocol::{EventId, Measure, samples};

/// The version 1 (unsigned) layout the `message.*` lines pin.
mod envelope_v1 {
    pub use storegate_protocol::envelope::encode_unsigned as encode;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The key the signed golden values are sealed with (a fixed seed, so the
/// Ed25519 signatures are fixed too).
fn golden_key() -> SigningKey {
    SigningKey::from_seed_for_tests(&[7; 32])
}

/// The topic each sample message travels on.
fn golden_topic(m: &Message) -> WanTopic {
    let s = samples::store();
    match m {
        Message::UpBatch(_) | Message::DownAck(_) => WanTopic::Up(s),
        Message::AppAck(_) | Message::ResendRequest(_) | Message::ResendUnacked(_) => WanTopic::Ack(s),
        Message::DownBatch(_) => WanTopic::Down(s),
        Message::RpcRequest(_) => WanTopic::Rpc(s, RpcSide::Edge, RpcLeg::Req),
        Message::RpcResponse(_) => WanTopic::Rpc(s, RpcSide::Edge, RpcLeg::Res),
        Message::Presence(_) => WanTopic::Status(s),
    }
}

/// Every named wire value: the envelope variants (version 1, unsigned:
/// `varint(1)` and the body, so these lines also pin every body), the same
/// sealed in version 2, then each event body, downlink body, RPC call and
/// RPC result inside its (unsigned) envelope.
fn wire_values() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = samples::messages()
        .into_iter()
        .map(|(name, m)| (format!("message.{name}"), envelope_v1::encode(&m)))
        .collect();
    let key = golden_key();
    for (name, m) in samples::messages() {
        let topic = golden_topic(&m).to_string();
        out.push((
            format!("signed.{name}"),
            seal::seal(&key, &topic, &envelope::encode_body(&m)),
        ));
    }
    for body in samples::event_bodies() {
        let name = format!("event.{}", body.kind());
        out.push((name, envelope::encode_event(&samples::event(1, body))));
    }
    for (i, body) in samples::down_bodies().into_iter().enumerate() {
        let m = Message::DownBatch(envelope::DownBatch {
            store: samples::store(),
            items: vec![storegate_protocol::downlink::DownItem {
                seq: storegate_protocol::Seq(1),
                body,
            }],
        });
        out.push((format!("down.{i}"), envelope_v1::encode(&m)));
    }
    for (i, call) in samples::rpc_calls().into_iter().enumerate() {
        let m = Message::RpcRequest(RpcRequest {
            correlation_id: EventId::from_u128(9),
            sent_at_ms: samples::T0_MS,
            timeout_ms: 1500,
            call,
        });
        out.push((format!("rpc_call.{i}"), envelope_v1::encode(&m)));
    }
    for (i, result) in samples::rpc_results().into_iter().enumerate() {
        let m = Message::RpcResponse(RpcResponse {
            correlation_id: EventId::from_u128(9),
            result,
        });
        out.push((format!("rpc_result.{i}"), envelope_v1::encode(&m)));
    }
    out
}

fn json_values() -> Vec<(String, String)> {
    let sku = samples::sku(0);
    let requests = [
        r#"{"id":"1","op":"open_basket","cashier":"c7"}"#,
        r#"{"id":"2","op":"add_item","code":"4006381333931","qty":2}"#,
        r#"{"id":"3","op":"add_item","sku":"APPLES"}"#,
        r#"{"id":"5","op":"remove_line","line":1}"#,
        r#"{"id":"6","op":"totals"}"#,
        r#"{"id":"7","op":"tender_cash","amount":2000}"#,
        r#"{"id":"8","op":"tender_card","token":"tok_abc","last4":"4242","amount":1599}"#,
        r#"{"id":"9","op":"tender_gift_card","token":"gc_1","last4":"0001","amount":500}"#,
        r#"{"id":"10","op":"complete"}"#,
        r#"{"id":"11","op":"cancel_basket"}"#,
        r#"{"id":"12","op":"void_sale","sale_id":"01KDPWQ5G00000000000000001","reason":"twice"}"#,
        r#"{"id":"13","op":"return_items","sale_id":"01KDPWQ5G00000000000000001","lines":[{"sku":"A1","qty":1}],"refund":"cash","reason":"faulty"}"#,
        r#"{"id":"14","op":"price_lookup","code":"4006381333931"}"#,
        r#"{"id":"15","op":"receipt","sale_id":"01KDPWQ5G00000000000000001"}"#,
    ];
    let mut out: Vec<(String, String)> = requests
        .iter()
        .map(|r| {
            let parsed: PosRequest = serde_json::from_str(r).expect("documented request parses");
            // Re-serialize: the canonical form is what is pinned.
            (
                format!("pos_request.{}", parsed.id),
                serde_json::to_string(&parsed).expect("json"),
            )
        })
        .collect();
    let line = LineView {
        line: 1,
        sku: sku.clone(),
        name: "Pencil HB".into(),
        measure: Measure::Each,
        quantity: 2,
        unit_price: 199,
        discount: 0,
        tax: 66,
        total: 398,
    };
    let basket = BasketView {
        basket_id: EventId::from_u128(1),
        currency: "EUR".into(),
        lines: vec![line],
        subtotal: 398,
        discount: 0,
        tax: 66,
        total: 398,
        paid: 500,
        due: 0,
        change: 102,
        tenders: vec![TenderView {
            method: "cash".into(),
            amount: 398,
            last4: None,
            auth_code: None,
            offline: false,
        }],
    };
    let values: Vec<(&str, String)> = vec![
        (
            "pos_reply.basket",
            serde_json::to_string(&PosReply::ok("2", PosResult::Basket(basket))).expect("json"),
        ),
        (
            "pos_reply.error",
            serde_json::to_string(&PosReply::err(
                None,
                BusError::new(ErrorCode::MalformedRequest, "x"),
            ))
            .expect("json"),
        ),
        (
            "scan",
            serde_json::to_string(&ScanMsg {
                code: "4006381333931".into(),
                symbology: Some("]E0".into()),
                lane: None,
            })
            .expect("json"),
        ),
        (
            "weight",
            serde_json::to_string(&WeightMsg {
                milligrams: 1_250_000,
                stable: true,
            })
            .expect("json"),
        ),
        (
            "health",
            serde_json::to_string(&HealthMsg {
                kind: DeviceKind::Scale,
                status: HealthStatus::Ok,
                detail: String::new(),
            })
            .expect("json"),
        ),
        (
            "device_reply",
            serde_json::to_string(&DeviceReply {
                ok: true,
                error: None,
                sku: Some(sku),
            })
            .expect("json"),
        ),
    ];
    out.extend(values.into_iter().map(|(k, v)| (k.to_owned(), v)));
    out
}

fn check(file: &str, actual: String) {
    let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("SG_BLESS").is_some() {
        std::fs::write(&path, &actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    let (mut e, mut a) = (expected.lines(), actual.lines());
    loop {
        match (e.next(), a.next()) {
            (None, None) => break,
            (x, y) if x == y => {}
            (x, y) => panic!(
                "wire format changed in {file}:\n  pinned: {x:?}\n  now:    {y:?}\n\
                 (if intended and compatible, re-bless: SG_BLESS=1 cargo test -p storegate-protocol --test golden)"
            ),
        }
    }
}

#[test]
fn postcard_encoding_of_every_message_is_pinned() {
    let text = wire_values()
        .into_iter()
        .map(|(name, bytes)| format!("{name} {}\n", hex(&bytes)))
        .collect::<String>();
    check("wire.txt", text);
}

#[test]
fn every_golden_message_decodes_back_to_itself() {
    let key = golden_key();
    for (name, m) in samples::messages() {
        let topic = golden_topic(&m);
        let text = topic.to_string();
        let sealed = seal::seal(&key, &text, &envelope::encode_body(&m));
        for party in [Party::Hub, Party::Store(samples::store())] {
            let keys = StaticKeys {
                party: party.clone(),
                keys: vec![key.public()],
            };
            let opened = seal::open(&sealed, &topic, &text, &keys, false);
            let sender_is = match topic.sender() {
                storegate_protocol::topic::Sender::Hub => Party::Hub,
                storegate_protocol::topic::Sender::Store => Party::Store(samples::store()),
            };
            if party == sender_is {
                assert_eq!(envelope::decode_body(opened.unwrap()).as_ref(), Ok(&m), "{name}");
            } else {
                assert!(
                    opened.is_err(),
                    "{name} opened with {party}'s key on a topic it may not send on"
                );
            }
        }
        let v1 = envelope_v1::encode(&m);
        let body = seal::open(
            &v1,
            &topic,
            &text,
            &StaticKeys {
                party: Party::Hub,
                keys: vec![],
            },
            true,
        )
        .unwrap();
        assert_eq!(envelope::decode_body(body).as_ref(), Ok(&m), "{name} (v1)");
    }
    for body in samples::event_bodies() {
        let e = samples::event(7, body);
        assert_eq!(envelope::decode_event(&envelope::encode_event(&e)), Ok(e));
    }
}

#[test]
fn device_bus_json_is_pinned() {
    let text = json_values()
        .into_iter()
        .map(|(name, json)| format!("{name} {json}\n"))
        .collect::<String>();
    check("device.txt", text);
}

#[test]
fn spliced_up_batch_is_byte_identical_to_a_serialized_one() {
    let batch = samples::sale_batch(20, 5);
    let concatenated: Vec<u8> = batch.events.iter().flat_map(envelope::encode_event).collect();
    let spliced = envelope::up_batch_body_from_encoded(
        &batch.store,
        (batch.first, batch.last),
        batch.events.len(),
        &concatenated,
        7,
        300,
    );
    let batch = envelope::UpBatch {
        backlog: 7,
        dropped_telemetry: 300,
        ..batch
    };
    assert_eq!(spliced, envelope::encode_body(&Message::UpBatch(batch)));
}

/// A version 1 build's decoder reads `varint(version)` first and refuses
/// anything outside `1..=1`: a version 2 (signed) message fails there,
/// clearly, before any of its bytes are read as a message.
#[test]
fn a_version_1_decoder_refuses_a_signed_message_at_its_version() {
    let sealed = seal::seal(
        &golden_key(),
        "sg/v1/store/store-0001/ack",
        &envelope::encode_body(&samples::messages()[1].1),
    );
    let (version, _) = postcard::take_from_bytes::<u16>(&sealed).unwrap();
    assert_eq!(version, 2);
    assert!(!(1..=1).contains(&version));
}
