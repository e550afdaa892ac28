//! kill -9 of the real `edge-agent` binary while it records and syncs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use storegate_e2e::{EdgeProcess, Responder, broker, http, wait_until};
use storegate_protocol::{EventId, StoreId};

use crate::edge_sync::fresh_sale;

#[derive(serde::Deserialize)]
struct Recorded {
    seq: u64,
    id: EventId,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_recording_and_sync_loses_nothing_acknowledged_and_renumbers_nothing() {
    let broker = broker();
    let responder = Responder::start(broker).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreId::parse("s-crash").unwrap();
    let bundle = responder
        .write_bundle(store.as_str(), &format!("mqtt://{broker}"), dir.path())
        .unwrap();
    // seq -> (event id, sale number) for every sale the agent acknowledged (201).
    let acknowledged: Arc<Mutex<HashMap<u64, EventId>>> = Arc::default();
    let mut next_sale: u128 = 0;

    for round in 0..6u64 {
        let edge = EdgeProcess::spawn(
            &bundle,
            dir.path(),
            broker,
            &[("SG_EDGE_SYNC__BATCH_MAX_EVENTS", "25")],
        )
        .await;
        let url = format!("http://{}/api/v1/events", edge.http);
        let mut lanes = Vec::new();
        for lane in 0..8u128 {
            let url = url.clone();
            let acked = acknowledged.clone();
            let start = next_sale + lane * 10_000;
            lanes.push(tokio::spawn(async move {
                let client = http();
                for i in start.. {
                    let body = serde_json::to_vec(&fresh_sale(i)).unwrap();
                    let Ok(resp) = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                    else {
                        return; // the agent died under us
                    };
                    if resp.status() == 201 {
                        let Ok(r) = resp.json::<Recorded>().await else {
                            return;
                        };
                        acked.lock().unwrap().insert(r.seq, r.id);
                    }
                }
            }));
        }
        next_sale += 100_000;
        // Kill at a different point each round: while recording, mid-sync.
        tokio::time::sleep(Duration::from_millis(150 + round * 97 % 400)).await;
        edge.kill9().await;
        for l in lanes {
            let _ = l.await;
        }
    }

    // Restart once more and let everything drain.
    let edge = EdgeProcess::spawn(&bundle, dir.path(), broker, &[]).await;
    let status_url = format!("http://{}/status", edge.http);
    let final_next = Arc::new(AtomicU64::new(0));
    wait_until(
        "the journal to drain to the responder",
        Duration::from_secs(60),
        || {
            let status_url = status_url.clone();
            let responder = responder.clone();
            let final_next = final_next.clone();
            async move {
                let Ok(r) = http().get(&status_url).send().await else {
                    return false;
                };
                let Ok(v) = r.json::<serde_json::Value>().await else {
                    return false;
                };
                let next = v["next_seq"].as_u64().unwrap_or(0);
                final_next.store(next, Ordering::Release);
                v["outbox_depth"] == 0 && responder.log("s-crash").hwm + 1 == next
            }
        },
    )
    .await;
    let final_next = final_next.load(Ordering::Acquire);

    let log = responder.log("s-crash");
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "crash test: {} sales acknowledged, {} events journaled, {} resent duplicates absorbed",
        acknowledged.len(),
        log.events.len(),
        log.duplicates
    );
    assert!(
        acknowledged.len() > 100,
        "the test recorded a meaningful amount: {}",
        acknowledged.len()
    );
    // Seq has no gap: the responder only accepts seq hwm+1, and it holds next_seq-1 of them.
    assert_eq!(log.events.len() as u64 + 1, final_next);
    for (i, e) in log.events.iter().enumerate() {
        assert_eq!(e.seq.0, i as u64 + 1);
    }
    // Nothing acknowledged to a till is missing, and nothing was renumbered.
    for (seq, id) in &acknowledged {
        let e = &log.events[(*seq - 1) as usize];
        assert_eq!(e.id, *id, "seq {seq} kept its event id across crashes");
    }
    edge.terminate().await;
}
