//! A whole simulated store: an edge agent (in this process) whose lanes
//! each have a scale and a scanner on pseudo-terminals, and shoppers who
//! fill baskets, pay by card or cash, and complete sales at a set pace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use storegate_edge::framing::Terminator;
use storegate_edge::settings::{LaneSettings, SerialScaleSettings, SerialScannerSettings};
use storegate_edge::{Edge, Settings};
use storegate_protocol::device::{PosOp, PosResult};
use storegate_protocol::event::{CardToken, Last4};
use storegate_protocol::{Currency, LaneId, Sku, StoreId};
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, DemoProduct};
use crate::devices::{ScaleState, open_pty, scan, serve_scale};
use crate::lane::{DeviceLogin, LaneClient};
use storegate_edge::lan::access::DeviceRole;

/// How the store runs.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Store id.
    pub store: String,
    /// Its bundle (credential, CA, the hub's key and broker address).
    pub bundle: PathBuf,
    /// The hub's broker (`mqtts://host:port`); empty: the bundle's.
    pub upstream: String,
    /// Where the edge keeps its journal.
    pub data_dir: PathBuf,
    /// Lanes (each with a scale and a scanner on ptys).
    pub lanes: usize,
    /// Load the demo catalog into the edge directly (no hub catalog).
    pub local_catalog: bool,
    /// Baskets per lane per minute.
    pub baskets_per_minute: f64,
    /// Share of baskets paid by card.
    pub card_share: f64,
    /// The edge's HTTP listen address.
    pub http_listen: String,
    /// The edge's LAN bus listen address.
    pub lan_listen: String,
    /// Longest pause between reconnection attempts to the hub, ms (the
    /// edge's default if `None`).
    pub reconnect_max_ms: Option<u64>,
}

/// Running totals.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Sales completed.
    pub sales: AtomicU64,
    /// Items scanned or keyed.
    pub items: AtomicU64,
    /// Card payments taken offline.
    pub offline_cards: AtomicU64,
    /// Errors by code.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl StoreStats {
    fn error(&self, code: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code).or_insert(0) += 1;
        }
    }
}

/// A running simulated store.
#[derive(Debug)]
pub struct StoreSim {
    /// Its edge agent.
    pub edge: Edge,
    /// Its totals.
    pub stats: Arc<StoreStats>,
    /// Stops the shoppers and the devices.
    pub stop: CancellationToken,
    /// Stops only the shoppers (the edge and its devices keep running).
    pub shoppers: CancellationToken,
    /// The store's handheld (tasks, scans) on its bus.
    pub handheld: DeviceLogin,
}

/// Starts the store.
pub async fn start(cfg: StoreConfig) -> anyhow::Result<StoreSim> {
    let stop = CancellationToken::new();
    let mut settings = Settings {
        store_id: cfg.store.clone(),
        data_dir: cfg.data_dir.clone(),
        ..Settings::default()
    };
    settings.upstream.bundle = Some(cfg.bundle.clone());
    settings.upstream.url = cfg.upstream.clone();
    settings.http.listen = cfg.http_listen.clone();
    settings.lan.listen = cfg.lan_listen.clone();
    if let Some(ms) = cfg.reconnect_max_ms {
        settings.sync.backoff_max_ms = ms;
    }
    let mut scales = Vec::new();
    let mut scanners = Vec::new();
    let mut tills = Vec::new();
    let (handheld, entry) = DeviceLogin::new(format!("handheld-{}", cfg.store), DeviceRole::Handheld, &[]);
    settings.devices.push(entry);
    for i in 1..=cfg.lanes {
        let lane = i.to_string();
        let (till, entry) = DeviceLogin::new(format!("till-{i}"), DeviceRole::Till, &[lane.as_str()]);
        settings.devices.push(entry);
        tills.push(till);
        let scale = open_pty()?;
        let scanner = open_pty()?;
        let state = Arc::new(ScaleState::default());
        settings.scales.push(SerialScaleSettings {
            id: format!("scale-{i}"),
            path: scale.path.clone(),
            baud: 9600,
        });
        settings.scanners.push(SerialScannerSettings {
            id: format!("scanner-{i}"),
            path: scanner.path.clone(),
            baud: 9600,
            terminator: Terminator::CrLf,
            idle_ms: 60,
        });
        settings.lanes.push(LaneSettings {
            id: i.to_string(),
            scale: Some(format!("scale-{i}")),
            scanner: Some(format!("scanner-{i}")),
        });
        tokio::spawn(serve_scale(scale.master, state.clone(), stop.clone()));
        scales.push(state);
        scanners.push(scanner.master);
    }
    let edge = storegate_edge::start(settings, stop.clone()).await?;
    if cfg.local_catalog {
        edge.journal
            .apply_downlink(catalog::downlink_items(Currency::EUR))
            .await?;
    }
    let stats = Arc::new(StoreStats::default());
    let lan = edge
        .lan_addr
        .ok_or_else(|| anyhow::anyhow!("the edge runs without its LAN bus"))?;
    let store = StoreId::parse(&cfg.store)?;
    // Give the scanner drivers a moment to open their ports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shoppers = stop.child_token();
    for (i, ((scale, scanner), till)) in scales.into_iter().zip(scanners).zip(&tills).enumerate() {
        let lane = LaneClient::connect(lan, &store, &LaneId::parse((i + 1).to_string())?, till).await?;
        tokio::spawn(shopper(
            lane,
            scale,
            scanner,
            cfg.clone(),
            stats.clone(),
            shoppers.clone(),
        ));
    }
    Ok(StoreSim {
        edge,
        stats,
        stop,
        shoppers,
        handheld,
    })
}

