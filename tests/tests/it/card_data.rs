//! No card number anywhere after a run: a hub and a store (the real
//! binaries, logging at debug) sell with cash and cards while card numbers
//! and track data are offered at every entry (REST, the edge's HTTP API,
//! a lane's request, a card token, a scan, a task update). Then every file
//! both keep (SQLite files with their WAL, the hub's data directory), a
//! PostgreSQL dump, both logs, and a capture of the WAN traffic (both
//! ways) and of what the edge sent its devices are searched for those
//! numbers, in any grouping. The capture of what the devices sent is the
//! control: the same search must find them there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use storegate_e2e::{
    Backend, EdgeProcess, HubBroker, HubProcess, MqttPeer, both_backends, drop_pg_database, http, wait_until,
};
use storegate_protocol::device::{ErrorCode, PosOp, PosResult};
use storegate_protocol::event::{CardToken, EventBody, Last4};
use storegate_protocol::{LaneId, StoreId};
use storegate_sim::lane::LaneClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chain::{BARCODE, HUB_ENV, RECEIVED, admin, database, edge_level, seed};

/// One card number per entry, so a leak names its way in (the test
/// numbers of Visa, Mastercard, Amex, Discover, JCB and Diners).
const AT_REST: &str = "4000 0566 5566 5556";
const AT_EDGE_HTTP: &str = "5555555555554444";
const AT_LANE: &str = "4111-1111-1111-1111";
const AS_TOKEN: &str = "tok_378282246310005";
const AS_SCAN: &str = ";6011111111111117=25121010000000000000?";
const AT_TASK: &str = "3530 1113 3330 0000";
const AT_PRODUCT: &str = "36227206271667";

/// The card number in `offered`: its digits (a track's, before its `=`).
fn digits_of(offered: &str) -> String {
    let pan = offered.split('=').next().unwrap_or(offered);
    pan.chars().filter(char::is_ascii_digit).collect()
}

/// The digits of each number offered.
fn planted() -> Vec<String> {
    [
        AT_REST,
        AT_EDGE_HTTP,
        AT_LANE,
        AS_TOKEN,
        AS_SCAN,
        AT_TASK,
        AT_PRODUCT,
    ]
    .iter()
    .map(|s| digits_of(s))
    .collect()
}

/// Which planted numbers `bytes` holds, in any grouping (every non-digit
/// dropped before searching).
fn found_in(bytes: &[u8]) -> Vec<String> {
    let digits: String = bytes
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| char::from(*b))
        .collect();
    planted()
        .into_iter()
        .filter(|p| digits.contains(p.as_str()))
        .collect()
}

/// A TCP tap: forwards to `target` and keeps what went each way.
#[derive(Clone)]
struct Tap {
    addr: SocketAddr,
    /// Client to server.
    up: Arc<Mutex<Vec<u8>>>,
    /// Server to client.
    down: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn start(target: SocketAddr) -> Tap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tap = Tap {
            addr: listener.local_addr().unwrap(),
            up: Arc::default(),
            down: Arc::default(),
        };
        let t = tap.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(copy(ir, ow, t.up.clone()));
                tokio::spawn(copy(or, iw, t.down.clone()));
            }
        });
        tap
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    keep: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        keep.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

both_backends!(
    after_a_run_no_card_number_is_in_any_file_dump_log_or_capture,
    |backend: Backend| async move { no_card_number_anywhere(backend).await }
);

