//! Ingestion workers: each owns a fixed share of the stores, checks its
//! messages' signatures, and applies what is queued as one transaction.

use std::collections::HashMap;

use storegate_protocol::envelope::{self, Message};
use storegate_protocol::topic::WanTopic;
use storegate_protocol::{Seq, StoreId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AckMsg, Job, Link, Misc, Receipt, Trust};
use crate::db::Db;
use crate::ingest::{self, Batch, Verdict};
use crate::quarantine::Reason;

/// What an ingestion worker works with.
pub(super) struct Worker {
    /// Its number (logs).
    pub(super) index: usize,
    /// The database.
    pub(super) db: Db,
    /// For publishing acks.
    pub(super) link: Link,
    /// Checks signatures.
    pub(super) trust: Trust,
    /// Where downlink acks go.
    pub(super) misc: mpsc::UnboundedSender<Misc>,
    /// Where finished receipts go.
    pub(super) acks: mpsc::UnboundedSender<AckMsg>,
    /// Most batches per transaction.
    pub(super) max_group: usize,
    /// The crash-test failpoint.
    pub(super) abort_after_commit: bool,
}

pub(super) async fn worker(w: Worker, mut rx: mpsc::UnboundedReceiver<Job>, shutdown: CancellationToken) {
    let Worker {
        index,
        db,
        link,
        trust,
        misc,
        acks,
        max_group,
        abort_after_commit,
    } = w;
    // Committed marks seen by this worker: a batch at or below is a
    // duplicate without asking the database (marks only grow).
    let mut marks: HashMap<StoreId, Seq> = HashMap::new();
    let mut jobs = Vec::with_capacity(max_group);
    loop {
        jobs.clear();
        let n = tokio::select! {
            () = shutdown.cancelled() => return,
            n = rx.recv_many(&mut jobs, max_group) => n,
        };
        if n == 0 {
            return;
        }
        let mut batches: Vec<(Batch, Receipt)> = Vec::with_capacity(n);
        for job in jobs.drain(..) {
            let Ok(body) = trust.open(&job.wan, &job.topic, &job.payload).await else {
                let _ = acks.send(AckMsg::Done(job.receipt));
                continue;
            };
            match envelope::decode_body(body) {
                Ok(Message::UpBatch(b)) if b.store != job.store => {
                    let why = format!("batch from {} on {}'s topic", b.store, job.store);
                    job.received().put(&db, Reason::StoreMismatch, &why).await;
                    let _ = acks.send(AckMsg::Done(job.receipt));
                }
                Ok(Message::DownAck(a)) => {
                    let _ = misc.send(Misc::DownAck(job.store, a.applied_up_to, job.receipt));
                }
                Ok(Message::UpBatch(mut b)) => {
                    if let Err(why) = ingest::validate(&b) {
                        job.received().put(&db, Reason::InvalidBatch, &why).await;
                        let _ = acks.send(AckMsg::Done(job.receipt));
                        continue;
                    }
                    // Card data never reaches the database: the fields that
                    // hold some are replaced, and ingestion lands a
                    // discrepancy naming them (the event keeps its seq).
                    for e in &mut b.events {
                        let removed = e.body.redact_card_data();
                        if !removed.is_empty() {
                            metrics::counter!("hub_card_data_refused_total", "entry" => "wan").increment(1);
                            tracing::warn!(store = %job.store, seq = e.seq.0, fields = ?removed, "card data removed from an event");
                        }
                    }
                    if let Some(mark) = marks.get(&job.store)
                        && b.last <= *mark
                    {
                        metrics::counter!("hub_ingest_batches_total", "result" => "duplicate").increment(1);
                        let counted = sqlx::query(
                            "UPDATE store_sync SET duplicates = duplicates + $2 WHERE store_id = $1",
                        )
                        .bind(job.store.as_str())
                        .bind(b.events.len() as i64)
                        .execute(&db.pool)
                        .await;
                        if let Err(e) = counted {
                            tracing::warn!(error = %e, "duplicate count not stored");
                        }
                        let reply = Verdict::Duplicate { hwm: *mark }.reply();
                        link.send(&WanTopic::Ack(job.store.clone()), &reply).await;
                        let _ = acks.send(AckMsg::Done(job.receipt));
                        continue;
                    }
                    batches.push((
                        Batch {
                            store: job.store,
                            batch: b,
                        },
                        job.receipt,
                    ));
                }
                Ok(other) => {
                    job.received().unexpected(&db, other.name(), "an uplink").await;
                    let _ = acks.send(AckMsg::Done(job.receipt));
                }
                Err(e) => {
                    job.received().undecodable(&db, &e).await;
                    let _ = acks.send(AckMsg::Done(job.receipt));
                }
            }
        }
        if batches.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let verdicts = apply_with_fallbacks(&db, index, &batches).await;
        if abort_after_commit
            && verdicts
                .iter()
                .any(|v| matches!(v, Some(Verdict::Committed { .. })))
        {
            tracing::error!("failpoint abort_after_commit: aborting after commit, before any ack");
            std::process::abort();
        }
        metrics::histogram!("hub_ingest_group_seconds").record(started.elapsed().as_secs_f64());
        for ((batch, receipt), verdict) in batches.into_iter().zip(verdicts) {
            if let Some(v) = verdict {
                let result = match v {
                    Verdict::Committed { hwm, .. } => {
                        marks.insert(batch.store.clone(), hwm);
                        "committed"
                    }
                    Verdict::Duplicate { hwm } => {
                        marks.insert(batch.store.clone(), hwm);
                        "duplicate"
                    }
                    Verdict::Gap { .. } => "gap",
                };
                metrics::counter!("hub_ingest_batches_total", "result" => result).increment(1);
                link.send(&WanTopic::Ack(batch.store.clone()), &v.reply()).await;
            }
            // Acked even when the database failed: the edge still holds the
            // events and resends them after its ack timeout.
            let _ = acks.send(AckMsg::Done(receipt));
        }
    }
}