async fn shopper(
    mut lane: LaneClient,
    scale: Arc<ScaleState>,
    mut scanner: tokio_serial::SerialStream,
    cfg: StoreConfig,
    stats: Arc<StoreStats>,
    stop: CancellationToken,
) {
    let products = catalog::products();
    let mean = Duration::from_secs_f64(60.0 / cfg.baskets_per_minute.max(0.01));
    loop {
        // Exponential inter-arrival times around the mean.
        let wait = mean.mul_f64(-(1.0 - rand::random::<f64>()).ln());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = basket(&mut lane, &scale, &mut scanner, &products, &cfg, &stats).await {
            stats.error(format!("client: {e}"));
        }
    }
}

async fn basket(
    lane: &mut LaneClient,
    scale: &ScaleState,
    scanner: &mut tokio_serial::SerialStream,
    products: &[DemoProduct],
    cfg: &StoreConfig,
    stats: &StoreStats,
) -> anyhow::Result<()> {
    let items = rand::rng().random_range(1..=8);
    for _ in 0..items {
        let p = &products[rand::rng().random_range(0..products.len())];
        let reply = if p.weighed && rand::random::<bool>() {
            // Weighed at the till: the lane asks its scale.
            scale
                .milligrams
                .store(rand::rng().random_range(200_000..2_000_000), Ordering::Release);
            lane.request(PosOp::AddItem {
                code: None,
                sku: Some(Sku::parse(p.sku)?),
                qty: None,
                grams: None,
            })
            .await?
        } else {
            scan(scanner, &p.code, Terminator::CrLf).await?;
            match lane.unsolicited(Duration::from_secs(10)).await {
                Some(r) => r,
                None => anyhow::bail!("no reply to a scan"),
            }
        };
        match reply.error {
            Some(e) => stats.error(format!("{:?}", e.code)),
            None => {
                stats.items.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let due = match lane.request(PosOp::Totals).await?.result {
        Some(PosResult::Basket(b)) => b.due,
        _ => return Ok(()),
    };
    if due == 0 {
        lane.request(PosOp::CancelBasket).await?;
        return Ok(());
    }
    let paid = if rand::random::<f64>() < cfg.card_share {
        let r = lane
            .request(PosOp::TenderCard {
                token: CardToken::parse(format!("tok_{}", rand::random::<u32>()))?,
                last4: Last4::parse(&format!("{:04}", rand::random::<u16>() % 10_000))?,
                brand: Some("VISA".into()),
                amount: due,
            })
            .await?;
        match (&r.result, &r.error) {
            (Some(PosResult::Basket(b)), _) => {
                if b.tenders.iter().any(|t| t.offline) {
                    stats.offline_cards.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            (_, Some(e)) => {
                stats.error(format!("{:?}", e.code));
                false
            }
            _ => false,
        }
    } else {
        false
    };
    if !paid {
        let cash = (due / 500 + 1) * 500;
        lane.request(PosOp::TenderCash { amount: cash }).await?;
    }
    let started = Instant::now();
    let r = lane.request(PosOp::Complete).await?;
    match r.error {
        Some(e) => stats.error(format!("{:?}", e.code)),
        None => {
            stats.sales.fetch_add(1, Ordering::Relaxed);
            metrics::histogram!("sim_sale_complete_seconds").record(started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
