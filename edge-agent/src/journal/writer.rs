//! The writer task: the one writing connection, group commit, acks and
//! the outbox budget.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::{Connection, Row, SqliteConnection, SqliteTransaction};
use storegate_protocol::envelope::encode_event;
use storegate_protocol::event::{Event, EventBody, EventKind, TelemetryDropped};
use storegate_protocol::ids::EventIdGenerator;
use storegate_protocol::{EventId, Seq};
use tokio::sync::{Notify, mpsc};

use super::replica::downlink;
use super::stage::{Staged, check_with_reads, lookup_keys, needs_reads, project_with_reads, stage};
use super::{JournalError, JournalStats, Op, Outcome, Recorded, now_ms};

/// Copies the WAL back into the database in the background (PASSIVE: never
/// blocks the writer), so the WAL stays small and no commit pays for a
/// checkpoint. Stops when the journal is closed.
pub(super) async fn checkpointer(
    mut conn: SqliteConnection,
    writer_done: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = writer_done.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
    // Last one on the way out, so a clean stop leaves a small WAL.
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await;
}

/// The writer's copy of `sync_state`, ahead of the database inside a group.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriterState {
    pub(super) next_seq: u64,
    pub(super) acked: u64,
    pub(super) outbox_bytes: i64,
    pub(super) dropped: u64,
    pub(super) down_applied: u64,
    pub(super) last_ack_ms: Option<i64>,
    pub(super) over_budget: bool,
    /// Running total of outbox `bytes`, continued from the newest row.
    pub(super) cum_bytes: i64,
}

impl WriterState {
    pub(super) async fn load(conn: &mut SqliteConnection) -> Result<WriterState, JournalError> {
        let row = sqlx::query(
            "SELECT next_seq, acked_up_to, outbox_bytes, dropped_telemetry, down_applied, last_ack_ms, \
             (SELECT COALESCE(MAX(cum_bytes), 0) FROM outbox) FROM sync_state WHERE id = 1",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(WriterState {
            next_seq: row.try_get::<i64, _>(0)? as u64,
            acked: row.try_get::<i64, _>(1)? as u64,
            outbox_bytes: row.try_get(2)?,
            dropped: row.try_get::<i64, _>(3)? as u64,
            down_applied: row.try_get::<i64, _>(4)? as u64,
            last_ack_ms: row.try_get(5)?,
            over_budget: false,
            cum_bytes: row.try_get(6)?,
        })
    }

    pub(super) fn publish(&self, stats: &JournalStats) {
        stats.next_seq.store(self.next_seq, Ordering::Release);
        stats.acked_up_to.store(self.acked, Ordering::Release);
        stats
            .outbox_bytes
            .store(self.outbox_bytes.max(0) as u64, Ordering::Release);
        stats.dropped_telemetry.store(self.dropped, Ordering::Release);
        stats.down_applied.store(self.down_applied, Ordering::Release);
        stats
            .last_ack_ms
            .store(self.last_ack_ms.unwrap_or(0), Ordering::Release);
        stats.over_budget.store(self.over_budget, Ordering::Release);
    }
}

pub(super) struct Writer {
    /// The one writing connection.
    pub(super) conn: SqliteConnection,
    /// Counters as of the last commit (plus this group's changes while applying).
    pub(super) state: WriterState,
    /// Mints event ids in seq order.
    pub(super) ids: EventIdGenerator,
    /// Where committed counters are published.
    pub(super) stats: Arc<JournalStats>,
    /// Woken after commits that add outbox rows.
    pub(super) outbox_changed: Arc<Notify>,
    /// Outbox budget in bytes.
    pub(super) budget: u64,
    /// Most operations per commit.
    pub(super) max_group: usize,
}

impl Writer {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.max_group);
        while rx.recv_many(&mut ops, self.max_group).await > 0 {
            let started = Instant::now();
            let outcomes = match self.apply_group(&ops).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, ops = ops.len(), "group commit failed; retrying each operation alone");
                    self.reload().await;
                    let mut each = Vec::with_capacity(ops.len());
                    for op in &ops {
                        match self.apply_group(std::slice::from_ref(op)).await {
                            Ok(mut o) => each.push(Ok(o.remove(0))),
                            Err(e) => {
                                tracing::error!(error = %e, ?op, "journal write failed");
                                self.reload().await;
                                each.push(Err(e));
                            }
                        }
                    }
                    each.into_iter()
                        .map(|r| r.unwrap_or_else(Outcome::Failed))
                        .collect()
                }
            };
            metrics::histogram!("edge_journal_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("edge_journal_group_size").record(ops.len() as f64);
            let recorded = outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Record(Ok(Recorded { duplicate: false, .. }))));
            for (op, outcome) in ops.drain(..).zip(outcomes) {
                op.deliver(outcome);
            }
            if recorded {
                self.outbox_changed.notify_one();
            }
        }
        tracing::debug!("journal writer stopped");
    }

    async fn reload(&mut self) {
        match WriterState::load(&mut self.conn).await {
            Ok(s) => self.state = s,
            Err(e) => tracing::error!(error = %e, "cannot reload journal state"),
        }
    }

    async fn apply_group(&mut self, ops: &[Op]) -> Result<Vec<Outcome>, JournalError> {
        let mut tx = self.conn.begin().await?;
        let mut st = self.state;
        let mut staged = Staged::default();
        // Keys recorded before, looked up once for the whole group.
        let mut known = lookup_keys(&mut tx, ops).await?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let outcome = match op {
                Op::Record { body, key, .. } => {
                    if let Some(prior) = key.as_ref().and_then(|k| known.get(k)) {
                        outcomes.push(Outcome::Record(Ok(Recorded {
                            duplicate: true,
                            ..*prior
                        })));
                        continue;
                    }
                    let slow = needs_reads(body);
                    if slow {
                        // Reads must see everything this group wrote before.
                        staged.flush(&mut tx).await?;
                        if let Err(refused) = check_with_reads(&mut tx, body).await? {
                            outcomes.push(Outcome::Record(Err(refused)));
                            continue;
                        }
                    }
                    let now = now_ms();
                    let r = stage(&mut staged, &mut st, &mut self.ids, now, body, key.as_ref());
                    if slow {
                        project_with_reads(&mut tx, &mut staged, r.seq, now, body).await?;
                    }
                    if let Some(k) = key {
                        known.insert(k.clone(), r);
                    }
                    metrics::counter!("edge_events_recorded_total", "kind" => body.kind().as_str())
                        .increment(1);
                    Outcome::Record(Ok(r))
                }
                Op::Ack { up_to, .. } => {
                    staged.flush(&mut tx).await?;
                    ack(&mut tx, &mut st, *up_to).await?;
                    Outcome::Ack
                }
                Op::Downlink { items, .. } => {
                    staged.flush(&mut tx).await?;
                    Outcome::Downlink(downlink(&mut tx, &mut st, items).await?)
                }
            };
            outcomes.push(outcome);
        }
        staged.flush(&mut tx).await?;
        if st.outbox_bytes.max(0) as u64 > self.budget {
            enforce_budget(&mut tx, &mut st, self.budget).await?;
        } else {
            st.over_budget = false;
        }
        sqlx::query(
            "UPDATE sync_state SET next_seq = ?, acked_up_to = ?, outbox_bytes = ?, dropped_telemetry = ?, \
             down_applied = ?, last_ack_ms = ? WHERE id = 1",
        )
        .bind(st.next_seq as i64)
        .bind(st.acked as i64)
        .bind(st.outbox_bytes)
        .bind(st.dropped as i64)
        .bind(st.down_applied as i64)
        .bind(st.last_ack_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.state = st;
        st.publish(&self.stats);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(outcomes)
    }
}