/// Applies a group; on failure each batch alone; on failure again, alone
/// without effects (stored and flagged, so the store is never stuck). `None`
/// means the database itself is failing: no ack, the edge will resend.
/// Each attempt runs in its own task, so a panic (a bug meeting some
/// input) fails that attempt like an error and this worker carries on for
/// every other store.
async fn apply_with_fallbacks(db: &Db, worker: usize, batches: &[(Batch, Receipt)]) -> Vec<Option<Verdict>> {
    let group: std::sync::Arc<[Batch]> = batches.iter().map(|(b, _)| b.clone()).collect();
    match apply_caught(db, group.clone(), true).await {
        Ok(v) => return v.into_iter().map(Some).collect(),
        Err(e) if group.len() > 1 => {
            tracing::warn!(worker, error = %e, batches = group.len(), "group failed; applying batches one by one");
        }
        Err(e) => tracing::warn!(worker, error = %e, "batch failed"),
    }
    let mut out = Vec::with_capacity(group.len());
    for b in group.iter() {
        let one: std::sync::Arc<[Batch]> = std::sync::Arc::from([b.clone()]);
        let verdict = match apply_caught(db, one.clone(), true).await {
            Ok(mut v) => v.pop(),
            Err(e) => {
                tracing::error!(store = %b.store, first = b.batch.first.0, error = %e, "effects failed; storing the events flagged");
                match apply_caught(db, one, false).await {
                    Ok(mut v) => v.pop(),
                    Err(e) => {
                        tracing::error!(store = %b.store, error = %e, "cannot store the batch; the edge will resend");
                        metrics::counter!("hub_ingest_batches_total", "result" => "failed").increment(1);
                        None
                    }
                }
            }
        };
        out.push(verdict);
    }
    out
}

/// [`ingest::apply`] in a task of its own: an error or a panic comes back
/// as the reason it failed.
async fn apply_caught(
    db: &Db,
    group: std::sync::Arc<[Batch]>,
    effects: bool,
) -> Result<Vec<Verdict>, String> {
    let db = db.clone();
    match tokio::spawn(async move { ingest::apply(&db, &group, effects).await }).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) if e.is_panic() => {
            metrics::counter!("hub_ingest_panics_total").increment(1);
            Err(format!("ingestion panicked: {e}"))
        }
        Err(e) => Err(e.to_string()),
    }
}
