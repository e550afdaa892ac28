//! `storegate-sim bench all`: every headline figure of storegate in one
//! table, each next to the ceiling of this machine it is compared with,
//! measured in the same run; written to `bench/RESULTS.md` too.
//!
//! 1. Edge sale commit at 50 lanes vs raw SQLite durable commits.
//! 2. Order saga through the REST API (PostgreSQL) vs an authenticated
//!    one-row route with the same clients.
//! 3. Catch-up: stores each holding a backlog of peak sales (recorded in
//!    their real journals while offline) come back at once and drain into
//!    the hub on PostgreSQL, vs a raw `INSERT .. ON CONFLICT DO NOTHING` of
//!    the same number of event rows into the same server.
//! 4. Sustained load: many store connections at a fixed total event rate
//!    (virtual stores, see [`crate::vstore`]), p99 sale -> committed at the
//!    hub (stock moved), vs the round trip of a same-sized QoS 1 message
//!    through the same broker at the same rate and connection count.
//! 5. Edge agent RSS with lanes selling (the real binary), vs the same
//!    agent idle; the release binary's size.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use storegate_edge::journal::Journal;
use storegate_edge::settings::JournalSettings;
use storegate_protocol::device::{PosOp, PosResult};
use storegate_protocol::event::EventBody;
use storegate_protocol::{Currency, LaneId, StoreId, samples};
use tokio_util::sync::CancellationToken;

use crate::stats::{Latency, ms};
use crate::vstore::{self, VStats, VStoreConfig};

/// Options of `bench all`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Stores coming back with a backlog (catch-up).
    #[arg(long, default_value_t = 100)]
    pub catchup_stores: usize,
    /// Seconds of peak selling each store holds in its backlog.
    #[arg(long, default_value_t = 3600)]
    pub backlog_secs: u64,
    /// Peak sales per store per second (Black Friday).
    #[arg(long, default_value_t = 0.3)]
    pub peak_rate: f64,
    /// Lines per sale.
    #[arg(long, default_value_t = 4)]
    pub lines: usize,
    /// Store connections for the sustained load.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Total events per second of the sustained load.
    #[arg(long, default_value_t = 10_000.0)]
    pub events_per_sec: f64,
    /// Seconds of sustained load (the first 5 are warm-up).
    #[arg(long, default_value_t = 30)]
    pub sustain_secs: u64,
    /// Online orders for the saga figure.
    #[arg(long, default_value_t = 3000)]
    pub orders: usize,
    /// Concurrent order clients.
    #[arg(long, default_value_t = 32)]
    pub order_clients: usize,
    /// Lanes selling on the edge whose memory is measured.
    #[arg(long, default_value_t = 20)]
    pub rss_lanes: usize,
    /// Seconds they sell before memory is read.
    #[arg(long, default_value_t = 20)]
    pub rss_secs: u64,
    /// The hub's broker for the sustained figures (`mqtt://host:port`, e.g.
    /// Mosquitto); default: the hub's embedded rumqttd.
    #[arg(long)]
    pub broker: Option<String>,
    /// Parts to skip: edge, orders, catchup, sustained, memory (the table
    /// is then partial; it is written to `--out` all the same).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Where the results table is written (Markdown).
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
}

struct Row {
    figure: String,
    value: String,
    ceiling: String,
    ratio: String,
    goal: String,
    verdict: &'static str,
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// Runs every measurement, prints the table and writes it to `args.out`.
pub async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let dir = tempfile::tempdir()?;
    println!("storegate benchmark suite; each figure next to a ceiling measured in this run\n");
    let _cluster = crate::pg::own_cluster_or_say().await;

    let run = |part: &str| !args.skip.iter().any(|s| s == part);
    if run("edge") {
        println!("[1/5] edge sale commits at 50 lanes vs raw SQLite ...");
        rows.extend(edge_commit(dir.path(), args.lines).await?);
    }
    if run("orders") {
        println!("[2/5] order saga through the REST API on PostgreSQL ...");
        rows.extend(orders(&args).await?);
    }
    if run("catchup") {
        println!(
            "[3/5] catch-up: {} stores x {} s of peak backlog into PostgreSQL ...",
            args.catchup_stores, args.backlog_secs
        );
        rows.extend(catch_up(dir.path(), &args).await?);
    }
    if run("sustained") {
        println!(
            "[4/5] sustained load: {} store connections at {:.0} events/s ...",
            args.connections, args.events_per_sec
        );
        rows.extend(sustained(dir.path(), &args, args.events_per_sec, "").await?);
        let peak = args.peak_rate * args.connections as f64;
        println!(
            "[4/5] sustained load: {} store connections at the peak rate, {peak:.0} sales/s ...",
            args.connections
        );
        rows.extend(sustained(dir.path(), &args, peak, " at peak").await?);
    }
    if run("memory") {
        println!(
            "[5/5] edge agent memory with {} lanes selling; binary size ...",
            args.rss_lanes
        );
        rows.extend(edge_memory(dir.path(), &args).await?);
    }

