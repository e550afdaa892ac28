//! Quarantine: messages the hub could not use, kept with their raw bytes,
//! counted, and visible through the API. Nothing in quarantine stalls
//! ingestion: the message is acked and the stream goes on.

use sqlx::Row;

use crate::db::{Db, now_ms};

/// Most raw bytes kept of one message (the size is always recorded).
pub const KEEP_BYTES: usize = 64 * 1024;

/// Why a message was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not a valid envelope (or a version this hub does not read).
    Undecodable,
    /// Larger than `ingest.max_payload_bytes`.
    Oversized,
    /// A topic the hub does not serve.
    UnknownTopic,
    /// The payload names another store than its topic.
    StoreMismatch,
    /// A batch that contradicts itself (seq jumps, header mismatch).
    InvalidBatch,
    /// A valid message on a topic that does not carry it.
    UnexpectedMessage,
}

impl Reason {
    /// Stable name for the database, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::Oversized => "oversized",
            Reason::UnknownTopic => "unknown_topic",
            Reason::StoreMismatch => "store_mismatch",
            Reason::InvalidBatch => "invalid_batch",
            Reason::UnexpectedMessage => "unexpected_message",
        }
    }
}

/// Stores a quarantined message. Failing to store it is logged, never
/// propagated: quarantine must not become a new way to stall.
pub async fn put(db: &Db, topic: &str, store: Option<&str>, reason: Reason, detail: &str, payload: &[u8]) {
    metrics::counter!("hub_quarantined_total", "reason" => reason.as_str()).increment(1);
    tracing::warn!(
        topic,
        store,
        reason = reason.as_str(),
        detail,
        size = payload.len(),
        "message quarantined"
    );
    let kept = &payload[..payload.len().min(KEEP_BYTES)];
    let result = sqlx::query(
        "INSERT INTO quarantine (received_ms, topic, store_id, reason, size, payload) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(crate::sql::text(topic))
    .bind(store.map(crate::sql::text))
    .bind(format!("{}: {}", reason.as_str(), crate::sql::text(detail)))
    .bind(payload.len() as i64)
    .bind(kept.to_vec())
    .execute(&db.pool)
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not store a quarantined message");
    }
}

/// Quarantined messages so far.
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) FROM quarantine")
        .fetch_one(&db.pool)
        .await?;
    row.try_get(0)
}
