//! `storegate-sim bench orders`: online orders through the REST API, the
//! whole saga (idempotency key, allocation, reservation, authorisation with
//! the simulated provider at zero latency, confirmation, shipment), with
//! concurrent clients, against PostgreSQL (or SQLite).
//!
//! The ceiling measured in the same run is the same clients calling an
//! authenticated route that reads one row (`GET /api/v1/auth/me`): what
//! HTTP, auth and one query cost on this machine, with no order work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::stats::{Latency, ms};

/// Options of `bench orders`.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersBenchArgs {
    /// Orders in all.
    #[arg(long, default_value_t = 6000)]
    pub orders: usize,
    /// Concurrent clients (each waits for its answer before the next order).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Lines per order (distinct SKUs).
    #[arg(long, default_value_t = 2)]
    pub lines: usize,
    /// Products in the catalogue; each order's lines are drawn from them at
    /// random. `--skus` equal to `--lines` makes every order buy the same
    /// products (the hot-row worst case).
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// Warehouses holding stock (allocation chooses among them).
    #[arg(long, default_value_t = 3)]
    pub warehouses: usize,
    /// Database connections of the hub.
    #[arg(long, default_value_t = 24)]
    pub connections: u32,
    /// Databases: postgres, sqlite.
    #[arg(long, value_delimiter = ',', default_value = "postgres")]
    pub backends: Vec<String>,
    /// Most orders in one group (`commerce.order_group_max`; 1 places
    /// each order alone).
    #[arg(long, default_value_t = 64)]
    pub group_max: usize,
    /// Groups in flight (`commerce.order_group_workers`).
    #[arg(long, default_value_t = 4)]
    pub group_workers: usize,
    /// The simulated provider's answer time, ms.
    #[arg(long, default_value_t = 0)]
    pub provider_ms: u64,
}

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "bench password 123";

async fn ok(resp: reqwest::Response, what: &str) -> anyhow::Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{what}: {status} {body}");
    Ok(body)
}

async fn login(http: &reqwest::Client, api: &str) -> anyhow::Result<String> {
    let body = ok(
        http.post(format!("{api}/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", EMAIL),
                ("password", PASSWORD),
            ])
            .send()
            .await?,
        "login",
    )
    .await?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no access token"))
}

