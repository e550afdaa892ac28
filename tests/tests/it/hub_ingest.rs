//! The hub half of the sync contract, driven by a real MQTT client through
//! the hub's embedded broker, on SQLite and on PostgreSQL.

use std::time::Duration;

use serde_json::Value;
use storegate_e2e::{
    Backend, StorePeer, TestHub, both_backends, http, spawn_hub, spawn_hub_with, wait_until,
};
use storegate_protocol::downlink::{DownBody, StockLevel};
use storegate_protocol::envelope::{
    AppAck, DownAck, Message, Presence, ResendRequest, ResendUnacked, UpBatch,
};
use storegate_protocol::event::{DeviceHealthRecord, DeviceKind, Event, EventBody, HealthStatus};
use storegate_protocol::topic::WanTopic;
use storegate_protocol::{DeviceId, EventId, Seq, Sku, StoreId, samples};

pub fn sale_event(seq: u64) -> Event {
    let mut s = samples::cash_sale(1);
    s.sale_id = EventId::from_parts(samples::T0_MS as u64, u128::from(seq) << 8);
    for (i, t) in s.tenders.iter_mut().enumerate() {
        t.payment_key = EventId::from_parts(samples::T0_MS as u64 + 1, (u128::from(seq) << 8) + i as u128);
    }
    Event {
        id: EventId::from_parts(samples::T0_MS as u64 + 2, u128::from(seq)),
        seq: Seq(seq),
        recorded_at_ms: samples::T0_MS,
        body: EventBody::Sale(s),
    }
}

pub fn batch_of(store: &str, events: Vec<Event>) -> Message {
    Message::UpBatch(UpBatch {
        store: StoreId::parse(store).unwrap(),
        first: events.first().map_or(Seq(0), |e| e.seq),
        last: events.last().map_or(Seq(0), |e| e.seq),
        events,
        backlog: 0,
        dropped_telemetry: 0,
    })
}

pub fn sales(store: &str, from: u64, to: u64) -> Message {
    batch_of(store, (from..=to).map(sale_event).collect())
}

pub fn up(store: &str) -> String {
    WanTopic::Up(StoreId::parse(store).unwrap()).to_string()
}

pub async fn edge_peer(hub: &TestHub, store: &str) -> StorePeer {
    hub.store_peer(store).await
}

pub async fn next_reply(peer: &mut StorePeer) -> Message {
    peer.next_message().await
}

pub async fn get(hub: &TestHub, path: &str) -> Value {
    let resp = http()
        .get(format!("{}{path}", hub.api))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.unwrap()
}

fn ack(n: u64) -> Message {
    Message::AppAck(AppAck {
        committed_up_to: Seq(n),
    })
}

async fn scalar(hub: &TestHub, sql: &'static str, store: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .bind(store)
        .fetch_one(&hub.hub.db.pool)
        .await
        .unwrap()
}

both_backends!(
    batches_land_exactly_once_and_a_gap_asks_for_a_resend,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let mut peer = edge_peer(&hub, "s1").await;
        peer.send_up(&sales("s1", 1, 10)).await;
        assert_eq!(next_reply(&mut peer).await, ack(10));
        // A replay is acked again without effect.
        peer.send_up(&sales("s1", 1, 10)).await;
        assert_eq!(next_reply(&mut peer).await, ack(10));
        // Reordered: 21..30 arrives before 11..20.
        peer.send_up(&sales("s1", 21, 30)).await;
        assert_eq!(
            next_reply(&mut peer).await,
            Message::ResendRequest(ResendRequest { from: Seq(11) })
        );
        peer.send_up(&sales("s1", 11, 20)).await;
        assert_eq!(next_reply(&mut peer).await, ack(20));
        peer.send_up(&sales("s1", 21, 30)).await;
        assert_eq!(next_reply(&mut peer).await, ack(30));
        // Overlapping: only the new part counts.
        peer.send_up(&sales("s1", 25, 35)).await;
        assert_eq!(next_reply(&mut peer).await, ack(35));

        let store = get(&hub, "/api/v1/stores/s1").await;
        assert_eq!(store["hwm"], 35);
        assert_eq!(store["events_ingested"], 35);
        assert_eq!(store["resend_requests"], 1);
        assert!(store["duplicates"].as_i64().unwrap() >= 10 + 6);
        let events = get(&hub, "/api/v1/stores/s1/events?limit=500").await;
        let seqs: Vec<i64> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=35).collect::<Vec<_>>());
        assert_eq!(events[0]["kind"], "sale");

        // Each sale sold one of SKU-00000 here: the ledger moved once per sale.
        let level = scalar(
            &hub,
            "SELECT on_hand FROM stock_levels WHERE location = $1 AND sku = 'SKU-00000'",
            "s1",
        )
        .await;
        let ledger = scalar(&hub, "SELECT CAST(SUM(delta) AS BIGINT) FROM stock_movements WHERE location = $1 AND sku = 'SKU-00000'", "s1").await;
        assert_eq!((level, ledger), (-35, -35));
        hub.stop().await;
    }
);

