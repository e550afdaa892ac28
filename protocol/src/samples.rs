//! One realistic, deterministic value of every message type.
//!
//! Used by the golden-bytes tests, the size report
//! (`cargo run -p storegate-protocol --example sizes`), simulators and other
//! crates' tests. Everything here is fixed: no clock, no randomness.

use crate::downlink::{
    ConfigEntry, ConfigSet, ConfigValue, DownBody, DownItem, PaymentDecision, PaymentOutcome, Price, Product,
    Promotion, PromotionRule, StockLevel, Task, TaskKind, TaskLine,
};
use crate::envelope::{AppAck, DownAck, DownBatch, Message, Presence, ResendRequest, ResendUnacked, UpBatch};
use crate::event::{
    AdjustReason, CardAuth, CardPayment, CardRef, CardToken, CountLine, DeviceHealthRecord, DeviceKind,
    Discount, Event, EventBody, EventKind, GoodsReceipt, HealthStatus, Last4, PaymentVoid, Return,
    ReturnLine, Sale, SaleLine, SaleVoid, ScanOutcome, ScanRecord, StockAdjustment, StockCount, StockLine,
    TaskLineResult, TaskStatus, TaskUpdate, TelemetryDropped, Tender, TenderMethod, Totals, Transfer,
    WeightRecord,
};
use crate::gtin::Gtin;
use crate::ids::{DeviceId, EventId, LaneId, Seq, Sku, StoreId};
use crate::money::{Currency, Measure, Money, Qty};
use crate::rpc::{CardKind, LocationStock, RpcCall, RpcErrorCode, RpcRequest, RpcResponse, RpcResult};

/// 2026-01-01T00:00:00Z, the clock of every sample.
pub const T0_MS: i64 = 1_767_225_600_000;

fn id(n: u128) -> EventId {
    EventId::from_parts(T0_MS as u64, n)
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::EUR)
}

fn must<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("sample values are valid by construction")
}

/// The sample store, `store-0001`.
pub fn store() -> StoreId {
    must(StoreId::parse("store-0001"))
}

/// SKU `SKU-{n}`.
pub fn sku(n: usize) -> Sku {
    must(Sku::parse(format!("SKU-{n:05}")))
}

fn lane() -> LaneId {
    must(LaneId::parse("lane-1"))
}

fn device(name: &str) -> DeviceId {
    must(DeviceId::parse(name))
}

fn card() -> CardRef {
    CardRef {
        token: must(CardToken::parse("tok_4f9c2a")),
        last4: must(Last4::parse("4242")),
        brand: Some("VISA".into()),
    }
}

