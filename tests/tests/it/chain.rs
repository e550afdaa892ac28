//! The whole chain with the real binaries: `hub` (its embedded broker,
//! SQLite or PostgreSQL) and several `edge-agent`s, each behind a TCP proxy
//! that stands for its WAN.
//!
//! - A fault run: tills record sales on every store while WANs are cut, an
//!   edge is killed with SIGKILL (also while its WAN is down) and the hub
//!   too; then a checker in the spirit of Jepsen's total-queue checker
//!   counts lost (acknowledged to a till, missing at the hub), unexpected
//!   (at the hub, never attempted) and duplicated (at the hub more than
//!   once) sales, and stock must converge: the hub's level is what was
//!   received minus what was acknowledged, and each edge's view equals it.
//!   The same run on a Mosquitto of the test's own adds a kill -9 of the
//!   broker while the hub stays up.
//! - Click-and-collect: an online order becomes a pick task on the store's
//!   device bus; the device's confirmation completes the order.
//! - Store-and-forward: a card taken offline at a lane and declined at the
//!   hub lands in the back-office exception queue.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use storegate_e2e::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Backend, EdgeProcess, HubBroker, HubProcess, Mosquitto, MqttPeer, Proxy,
    Rest, both_backends, drop_pg_database, fresh_pg_database, http, service_or_skip, token, wait_until,
};
use storegate_protocol::device::{PosOp, PosResult};
use storegate_protocol::event::{CardToken, Last4};
use storegate_protocol::topic::LanTopic;
use storegate_protocol::{LaneId, StoreId};
use storegate_sim::chain::{Api, TillHistory, check, till};
use storegate_sim::lane::LaneClient;

/// What one till sale takes from stock (`chain::till_sale`).
pub(crate) const SOLD: [(&str, i64); 3] = [("SKU-00000", 1), ("SKU-00001", 2), ("SKU-00002", 3)];
pub(crate) const RECEIVED: i64 = 1_000_000;
pub(crate) const BARCODE: &str = "4006381333931";

/// Hub environment for these runs: stock pushed often, sagas resumed soon.
pub(crate) const HUB_ENV: [(&str, &str); 2] = [
    ("SG_HUB_COMMERCE__STOCK_PUSH_INTERVAL_MS", "200"),
    ("SG_HUB_COMMERCE__SAGA_LEASE_MS", "2000"),
];

pub(crate) async fn database(backend: Backend, dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("hub.db").display())),
        Backend::Postgres => fresh_pg_database().await,
    }
}