/// The hub's Prometheus text.
pub async fn metrics(hub: &TestHub) -> String {
    http()
        .get(format!("{}/metrics", hub.api))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a counter with these labels in Prometheus text (0 if absent).
pub fn counter(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

both_backends!(
    bad_messages_are_dropped_or_quarantined_and_ingestion_goes_on,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub_with(backend, |s| s.ingest.max_payload_bytes = 8 * 1024).await else {
            return;
        };
        let mut peer = edge_peer(&hub, "s2").await;
        let s2 = WanTopic::Up(StoreId::parse("s2").unwrap());
        // Dropped unread (nothing unchecked reaches the database): garbage,
        // an oversized payload, a topic with no valid store id.
        peer.mqtt.publish(up("s2"), b"\x02\xff garbage".to_vec()).await;
        peer.send_up(&sales("s2", 1, 60)).await; // larger than 8 KiB
        peer.mqtt
            .publish("sg/v1/store/bad%id/up", peer.seal(&s2, &sales("s2", 1, 3)))
            .await;
        // Signed by the store, but unusable: quarantined with their bytes.
        peer.send_up(&sales("other", 1, 3)).await; // another store's batch
        peer.send_up(&ack(3)).await; // not uplink
        let mut bad = UpBatch {
            store: StoreId::parse("s2").unwrap(),
            first: Seq(1),
            last: Seq(9),
            events: (1..=3).map(sale_event).collect(),
            backlog: 0,
            dropped_telemetry: 0,
        };
        peer.send_up(&Message::UpBatch(bad.clone())).await; // header lies
        bad.last = Seq(3);
        bad.events[2].seq = Seq(7);
        peer.send_up(&Message::UpBatch(bad)).await; // seq jumps
        // And then a good batch still goes through.
        peer.send_up(&sales("s2", 1, 3)).await;
        assert_eq!(next_reply(&mut peer).await, ack(3));

        let quarantined = || async { storegate_hub::quarantine::count(&hub.hub.db).await.unwrap() };
        wait_until("four quarantined messages", Duration::from_secs(10), || async {
            quarantined().await >= 4
        })
        .await;
        assert_eq!(quarantined().await, 4);
        let page = get(&hub, "/api/v1/quarantine?limit=3").await;
        assert_eq!(page["items"].as_array().unwrap().len(), 3);
        let next = page["next_cursor"].as_str().unwrap();
        let rest = get(&hub, &format!("/api/v1/quarantine?cursor={next}")).await;
        let mut reasons: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .chain(rest["items"].as_array().unwrap())
            .map(|q| {
                q["reason"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "invalid_batch",
                "invalid_batch",
                "store_mismatch",
                "unexpected_message"
            ]
        );
        let first = &rest["items"][0];
        let one = get(&hub, &format!("/api/v1/quarantine/{}", first["id"])).await;
        assert!(
            !one["payload_hex"].as_str().unwrap().is_empty(),
            "raw bytes are kept"
        );
        let after = metrics(&hub).await;
        assert!(after.contains("hub_quarantined_total"), "{after}");
        assert!(after.contains("hub_wan_refused_total"), "{after}");
        for reason in ["malformed", "oversized", "unknown_topic"] {
            assert_eq!(hub.hub.trust.refused(reason), 1, "one {reason} message counted");
        }
        assert_eq!(hub.hub.trust.refused_total(), 3);
        hub.stop().await;
    }
);

both_backends!(
    business_discrepancies_are_flagged_and_never_block,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        // The catalog knows SKU-00000 at 5.00 EUR; the store sells it at 1.99
        // and also sells SKU-00001, which the catalog does not know.
        sqlx::query(
        "INSERT INTO products (sku, name, measure, tax_rate_bp, created_ms, updated_ms) VALUES ('SKU-00000', 'Pencil', 'each', 2000, 0, 0)",
    )
    .execute(&hub.hub.db.pool)
    .await
    .unwrap();
        sqlx::query(
        "INSERT INTO prices (sku, scope, scope_id, price_minor, currency, effective_from_ms, created_ms) VALUES ('SKU-00000', 'all', '', 500, 'EUR', 0, 0)",
    )
    .execute(&hub.hub.db.pool)
    .await
    .unwrap();
        let mut e = sale_event(1);
        if let EventBody::Sale(s) = &mut e.body {
            let mut two = samples::cash_sale(2);
            two.sale_id = s.sale_id;
            two.tenders = s.tenders.clone();
            *s = two;
            for (i, t) in s.tenders.iter_mut().enumerate() {
                t.payment_key = EventId::from_parts(9, i as u128);
            }
        }
        let mut peer = edge_peer(&hub, "s3").await;
        peer.send_up(&batch_of("s3", vec![e])).await;
        assert_eq!(
            next_reply(&mut peer).await,
            ack(1),
            "flagged events are still committed"
        );
        let page = get(&hub, "/api/v1/discrepancies?store_id=s3").await;
        let kinds: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"price_mismatch"), "{kinds:?}");
        assert!(kinds.contains(&"unknown_sku"), "{kinds:?}");
        let id = page["items"][0]["id"].as_i64().unwrap();
        let resp = http()
            .post(format!("{}/api/v1/discrepancies/{id}/resolve", hub.api))
            .bearer_auth(&hub.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let open = get(&hub, "/api/v1/discrepancies?store_id=s3").await;
        assert_eq!(open["items"].as_array().unwrap().len(), kinds.len() - 1);
        hub.stop().await;
    }
);