async fn no_card_number_anywhere(backend: Backend) {
    let hub_dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let Some(url) = database(backend, hub_dir.path()).await else {
        return;
    };
    let mut env = HUB_ENV.to_vec();
    env.push(("RUST_LOG", "debug"));
    let hub_log = logs.path().join("hub.log");
    let hub = HubProcess::spawn_logged(hub_dir.path(), &url, HubBroker::Embedded, &env, Some(&hub_log)).await;
    let admin_rest = admin(&hub).await;
    seed(&admin_rest, &["p1"]).await;
    let store = StoreId::parse("p1").unwrap();

    // REST: a product named with a card number, a store note with another.
    let r = admin_rest
        .call(
            Method::PUT,
            "/api/v1/products/SKU-CARD",
            Some(&json!({"name": format!("gift {AT_REST}"), "tax_rate_bp": 2000, "barcodes": []})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        found_in(r.body.to_string().as_bytes()).is_empty(),
        "not echoed: {}",
        r.body
    );
    let r = admin_rest
        .call(
            Method::PUT,
            "/api/v1/stores/p1",
            Some(&json!({"name": format!("p1 {AT_PRODUCT}"), "kind": "store", "region": "north"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // The store, its WAN and its LAN tapped.
    let dir = tempfile::tempdir().unwrap();
    let wan = Tap::start(hub.broker).await;
    let bundle = hub
        .provision(&store, &format!("mqtt://{}", hub.broker), dir.path())
        .await;
    let edge_log = logs.path().join("edge.log");
    let edge = EdgeProcess::spawn_logged(
        &bundle,
        dir.path(),
        wan.addr,
        &[("RUST_LOG", "debug")],
        Some(&edge_log),
    )
    .await;
    let http_addr = edge.http;
    wait_until("the store's catalog", Duration::from_secs(30), || async move {
        edge_level(http_addr, "SKU-00000").await == Some(RECEIVED)
    })
    .await;
    let lan = Tap::start(edge.lan.expect("the bus runs")).await;

    // The edge's HTTP API: a sale whose cashier field holds a card number.
    let EventBody::Sale(mut sale) = storegate_sim::chain::till_sale(1) else {
        panic!("a sale")
    };
    sale.cashier = Some(format!("clerk {AT_EDGE_HTTP}"));
    let r = http()
        .post(format!("http://{}/api/v1/events", edge.http))
        .json(&EventBody::Sale(sale))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.bytes().await.unwrap();
    assert!(found_in(&body).is_empty(), "not echoed");

    // A lane: a cashier, a card token, then a real card sale and a cash sale.
    let mut lane = LaneClient::connect(lan.addr, &store, &LaneId::parse("1").unwrap(), &edge.till)
        .await
        .unwrap();
    let r = lane
        .request(PosOp::OpenBasket {
            cashier: Some(AT_LANE.into()),
            customer: None,
        })
        .await
        .unwrap();
    assert!(!r.ok, "{r:?}");
    // Two: the simulated provider declines amounts ending in 13 (1013).
    let add = || PosOp::AddItem {
        code: Some(BARCODE.into()),
        sku: None,
        qty: Some(2),
        grams: None,
    };
    let total = |r: PosResult| match r {
        PosResult::Basket(b) => b.total,
        other => panic!("{other:?}"),
    };
    let due = total(lane.request(add()).await.unwrap().result.unwrap());
    let r = lane
        .raw(
            "tok".into(),
            format!(
                r#"{{"id":"tok","op":"tender_card","token":"{AS_TOKEN}","last4":"0005","amount":{due}}}"#
            )
            .into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::BadRequest));
    let paid = lane
        .request(PosOp::TenderCard {
            token: CardToken::parse("tok_ok").unwrap(),
            last4: Last4::parse("4242").unwrap(),
            brand: Some("visa".into()),
            amount: due,
        })
        .await
        .unwrap();
    assert!(paid.ok, "{paid:?}");
    assert!(lane.request(PosOp::Complete).await.unwrap().ok);
    let due = total(lane.request(add()).await.unwrap().result.unwrap());
    assert!(lane.request(PosOp::TenderCash { amount: due }).await.unwrap().ok);
    assert!(lane.request(PosOp::Complete).await.unwrap().ok);

    // The handheld: track data scanned, a card number in a task note.
    let mut handheld = MqttPeer::connect_device(
        lan.addr,
        &edge.handheld,
        &["store/p1/device/handheld-1/reply".to_owned()],
    )
    .await;
    handheld
        .publish(
            "store/p1/device/handheld-1/scan",
            serde_json::to_vec(&json!({"code": AS_SCAN})).unwrap(),
        )
        .await;
    let (_, reply) = handheld
        .next(Duration::from_secs(10))
        .await
        .expect("the scan is answered");
    assert_eq!(serde_json::from_slice::<Value>(&reply).unwrap()["ok"], false);
    handheld
        .publish(
            "store/p1/task/update",
            serde_json::to_vec(&json!({
                "task_id": "t-1", "status": "done", "device": "handheld-1", "lines": [],
                "note": format!("paid with {AT_TASK}"),
            }))
            .unwrap(),
        )
        .await;

    // Everything synced: the outbox is empty (the scan is in it too).
    wait_until(
        "the store's outbox drained",
        Duration::from_secs(30),
        || async move {
            crate::chain::status(http_addr)
                .await
                .is_some_and(|s| s["outbox_depth"] == 0 && s["acked_up_to"].as_u64() >= Some(3))
        },
    )
    .await;
    drop(handheld);
    drop(lane);
    edge.terminate().await;
    hub.terminate().await;

    // The search.
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for f in files_under(hub_dir.path())
        .into_iter()
        .chain(files_under(dir.path()))
    {
        kept.push((f.display().to_string(), std::fs::read(&f).unwrap_or_default()));
    }
    for f in [&hub_log, &edge_log] {
        let log = std::fs::read(f).unwrap();
        assert!(log.len() > 1000, "{} has what the process logged", f.display());
        kept.push((f.display().to_string(), log));
    }
    assert!(
        wan.up.lock().unwrap().len() > 1000,
        "the store synced through the tap"
    );
    kept.push(("the WAN, edge to hub".into(), wan.up.lock().unwrap().clone()));
    kept.push(("the WAN, hub to edge".into(), wan.down.lock().unwrap().clone()));
    kept.push((
        "the LAN, edge to devices".into(),
        lan.down.lock().unwrap().clone(),
    ));
    if backend == Backend::Postgres {
        let dump = tokio::process::Command::new("pg_dump")
            .arg(&url)
            .output()
            .await
            .expect("pg_dump runs (postgresql-client)");
        assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
        assert!(dump.stdout.len() > 10_000, "a dump of a database in use");
        kept.push(("the PostgreSQL dump".into(), dump.stdout));
        drop_pg_database(&url).await;
    }
    assert!(
        kept.iter()
            .any(|(name, bytes)| name.ends_with("journal.db") && bytes.len() > 4096),
        "the store's journal is among the files searched"
    );
    let leaks: Vec<String> = kept
        .iter()
        .filter_map(|(name, bytes)| {
            let found = found_in(bytes);
            (!found.is_empty()).then(|| format!("{name}: {found:?}"))
        })
        .collect();
    assert!(leaks.is_empty(), "card numbers kept: {leaks:#?}");

    // The control: what the devices sent holds the numbers the lane and
    // the handheld offered, and the search finds them there.
    let sent = found_in(&lan.up.lock().unwrap());
    for offered in [AT_LANE, AS_TOKEN, AS_SCAN, AT_TASK] {
        assert!(
            sent.contains(&digits_of(offered)),
            "the search finds {offered:?} where it was sent: {sent:?}"
        );
    }
}