    let table = table(&rows);
    println!("\n{table}");
    let machine = machine().await;
    let mut doc = String::new();
    let _ = writeln!(doc, "# storegate benchmark results\n");
    let _ = writeln!(
        doc,
        "Written by `cargo run --release -p storegate-sim -- bench all` (took {:.0} s). \
         Every figure is compared with a ceiling of the same machine measured in the same run; \
         the machine is shared and noisy, so ratios mean more than absolute numbers. \
         Goals are those of the issue that built each part.\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(doc, "{machine}\n");
    let _ = writeln!(doc, "{table}");
    let _ = writeln!(
        doc,
        "\nHow each is measured: see `simulators/src/bench/suite.rs` (module docs); the \
         single-area benchmarks (`bench edge`, `bench hub`, `bench pos`, `bench orders`) \
         give more detail on each."
    );
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&args.out, doc).with_context(|| format!("writing {}", args.out.display()))?;
    println!("written to {}", args.out.display());
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| figure | measured | ceiling (same run) | ratio | goal | |");
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.value, r.ceiling, r.ratio, r.goal, r.verdict
        );
    }
    t
}

async fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GB", kb as f64 / 1_048_576.0));
    let pg = async {
        let url = crate::pg::server_url();
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.ok()?;
        let v: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&pool)
            .await
            .ok()?;
        pool.close().await;
        Some(v)
    }
    .await
    .unwrap_or_else(|| "PostgreSQL unreachable".into());
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("Machine: {cpus} cores ({model}), {mem} RAM; {pg}; run at {date}.")
}

async fn edge_commit(dir: &Path, lines: usize) -> anyhow::Result<Vec<Row>> {
    let row_bytes = storegate_protocol::envelope::encode_event(&samples::event(
        1,
        EventBody::Sale(samples::cash_sale(lines)),
    ))
    .len();
    let (raw_rate, raw_lat) = super::edge::raw_sqlite(dir, 3.0, row_bytes).await?;
    let (rate, lat, per_fsync) = super::edge::journal_lanes(dir, 50, 3.0, lines).await?;
    Ok(vec![Row {
        figure: "edge sale commit, 50 lanes (closed loop)".into(),
        value: format!(
            "p99 {} ms, p50 {} ms; {rate:.0} sales/s ({per_fsync:.1}/fsync)",
            ms(lat.p99),
            ms(lat.p50)
        ),
        ceiling: format!(
            "raw SQLite 1 row/txn: {raw_rate:.0}/s, p99 {} ms",
            ms(raw_lat.p99)
        ),
        ratio: format!("{:.2}x rate", rate / raw_rate),
        goal: "p99 <= 5 ms at >= 2x the raw rate".into(),
        verdict: verdict(lat.p99 <= Duration::from_millis(5) && rate >= 2.0 * raw_rate),
    }])
}

async fn orders(args: &SuiteArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    // A catalogue of 1000 products, then the worst case: every order buys
    // the same two (their level rows are the only ones reserved).
    for (skus, what) in [(1000, "1000 products"), (2, "every order the same 2 products")] {
        rows.push(orders_row(args, skus, what).await?);
    }
    Ok(rows)
}