/// A sale of `lines` lines (at least one): items, one weighed line, a
/// promotion, 20% VAT included, paid by card online and cash.
pub fn sale(lines: usize) -> Sale {
    let lines: Vec<SaleLine> = (0..lines.max(1))
        .map(|i| {
            let weighed = i % 5 == 4;
            let (qty, unit, total) = if weighed {
                (Qty::Grams(1250), 299, 374)
            } else {
                (
                    Qty::Each(1 + (i as u32 % 3)),
                    199 + i as i64,
                    (199 + i as i64) * (1 + (i as i64 % 3)),
                )
            };
            let discounts = if i == 1 {
                vec![Discount {
                    promotion_id: Some("PROMO-10".into()),
                    label: "10% off".into(),
                    amount: eur(total / 10),
                }]
            } else {
                Vec::new()
            };
            let discounted = total - discounts.iter().map(|d| d.amount.minor).sum::<i64>();
            SaleLine {
                line_no: (i + 1) as u16,
                sku: sku(i),
                gtin: (!weighed).then(|| must(Gtin::parse("4006381333931"))),
                qty,
                unit_price: eur(unit),
                discounts,
                tax_rate_bp: 2000,
                tax: eur(discounted / 6),
                total: eur(discounted),
            }
        })
        .collect();
    let subtotal: i64 = lines
        .iter()
        .map(|l| l.total.minor + l.discounts.iter().map(|d| d.amount.minor).sum::<i64>())
        .sum();
    let total: i64 = lines.iter().map(|l| l.total.minor).sum();
    let tax: i64 = lines.iter().map(|l| l.tax.minor).sum();
    let card_part = total / 2;
    Sale {
        sale_id: id(1),
        lane: lane(),
        cashier: Some("c-17".into()),
        customer: None,
        tax_included: true,
        lines,
        basket_discounts: Vec::new(),
        totals: Totals {
            subtotal: eur(subtotal),
            discount: eur(subtotal - total),
            tax: eur(tax),
            total: eur(total),
        },
        tenders: vec![
            Tender {
                payment_key: id(2),
                amount: eur(card_part),
                method: TenderMethod::Card(CardPayment {
                    card: card(),
                    auth: CardAuth::Online {
                        authorization_id: "auth_8812".into(),
                        auth_code: "A1B2C3".into(),
                    },
                }),
            },
            Tender {
                payment_key: id(3),
                amount: eur(total - card_part),
                method: TenderMethod::Cash {
                    received: eur(total - card_part + 50),
                },
            },
        ],
        change: eur(50),
        started_at_ms: T0_MS - 90_000,
        completed_at_ms: T0_MS,
    }
}

/// [`sale`] paid in cash alone (key `id(2)`): what simulators and tests
/// use when they are not about card payments, since a hub accepts an
/// online card tender only for an authorisation it issued.
pub fn cash_sale(lines: usize) -> Sale {
    let mut s = sale(lines);
    let total = s.totals.total;
    s.tenders = vec![Tender {
        payment_key: id(2),
        amount: total,
        method: TenderMethod::Cash {
            received: eur(total.minor + 50),
        },
    }];
    s
}

/// One body of every [`EventKind`], in [`EventKind::ALL`] order.
pub fn event_bodies() -> Vec<EventBody> {
    let stock_lines = vec![
        StockLine {
            sku: sku(1),
            delta: 24,
        },
        StockLine {
            sku: sku(2),
            delta: 6,
        },
    ];
    vec![
        EventBody::Sale(sale(3)),
        EventBody::SaleVoided(SaleVoid {
            sale_id: id(1),
            lane: lane(),
            reason: "rung up twice".into(),
            refunds: vec![Tender {
                payment_key: id(4),
                amount: eur(-597),
                method: TenderMethod::Cash { received: eur(-597) },
            }],
            restock: true,
        }),
        EventBody::Return(Return {
            return_id: id(5),
            original_sale: Some(id(1)),
            lane: lane(),
            lines: vec![ReturnLine {
                sku: sku(0),
                qty: Qty::Each(1),
                amount: eur(199),
                tax: eur(33),
                restock: true,
            }],
            refunds: vec![Tender {
                payment_key: id(6),
                amount: eur(199),
                method: TenderMethod::Card(CardPayment {
                    card: card(),
                    auth: CardAuth::StoreAndForward { taken_at_ms: T0_MS },
                }),
            }],
            reason: "faulty".into(),
        }),
        EventBody::PaymentVoided(PaymentVoid {
            payment_key: id(7),
            amount: eur(1299),
            reason: "basket cancelled".into(),
        }),
        EventBody::StockCounted(StockCount {
            counted_by: Some("hh-2".into()),
            lines: vec![CountLine {
                sku: sku(1),
                counted: 40,
            }],
        }),
        EventBody::StockAdjusted(StockAdjustment {
            reason: AdjustReason::Damaged,
            note: Some("dropped pallet".into()),
            lines: vec![StockLine {
                sku: sku(2),
                delta: -3,
            }],
        }),
        EventBody::GoodsReceived(GoodsReceipt {
            reference: "PO-2026-0042".into(),
            supplier: Some("SUP-9".into()),
            lines: stock_lines.clone(),
        }),
        EventBody::TransferOut(Transfer {
            transfer_id: "TR-77".into(),
            counterparty: must(StoreId::parse("wh-central")),
            lines: stock_lines.clone(),
        }),
        EventBody::TransferIn(Transfer {
            transfer_id: "TR-78".into(),
            counterparty: must(StoreId::parse("wh-central")),
            lines: stock_lines,
        }),
        EventBody::Scan(ScanRecord {
            device: device("scanner-1"),
            lane: Some(lane()),
            code: "4006381333931".into(),
            symbology: Some("]E0".into()),
            outcome: ScanOutcome::Matched { sku: sku(0) },
        }),
        EventBody::Weight(WeightRecord {
            device: device("scale-1"),
            milligrams: 1_250_000,
            stable: true,
        }),
        EventBody::DeviceHealth(DeviceHealthRecord {
            device: device("scale-1"),
            kind: DeviceKind::Scale,
            status: HealthStatus::Degraded,
            detail: "timeout waiting for S".into(),
            error_count: 2,
        }),
        EventBody::TaskUpdated(TaskUpdate {
            task_id: "T-100".into(),
            status: TaskStatus::Done,
            device: Some(device("hh-1")),
            lines: vec![TaskLineResult { sku: sku(3), done: 2 }],
            note: None,
        }),
        EventBody::TelemetryDropped(TelemetryDropped {
            kind: EventKind::Scan,
        }),
    ]
}

