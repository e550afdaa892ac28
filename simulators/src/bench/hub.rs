//! `storegate-sim bench hub`: ingestion from many concurrent stores into
//! SQLite and PostgreSQL, against a raw batch insert of the same event rows
//! into the same kind of database, measured in the same run.
//!
//! - Raw ceiling: a fresh database with the hub's schema; `workers`
//!   connections insert the events table's rows in multi-row statements
//!   of `batch` rows with `ON CONFLICT DO NOTHING`, each its own transaction.
//! - Hub: a hub in this process (embedded broker, the same number of
//!   ingestion workers) on another fresh database; `stores` MQTT clients
//!   publish their pre-encoded batches of sale events and wait for the
//!   application ack of their last seq. The hub stores the same event rows
//!   plus their effects (one stock movement per sale line, levels, checks).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use sqlx::AssertSqlSafe;
use storegate_protocol::envelope::{self, Message, UpBatch, encode_event};
use storegate_protocol::event::{Event, EventBody};
use storegate_protocol::topic::WanTopic;
use storegate_protocol::{EventId, Seq, StoreId, samples};
use tokio_util::sync::CancellationToken;

/// Options of `bench hub`.
#[derive(Debug, Clone, clap::Args)]
pub struct HubBenchArgs {
    /// Concurrent stores (MQTT connections).
    #[arg(long, default_value_t = 50)]
    pub stores: usize,
    /// Events in all.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per batch (and rows per raw INSERT).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Lines per sale.
    #[arg(long, default_value_t = 5)]
    pub lines: usize,
    /// Hub ingestion workers (and raw insert connections).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Databases: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "postgres,sqlite")]
    pub backends: Vec<String>,
}

fn event(store: usize, seq: u64, lines: usize) -> Event {
    let mut s = samples::cash_sale(lines);
    let n = ((store as u128) << 40) | u128::from(seq);
    s.sale_id = EventId::from_parts(samples::T0_MS as u64, n << 4);
    for (i, t) in s.tenders.iter_mut().enumerate() {
        t.payment_key = EventId::from_parts(samples::T0_MS as u64, (n << 4) | (i as u128 + 1));
    }
    Event {
        id: EventId::from_parts(samples::T0_MS as u64 + 1, n),
        seq: Seq(seq),
        recorded_at_ms: samples::T0_MS,
        body: EventBody::Sale(s),
    }
}

/// One simulated store: its id, its encoded batch bodies (sealed once its
/// credential exists), its last seq.
pub type StoreWork = (StoreId, Vec<Vec<u8>>, u64);

/// Per store: its id and its encoded batch bodies.
pub fn workload(args: &HubBenchArgs) -> anyhow::Result<Vec<StoreWork>> {
    let per_store = args.events.div_ceil(args.stores) as u64;
    (0..args.stores)
        .map(|i| {
            let store = StoreId::parse(format!("bench-{i:04}"))?;
            let mut batches = Vec::new();
            let mut seq = 1u64;
            while seq <= per_store {
                let last = (seq + args.batch as u64 - 1).min(per_store);
                let events: Vec<Event> = (seq..=last).map(|s| event(i, s, args.lines)).collect();
                batches.push(envelope::encode_body(&Message::UpBatch(UpBatch {
                    store: store.clone(),
                    first: Seq(seq),
                    last: Seq(last),
                    events,
                    backlog: per_store - last,
                    dropped_telemetry: 0,
                })));
                seq = last + 1;
            }
            Ok((store, batches, per_store))
        })
        .collect()
}

async fn fresh_url(backend: &str, dir: &std::path::Path, tag: &str) -> anyhow::Result<String> {
    Ok(match backend {
        "sqlite" => format!("sqlite://{}", dir.join(format!("{tag}.db")).display()),
        "postgres" => crate::pg::fresh_database("sg_bench").await?,
        other => anyhow::bail!("unknown backend {other:?} (sqlite, postgres)"),
    })
}

