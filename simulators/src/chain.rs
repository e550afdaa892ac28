//! Pieces of a whole chain that talk to a running hub: seeding it through
//! its REST API (locations, the demo catalog, stock, shipping), online
//! shoppers placing orders, store handhelds that pick click-and-collect
//! orders from the tasks their edge publishes on the device bus, tills that
//! record sales on an edge's local API with idempotency keys, and the
//! checker that compares what the tills did with what the hub holds.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};
use storegate_protocol::downlink::Task;
use storegate_protocol::event::{EventBody, TaskLineResult, TaskStatus, TaskUpdate};
use storegate_protocol::topic::LanTopic;
use storegate_protocol::{DeviceId, EventId, StoreId, samples};
use tokio_util::sync::CancellationToken;

use crate::catalog;

/// A REST client for one principal of a hub.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Logs in with the password grant.
    pub async fn login(base: &str, email: &str, password: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let resp = http
            .post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", email),
                ("password", password),
            ])
            .send()
            .await
            .with_context(|| format!("POST {base}/oauth/token"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let token = body["access_token"]
            .as_str()
            .with_context(|| format!("login as {email}: {status} {body}"))?
            .to_owned();
        Ok(Api {
            base: base.to_owned(),
            token,
            http,
        })
    }

    /// Any call; returns the status and the JSON body (`Null` if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method.clone(), path, Some(&body), &[]).await?;
        anyhow::ensure!((200..300).contains(&status), "{method} {path}: {status} {answer}");
        Ok(answer)
    }

    /// GET that must succeed.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, answer) = self.call(reqwest::Method::GET, path, None, &[]).await?;
        anyhow::ensure!((200..300).contains(&status), "GET {path}: {status} {answer}");
        Ok(answer)
    }
}

/// A location of the simulated chain.
#[derive(Debug, Clone)]
pub struct Location {
    /// Id (the store id of its edge).
    pub id: String,
    /// `store` or `warehouse`.
    pub kind: &'static str,
    /// Region.
    pub region: &'static str,
}

/// Units of each product received at each location (grams for weighed goods).
pub const OPENING_STOCK: i64 = 2_000;

/// Loads a chain into the hub: locations, carriers and rates, the demo
/// catalog with prices, opening stock everywhere, and a client account for
/// online shoppers.
pub async fn seed(admin: &Api, locations: &[Location], client: (&str, &str)) -> anyhow::Result<()> {
    use reqwest::Method;
    for l in locations {
        admin
            .ok(
                Method::PUT,
                &format!("/api/v1/stores/{}", l.id),
                json!({"name": l.id, "kind": l.kind, "region": l.region}),
            )
            .await?;
    }
    admin
        .ok(Method::PUT, "/api/v1/carriers/post", json!({"name": "Post"}))
        .await?;
    let mut regions: Vec<&str> = locations.iter().map(|l| l.region).collect();
    regions.sort_unstable();
    regions.dedup();
    for r in &regions {
        admin
            .ok(
                Method::PUT,
                &format!("/api/v1/shipping/zones/{r}"),
                json!({"zone": "domestic"}),
            )
            .await?;
    }
    admin
        .ok(
            Method::PUT,
            "/api/v1/shipping/rates",
            json!({"carrier": "post", "zone": "domestic", "max_grams": 30_000, "price_minor": 499, "currency": "EUR"}),
        )
        .await?;
    for p in catalog::products() {
        let barcodes: Vec<String> = catalog::gtin_of(&p).map(|g| g.to_string()).into_iter().collect();
        admin
            .ok(
                Method::PUT,
                &format!("/api/v1/products/{}", p.sku),
                json!({
                    "name": p.name,
                    "measure": if p.weighed { "grams" } else { "each" },
                    "tax_rate_bp": catalog::tax_rate_bp(&p),
                    "barcodes": barcodes,
                    "attributes": {"weight_grams": 600},
                }),
            )
            .await?;
        admin
            .ok(
                Method::POST,
                "/api/v1/prices",
                json!({"sku": p.sku, "scope": "all", "price_minor": p.price, "currency": "EUR", "effective_from_ms": 0}),
            )
            .await?;
    }
    for l in locations {
        let lines: Vec<Value> = catalog::products()
            .iter()
            .map(|p| {
                let qty = if p.weighed {
                    OPENING_STOCK * 100
                } else {
                    OPENING_STOCK
                };
                json!({"sku": p.sku, "qty": qty})
            })
            .collect();
        admin
            .ok(
                Method::POST,
                "/api/v1/stock/receipts",
                json!({"location": l.id, "reference": "opening stock", "lines": lines}),
            )
            .await?;
    }
    let (status, body) = admin
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&json!({"email": client.0, "password": client.1, "role": "client"})),
            &[],
        )
        .await?;
    anyhow::ensure!(
        (200..300).contains(&status) || status == 409,
        "creating the shoppers' account: {status} {body}"
    );
    Ok(())
}

