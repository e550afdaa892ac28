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
use storegate_edge::settings::{LaneSettings, SerialScaleSettings, SerialScannerSettings};
use storegate_edge::{Edge, Settings};
use storegate_protocol::device::{ErrorCode, PosOp, PosReply, PosResult, RefundMethod, ReturnItem};
use storegate_protocol::downlink::{DownBody, DownItem, Price, Product, Promotion, PromotionRule};
use storegate_protocol::event::{CardToken, EventBody, Last4};
use storegate_protocol::gtin::gs1_check_digit;
use storegate_protocol::{Currency, Gtin, LaneId, Measure, Money, Seq, Sku, StoreId};
use storegate_sim::devices::{Pty, ScaleState, open_pty, scan, serve_scale};
use storegate_sim::lane::LaneClient;
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

/// A flood of new lane ids is bounded: past `MAX_LANES` each gets an error
/// reply (no task, no queue), and the lanes in the settings keep selling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_lane_ids_is_refused_past_the_bound_and_the_lane_keeps_working() {
    use storegate_protocol::topic::LanTopic;
    let mut s = shop("s-flood", |_| {}).await;
    let store = StoreId::parse("s-flood").unwrap();
    let lan = s.edge.lan_addr.unwrap();
    let mut peer =
        storegate_e2e::MqttPeer::connect(lan, "flooder", &["store/s-flood/pos/+/reply".to_owned()]).await;
    let flood = storegate_edge::lan::MAX_LANES + 40;
    for i in 0..flood {
        let lane = LaneId::parse(format!("f{i}")).unwrap();
        peer.publish(
            LanTopic::PosRequest(store.clone(), lane).to_string(),
            format!(r#"{{"id":"q{i}","op":"totals"}}"#).into_bytes(),
        )
        .await;
    }
    let mut refused = 0;
    for _ in 0..flood {
        let (_, payload) = peer
            .next(Duration::from_secs(20))
            .await
            .expect("every request is answered");
        let reply: PosReply = serde_json::from_slice(&payload).unwrap();
        if let Some(e) = &reply.error
            && e.code == ErrorCode::BadRequest
            && e.message.contains("at most")
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 40);
    ok(s.lane
        .request(PosOp::OpenBasket {
            cashier: None,
            customer: None,
        })
        .await
        .unwrap());
    let b = basket(ok(s.lane.request(add(PENCIL, None)).await.unwrap()));
    assert_eq!(b.total, 199, "lane 1 still sells");
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
                    reason: "x".into()
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
        })
        .await
        .unwrap());
    assert_eq!(
        error(
            s.lane
                .request(PosOp::VoidSale {
                    sale_id: other.sale_id,
                    reason: "x".into()
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
    };
    assert_eq!(
        error(s.lane.request(no_receipt).await.unwrap()).0,
        ErrorCode::ReturnInvalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_mosquitto_client_drives_a_lane() {
    let (Ok(sub_bin), Ok(pub_bin)) = (which("mosquitto_sub"), which("mosquitto_pub")) else {
        service_or_skip(
            "mosquitto_pub / mosquitto_sub (Debian's mosquitto-clients)",
            false,
        );
        return;
    };
    let s = shop("s-mq", |_| {}).await;
    let lan = s.edge.lan_addr.unwrap();
    let port = lan.port().to_string();
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

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}
