//! `storegate-sim demo`: the whole chain in one process, on a fresh machine
//! with nothing but Rust. A hub with its embedded defaults (rumqttd,
//! SQLite), a few stores and a warehouse, each an edge agent whose lanes
//! have a scale and a scanner on pseudo-terminals and shoppers at the tills,
//! handhelds picking click-and-collect orders, online shoppers through the
//! REST API; one store's WAN is cut for a while and catches up. Live
//! progress in the terminal; at the end, the checks a fleet operator would
//! make (every event at the hub, every stock level explained by its ledger).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use storegate_protocol::StoreId;
use tokio_util::sync::CancellationToken;

use crate::chain::{self, Api, Location, ShopperStats};
use crate::netfault::Proxy;
use crate::store::{self, StoreConfig, StoreSim};

/// Options of `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stores (each an edge agent with lanes).
    #[arg(long, default_value_t = 3)]
    pub stores: usize,
    /// Lanes per store.
    #[arg(long, default_value_t = 2)]
    pub lanes: usize,
    /// Baskets per lane per minute.
    #[arg(long, default_value_t = 12.0)]
    pub rate: f64,
    /// Online orders per minute.
    #[arg(long, default_value_t = 30.0)]
    pub orders_per_minute: f64,
    /// The REST API's address (another free port if taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_listen: String,
    /// The embedded broker's address (another free port if taken).
    #[arg(long, default_value = "127.0.0.1:1884")]
    pub broker_listen: String,
    /// Where the hub and the stores keep their databases (default: a temp
    /// dir removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The hub's database (default: SQLite in the data dir).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Seconds before one store's WAN is cut (0: never).
    #[arg(long, default_value_t = 20)]
    pub cut_after: u64,
    /// Seconds the WAN stays cut.
    #[arg(long, default_value_t = 20)]
    pub cut_for: u64,
    /// Seconds to run (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
}

const ADMIN_EMAIL: &str = "admin@example.com";
const SHOPPER_EMAIL: &str = "shopper@example.com";
const SHOPPER_PASSWORD: &str = "demo shopper password";
const WATCHED: [&str; 4] = ["MILK-1L", "COFFEE-500", "COLA-330", "APPLES"];

/// `addr` if it can be bound now, else an ephemeral port (with a note).
fn free_or_any(addr: &str, what: &str) -> String {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr.to_owned(),
        Err(e) => {
            println!("{what}: {addr} is not available ({e}); using a free port instead");
            "127.0.0.1:0".to_owned()
        }
    }
}

struct DemoStore {
    id: String,
    sim: StoreSim,
    wan: Option<Proxy>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let admin_password = format!("demo-{:016x}", rand::random::<u64>());

