//! The edge half of the sync contract against a real broker and a stand-in
//! hub responder: outages, broker restarts, lost batches, downlink,
//! presence and the telemetry budget.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use storegate_e2e::{Mosquitto, Proxy, Responder, broker, service_or_skip, wait_until};
use storegate_edge::{Edge, Settings};
use storegate_protocol::downlink::{DownBody, DownItem, Price, StockLevel};
use storegate_protocol::envelope::{DownBatch, Message};
use storegate_protocol::event::{EventBody, EventKind, ScanOutcome, ScanRecord};
use storegate_protocol::topic::WanTopic;
use storegate_protocol::{Currency, DeviceId, EventId, Money, Seq, Sku, StoreId, samples};
use tokio_util::sync::CancellationToken;

/// An edge's settings: `store`'s credential from `chain` (the stand-in
/// hub's CA), syncing to `upstream`.
fn settings(
    chain: &storegate_sim::trust::TestChain,
    dir: &std::path::Path,
    store: &str,
    upstream: std::net::SocketAddr,
) -> Settings {
    let mut s = Settings {
        store_id: store.into(),
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    let bundle = chain
        .write_bundle(
            &StoreId::parse(store).unwrap(),
            &format!("mqtt://{upstream}"),
            dir,
        )
        .unwrap();
    s.upstream.bundle = Some(bundle);
    s.upstream.url = format!("mqtt://{upstream}");
    s.http.listen = "127.0.0.1:0".into();
    s.lan.listen = "127.0.0.1:0".into();
    s.sync.backoff_initial_ms = 20;
    s.sync.backoff_max_ms = 200;
    s.upstream.keep_alive_secs = 5;
    s
}

async fn start(s: Settings) -> Edge {
    storegate_edge::start(s, CancellationToken::new())
        .await
        .expect("edge starts")
}

/// A sale body with a fresh sale id.
pub fn fresh_sale(n: u128) -> EventBody {
    storegate_sim::chain::till_sale(n)
}

fn scan(n: usize) -> EventBody {
    EventBody::Scan(ScanRecord {
        device: DeviceId::parse("scanner-1").unwrap(),
        lane: None,
        code: format!("{n:013}"),
        symbology: None,
        outcome: ScanOutcome::Unknown,
    })
}

async fn record_many(edge: &Edge, from: u128, n: u128) -> Vec<(Seq, EventId)> {
    let mut tasks = Vec::new();
    for i in from..from + n {
        let j = edge.journal.clone();
        tasks.push(tokio::spawn(async move {
            j.record(fresh_sale(i), None).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        out.push((r.seq, r.id));
    }
    out
}

fn assert_exactly_once_in_order(log: &storegate_e2e::StoreLog, recorded: &[(Seq, EventId)]) {
    let seqs: Vec<u64> = log.events.iter().map(|e| e.seq.0).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "responder must hold seq 1..=N with no gap");
    let ids: HashSet<EventId> = log.events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), log.events.len(), "event ids are unique");
    for (seq, id) in recorded {
        let e = &log.events[(seq.0 - 1) as usize];
        assert_eq!(e.id, *id, "seq {seq} keeps the id it was recorded with");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_recorded_while_the_wan_is_down_reach_the_hub_in_order_exactly_once() {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let proxy = Proxy::start(broker).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let edge = start(settings(&responder.chain(), dir.path(), "s-wan", proxy.addr)).await;

    let mut recorded = record_many(&edge, 0, 150).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        responder.log("s-wan").events.len(),
        0,
        "nothing crosses a cut WAN"
    );
    assert_eq!(edge.journal.stats().outbox_depth, 150);

    proxy.restore();
    wait_until("the backlog to drain", Duration::from_secs(30), || async {
        responder.log("s-wan").hwm == 150 && edge.journal.stats().outbox_depth == 0
    })
    .await;

    // Cut in the middle of a stream: record while syncing, cut, record more, restore.
    let busy = {
        let j = edge.journal.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 1000..1300u128 {
                let r = j.record(fresh_sale(i), None).await.unwrap();
                out.push((r.seq, r.id));
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();
    recorded.extend(busy.await.unwrap());
    wait_until(
        "everything to sync after the second cut",
        Duration::from_secs(30),
        || async { responder.log("s-wan").hwm == 450 && edge.journal.stats().outbox_depth == 0 },
    )
    .await;

    let log = responder.log("s-wan");
    assert_eq!(log.events.len(), 450);
    assert_exactly_once_in_order(&log, &recorded);
    assert_eq!(log.backlog, 0, "the last batch reports an empty backlog");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_that_loses_every_session_loses_nothing() {
    if !service_or_skip("mosquitto binary", Mosquitto::binary().is_some()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(dir.path()).await.expect("mosquitto starts");
    let responder = Responder::start(mosquitto.addr).await.unwrap();
    let mut s = settings(
        &responder.chain(),
        &dir.path().join("edge"),
        "s-restart",
        mosquitto.addr,
    );
    // Batches published after the restart but before the hub re-subscribes
    // are dropped by the broker; the ack timeout is what recovers them.
    s.sync.ack_timeout_ms = 1000;
    let edge = start(s).await;
    wait_until("edge connected", Duration::from_secs(10), || async {
        edge.sync.status.connected.load(Ordering::Acquire)
    })
    .await;

    // The hub is slow: it receives but does not ack yet.
    responder.hold_acks.store(true, Ordering::Release);
    let mut recorded = record_many(&edge, 0, 100).await;
    wait_until(
        "responder to receive the first 100",
        Duration::from_secs(10),
        || async { responder.log("s-restart").hwm == 100 },
    )
    .await;
    assert_eq!(edge.journal.stats().outbox_depth, 100, "no ack, nothing deleted");

    // The broker dies with every session and queued message.
    mosquitto.kill().await;
    recorded.extend(record_many(&edge, 100, 100).await);
    mosquitto.restart().await.expect("mosquitto restarts");
    responder.hold_acks.store(false, Ordering::Release);

    wait_until(
        "everything acked after the restart",
        Duration::from_secs(30),
        || async { responder.log("s-restart").hwm == 200 && edge.journal.stats().outbox_depth == 0 },
    )
    .await;
    let log = responder.log("s-restart");
    assert_exactly_once_in_order(&log, &recorded);
    assert!(log.duplicates > 0, "the unacked first 100 were sent again");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_batch_is_answered_with_a_resend_request_and_recovered() {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&responder.chain(), dir.path(), "s-lost", broker);
    s.sync.batch_max_events = 10;
    s.sync.window = 4;
    // The first batch vanishes on the way.
    responder.lose_batches.store(1, Ordering::Release);
    let edge = start(s).await;
    let recorded = record_many(&edge, 0, 60).await;
    wait_until("all 60 after the resend", Duration::from_secs(30), || async {
        responder.log("s-lost").hwm == 60 && edge.journal.stats().outbox_depth == 0
    })
    .await;
    let log = responder.log("s-lost");
    assert!(log.resends >= 1, "the gap made the responder ask for a resend");
    assert_exactly_once_in_order(&log, &recorded);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_is_applied_in_order_idempotently_and_bad_messages_do_not_stop_it() {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edge = start(settings(&responder.chain(), dir.path(), "s-down", broker)).await;
    wait_until("edge connected", Duration::from_secs(10), || async {
        edge.sync.status.connected.load(Ordering::Acquire)
    })
    .await;
    let store = StoreId::parse("s-down").unwrap();
    let sku = Sku::parse("SKU-00001").unwrap();
    let hub = responder.chain().hub_sealer();
    let down = |items: Vec<(u64, DownBody)>| {
        hub.seal(
            &WanTopic::Down(store.clone()),
            &Message::DownBatch(DownBatch {
                store: store.clone(),
                items: items
                    .into_iter()
                    .map(|(s, body)| DownItem { seq: Seq(s), body })
                    .collect(),
            }),
        )
    };
    let level = |on_hand, as_of| {
        DownBody::StockLevel(StockLevel {
            sku: sku.clone(),
            on_hand,
            reserved: 0,
            as_of_edge_seq: Seq(as_of),
        })
    };
    let price = DownBody::PriceSet(Price {
        sku: sku.clone(),
        price: Money::new(250, Currency::EUR),
        effective_from_ms: 0,
        effective_to_ms: None,
    });
    let topic = WanTopic::Down(store.clone()).to_string();
    responder
        .publish(topic.clone(), b"\x01garbage".to_vec())
        .await
        .unwrap();
    responder
        .publish(
            topic.clone(),
            down(vec![(1, samples::down_bodies().remove(0)), (2, price)]),
        )
        .await
        .unwrap();
    responder
        .publish(topic.clone(), down(vec![(3, level(40, 0))]))
        .await
        .unwrap();
    // A replay and a message from the future (gap at 4).
    responder
        .publish(topic.clone(), down(vec![(1, level(999, 0)), (5, level(7, 0))]))
        .await
        .unwrap();
    wait_until(
        "downlink applied up to 3 and acked",
        Duration::from_secs(10),
        || async {
            responder.log("s-down").down_acked == 3 && edge.sync.status.rejected.load(Ordering::Relaxed) == 1
        },
    )
    .await;
    assert_eq!(
        edge.journal.stock_view("SKU-00001").await.unwrap(),
        40,
        "the replayed seq 1 was not applied"
    );

    // Local movements on top of the hub level; then the hub catches up.
    let sold = record_many(&edge, 0, 2).await; // each sample sale sells 2 of SKU-00001
    assert_eq!(edge.journal.stock_view("SKU-00001").await.unwrap(), 36);
    let last = sold.iter().map(|(s, _)| s.0).max().unwrap();
    responder
        .publish(
            topic.clone(),
            down(vec![(4, level(38, sold[0].0.0)), (5, level(36, last))]),
        )
        .await
        .unwrap();
    wait_until("downlink applied up to 5", Duration::from_secs(10), || async {
        responder.log("s-down").down_acked == 5
    })
    .await;
    assert_eq!(
        edge.journal.stock_view("SKU-00001").await.unwrap(),
        36,
        "no movement counted twice"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_retained_and_the_last_will_marks_the_store_offline() {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let proxy = Proxy::start(broker).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edge = start(settings(&responder.chain(), dir.path(), "s-presence", proxy.addr)).await;
    wait_until("online presence", Duration::from_secs(10), || async {
        responder.log("s-presence").online == Some(true)
    })
    .await;
    // The link dies without a goodbye: the broker publishes the last will.
    proxy.cut();
    wait_until("last will", Duration::from_secs(20), || async {
        responder.log("s-presence").online == Some(false)
    })
    .await;
    proxy.restore();
    wait_until("online again", Duration::from_secs(10), || async {
        responder.log("s-presence").online == Some(true)
    })
    .await;
    edge.stop().await;
    wait_until("graceful offline", Duration::from_secs(10), || async {
        responder.log("s-presence").online == Some(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_telemetry_is_dropped_oldest_first_and_counted_while_sales_are_kept() {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let proxy = Proxy::start(broker).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&responder.chain(), dir.path(), "s-budget", proxy.addr);
    s.journal.outbox_budget_bytes = 16 * 1024;
    let edge = start(s).await;

    let mut sales = Vec::new();
    for i in 0..600usize {
        edge.journal.record(scan(i), None).await.unwrap();
        if i % 20 == 0 {
            let r = edge.journal.record(fresh_sale(i as u128), None).await.unwrap();
            sales.push((r.seq, r.id));
        }
    }
    let stats = edge.journal.stats();
    assert!(stats.dropped_telemetry > 0, "scans were dropped");
    assert!(
        stats.outbox_bytes <= 16 * 1024,
        "telemetry kept within budget: {}",
        stats.outbox_bytes
    );
    assert_eq!(
        stats.outbox_depth, 630,
        "every seq stays, dropped ones as placeholders"
    );

    proxy.restore();
    wait_until("all 630 seqs synced", Duration::from_secs(30), || async {
        responder.log("s-budget").hwm == 630
    })
    .await;
    let log = responder.log("s-budget");
    assert_exactly_once_in_order(&log, &sales);
    let dropped = log
        .events
        .iter()
        .filter(|e| e.body.kind() == EventKind::TelemetryDropped)
        .count() as u64;
    assert_eq!(
        dropped, stats.dropped_telemetry,
        "every drop arrives as a placeholder"
    );
    assert_eq!(
        log.dropped_telemetry, stats.dropped_telemetry,
        "the count is reported upstream"
    );
    let first_kept_scan = log
        .events
        .iter()
        .position(|e| e.body.kind() == EventKind::Scan)
        .unwrap();
    let last_dropped = log
        .events
        .iter()
        .rposition(|e| e.body.kind() == EventKind::TelemetryDropped)
        .unwrap();
    assert!(last_dropped < first_kept_scan, "the oldest telemetry went first");
    assert_eq!(
        log.events
            .iter()
            .filter(|e| e.body.kind() == EventKind::Sale)
            .count(),
        30,
        "no sale was dropped"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoint_reports_outbox_and_link() {
    let broker = broker();
    let proxy = Proxy::start(broker).await.unwrap();
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let chain = storegate_sim::trust::TestChain::new().unwrap();
    let edge = start(settings(&chain, dir.path(), "s-status", proxy.addr)).await;
    record_many(&edge, 0, 5).await;
    let v: serde_json::Value = storegate_e2e::http()
        .get(format!("http://{}/status", edge.http_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["store"], "s-status");
    assert_eq!(v["connected"], false);
    assert_eq!(v["outbox_depth"], 5);
    assert!(v["oldest_unsynced_age_ms"].as_i64().unwrap() >= 0);
    let metrics = storegate_e2e::http()
        .get(format!("http://{}/metrics", edge.http_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("edge_events_recorded_total"), "{metrics}");
    edge.stop().await;
}
