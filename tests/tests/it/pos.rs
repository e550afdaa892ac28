//! POS lanes end to end: a lane client on the store's device bus, an edge
//! agent with a simulated scale and scanner on ptys, a catalog sent down,
//! the WAN behind a proxy that can be cut, a stand-in hub that answers card
//! authorisations.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use storegate_e2e::{Proxy, Responder, broker, service_or_skip, wait_until};
use storegate_edge::barcode::{self, Decoded};
use storegate_edge::framing::Terminator;
use storegate_edge::lan::access::DeviceRole;
use storegate_edge::settings::{LaneSettings, SerialScaleSettings, SerialScannerSettings};
use storegate_edge::{Edge, Settings};
use storegate_protocol::device::{ErrorCode, PosOp, PosReply, PosResult, RefundMethod, ReturnItem};
use storegate_protocol::downlink::{DownBody, DownItem, Price, Product, Promotion, PromotionRule};
use storegate_protocol::event::{CardToken, EventBody, Last4};
use storegate_protocol::gtin::gs1_check_digit;
use storegate_protocol::{Currency, Gtin, LaneId, Measure, Money, Seq, Sku, StoreId};
use storegate_sim::devices::{Pty, ScaleState, open_pty, scan, serve_scale};
use storegate_sim::lane::{DeviceLogin, LaneClient};
use tokio_util::sync::CancellationToken;

fn gtin13(first12: &str) -> String {
    format!("{first12}{}", gs1_check_digit(first12.as_bytes()))
}

const PENCIL: &str = "4006381333931";

pub struct Shop {
    pub edge: Edge,
    pub lane: LaneClient,
    pub responder: Responder,
    pub proxy: Proxy,
    pub scale: Arc<ScaleState>,
    pub scanner: Pty,
    pub cola: String,
    pub apples_code: String,
    pub cheese_code: String,
    /// The devices on the bus: `till-1` (lane 1, `lane` above), `till-2`
    /// (lane 2), `till-7` (lane 7), `scan-9` (a scanner for lane 1),
    /// `scale-9` (a scale), `sup-1` (a supervisor's device).
    pub logins: Vec<DeviceLogin>,
    _scale_pty_stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn down(items: Vec<DownBody>) -> Vec<DownItem> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, body)| DownItem {
            seq: Seq(i as u64 + 1),
            body,
        })
        .collect()
}

fn eur(m: i64) -> Money {
    Money::new(m, Currency::EUR)
}