    let mut settings = storegate_hub::Settings {
        data_dir: dir.join("hub"),
        ..Default::default()
    };
    std::fs::create_dir_all(&settings.data_dir)?;
    settings.database.url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("hub").join("hub.db").display()));
    settings.api.listen = free_or_any(&args.api_listen, "REST API");
    settings.broker.listen = free_or_any(&args.broker_listen, "broker");
    // Stores connect over TLS with their certificates, as in production;
    // the hub creates its chain CA in the data directory at first start.
    settings.broker.tls_listen = Some("127.0.0.1:0".into());
    settings.auth.bootstrap_admin_email = Some(ADMIN_EMAIL.into());
    settings.auth.bootstrap_admin_password = Some(admin_password.clone());
    let shutdown = CancellationToken::new();
    println!("starting the hub (embedded rumqttd, {})", settings.database.url);
    let hub = storegate_hub::start(settings, shutdown.clone()).await?;
    while !hub.link.subscribed.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api_base = format!("http://{}", hub.api_addr);
    let broker = hub.broker_addr.clone();
    let tls = hub.tls_addr.context("the hub's TLS listener")?;
    let admin = Api::login(&api_base, ADMIN_EMAIL, &admin_password).await?;

    let mut locations: Vec<Location> = (1..=args.stores)
        .map(|i| Location {
            id: format!("store-{i:04}"),
            kind: "store",
            region: if i % 2 == 1 { "north" } else { "south" },
        })
        .collect();
    locations.push(Location {
        id: "wh-0001".into(),
        kind: "warehouse",
        region: "north",
    });
    println!(
        "loading the chain into the hub: {} locations, the demo catalog, opening stock",
        locations.len()
    );
    chain::seed(&admin, &locations, (SHOPPER_EMAIL, SHOPPER_PASSWORD)).await?;

    let stop = CancellationToken::new();
    let picked = Arc::new(AtomicU64::new(0));
    let mut stores = Vec::new();
    for l in &locations {
        let is_store = l.kind == "store";
        // Each store reaches the hub through its own WAN link, which the
        // demo can cut; the warehouse's link is direct.
        let (upstream, wan) = if is_store {
            let p = Proxy::start(tls).await?;
            (format!("mqtts://{}", p.addr), Some(p))
        } else {
            (format!("mqtts://{tls}"), None)
        };
        // Each location's credential, as `hub store provision` makes it.
        let bundle = crate::trust::bundle_at_hub(
            &hub,
            &StoreId::parse(&l.id)?,
            &format!("mqtts://{tls}"),
            &dir.join(&l.id),
        )
        .await?;
        let sim = store::start(StoreConfig {
            store: l.id.clone(),
            bundle,
            upstream,
            data_dir: dir.join(&l.id),
            lanes: if is_store { args.lanes } else { 0 },
            local_catalog: false,
            baskets_per_minute: args.rate,
            card_share: 0.6,
            http_listen: "127.0.0.1:0".into(),
            lan_listen: "127.0.0.1:0".into(),
            // Reconnect within 2 s of the WAN coming back (30 s by default).
            reconnect_max_ms: Some(2_000),
        })
        .await
        .with_context(|| format!("starting {}", l.id))?;
        if let Some(lan) = sim.edge.lan_addr {
            tokio::spawn(chain::handheld(
                lan,
                StoreId::parse(&l.id)?,
                sim.handheld.clone(),
                Duration::from_secs(3),
                picked.clone(),
                stop.clone(),
            ));
        }
        stores.push(DemoStore {
            id: l.id.clone(),
            sim,
            wan,
        });
    }
    let shopper = Api::login(&api_base, SHOPPER_EMAIL, SHOPPER_PASSWORD).await?;
    let online = Arc::new(ShopperStats::default());
    tokio::spawn(chain::online_shoppers(
        shopper,
        args.orders_per_minute,
        stores
            .iter()
            .filter(|s| s.wan.is_some())
            .map(|s| s.id.clone())
            .collect(),
        vec!["north".into(), "south".into()],
        online.clone(),
        stop.clone(),
    ));

    let banner = format!(
        "REST API  {api_base}/api/v1   docs {api_base}/api/docs   OpenAPI {api_base}/api/v1/openapi.json\n\
         admin     {ADMIN_EMAIL} / {admin_password}\n\
         token     curl -s {api_base}/oauth/token -d grant_type=password -d username={ADMIN_EMAIL} -d password={admin_password}\n\
         broker    stores: mqtts://{tls} (client certificates; bundles in each store's directory)   local: mqtt://{broker}\n\
         data      {}",
        dir.display()
    );
    println!("{banner}");

    // The WAN cut of one store (the second one, if there is one).
    let cut_store = stores.len().min(2).saturating_sub(1);
    let mut log: Vec<String> = Vec::new();
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut rates = Rates::default();
    let mut cut_at: Option<Instant> = None;
    let mut restored_at: Option<Instant> = None;
    // The last seq the cut store had recorded when its WAN came back.
    let mut backlog_end = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        let t = started.elapsed();
        if args.duration > 0 && t.as_secs() >= args.duration {
            break;
        }
        let s = &stores[cut_store];
        if let Some(wan) = &s.wan {
            if args.cut_after > 0 && cut_at.is_none() && t.as_secs() >= args.cut_after {
                wan.cut();
                cut_at = Some(Instant::now());
                log.push(format!(
                    "{} cut {}'s WAN for {} s (it keeps selling)",
                    clock(t),
                    s.id,
                    args.cut_for
                ));
            }
            if let Some(c) = cut_at
                && restored_at.is_none()
                && c.elapsed().as_secs() >= args.cut_for
            {
                wan.restore();
                restored_at = Some(Instant::now());
                let st = s.sim.edge.journal.stats();
                backlog_end = st.next_seq.saturating_sub(1);
                log.push(format!(
                    "{} restored {}'s WAN with {} events waiting",
                    clock(t),
                    s.id,
                    st.outbox_depth
                ));
            }
        }
        let rows = store_rows(&admin, &stores).await;
        if let Some(r) = restored_at
            && !log.iter().any(|l| l.contains("caught up"))
            && stores[cut_store].sim.edge.journal.stats().acked_up_to >= backlog_end
        {
            log.push(format!(
                "{} {} caught up in {:.1} s",
                clock(t),
                stores[cut_store].id,
                r.elapsed().as_secs_f64()
            ));
        }
        let sales: u64 = stores
            .iter()
            .map(|s| s.sim.stats.sales.load(Ordering::Relaxed))
            .sum();
        let orders = online.placed.load(Ordering::Relaxed);
        rates.push(sales, orders);
        if tty || t.as_secs().is_multiple_of(5) {
            let screen = render(
                &args,
                t,
                tty.then_some(banner.as_str()),
                &rows,
                &stores,
                &admin,
                &online,
                &picked,
                &rates,
                &log,
            )
            .await;
            let mut out = std::io::stdout().lock();
            if tty {
                let _ = write!(out, "\x1b[H\x1b[2J");
            }
            let _ = writeln!(out, "{screen}");
            let _ = out.flush();
        }
    }

    println!("\nstopping: shoppers first, then letting every store drain to the hub");
    stop.cancel();
    if let Some(s) = stores.get(cut_store)
        && let Some(w) = &s.wan
    {
        w.restore();
    }
    for s in &stores {
        s.sim.shoppers.cancel();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store_rows(&admin, &stores).await;
        if rows.iter().all(|r| r.unsynced == 0) || Instant::now() > deadline {
            for r in &rows {
                println!(
                    "  {:<10} events {:>6}  at the hub up to seq {:>6}  not yet synced {}",
                    r.id,
                    r.next_seq.saturating_sub(1),
                    r.hwm,
                    r.unsynced
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match admin.get("/api/v1/stock/verify").await {
        Ok(v) if v.as_array().is_some_and(Vec::is_empty) => {
            println!("  stock: every level at every location equals the sum of its ledger");
        }
        Ok(v) => println!("  stock: MISMATCHES between levels and ledger: {v}"),
        Err(e) => println!("  stock: could not verify: {e}"),
    }
    for s in stores {
        s.sim.stop.cancel();
        s.sim.edge.stopped().await;
    }
    shutdown.cancel();
    hub.stopped().await;
    Ok(())
}

fn clock(t: Duration) -> String {
    format!("{:02}:{:02}", t.as_secs() / 60, t.as_secs() % 60)
}

/// Sales and orders over the last seconds, for rates.
#[derive(Default)]
struct Rates {
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
}

impl Rates {
    fn push(&mut self, sales: u64, orders: u64) {
        self.samples.push_back((Instant::now(), sales, orders));
        while self.samples.len() > 10 {
            self.samples.pop_front();
        }
    }

    /// (sales/s, orders/s) over the window.
    fn per_second(&self) -> (f64, f64) {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let s = (b.0 - a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / s, (b.2 - a.2) as f64 / s)
            }
            _ => (0.0, 0.0),
        }
    }
}

struct Row {
    id: String,
    next_seq: u64,
    outbox: u64,
    unsynced: u64,
    hwm: i64,
    lag_ms: Option<i64>,
    online: bool,
}

async fn store_rows(admin: &Api, stores: &[DemoStore]) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in stores {
        let st = s.sim.edge.journal.stats();
        let hub = admin.get(&format!("/api/v1/stores/{}", s.id)).await.ok();
        rows.push(Row {
            id: s.id.clone(),
            next_seq: st.next_seq,
            outbox: st.outbox_depth,
            unsynced: st.next_seq.saturating_sub(1).saturating_sub(st.acked_up_to),
            hwm: hub.as_ref().and_then(|h| h["hwm"].as_i64()).unwrap_or(0),
            lag_ms: hub.as_ref().and_then(|h| h["lag_ms"].as_i64()),
            online: hub.as_ref().is_some_and(|h| h["online"] == true),
        });
    }
    rows
}