async fn orders_row(args: &SuiteArgs, skus: usize, what: &str) -> anyhow::Result<Row> {
    let o = super::orders::OrdersBenchArgs {
        orders: args.orders,
        clients: args.order_clients,
        lines: 2,
        skus,
        warehouses: 3,
        connections: 24,
        backends: vec!["postgres".into()],
        group_max: 64,
        group_workers: 4,
        provider_ms: 0,
    };
    let f = super::orders::measure(&o, "postgres").await?;
    anyhow::ensure!(f.failed == 0, "orders failed: {:?}", f.first_error);
    Ok(Row {
        figure: format!(
            "order saga, REST, PostgreSQL, {} clients, 2-line orders, {what}",
            args.order_clients
        ),
        value: format!(
            "{:.0} orders/s, p99 {} ms, p50 {} ms; {}",
            f.rate,
            ms(f.lat.p99),
            ms(f.lat.p50),
            f.statements.map_or_else(
                || "statements not counted".to_owned(),
                |s| s.per(args.orders) + " per order"
            )
        ),
        ceiling: format!(
            "GET /api/v1/auth/me: {:.0} req/s, p99 {} ms",
            f.ceiling_rate,
            ms(f.ceiling.p99)
        ),
        ratio: format!("{:.2}", f.rate / f.ceiling_rate),
        goal: ">= 0.5 of the ceiling's rate, p99 <= 50 ms, <= 6 statements per order".into(),
        verdict: verdict(
            f.rate >= 0.5 * f.ceiling_rate
                && f.lat.p99 <= Duration::from_millis(50)
                && f.statements
                    .is_some_and(|s| s.all as f64 <= 6.0 * args.orders as f64),
        ),
    })
}