both_backends!(
    presence_and_device_health_fill_the_registry,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let mut peer = edge_peer(&hub, "s4").await;
        let store = StoreId::parse("s4").unwrap();
        let status = WanTopic::Status(store.clone());
        let sealer = peer.trust.sealer.clone();
        let presence = |online| {
            sealer.seal(
                &status,
                &Message::Presence(Presence {
                    store: store.clone(),
                    online,
                    agent_version: "9.9.9".into(),
                    protocol_version: 2,
                    at_ms: 0,
                }),
            )
        };
        peer.mqtt
            .publish_retained(status.to_string(), presence(true))
            .await;
        let health = Event {
            id: EventId::from_u128(77),
            seq: Seq(1),
            recorded_at_ms: 1234,
            body: EventBody::DeviceHealth(DeviceHealthRecord {
                device: DeviceId::parse("scale-1").unwrap(),
                kind: DeviceKind::Scale,
                status: HealthStatus::Degraded,
                detail: "timeout".into(),
                error_count: 3,
            }),
        };
        peer.send_up(&batch_of("s4", vec![health])).await;
        assert_eq!(next_reply(&mut peer).await, ack(1));
        wait_until("presence stored", Duration::from_secs(10), || async {
            get(&hub, "/api/v1/stores/s4").await["online"] == true
        })
        .await;
        let s = get(&hub, "/api/v1/stores/s4").await;
        assert_eq!(s["agent_version"], "9.9.9");
        let devices = get(&hub, "/api/v1/stores/s4/devices").await;
        assert_eq!(devices[0]["device_id"], "scale-1");
        assert_eq!(devices[0]["status"], "degraded");
        assert_eq!(devices[0]["error_count"], 3);
        peer.mqtt
            .publish_retained(status.to_string(), presence(false))
            .await;
        wait_until("offline stored", Duration::from_secs(10), || async {
            get(&hub, "/api/v1/stores/s4").await["online"] == false
        })
        .await;
        hub.stop().await;
    }
);