async fn ack(tx: &mut SqliteTransaction<'_>, st: &mut WriterState, up_to: Seq) -> Result<(), JournalError> {
    let highest = st.next_seq.saturating_sub(1);
    let up_to = if up_to.0 > highest {
        tracing::error!(
            ack = up_to.0,
            highest,
            "hub acked a seq this store never produced (journal replaced or restored?); clamping"
        );
        highest
    } else {
        up_to.0
    };
    if up_to <= st.acked {
        return Ok(());
    }
    let freed: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(bytes), 0) FROM outbox WHERE seq <= ? AND dropped = 0")
            .bind(up_to as i64)
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query("DELETE FROM outbox WHERE seq <= ?")
        .bind(up_to as i64)
        .execute(&mut **tx)
        .await?;
    st.outbox_bytes -= freed;
    st.acked = up_to;
    st.last_ack_ms = Some(now_ms());
    Ok(())
}

/// Drops telemetry payloads, oldest first, until the outbox fits its budget.
async fn enforce_budget(
    tx: &mut SqliteTransaction<'_>,
    st: &mut WriterState,
    budget: u64,
) -> Result<(), JournalError> {
    while st.outbox_bytes.max(0) as u64 > budget {
        let victims = sqlx::query(
            "SELECT seq, bytes, event_id, kind, created_ms FROM outbox \
             WHERE telemetry = 1 AND dropped = 0 ORDER BY seq LIMIT 256",
        )
        .fetch_all(&mut **tx)
        .await?;
        if victims.is_empty() {
            st.over_budget = true;
            return Ok(());
        }
        let mut count = 0u64;
        let mut last_seq = 0i64;
        for v in &victims {
            if st.outbox_bytes.max(0) as u64 <= budget {
                break;
            }
            let seq: i64 = v.try_get(0)?;
            let bytes: i64 = v.try_get(1)?;
            let id: Vec<u8> = v.try_get(2)?;
            let kind: String = v.try_get(3)?;
            // The seq stays, with a placeholder the hub sees as TelemetryDropped.
            let placeholder = encode_event(&Event {
                id: EventId::from_slice(&id).unwrap_or(EventId::from_u128(0)),
                seq: Seq(seq as u64),
                recorded_at_ms: v.try_get(4)?,
                body: EventBody::TelemetryDropped(TelemetryDropped {
                    kind: EventKind::parse(&kind).unwrap_or(EventKind::Scan),
                }),
            });
            sqlx::query("UPDATE outbox SET payload = ?, dropped = 1 WHERE seq = ?")
                .bind(placeholder)
                .bind(seq)
                .execute(&mut **tx)
                .await?;
            st.outbox_bytes -= bytes;
            last_seq = seq;
            count += 1;
        }
        st.dropped += count;
        metrics::counter!("edge_telemetry_dropped_total").increment(count);
        tracing::warn!(
            dropped = count,
            up_to_seq = last_seq,
            "outbox over budget: dropped oldest telemetry"
        );
    }
    st.over_budget = false;
    Ok(())
}