/// What online shoppers got.
#[derive(Debug, Default)]
pub struct ShopperStats {
    /// Orders confirmed (201) or accepted with payment pending (202).
    pub placed: AtomicU64,
    /// Out of stock (409).
    pub out_of_stock: AtomicU64,
    /// Payment declined (402).
    pub declined: AtomicU64,
    /// Anything else (network errors, 5xx).
    pub errors: AtomicU64,
    /// Sum of saga latencies of placed orders, µs.
    pub latency_us: AtomicU64,
}

/// Online shoppers at `per_minute` orders a minute (exponential arrivals):
/// click-and-collect at one of `stores` or delivery to a region, one to
/// three products, 1 in 20 paying with a card that the provider declines.
pub async fn online_shoppers(
    api: Api,
    per_minute: f64,
    stores: Vec<String>,
    regions: Vec<String>,
    stats: Arc<ShopperStats>,
    stop: CancellationToken,
) {
    let products: Vec<_> = catalog::products().into_iter().filter(|p| !p.weighed).collect();
    let mean = Duration::from_secs_f64(60.0 / per_minute.max(0.01));
    let mut n = 0u64;
    loop {
        let wait = mean.mul_f64(-(1.0 - rand::random::<f64>()).ln());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        n += 1;
        let order = {
            let mut rng = rand::rng();
            let lines: Vec<Value> = (0..rng.random_range(1..=3))
                .map(|_| {
                    let p = &products[rng.random_range(0..products.len())];
                    json!({"sku": p.sku, "qty": rng.random_range(1..=2)})
                })
                .collect();
            let token = if rng.random_range(0..20) == 0 {
                "decline-demo".to_owned()
            } else {
                format!("tok_{}", rng.random::<u32>())
            };
            let payment = json!({"method": "card", "token": token, "last4": "4242"});
            if rng.random::<bool>() && !stores.is_empty() {
                let at = &stores[rng.random_range(0..stores.len())];
                json!({"lines": lines, "fulfilment": "collect", "collect_at": at, "payment": payment})
            } else {
                let region = regions
                    .get(rng.random_range(0..regions.len().max(1)))
                    .cloned()
                    .unwrap_or_default();
                json!({"lines": lines, "fulfilment": "ship", "ship_region": region, "allow_split": true, "payment": payment})
            }
        };
        let key = format!("shopper-{}-{n}", std::process::id());
        let api = api.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/orders",
                    Some(&order),
                    &[("Idempotency-Key", &key)],
                )
                .await;
            match answer.map(|a| a.0) {
                Ok(201 | 202) => {
                    stats.placed.fetch_add(1, Ordering::Relaxed);
                    stats
                        .latency_us
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Ok(409) => {
                    stats.out_of_stock.fetch_add(1, Ordering::Relaxed);
                }
                Ok(402) => {
                    stats.declined.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) | Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// A store handheld on the edge's device bus: takes every pick task the
/// hub sends, and after `pick_time` reports it done with every line picked.
pub async fn handheld(
    lan: SocketAddr,
    store: StoreId,
    login: crate::lane::DeviceLogin,
    pick_time: Duration,
    picked: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let device = DeviceId::parse(login.device.as_str())?;
    let mut opts = login.options(lan);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let tasks = LanTopic::Tasks(store.clone()).to_string();
    let updates = LanTopic::TaskUpdate(store.clone()).to_string();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(tasks.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(task) = serde_json::from_slice::<Task>(&p.payload) else {
                    continue; // a cancellation notice, or not ours
                };
                if matches!(task.status, Some(TaskStatus::Done | TaskStatus::Failed)) {
                    continue;
                }
                let update = TaskUpdate {
                    task_id: task.task_id.clone(),
                    status: TaskStatus::Done,
                    device: Some(device.clone()),
                    lines: task
                        .lines
                        .iter()
                        .map(|l| TaskLineResult {
                            sku: l.sku.clone(),
                            done: l.qty,
                        })
                        .collect(),
                    note: None,
                };
                let client = client.clone();
                let updates = updates.clone();
                let picked = picked.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(pick_time).await;
                    if let Ok(json) = serde_json::to_vec(&update)
                        && client
                            .publish(updates, QoS::AtLeastOnce, false, json)
                            .await
                            .is_ok()
                    {
                        picked.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// What tills tried and what their edges acknowledged, for the checker.
#[derive(Debug, Default)]
pub struct TillHistory {
    /// Every sale a till tried to record, with its store.
    pub attempted: HashMap<EventId, String>,
    /// The sales an edge acknowledged (201, or 200 for a retried key).
    pub acknowledged: HashSet<EventId>,
}

/// A sale numbered `n` (its sale id and payment keys derive from `n`):
/// `samples::sale(3)`, which sells 1, 2 and 3 of `SKU-00000..2`.
pub fn till_sale(n: u128) -> EventBody {
    let mut sale = samples::cash_sale(3);
    sale.sale_id = EventId::from_parts(samples::T0_MS as u64, n);
    for (i, t) in sale.tenders.iter_mut().enumerate() {
        t.payment_key = EventId::from_parts(samples::T0_MS as u64 + 1, n * 8 + i as u128);
    }
    EventBody::Sale(sale)
}

/// A till on an edge's local API: records sales one after another, each
/// with its own idempotency key, retrying a sale with the same key until
/// the edge acknowledges it, through kills and restarts (it reads the
/// edge's current address from `url` on every try). Stops selling when
/// `stop` is set; gives up on a sale after `patience`.
pub async fn till(
    store: String,
    first: u128,
    url: Arc<Mutex<String>>,
    history: Arc<Mutex<TillHistory>>,
    stop: Arc<AtomicBool>,
    patience: Duration,
) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut n = first;
    let mut sold = 0;
    while !stop.load(Ordering::Acquire) {
        let body = till_sale(n);
        let EventBody::Sale(sale) = &body else {
            anyhow::bail!("till_sale makes sales")
        };
        let sale_id = sale.sale_id;
        history
            .lock()
            .map_err(|_| anyhow::anyhow!("history poisoned"))?
            .attempted
            .insert(sale_id, store.clone());
        let key = format!("till-{store}-{n}");
        let payload = serde_json::to_vec(&body)?;
        let deadline = Instant::now() + patience;
        loop {
            let target = format!(
                "{}/api/v1/events",
                url.lock().map_err(|_| anyhow::anyhow!("url poisoned"))?
            );
            let answer = client
                .post(&target)
                .header("content-type", "application/json")
                .header("Idempotency-Key", &key)
                .body(payload.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 201 || r.status() == 200 => {
                    history
                        .lock()
                        .map_err(|_| anyhow::anyhow!("history poisoned"))?
                        .acknowledged
                        .insert(sale_id);
                    sold += 1;
                    break;
                }
                Ok(r) if r.status().is_client_error() => {
                    anyhow::bail!("{store} refused a valid sale: {}", r.status())
                }
                Ok(_) | Err(_) => {
                    // Killed under us, restarting, or busy: the same key again.
                    anyhow::ensure!(Instant::now() < deadline, "{store} never came back for sale {n}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    Ok(sold)
}

/// The checker's counts, in the spirit of Jepsen's total-queue checker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Sales tills tried.
    pub attempted: usize,
    /// Sales edges acknowledged.
    pub acknowledged: usize,
    /// Distinct sales at the hub.
    pub at_hub: usize,
    /// Acknowledged, missing at the hub.
    pub lost: usize,
    /// At the hub, never attempted.
    pub unexpected: usize,
    /// Extra copies at the hub.
    pub duplicated: usize,
    /// At the hub under another store than the till's.
    pub misplaced: usize,
    /// Stores whose events at the hub are not exactly seq 1..=N.
    pub gapped_stores: Vec<String>,
}

/// Reads every event of `stores` from the hub's API and compares the sales
/// with what the tills did.
pub async fn check(admin: &Api, stores: &[String], history: &TillHistory) -> anyhow::Result<Verdict> {
    let mut at_hub: HashMap<EventId, (String, usize)> = HashMap::new();
    let mut gapped = Vec::new();
    for store in stores {
        let mut after = 0i64;
        let mut expect = 1i64;
        let mut gap = false;
        loop {
            let page = admin
                .get(&format!(
                    "/api/v1/stores/{store}/events?after_seq={after}&limit=500"
                ))
                .await?;
            let events = page.as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                break;
            }
            for e in &events {
                after = e["seq"].as_i64().unwrap_or(after);
                gap |= after != expect;
                expect = after + 1;
                if let Ok(EventBody::Sale(s)) = serde_json::from_value::<EventBody>(e["body"].clone()) {
                    at_hub.entry(s.sale_id).or_insert_with(|| (store.clone(), 0)).1 += 1;
                }
            }
        }
        if gap {
            gapped.push(store.clone());
        }
    }
    Ok(Verdict {
        attempted: history.attempted.len(),
        acknowledged: history.acknowledged.len(),
        at_hub: at_hub.len(),
        lost: history
            .acknowledged
            .iter()
            .filter(|id| !at_hub.contains_key(id))
            .count(),
        unexpected: at_hub
            .keys()
            .filter(|id| !history.attempted.contains_key(id))
            .count(),
        duplicated: at_hub.values().map(|(_, n)| n - 1).sum(),
        misplaced: at_hub
            .iter()
            .filter(|(id, (store, _))| history.attempted.get(id).is_some_and(|s| s != store))
            .count(),
        gapped_stores: gapped,
    })
}