/// An event at `seq` with `body`.
pub fn event(seq: u64, body: EventBody) -> Event {
    Event {
        id: id(1000 + u128::from(seq)),
        seq: Seq(seq),
        recorded_at_ms: T0_MS,
        body,
    }
}

/// One body of every downlink variant, in declaration order.
pub fn down_bodies() -> Vec<DownBody> {
    vec![
        DownBody::ProductUpsert(Product {
            sku: sku(0),
            name: "Pencil HB".into(),
            measure: Measure::Each,
            tax_rate_bp: 2000,
            barcodes: vec![must(Gtin::parse("4006381333931"))],
            category: Some("stationery".into()),
            active: true,
        }),
        DownBody::ProductRemoved { sku: sku(9) },
        DownBody::PriceSet(Price {
            sku: sku(0),
            price: eur(199),
            effective_from_ms: T0_MS,
            effective_to_ms: None,
        }),
        DownBody::PromotionUpsert(Promotion {
            id: "PROMO-3FOR2".into(),
            label: "3 for 2".into(),
            rule: PromotionRule::MultiBuy { buy: 3, pay: 2 },
            skus: vec![sku(0), sku(1)],
            starts_ms: T0_MS,
            ends_ms: Some(T0_MS + 7 * 86_400_000),
        }),
        DownBody::PromotionRemoved {
            id: "PROMO-OLD".into(),
        },
        DownBody::StockLevel(StockLevel {
            sku: sku(0),
            on_hand: 120,
            reserved: 4,
            as_of_edge_seq: Seq(5123),
        }),
        DownBody::TaskAssigned(Task {
            task_id: "T-100".into(),
            kind: TaskKind::Pick,
            order_ref: Some("ORD-555".into()),
            lines: vec![TaskLine { sku: sku(3), qty: 2 }],
            due_ms: Some(T0_MS + 3_600_000),
            note: Some("click & collect".into()),
            status: None,
        }),
        DownBody::TaskCancelled {
            task_id: "T-99".into(),
        },
        DownBody::Config(ConfigSet {
            entries: vec![
                ConfigEntry {
                    key: "payments.offline.per_txn_limit".into(),
                    value: ConfigValue::Money(eur(10_000)),
                },
                ConfigEntry {
                    key: "payments.offline.window_secs".into(),
                    value: ConfigValue::Int(86_400),
                },
                ConfigEntry {
                    key: "payments.offline.enabled".into(),
                    value: ConfigValue::Bool(true),
                },
                ConfigEntry {
                    key: "store.name".into(),
                    value: ConfigValue::Text("Main Street".into()),
                },
            ],
        }),
        DownBody::PaymentDecision(PaymentDecision {
            payment_key: id(6),
            sale_id: Some(id(1)),
            outcome: PaymentOutcome::Declined {
                reason: "insufficient funds".into(),
            },
        }),
    ]
}