/// The raw ceiling: the events table's rows of `work` inserted in batches.
pub async fn raw_ceiling(
    url: &str,
    args: &HubBenchArgs,
    work: &[StoreWork],
) -> anyhow::Result<(usize, Duration)> {
    let db = storegate_hub::db::Db::connect(url, args.workers as u32 + 1).await?;
    db.migrate().await?;
    // The same rows the hub's events table gets, prepared up front.
    type Row = (String, i64, Vec<u8>, Vec<u8>, Vec<u8>);
    let mut rows: Vec<Row> = Vec::with_capacity(args.events);
    for (store, batches, _) in work {
        for b in batches {
            if let Ok(Message::UpBatch(b)) = envelope::decode_body(b) {
                for e in b.events {
                    let sale_id = match &e.body {
                        EventBody::Sale(s) => s.sale_id.to_bytes().to_vec(),
                        _ => Vec::new(),
                    };
                    rows.push((
                        store.to_string(),
                        e.seq.0 as i64,
                        e.id.to_bytes().to_vec(),
                        encode_event(&e),
                        sale_id,
                    ));
                }
            }
        }
    }
    let total = rows.len();
    let chunks: Vec<Vec<Row>> = rows.chunks(args.batch).map(<[Row]>::to_vec).collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(chunks));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.workers {
        let db = db.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(chunk) = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop() else {
                    return anyhow::Ok(());
                };
                let text = storegate_hub::sql::values(
                    "INSERT INTO events (store_id, seq, event_id, kind, recorded_ms, ingested_ms, body, ref_id)",
                    chunk.len(),
                    8,
                    "ON CONFLICT DO NOTHING",
                );
                let mut q = sqlx::query(AssertSqlSafe(text));
                for (store, seq, id, body, sale) in chunk {
                    q = q.bind(store).bind(seq).bind(id).bind("sale").bind(0i64).bind(0i64).bind(body).bind(sale);
                }
                q.execute(&db.pool).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    db.pool.close().await;
    Ok((total, took))
}

/// Puts the products of `samples::sale(lines)` in the hub's catalog at the
/// prices those sales charge.
pub async fn seed_sample_catalog(db: &storegate_hub::db::Db, lines: usize) -> anyhow::Result<()> {
    for line in samples::sale(lines).lines {
        sqlx::query(
            "INSERT INTO products (sku, name, measure, tax_rate_bp, created_ms, updated_ms) VALUES ($1, $1, $2, 2000, 0, 0) \
             ON CONFLICT DO NOTHING",
        )
        .bind(line.sku.as_str())
        .bind(if matches!(line.qty, storegate_protocol::Qty::Grams(_)) { "grams" } else { "each" })
        .execute(&db.pool)
        .await?;
        sqlx::query(
            "INSERT INTO prices (sku, scope, scope_id, price_minor, currency, effective_from_ms, created_ms) \
             VALUES ($1, 'all', '', $2, 'EUR', 0, 0)",
        )
        .bind(line.sku.as_str())
        .bind(line.unit_price.minor)
        .execute(&db.pool)
        .await?;
    }
    Ok(())
}

