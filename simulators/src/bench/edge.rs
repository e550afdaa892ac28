//! `storegate-sim bench edge`: durable sale commits at the edge and outbox
//! drain, each against this machine's own ceiling measured in the same run.
//!
//! 1. Raw SQLite ceiling: one connection, WAL + `synchronous=FULL` (the
//!    journal's durability), one sale-sized row per transaction.
//! 2. Journal: N concurrent lanes each recording sales as fast as commits
//!    return (sales/s, p50/p99 commit latency, sales per fsync).
//! 3. Drain: an outbox pre-filled while offline drains to an embedded
//!    rumqttd and a stand-in hub that acks, against raw QoS 1 publishes of
//!    the same batch bytes through the same broker to a subscriber.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use storegate_edge::journal::Journal;
use storegate_edge::settings::JournalSettings;
use storegate_protocol::envelope::up_batch_body_from_encoded;
use storegate_protocol::event::EventBody;
use storegate_protocol::{Currency, EventId, Seq, StoreId, samples};
use tokio_util::sync::CancellationToken;

use crate::responder::Responder;
use crate::stats::{Latency, ms};

/// Options of `bench edge`.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeBenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Concurrent lane counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub lanes: Vec<usize>,
    /// Events in the outbox for the drain measurement.
    #[arg(long, default_value_t = 50_000)]
    pub drain_events: usize,
    /// Lines per sale.
    #[arg(long, default_value_t = 5)]
    pub lines: usize,
    /// Open-loop measurement: total sales/s offered by 50 lanes on a fixed
    /// schedule (latency counted from the scheduled time). 0 skips it.
    #[arg(long, default_value_t = 1000.0)]
    pub open_rate: f64,
}

/// A sale with ids minted the way a lane mints them: time-ordered ULIDs.
pub fn sale(lines: usize) -> EventBody {
    let now = storegate_edge::journal::now_ms() as u64;
    let mut s = samples::cash_sale(lines);
    s.sale_id = EventId::from_parts(now, rand::random());
    for t in &mut s.tenders {
        t.payment_key = EventId::from_parts(now, rand::random());
    }
    EventBody::Sale(s)
}

/// The raw SQLite ceiling: sale-sized rows, one per durable transaction.
pub async fn raw_sqlite(dir: &Path, seconds: f64, row_bytes: usize) -> anyhow::Result<(f64, Latency)> {
    let opts = SqliteConnectOptions::new()
        .filename(dir.join("raw.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        .execute(&mut conn)
        .await?;
    let blob = vec![7u8; row_bytes];
    let mut lat = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        sqlx::query("INSERT INTO t (v) VALUES (?)")
            .bind(&blob)
            .execute(&mut conn)
            .await?;
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, Latency::of(&mut lat)))
}

