//! `storegate-sim`: simulators, load generator and benchmarks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use storegate_edge::framing::Terminator;
use storegate_protocol::device::{PosOp, PosResult, ScanMsg};
use storegate_protocol::topic::{DeviceChannel, LanTopic};
use storegate_protocol::{DeviceId, LaneId, StoreId};
use storegate_sim::devices::{ScaleState, open_pty, scan, serve_scale};
use tokio_util::sync::CancellationToken;

/// storegate simulators and benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole chain in one process: a hub, stores with lanes, scales and
    /// scanners, a warehouse, online shoppers, and a WAN cut; live progress.
    Demo(storegate_sim::demo::DemoArgs),
    /// Chain-scale load: the hub and edge agents as processes, hundreds to
    /// thousands of store connections, online shoppers, faults (WAN cuts,
    /// kill -9 of edges and the hub), then the checks.
    Load(storegate_sim::load::LoadArgs),
    /// A Mettler Toledo MT-SICS scale on a pseudo-terminal (prints its path).
    Scale {
        /// Weight on the platter, grams.
        #[arg(long, default_value_t = 1250)]
        grams: i64,
    },
    /// A barcode scanner: on a pseudo-terminal (default) or publishing to an
    /// edge's device bus.
    Scanner {
        /// Codes to scan, in turn (default: the demo catalog's).
        #[arg(long, value_delimiter = ',')]
        codes: Vec<String>,
        /// Pause between scans, ms.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        /// Terminator on the serial line: cr, lf, cr-lf, stx-etx, none.
        #[arg(long, default_value = "cr-lf")]
        terminator: String,
        /// Publish scans to this device bus (host:port) instead of a pty.
        #[arg(long)]
        lan: Option<std::net::SocketAddr>,
        /// Store id, with --lan.
        #[arg(long, default_value = "store-0001")]
        store: String,
        /// Device id, with --lan.
        #[arg(long, default_value = "scanner-sim")]
        device: String,
        /// The device's password on the bus, with --lan (`edge-agent device new` makes one).
        #[arg(long, env = "SG_DEVICE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// A POS lane running baskets from the demo catalog against an edge's device bus.
    Lane {
        /// The edge's device bus, host:port.
        #[arg(long, default_value = "127.0.0.1:1885")]
        lan: std::net::SocketAddr,
        /// Store id.
        #[arg(long, default_value = "store-0001")]
        store: String,
        /// Lane id.
        #[arg(long, default_value = "1")]
        lane: String,
        /// The till's device id on the bus.
        #[arg(long, default_value = "till-1")]
        device: String,
        /// Its password (`edge-agent device new` makes one).
        #[arg(long, env = "SG_DEVICE_PASSWORD", hide_env_values = true)]
        password: String,
        /// Baskets to run.
        #[arg(long, default_value_t = 5)]
        baskets: usize,
    },
    /// A whole store: an edge agent with a scale and scanner on ptys per lane,
    /// and shoppers, against the hub's broker.
    Store {
        /// The store's bundle from `hub store provision` (its credential and
        /// the hub's broker address).
        #[arg(long)]
        bundle: PathBuf,
        /// The hub's broker, if not the one the bundle names.
        #[arg(long, default_value = "")]
        upstream: String,
        /// Store id (must be the bundle's).
        #[arg(long, default_value = "store-0001")]
        store: String,
        /// Lanes.
        #[arg(long, default_value_t = 4)]
        lanes: usize,
        /// Baskets per lane per minute.
        #[arg(long, default_value_t = 6.0)]
        rate: f64,
        /// Journal directory (default: a temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Load the demo catalog into the edge (when the hub has no catalog).
        #[arg(long)]
        local_catalog: bool,
        /// Edge HTTP endpoint.
        #[arg(long, default_value = "127.0.0.1:0")]
        http_listen: String,
        /// Edge device bus.
        #[arg(long, default_value = "127.0.0.1:0")]
        lan_listen: String,
    },
    /// Benchmarks that print figures against this machine's own ceilings.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Every headline figure in one table, each against its ceiling; writes bench/RESULTS.md.
    All(storegate_sim::bench::suite::SuiteArgs),
    /// Edge: durable sale commits at 1/10/50 lanes vs raw SQLite; outbox drain vs raw broker publishes.
    Edge(storegate_sim::bench::edge::EdgeBenchArgs),
    /// Hub: ingest from many stores into PostgreSQL and SQLite vs a raw batch insert.
    Hub(storegate_sim::bench::hub::HubBenchArgs),
    /// POS: scan and completion latency with many busy lanes on one edge.
    Pos(storegate_sim::bench::pos::PosBenchArgs),
    /// Online orders through the REST API: the whole saga, concurrent clients.
    Orders(storegate_sim::bench::orders::OrdersBenchArgs),
    /// WAN trust: drain of many edges and a reconnect storm through Mosquitto, with TLS and signatures vs both off.
    Wan(storegate_sim::bench::wan::WanBenchArgs),
}

fn terminator(s: &str) -> anyhow::Result<Terminator> {
    Ok(match s {
        "cr" => Terminator::Cr,
        "lf" => Terminator::Lf,
        "cr-lf" | "crlf" => Terminator::CrLf,
        "stx-etx" => Terminator::StxEtx,
        "none" => Terminator::None,
        other => anyhow::bail!("unknown terminator {other:?}"),
    })
}