pub(crate) async fn admin(hub: &HubProcess) -> Rest {
    let api = format!("http://{}", hub.api);
    let t = token(&api, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("admin logs in");
    Rest::new(&api, &t)
}

/// Locations, products with prices and barcodes, stock everywhere, a carrier.
pub(crate) async fn seed(admin: &Rest, stores: &[&str]) {
    for s in stores {
        admin
            .put(
                &format!("/api/v1/stores/{s}"),
                json!({"name": s, "kind": "store", "region": "north"}),
            )
            .await;
    }
    for (i, (sku, _)) in SOLD.iter().enumerate() {
        let barcodes = if i == 0 { vec![BARCODE] } else { vec![] };
        admin
            .put(
                &format!("/api/v1/products/{sku}"),
                json!({"name": format!("Product {sku}"), "tax_rate_bp": 2000, "barcodes": barcodes}),
            )
            .await;
        admin
            .post(
                "/api/v1/prices",
                json!({"sku": sku, "scope": "all", "price_minor": 1013 + i as i64, "currency": "EUR", "effective_from_ms": 0}),
            )
            .await;
        for s in stores {
            admin
                .post(
                    "/api/v1/stock/receipts",
                    json!({"location": s, "lines": [{"sku": sku, "qty": RECEIVED}]}),
                )
                .await;
        }
    }
}

/// The hub's on-hand level of `sku` at `location`.
pub(crate) async fn hub_level(admin: &Rest, location: &str, sku: &str) -> i64 {
    let page = admin
        .get(&format!("/api/v1/stock?location={location}&sku={sku}"))
        .await;
    page["items"][0]["on_hand"].as_i64().unwrap_or(0)
}

/// The edge's view of `sku`, if it answers.
pub(crate) async fn edge_level(edge: SocketAddr, sku: &str) -> Option<i64> {
    let r = http()
        .get(format!("http://{edge}/api/v1/stock/{sku}"))
        .send()
        .await
        .ok()?;
    r.json::<Value>().await.ok()?["level"].as_i64()
}

struct Store {
    id: StoreId,
    dir: tempfile::TempDir,
    /// Its bundle, from `hub store provision`.
    bundle: std::path::PathBuf,
    wan: Proxy,
    edge: Option<EdgeProcess>,
    url: Arc<Mutex<String>>,
    env: &'static [(&'static str, &'static str)],
}

impl Store {
    async fn start_edge(&mut self) {
        let edge = EdgeProcess::spawn(&self.bundle, self.dir.path(), self.wan.addr, self.env).await;
        *self.url.lock().unwrap() = format!("http://{}", edge.http);
        self.edge = Some(edge);
    }

    async fn kill9(&mut self) {
        if let Some(e) = self.edge.take() {
            e.kill9().await;
        }
    }

    fn http(&self) -> SocketAddr {
        self.edge.as_ref().expect("edge running").http
    }
}

pub(crate) async fn status(edge: SocketAddr) -> Option<Value> {
    http()
        .get(format!("http://{edge}/status"))
        .send()
        .await
        .ok()?
        .json::<Value>()
        .await
        .ok()
}

both_backends!(
    a_fault_run_loses_nothing_invents_nothing_duplicates_nothing_and_stock_converges,
    |backend: Backend| async move { fault_run(backend, false).await }
);

/// The same run with the hub and the edges on a Mosquitto of their own,
/// which is killed (SIGKILL, no persistence: every session and queued
/// message gone) and restarted while the hub stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_run_through_mosquitto_survives_the_broker_being_killed() {
    if !service_or_skip("mosquitto binary", Mosquitto::binary().is_some()) {
        return;
    }
    fault_run(Backend::Sqlite, true).await;
}