async fn hub_on(
    url: &str,
    dir: &Path,
    workers: usize,
    broker: Option<&str>,
) -> anyhow::Result<(storegate_hub::Hub, CancellationToken)> {
    let mut settings = storegate_hub::Settings {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    settings.database.url = url.to_owned();
    settings.database.max_connections = workers as u32 + 8;
    settings.broker.listen = "127.0.0.1:0".into();
    settings.api.listen = "127.0.0.1:0".into();
    settings.ingest.workers = workers;
    if let Some(b) = broker {
        settings.broker.url = b.to_owned();
        // A fresh client id with a clean session: a persistent session
        // left by an earlier run would keep its share of the shared
        // subscription and queue messages for a hub that is gone.
        settings.broker.client_id = format!("hub-bench-{}", rand::random::<u32>());
        settings.broker.clean_session = Some(true);
    }
    settings.auth.bootstrap_admin_email = Some("admin@example.com".into());
    settings.auth.bootstrap_admin_password = Some("bench admin password".into());
    let stop = CancellationToken::new();
    let hub = storegate_hub::start(settings, stop.clone()).await?;
    while !hub.link.subscribed.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((hub, stop))
}

async fn catch_up(dir: &Path, args: &SuiteArgs) -> anyhow::Result<Vec<Row>> {
    let per_store = (args.backlog_secs as f64 * args.peak_rate).round() as usize;
    let total = per_store * args.catchup_stores;
    // The backlogs, recorded in each store's real journal while offline.
    let stores: Vec<PathBuf> = (0..args.catchup_stores)
        .map(|i| dir.join(format!("catchup-{i:04}")))
        .collect();
    let fill_start = Instant::now();
    // One store after the other; each fill writes from 64 lanes at once.
    for d in &stores {
        std::fs::create_dir_all(d)?;
        let (journal, writer) =
            Journal::open(&d.join("journal.db"), &JournalSettings::default(), Currency::EUR).await?;
        super::edge::fill(&journal, per_store, args.lines).await?;
        drop(journal);
        writer.await?;
    }
    println!(
        "      backlogs recorded: {total} sales in {:.0} s",
        fill_start.elapsed().as_secs_f64()
    );

    // Ceiling: the same number of event rows, raw.
    let hub_args = super::hub::HubBenchArgs {
        stores: args.catchup_stores,
        events: total,
        batch: 500,
        lines: args.lines,
        workers: 4,
        backends: vec!["postgres".into()],
    };
    let work = super::hub::workload(&hub_args)?;
    let raw_url = crate::pg::fresh_database("sg_bench_raw").await?;
    let (raw_n, raw_took) = super::hub::raw_ceiling(&raw_url, &hub_args, &work).await?;
    crate::pg::drop_database(&raw_url).await;
    drop(work);
    let raw_rate = raw_n as f64 / raw_took.as_secs_f64();

    let url = crate::pg::fresh_database("sg_bench_catchup").await?;
    let (hub, hub_stop) = hub_on(&url, dir, 4, None).await?;
    super::hub::seed_sample_catalog(&hub.db, args.lines).await?;
    let broker = hub.broker_addr.clone();
    // Every store provisioned ahead, as in a chain.
    let mut settings = Vec::new();
    for (i, d) in stores.iter().enumerate() {
        let store = StoreId::parse(format!("catchup-{i:04}"))?;
        let bundle = crate::trust::bundle_at_hub(&hub, &store, &format!("mqtt://{broker}"), d).await?;
        let mut s = storegate_edge::Settings {
            store_id: store.to_string(),
            data_dir: d.clone(),
            ..Default::default()
        };
        s.upstream.bundle = Some(bundle);
        s.http.listen = "127.0.0.1:0".into();
        s.lan.enabled = false;
        settings.push(s);
    }
    hub.trust.registry().refresh().await?;
    let counting = crate::pg::reset_statements(&url).await;
    let start = Instant::now();
    let mut edges = Vec::new();
    let shutdown = CancellationToken::new();
    for s in settings {
        edges.push(storegate_edge::start(s, shutdown.child_token()).await?);
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
            "catch-up did not finish in 30 min ({synced}/{total})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&hub.db.pool)
        .await?;
    anyhow::ensure!(stored as usize == total, "hub holds {stored} events of {total}");
    let statements = if counting {
        crate::pg::statements(&url).await
    } else {
        None
    };
    if statements.is_some() {
        println!("      the statements run most often, per event:");
        for (calls, text) in crate::pg::top_statements(&url, 12).await {
            println!("      {:>8.4}  {text}", calls as f64 / total.max(1) as f64);
        }
    }
    shutdown.cancel();
    for e in edges {
        e.stopped().await;
    }
    hub_stop.cancel();
    hub.stop().await;
    crate::pg::drop_database(&url).await;
    let rate = total as f64 / took.as_secs_f64();
    Ok(vec![
        Row {
            figure: format!(
                "sync drain edge -> hub (PostgreSQL), {} edges",
                args.catchup_stores
            ),
            value: format!(
                "{rate:.0} events/s; {}",
                statements.map_or_else(
                    || "statements not counted".to_owned(),
                    |s| s.per(total) + " per event"
                )
            ),
            ceiling: format!("raw INSERT .. ON CONFLICT DO NOTHING, 500/stmt: {raw_rate:.0} rows/s"),
            ratio: format!("{:.2}", rate / raw_rate),
            goal: ">= 0.5 of raw".into(),
            verdict: verdict(rate / raw_rate >= 0.5),
        },
        Row {
            figure: format!(
                "catch-up: {} stores x {} s of peak backlog ({total} sales of {} lines)",
                args.catchup_stores, args.backlog_secs, args.lines
            ),
            value: format!("{:.1} s to all synced", took.as_secs_f64()),
            ceiling: format!("raw insert of as many rows: {:.1} s", raw_took.as_secs_f64()),
            ratio: format!("{:.2}", raw_took.as_secs_f64() / took.as_secs_f64()),
            goal: "(none set) faster than the backlog took".into(),
            verdict: verdict(took.as_secs() < args.backlog_secs),
        },
    ])
}

/// Round trips of `bytes`-sized QoS 1 messages through `broker` from
/// `connections` clients at `rate` messages/s in all, each to itself.
async fn echo(
    broker: SocketAddr,
    connections: usize,
    rate: f64,
    secs: u64,
    bytes: usize,
) -> anyhow::Result<Latency> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(5);
    let until = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut opts = MqttOptions::new(format!("echo-{i}"), broker.ip().to_string(), broker.port());
            opts.set_keep_alive(Duration::from_secs(15))
                .set_max_packet_size(4 << 20, 4 << 20);
            let (client, mut eventloop) = AsyncClient::new(opts, 256);
            let mut net = eventloop.network_options();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
            let topic = format!("bench/echo/{i}");
            let mean = Duration::from_secs_f64(connections as f64 / rate);
            let mut next = Instant::now() + mean.mul_f64(rand::random::<f64>());
            let mut lat = Vec::new();
            let mut sent: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
            let mut n = 0u64;
            let mut ready = false;
            loop {
                if Instant::now() > until + Duration::from_secs(5)
                    || (Instant::now() > until && sent.is_empty())
                {
                    return lat;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()), if ready && Instant::now() < until => {
                        let mut payload = vec![0u8; bytes.max(8)];
                        payload[..8].copy_from_slice(&n.to_be_bytes());
                        sent.insert(n, Instant::now());
                        n += 1;
                        let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, payload);
                        next += mean.mul_f64(-(1.0 - rand::random::<f64>()).ln());
                    }
                    ev = eventloop.poll() => match ev {
                        Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                        }
                        Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                            ready = true;
                            next = Instant::now() + mean.mul_f64(rand::random::<f64>());
                        }
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.payload.len() >= 8 => {
                            let mut k = [0u8; 8];
                            k.copy_from_slice(&p.payload[..8]);
                            if let Some(at) = sent.remove(&u64::from_be_bytes(k))
                                && at >= measure_from
                            {
                                lat.push(at.elapsed());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    Ok(Latency::of(&mut all))
}

async fn sustained(
    dir: &Path,
    args: &SuiteArgs,
    events_per_sec: f64,
    label: &str,
) -> anyhow::Result<Vec<Row>> {
    let one_sale = {
        let (key, _) =
            storegate_protocol::seal::SigningKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = storegate_protocol::envelope::encode_body(
            &storegate_protocol::envelope::Message::UpBatch(samples::sale_batch(1, args.lines)),
        );
        storegate_protocol::seal::seal(&key, "sg/v1/store/load-00000/up", &body).len()
    };
    // Ceiling: the same connections and rate through the same kind of
    // broker: an embedded rumqttd configured as the hub's, or the external one.
    let broker = match &args.broker {
        Some(url) => {
            let hostport = url.trim_start_matches("mqtt://");
            tokio::net::lookup_host(hostport)
                .await?
                .next()
                .with_context(|| format!("resolving {url}"))?
        }
        None => {
            let config = storegate_broker::load_config(None, storegate_broker::HUB_CONFIG)?;
            storegate_broker::start_embedded(config, "127.0.0.1:0".parse()?, "bench")?
        }
    };
    let ceiling = echo(
        broker,
        args.connections,
        events_per_sec,
        args.sustain_secs,
        one_sale,
    )
    .await?;

    let url = crate::pg::fresh_database("sg_bench_sustained").await?;
    let (hub, hub_stop) = hub_on(&url, dir, 4, args.broker.as_deref()).await?;
    super::hub::seed_sample_catalog(&hub.db, 6).await?;
    let broker: SocketAddr = hub.broker_addr.parse()?;
    let mut trusts = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let store = StoreId::parse(format!("load-{i:05}"))?;
        let bundle =
            crate::trust::provision_at_hub(&hub.db, &hub.pki_dir, &store, &format!("mqtt://{broker}"))
                .await?;
        trusts.push((
            store,
            Arc::new(storegate_edge::trust::EdgeTrust::from_bundle(&bundle)?),
        ));
    }
    // Provisioned ahead, as stores are: the hub's view has them all.
    hub.trust.registry().refresh().await?;
    let stats = Arc::new(VStats::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(5);
    let sell_until = start + Duration::from_secs(args.sustain_secs);
    let mut tasks = Vec::new();
    for (i, (store, trust)) in trusts.into_iter().enumerate() {
        let cfg = VStoreConfig {
            store,
            broker,
            tls: false,
            trust,
            rate: events_per_sec / args.connections as f64,
            lines: (2, 6),
            window: 16,
            measure_from,
            sell_until,
        };
        tasks.push(tokio::spawn(vstore::run(
            cfg,
            i as u64,
            stats.clone(),
            stop.clone(),
        )));
    }
    let deadline = tokio::time::sleep_until((sell_until + Duration::from_secs(60)).into());
    tokio::pin!(deadline);
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::select! {
        () = all => {}
        () = &mut deadline => stop.cancel(),
    }
    let sent = stats.sent.load(Ordering::Relaxed);
    let acked = stats.acked.load(Ordering::Relaxed);
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&hub.db.pool)
        .await?;
    let lat = stats
        .latencies
        .lock()
        .map(|mut l| Latency::of(&mut l))
        .unwrap_or_default();
    stop.cancel();
    hub_stop.cancel();
    hub.stop().await;
    crate::pg::drop_database(&url).await;
    let rate = sent as f64 / args.sustain_secs as f64;
    println!(
        "      {sent} sales sent ({rate:.0}/s), {acked} acked, {stored} stored at the hub, {} resends",
        stats.resent.load(Ordering::Relaxed)
    );
    let behind = if acked == sent && stored as u64 == sent {
        String::new()
    } else {
        format!(
            " ({} of {sent} not acked 60 s after the load stopped, {stored} stored)",
            sent - acked
        )
    };
    Ok(vec![Row {
        figure: format!(
            "sustained{label}: {} store connections, {events_per_sec:.0} sales/s offered (2-6 lines), {}",
            args.connections,
            args.broker.as_deref().unwrap_or("embedded rumqttd")
        ),
        value: format!(
            "sale -> in hub stock: p99 {} ms, p50 {} ms; {rate:.0} events/s{behind}",
            ms(lat.p99),
            ms(lat.p50)
        ),
        ceiling: format!(
            "QoS 1 echo through the broker, same rate: p99 {} ms, p50 {} ms",
            ms(ceiling.p99),
            ms(ceiling.p50)
        ),
        ratio: format!(
            "{:.1}x p99",
            lat.p99.as_secs_f64() / ceiling.p99.as_secs_f64().max(1e-6)
        ),
        goal: if label.is_empty() {
            "every sale acked, p99 <= 1 s".into()
        } else {
            "p99 <= 250 ms".into()
        },
        verdict: verdict(
            behind.is_empty() && lat.p99 <= Duration::from_millis(if label.is_empty() { 1_000 } else { 250 }),
        ),
    }])
}

fn rss_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct AgentProcess {
    child: tokio::process::Child,
    lan: SocketAddr,
    http: SocketAddr,
    /// Lane n's till is `tills[n - 1]`.
    tills: Vec<crate::lane::DeviceLogin>,
}

async fn spawn_agent(
    bin: &Path,
    dir: &Path,
    store: &str,
    hub: &storegate_hub::Hub,
    lanes: usize,
) -> anyhow::Result<AgentProcess> {
    let data = dir.join(store);
    std::fs::create_dir_all(&data)?;
    let bundle = crate::trust::bundle_at_hub(
        hub,
        &StoreId::parse(store)?,
        &format!("mqtt://{}", hub.broker_addr),
        &data,
    )
    .await?;
    let config = data.join("edge.toml");
    let mut toml = String::new();
    let mut tills = Vec::new();
    for l in 1..=lanes {
        let lane = l.to_string();
        let (till, entry) = crate::lane::DeviceLogin::new(
            format!("till-{l}"),
            storegate_edge::lan::access::DeviceRole::Till,
            &[lane.as_str()],
        );
        let _ = writeln!(
            toml,
            "[[lanes]]\nid = \"{l}\"\n\n[[devices]]\nid = \"{}\"\nrole = \"till\"\npassword_sha256 = \"{}\"\nlanes = [\"{l}\"]\n",
            entry.id, entry.password_sha256
        );
        tills.push(till);
    }
    std::fs::write(&config, toml)?;
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("--bundle")
        .arg(&bundle)
        .arg("--data-dir")
        .arg(&data)
        .args(["--http-listen", "127.0.0.1:0", "--lan-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let (http, lan) = crate::procs::edge_listening(&mut child).await?;
    let lan = lan.context("the agent runs no device bus")?;
    Ok(AgentProcess {
        child,
        lan,
        http,
        tills,
    })
}

async fn edge_memory(dir: &Path, args: &SuiteArgs) -> anyhow::Result<Vec<Row>> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("exe dir")?;
    let edge_bin = bin_dir.join("edge-agent");
    anyhow::ensure!(
        edge_bin.exists(),
        "{} is missing: cargo build --release --bin edge-agent",
        edge_bin.display()
    );
    let size = std::fs::metadata(&edge_bin)?.len();
    // Release builds keep line tables for backtraces; stripped is what ships.
    let stripped = {
        let copy = dir.join("edge-agent.stripped");
        std::fs::copy(&edge_bin, &copy)?;
        std::process::Command::new("strip")
            .arg(&copy)
            .status()
            .ok()
            .filter(std::process::ExitStatus::success)
            .and_then(|_| std::fs::metadata(&copy).ok())
            .map(|m| m.len())
    };
    let hub_size = std::fs::metadata(bin_dir.join("hub")).map(|m| m.len()).ok();

    // A hub with the demo catalog, for the stores' snapshot.
    let hub_dir = dir.join("rss-hub");
    std::fs::create_dir_all(&hub_dir)?;
    let url = format!("sqlite://{}", hub_dir.join("hub.db").display());
    let (hub, hub_stop) = hub_on(&url, &hub_dir, 2, None).await?;
    let api = format!("http://{}", hub.api_addr);
    let admin = crate::chain::Api::login(&api, "admin@example.com", "bench admin password").await?;
    let locations: Vec<crate::chain::Location> = ["rss-idle", "rss-busy"]
        .iter()
        .map(|id| crate::chain::Location {
            id: (*id).to_owned(),
            kind: "store",
            region: "north",
        })
        .collect();
    crate::chain::seed(&admin, &locations, ("rss@example.com", "rss shopper password")).await?;

    let mut idle = spawn_agent(&edge_bin, dir, "rss-idle", &hub, 0).await?;
    let mut busy = spawn_agent(&edge_bin, dir, "rss-busy", &hub, args.rss_lanes).await?;
    // Wait for the catalog to arrive.
    let http = reqwest::Client::new();
    let probe = format!("http://{}/api/v1/stock/MILK-1L", busy.http);
    let wait = Instant::now();
    loop {
        let level = match http.get(&probe).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["level"].as_i64()),
            Err(_) => None,
        };
        if level == Some(crate::chain::OPENING_STOCK) {
            break;
        }
        anyhow::ensure!(
            wait.elapsed() < Duration::from_secs(30),
            "the edge never got its catalog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = StoreId::parse("rss-busy")?;
    let products: Vec<_> = crate::catalog::products()
        .into_iter()
        .filter(|p| !p.weighed)
        .collect();
    let until = Instant::now() + Duration::from_secs(args.rss_secs);
    let mut tasks = Vec::new();
    for l in 1..=args.rss_lanes {
        let mut lane = crate::lane::LaneClient::connect(
            busy.lan,
            &store,
            &LaneId::parse(l.to_string())?,
            &busy.tills[l - 1],
        )
        .await?;
        let products = products.clone();
        tasks.push(tokio::spawn(async move {
            let mut sales = 0u64;
            let mut k = l;
            while Instant::now() < until {
                for _ in 0..4 {
                    k += 7;
                    let p = &products[k % products.len()];
                    lane.request(PosOp::AddItem {
                        code: Some(p.code.clone()),
                        sku: None,
                        qty: None,
                        grams: None,
                    })
                    .await?;
                }
                let due = match lane.request(PosOp::Totals).await?.result {
                    Some(PosResult::Basket(b)) => b.due,
                    _ => 0,
                };
                lane.request(PosOp::TenderCash { amount: due }).await?;
                if lane.request(PosOp::Complete).await?.ok {
                    sales += 1;
                }
            }
            anyhow::Ok(sales)
        }));
    }
    let mut sales = 0;
    for t in tasks {
        sales += t.await??;
    }
    let busy_pid = busy.child.id().context("busy pid")?;
    let idle_pid = idle.child.id().context("idle pid")?;
    let (busy_rss, busy_peak) = rss_of(busy_pid).context("reading /proc")?;
    let (idle_rss, _) = rss_of(idle_pid).context("reading /proc")?;
    let _ = busy.child.start_kill();
    let _ = idle.child.start_kill();
    let _ = busy.child.wait().await;
    let _ = idle.child.wait().await;
    hub_stop.cancel();
    hub.stop().await;
    Ok(vec![
        Row {
            figure: format!(
                "edge agent RSS, {} lanes selling for {} s",
                args.rss_lanes, args.rss_secs
            ),
            value: format!(
                "{} (peak {}); {:.0} sales/s",
                mb(busy_rss),
                mb(busy_peak),
                sales as f64 / args.rss_secs as f64
            ),
            ceiling: format!("the same agent idle, no lanes: {}", mb(idle_rss)),
            ratio: format!("{:.2}", busy_rss as f64 / idle_rss.max(1) as f64),
            goal: "<= 25 MB".into(),
            verdict: verdict(busy_rss <= 25 * 1_048_576),
        },
        Row {
            figure: "edge-agent release binary".into(),
            value: match stripped {
                Some(st) => format!("{} stripped ({} with line tables)", mb(st), mb(size)),
                None => format!("{} with line tables (no strip here)", mb(size)),
            },
            ceiling: hub_size.map_or("-".into(), |h| format!("hub binary: {}", mb(h))),
            ratio: "-".into(),
            goal: "(none set)".into(),
            verdict: "-",
        },
    ])
}