/// `lanes` concurrent lanes recording sales: (sales/s, latency, sales per fsync).
pub async fn journal_lanes(
    dir: &Path,
    lanes: usize,
    seconds: f64,
    lines: usize,
) -> anyhow::Result<(f64, Latency, f64)> {
    let (journal, writer) = Journal::open(
        &dir.join(format!("lanes-{lanes}.db")),
        &JournalSettings::default(),
        Currency::EUR,
    )
    .await?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..lanes {
        let j = journal.clone();
        let c = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let body = sale(lines);
                let t = Instant::now();
                j.record(body, None).await?;
                lat.push(t.elapsed());
                c.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let commits = journal.commits().max(1);
    let per_commit = all.len() as f64 / commits as f64;
    drop(journal);
    writer.await?;
    Ok((all.len() as f64 / elapsed, Latency::of(&mut all), per_commit))
}

/// 50 lanes each completing sales on a fixed schedule, `rate` sales/s in
/// all; latency runs from the scheduled moment, so queueing counts.
async fn journal_open_loop(
    dir: &Path,
    rate: f64,
    seconds: f64,
    lines: usize,
) -> anyhow::Result<(f64, Latency)> {
    let (journal, writer) = Journal::open(
        &dir.join("open-loop.db"),
        &JournalSettings::default(),
        Currency::EUR,
    )
    .await?;
    let lanes = 50u32;
    let interval = Duration::from_secs_f64(f64::from(lanes) / rate);
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let j = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut due = start + interval.mul_f64(f64::from(lane) / f64::from(lanes));
            while due < end {
                tokio::time::sleep_until(due).await;
                j.record(sale(lines), None).await?;
                lat.push(due.elapsed());
                due += interval;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let achieved = all.len() as f64 / seconds;
    drop(journal);
    writer.await?;
    Ok((achieved, Latency::of(&mut all)))
}

/// Records `n` sales into `journal` from 64 concurrent writers.
pub async fn fill(journal: &Journal, n: usize, lines: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let j = journal.clone();
        let per = n / 64 + usize::from(i < n % 64);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                j.record(sale(lines), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn drain(
    dir: &Path,
    broker: std::net::SocketAddr,
    events: usize,
    lines: usize,
) -> anyhow::Result<(usize, Duration)> {
    let data = dir.join("drain");
    std::fs::create_dir_all(&data)?;
    {
        let (journal, writer) = Journal::open(
            &data.join("journal.db"),
            &JournalSettings::default(),
            Currency::EUR,
        )
        .await?;
        fill(&journal, events, lines).await?;
        drop(journal);
        writer.await?;
    }
    let responder = Responder::start_with(broker, false).await?;
    let bundle = responder.write_bundle("bench-drain", &format!("mqtt://{broker}"), &data)?;
    let mut settings = storegate_edge::Settings {
        store_id: "bench-drain".into(),
        data_dir: data,
        ..Default::default()
    };
    settings.upstream.bundle = Some(bundle);
    settings.http.listen = "127.0.0.1:0".into();
    settings.lan.enabled = false;
    let shutdown = CancellationToken::new();
    let edge = storegate_edge::start(settings, shutdown.clone()).await?;
    let total = edge.journal.stats().next_seq - 1;
    // The rate counts from the moment the link is up.
    let start = Instant::now();
    while !edge.sync.status.connected.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_micros(200)).await;
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "edge did not connect");
    }
    let start = Instant::now();
    while edge.journal.stats().outbox_depth > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "drain did not finish in 300 s"
        );
    }
    let took = start.elapsed();
    anyhow::ensure!(
        responder.log("bench-drain").hwm == total,
        "responder missed events"
    );
    edge.stop().await;
    Ok((total as usize, took))
}

async fn raw_publish(
    dir: &Path,
    broker: std::net::SocketAddr,
    events: usize,
    lines: usize,
) -> anyhow::Result<(usize, Duration)> {
    // The same batch bytes the edge publishes: 500 encoded sales per batch.
    let (journal, writer) = Journal::open(
        &dir.join("raw-batches.db"),
        &JournalSettings::default(),
        Currency::EUR,
    )
    .await?;
    fill(&journal, 500, lines).await?;
    let raw = journal
        .fetch_batch(Seq(1), 500, usize::MAX)
        .await?
        .context("500 sales recorded")?;
    drop(journal);
    writer.await?;
    let store = StoreId::parse("bench-raw")?;
    // Sealed once (the edge seals each batch), so the bytes are the same size.
    let body = up_batch_body_from_encoded(&store, (raw.first, raw.last), raw.events, &raw.bytes, 0, 0);
    let (key, _) = storegate_protocol::seal::SigningKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let batch = storegate_protocol::seal::seal(&key, "bench/raw", &body);
    let per_batch = raw.events;
    let batches = events.div_ceil(per_batch);

    let mut sub_opts = MqttOptions::new("bench-raw-sub", broker.ip().to_string(), broker.port());
    sub_opts.set_max_packet_size(8 << 20, 8 << 20);
    let (sub, mut sub_loop) = AsyncClient::new(sub_opts, 100);
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let r = received.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = sub.try_subscribe("bench/raw", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready_rx.await.context("raw subscriber")?;
    let mut pub_opts = MqttOptions::new("bench-raw-pub", broker.ip().to_string(), broker.port());
    pub_opts.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut pub_loop) = AsyncClient::new(pub_opts, 100);
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let start = Instant::now();
    for _ in 0..batches {
        client
            .publish("bench/raw", QoS::AtLeastOnce, false, batch.clone())
            .await?;
    }
    while received.load(Ordering::Relaxed) < batches as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "raw publish did not finish"
        );
    }
    Ok((batches * per_batch, start.elapsed()))
}

