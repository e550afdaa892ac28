//! `storegate-sim bench wan`: what WAN trust costs, measured against the
//! same runs with it off, in one run of this command.
//!
//! - **Drain**: `--edges` real edge agents (in this process), each holding
//!   a backlog of `--backlog` sales in its real journal, come back at once
//!   and drain into a hub on PostgreSQL. Secure: TLS to the embedded
//!   broker's gate with client certificates, every message signed and
//!   checked. Plain: plain MQTT on loopback, unsigned (`insecure_unsigned`
//!   on both sides). The same journals (copied) in both runs.
//! - **Reconnect storm**: `--storm-stores` virtual stores sell for
//!   `--storm-sell-secs` through a Mosquitto; then Mosquitto is killed
//!   (SIGKILL, every session lost) and started again, and the time until
//!   every store has reconnected and everything it sold is committed at
//!   the hub is measured. Secure: Mosquitto with the shipped TLS config
//!   and ACL (`broker-config/mosquitto.conf`), TLS with client
//!   certificates, signed messages; plain: anonymous Mosquitto, unsigned.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use storegate_edge::journal::Journal;
use storegate_edge::settings::JournalSettings;
use storegate_edge::trust::EdgeTrust;
use storegate_hub::pki;
use storegate_protocol::{Currency, StoreId};
use tokio_util::sync::CancellationToken;

use crate::procs::Mosquitto;
use crate::vstore::{self, VStats, VStoreConfig};

/// Options of `bench wan`.
#[derive(Debug, Clone, clap::Args)]
pub struct WanBenchArgs {
    /// Edge agents draining a backlog.
    #[arg(long, default_value_t = 100)]
    pub edges: usize,
    /// Sales in each edge's backlog (1080: an hour at the Black Friday
    /// peak of 0.3 sales/s, as `bench all`'s catch-up).
    #[arg(long, default_value_t = 1080)]
    pub backlog: usize,
    /// Lines per sale.
    #[arg(long, default_value_t = 4)]
    pub lines: usize,
    /// Virtual stores in the reconnect storm.
    #[arg(long, default_value_t = 1000)]
    pub storm_stores: usize,
    /// Sales per store per second before the broker restarts.
    #[arg(long, default_value_t = 0.2)]
    pub storm_rate: f64,
    /// Seconds the stores sell before the broker is killed (each store's
    /// first sale comes within 1/rate seconds).
    #[arg(long, default_value_t = 10)]
    pub storm_sell_secs: u64,
    /// Parts to run: drain, storm.
    #[arg(long, value_delimiter = ',', default_value = "drain,storm")]
    pub parts: Vec<String>,
}

/// With or without WAN trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// TLS with client certificates, signed messages.
    Secure,
    /// Plain MQTT on loopback, unsigned messages.
    Plain,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Secure => "TLS + signatures",
            Mode::Plain => "plain, unsigned",
        }
    }
}