#[allow(clippy::too_many_arguments)]
async fn render(
    args: &DemoArgs,
    t: Duration,
    banner: Option<&str>,
    rows: &[Row],
    stores: &[DemoStore],
    admin: &Api,
    online: &ShopperStats,
    picked: &AtomicU64,
    rates: &Rates,
    log: &[String],
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let (sales_rate, orders_rate) = rates.per_second();
    let sales: u64 = stores
        .iter()
        .map(|s| s.sim.stats.sales.load(Ordering::Relaxed))
        .sum();
    let _ = writeln!(
        o,
        "storegate demo  {}  ({} stores x {} lanes, a warehouse; Ctrl-C to stop)",
        clock(t),
        args.stores,
        args.lanes
    );
    if let Some(b) = banner {
        let _ = writeln!(o, "{b}\n");
    }
    let _ = writeln!(
        o,
        "till sales {sales:>6}  ({sales_rate:.1}/s)    online orders {:>5} placed ({orders_rate:.1}/s), {} out of stock, {} declined, {} errors    picks done {}",
        online.placed.load(Ordering::Relaxed),
        online.out_of_stock.load(Ordering::Relaxed),
        online.declined.load(Ordering::Relaxed),
        online.errors.load(Ordering::Relaxed),
        picked.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        o,
        "\n{:<10} {:>5} {:>7} {:>9} {:>8} {:>10} {:>9} {:>10}",
        "location", "WAN", "sales", "events", "outbox", "unsynced", "hub hwm", "sync lag"
    );
    for (s, r) in stores.iter().zip(rows) {
        let wan = match &s.wan {
            Some(w) if w.is_cut() => "CUT",
            _ if !r.online => "down",
            _ => "up",
        };
        let _ = writeln!(
            o,
            "{:<10} {:>5} {:>7} {:>9} {:>8} {:>10} {:>9} {:>10}",
            r.id,
            wan,
            s.sim.stats.sales.load(Ordering::Relaxed),
            r.next_seq.saturating_sub(1),
            r.outbox,
            r.unsynced,
            r.hwm,
            r.lag_ms.map_or("-".into(), |l| format!("{l} ms")),
        );
    }
    let _ = writeln!(o, "\nstock (hub on hand / reserved; edge's own view)");
    for s in stores.iter().take(2) {
        let mut line = format!("  {:<10}", s.id);
        for sku in WATCHED {
            let hub = admin
                .get(&format!("/api/v1/stock?location={}&sku={sku}", s.id))
                .await
                .ok();
            let item = hub.as_ref().map(|h| &h["items"][0]);
            let on_hand = item.and_then(|i| i["on_hand"].as_i64()).unwrap_or(0);
            let reserved = item.and_then(|i| i["reserved"].as_i64()).unwrap_or(0);
            let edge = s.sim.edge.journal.stock_view(sku).await.unwrap_or(0);
            let _ = write!(line, "  {sku} {on_hand}/{reserved} ({edge})");
        }
        let _ = writeln!(o, "{line}");
    }
    if !log.is_empty() {
        let _ = writeln!(o, "\nevents");
        for l in log.iter().rev().take(6).rev() {
            let _ = writeln!(o, "  {l}");
        }
    }
    o
}
