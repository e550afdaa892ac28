//! Trust on the WAN, tried the way an outsider would: strangers, another
//! CA, a revoked store and another store's valid certificate against the
//! embedded broker's TLS gate and against a real Mosquitto started with the
//! shipped config; forged and replayed messages on a broker left open; an
//! idle socket on the TLS listener; a store revoked while connected. In
//! every case the honest store's sync goes on and nothing is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use storegate_e2e::probe::{Outcome, Probe};
use storegate_e2e::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Backend, EdgeProcess, Mosquitto, MqttPeer, Rest, StorePeer, TestHub, http,
    service_or_skip, spawn_hub_with, wait_until,
};
use storegate_edge::Edge;
use storegate_edge::trust::EdgeTrust;
use storegate_hub::pki;
use storegate_protocol::downlink::{DownBody, DownItem, Price};
use storegate_protocol::envelope::{self, AppAck, DownAck, DownBatch, Message, ResendRequest, UpBatch};
use storegate_protocol::rpc::{RpcResponse, RpcResult};
use storegate_protocol::seal::SigningKey;
use storegate_protocol::topic::{RpcLeg, RpcSide, WanTopic};
use storegate_protocol::{Currency, EventId, Money, Seq, Sku, StoreId};
use storegate_sim::chain::{Api, TillHistory, check, till};
use tokio_util::sync::CancellationToken;

use crate::chain::{RECEIVED, SOLD, edge_level, hub_level, seed, status};
use crate::edge_sync::fresh_sale;
use crate::hub_ingest::counter;

