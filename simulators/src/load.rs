//! `storegate-sim load`: chain-scale load with faults.
//!
//! - The real `hub` binary as a child process (its embedded broker; SQLite
//!   or PostgreSQL), so that it can be killed with SIGKILL and restarted
//!   (which restarts the broker too).
//! - Hundreds to thousands of virtual stores ([`crate::vstore`]), each one
//!   MQTT connection through its own WAN link (a [`Proxy`]), selling at a
//!   set rate with realistic baskets.
//! - A few real `edge-agent` processes with tills recording sales through
//!   their local API with idempotency keys; these agents get killed with
//!   SIGKILL and restarted.
//! - Online shoppers through the REST API, and a handheld per edge picking
//!   click-and-collect orders.
//! - Faults in turn: WAN cuts of a share of the stores, kill -9 of an edge
//!   agent, kill -9 of the hub (and its embedded broker); with
//!   `--mosquitto` the hub and every store use a Mosquitto of the run's own
//!   instead, and the `broker` fault kills it (no persistence: every
//!   session and queued message lost) and starts it again.
//! - A progress bar, then the checks: every virtual store's sales at the
//!   hub (high-water mark == last seq sold), and the tills' sales counted
//!   lost / unexpected / duplicated by [`chain::check`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use storegate_protocol::{Qty, StoreId, samples};
use tokio_util::sync::CancellationToken;

use crate::chain::{self, Api, Location, ShopperStats, TillHistory};
use crate::netfault::Proxy;
use crate::vstore::{self, VStats, VStoreConfig};

/// Options of `load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Virtual stores (MQTT connections).
    #[arg(long, default_value_t = 300)]
    pub stores: usize,
    /// Sales per virtual store per second (Black Friday peak: 0.3).
    #[arg(long, default_value_t = 0.3)]
    pub rate: f64,
    /// Real edge agents with tills (killed and restarted by the edge fault).
    #[arg(long, default_value_t = 2)]
    pub edge_agents: usize,
    /// Online orders per second.
    #[arg(long, default_value_t = 2.0)]
    pub orders_per_sec: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seconds between faults (0: none).
    #[arg(long, default_value_t = 12)]
    pub fault_every: u64,
    /// Faults to inject, in turn: wan, edge, hub, broker (with
    /// `--mosquitto`).
    #[arg(long, value_delimiter = ',', default_value = "wan,edge,hub")]
    pub faults: Vec<String>,
    /// Share of virtual stores whose WAN a `wan` fault cuts.
    #[arg(long, default_value_t = 0.05)]
    pub cut_share: f64,
    /// Seconds a WAN cut lasts.
    #[arg(long, default_value_t = 8)]
    pub cut_for: u64,
    /// The hub's database (default: SQLite in a temp dir).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Run a Mosquitto of the run's own (needs `mosquitto` installed) as
    /// the broker of the hub and every store, instead of the hub's embedded
    /// broker; allows the `broker` fault.
    #[arg(long)]
    pub mosquitto: bool,
}

const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "load admin password";

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it (cargo build --release --bins)",
        path.display()
    );
    Ok(path)
}