both_backends!(
    downlink_is_sent_until_the_edge_acks_it,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let mut peer = edge_peer(&hub, "s5").await;
        let store = StoreId::parse("s5").unwrap();
        let level = |n| {
            DownBody::StockLevel(StockLevel {
                sku: Sku::parse("SKU-1").unwrap(),
                on_hand: n,
                reserved: 0,
                as_of_edge_seq: Seq(0),
            })
        };
        let mut tx = hub.hub.db.begin().await.unwrap();
        let seqs =
            storegate_hub::downlink::enqueue(&mut tx, &hub.hub.db, "s5", &[level(1), level(2), level(3)])
                .await
                .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(seqs, vec![Seq(1), Seq(2), Seq(3)]);
        hub.hub.link.send_downlink(&store);
        let Message::DownBatch(b) = next_reply(&mut peer).await else {
            panic!("expected a DownBatch")
        };
        assert_eq!(b.items.iter().map(|i| i.seq.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        // The edge applied only up to 2: the rest is sent again.
        peer.send_up(&Message::DownAck(DownAck {
            applied_up_to: Seq(2),
        }))
        .await;
        // A send that raced the ack (the store coming online, the stock
        // pusher) may still carry 1..=3: duplicates are harmless by design.
        // What must come is a batch of only what is unacked.
        let mut seen = Vec::new();
        let after_ack = loop {
            let Message::DownBatch(b) = next_reply(&mut peer).await else {
                panic!("expected a DownBatch")
            };
            let seqs = b.items.iter().map(|i| i.seq.0).collect::<Vec<_>>();
            if seqs.first() == Some(&3) {
                break seqs;
            }
            assert_eq!(seqs, vec![1, 2, 3], "only a raced duplicate may come first");
            seen.push(seqs);
            assert!(seen.len() < 3, "the unacked tail is never sent alone: {seen:?}");
        };
        assert_eq!(after_ack, vec![3]);
        peer.send_up(&Message::DownAck(DownAck {
            applied_up_to: Seq(3),
        }))
        .await;
        wait_until("downlink acked and deleted", Duration::from_secs(10), || async {
            get(&hub, "/api/v1/stores/s5").await["downlink_pending"] == 0
        })
        .await;
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM downlink WHERE store_id = 's5'")
            .fetch_one(&hub.hub.db.pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
        hub.stop().await;
    }
);

/// A broker restart that loses every session (Mosquitto without
/// persistence): a store that reconnects before the hub has resubscribed
/// resends into the void. The hub, subscribing again without its session,
/// asks every store it knows to send what is unacked again, so nobody waits
/// for its ack timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_lost_its_broker_session_asks_stores_to_resend() {
    if !storegate_e2e::service_or_skip("mosquitto binary", storegate_e2e::Mosquitto::binary().is_some()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut mosquitto = storegate_e2e::Mosquitto::start(dir.path())
        .await
        .expect("mosquitto starts");
    let addr = mosquitto.addr;
    let Some(hub) = spawn_hub_with(Backend::Sqlite, |s| {
        s.broker.url = format!("mqtt://{addr}");
    })
    .await
    else {
        return;
    };
    let trust = hub.credential("s9").await;
    let mut peer = StorePeer::connect(addr, "edge-s9", trust.clone(), false).await;
    peer.send_up(&sales("s9", 1, 3)).await;
    assert_eq!(next_reply(&mut peer).await, ack(3));

    drop(peer);
    mosquitto.restart().await.expect("mosquitto restarts");
    // The store is back first (the hub backs off before reconnecting).
    let mut peer = StorePeer::connect(addr, "edge-s9-again", trust, false).await;
    assert_eq!(
        peer.next_any().await,
        Message::ResendUnacked(ResendUnacked {}),
        "the hub asks for what it may have missed"
    );
    // ...and what the store sends then is taken.
    peer.send_up(&sales("s9", 4, 5)).await;
    assert_eq!(next_reply(&mut peer).await, ack(5));
    assert_eq!(get(&hub, "/api/v1/stores/s9").await["hwm"], 5);
    hub.stop().await;
}