async fn hub_ingest(
    url: &str,
    dir: &std::path::Path,
    args: &HubBenchArgs,
    work: &[StoreWork],
) -> anyhow::Result<(usize, Duration)> {
    let mut settings = storegate_hub::Settings {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    settings.database.url = url.to_owned();
    settings.database.max_connections = args.workers as u32 + 4;
    settings.broker.listen = "127.0.0.1:0".into();
    settings.api.listen = "127.0.0.1:0".into();
    settings.ingest.workers = args.workers;
    let shutdown = CancellationToken::new();
    let hub = storegate_hub::start(settings, shutdown.clone()).await?;
    // The catalog knows what the stores sell, at the prices they charge:
    // a realistic run flags nothing.
    seed_sample_catalog(&hub.db, args.lines).await?;
    while !hub.link.subscribed.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let broker: SocketAddr = hub.broker_addr.parse()?;
    // Provision every store and seal its batches, connect every store,
    // then start the clock.
    let pki = dir.join("pki");
    let mut clients = Vec::new();
    for (store, bodies, last) in work {
        let bundle =
            crate::trust::provision_at_hub(&hub.db, &pki, store, &format!("mqtt://{broker}")).await?;
        let trust = storegate_edge::trust::EdgeTrust::from_bundle(&bundle)?;
        let up = WanTopic::Up(store.clone()).to_string();
        let batches: Vec<Vec<u8>> = bodies.iter().map(|b| trust.sealer.seal_body(&up, b)).collect();
        let ack_wan = WanTopic::Ack(store.clone());
        let mut opts = MqttOptions::new(format!("edge-{store}"), broker.ip().to_string(), broker.port());
        opts.set_max_packet_size(16 << 20, 16 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, batches.len() + 16);
        let ack_topic = WanTopic::Ack(store.clone()).to_string();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let c = client.clone();
        let want = *last;
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut done = Some(done_tx);
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let opened = storegate_protocol::seal::open(
                            &p.payload,
                            &ack_wan,
                            &p.topic,
                            &trust.hub_keys,
                            false,
                        );
                        if let Ok(Ok(Message::AppAck(a))) = opened.map(envelope::decode_body)
                            && a.committed_up_to.0 >= want
                            && let Some(d) = done.take()
                        {
                            let _ = d.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        ready_rx.await.context("store client subscribed")?;
        clients.push((client, store.clone(), batches, done_rx));
    }
    let start = Instant::now();
    let mut waits = Vec::new();
    for (client, store, batches, done) in clients {
        let topic = WanTopic::Up(store).to_string();
        tokio::spawn(async move {
            for b in batches {
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, b)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        waits.push(done);
    }
    for w in waits {
        tokio::time::timeout(Duration::from_secs(600), w)
            .await
            .context("hub did not ack everything in 600 s")??;
    }
    let took = start.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&hub.db.pool)
        .await?;
    anyhow::ensure!(
        stored as usize == work.iter().map(|w| w.2 as usize).sum::<usize>(),
        "hub stored {stored} events"
    );
    let flagged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM discrepancies")
        .fetch_one(&hub.db.pool)
        .await?;
    anyhow::ensure!(
        flagged == 0,
        "the benchmark's sales should match the catalog; {flagged} discrepancies"
    );
    hub.stop().await;
    Ok((stored as usize, took))
}

/// Runs the hub benchmark and prints its table.
pub async fn run(args: HubBenchArgs) -> anyhow::Result<()> {
    let work = workload(&args)?;
    let events: usize = work.iter().map(|w| w.2 as usize).sum();
    println!(
        "storegate hub ingest benchmark: {events} {}-line sale events from {} stores, batches of {}, {} workers",
        args.lines, args.stores, args.batch, args.workers
    );
    println!();
    println!("{:<52} {:>10} {:>9} {:>8}", "", "events/s", "seconds", "ratio");
    for backend in &args.backends {
        let dir = tempfile::tempdir()?;
        let raw_url = fresh_url(backend, dir.path(), "raw").await?;
        let (raw_n, raw_took) = raw_ceiling(&raw_url, &args, &work).await?;
        let hub_url = fresh_url(backend, dir.path(), "hub").await?;
        let (hub_n, hub_took) = hub_ingest(&hub_url, dir.path(), &args, &work).await?;
        if backend == "postgres" {
            crate::pg::drop_database(&raw_url).await;
            crate::pg::drop_database(&hub_url).await;
        }
        let raw_rate = raw_n as f64 / raw_took.as_secs_f64();
        let hub_rate = hub_n as f64 / hub_took.as_secs_f64();
        println!(
            "{:<52} {:>10.0} {:>9.2} {:>8}",
            format!("{backend}: raw INSERT .. ON CONFLICT DO NOTHING"),
            raw_rate,
            raw_took.as_secs_f64(),
            "1.00"
        );
        println!(
            "{:<52} {:>10.0} {:>9.2} {:>8.2}",
            format!("{backend}: hub ingest via MQTT (events + effects)"),
            hub_rate,
            hub_took.as_secs_f64(),
            hub_rate / raw_rate
        );
    }
    Ok(())
}