/// Tills sell on three stores through WAN cuts and kill -9 of edges and
/// of the hub (and, with `external_broker`, of the broker), then the
/// checker and the stock convergence checks.
async fn fault_run(backend: Backend, external_broker: bool) {
    let hub_dir = tempfile::tempdir().unwrap();
    let Some(url) = database(backend, hub_dir.path()).await else {
        return;
    };
    let mut mosquitto = if external_broker {
        Some(Mosquitto::start(hub_dir.path()).await.expect("mosquitto starts"))
    } else {
        None
    };
    let hub_broker = match &mosquitto {
        Some(m) => HubBroker::External(m.addr),
        None => HubBroker::Embedded,
    };
    let mut hub = Some(HubProcess::spawn_on(hub_dir.path(), &url, hub_broker, &HUB_ENV).await);
    let broker: SocketAddr = match hub_broker {
        HubBroker::External(a) => a,
        HubBroker::Embedded => hub.as_ref().unwrap().broker,
    };
    let names = ["f1", "f2", "f3"];
    let admin_rest = admin(hub.as_ref().unwrap()).await;
    seed(&admin_rest, &names).await;

    let mut stores = Vec::new();
    for name in names {
        let id = StoreId::parse(name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bundle = hub
            .as_ref()
            .unwrap()
            .provision(&id, &format!("mqtt://{broker}"), dir.path())
            .await;
        let mut s = Store {
            id,
            dir,
            bundle,
            wan: Proxy::start(broker).await.unwrap(),
            edge: None,
            url: Arc::new(Mutex::new(String::new())),
            // On Mosquitto, the edges' own ack timeout is longer than the
            // whole run may wait: what they sent while the hub had no
            // session must come back because the hub asks for it
            // (`ResendUnacked`), not because they gave up waiting.
            env: if external_broker {
                &[("SG_EDGE_SYNC__ACK_TIMEOUT_MS", "600000")]
            } else {
                &[]
            },
        };
        s.start_edge().await;
        stores.push(s);
    }

    let history: Arc<Mutex<TillHistory>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tills = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        for lane in 0..2u128 {
            tills.push(tokio::spawn(till(
                s.id.as_str().to_owned(),
                (i as u128 + 1) * 1_000_000_000 + lane * 10_000_000,
                s.url.clone(),
                history.clone(),
                stop.clone(),
                Duration::from_secs(90),
            )));
        }
    }
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    // The faults, one after another while the tills keep selling.
    pause(1500).await;
    stores[0].wan.cut(); // f1 offline
    pause(1500).await;
    stores[1].kill9().await; // f2 crashes...
    pause(500).await;
    stores[1].start_edge().await; // ...and comes back
    pause(1000).await;
    hub.take().unwrap().kill9().await; // the hub (and its broker) crash
    pause(1500).await;
    hub = Some(HubProcess::spawn_on(hub_dir.path(), &url, hub_broker, &HUB_ENV).await);
    if matches!(hub_broker, HubBroker::Embedded) {
        // The restarted hub's broker has a port of its own: the WAN links
        // lead there now (as DNS would, for a hub that moved).
        let moved = hub.as_ref().unwrap().broker;
        for s in &stores {
            s.wan.retarget(moved);
        }
    }
    pause(1000).await;
    if let Some(m) = &mut mosquitto {
        m.kill().await; // the broker crashes; the hub stays up
        pause(1000).await;
        m.restart().await.expect("mosquitto restarts");
        pause(1000).await;
    }
    stores[0].kill9().await; // f1 crashes while offline
    pause(300).await;
    stores[0].start_edge().await;
    pause(1000).await;
    stores[0].wan.restore();
    stores[2].wan.cut(); // f3 offline...
    pause(1000).await;
    stores[2].kill9().await; // ...killed...
    stores[2].wan.restore(); // ...its WAN back before it is
    pause(300).await;
    stores[2].start_edge().await;
    pause(1500).await;
    stop.store(true, Ordering::Release);
    for t in tills {
        t.await.unwrap().expect("till ran to the end");
    }

    // Let every edge drain, then check.
    let admin_rest = admin(hub.as_ref().unwrap()).await;
    for s in &stores {
        let edge = s.http();
        let id = s.id.as_str().to_owned();
        let admin_rest = admin_rest.clone();
        wait_until(
            &format!("{id} drained to the hub"),
            Duration::from_secs(60),
            || {
                let id = id.clone();
                let admin_rest = admin_rest.clone();
                async move {
                    let Some(st) = status(edge).await else {
                        return false;
                    };
                    let next = st["next_seq"].as_i64().unwrap_or(0);
                    let hub = admin_rest.get(&format!("/api/v1/stores/{id}")).await;
                    st["outbox_depth"] == 0 && hub["hwm"].as_i64() == Some(next - 1)
                }
            },
        )
        .await;
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let api = Api::login(&admin_rest.base, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let v = check(&api, &names, &history).await.unwrap();
    eprintln!("fault run ({backend:?}): {v:?}");
    assert!(v.acknowledged > 200, "the run sold a meaningful amount");
    assert_eq!(
        v.acknowledged, v.attempted,
        "every attempted sale was acknowledged in the end (retries)"
    );
    assert_eq!(v.at_hub, v.acknowledged);
    assert_eq!(
        (v.lost, v.unexpected, v.duplicated, v.misplaced),
        (0, 0, 0, 0),
        "lost, unexpected, duplicated, misplaced"
    );
    assert!(v.gapped_stores.is_empty(), "no gap in any store's seqs");

    // Stock: the hub's level is what it received minus what the tills
    // sold, and its ledger explains every level.
    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    for store in history.attempted.values() {
        *sold.entry(store.as_str()).or_default() += 1;
    }
    for s in &stores {
        for (sku, per_sale) in SOLD {
            let n = sold.get(s.id.as_str()).copied().unwrap_or(0);
            assert_eq!(
                hub_level(&admin_rest, s.id.as_str(), sku).await,
                RECEIVED - n * per_sale,
                "hub level of {sku} at {}",
                s.id
            );
        }
    }
    assert_eq!(admin_rest.get("/api/v1/stock/verify").await, json!([]));
    // ...and each edge's view converges on the hub's level.
    for s in &stores {
        for (sku, _) in SOLD {
            let expect = hub_level(&admin_rest, s.id.as_str(), sku).await;
            let edge = s.http();
            wait_until(
                &format!("{}'s view of {sku} == the hub's {expect}", s.id),
                Duration::from_secs(30),
                || async move { edge_level(edge, sku).await == Some(expect) },
            )
            .await;
        }
    }

    for s in &mut stores {
        if let Some(e) = s.edge.take() {
            e.terminate().await;
        }
    }
    hub.take().unwrap().terminate().await;
    if backend == Backend::Postgres {
        drop_pg_database(&url).await;
    }
}

both_backends!(
    click_and_collect_reaches_the_store_device_and_an_offline_card_declined_at_the_hub_is_an_exception,
    |backend: Backend| async move {
        let hub_dir = tempfile::tempdir().unwrap();
        let Some(url) = database(backend, hub_dir.path()).await else {
            return;
        };
        let hub = HubProcess::spawn(hub_dir.path(), &url, &HUB_ENV).await;
        let admin_rest = admin(&hub).await;
        seed(&admin_rest, &["c1"]).await;
        let store = StoreId::parse("c1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wan = Proxy::start(hub.broker).await.unwrap();
        let bundle = hub
            .provision(&store, &format!("mqtt://{}", hub.broker), dir.path())
            .await;
        let edge = EdgeProcess::spawn(&bundle, dir.path(), wan.addr, &[]).await;
        let lan = edge.lan.expect("the edge runs its device bus");
        let mut handheld =
            MqttPeer::connect_device(lan, &edge.handheld, &[LanTopic::Tasks(store.clone()).to_string()])
                .await;

        // The store has its catalog from the hub before the lane can sell.
        let http_addr = edge.http;
        wait_until(
            "the store's catalog snapshot",
            Duration::from_secs(30),
            || async move { edge_level(http_addr, "SKU-00000").await == Some(RECEIVED) },
        )
        .await;

        // Click-and-collect at c1.
        let order = admin_rest
            .call(
                Method::POST,
                "/api/v1/orders",
                Some(&json!({
                    "lines": [{"sku": "SKU-00001", "qty": 2}],
                    "fulfilment": "collect",
                    "collect_at": "c1",
                    "payment": {"method": "card", "token": "tok_ok", "last4": "4242"},
                    "customer_id": "cust-1",
                })),
                &[("Idempotency-Key", "cc-1")],
            )
            .await;
        assert_eq!(order.status, 201, "{}", order.body);
        let order_id = order.body["id"].as_str().unwrap().to_owned();
        let (topic, task) = handheld
            .next(Duration::from_secs(30))
            .await
            .expect("the pick task reaches the store's device bus");
        assert_eq!(topic, LanTopic::Tasks(store.clone()).to_string());
        let task: Value = serde_json::from_slice(&task).unwrap();
        assert_eq!(task["order_ref"], json!(order_id));
        assert_eq!(task["lines"][0]["sku"], "SKU-00001");
        let task_id = task["task_id"].as_str().unwrap().to_owned();
        handheld
            .publish(
                LanTopic::TaskUpdate(store.clone()).to_string(),
                serde_json::to_vec(&json!({
                    "task_id": task_id, "status": "done", "device": "handheld-1",
                    "lines": [{"sku": "SKU-00001", "done": 2}], "note": null,
                }))
                .unwrap(),
            )
            .await;
        let path = format!("/api/v1/orders/{order_id}");
        let a = admin_rest.clone();
        wait_until("the picked order is completed", Duration::from_secs(30), || {
            let a = a.clone();
            let path = path.clone();
            async move { a.get(&path).await["status"] == "completed" }
        })
        .await;

        // A card taken offline (WAN cut) that the provider declines later.
        wan.cut();
        let mut lane = LaneClient::connect(lan, &store, &LaneId::parse("1").unwrap(), &edge.till)
            .await
            .unwrap();
        let r = lane
            .request(PosOp::AddItem {
                code: Some(BARCODE.into()),
                sku: None,
                qty: None,
                grams: None,
            })
            .await
            .unwrap();
        let Some(PosResult::Basket(b)) = r.result else {
            panic!("scan: {r:?}")
        };
        let due = b.due;
        let r = lane
            .request(PosOp::TenderCard {
                token: CardToken::parse("decline-offline-1").unwrap(),
                last4: Last4::parse("0002").unwrap(),
                brand: Some("VISA".into()),
                amount: due,
            })
            .await
            .unwrap();
        let Some(PosResult::Basket(b)) = r.result else {
            panic!("card tender offline: {r:?}")
        };
        assert!(b.tenders.iter().any(|t| t.offline), "taken store-and-forward");
        let r = lane.request(PosOp::Complete).await.unwrap();
        let Some(PosResult::Sale(receipt)) = r.result else {
            panic!("complete: {r:?}")
        };
        wan.restore();
        let a = admin_rest.clone();
        wait_until(
            "the declined offline card in the exception queue",
            Duration::from_secs(30),
            || {
                let a = a.clone();
                async move {
                    a.get("/api/v1/payment-exceptions").await["items"]
                        .as_array()
                        .is_some_and(|v| !v.is_empty())
                }
            },
        )
        .await;
        let exceptions = admin_rest.get("/api/v1/payment-exceptions").await;
        let items = exceptions["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 1, "{exceptions}");
        assert_eq!(items[0]["store_id"], "c1", "{exceptions}");
        assert_eq!(items[0]["amount_minor"].as_i64(), Some(due), "{exceptions}");
        let payment = admin_rest
            .get(&format!(
                "/api/v1/payments/{}",
                items[0]["payment_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(
            payment["order_id"].as_str(),
            Some(receipt.sale_id.to_string().as_str()),
            "the exception's payment belongs to the offline sale: {payment}"
        );
        // The goods left the store: the stock movement stands.
        assert_eq!(hub_level(&admin_rest, "c1", "SKU-00000").await, RECEIVED - 1);

        edge.terminate().await;
        hub.terminate().await;
        if backend == Backend::Postgres {
            drop_pg_database(&url).await;
        }
    }
);

/// The README's first command: `storegate-sim demo` runs the chain, cuts a
/// store's WAN, shows it catch up, and ends with every store drained and
/// the stock ledger verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_chain_and_a_store_catches_up_after_its_wan_cut() {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(storegate_e2e::bin("storegate-sim"))
            .args([
                "demo",
                "--stores",
                "2",
                "--lanes",
                "1",
                "--rate",
                "30",
                "--orders-per-minute",
                "60",
                "--cut-after",
                "5",
                "--cut-for",
                "5",
                "--duration",
                "25",
                "--api-listen",
                "127.0.0.1:0",
                "--broker-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo ends when asked")
    .expect("storegate-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("REST API  http://127.0.0.1:"),
        "prints the API: {stdout}"
    );
    assert!(stdout.contains("cut store-0002's WAN"), "cuts a WAN: {stdout}");
    assert!(
        stdout.contains("store-0002 caught up"),
        "the store catches up: {stdout}"
    );
    assert!(
        stdout.contains("every level at every location equals the sum of its ledger"),
        "stock verified: {stdout}"
    );
    let drained: Vec<&str> = stdout.lines().filter(|l| l.contains("not yet synced")).collect();
    assert_eq!(drained.len(), 3, "two stores and a warehouse: {stdout}");
    assert!(
        drained.iter().all(|l| l.trim_end().ends_with("not yet synced 0")),
        "every location drained: {drained:?}"
    );
    let sales: u64 = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("till sales"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sales > 0, "the tills sold something: {stdout}");
}