fn store(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

/// A hub whose embedded broker also listens for stores over TLS; store
/// credentials are re-read every second.
async fn tls_hub(handshake_timeout_secs: u64) -> TestHub {
    spawn_hub_with(Backend::Sqlite, |s| {
        s.broker.tls_listen = Some("127.0.0.1:0".into());
        s.wan.refresh_secs = 1;
        s.wan.handshake_timeout_secs = handshake_timeout_secs;
    })
    .await
    .expect("SQLite is always there")
}

/// An edge agent in this process for `id`, provisioned at `hub`, over TLS
/// to `broker` (`mqtts://...`).
async fn tls_edge(hub: &TestHub, id: &str, broker: &str, dir: &std::path::Path) -> Edge {
    let bundle = storegate_sim::trust::bundle_at_hub(&hub.hub, &store(id), broker, dir)
        .await
        .unwrap();
    edge_with(bundle, dir).await
}

async fn edge_with(bundle: std::path::PathBuf, dir: &std::path::Path) -> Edge {
    let mut s = storegate_edge::Settings {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    s.upstream.bundle = Some(bundle);
    s.http.listen = "127.0.0.1:0".into();
    s.lan.enabled = false;
    s.sync.backoff_initial_ms = 20;
    s.sync.backoff_max_ms = 200;
    // Nothing here may rely on the ack timeout: a batch that vanished
    // would show as a sync that never completes.
    s.sync.ack_timeout_ms = 600_000;
    storegate_edge::start(s, CancellationToken::new())
        .await
        .expect("edge starts")
}

async fn record(edge: &Edge, from: u128, n: u128) {
    for i in from..from + n {
        edge.journal.record(fresh_sale(i), None).await.unwrap();
    }
}

/// Waits until the hub has committed `store` up to `hwm`.
async fn synced(hub: &TestHub, id: &str, hwm: i64) {
    let rest = Rest::new(&hub.api, &hub.admin_token);
    wait_until(
        &format!("{id} synced up to {hwm}"),
        Duration::from_secs(30),
        || {
            let rest = rest.clone();
            async move {
                let a = rest
                    .call(reqwest::Method::GET, &format!("/api/v1/stores/{id}"), None, &[])
                    .await;
                a.status == 200 && a.body["hwm"].as_i64() == Some(hwm)
            }
        },
    )
    .await;
}

/// A TLS client configuration trusting `ca_pem` and presenting no
/// certificate.
fn no_certificate(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in storegate_broker::tls::certs(ca_pem, "CA").unwrap() {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(storegate_broker::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A certificate for `id` from another chain's CA, trusting ours for the
/// broker.
fn other_ca(ca_pem: &str, id: &str) -> Arc<rustls::ClientConfig> {
    let other = storegate_sim::trust::TestChain::new().unwrap();
    let bundle = other.issue(&store(id), "mqtts://127.0.0.1:1").unwrap();
    storegate_broker::tls::client_config(ca_pem, &bundle.cert_pem, &bundle.key_pem).unwrap()
}

/// Every topic of store `id` but its status, in both directions.
fn topics_of(id: &str) -> Vec<String> {
    WanTopic::all_of(&store(id))
        .iter()
        .filter(|t| !matches!(t, WanTopic::Status(_)))
        .map(ToString::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_other_cas_revoked_and_other_stores_are_refused_by_the_embedded_broker() {
    let hub = tls_hub(10).await;
    let tls = hub.hub.tls_addr.expect("TLS listener");
    let broker = format!("mqtts://{tls}");
    let ca_pem = std::fs::read_to_string(hub.hub.pki_dir.join("ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = tls_edge(&hub, "store-a", &broker, dir.path()).await;
    record(&a, 0, 20).await;
    synced(&hub, "store-a", 20).await;
    let connects = a.sync.status.connects.load(Ordering::Relaxed);

    let b = hub.credential("store-b").await;
    let r = hub.credential("store-r").await;
    let revoked = storegate_hub::credentials::revoke(&hub.hub.db, &store("store-r"), None, "test")
        .await
        .unwrap();
    assert_eq!(revoked, 1);
    hub.hub.trust.registry().refresh().await.unwrap();
    let b_tls = b.tls.clone();

    let connect = |cfg: Option<Arc<rustls::ClientConfig>>, id: &'static str| Probe::connect(tls, cfg, id);
    assert_eq!(
        connect(None, "edge-store-a").await.err(),
        Some(Outcome::Closed),
        "plain MQTT on the TLS listener"
    );
    assert_eq!(
        connect(Some(no_certificate(&ca_pem)), "edge-store-a").await.err(),
        Some(Outcome::TlsRefused),
        "no certificate"
    );
    assert_eq!(
        connect(Some(other_ca(&ca_pem, "store-a")), "edge-store-a")
            .await
            .err(),
        Some(Outcome::TlsRefused),
        "a certificate from another CA, even one naming store-a"
    );
    assert_eq!(
        connect(r.tls.clone(), "edge-store-r").await.err(),
        Some(Outcome::ConnectRefused(5)),
        "a revoked store"
    );
    assert_eq!(
        connect(b_tls.clone(), "edge-store-a").await.err(),
        Some(Outcome::ConnectRefused(2)),
        "store B with store A's client id"
    );
    for topic in topics_of("store-a") {
        let probe = connect(b_tls.clone(), "edge-store-b")
            .await
            .expect("B connects as itself");
        let (outcome, _) = probe.publish(&topic, b"forged").await;
        assert_eq!(outcome, Outcome::Closed, "B publishing on {topic}");
    }
    for filter in [
        "sg/v1/#",
        "sg/v1/store/+/up",
        "sg/v1/store/store-a/ack",
        "$share/hub/sg/v1/store/+/up",
    ] {
        let probe = connect(b_tls.clone(), "edge-store-b")
            .await
            .expect("B connects as itself");
        assert_eq!(
            probe.subscribe(filter, Duration::from_millis(300)).await,
            Outcome::Closed,
            "B subscribing to {filter}"
        );
    }
    // The probe itself works: B may publish its own uplink (the hub drops
    // the unsigned bytes, counted).
    let probe = connect(b_tls.clone(), "edge-store-b").await.expect("B connects");
    assert_eq!(
        probe.publish("sg/v1/store/store-b/up", b"not signed").await.0,
        Outcome::Accepted
    );

    // Store A never noticed.
    record(&a, 100, 20).await;
    synced(&hub, "store-a", 40).await;
    assert_eq!(
        a.sync.status.connects.load(Ordering::Relaxed),
        connects,
        "A was never disconnected"
    );
    assert_eq!(a.sync.status.rejected.load(Ordering::Relaxed), 0);
    let gate = hub.hub.gate.clone().expect("the gate's counters");
    // A loaded machine can add one: A's own first handshake, abandoned by
    // its client's connect timeout and retried.
    assert!(gate.refused("tls_handshake") >= 3, "{:?}", gate.refusals());
    for (reason, n) in [
        ("unknown_or_revoked_certificate", 1),
        ("bad_client_id", 1),
        ("publish_not_allowed", 7),
        ("subscribe_not_allowed", 4),
    ] {
        assert_eq!(gate.refused(reason), n, "{reason}: {:?}", gate.refusals());
    }
    assert_eq!(hub.hub.trust.refused("malformed"), 1, "B's unsigned uplink");
    a.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_other_cas_revoked_and_other_stores_are_refused_by_mosquitto_with_the_shipped_config() {
    if !service_or_skip("mosquitto binary", Mosquitto::binary().is_some()) {
        return;
    }
    // The chain's PKI, the broker's files from it (as broker-config's
    // mosquitto.conf describes), then Mosquitto, then the hub on it.
    let base = tempfile::tempdir().unwrap();
    let pki_dir = pki::PkiDir(base.path().join("pki"));
    pki::init(&pki_dir, "wan test chain", &[], "hub-1").unwrap();
    let ca = pki::Ca::load(&pki_dir).unwrap();
    let etc = base.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let server = ca
        .issue("mqtt.test", &["127.0.0.1".into()], pki::Usage::Server, 30)
        .unwrap();
    std::fs::write(etc.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(etc.join("broker.pem"), &server.cert_pem).unwrap();
    std::fs::write(etc.join("broker.key"), &server.key_pem).unwrap();
    std::fs::write(etc.join("crl.pem"), ca.crl(&[], 1, 30).unwrap()).unwrap();
    std::fs::write(etc.join("acl"), storegate_broker::MOSQUITTO_ACL).unwrap();
    let mosquitto = Mosquitto::start_shipped(&etc)
        .await
        .expect("mosquitto starts with the shipped config");
    let mq = mosquitto.addr;
    let pki_path = pki_dir.0.clone();
    let Some(hub) = spawn_hub_with(Backend::Sqlite, |s| {
        s.broker.url = format!("mqtts://{mq}");
        s.broker.client_id = "hub-1".into();
        s.wan.pki_dir = Some(pki_path);
    })
    .await
    else {
        return;
    };
    let broker = format!("mqtts://{mq}");
    let dir = tempfile::tempdir().unwrap();
    let a = tls_edge(&hub, "store-a", &broker, dir.path()).await;
    record(&a, 0, 20).await;
    synced(&hub, "store-a", 20).await;
    let connects = a.sync.status.connects.load(Ordering::Relaxed);

    // Store R is revoked: `hub ca crl`, then Mosquitto reloads.
    let b = hub.credential("store-b").await;
    let r = hub.credential("store-r").await;
    storegate_hub::credentials::revoke(&hub.hub.db, &store("store-r"), None, "test")
        .await
        .unwrap();
    let revoked: Vec<(String, i64)> = storegate_hub::credentials::list(&hub.hub.db, None)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.revoked_ms.map(|at| (c.cert_serial, at)))
        .collect();
    std::fs::write(etc.join("crl.pem"), ca.crl(&revoked, 2, 30).unwrap()).unwrap();
    mosquitto.reload().unwrap();
    let ca_pem = ca.cert_pem.clone();
    let connect = |cfg: Option<Arc<rustls::ClientConfig>>, id: &'static str| Probe::connect(mq, cfg, id);
    let revoked_refused = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connect(r.tls.clone(), "edge-store-r").await {
                Err(o) => break o,
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(_) => panic!("the revoked store still connects after the CRL reload"),
            }
        }
    };
    assert_eq!(revoked_refused, Outcome::TlsRefused, "a revoked store");
    assert_eq!(
        connect(None, "edge-store-a").await.err(),
        Some(Outcome::Closed),
        "plain MQTT"
    );
    assert_eq!(
        connect(Some(no_certificate(&ca_pem)), "edge-store-a").await.err(),
        Some(Outcome::TlsRefused),
        "no certificate"
    );
    assert_eq!(
        connect(Some(other_ca(&ca_pem, "store-a")), "edge-store-a")
            .await
            .err(),
        Some(Outcome::TlsRefused),
        "another CA"
    );
    // Store B: Mosquitto takes the certificate's name as the client id, so
    // "edge-store-a" gets B's own session and A's is not taken over; B's
    // publishes on A's topics are acked and dropped (MQTT 3.1.1 has no
    // negative PUBACK); B's subscriptions deliver nothing of A's.
    let as_a = connect(b.tls.clone(), "edge-store-a")
        .await
        .expect("B connects, as itself");
    for topic in topics_of("store-a") {
        let probe = connect(b.tls.clone(), "edge-store-b-pub")
            .await
            .expect("B connects");
        // Acked (or the connection closed); either way dropped: see below.
        let _ = probe.publish(&topic, b"forged").await;
    }
    let mut subscribed = Vec::new();
    let mut listen = |filter: String| {
        let cfg = b.tls.clone();
        let (ready, is_ready) = tokio::sync::oneshot::channel::<()>();
        subscribed.push(is_ready);
        tokio::spawn(async move {
            // (Each probe gets B's one session; a later one takes it over,
            // which is as good for B as staying subscribed.)
            let probe = Probe::connect(mq, cfg, "edge-store-b-sub")
                .await
                .expect("B connects");
            match probe.subscribe_only(&filter).await {
                Ok((probe, codes)) => {
                    let _ = ready.send(());
                    probe.listen(codes, Duration::from_secs(3)).await
                }
                Err(o) => o,
            }
        })
    };
    let everything = listen("sg/v1/#".into());
    let a_acks = listen("sg/v1/store/store-a/ack".into());
    // Mosquitto's ACL file does not check subscriptions: B may join shared
    // groups, but not the hubs' (its name is a secret of theirs), so it
    // takes no share of anyone's uplink or card requests.
    let mut hijacks = Vec::new();
    for group in ["hub", "storegate", "hub-1"] {
        for kind in ["up", "rpc/edge/req"] {
            let filter = format!("$share/{group}/sg/v1/store/+/{kind}");
            hijacks.push((filter.clone(), listen(filter)));
        }
    }
    // (A subscription the broker closed on counts as ready: nothing to wait for.)
    for r in subscribed {
        let _ = r.await;
    }
    record(&a, 100, 20).await; // traffic B must not see
    synced(&hub, "store-a", 40).await;
    let mut outcomes = vec![
        ("sg/v1/#".to_owned(), everything.await.unwrap()),
        ("A's acks".to_owned(), a_acks.await.unwrap()),
    ];
    for (filter, h) in hijacks {
        outcomes.push((filter, h.await.unwrap()));
    }
    for (what, outcome) in outcomes {
        match outcome {
            Outcome::Subscribed { delivered, .. } => {
                assert!(
                    delivered
                        .iter()
                        .all(|(t, _)| t.starts_with("sg/v1/store/store-b/")),
                    "B saw A's traffic through {what}: {delivered:?}"
                );
            }
            Outcome::Closed => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    drop(as_a);
    assert_eq!(
        a.sync.status.connects.load(Ordering::Relaxed),
        connects,
        "A's session was never taken over"
    );
    assert_eq!(
        a.sync.status.rejected.load(Ordering::Relaxed),
        0,
        "nothing of B's reached A"
    );
    assert_eq!(
        hub.hub.trust.refused_total(),
        0,
        "nothing of B's on A's topics reached the hub either"
    );
    a.stop().await;
    hub.stop().await;
}

/// What an eavesdropper on an open broker captured of store B's genuine
/// traffic.
#[derive(Debug, Default)]
struct Captured {
    up_batch: Option<Vec<u8>>,
    down_ack: Option<Vec<u8>>,
    ack: Option<Vec<u8>>,
    down: Option<Vec<u8>>,
}

fn unsigned(m: &Message) -> Vec<u8> {
    envelope::encode_unsigned(m)
}

fn kind_of(payload: &[u8]) -> Option<&'static str> {
    let body = storegate_protocol::seal::frame(payload).ok()?.body();
    Some(envelope::decode_body(body).ok()?.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_messages_on_an_open_broker_have_no_effect_and_the_chain_checks_out() {
    // The hub's plain listener on loopback: no TLS, no ACL, anyone may
    // publish and subscribe to anything. Only the signatures stand.
    let Some(hub) = spawn_hub_with(Backend::Sqlite, |s| s.commerce.stock_push_interval_ms = 200).await else {
        return;
    };
    let admin_rest = Rest::new(&hub.api, &hub.admin_token);
    let names = ["store-a", "store-b"];
    seed(&admin_rest, &names).await;
    let dirs: Vec<_> = names.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut edges = Vec::new();
    for (name, dir) in names.iter().zip(&dirs) {
        let bundle = hub.bundle(&store(name), dir.path()).await;
        edges.push(EdgeProcess::spawn(&bundle, dir.path(), hub.broker, &[]).await);
    }

    // The eavesdropper records B's genuine messages.
    let mut spy = MqttPeer::connect(hub.broker, "spy", &["sg/v1/store/store-b/#".to_owned()]).await;
    let captured = Arc::new(Mutex::new(Captured::default()));
    let cap = captured.clone();
    let spy_task = tokio::spawn(async move {
        while let Some((topic, payload)) = spy.next(Duration::from_secs(120)).await {
            let mut c = cap.lock().unwrap();
            match (topic.rsplit('/').next(), kind_of(&payload)) {
                (Some("up"), Some("up_batch")) => c.up_batch.get_or_insert(payload),
                (Some("up"), Some("down_ack")) => c.down_ack.get_or_insert(payload),
                (Some("ack"), Some("app_ack")) => c.ack.get_or_insert(payload),
                (Some("down"), Some("down_batch")) => c.down.get_or_insert(payload),
                _ => continue,
            };
        }
    });

    // Tills sell on both stores throughout.
    let history: Arc<Mutex<TillHistory>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tills = Vec::new();
    for (i, (name, edge)) in names.iter().zip(&edges).enumerate() {
        let url = Arc::new(Mutex::new(format!("http://{}", edge.http)));
        tills.push(tokio::spawn(till(
            (*name).to_owned(),
            (i as u128 + 1) * 1_000_000_000,
            url,
            history.clone(),
            stop.clone(),
            Duration::from_secs(60),
        )));
    }
    wait_until(
        "B's genuine traffic captured",
        Duration::from_secs(30),
        || async {
            let c = captured.lock().unwrap();
            c.up_batch.is_some() && c.down_ack.is_some() && c.ack.is_some() && c.down.is_some()
        },
    )
    .await;
    let c = std::mem::take(&mut *captured.lock().unwrap());
    spy_task.abort();

    let edge_a = edges[0].http;
    let edge_before = edge_metrics(edge_a).await;
    assert_eq!(
        hub.hub.trust.refused_total(),
        0,
        "nothing refused before the attack"
    );
    let a = store("store-a");
    let attacker = MqttPeer::connect(hub.broker, "attacker", &[]).await;
    let send = |topic: WanTopic, payload: Vec<u8>| {
        let topic = topic.to_string();
        let attacker = &attacker;
        async move { attacker.publish(topic, payload).await }
    };
    let stranger = SigningKey::from_seed_for_tests(&[42; 32]);
    let forged_ack = Message::AppAck(AppAck {
        committed_up_to: Seq(1_000_000),
    });
    // To the edge: acks that would delete its outbox, a resend, a price,
    // a card approval.
    send(WanTopic::Ack(a.clone()), unsigned(&forged_ack)).await;
    send(
        WanTopic::Ack(a.clone()),
        storegate_protocol::seal::seal(
            &stranger,
            &WanTopic::Ack(a.clone()).to_string(),
            &envelope::encode_body(&forged_ack),
        ),
    )
    .await;
    send(
        WanTopic::Ack(a.clone()),
        unsigned(&Message::ResendRequest(ResendRequest { from: Seq(1_000_001) })),
    )
    .await;
    send(
        WanTopic::Down(a.clone()),
        unsigned(&Message::DownBatch(DownBatch {
            store: a.clone(),
            items: vec![DownItem {
                seq: Seq(1),
                body: DownBody::PriceSet(Price {
                    sku: Sku::parse("SKU-00000").unwrap(),
                    price: Money::new(1, Currency::EUR),
                    effective_from_ms: 0,
                    effective_to_ms: None,
                }),
            }],
        })),
    )
    .await;
    send(
        WanTopic::Rpc(a.clone(), RpcSide::Edge, RpcLeg::Res),
        unsigned(&Message::RpcResponse(RpcResponse {
            correlation_id: EventId::from_u128(1),
            result: RpcResult::CardAuthorized {
                authorization_id: "forged".into(),
                auth_code: "000000".into(),
            },
        })),
    )
    .await;
    // B's genuine hub messages, moved onto A's topics.
    send(WanTopic::Ack(a.clone()), c.ack.clone().unwrap()).await;
    send(WanTopic::Down(a.clone()), c.down.clone().unwrap()).await;
    // To the hub: a batch and a downlink ack as A, and B's genuine ones
    // moved onto A's uplink.
    send(
        WanTopic::Up(a.clone()),
        unsigned(&Message::UpBatch(UpBatch {
            store: a.clone(),
            first: Seq(1),
            last: Seq(1),
            events: vec![storegate_protocol::event::Event {
                id: EventId::from_u128(7),
                seq: Seq(1),
                recorded_at_ms: 0,
                body: fresh_sale(999_999_999),
            }],
            backlog: 0,
            dropped_telemetry: 0,
        })),
    )
    .await;
    send(
        WanTopic::Up(a.clone()),
        unsigned(&Message::DownAck(DownAck {
            applied_up_to: Seq(i64::MAX as u64),
        })),
    )
    .await;
    send(WanTopic::Up(a.clone()), c.up_batch.clone().unwrap()).await;
    send(WanTopic::Up(a.clone()), c.down_ack.clone().unwrap()).await;

    // Each is refused and counted where it landed.
    let expect_edge = [("unsigned", 4), ("unknown_key", 1), ("bad_signature", 2)];
    let expect_hub = [("unsigned", 2), ("wrong_party", 2)];
    wait_until("every forgery counted", Duration::from_secs(15), || async {
        let e = edge_metrics(edge_a).await;
        expect_edge.iter().all(|(r, n)| {
            counter(&e, "edge_downlink_rejected_total", &format!("reason=\"{r}\""))
                - counter(
                    &edge_before,
                    "edge_downlink_rejected_total",
                    &format!("reason=\"{r}\""),
                )
                == *n
        }) && expect_hub.iter().all(|(r, n)| hub.hub.trust.refused(r) == *n)
    })
    .await;
    assert_eq!(hub.hub.trust.refused_total(), 4, "and nothing else");

    // Sell on a little longer, then stop and let both drain.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Release);
    for t in tills {
        t.await.unwrap().expect("till ran to the end");
    }
    for (name, edge) in names.iter().zip(&edges) {
        let (id, http) = ((*name).to_owned(), edge.http);
        let admin_rest = admin_rest.clone();
        wait_until(&format!("{id} drained"), Duration::from_secs(60), || {
            let (id, admin_rest) = (id.clone(), admin_rest.clone());
            async move {
                let Some(st) = status(http).await else {
                    return false;
                };
                let next = st["next_seq"].as_i64().unwrap_or(0);
                let hub = admin_rest.get(&format!("/api/v1/stores/{id}")).await;
                st["outbox_depth"] == 0 && hub["hwm"].as_i64() == Some(next - 1)
            }
        })
        .await;
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let api = Api::login(&hub.api, ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let names_owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let v = check(&api, &names_owned, &history).await.unwrap();
    eprintln!("open broker run: {v:?}");
    assert!(v.acknowledged > 20, "the run sold something");
    assert_eq!(v.at_hub, v.acknowledged);
    assert_eq!(
        (v.lost, v.unexpected, v.duplicated, v.misplaced),
        (0, 0, 0, 0),
        "lost, unexpected, duplicated, misplaced"
    );
    assert!(v.gapped_stores.is_empty());
    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    for s in history.attempted.values() {
        *sold.entry(s.as_str()).or_default() += 1;
    }
    for (name, edge) in names.iter().zip(&edges) {
        for (sku, per_sale) in SOLD {
            let n = sold.get(name).copied().unwrap_or(0);
            let expect = RECEIVED - n * per_sale;
            assert_eq!(
                hub_level(&admin_rest, name, sku).await,
                expect,
                "hub {sku} at {name}"
            );
            let http = edge.http;
            wait_until(
                &format!("{name}'s {sku} converges"),
                Duration::from_secs(30),
                || async move { edge_level(http, sku).await == Some(expect) },
            )
            .await;
        }
    }
    assert_eq!(admin_rest.get("/api/v1/stock/verify").await, json!([]));
    for e in edges {
        e.terminate().await;
    }
    hub.stop().await;
}

async fn edge_metrics(edge: SocketAddr) -> String {
    http()
        .get(format!("http://{edge}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_on_the_tls_listener_holds_up_nobody() {
    // Long enough that the server keeps the idle sockets for the whole run.
    let hub = tls_hub(120).await;
    let tls = hub.hub.tls_addr.expect("TLS listener");
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(tls).await.unwrap());
    }
    // 20 stores connect over TLS and sync while those sockets sit there.
    let stats = Arc::new(storegate_sim::vstore::VStats::default());
    let stop = CancellationToken::new();
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let id = store(&format!("idle-{i:02}"));
        let trust = hub.credential(id.as_str()).await;
        let cfg = storegate_sim::vstore::VStoreConfig {
            store: id,
            broker: tls,
            tls: true,
            trust,
            rate: 5.0,
            lines: (1, 3),
            window: 4,
            measure_from: start,
            sell_until: start + Duration::from_secs(2),
        };
        tasks.push(tokio::spawn(storegate_sim::vstore::run(
            cfg,
            i,
            stats.clone(),
            stop.clone(),
        )));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("every store synced everything within 30 s");
    let sent = stats.sent.load(Ordering::Relaxed);
    assert!(sent > 20, "the stores sold ({sent})");
    assert_eq!(
        stats.acked.load(Ordering::Relaxed),
        sent,
        "everything sold was acked"
    );
    // The idle sockets were there all along: the server has not closed them.
    for s in &idle {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), s.peek(&mut b)).await {
            Err(_) => {}
            Ok(r) => panic!("an idle socket was closed early: {r:?}"),
        }
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_cannot_lock_stores_out() {
    // Few pending slots and a long deadline: the flood fills them all.
    let hub = spawn_hub_with(Backend::Sqlite, |s| {
        s.broker.tls_listen = Some("127.0.0.1:0".into());
        s.wan.handshake_timeout_secs = 120;
        s.wan.max_pending_handshakes = 8;
    })
    .await
    .unwrap();
    let tls = hub.hub.tls_addr.unwrap();
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(tokio::net::TcpStream::connect(tls).await.unwrap());
    }
    let trust = hub.credential("store-f").await;
    let mut peer = StorePeer::connect(tls, "edge-store-f", trust, true).await;
    peer.send_up(&crate::hub_ingest::sales("store-f", 1, 3)).await;
    assert_eq!(
        peer.next_message().await,
        Message::AppAck(AppAck {
            committed_up_to: Seq(3)
        })
    );
    let gate = hub.hub.gate.clone().unwrap();
    assert!(gate.refused("evicted_pending") >= 32, "{:?}", gate.refusals());
    drop(flood);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_finishes_its_handshake_is_closed_at_the_deadline() {
    let hub = tls_hub(1).await;
    let tls = hub.hub.tls_addr.expect("TLS listener");
    let mut silent = tokio::net::TcpStream::connect(tls).await.unwrap();
    let mut b = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut silent, &mut b),
    )
    .await
    .expect("closed within the handshake deadline");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(hub.hub.gate.clone().unwrap().refused("handshake_timeout"), 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_revoked_while_connected_is_cut_off_and_the_others_sync_on() {
    let hub = tls_hub(10).await;
    let tls = hub.hub.tls_addr.expect("TLS listener");
    let broker = format!("mqtts://{tls}");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = tls_edge(&hub, "store-a", &broker, dir_a.path()).await;
    let b = tls_edge(&hub, "store-b", &broker, dir_b.path()).await;
    record(&a, 0, 10).await;
    record(&b, 0, 10).await;
    synced(&hub, "store-a", 10).await;
    synced(&hub, "store-b", 10).await;

    // The operator's command, against the running hub's database.
    let data_dir = hub.hub.pki_dir.parent().unwrap().to_path_buf();
    let revoked_at = Instant::now();
    storegate_e2e::hub_cli(&data_dir, &hub.database_url, &["store", "revoke", "store-a"]).await;
    wait_until("store A cut off", Duration::from_secs(10), || async {
        !a.sync.status.connected.load(Ordering::Acquire)
    })
    .await;
    let cut_after = revoked_at.elapsed();
    eprintln!("store A cut off {cut_after:?} after its revocation (wan.refresh_secs = 1)");
    assert!(
        cut_after < Duration::from_secs(3),
        "within the refresh interval and a margin: {cut_after:?}"
    );

    // A keeps selling into its outbox; nothing of it gets in. B syncs on.
    record(&a, 100, 5).await;
    record(&b, 100, 10).await;
    synced(&hub, "store-b", 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.sync.status.connected.load(Ordering::Acquire), "A stays out");
    assert_eq!(a.journal.stats().outbox_depth, 5, "A keeps what it sold");
    synced(&hub, "store-a", 10).await;

    // Re-provisioned (a new credential), A's edge drains what it kept.
    a.stop().await;
    let fresh = storegate_e2e::provision_with_cli(
        &data_dir,
        &hub.database_url,
        &store("store-a"),
        &broker,
        dir_a.path(),
    )
    .await;
    let a = edge_with(fresh, dir_a.path()).await;
    synced(&hub, "store-a", 15).await;
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

/// A store's own key may sign only what the store may say: whatever it
/// signs, an ack of downlink above what the hub ever assigned it deletes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downlink_ack_above_anything_sent_is_ignored_even_when_signed() {
    let Some(hub) = spawn_hub_with(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let mut peer: StorePeer = hub.store_peer("s-bound").await;
    let level = |n| {
        DownBody::StockLevel(storegate_protocol::downlink::StockLevel {
            sku: Sku::parse("SKU-1").unwrap(),
            on_hand: n,
            reserved: 0,
            as_of_edge_seq: Seq(0),
        })
    };
    let mut tx = hub.hub.db.begin().await.unwrap();
    storegate_hub::downlink::enqueue(&mut tx, &hub.hub.db, "s-bound", &[level(1), level(2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    hub.hub.link.send_downlink(&store("s-bound"));
    assert!(matches!(peer.next_message().await, Message::DownBatch(_)));
    peer.send_up(&Message::DownAck(DownAck {
        applied_up_to: Seq(i64::MAX as u64),
    }))
    .await;
    peer.send_up(&Message::DownAck(DownAck {
        applied_up_to: Seq(u64::MAX),
    }))
    .await;
    wait_until("both counted", Duration::from_secs(10), || async {
        hub.hub.trust.refused("down_ack_beyond") == 2
    })
    .await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM downlink WHERE store_id = 's-bound'")
        .fetch_one(&hub.hub.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 2, "nothing was deleted");
    hub.stop().await;
}

/// A rotated credential: the old one keeps working until it is revoked,
/// the new one works at once, and both show in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_store_works_with_either_credential_until_the_old_one_is_revoked() {
    let hub = tls_hub(10).await;
    let old: Arc<EdgeTrust> = hub.credential("store-rot").await;
    let new: Arc<EdgeTrust> = hub.credential("store-rot").await;
    let tls = hub.hub.tls_addr.unwrap();
    for (which, trust) in [("old", &old), ("new", &new)] {
        let mut peer = StorePeer::connect(tls, "edge-store-rot", trust.clone(), true).await;
        let n = if which == "old" { 1 } else { 2 };
        peer.send_up(&crate::hub_ingest::sales("store-rot", n, n)).await;
        assert_eq!(
            peer.next_message().await,
            Message::AppAck(AppAck {
                committed_up_to: Seq(n)
            }),
            "{which} credential"
        );
    }
    let kid = old.credential.unwrap();
    storegate_hub::credentials::revoke(&hub.hub.db, &store("store-rot"), Some(kid), "rotated")
        .await
        .unwrap();
    hub.hub.trust.registry().refresh().await.unwrap();
    assert_eq!(
        Probe::connect(tls, old.tls.clone(), "edge-store-rot").await.err(),
        Some(Outcome::ConnectRefused(5)),
        "the old certificate"
    );
    let mut peer = StorePeer::connect(tls, "edge-store-rot", new.clone(), true).await;
    peer.send_up(&crate::hub_ingest::sales("store-rot", 3, 3)).await;
    assert_eq!(
        peer.next_message().await,
        Message::AppAck(AppAck {
            committed_up_to: Seq(3)
        })
    );
    let list = storegate_hub::credentials::list(&hub.hub.db, Some(&store("store-rot")))
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|c| c.revoked_ms.is_some()).count(), 1);
    hub.stop().await;
}