async fn seed(http: &reqwest::Client, api: &str, token: &str, args: &OrdersBenchArgs) -> anyhow::Result<()> {
    let put = |path: String, body: serde_json::Value| {
        let req = http.put(format!("{api}{path}")).bearer_auth(token).json(&body);
        async move { ok(req.send().await?, "seed PUT").await }
    };
    let post = |path: &str, body: serde_json::Value| {
        let req = http.post(format!("{api}{path}")).bearer_auth(token).json(&body);
        async move { ok(req.send().await?, "seed POST").await }
    };
    for w in 0..args.warehouses {
        let region = if w % 2 == 0 { "north" } else { "south" };
        put(
            format!("/api/v1/stores/wh-{w}"),
            json!({"name": format!("Warehouse {w}"), "kind": "warehouse", "region": region}),
        )
        .await?;
    }
    put("/api/v1/carriers/post".into(), json!({"name": "Post"})).await?;
    put("/api/v1/shipping/zones/north".into(), json!({"zone": "z1"})).await?;
    put(
        "/api/v1/shipping/rates".into(),
        json!({"carrier": "post", "zone": "z1", "max_grams": 100_000_000, "price_minor": 499, "currency": "EUR"}),
    )
    .await?;
    // Products and prices, 16 requests at a time.
    let skus = args.skus.max(args.lines);
    let mut set = tokio::task::JoinSet::new();
    for l in 0..skus {
        let sku = format!("BENCH-{l}");
        let product = put(
            format!("/api/v1/products/{sku}"),
            json!({"name": format!("Bench product {l}"), "tax_rate_bp": 2000}),
        );
        let price = post(
            "/api/v1/prices",
            json!({"sku": sku, "scope": "all", "price_minor": 999 + l as i64, "currency": "EUR", "effective_from_ms": 0}),
        );
        set.spawn(async move {
            product.await?;
            price.await
        });
        if set.len() >= 16
            && let Some(r) = set.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    for w in 0..args.warehouses {
        for chunk in (0..skus).collect::<Vec<_>>().chunks(500) {
            let lines: Vec<serde_json::Value> = chunk
                .iter()
                .map(|l| json!({"sku": format!("BENCH-{l}"), "qty": 1_000_000_000}))
                .collect();
            post(
                "/api/v1/stock/receipts",
                json!({"location": format!("wh-{w}"), "lines": lines}),
            )
            .await?;
        }
    }
    post(
        "/api/v1/users",
        json!({"email": EMAIL, "password": PASSWORD, "role": "client"}),
    )
    .await?;
    Ok(())
}

/// xorshift64: reproducible draws without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `clients` loops of `total` requests made by `make`; returns the
/// latencies, the wall time and how many failed.
async fn drive<F, Fut>(clients: usize, total: usize, make: F) -> (Vec<Duration>, Duration, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, failed, make) = (next.clone(), failed.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let t = Instant::now();
                if !make(i).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    (all, start.elapsed(), failed.load(Ordering::Relaxed))
}

/// Runs the benchmark and prints its table.
/// Figures of one backend.
#[derive(Debug, Clone)]
pub struct OrdersFigures {
    /// Ceiling: the same clients on `GET /api/v1/auth/me`, req/s.
    pub ceiling_rate: f64,
    /// Its latencies.
    pub ceiling: Latency,
    /// Ceiling requests that failed.
    pub ceiling_failed: usize,
    /// Orders/s through the whole saga.
    pub rate: f64,
    /// Their latencies.
    pub lat: Latency,
    /// Orders not confirmed (201).
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Orders confirmed and awaiting shipment in the database afterwards.
    pub confirmed: i64,
    /// Statements the database ran while the orders were taken (on a
    /// cluster that counts them), background workers included.
    pub statements: Option<crate::pg::Statements>,
    /// The statements run most often then: calls and text.
    pub top: Vec<(i64, String)>,
}

/// Runs the ceiling and the orders on a fresh database of `backend`.
pub async fn measure(args: &OrdersBenchArgs, backend: &str) -> anyhow::Result<OrdersFigures> {
    let dir = tempfile::tempdir()?;
    let url = match backend {
        "postgres" => crate::pg::fresh_database("sg_bench_orders").await?,
        "sqlite" => format!("sqlite://{}", dir.path().join("hub.db").display()),
        other => anyhow::bail!("unknown backend {other:?} (postgres, sqlite)"),
    };
    let mut settings = storegate_hub::Settings {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    settings.database.url = url.clone();
    settings.database.max_connections = args.connections;
    settings.commerce.order_group_max = args.group_max;
    settings.commerce.order_group_workers = args.group_workers;
    settings.commerce.sim_latency_ms = args.provider_ms;
    // Every order is paid: no decline by amount (prices vary by product).
    settings.commerce.sim_decline_cents = 100;
    settings.broker.listen = "127.0.0.1:0".into();
    settings.api.listen = "127.0.0.1:0".into();
    settings.auth.bootstrap_admin_email = Some("admin@example.com".into());
    settings.auth.bootstrap_admin_password = Some("bench admin password".into());
    let stop = CancellationToken::new();
    let hub = storegate_hub::start(settings, stop.clone()).await?;
    let api = format!("http://{}", hub.api_addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .build()?;
    let admin = {
        let body = ok(
            http.post(format!("{api}/oauth/token"))
                .form(&[
                    ("grant_type", "password"),
                    ("username", "admin@example.com"),
                    ("password", "bench admin password"),
                ])
                .send()
                .await?,
            "admin login",
        )
        .await?;
        body["access_token"].as_str().unwrap_or_default().to_owned()
    };
    seed(&http, &api, &admin, args).await?;
    let token = login(&http, &api).await?;

    // Ceiling: an authenticated one-row read, same clients.
    let (h, a, t) = (http.clone(), api.clone(), token.clone());
    let (mut lat, took, ceiling_failed) = drive(args.clients, args.orders, move |_| {
        let req = h.get(format!("{a}/api/v1/auth/me")).bearer_auth(&t);
        async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let ceiling = Latency::of(&mut lat);
    let ceiling_rate = args.orders as f64 / took.as_secs_f64();

    // Each order's body, made before the clock starts: `lines` distinct
    // SKUs drawn (a fixed seed) from the catalogue.
    let skus = args.skus.max(args.lines);
    let mut rng = Rng(0x05ee_d0f0_7de7);
    let bodies: Vec<Vec<u8>> = (0..args.orders)
        .map(|_| {
            let mut picked: Vec<usize> = Vec::with_capacity(args.lines);
            while picked.len() < args.lines {
                let l = if skus == args.lines {
                    picked.len()
                } else {
                    (rng.next() % skus as u64) as usize
                };
                if !picked.contains(&l) {
                    picked.push(l);
                }
            }
            let lines: Vec<serde_json::Value> = picked
                .iter()
                .map(|l| json!({"sku": format!("BENCH-{l}"), "qty": 1}))
                .collect();
            serde_json::to_vec(&json!({
                "lines": lines,
                "fulfilment": "ship",
                "ship_region": "north",
                "payment": {"method": "card", "token": "tok_bench", "last4": "4242"},
            }))
        })
        .collect::<Result<_, _>>()?;
    let bodies = Arc::new(bodies);
    let (h, a, t) = (http.clone(), api.clone(), token.clone());
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let fe = first_error.clone();
    let counting = crate::pg::reset_statements(&url).await;
    let (mut lat, took, failed) = drive(args.clients, args.orders, move |i| {
        let req = h
            .post(format!("{a}/api/v1/orders"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("bench-{i}"))
            .body(bodies[i].clone());
        let fe = fe.clone();
        async move {
            match req.send().await {
                Ok(r) if r.status().as_u16() == 201 => true,
                Ok(r) => {
                    let s = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if let Ok(mut g) = fe.lock() {
                        g.get_or_insert(format!("{s} {text}"));
                    }
                    false
                }
                Err(e) => {
                    if let Ok(mut g) = fe.lock() {
                        g.get_or_insert(e.to_string());
                    }
                    false
                }
            }
        }
    })
    .await;
    let (statements, top) = if counting {
        (
            crate::pg::statements(&url).await,
            crate::pg::top_statements(&url, 40).await,
        )
    } else {
        (None, Vec::new())
    };
    let confirmed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE kind = 'online' AND status = 'awaiting_shipment'",
    )
    .fetch_one(&hub.db.pool)
    .await?;
    stop.cancel();
    hub.stop().await;
    if backend == "postgres" {
        crate::pg::drop_database(&url).await;
    }
    let first_error = first_error.lock().ok().and_then(|g| g.clone());
    Ok(OrdersFigures {
        ceiling_rate,
        ceiling,
        ceiling_failed,
        rate: args.orders as f64 / took.as_secs_f64(),
        lat: Latency::of(&mut lat),
        failed,
        first_error,
        confirmed,
        statements,
        top,
    })
}

/// Runs the order benchmark and prints its table.
pub async fn run(args: OrdersBenchArgs) -> anyhow::Result<()> {
    println!(
        "storegate order saga benchmark: {} online orders of {} lines from {} products, {} concurrent clients, simulated provider at {} ms",
        args.orders,
        args.lines,
        args.skus.max(args.lines),
        args.clients,
        args.provider_ms
    );
    println!();
    println!(
        "{:<50} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "", "req/s", "p50 ms", "p99 ms", "max ms", "failed"
    );
    let _cluster = crate::pg::own_cluster_or_say().await;
    for backend in &args.backends {
        let f = measure(&args, backend).await?;
        println!(
            "{:<50} {:>9.0} {:>9} {:>9} {:>9} {:>7}",
            format!("{backend}: ceiling, GET /api/v1/auth/me"),
            f.ceiling_rate,
            ms(f.ceiling.p50),
            ms(f.ceiling.p99),
            ms(f.ceiling.max),
            f.ceiling_failed
        );
        println!(
            "{:<50} {:>9.0} {:>9} {:>9} {:>9} {:>7}",
            format!("{backend}: POST /api/v1/orders (whole saga)"),
            f.rate,
            ms(f.lat.p50),
            ms(f.lat.p99),
            ms(f.lat.max),
            f.failed
        );
        if let Some(e) = &f.first_error {
            println!("  first failure: {e}");
        }
        println!("  orders confirmed and awaiting shipment: {}", f.confirmed);
        match f.statements {
            Some(s) => {
                println!("  per order: {}; the most frequent:", s.per(args.orders));
                for (calls, text) in &f.top {
                    println!("  {:>8.2}  {text}", *calls as f64 / args.orders.max(1) as f64);
                }
            }
            None => println!("  statements per order: not counted (no cluster of the benchmark's own)"),
        }
    }
    println!();
    println!(
        "Goal (issue 14): >= 0.5 of the ceiling's rate, p99 <= 50 ms, <= 6 statements per order on PostgreSQL."
    );
    Ok(())
}
