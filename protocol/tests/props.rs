//! Property tests: encode/decode round-trips, and decoders that never panic
//! on arbitrary bytes.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use storegate_protocol::device::{self, PosRequest};
use storegate_protocol::downlink::{DownBody, DownItem, Price, Product, StockLevel};
use storegate_protocol::envelope::{self, AppAck, DownBatch, Message, ResendRequest, ResendUnacked, UpBatch};
use storegate_protocol::event::{
    AdjustReason, CardAuth, CardPayment, CardRef, CardToken, Discount, Event, EventBody, Last4, Sale,
    SaleLine, ScanOutcome, ScanRecord, StockAdjustment, StockLine, Tender, TenderMethod, Totals,
    WeightRecord,
};
use storegate_protocol::gtin::{Gtin, gs1_check_digit};
use storegate_protocol::rpc::{RpcCall, RpcRequest, RpcResponse, RpcResult};
use storegate_protocol::seal::{self, Party, SigningKey, StaticKeys};
use storegate_protocol::topic::{LanTopic, WanTopic};
use storegate_protocol::{Currency, DeviceId, EventId, LaneId, Measure, Money, Qty, Seq, Sku, StoreId};

fn id_string(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{max}}}")).expect("regex")
}

fn store() -> impl Strategy<Value = StoreId> {
    id_string(64).prop_map(|s| StoreId::parse(s).expect("valid by construction"))
}
fn sku() -> impl Strategy<Value = Sku> {
    id_string(20).prop_map(|s| Sku::parse(s).expect("valid by construction"))
}
fn lane() -> impl Strategy<Value = LaneId> {
    id_string(8).prop_map(|s| LaneId::parse(s).expect("valid by construction"))
}
fn device_id() -> impl Strategy<Value = DeviceId> {
    id_string(12).prop_map(|s| DeviceId::parse(s).expect("valid by construction"))
}
fn event_id() -> impl Strategy<Value = EventId> {
    any::<u128>().prop_map(EventId::from_u128)
}
fn currency() -> impl Strategy<Value = Currency> {
    prop_oneof![Just(Currency::EUR), Just(Currency::USD), Just(Currency::GBP)]
}
fn money() -> impl Strategy<Value = Money> {
    (any::<i64>(), currency()).prop_map(|(m, c)| Money::new(m, c))
}
fn qty() -> impl Strategy<Value = Qty> {
    prop_oneof![(1u32..).prop_map(Qty::Each), (1u32..).prop_map(Qty::Grams)]
}
fn gtin() -> impl Strategy<Value = Gtin> {
    prop_oneof![Just(7usize), Just(11), Just(12), Just(13)]
        .prop_flat_map(|n| proptest::collection::vec(0u8..10, n))
        .prop_map(|digits| {
            let data: Vec<u8> = digits.iter().map(|d| b'0' + d).collect();
            let mut s = String::from_utf8(data.clone()).expect("ascii");
            s.push((b'0' + gs1_check_digit(&data)) as char);
            Gtin::parse(&s).expect("check digit computed")
        })
}
fn card() -> impl Strategy<Value = CardRef> {
    (
        "tok_[a-z]{1,8}[0-9]{0,12}",
        "[0-9]{4}",
        proptest::option::of("[A-Z]{2,8}"),
    )
        .prop_map(|(t, l, b)| CardRef {
            token: CardToken::parse(t).expect("token"),
            last4: Last4::parse(&l).expect("last4"),
            brand: b,
        })
}
fn tender() -> impl Strategy<Value = Tender> {
    let method = prop_oneof![
        money().prop_map(|received| TenderMethod::Cash { received }),
        (card(), any::<bool>(), any::<i64>()).prop_map(|(card, online, t)| {
            let auth = if online {
                CardAuth::Online {
                    authorization_id: format!("a{t}"),
                    auth_code: "X".into(),
                }
            } else {
                CardAuth::StoreAndForward { taken_at_ms: t }
            };
            TenderMethod::Card(CardPayment { card, auth })
        }),
    ];
    (event_id(), money(), method).prop_map(|(payment_key, amount, method)| Tender {
        payment_key,
        amount,
        method,
    })
}
fn sale_line() -> impl Strategy<Value = SaleLine> {
    (
        any::<u16>(),
        sku(),
        proptest::option::of(gtin()),
        qty(),
        money(),
        proptest::collection::vec(
            (proptest::option::of("[A-Z0-9-]{1,10}"), ".{0,20}", money()).prop_map(|(p, l, a)| Discount {
                promotion_id: p,
                label: l,
                amount: a,
            }),
            0..2,
        ),
        any::<u32>(),
        money(),
        money(),
    )
        .prop_map(
            |(line_no, sku, gtin, qty, unit_price, discounts, tax_rate_bp, tax, total)| SaleLine {
                line_no,
                sku,
                gtin,
                qty,
                unit_price,
                discounts,
                tax_rate_bp,
                tax,
                total,
            },
        )
}
fn sale() -> impl Strategy<Value = Sale> {
    (
        event_id(),
        lane(),
        proptest::option::of(".{0,10}"),
        proptest::collection::vec(sale_line(), 0..8),
        (money(), money(), money(), money()),
        proptest::collection::vec(tender(), 0..3),
        money(),
        any::<(i64, i64, bool)>(),
    )
        .prop_map(
            |(sale_id, lane, cashier, lines, (a, b, c, d), tenders, change, (s, e, ti))| Sale {
                sale_id,
                lane,
                cashier,
                customer: None,
                tax_included: ti,
                lines,
                basket_discounts: Vec::new(),
                totals: Totals {
                    subtotal: a,
                    discount: b,
                    tax: c,
                    total: d,
                },
                tenders,
                change,
                started_at_ms: s,
                completed_at_ms: e,
            },
        )
}
fn event_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        sale().prop_map(EventBody::Sale),
        (
            device_id(),
            proptest::option::of(lane()),
            "[0-9]{0,20}",
            any::<bool>(),
            sku()
        )
            .prop_map(|(device, lane, code, matched, sku)| EventBody::Scan(ScanRecord {
                device,
                lane,
                code,
                symbology: None,
                outcome: if matched {
                    ScanOutcome::Matched { sku }
                } else {
                    ScanOutcome::Unknown
                },
            })),
        (device_id(), any::<i64>(), any::<bool>()).prop_map(|(device, milligrams, stable)| {
            EventBody::Weight(WeightRecord {
                device,
                milligrams,
                stable,
            })
        }),
        proptest::collection::vec((sku(), any::<i64>()), 0..5).prop_map(|lines| {
            EventBody::StockAdjusted(StockAdjustment {
                reason: AdjustReason::Correction,
                note: None,
                lines: lines
                    .into_iter()
                    .map(|(sku, delta)| StockLine { sku, delta })
                    .collect(),
            })
        }),
    ]
}
fn event() -> impl Strategy<Value = Event> {
    (event_id(), any::<u64>(), any::<i64>(), event_body()).prop_map(|(id, seq, t, body)| Event {
        id,
        seq: Seq(seq),
        recorded_at_ms: t,
        body,
    })
}
fn down_body() -> impl Strategy<Value = DownBody> {
    prop_oneof![
        (
            sku(),
            ".{0,30}",
            any::<bool>(),
            any::<u32>(),
            proptest::collection::vec(gtin(), 0..3),
            any::<bool>()
        )
            .prop_map(|(sku, name, weighed, tax_rate_bp, barcodes, active)| {
                DownBody::ProductUpsert(Product {
                    sku,
                    name,
                    measure: if weighed { Measure::Grams } else { Measure::Each },
                    tax_rate_bp,
                    barcodes,
                    category: None,
                    active,
                })
            }),
        (sku(), money(), any::<i64>(), proptest::option::of(any::<i64>())).prop_map(|(sku, price, f, t)| {
            DownBody::PriceSet(Price {
                sku,
                price,
                effective_from_ms: f,
                effective_to_ms: t,
            })
        }),
        (sku(), any::<i64>(), any::<i64>(), any::<u64>()).prop_map(|(sku, on_hand, reserved, s)| {
            DownBody::StockLevel(StockLevel {
                sku,
                on_hand,
                reserved,
                as_of_edge_seq: Seq(s),
            })
        }),
        sku().prop_map(|sku| DownBody::ProductRemoved { sku }),
    ]
}
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            store(),
            proptest::collection::vec(event(), 0..6),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(store, events, backlog, dropped_telemetry)| Message::UpBatch(UpBatch {
                    store,
                    first: events.first().map_or(Seq(0), |e| e.seq),
                    last: events.last().map_or(Seq(0), |e| e.seq),
                    events,
                    backlog,
                    dropped_telemetry,
                })
            ),
        any::<u64>().prop_map(|n| Message::AppAck(AppAck {
            committed_up_to: Seq(n)
        })),
        any::<u64>().prop_map(|n| Message::ResendRequest(ResendRequest { from: Seq(n) })),
        Just(Message::ResendUnacked(ResendUnacked {})),
        (
            store(),
            proptest::collection::vec((any::<u64>(), down_body()), 0..6)
        )
            .prop_map(|(store, items)| {
                Message::DownBatch(DownBatch {
                    store,
                    items: items
                        .into_iter()
                        .map(|(s, body)| DownItem { seq: Seq(s), body })
                        .collect(),
                })
            }),
        (event_id(), any::<i64>(), any::<u32>(), sku()).prop_map(|(c, t, to, sku)| Message::RpcRequest(
            RpcRequest {
                correlation_id: c,
                sent_at_ms: t,
                timeout_ms: to,
                call: RpcCall::PriceLookup { sku },
            }
        )),
        (event_id(), ".{0,40}").prop_map(|(c, reason)| Message::RpcResponse(RpcResponse {
            correlation_id: c,
            result: RpcResult::CardDeclined { reason },
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips_sealed_and_opened(m in message(), s in store()) {
        let key = SigningKey::from_seed_for_tests(&[5; 32]);
        let keys = StaticKeys { party: Party::Store(s.clone()), keys: vec![key.public()] };
        let topic = WanTopic::Up(s);
        let text = topic.to_string();
        let bytes = seal::seal(&key, &text, &envelope::encode_body(&m));
        let body = seal::open(&bytes, &topic, &text, &keys, false).unwrap();
        prop_assert_eq!(envelope::decode_body(body), Ok(m));
    }

    #[test]
    fn peeking_a_batch_header_agrees_with_a_full_decode(m in message()) {
        let bytes = envelope::encode_body(&m);
        let peeked = envelope::peek_up_batch_body(&bytes).unwrap();
        match m {
            Message::UpBatch(b) => {
                let h = peeked.unwrap();
                prop_assert_eq!((h.store, h.first, h.last, h.count), (b.store, b.first, b.last, b.events.len() as u64));
            }
            _ => prop_assert!(peeked.is_none()),
        }
    }

    #[test]
    fn every_event_round_trips_alone(e in event()) {
        prop_assert_eq!(envelope::decode_event(&envelope::encode_event(&e)), Ok(e));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = envelope::decode_body(&bytes);
        let _ = envelope::peek_up_batch_body(&bytes);
        let _ = envelope::decode_event(&bytes);
        let keys = StaticKeys { party: Party::Hub, keys: vec![SigningKey::from_seed_for_tests(&[5; 32]).public()] };
        let topic = WanTopic::Ack(StoreId::parse("s").expect("valid"));
        let _ = seal::open(&bytes, &topic, &topic.to_string(), &keys, true);
        let _ = device::parse_json::<PosRequest>(&bytes);
        let _ = device::salvage_request_id(&bytes);
    }

    #[test]
    fn a_corrupted_signed_message_never_panics_and_never_opens(m in message(), flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8), cut in any::<usize>()) {
        let key = SigningKey::from_seed_for_tests(&[6; 32]);
        let keys = StaticKeys { party: Party::Hub, keys: vec![key.public()] };
        let topic = WanTopic::Down(StoreId::parse("s").expect("valid"));
        let text = topic.to_string();
        let mut bytes = seal::seal(&key, &text, &envelope::encode_body(&m));
        let original = bytes.clone();
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        let n = bytes.len();
        bytes.truncate(cut % (n + 1));
        let opened = seal::open(&bytes, &topic, &text, &keys, false);
        if bytes != original {
            prop_assert!(opened.is_err());
        }
        let _ = envelope::decode_body(&bytes);
    }

    #[test]
    fn event_id_text_round_trips(v in any::<u128>()) {
        let id = EventId::from_u128(v);
        prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    }

    #[test]
    fn generated_gtins_validate_and_single_digit_errors_do_not(g in gtin(), pos in any::<usize>(), bump in 1u8..10) {
        prop_assert_eq!(Gtin::parse(g.as_str()), Ok(g.clone()));
        let mut b = g.as_str().as_bytes().to_vec();
        let i = pos % b.len();
        b[i] = b'0' + (b[i] - b'0' + bump) % 10;
        let s = String::from_utf8(b).expect("ascii");
        prop_assert!(Gtin::parse(&s).is_err());
    }

    #[test]
    fn money_addition_matches_wide_arithmetic(a in any::<i64>(), b in any::<i64>()) {
        let wide = i128::from(a) + i128::from(b);
        let r = Money::new(a, Currency::EUR).checked_add(Money::new(b, Currency::EUR));
        match i64::try_from(wide) {
            Ok(v) => prop_assert_eq!(r, Ok(Money::new(v, Currency::EUR))),
            Err(_) => prop_assert!(r.is_err()),
        }
    }

    #[test]
    fn topics_round_trip_for_any_valid_store(s in store(), d in device_id(), l in lane()) {
        for t in [WanTopic::Up(s.clone()), WanTopic::Down(s.clone()), WanTopic::Status(s.clone())] {
            prop_assert_eq!(WanTopic::parse(&t.to_string()), Ok(t));
        }
        let t = LanTopic::Device(s.clone(), d, storegate_protocol::topic::DeviceChannel::Scan);
        prop_assert_eq!(LanTopic::parse(&t.to_string()), Ok(t));
        let t = LanTopic::PosRequest(s, l);
        prop_assert_eq!(LanTopic::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn parsing_arbitrary_topics_never_panics(t in ".{0,80}") {
        let _ = WanTopic::parse(&t);
        let _ = LanTopic::parse(&t);
    }
}