/// Runs `hub --data-dir dir --database-url url ARGS` (an operator's command)
/// and checks it succeeded.
async fn hub_cli(dir: &Path, url: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(sibling("hub")?)
        .arg("--data-dir")
        .arg(dir)
        .args(["--database-url", url])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .await
        .context("running hub")?;
    anyhow::ensure!(
        out.status.success(),
        "hub {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

struct HubChild {
    child: tokio::process::Child,
    api: String,
}

/// `broker`: the embedded broker's listen address, or with `external` an
/// MQTT broker of its own to use.
async fn spawn_hub(
    dir: &Path,
    url: &str,
    broker: SocketAddr,
    external: bool,
    api_port: u16,
) -> anyhow::Result<HubChild> {
    let broker_arg = if external {
        ["--broker".to_owned(), format!("mqtt://{broker}")]
    } else {
        ["--broker-listen".to_owned(), broker.to_string()]
    };
    let mut child = tokio::process::Command::new(sibling("hub")?)
        .args(["--database-url", url])
        .arg("--data-dir")
        .arg(dir)
        .args(broker_arg)
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        // A stable client id: its broker session survives a hub restart.
        .env("SG_HUB_BROKER__CLIENT_ID", "storegate-hub-load")
        .env("RUST_LOG", "error")
        .env("SG_HUB_AUTH__BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("SG_HUB_AUTH__BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting hub")?;
    let (api, _) = crate::procs::hub_listening(&mut child).await?;
    let api = format!("http://{api}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http
        .get(format!("{api}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "hub never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(HubChild { child, api })
}

struct EdgeChild {
    store: String,
    dir: PathBuf,
    wan: Proxy,
    child: Option<tokio::process::Child>,
    url: Arc<Mutex<String>>,
    lan: Option<SocketAddr>,
}

impl EdgeChild {
    async fn start(&mut self) -> anyhow::Result<()> {
        let mut child = tokio::process::Command::new(sibling("edge-agent")?)
            .arg("--config")
            .arg(self.dir.join("edge.toml"))
            .arg("--bundle")
            .arg(self.dir.join("bundle.toml"))
            .args(["--upstream", &format!("mqtt://{}", self.wan.addr)])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--http-listen", "127.0.0.1:0", "--lan-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "error")
            .env("SG_EDGE_SYNC__BACKOFF_MAX_MS", "1000")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting edge-agent")?;
        let (http, lan) = crate::procs::edge_listening(&mut child).await?;
        if let Ok(mut u) = self.url.lock() {
            *u = format!("http://{http}");
        }
        self.lan = lan;
        self.child = Some(child);
        Ok(())
    }

    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Products of `samples::sale(lines)` at the prices those sales charge.
async fn seed_sample_products(admin: &Api, lines: usize) -> anyhow::Result<()> {
    for l in samples::sale(lines).lines {
        let measure = if matches!(l.qty, Qty::Grams(_)) {
            "grams"
        } else {
            "each"
        };
        let (status, body) = admin
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/products/{}", l.sku),
                Some(&json!({"name": l.sku.as_str(), "measure": measure, "tax_rate_bp": l.tax_rate_bp})),
                &[],
            )
            .await?;
        anyhow::ensure!((200..300).contains(&status), "product {}: {status} {body}", l.sku);
        let (status, body) = admin
            .call(
                reqwest::Method::POST,
                "/api/v1/prices",
                Some(&json!({"sku": l.sku.as_str(), "scope": "all", "price_minor": l.unit_price.minor, "currency": "EUR", "effective_from_ms": 0})),
                &[],
            )
            .await?;
        anyhow::ensure!((200..300).contains(&status), "price {}: {status} {body}", l.sku);
    }
    Ok(())
}

fn bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Runs the load and its checks; fails if the checks do.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", dir.join("hub.db").display()),
    };
    for f in &args.faults {
        match f.as_str() {
            "wan" | "edge" | "hub" => {}
            "broker" => anyhow::ensure!(
                args.mosquitto,
                "the broker fault needs --mosquitto (the embedded broker restarts with the hub: fault `hub`)"
            ),
            other => anyhow::bail!("unknown fault {other:?}: wan, edge, hub, broker"),
        }
    }
    let mut mosquitto = if args.mosquitto {
        let conf_dir = dir.join("mosquitto");
        std::fs::create_dir_all(&conf_dir)?;
        Some(crate::procs::Mosquitto::start(&conf_dir).await?)
    } else {
        None
    };
    let broker_port = match &mosquitto {
        Some(m) => m.addr.port(),
        None => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        }
    };
    // Fixed for the run, so that clients find the hub again after a restart.
    let api_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let broker: SocketAddr = format!("127.0.0.1:{broker_port}").parse()?;
    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    let external = mosquitto.is_some();
    println!(
        "hub: {url}, broker {broker} ({})",
        if external {
            "Mosquitto of this run"
        } else {
            "the hub's embedded rumqttd"
        }
    );
    // The chain's CA and every store's credential, as an operator makes
    // them: `hub ca init`, then one credential per store (the edge agents'
    // through `hub store provision`, the virtual stores' through the same
    // library call, for speed).
    hub_cli(&hub_dir, &url, &["ca", "init"]).await?;
    let vtrust = {
        let db = storegate_hub::db::Db::connect(&url, 2).await?;
        db.migrate().await?;
        let mut out = Vec::with_capacity(args.stores);
        for i in 0..args.stores {
            let store = StoreId::parse(format!("load-{i:05}"))?;
            let bundle = crate::trust::provision_at_hub(
                &db,
                &hub_dir.join("pki"),
                &store,
                &format!("mqtt://{broker}"),
            )
            .await?;
            out.push((
                store,
                Arc::new(storegate_edge::trust::EdgeTrust::from_bundle(&bundle)?),
            ));
        }
        db.pool.close().await;
        out
    };
    let mut hub = Some(spawn_hub(&hub_dir, &url, broker, external, api_port).await?);
    let api_base = hub.as_ref().map(|h| h.api.clone()).unwrap_or_default();
    let admin = Api::login(&api_base, ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let edge_ids: Vec<String> = (1..=args.edge_agents).map(|i| format!("edge-{i:03}")).collect();
    let mut locations: Vec<Location> = edge_ids
        .iter()
        .map(|id| Location {
            id: id.clone(),
            kind: "store",
            region: "north",
        })
        .collect();
    locations.push(Location {
        id: "wh-load".into(),
        kind: "warehouse",
        region: "north",
    });
    chain::seed(
        &admin,
        &locations,
        ("shopper@example.com", "load shopper password"),
    )
    .await?;
    seed_sample_products(&admin, 6).await?;

    // Virtual stores, each behind its own WAN link.
    println!(
        "starting {} virtual stores and {} edge agents",
        args.stores, args.edge_agents
    );
    let stats = Arc::new(VStats::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    let sell_until = start + Duration::from_secs(args.duration);
    let mut wans = Vec::new();
    let mut vtasks = Vec::new();
    for (i, (store, trust)) in vtrust.into_iter().enumerate() {
        let wan = Proxy::start(broker).await?;
        let cfg = VStoreConfig {
            store,
            broker: wan.addr,
            tls: false,
            trust,
            rate: args.rate,
            lines: (2, 6),
            window: 16,
            measure_from: start + Duration::from_secs(3),
            sell_until,
        };
        wans.push(wan);
        vtasks.push((
            cfg.store.clone(),
            tokio::spawn(vstore::run(cfg, i as u64, stats.clone(), stop.clone())),
        ));
    }
    // Real edge agents with tills and handhelds.
    let history: Arc<Mutex<TillHistory>> = Arc::default();
    let tills_stop = Arc::new(AtomicBool::new(false));
    let picked = Arc::new(AtomicU64::new(0));
    let mut edges = Vec::new();
    let mut tills = Vec::new();
    for (i, id) in edge_ids.iter().enumerate() {
        let edir = dir.join(id);
        std::fs::create_dir_all(&edir)?;
        let bundle = edir.join("bundle.toml");
        hub_cli(
            &hub_dir,
            &url,
            &[
                "store",
                "provision",
                id,
                "--broker",
                &format!("mqtt://{broker}"),
                "--out",
                &bundle.display().to_string(),
            ],
        )
        .await?;
        // The store's handheld is the one device on its bus.
        let (handheld, entry) = crate::lane::DeviceLogin::new(
            format!("handheld-{id}"),
            storegate_edge::lan::access::DeviceRole::Handheld,
            &[],
        );
        #[derive(serde::Serialize)]
        struct EdgeFile {
            devices: Vec<storegate_edge::settings::DeviceSettings>,
        }
        std::fs::write(
            edir.join("edge.toml"),
            toml::to_string(&EdgeFile { devices: vec![entry] })?,
        )?;
        let mut e = EdgeChild {
            store: id.clone(),
            dir: edir,
            wan: Proxy::start(broker).await?,
            child: None,
            url: Arc::new(Mutex::new(String::new())),
            lan: None,
        };
        e.start().await?;
        if let Some(lan) = e.lan {
            tokio::spawn(chain::handheld(
                lan,
                StoreId::parse(id)?,
                handheld,
                Duration::from_secs(2),
                picked.clone(),
                stop.clone(),
            ));
        }
        for lane in 0..2u128 {
            tills.push(tokio::spawn(chain::till(
                id.clone(),
                (i as u128 + 1) * 1_000_000_000 + lane * 10_000_000,
                e.url.clone(),
                history.clone(),
                tills_stop.clone(),
                Duration::from_secs(120),
            )));
        }
        edges.push(e);
    }
    let shopper = Api::login(&api_base, "shopper@example.com", "load shopper password").await?;
    let online = Arc::new(ShopperStats::default());
    let shoppers_stop = stop.child_token();
    tokio::spawn(chain::online_shoppers(
        shopper,
        args.orders_per_sec * 60.0,
        edge_ids.clone(),
        vec!["north".into()],
        online.clone(),
        shoppers_stop.clone(),
    ));

    // The run: progress, faults in turn.
    let mut fault_no = 0usize;
    let mut next_fault = start + Duration::from_secs(args.fault_every.max(1));
    let mut cut: Vec<usize> = Vec::new();
    let mut cut_until: Option<Instant> = None;
    let mut faults_done: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < sell_until {
        tick.tick().await;
        let now = Instant::now();
        if let Some(t) = cut_until
            && now >= t
        {
            for i in cut.drain(..) {
                wans[i].restore();
            }
            cut_until = None;
        }
        if args.fault_every > 0 && now >= next_fault && !args.faults.is_empty() {
            next_fault = now + Duration::from_secs(args.fault_every);
            let kind = args.faults[fault_no % args.faults.len()].as_str();
            fault_no += 1;
            match kind {
                "wan" => {
                    let n = ((args.stores as f64 * args.cut_share).ceil() as usize).min(args.stores);
                    for _ in 0..n {
                        let i = rand::random_range(0..args.stores);
                        wans[i].cut();
                        cut.push(i);
                    }
                    // An edge agent's WAN too.
                    if let Some(e) = edges.get(fault_no % edges.len().max(1)) {
                        e.wan.cut();
                    }
                    cut_until = Some(now + Duration::from_secs(args.cut_for));
                    faults_done.push(format!(
                        "{:>3}s WAN cut: {n} stores for {} s",
                        start.elapsed().as_secs(),
                        args.cut_for
                    ));
                }
                "edge" if !edges.is_empty() => {
                    let k = fault_no % edges.len();
                    edges[k].kill9().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    edges[k].start().await?;
                    faults_done.push(format!(
                        "{:>3}s kill -9 {} (restarted)",
                        start.elapsed().as_secs(),
                        edges[k].store
                    ));
                }
                "hub" => {
                    if let Some(mut h) = hub.take() {
                        let _ = h.child.start_kill();
                        let _ = h.child.wait().await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    hub = Some(spawn_hub(&hub_dir, &url, broker, external, api_port).await?);
                    faults_done.push(format!(
                        "{:>3}s kill -9 hub{} (restarted)",
                        start.elapsed().as_secs(),
                        if external { "" } else { " and its broker" }
                    ));
                }
                "broker" => {
                    if let Some(m) = &mut mosquitto {
                        m.kill().await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        m.restart().await?;
                        faults_done.push(format!(
                            "{:>3}s kill -9 Mosquitto, every session lost (restarted)",
                            start.elapsed().as_secs()
                        ));
                    }
                }
                _ => {}
            }
        }
        if cut_until.is_none() {
            for e in &edges {
                e.wan.restore();
            }
        }
        let t = start.elapsed().as_secs_f64();
        let sent = stats.sent.load(Ordering::Relaxed);
        let acked = stats.acked.load(Ordering::Relaxed);
        let h = history.lock().map(|h| h.acknowledged.len()).unwrap_or(0);
        println!(
            "{} {:>4.0}/{} s  store sales {sent:>8} ({:>6.0}/s) unacked {:>6}  till sales {h:>6}  online orders {:>5} ok {:>3} out of stock  picks {:>4}  faults {}",
            bar(t / args.duration as f64, 24),
            t,
            args.duration,
            sent as f64 / t.max(1.0),
            sent - acked.min(sent),
            online.placed.load(Ordering::Relaxed),
            online.out_of_stock.load(Ordering::Relaxed),
            picked.load(Ordering::Relaxed),
            faults_done.len()
        );
    }
    // Wind down: everything restored, stores drain.
    println!("load stopped; restoring every link and letting the stores drain");
    shoppers_stop.cancel();
    tills_stop.store(true, Ordering::Release);
    for w in &wans {
        w.restore();
    }
    for e in &edges {
        e.wan.restore();
    }
    for t in tills {
        t.await??;
    }
    let mut last_seq = Vec::new();
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    for (store, t) in vtasks {
        let remaining = drain_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, t).await {
            Ok(Ok(last)) => last_seq.push((store, last)),
            _ => anyhow::bail!("{store} did not drain within 300 s"),
        }
    }
    stop.cancel();
    for f in &faults_done {
        println!("  fault at {f}");
    }

    // Checks.
    let api_base = hub.as_ref().map(|h| h.api.clone()).unwrap_or_default();
    let admin = Api::login(&api_base, ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let mut missing = 0u64;
    for (store, last) in &last_seq {
        let v = admin.get(&format!("/api/v1/stores/{store}")).await?;
        let hwm = v["hwm"].as_u64().unwrap_or(0);
        missing += last.saturating_sub(hwm);
    }
    // The tills' edges drain too.
    let started = Instant::now();
    loop {
        let mut behind = 0;
        for e in &edges {
            let url = e.url.lock().map(|u| u.clone()).unwrap_or_default();
            let st: serde_json::Value = reqwest::get(format!("{url}/status")).await?.json().await?;
            behind += st["outbox_depth"].as_u64().unwrap_or(1);
        }
        if behind == 0 || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = std::mem::take(&mut *history.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let verdict = chain::check(&admin, &edge_ids, &history).await?;
    let stock = admin.get("/api/v1/stock/verify").await?;
    println!(
        "virtual stores: {} sales sent, {} resends, {missing} missing at the hub",
        stats.sent.load(Ordering::Relaxed),
        stats.resent.load(Ordering::Relaxed)
    );
    println!(
        "tills on edge agents: {} attempted, {} acknowledged, {} at the hub; lost {}, unexpected {}, duplicated {}, misplaced {}; stores with seq gaps: {:?}",
        verdict.attempted,
        verdict.acknowledged,
        verdict.at_hub,
        verdict.lost,
        verdict.unexpected,
        verdict.duplicated,
        verdict.misplaced,
        verdict.gapped_stores
    );
    println!(
        "online orders: {} placed, {} out of stock, {} declined, {} errors; picks done {}",
        online.placed.load(Ordering::Relaxed),
        online.out_of_stock.load(Ordering::Relaxed),
        online.declined.load(Ordering::Relaxed),
        online.errors.load(Ordering::Relaxed),
        picked.load(Ordering::Relaxed)
    );
    let ledger_ok = stock.as_array().is_some_and(Vec::is_empty);
    println!(
        "stock ledger: {}",
        if ledger_ok {
            "every level equals the sum of its movements"
        } else {
            "MISMATCHES"
        }
    );
    for mut e in edges {
        e.kill9().await;
    }
    if let Some(mut h) = hub.take() {
        let _ = h.child.start_kill();
        let _ = h.child.wait().await;
    }
    anyhow::ensure!(
        missing == 0
            && verdict.lost == 0
            && verdict.unexpected == 0
            && verdict.duplicated == 0
            && verdict.misplaced == 0
            && verdict.gapped_stores.is_empty()
            && ledger_ok,
        "the checks failed"
    );
    println!("all checks passed");
    Ok(())
}