/// Runs the edge benchmark and prints its table.
pub async fn run(args: EdgeBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let row = samples::sale(args.lines);
    let row_bytes =
        storegate_protocol::envelope::encode_event(&samples::event(1, EventBody::Sale(row))).len();
    println!(
        "storegate edge benchmark ({}-line sales, {row_bytes} bytes each; {} s per figure)",
        args.lines, args.seconds
    );
    println!("data dir: {} (same disk as the journal)", dir.path().display());
    println!();

    let (raw_rate, raw_lat) = raw_sqlite(dir.path(), args.seconds, row_bytes).await?;
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>8}",
        "durable commits (WAL, synchronous=FULL)", "per s", "p50 ms", "p99 ms", "ratio"
    );
    println!(
        "{:<44} {:>10.0} {:>9} {:>9} {:>8}",
        "raw SQLite: 1 row per transaction",
        raw_rate,
        ms(raw_lat.p50),
        ms(raw_lat.p99),
        "1.00"
    );
    for lanes in &args.lanes {
        let (rate, lat, per_commit) = journal_lanes(dir.path(), *lanes, args.seconds, args.lines).await?;
        println!(
            "{:<44} {:>10.0} {:>9} {:>9} {:>8.2}",
            format!("journal: {lanes} lanes ({per_commit:.1} sales/fsync)"),
            rate,
            ms(lat.p50),
            ms(lat.p99),
            rate / raw_rate
        );
    }
    if args.open_rate > 0.0 {
        let (rate, lat) = journal_open_loop(dir.path(), args.open_rate, args.seconds, args.lines).await?;
        println!(
            "{:<44} {:>10.0} {:>9} {:>9} {:>8}",
            format!("journal: 50 lanes open loop, {:.0}/s offered", args.open_rate),
            rate,
            ms(lat.p50),
            ms(lat.p99),
            "-"
        );
    }
    println!();

    let broker = {
        let config = storegate_broker::load_config(None, storegate_broker::HUB_CONFIG)?;
        storegate_broker::start_embedded(config, "127.0.0.1:0".parse()?, "bench")?
    };
    let (raw_events, raw_took) = raw_publish(dir.path(), broker, args.drain_events, args.lines).await?;
    let (drained, drain_took) = drain(dir.path(), broker, args.drain_events, args.lines).await?;
    let raw_rate = raw_events as f64 / raw_took.as_secs_f64();
    let drain_rate = drained as f64 / drain_took.as_secs_f64();
    println!(
        "{:<44} {:>10} {:>9} {:>8}",
        "through embedded rumqttd, QoS 1", "events/s", "seconds", "ratio"
    );
    println!(
        "{:<44} {:>10.0} {:>9.2} {:>8}",
        "raw publishes of the same batch bytes",
        raw_rate,
        raw_took.as_secs_f64(),
        "1.00"
    );
    println!(
        "{:<44} {:>10.0} {:>9.2} {:>8.2}",
        format!("outbox drain, acked by a hub stand-in ({drained})"),
        drain_rate,
        drain_took.as_secs_f64(),
        drain_rate / raw_rate
    );
    Ok(())
}