/// One of every RPC call.
pub fn rpc_calls() -> Vec<RpcCall> {
    vec![
        RpcCall::CardAuthorize {
            payment_key: id(2),
            lane: lane(),
            kind: CardKind::Payment,
            card: card(),
            amount: eur(1299),
        },
        RpcCall::CardVoid { payment_key: id(2) },
        RpcCall::PriceLookup { sku: sku(0) },
        RpcCall::StockLookup { sku: sku(0) },
    ]
}

/// One of every RPC result.
pub fn rpc_results() -> Vec<RpcResult> {
    vec![
        RpcResult::CardAuthorized {
            authorization_id: "auth_8812".into(),
            auth_code: "A1B2C3".into(),
        },
        RpcResult::CardDeclined {
            reason: "do not honour".into(),
        },
        RpcResult::CardVoided,
        RpcResult::Price(Some(Price {
            sku: sku(0),
            price: eur(199),
            effective_from_ms: T0_MS,
            effective_to_ms: None,
        })),
        RpcResult::Stock(vec![LocationStock {
            location: store(),
            available: 17,
        }]),
        RpcResult::Error {
            code: RpcErrorCode::DeadlineExceeded,
            message: "provider did not answer in 2000 ms".into(),
        },
    ]
}

/// A batch of `n` sale events of `lines` lines each, seq 1..=n.
pub fn sale_batch(n: usize, lines: usize) -> UpBatch {
    UpBatch {
        store: store(),
        first: Seq(1),
        last: Seq(n as u64),
        events: (1..=n as u64)
            .map(|seq| event(seq, EventBody::Sale(sale(lines))))
            .collect(),
        backlog: 0,
        dropped_telemetry: 0,
    }
}

/// One message of every envelope variant, named.
pub fn messages() -> Vec<(&'static str, Message)> {
    vec![
        (
            "up_batch",
            Message::UpBatch(UpBatch {
                store: store(),
                first: Seq(1),
                last: Seq(event_bodies().len() as u64),
                events: event_bodies()
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| event(i as u64 + 1, b))
                    .collect(),
                backlog: 12,
                dropped_telemetry: 3,
            }),
        ),
        (
            "app_ack",
            Message::AppAck(AppAck {
                committed_up_to: Seq(14),
            }),
        ),
        (
            "resend_request",
            Message::ResendRequest(ResendRequest { from: Seq(15) }),
        ),
        (
            "down_batch",
            Message::DownBatch(DownBatch {
                store: store(),
                items: down_bodies()
                    .into_iter()
                    .enumerate()
                    .map(|(i, body)| DownItem {
                        seq: Seq(i as u64 + 1),
                        body,
                    })
                    .collect(),
            }),
        ),
        (
            "down_ack",
            Message::DownAck(DownAck {
                applied_up_to: Seq(10),
            }),
        ),
        (
            "rpc_request",
            Message::RpcRequest(RpcRequest {
                correlation_id: id(50),
                sent_at_ms: T0_MS,
                timeout_ms: 2000,
                call: rpc_calls().remove(0),
            }),
        ),
        (
            "rpc_response",
            Message::RpcResponse(RpcResponse {
                correlation_id: id(50),
                result: rpc_results().remove(0),
            }),
        ),
        (
            "presence",
            Message::Presence(Presence {
                store: store(),
                online: true,
                agent_version: "0.1.0".into(),
                protocol_version: 1,
                at_ms: T0_MS,
            }),
        ),
        ("resend_unacked", Message::ResendUnacked(ResendUnacked {})),
    ]
}
