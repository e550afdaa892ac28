//! Downlink: what the hub sends each store, the mirror image of the uplink.
//!
//! Items are written to `downlink` with a per-store seq in the same
//! transaction as the change that caused them ([`enqueue`]), and sent as
//! `DownBatch`es until the edge's `DownAck` covers them. Sends happen after
//! the commit that enqueued, after each `DownAck` that leaves items
//! pending, when a store comes online, and from a periodic sweep. A sweep
//! claims a store (a conditional update of `down_sent_ms`), so replicas do
//! not all resend the same items; a duplicate send is harmless anyway (the
//! edge applies by seq, idempotently).

use sqlx::{Any, AssertSqlSafe, Transaction};
use storegate_protocol::downlink::{DownBody, DownItem};
use storegate_protocol::envelope::DownBatch;
use storegate_protocol::{Seq, StoreId};

use crate::db::{Db, now_ms};
use crate::sql;

/// Asks whoever sends downlink (the MQTT link) to send a store's pending
/// items now, after a commit that enqueued some. Services hold this, not
/// the transport; a kick that finds nothing pending, or no one to send,
/// is harmless (the sweeper sends what is left).
#[derive(Debug, Clone)]
pub struct Kick(tokio::sync::mpsc::UnboundedSender<StoreId>);

impl Kick {
    /// A kick and the receiving end the sender drains.
    pub fn channel() -> (Kick, tokio::sync::mpsc::UnboundedReceiver<StoreId>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Kick(tx), rx)
    }

    /// Asks for `store`'s pending downlink to be sent.
    pub fn send(&self, store: &StoreId) {
        let _ = self.0.send(store.clone());
    }
}

/// Most bytes of items in one `DownBatch`.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most items in one `DownBatch`.
pub const MAX_BATCH_ITEMS: i64 = 500;

/// Appends items for `store` inside `tx`; returns the seqs they got.
pub async fn enqueue(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    store: &str,
    bodies: &[DownBody],
) -> Result<Vec<Seq>, sqlx::Error> {
    if bodies.is_empty() {
        return Ok(Vec::new());
    }
    let id = StoreId::parse(store).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    crate::stores::ensure(tx, &id, now_ms()).await?;
    let next: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT down_next FROM store_sync WHERE store_id = $1{}",
        db.for_update()
    )))
    .bind(store)
    .fetch_one(&mut **tx)
    .await?;
    let now = now_ms();
    let mut seqs = Vec::with_capacity(bodies.len());
    for (i, chunk) in bodies.chunks(sql::CHUNK).enumerate() {
        let text = sql::values(
            "INSERT INTO downlink (store_id, seq, body, created_ms)",
            chunk.len(),
            4,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (j, body) in chunk.iter().enumerate() {
            let seq = next + (i * sql::CHUNK + j) as i64;
            seqs.push(Seq(seq as u64));
            q = q
                .bind(store)
                .bind(seq)
                .bind(
                    postcard::to_allocvec(body)
                        .expect("protocol types have known lengths and no fallible Serialize impls"),
                )
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    sqlx::query("UPDATE store_sync SET down_next = $2 WHERE store_id = $1")
        .bind(store)
        .bind(next + bodies.len() as i64)
        .execute(&mut **tx)
        .await?;
    Ok(seqs)
}

/// What a `DownAck` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Recorded; what it covers is deleted.
    Applied,
    /// At or below what was already acked: nothing to do.
    Old,
    /// Above the highest downlink seq the hub has assigned to the store:
    /// impossible from an honest edge, ignored (nothing is deleted).
    Beyond {
        /// The highest seq assigned.
        highest: Seq,
    },
}

/// Records the edge's ack and deletes what it covers. An ack above the
/// highest seq the hub assigned to the store is ignored whole.
pub async fn acked(db: &Db, store: &StoreId, applied_up_to: Seq) -> Result<AckOutcome, sqlx::Error> {
    let Ok(n) = i64::try_from(applied_up_to.0) else {
        return Ok(AckOutcome::Beyond { highest: Seq(0) });
    };
    // One conditional update decides (no lock held across a read): news
    // below `down_next`, or nothing.
    let mut tx = db.begin().await?;
    let moved = sqlx::query(
        "UPDATE store_sync SET down_acked = $2 WHERE store_id = $1 AND down_acked < $2 AND $2 < down_next",
    )
    .bind(store.as_str())
    .bind(n)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 1 {
        sqlx::query("DELETE FROM downlink WHERE store_id = $1 AND seq <= $2")
            .bind(store.as_str())
            .bind(n)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(AckOutcome::Applied);
    }
    tx.rollback().await?;
    let (_, next) = cursor(db, store).await?;
    Ok(if applied_up_to >= next {
        AckOutcome::Beyond {
            highest: Seq(next.0.saturating_sub(1)),
        }
    } else {
        AckOutcome::Old
    })
}

/// The `DownBatch` of items pending for `store` after `after`, if any.
pub async fn pending_batch(db: &Db, store: &StoreId, after: Seq) -> Result<Option<DownBatch>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, body FROM downlink WHERE store_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(store.as_str())
    .bind(after.0 as i64)
    .bind(MAX_BATCH_ITEMS)
    .fetch_all(&db.pool)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    for (seq, body) in rows {
        if !items.is_empty() && bytes + body.len() > MAX_BATCH_BYTES {
            break;
        }
        bytes += body.len();
        match postcard::from_bytes::<DownBody>(&body) {
            Ok(body) => items.push(DownItem {
                seq: Seq(seq as u64),
                body,
            }),
            Err(e) => {
                // Written by this hub; unreadable means a bug or corruption.
                tracing::error!(store = %store, seq, error = %e, "unreadable downlink item");
                break;
            }
        }
    }
    if items.is_empty() {
        return Ok(None);
    }
    Ok(Some(DownBatch {
        store: store.clone(),
        items,
    }))
}

/// The store's downlink cursor: (acked up to, next seq).
pub async fn cursor(db: &Db, store: &StoreId) -> Result<(Seq, Seq), sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT down_acked, down_next FROM store_sync WHERE store_id = $1")
            .bind(store.as_str())
            .fetch_optional(&db.pool)
            .await?;
    Ok(match row {
        Some((acked, next)) => (Seq(acked.max(0) as u64), Seq(next.max(0) as u64)),
        None => (Seq(0), Seq(1)),
    })
}

/// Stores with items unacked for longer than `older_than_ms`, claimed by
/// this replica for a resend (the claim is the `down_sent_ms` update).
pub async fn claim_stale(db: &Db, older_than_ms: i64) -> Result<Vec<StoreId>, sqlx::Error> {
    let now = now_ms();
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT store_id FROM store_sync WHERE down_acked + 1 < down_next \
         AND (down_sent_ms IS NULL OR down_sent_ms < $1) LIMIT 500",
    )
    .bind(now - older_than_ms)
    .fetch_all(&db.pool)
    .await?;
    let mut claimed = Vec::new();
    for store in rows {
        let done = sqlx::query(
            "UPDATE store_sync SET down_sent_ms = $2 WHERE store_id = $1 \
             AND (down_sent_ms IS NULL OR down_sent_ms < $3)",
        )
        .bind(store.as_str())
        .bind(now)
        .bind(now - older_than_ms)
        .execute(&db.pool)
        .await?;
        if done.rows_affected() == 1
            && let Ok(s) = StoreId::parse(store)
        {
            claimed.push(s);
        }
    }
    Ok(claimed)
}
