//! Quarantine: messages the hub could not use, kept with their raw bytes,
//! counted, and visible through the API. Nothing in quarantine stalls
//! ingestion: the message is acked and the stream goes on.

use serde::Serialize;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::sql::row;

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
    let mut kept = &payload[..payload.len().min(KEEP_BYTES)];
    // What held card data is not kept, not even quarantined.
    let mut detail = crate::sql::text(detail);
    if storegate_protocol::pan::find(&String::from_utf8_lossy(payload)).is_some() {
        kept = &[];
        detail.push_str(" (payload not kept: it held card data)");
    }
    let result = sqlx::query(
        "INSERT INTO quarantine (received_ms, topic, store_id, reason, size, payload) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(crate::sql::text(topic))
    .bind(store.map(crate::sql::text))
    .bind(format!("{}: {detail}", reason.as_str()))
    .bind(payload.len() as i64)
    .bind(kept.to_vec())
    .execute(&db.pool)
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not store a quarantined message");
    }
}

/// A checked message as received, for quarantining what cannot be used.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// The store its topic names.
    pub store: &'a str,
    /// Its bytes.
    pub payload: &'a [u8],
}

impl Received<'_> {
    /// Quarantines it for `reason`.
    pub async fn put(&self, db: &Db, reason: Reason, detail: &str) {
        put(db, self.topic, Some(self.store), reason, detail, self.payload).await;
    }

    /// A valid message (named `what`) on a topic (of kind `topic_kind`)
    /// that does not carry it.
    pub async fn unexpected(&self, db: &Db, what: &str, topic_kind: &str) {
        let why = format!("{what} on {topic_kind} topic");
        self.put(db, Reason::UnexpectedMessage, &why).await;
    }

    /// Bytes that are not a message this hub reads.
    pub async fn undecodable(&self, db: &Db, e: impl std::fmt::Display) {
        self.put(db, Reason::Undecodable, &e.to_string()).await;
    }
}

/// Quarantined messages so far.
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM quarantine")
        .fetch_one(&db.pool)
        .await
}

/// A quarantined message.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineView {
    /// Id.
    pub id: i64,
    /// When received, ms.
    pub received_ms: i64,
    /// Its topic.
    pub topic: String,
    /// The store the topic names, if any.
    pub store_id: Option<String>,
    /// Why it was quarantined.
    pub reason: String,
    /// Its size in bytes.
    pub size: i64,
    /// The raw bytes as hex (at most 64 KiB kept); only on the single-item
    /// route.
    pub payload_hex: Option<String>,
}

row! {
    struct QuarantineRow {
        id: i64,
        received_ms: i64,
        topic: String,
        store_id: Option<String>,
        reason: String,
        size: i64,
    }
}

impl QuarantineRow {
    fn view(self, payload: Option<Vec<u8>>) -> QuarantineView {
        QuarantineView {
            id: self.id,
            received_ms: self.received_ms,
            topic: self.topic,
            store_id: self.store_id,
            reason: self.reason,
            size: self.size,
            payload_hex: payload.map(|p| p.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }
}

/// Quarantined messages (without their bytes), newest first, below id
/// `before`.
pub async fn list(db: &Db, before: i64, limit: i64) -> Result<Vec<QuarantineView>, sqlx::Error> {
    let rows: Vec<QuarantineRow> = sqlx::query_as(
        "SELECT id, received_ms, topic, store_id, reason, size FROM quarantine WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.view(None)).collect())
}

/// One quarantined message with its raw bytes.
pub async fn get(db: &Db, id: i64) -> Result<Option<QuarantineView>, sqlx::Error> {
    let row: Option<QuarantineRow> =
        sqlx::query_as("SELECT id, received_ms, topic, store_id, reason, size FROM quarantine WHERE id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM quarantine WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await?;
    Ok(Some(row.view(Some(payload))))
}
