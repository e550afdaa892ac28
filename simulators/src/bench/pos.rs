//! `storegate-sim bench pos`: latency of scan -> priced line reply and of
//! sale completion (durable) with many lanes busy on one edge agent, over
//! its real device bus (MQTT JSON), with the demo catalog.
//!
//! Each lane repeats: open a basket, add `items` items by barcode one after
//! another (`scan_interval_ms` apart, 0 = back to back), pay cash, complete.
//! Latency is measured at the lane client, request to reply.

use std::time::{Duration, Instant};

use storegate_protocol::device::{PosOp, PosResult};
use storegate_protocol::{Currency, LaneId, StoreId};
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::lane::LaneClient;
use crate::stats::{Latency, ms};

/// Options of `bench pos`.
#[derive(Debug, Clone, clap::Args)]
pub struct PosBenchArgs {
    /// Busy lanes.
    #[arg(long, default_value_t = 50)]
    pub lanes: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Items per basket.
    #[arg(long, default_value_t = 5)]
    pub items: usize,
    /// Pause between a lane's scans, ms (a fast cashier scans about one item
    /// a second; 0 runs every lane flat out).
    #[arg(long, default_value_t = 250)]
    pub scan_interval_ms: u64,
}

/// Runs the benchmark and prints its table.
pub async fn run(args: PosBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut settings = storegate_edge::Settings {
        store_id: "bench-pos".into(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    // No hub: lanes work offline-first; cash only, so no card calls wait.

    let chain = crate::trust::TestChain::new()?;
    settings.upstream.bundle = Some(chain.write_bundle(
        &StoreId::parse(settings.store_id.as_str())?,
        "mqtt://127.0.0.1:9",
        &settings.data_dir,
    )?);
    settings.http.listen = "127.0.0.1:0".into();
    settings.lan.listen = "127.0.0.1:0".into();
    // The lanes here run flat out: no per-device rate in the way.
    settings.lan.device_rate_per_sec = 1_000_000;
    settings.lan.device_burst = 1_000_000;
    let mut tills = Vec::new();
    for i in 0..args.lanes {
        let lane = format!("b{i}");
        let (till, entry) = crate::lane::DeviceLogin::new(
            format!("till-{lane}"),
            storegate_edge::lan::access::DeviceRole::Till,
            &[lane.as_str()],
        );
        settings.devices.push(entry);
        tills.push(till);
    }
    let stop = CancellationToken::new();
    let edge = storegate_edge::start(settings, stop.clone()).await?;
    edge.journal
        .apply_downlink(catalog::downlink_items(Currency::EUR))
        .await?;
    let lan = edge.lan_addr.ok_or_else(|| anyhow::anyhow!("no LAN bus"))?;
    let store = StoreId::parse("bench-pos")?;
    let codes: Vec<String> = catalog::products()
        .into_iter()
        .filter(|p| !p.weighed)
        .map(|p| p.code)
        .collect();

    let mut lanes = Vec::new();
    for (i, till) in tills.iter().enumerate() {
        lanes.push(LaneClient::connect(lan, &store, &LaneId::parse(format!("b{i}"))?, till).await?);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (i, mut lane) in lanes.into_iter().enumerate() {
        let codes = codes.clone();
        let items = args.items;
        let pause = Duration::from_millis(args.scan_interval_ms);
        tasks.push(tokio::spawn(async move {
            let mut scans = Vec::new();
            let mut completes = Vec::new();
            let mut n = i;
            // Stagger the lanes.
            tokio::time::sleep(pause.mul_f64(i as f64 / 50.0)).await;
            while Instant::now() < deadline {
                for _ in 0..items {
                    n += 7;
                    let code = codes[n % codes.len()].clone();
                    let t = Instant::now();
                    let r = lane
                        .request(PosOp::AddItem {
                            code: Some(code),
                            sku: None,
                            qty: None,
                            grams: None,
                        })
                        .await?;
                    anyhow::ensure!(r.ok, "scan failed: {:?}", r.error);
                    scans.push(t.elapsed());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                let due = match lane.request(PosOp::Totals).await?.result {
                    Some(PosResult::Basket(b)) => b.due,
                    _ => anyhow::bail!("no basket"),
                };
                lane.request(PosOp::TenderCash { amount: due }).await?;
                let t = Instant::now();
                let r = lane.request(PosOp::Complete).await?;
                anyhow::ensure!(r.ok, "complete failed: {:?}", r.error);
                completes.push(t.elapsed());
            }
            anyhow::Ok((scans, completes))
        }));
    }
    let (mut scans, mut completes) = (Vec::new(), Vec::new());
    for t in tasks {
        let (s, c) = t.await??;
        scans.extend(s);
        completes.extend(c);
    }
    let scan = Latency::of(&mut scans);
    let done = Latency::of(&mut completes);
    println!(
        "storegate POS benchmark: {} lanes on one edge agent, {} items per basket, {} ms between scans, {} s",
        args.lanes, args.items, args.scan_interval_ms, args.seconds
    );
    println!();
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "", "count", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "scan -> priced line reply",
        scan.count,
        ms(scan.p50),
        ms(scan.p99),
        ms(scan.max)
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "complete -> durable sale reply",
        done.count,
        ms(done.p50),
        ms(done.p99),
        ms(done.max)
    );
    stop.cancel();
    edge.stopped().await;
    Ok(())
}