/// Runs the benchmark and prints its table.
pub async fn run(args: WanBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut lines = Vec::new();
    if args.parts.iter().any(|p| p == "drain") {
        let total = args.edges * args.backlog;
        println!("drain: recording {} sales in {} journals ...", total, args.edges);
        let base = dir.path().join("journals");
        for i in 0..args.edges {
            let d = base.join(format!("drain-{i:04}"));
            std::fs::create_dir_all(&d)?;
            let (journal, writer) =
                Journal::open(&d.join("journal.db"), &JournalSettings::default(), Currency::EUR).await?;
            super::edge::fill(&journal, args.backlog, args.lines).await?;
            drop(journal);
            writer.await?;
        }
        let mut rates = Vec::new();
        for mode in [Mode::Plain, Mode::Secure] {
            let (rate, took) = drain(dir.path(), &base, &args, mode).await?;
            println!(
                "  {:<18} {rate:>9.0} events/s ({:.1} s)",
                mode.name(),
                took.as_secs_f64()
            );
            rates.push(rate);
        }
        let ratio = rates[1] / rates[0];
        lines.push(format!(
            "| drain, {} edges -> hub (PostgreSQL), {} events | {:.0} events/s | {:.0} events/s | {ratio:.2} | >= 0.8 | {} |",
            args.edges,
            total,
            rates[1],
            rates[0],
            if ratio >= 0.8 { "met" } else { "missed" }
        ));
    }
    if args.parts.iter().any(|p| p == "storm") {
        anyhow::ensure!(
            Mosquitto::binary().is_some(),
            "the storm needs mosquitto (apt-get install mosquitto)"
        );
        println!(
            "reconnect storm: {} stores through Mosquitto, killed and restarted ...",
            args.storm_stores
        );
        let mut took = Vec::new();
        for mode in [Mode::Plain, Mode::Secure] {
            let (t, sales) = storm(dir.path(), &args, mode).await?;
            println!(
                "  {:<18} all {} stores synced {:.1} s after the restart ({sales} sales)",
                mode.name(),
                args.storm_stores,
                t.as_secs_f64()
            );
            took.push(t);
        }
        lines.push(format!(
            "| reconnect storm, {} stores, Mosquitto killed and restarted | {:.1} s to all synced | {:.1} s | {:.2} | <= 30 s | {} |",
            args.storm_stores,
            took[1].as_secs_f64(),
            took[0].as_secs_f64(),
            took[1].as_secs_f64() / took[0].as_secs_f64().max(0.001),
            if took[1] <= Duration::from_secs(30) { "met" } else { "missed" }
        ));
    }
    println!();
    println!("| figure | with TLS + signatures | same run, both off | ratio | goal | verdict |");
    println!("|---|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Hub settings for a bench hub in `dir` on `url`.
fn hub_settings(dir: &Path, url: &str, mode: Mode) -> storegate_hub::Settings {
    let mut s = storegate_hub::Settings {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    s.database.url = url.to_owned();
    s.database.max_connections = 12;
    s.broker.listen = "127.0.0.1:0".into();
    s.api.listen = "127.0.0.1:0".into();
    s.wan.insecure_unsigned = mode == Mode::Plain;
    s
}

async fn ready(hub: &storegate_hub::Hub) {
    while !hub.link.subscribed.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn drain(dir: &Path, base: &Path, args: &WanBenchArgs, mode: Mode) -> anyhow::Result<(f64, Duration)> {
    let run = dir.join(format!("drain-{mode:?}"));
    let url = crate::pg::fresh_database("sg_bench_wan").await?;
    let mut settings = hub_settings(&run.join("hub"), &url, mode);
    if mode == Mode::Secure {
        settings.broker.tls_listen = Some("127.0.0.1:0".into());
    }
    let stop = CancellationToken::new();
    let hub = storegate_hub::start(settings, stop.clone()).await?;
    ready(&hub).await;
    super::hub::seed_sample_catalog(&hub.db, args.lines).await?;
    let mut edges = Vec::new();
    let shutdown = CancellationToken::new();
    let total = args.edges * args.backlog;
    for i in 0..args.edges {
        let id = StoreId::parse(format!("drain-{i:04}"))?;
        let d = run.join(id.as_str());
        copy_dir(&base.join(id.as_str()), &d)?;
        let mut s = storegate_edge::Settings {
            store_id: id.to_string(),
            data_dir: d.clone(),
            ..Default::default()
        };
        match mode {
            Mode::Secure => {
                let tls = hub.tls_addr.context("TLS listener")?;
                s.upstream.bundle =
                    Some(crate::trust::bundle_at_hub(&hub, &id, &format!("mqtts://{tls}"), &d).await?);
            }
            Mode::Plain => {
                s.upstream.insecure_unsigned = true;
                s.upstream.url = format!("mqtt://{}", hub.broker_addr);
            }
        }
        s.http.listen = "127.0.0.1:0".into();
        s.lan.enabled = false;
        edges.push(s);
    }
    // Provisioned ahead, as stores are: every hub replica's view has them.
    hub.trust.registry().refresh().await?;
    // Provisioned ahead, as stores are: every hub replica's view has them.
    hub.trust.registry().refresh().await?;
    let start = Instant::now();
    let mut running = Vec::new();
    for s in edges {
        running.push(storegate_edge::start(s, shutdown.child_token()).await?);
    }
    loop {
        let synced: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(SUM(hwm), 0) AS BIGINT) FROM store_sync")
            .fetch_one(&hub.db.pool)
            .await?;
        if synced as usize >= total {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "drain did not finish in 30 min ({synced}/{total})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    shutdown.cancel();
    for e in running {
        e.stopped().await;
    }
    stop.cancel();
    hub.stop().await;
    crate::pg::drop_database(&url).await;
    let _ = std::fs::remove_dir_all(&run);
    Ok((total as f64 / took.as_secs_f64(), took))
}

/// Makes the PKI and the files the shipped Mosquitto config reads.
fn mosquitto_files(run: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let pki_dir = pki::PkiDir(run.join("pki"));
    pki::init(&pki_dir, "bench chain", &[], "hub-1")?;
    let ca = pki::Ca::load(&pki_dir)?;
    let etc = run.join("etc");
    std::fs::create_dir_all(&etc)?;
    let server = ca.issue("mqtt.bench", &["127.0.0.1".into()], pki::Usage::Server, 30)?;
    std::fs::write(etc.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(etc.join("broker.pem"), &server.cert_pem)?;
    std::fs::write(etc.join("broker.key"), &server.key_pem)?;
    std::fs::write(etc.join("crl.pem"), ca.crl(&[], 1, 30)?)?;
    std::fs::write(etc.join("acl"), storegate_broker::MOSQUITTO_ACL)?;
    Ok((pki_dir.0, etc))
}

async fn storm(dir: &Path, args: &WanBenchArgs, mode: Mode) -> anyhow::Result<(Duration, u64)> {
    let run = dir.join(format!("storm-{mode:?}"));
    std::fs::create_dir_all(&run)?;
    let (pki_dir, etc) = mosquitto_files(&run)?;
    let mut mosquitto = match mode {
        Mode::Secure => Mosquitto::start_shipped(&etc).await?,
        Mode::Plain => Mosquitto::start(&run).await?,
    };
    let url = crate::pg::fresh_database("sg_bench_storm").await?;
    let mut settings = hub_settings(&run.join("hub"), &url, mode);
    settings.wan.pki_dir = Some(pki_dir);
    settings.broker.client_id = "hub-1".into();
    settings.broker.url = match mode {
        Mode::Secure => format!("mqtts://{}", mosquitto.addr),
        Mode::Plain => format!("mqtt://{}", mosquitto.addr),
    };
    let stop = CancellationToken::new();
    let hub = storegate_hub::start(settings, stop.clone()).await?;
    ready(&hub).await;
    super::hub::seed_sample_catalog(&hub.db, 6).await?;

    let mut stores = Vec::with_capacity(args.storm_stores);
    for i in 0..args.storm_stores {
        let id = StoreId::parse(format!("storm-{i:05}"))?;
        let trust = match mode {
            Mode::Secure => {
                let bundle = crate::trust::provision_at_hub(
                    &hub.db,
                    &hub.pki_dir,
                    &id,
                    &format!("mqtts://{}", mosquitto.addr),
                )
                .await?;
                Arc::new(EdgeTrust::from_bundle(&bundle)?)
            }
            Mode::Plain => Arc::new(EdgeTrust::unsigned(id.clone())),
        };
        stores.push((id, trust));
    }
    hub.trust.registry().refresh().await?;
    hub.trust.registry().refresh().await?;
    let stats = Arc::new(VStats::default());
    let vstop = CancellationToken::new();
    let start = Instant::now();
    let sell_until = start + Duration::from_secs(args.storm_sell_secs);
    let mut tasks = Vec::new();
    for (i, (store, trust)) in stores.into_iter().enumerate() {
        let cfg = VStoreConfig {
            store,
            broker: mosquitto.addr,
            tls: mode == Mode::Secure,
            trust,
            rate: args.storm_rate,
            lines: (2, 6),
            window: 16,
            measure_from: start,
            sell_until,
        };
        tasks.push(tokio::spawn(vstore::run(
            cfg,
            i as u64,
            stats.clone(),
            vstop.clone(),
        )));
    }
    tokio::time::sleep_until(sell_until.into()).await;
    // Every store is one the hub knows (it has synced before), as in a
    // running chain; what is in flight now is what the storm must recover.
    let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM store_sync WHERE hwm > 0")
        .fetch_one(&hub.db.pool)
        .await?;
    anyhow::ensure!(
        known as usize == args.storm_stores,
        "only {known} of {} stores synced before the restart: raise --storm-sell-secs",
        args.storm_stores
    );
    mosquitto.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    mosquitto.restart().await?;
    let restarted = Instant::now();
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(300), all).await;
    let took = restarted.elapsed();
    vstop.cancel();
    let sales = stats.sent.load(Ordering::Relaxed);
    let acked = stats.acked.load(Ordering::Relaxed);
    anyhow::ensure!(
        finished.is_ok() && acked == sales,
        "{}: not every store synced within 300 s ({acked}/{sales})",
        mode.name()
    );
    stop.cancel();
    hub.stop().await;
    mosquitto.kill().await;
    crate::pg::drop_database(&url).await;
    Ok((took, sales))
}