pub async fn shop(store: &str, tweak: impl FnOnce(&mut Settings)) -> Shop {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let proxy = Proxy::start(broker).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scale_pty = open_pty().unwrap();
    let scanner = open_pty().unwrap();
    let scale = Arc::new(ScaleState::default());
    scale.milligrams.store(1_250_000, Ordering::Release);
    let stop = CancellationToken::new();
    let scale_path = scale_pty.path.clone();
    tokio::spawn(serve_scale(scale_pty.master, scale.clone(), stop.clone()));

    let mut s = Settings {
        store_id: store.into(),
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    s.upstream.bundle = Some(
        responder
            .write_bundle(store, &format!("mqtt://{}", proxy.addr), dir.path())
            .unwrap(),
    );
    s.http.listen = "127.0.0.1:0".into();
    s.lan.listen = "127.0.0.1:0".into();
    s.sync.backoff_initial_ms = 20;
    s.sync.backoff_max_ms = 200;
    s.pos.card_timeout_ms = 800;
    s.pos.weigh_timeout_ms = 800;
    s.scales = vec![SerialScaleSettings {
        id: "scale-1".into(),
        path: scale_path,
        baud: 9600,
    }];
    s.scanners = vec![SerialScannerSettings {
        id: "scanner-1".into(),
        path: scanner.path.clone(),
        baud: 9600,
        terminator: Terminator::CrLf,
        idle_ms: 60,
    }];
    s.lanes = vec![LaneSettings {
        id: "1".into(),
        scale: Some("scale-1".into()),
        scanner: Some("scanner-1".into()),
    }];
    let mut logins = Vec::new();
    for (id, role, lanes) in [
        ("till-1", DeviceRole::Till, &["1"][..]),
        ("till-2", DeviceRole::Till, &["2"][..]),
        ("till-7", DeviceRole::Till, &["7"][..]),
        ("scan-9", DeviceRole::Scanner, &["1"][..]),
        ("scale-9", DeviceRole::Scale, &[][..]),
        ("sup-1", DeviceRole::Supervisor, &[][..]),
    ] {
        let (login, entry) = DeviceLogin::new(id, role, lanes);
        s.devices.push(entry);
        logins.push(login);
    }
    // Supervisor approvals have their own test; the others sell and return freely.
    s.pos.approvals = storegate_edge::settings::ApprovalSettings::none();
    tweak(&mut s);
    let edge = storegate_edge::start(s, CancellationToken::new()).await.unwrap();

    // The catalog the hub would send down.
    let layouts = barcode::default_layouts();
    let cola = gtin13("544900000099");
    let apples_code = barcode::encode_variable(&layouts[1], 42, 1250).unwrap(); // 21: weight
    let cheese_code = barcode::encode_variable(&layouts[6], 7, 617).unwrap(); // 26: price
    let key = |code: &str| match barcode::decode(code, &layouts).unwrap().decoded {
        Decoded::Variable { item_gtin, .. } => Gtin::parse(&item_gtin).unwrap(),
        Decoded::Gtin(g) => g,
    };
    let product = |sku: &str, name: &str, measure, barcodes: Vec<Gtin>| {
        DownBody::ProductUpsert(Product {
            sku: Sku::parse(sku).unwrap(),
            name: name.into(),
            measure,
            tax_rate_bp: 2000,
            barcodes,
            category: None,
            active: true,
        })
    };
    let price = |sku: &str, minor| {
        DownBody::PriceSet(Price {
            sku: Sku::parse(sku).unwrap(),
            price: eur(minor),
            effective_from_ms: 0,
            effective_to_ms: None,
        })
    };
    let applied = edge
        .journal
        .apply_downlink(down(vec![
            product(
                "PENCIL",
                "Pencil HB",
                Measure::Each,
                vec![Gtin::parse(PENCIL).unwrap()],
            ),
            price("PENCIL", 199),
            product(
                "COLA",
                "Cola 330 ml",
                Measure::Each,
                vec![Gtin::parse(&cola).unwrap()],
            ),
            price("COLA", 120),
            product("APPLES", "Apples", Measure::Grams, vec![key(&apples_code)]),
            price("APPLES", 299),
            product(
                "CHEESE",
                "Cheese counter",
                Measure::Grams,
                vec![key(&cheese_code)],
            ),
            price("CHEESE", 1990),
            DownBody::PromotionUpsert(Promotion {
                id: "COLA-3FOR2".into(),
                label: "3 for 2".into(),
                rule: PromotionRule::MultiBuy { buy: 3, pay: 2 },
                skus: vec![Sku::parse("COLA").unwrap()],
                starts_ms: 0,
                ends_ms: None,
            }),
        ]))
        .await
        .unwrap();
    assert_eq!(applied.applied_up_to, Seq(9));
    let lane = LaneClient::connect(
        edge.lan_addr.unwrap(),
        &StoreId::parse(store).unwrap(),
        &LaneId::parse("1").unwrap(),
        &logins[0],
    )
    .await
    .unwrap();
    // Nothing is scanned before the scanner driver has its port open.
    wait_until("the scanner's port open", Duration::from_secs(10), || async {
        edge.devices
            .snapshot()
            .get("scanner-1")
            .is_some_and(|d| d.status == storegate_protocol::event::HealthStatus::Ok)
    })
    .await;
    Shop {
        edge,
        lane,
        responder,
        proxy,
        scale,
        scanner,
        cola,
        apples_code,
        cheese_code,
        logins,
        _scale_pty_stop: stop,
        _dir: dir,
    }
}

pub fn ok(r: PosReply) -> PosResult {
    assert!(r.ok, "expected success, got {:?}", r.error);
    r.result.unwrap()
}

fn error(r: PosReply) -> (ErrorCode, String) {
    assert!(!r.ok, "expected an error, got {:?}", r.result);
    let e = r.error.unwrap();
    (e.code, e.message)
}

fn basket(r: PosResult) -> storegate_protocol::device::BasketView {
    match r {
        PosResult::Basket(b) => b,
        other => panic!("expected a basket, got {other:?}"),
    }
}

pub fn add(code: &str, qty: Option<u32>) -> PosOp {
    PosOp::AddItem {
        code: Some(code.into()),
        sku: None,
        qty,
        grams: None,
    }
}

fn card(amount: i64) -> PosOp {
    PosOp::TenderCard {
        token: CardToken::parse("tok_visa_1").unwrap(),
        last4: Last4::parse("4242").unwrap(),
        brand: Some("VISA".into()),
        amount,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_basket_sells_with_the_wan_cut() {
    let mut s = shop("s-basket", |_| {}).await;
    s.proxy.cut();
    ok(s.lane
        .request(PosOp::OpenBasket {
            cashier: Some("c1".into()),
            customer: None,
        })
        .await
        .unwrap());
    let b = basket(ok(s.lane.request(add(PENCIL, Some(2))).await.unwrap()));
    assert_eq!(b.total, 398);
    // Three colas through the lane's serial scanner: the lane hears about each.
    for _ in 0..3 {
        scan(&mut s.scanner.master, &s.cola, Terminator::CrLf)
            .await
            .unwrap();
        let r = s
            .lane
            .unsolicited(Duration::from_secs(5))
            .await
            .expect("basket after a scan");
        basket(ok(r));
    }
    // Apples by SKU: the lane's scale weighs them.
    let b = basket(ok(s
        .lane
        .request(PosOp::AddItem {
            code: None,
            sku: Some(Sku::parse("APPLES").unwrap()),
            qty: None,
            grams: None,
        })
        .await
        .unwrap()));
    let apples = b.lines.last().unwrap();
    assert_eq!((apples.quantity, apples.total), (1250, 374), "1.25 kg at 2.99/kg");
    // A weight label from the counter and a price label from the deli.
    let b = basket(ok(s
        .lane
        .request(add(&s.apples_code.clone(), None))
        .await
        .unwrap()));
    assert_eq!(b.lines.last().unwrap().total, 374);
    let b = basket(ok(s
        .lane
        .request(add(&s.cheese_code.clone(), None))
        .await
        .unwrap()));
    assert_eq!(b.lines.last().unwrap().total, 617);
    let b = basket(ok(s.lane.request(PosOp::Totals).await.unwrap()));
    assert_eq!(b.discount, 120, "3 colas for the price of 2");
    assert_eq!(b.total, 398 + 3 * 120 - 120 + 374 + 374 + 617);
    let b = basket(ok(s
        .lane
        .request(PosOp::TenderCash { amount: 5000 })
        .await
        .unwrap()));
    assert_eq!((b.due, b.change), (0, 5000 - b.total));
    let receipt = match ok(s.lane.request(PosOp::Complete).await.unwrap()) {
        PosResult::Sale(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(receipt.lines.len(), 7);
    assert_eq!(receipt.total, b.total);

    // Durable and in the outbox, stock replica moved, all with the WAN down.
    let j = &s.edge.journal;
    assert_eq!(j.stock_view("PENCIL").await.unwrap(), -2);
    assert_eq!(j.stock_view("COLA").await.unwrap(), -3);
    assert_eq!(j.stock_view("APPLES").await.unwrap(), -2500);
    let sale = j
        .outbox_events()
        .await
        .unwrap()
        .into_iter()
        .find(|e| matches!(e.body, EventBody::Sale(_)))
        .expect("the sale is in the outbox");
    assert_eq!(sale.seq.0, receipt.seq);
    let again = ok(s
        .lane
        .request(PosOp::Receipt {
            sale_id: receipt.sale_id,
        })
        .await
        .unwrap());
    assert!(matches!(again, PosResult::Sale(r) if r.total == receipt.total));

    s.proxy.restore();
    wait_until("the sale reaches the hub", Duration::from_secs(15), || async {
        s.responder
            .log("s-basket")
            .events
            .iter()
            .any(|e| matches!(&e.body, EventBody::Sale(x) if x.sale_id == receipt.sale_id))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_card_payments_stop_at_the_caps() {
    let mut s = shop("s-caps", |st| {
        st.pos.offline_per_txn_limit_minor = 2000;
        st.pos.offline_total_limit_minor = 3000;
    })
    .await;
    s.proxy.cut();
    ok(s.lane.request(add(PENCIL, Some(5))).await.unwrap()); // 9.95
    let b = basket(ok(s.lane.request(card(995)).await.unwrap()));
    assert!(b.tenders[0].offline, "taken store-and-forward");
    ok(s.lane.request(PosOp::Complete).await.unwrap());

    ok(s.lane.request(add(PENCIL, Some(11))).await.unwrap()); // 21.89
    let (code, msg) = error(s.lane.request(card(2189)).await.unwrap());
    assert_eq!(code, ErrorCode::OfflineLimit);
    assert!(
        msg.contains("20.00 EUR") && msg.contains("another tender"),
        "{msg}"
    );
    ok(s.lane.request(card(1500)).await.unwrap());
    let (code, msg) = error(s.lane.request(card(689)).await.unwrap());
    assert_eq!(code, ErrorCode::OfflineLimit);
    assert!(msg.contains("30.00 EUR"), "the cumulative cap: {msg}");
    let (code, _) = error(
        s.lane
            .request(PosOp::TenderGiftCard {
                token: CardToken::parse("gift_1").unwrap(),
                last4: Last4::parse("0001").unwrap(),
                amount: 689,
            })
            .await
            .unwrap(),
    );
    assert_eq!(code, ErrorCode::PaymentUnavailable, "gift cards need the hub");
    ok(s.lane.request(PosOp::TenderCash { amount: 689 }).await.unwrap());
    assert!(matches!(
        ok(s.lane.request(PosOp::Complete).await.unwrap()),
        PosResult::Sale(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_cards_are_authorised_declined_and_voided_when_late() {
    let mut s = shop("s-cards", |_| {}).await;
    wait_until("edge online", Duration::from_secs(10), || async {
        s.edge.sync.status.connected.load(Ordering::Acquire)
    })
    .await;
    ok(s.lane.request(add(PENCIL, Some(1))).await.unwrap());
    let b = basket(ok(s.lane.request(card(199)).await.unwrap()));
    assert!(!b.tenders[0].offline);
    assert_eq!(b.tenders[0].auth_code.as_deref(), Some("OK1234"));
    ok(s.lane.request(PosOp::Complete).await.unwrap());

    ok(s.lane.request(add(PENCIL, Some(1))).await.unwrap());
    let (code, msg) = error(s.lane.request(card(113)).await.unwrap());
    assert_eq!(code, ErrorCode::CardDeclined);
    assert!(msg.contains("do not honour"), "{msg}");
    // The hub answers too late: the lane falls back to offline, and the
    // authorisation the hub may have made is voided.
    s.responder.rpc_delay_ms.store(2000, Ordering::Release);
    let b = basket(ok(s.lane.request(card(199)).await.unwrap()));
    assert!(b.tenders[0].offline);
    wait_until(
        "a void for the late authorisation",
        Duration::from_secs(10),
        || async {
            s.responder
                .rpc_seen
                .lock()
                .unwrap()
                .iter()
                .any(|(_, r)| matches!(r.call, storegate_protocol::rpc::RpcCall::CardVoid { .. }))
        },
    )
    .await;
    ok(s.lane.request(PosOp::Complete).await.unwrap());
    wait_until(
        "the void recorded for the hub",
        Duration::from_secs(10),
        || async {
            s.responder
                .log("s-cards")
                .events
                .iter()
                .any(|e| matches!(e.body, EventBody::PaymentVoided(_)))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_lane_keeps_working() {
    let mut s = shop("s-bad", |_| {}).await;
    let r = s
        .lane
        .raw("x1".into(), br#"{"id":"x1","op":"fly"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(error(r).0, ErrorCode::MalformedRequest);
    let r = s
        .lane
        .raw(
            "x2".into(),
            br#"{"id":"x2","op":"add_item","code":"4006381333931","qty":"two"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(error(r).0, ErrorCode::MalformedRequest);
    assert_eq!(
        error(s.lane.request(add("96385074", None)).await.unwrap()).0,
        ErrorCode::UnknownBarcode
    );
    let (code, msg) = error(s.lane.request(add("4006381333932", None)).await.unwrap());
    assert_eq!(code, ErrorCode::InvalidBarcode);
    assert!(msg.contains("check digit"), "{msg}");
    assert_eq!(
        error(s.lane.request(PosOp::Complete).await.unwrap()).0,
        ErrorCode::NoOpenBasket
    );
    // The scale never answers.
    s.scale.mute.store(true, Ordering::Release);
    let r = s
        .lane
        .request(PosOp::AddItem {
            code: None,
            sku: Some(Sku::parse("APPLES").unwrap()),
            qty: None,
            grams: None,
        })
        .await
        .unwrap();
    assert_eq!(error(r).0, ErrorCode::ScaleUnavailable);
    s.scale.mute.store(false, Ordering::Release);
    // Garbage on the scanner's serial line.
    use tokio::io::AsyncWriteExt;
    s.scanner.master.write_all(b"\x01\x02\x7f\r\n").await.unwrap();
    // And still the lane sells.
    ok(s.lane.request(add(PENCIL, None)).await.unwrap());
    ok(s.lane.request(PosOp::TenderCash { amount: 199 }).await.unwrap());
    assert!(matches!(
        ok(s.lane.request(PosOp::Complete).await.unwrap()),
        PosResult::Sale(_)
    ));
    wait_until(
        "device errors on the status page",
        Duration::from_secs(5),
        || async {
            let v: serde_json::Value = storegate_e2e::http()
                .get(format!("http://{}/status", s.edge.http_addr))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["devices"]["scanner-1"]["errors"].as_u64().unwrap_or(0) >= 1
                && v["devices"]["scale-1"]["errors"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;
}

impl Shop {
    /// The credentials of device `id` on this shop's bus.
    pub fn login(&self, id: &str) -> &DeviceLogin {
        self.logins
            .iter()
            .find(|l| l.device == id)
            .unwrap_or_else(|| panic!("no device {id} in the shop"))
    }

    fn gate(&self) -> &storegate_broker::gate::GateStats {
        self.edge.lan_gate.as_deref().expect("the bus runs its gate")
    }

    /// Waits until the gate has refused at least `n` connections for
    /// `reason` (it counts as it closes them, just after the client sees
    /// the close).
    async fn refused_at_least(&self, reason: &str, n: u64) {
        wait_until(
            &format!("{n} refusals for {reason}"),
            Duration::from_secs(10),
            || async { self.gate().refused(reason) >= n },
        )
        .await;
    }
}

/// Runs a Mosquitto command-line client against the shop's bus and
/// returns what it printed and whether it succeeded.
async fn mosquitto(bin: &std::path::Path, lan: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let port = lan.port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output(),
    )
    .await
    .expect("the client ends")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A rogue client on the store LAN (real `mosquitto_pub`/`mosquitto_sub`):
/// with no credentials, then with a scanner's, then with another till's,
/// it tries to drive lane 1, read its replies, pre-seed a reply id, flood
/// lane ids and device ids. Each is refused, counted by the gate, and lane
/// 1 keeps selling with the answers that are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_lan_client_cannot_drive_or_read_another_lane_and_the_lane_keeps_selling() {
    use storegate_protocol::topic::LanTopic;
    let Some((sub_bin, pub_bin)) = mosquitto_clients() else {
        return;
    };
    let mut s = shop("s-rogue", |_| {}).await;
    let lan = s.edge.lan_addr.unwrap();
    let store = StoreId::parse("s-rogue").unwrap();
    let lane1 = LanTopic::PosRequest(store.clone(), LaneId::parse("1").unwrap()).to_string();
    let reply1 = LanTopic::PosReply(store.clone(), LaneId::parse("1").unwrap()).to_string();
    ok(s.lane
        .request(PosOp::OpenBasket {
            cashier: None,
            customer: None,
        })
        .await
        .unwrap());

    // No credentials: refused at CONNECT, to publish and to subscribe.
    let steal = r#"{"id":"r1","op":"tender_cash","amount":100000}"#;
    let (sent, out) = mosquitto(&pub_bin, lan, &["-q", "1", "-t", &lane1, "-m", steal]).await;
    assert!(!sent && out.contains("not authorised"), "{out}");
    let (read, out) = mosquitto(&sub_bin, lan, &["-t", &reply1, "-C", "1", "-W", "5"]).await;
    assert!(!read && out.contains("not authorised"), "{out}");
    s.refused_at_least("no_credentials", 2).await;

    // A scanner's own credentials, used for a till's topics: the gate
    // closes the connection at the PUBLISH and at the SUBSCRIBE.
    let scan = s.login("scan-9").clone();
    let scan_id = format!("{}@1", scan.device);
    let as_scanner = ["-i", &scan_id, "-u", &scan.device, "-P", &scan.password];
    let (_, out) = mosquitto(
        &pub_bin,
        lan,
        &[&as_scanner[..], &["-q", "1", "-t", &lane1, "-m", steal]].concat(),
    )
    .await;
    assert!(!out.contains("\"ok\""), "{out}");
    let (_, out) = mosquitto(
        &sub_bin,
        lan,
        &[&as_scanner[..], &["-t", &reply1, "-C", "1", "-W", "3"]].concat(),
    )
    .await;
    assert!(!out.contains('{'), "read nothing of lane 1: {out}");
    s.refused_at_least("publish_not_allowed", 1).await;
    s.refused_at_least("subscribe_not_allowed", 1).await;
    // ...and another device's session id is refused outright.
    let (_, out) = mosquitto(
        &pub_bin,
        lan,
        &[
            "-i",
            "till-1",
            "-u",
            &scan.device,
            "-P",
            &scan.password,
            "-t",
            &lane1,
            "-m",
            steal,
        ],
    )
    .await;
    assert!(out.contains("identifier rejected"), "{out}");

    // Another till (lane 2's) pre-seeds a reply id on lane 1 and floods
    // new lane ids: each publish ends its connection, nothing reaches a lane.
    let till2 = s.login("till-2").clone();
    let as_till2 = ["-u", &till2.device, "-P", &till2.password, "-i", &till2.device];
    let seed = r#"{"id":"9001","op":"cancel_basket"}"#;
    let _ = mosquitto(
        &pub_bin,
        lan,
        &[&as_till2[..], &["-q", "1", "-t", &lane1, "-m", seed]].concat(),
    )
    .await;
    for i in 0..5 {
        let topic = format!("store/s-rogue/pos/f{i}/req");
        let _ = mosquitto(
            &pub_bin,
            lan,
            &[
                &as_till2[..],
                &["-q", "1", "-t", &topic, "-m", r#"{"id":"x","op":"totals"}"#],
            ]
            .concat(),
        )
        .await;
    }
    s.refused_at_least("publish_not_allowed", 7).await;
    let b = basket(ok(s
        .lane
        .raw(
            "9001".into(),
            format!(r#"{{"id":"9001","op":"add_item","code":"{PENCIL}"}}"#).into_bytes(),
        )
        .await
        .unwrap()));
    assert_eq!(
        b.lines.len(),
        1,
        "lane 1's own request 9001 was done, not answered by a seed"
    );

    // A scanner may put items only into its own lanes' baskets.
    let mut scanner = storegate_e2e::MqttPeer::connect_device(
        lan,
        &scan,
        &["store/s-rogue/device/scan-9/reply".to_owned()],
    )
    .await;
    scanner
        .publish(
            "store/s-rogue/device/scan-9/scan",
            format!(r#"{{"code":"{PENCIL}","lane":"2"}}"#).into_bytes(),
        )
        .await;
    let (_, reply) = scanner
        .next(Duration::from_secs(10))
        .await
        .expect("the scanner is answered");
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not bound to lane 2"),
        "{reply}"
    );

    // A flood of made-up devices: each refused; the registry holds none
    // of them. Guessing a real device's password is soon shut out.
    let before = s.edge.devices.snapshot().len();
    for i in 0..30 {
        let user = format!("ghost-{i}");
        let (ok, _) = mosquitto(&pub_bin, lan, &["-u", &user, "-P", "x", "-t", &lane1, "-m", "{}"]).await;
        assert!(!ok);
    }
    s.refused_at_least("unknown_device", 30).await;
    assert_eq!(s.edge.devices.snapshot().len(), before);
    for i in 0..12 {
        let guess = format!("guess-{i}");
        let (ok, _) = mosquitto(
            &pub_bin,
            lan,
            &["-u", "till-2", "-P", &guess, "-t", &lane1, "-m", "{}"],
        )
        .await;
        assert!(!ok);
    }
    wait_until("12 guesses refused", Duration::from_secs(10), || async {
        s.gate().refused("bad_password") + s.gate().refused("locked_out") == 12
    })
    .await;
    assert_eq!(
        s.gate().refused("locked_out"),
        2,
        "past 10 wrong in a minute, shut out"
    );

    // Lane 1 (already connected) sold on throughout.
    let b = basket(ok(s.lane.request(add(PENCIL, None)).await.unwrap()));
    assert_eq!(b.total, 2 * 199, "two pencils: its own, nobody else's");
}

/// A device publishing faster than its rate is slowed down by the gate
/// (counted), every request still gets its answer, and lane 1 keeps
/// selling meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooding_requests_is_held_to_its_rate_and_the_other_lane_keeps_selling() {
    let mut s = shop("s-flood", |s| {
        s.lan.device_rate_per_sec = 50;
        s.lan.device_burst = 10;
    })
    .await;
    let lan = s.edge.lan_addr.unwrap();
    let till2 = s.login("till-2").clone();
    let mut flooder =
        storegate_e2e::MqttPeer::connect_device(lan, &till2, &["store/s-flood/pos/2/reply".to_owned()]).await;
    let flood = 150;
    for i in 0..flood {
        flooder
            .publish(
                "store/s-flood/pos/2/req",
                format!(r#"{{"id":"q{i}","op":"totals"}}"#).into_bytes(),
            )
            .await;
    }
    ok(s.lane
        .request(PosOp::OpenBasket {
            cashier: None,
            customer: None,
        })
        .await
        .unwrap());
    let b = basket(ok(s.lane.request(add(PENCIL, None)).await.unwrap()));
    assert_eq!(b.total, 199, "lane 1 sells during the flood");
    let mut answered = 0;
    while answered < flood {
        let (_, payload) = flooder
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("only {answered} of {flood} answered"));
        let reply: PosReply = serde_json::from_slice(&payload).unwrap();
        assert!(reply.id.is_some());
        answered += 1;
    }
    assert!(
        s.gate().throttled.load(Ordering::Relaxed) >= 100,
        "past the burst of 10, publishes were held back: {}",
        s.gate().throttled.load(Ordering::Relaxed)
    );
}

/// The same request id with a different request is refused, not answered
/// with the first one's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_with_another_request_is_refused() {
    let mut s = shop("s-reuse", |_| {}).await;
    ok(s.lane
        .raw("r".into(), br#"{"id":"r","op":"open_basket"}"#.to_vec())
        .await
        .unwrap());
    let (code, message) = error(
        s.lane
            .raw(
                "r".into(),
                format!(r#"{{"id":"r","op":"add_item","code":"{PENCIL}"}}"#).into_bytes(),
            )
            .await
            .unwrap(),
    );
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("already used"), "{message}");
    let b = basket(ok(s.lane.request(PosOp::Totals).await.unwrap()));
    assert!(b.lines.is_empty(), "nothing was added under the reused id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_gets_the_first_reply_without_doing_it_twice() {
    let mut s = shop("s-retry", |_| {}).await;
    let req = format!(r#"{{"id":"same","op":"add_item","code":"{PENCIL}","qty":1}}"#);
    let first = s.lane.raw("same".into(), req.clone().into_bytes()).await.unwrap();
    let again = s.lane.raw("same".into(), req.into_bytes()).await.unwrap();
    assert_eq!(first, again);
    let b = basket(ok(s.lane.request(PosOp::Totals).await.unwrap()));
    assert_eq!(b.lines.len(), 1, "the retry did not add a second pencil");
}

/// A post-void and a return without a receipt wait for a supervisor's
/// device to approve; the approval covers that one operation, once; a
/// denial or another operation's approval goes nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risky_lane_operations_wait_for_a_supervisor_and_an_approval_covers_one_operation() {
    let mut s = shop("s-sup", |s| {
        s.pos.approvals = storegate_edge::settings::ApprovalSettings {
            refund_limit_minor: 300,
            ..Default::default()
        };
    })
    .await;
    let lan = s.edge.lan_addr.unwrap();
    let mut sup = storegate_e2e::MqttPeer::connect_device(
        lan,
        s.login("sup-1"),
        &[
            "store/s-sup/approval".to_owned(),
            "store/s-sup/device/sup-1/reply".to_owned(),
        ],
    )
    .await;
    ok(s.lane.request(add(PENCIL, Some(2))).await.unwrap());
    ok(s.lane.request(PosOp::TenderCash { amount: 500 }).await.unwrap());
    let PosResult::Sale(sale) = ok(s.lane.request(PosOp::Complete).await.unwrap()) else {
        panic!()
    };
    let void = |approval: Option<String>| PosOp::VoidSale {
        sale_id: sale.sale_id,
        reason: "wrong items".into(),
        approval,
    };
    let asked = s.lane.request(void(None)).await.unwrap();
    let e = asked.error.clone().expect("not done without a supervisor");
    assert_eq!(e.code, ErrorCode::ApprovalRequired);
    let id = e.approval.expect("an approval id to wait for");
    let (topic, notice) = sup
        .next(Duration::from_secs(10))
        .await
        .expect("the supervisor is asked");
    assert_eq!(topic, "store/s-sup/approval");
    let notice: storegate_protocol::device::ApprovalRequest = serde_json::from_slice(&notice).unwrap();
    assert_eq!(
        (notice.approval.as_str(), notice.lane.as_str(), notice.amount),
        (id.as_str(), "1", 398)
    );
    // Not yet approved: still waiting, nothing voided.
    let (code, msg) = error(s.lane.request(void(Some(id.clone()))).await.unwrap());
    assert_eq!(code, ErrorCode::ApprovalRequired);
    assert!(msg.contains("still waiting"), "{msg}");
    // The supervisor approves from their device.
    sup.publish(
        "store/s-sup/device/sup-1/approve",
        format!(r#"{{"approval":"{id}","approve":true}}"#).into_bytes(),
    )
    .await;
    let (_, answer) = sup
        .next(Duration::from_secs(10))
        .await
        .expect("the supervisor is answered");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&answer).unwrap()["ok"],
        true
    );
    // That approval does not cover another operation...
    let no_receipt = |approval| pencil_back(None, approval);
    let (code, msg) = error(s.lane.request(no_receipt(Some(id.clone()))).await.unwrap());
    assert_eq!(code, ErrorCode::ApprovalRequired);
    assert!(msg.contains("no such operation"), "{msg}");
    // ...but does the void it was asked for, once.
    assert!(matches!(
        ok(s.lane.request(void(Some(id.clone()))).await.unwrap()),
        PosResult::Voided { .. }
    ));
    let (code, _) = error(s.lane.request(void(Some(id))).await.unwrap());
    assert_eq!(code, ErrorCode::AlreadyVoided);
    let voided = s.edge.journal.sale(sale.sale_id).await.unwrap().unwrap();
    assert!(voided.voided);

    // A return without a receipt, denied.
    let e = s.lane.request(no_receipt(None)).await.unwrap().error.unwrap();
    let id = e.approval.unwrap();
    let _ = sup.next(Duration::from_secs(10)).await.expect("asked");
    sup.publish(
        "store/s-sup/device/sup-1/approve",
        format!(r#"{{"approval":"{id}","approve":false}}"#).into_bytes(),
    )
    .await;
    let _ = sup.next(Duration::from_secs(10)).await.expect("answered");
    let (code, msg) = error(s.lane.request(no_receipt(Some(id))).await.unwrap());
    assert_eq!(code, ErrorCode::ApprovalRequired);
    assert!(msg.contains("sup-1 denied"), "{msg}");

    // Refunds above the limit (300) need one too, counted over the sale:
    // a second small return that takes it past the limit waits.
    ok(s.lane.request(add(PENCIL, Some(2))).await.unwrap());
    ok(s.lane.request(PosOp::TenderCash { amount: 500 }).await.unwrap());
    let PosResult::Sale(sale) = ok(s.lane.request(PosOp::Complete).await.unwrap()) else {
        panic!()
    };
    let one_back = || pencil_back(Some(sale.sale_id), None);
    assert!(matches!(
        ok(s.lane.request(one_back()).await.unwrap()),
        PosResult::Returned(_)
    ));
    let (code, msg) = error(s.lane.request(one_back()).await.unwrap());
    assert_eq!(code, ErrorCode::ApprovalRequired);
    assert!(
        msg.contains("refund of 398 above the store's limit of 300"),
        "{msg}"
    );
}

/// One pencil back for cash, against `sale_id` if given.
fn pencil_back(sale_id: Option<storegate_protocol::EventId>, approval: Option<String>) -> PosOp {
    PosOp::ReturnItems {
        sale_id,
        lines: vec![ReturnItem {
            sku: Sku::parse("PENCIL").unwrap(),
            qty: Some(1),
            grams: None,
            restock: None,
        }],
        refund: RefundMethod::Cash,
        reason: String::new(),
        approval,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voids_and_returns_against_a_receipt() {
    let mut s = shop("s-returns", |_| {}).await;
    ok(s.lane.request(add(PENCIL, Some(3))).await.unwrap());
    ok(s.lane.request(PosOp::TenderCash { amount: 1000 }).await.unwrap());
    let PosResult::Sale(sale) = ok(s.lane.request(PosOp::Complete).await.unwrap()) else {
        panic!()
    };
    let ret = |qty| PosOp::ReturnItems {
        sale_id: Some(sale.sale_id),
        lines: vec![ReturnItem {
            sku: Sku::parse("PENCIL").unwrap(),
            qty: Some(qty),
            grams: None,
            restock: None,
        }],
        refund: RefundMethod::Cash,
        reason: "changed mind".into(),
        approval: None,
    };
    let PosResult::Returned(r) = ok(s.lane.request(ret(1)).await.unwrap()) else {
        panic!()
    };
    assert_eq!(r.refunded, 199);
    let (code, msg) = error(s.lane.request(ret(3)).await.unwrap());
    assert_eq!(code, ErrorCode::ReturnInvalid);
    assert!(msg.contains("3 sold, 1 returned"), "{msg}");
    assert_eq!(
        error(
            s.lane
                .request(PosOp::VoidSale {
                    sale_id: sale.sale_id,
                    reason: "x".into(),
                    approval: None,
                })
                .await
                .unwrap()
        )
        .0,
        ErrorCode::ReturnInvalid
    );
    assert_eq!(s.edge.journal.stock_view("PENCIL").await.unwrap(), -2);

    ok(s.lane.request(add(PENCIL, Some(1))).await.unwrap());
    ok(s.lane.request(PosOp::TenderCash { amount: 199 }).await.unwrap());
    let PosResult::Sale(other) = ok(s.lane.request(PosOp::Complete).await.unwrap()) else {
        panic!()
    };
    ok(s.lane
        .request(PosOp::VoidSale {
            sale_id: other.sale_id,
            reason: "rung twice".into(),
            approval: None,
        })
        .await
        .unwrap());
    assert_eq!(
        error(
            s.lane
                .request(PosOp::VoidSale {
                    sale_id: other.sale_id,
                    reason: "x".into(),
                    approval: None,
                })
                .await
                .unwrap()
        )
        .0,
        ErrorCode::AlreadyVoided
    );
    assert_eq!(
        s.edge.journal.stock_view("PENCIL").await.unwrap(),
        -2,
        "the void put the pencil back"
    );
    let no_receipt = PosOp::ReturnItems {
        sale_id: None,
        lines: vec![ReturnItem {
            sku: Sku::parse("COLA").unwrap(),
            qty: Some(2),
            grams: None,
            restock: Some(false),
        }],
        refund: RefundMethod::OriginalTender,
        reason: String::new(),
        approval: None,
    };
    assert_eq!(
        error(s.lane.request(no_receipt).await.unwrap()).0,
        ErrorCode::ReturnInvalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_mosquitto_client_drives_a_lane() {
    let Some((sub_bin, pub_bin)) = mosquitto_clients() else {
        return;
    };
    let s = shop("s-mq", |_| {}).await;
    let lan = s.edge.lan_addr.unwrap();
    let port = lan.port().to_string();
    // Lane 7's till, as `edge-agent device new till-7 --role till --lane 7`
    // makes it: a session for replies and one per request.
    let till = s.login("till-7").clone();
    let sub_id = format!("{}@1", till.device);
    // `-d` prints the client's protocol steps: its SUBACK says it listens
    // (line-buffered through coreutils' stdbuf, or it would wait in a pipe
    // buffer until the end).
    let mut sub = tokio::process::Command::new("stdbuf")
        .arg("-oL")
        .arg(sub_bin)
        .args([
            "-d",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            &till.device,
            "-P",
            &till.password,
            "-i",
            &sub_id,
            "-t",
            "store/s-mq/pos/7/reply",
            "-C",
            "4",
            "-W",
            "30",
            "-q",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(sub.stdout.take().unwrap()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("received SUBACK") {
                return;
            }
        }
        panic!("mosquitto_sub ended before subscribing");
    })
    .await
    .expect("mosquitto_sub subscribed");
    for msg in [
        r#"{"id":"1","op":"open_basket","cashier":"c9"}"#.to_owned(),
        format!(r#"{{"id":"2","op":"add_item","code":"{PENCIL}","qty":2}}"#),
        r#"{"id":"3","op":"tender_cash","amount":500}"#.to_owned(),
        r#"{"id":"4","op":"complete"}"#.to_owned(),
    ] {
        let st = tokio::process::Command::new(&pub_bin)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                &till.device,
                "-P",
                &till.password,
                "-i",
                &till.device,
                "-t",
                "store/s-mq/pos/7/req",
                "-q",
                "1",
                "-m",
                &msg,
            ])
            .status()
            .await
            .unwrap();
        // Acked by the broker (QoS 1) before the next one goes: in order.
        assert!(st.success());
    }
    let replies: Vec<serde_json::Value> = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            // Debug lines start "Client"; the replies are JSON.
            if l.starts_with('{') {
                out.push(serde_json::from_str(&l).unwrap());
            }
        }
        out
    })
    .await
    .unwrap();
    let _ = sub.wait().await;
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(replies[1]["result"]["total"], 398);
    assert_eq!(replies[2]["result"]["change"], 102);
    assert_eq!(replies[3]["id"], "4");
    assert_eq!(replies[3]["result"]["kind"], "sale");
}

/// `mosquitto_sub` and `mosquitto_pub`, or a loud skip (a failure under CI).
fn mosquitto_clients() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    match (which("mosquitto_sub"), which("mosquitto_pub")) {
        (Ok(sub), Ok(publ)) => Some((sub, publ)),
        _ => {
            service_or_skip(
                "mosquitto_pub / mosquitto_sub (Debian's mosquitto-clients)",
                false,
            );
            None
        }
    }
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}