async fn until_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo(args) => storegate_sim::demo::run(args).await,
            Command::Load(args) => storegate_sim::load::run(args).await,
            Command::Bench { which } => match which {
                Bench::All(args) => storegate_sim::bench::suite::run(args).await,
                Bench::Edge(args) => storegate_sim::bench::edge::run(args).await,
                Bench::Hub(args) => storegate_sim::bench::hub::run(args).await,
                Bench::Pos(args) => storegate_sim::bench::pos::run(args).await,
                Bench::Orders(args) => storegate_sim::bench::orders::run(args).await,
                Bench::Wan(args) => storegate_sim::bench::wan::run(args).await,
            },
            Command::Scale { grams } => {
                let pty = open_pty()?;
                println!("MT-SICS scale on {} ({} g on the platter); Ctrl-C to stop", pty.path, grams);
                let state = Arc::new(ScaleState::default());
                state.milligrams.store(grams * 1000, Ordering::Release);
                let stop = CancellationToken::new();
                tokio::spawn(serve_scale(pty.master, state, stop.clone()));
                until_ctrl_c().await;
                stop.cancel();
                Ok(())
            }
            Command::Scanner { codes, every_ms, terminator: t, lan, store, device, password } => {
                let codes = if codes.is_empty() {
                    storegate_sim::catalog::products().into_iter().map(|p| p.code).collect()
                } else {
                    codes
                };
                let every = Duration::from_millis(every_ms);
                match lan {
                    Some(addr) => {
                        let topic = LanTopic::Device(StoreId::parse(store)?, DeviceId::parse(device.as_str())?, DeviceChannel::Scan).to_string();
                        let password = password.ok_or_else(|| anyhow::anyhow!("--lan needs the scanner's --password (or SG_DEVICE_PASSWORD)"))?;
                        let opts = storegate_sim::lane::DeviceLogin { device, password }.options(addr);
                        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
                        tokio::spawn(async move { while el.poll().await.is_ok() {} });
                        for code in codes.iter().cycle() {
                            let msg = ScanMsg { code: code.clone(), symbology: None, lane: None };
                            client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, serde_json::to_vec(&msg)?).await?;
                            println!("scanned {code}");
                            tokio::select! { () = until_ctrl_c() => return Ok(()), () = tokio::time::sleep(every) => {} }
                        }
                        Ok(())
                    }
                    None => {
                        let t = terminator(&t)?;
                        let mut pty = open_pty()?;
                        println!("scanner on {}; Ctrl-C to stop", pty.path);
                        for code in codes.iter().cycle() {
                            scan(&mut pty.master, code, t).await?;
                            tokio::select! { () = until_ctrl_c() => return Ok(()), () = tokio::time::sleep(every) => {} }
                        }
                        Ok(())
                    }
                }
            }
            Command::Lane { lan, store, lane, baskets, device, password } => {
                let login = storegate_sim::lane::DeviceLogin { device, password };
                let mut client = storegate_sim::lane::LaneClient::connect(lan, &StoreId::parse(store)?, &LaneId::parse(lane)?, &login).await?;
                let products = storegate_sim::catalog::products();
                for b in 0..baskets {
                    for k in 0..3 {
                        let p = &products[(b * 3 + k) % products.len()];
                        let r = client.request(PosOp::AddItem { code: Some(p.code.clone()), sku: None, qty: None, grams: None }).await?;
                        if let Some(e) = r.error {
                            println!("  {}: {:?} {}", p.sku, e.code, e.message);
                        }
                    }
                    let due = match client.request(PosOp::Totals).await?.result {
                        Some(PosResult::Basket(b)) => b.due,
                        _ => 0,
                    };
                    client.request(PosOp::TenderCash { amount: due }).await?;
                    match client.request(PosOp::Complete).await? {
                        r if r.ok => {
                            if let Some(PosResult::Sale(s)) = r.result {
                                println!("sale {} seq {} total {} {}", s.sale_id, s.seq, s.total, s.currency);
                            }
                        }
                        r => println!("complete failed: {:?}", r.error),
                    }
                }
                Ok(())
            }
            Command::Store { bundle, upstream, store, lanes, rate, data_dir, local_catalog, http_listen, lan_listen } => {
                let tmp = tempfile::tempdir()?;
                let sim = storegate_sim::store::start(storegate_sim::store::StoreConfig {
                    store: store.clone(),
                    bundle,
                    upstream,
                    data_dir: data_dir.unwrap_or_else(|| tmp.path().to_path_buf()),
                    lanes,
                    local_catalog,
                    baskets_per_minute: rate,
                    card_share: 0.6,
                    http_listen,
                    lan_listen,
                    reconnect_max_ms: None,
                })
                .await?;
                println!(
                    "store {store}: status http://{}/status, device bus {:?}; Ctrl-C to stop",
                    sim.edge.http_addr, sim.edge.lan_addr
                );
                loop {
                    tokio::select! {
                        () = until_ctrl_c() => break,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                    let st = sim.edge.journal.stats();
                    println!(
                        "sales {:>6}  items {:>7}  offline cards {:>4}  outbox {:>6}  acked {:>7}  errors {:?}",
                        sim.stats.sales.load(Ordering::Relaxed),
                        sim.stats.items.load(Ordering::Relaxed),
                        sim.stats.offline_cards.load(Ordering::Relaxed),
                        st.outbox_depth,
                        st.acked_up_to,
                        sim.stats.errors.lock().map(|e| e.clone()).unwrap_or_default()
                    );
                }
                sim.stop.cancel();
                sim.edge.stopped().await;
                Ok(())
            }
        }
    })
}
