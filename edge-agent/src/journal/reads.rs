//! The read path: uplink batches for the sync engine, and the lookups lanes
//! and the status endpoint make (WAL readers never block the writer).

use sqlx::Row;
use storegate_protocol::envelope::decode_event;
use storegate_protocol::event::{Event, EventBody, Return, Sale};
use storegate_protocol::{EventId, Seq};

use super::{Journal, JournalError, OutboxRow, RawBatch};

/// The stock a store shows for `?1`: hub level plus later local movements.
pub(crate) const STOCK_VIEW_SQL: &str = "SELECT COALESCE((SELECT on_hand FROM stock_levels WHERE sku = ?1), 0) + \
     COALESCE((SELECT SUM(delta) FROM stock_moves WHERE sku = ?1 AND seq > \
     COALESCE((SELECT as_of_seq FROM stock_levels WHERE sku = ?1), 0)), 0)";

impl Journal {
    /// Outbox rows from `from` on, in seq order, at most `max_events` and
    /// `max_bytes` of stored sizes (a single larger row is still returned
    /// alone; a dropped telemetry row counts its original size), each
    /// with its own encoded event. For inspection; the sync path uses the
    /// cheaper [`Journal::fetch_batch`].
    pub async fn fetch_outbox(
        &self,
        from: Seq,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, JournalError> {
        let rows = sqlx::query(
            "SELECT o.seq, COALESCE(o.payload, s.body), o.bytes FROM outbox o LEFT JOIN sales s ON s.seq = o.seq \
             WHERE o.seq >= ? ORDER BY o.seq LIMIT ?",
        )
        .bind(from.0 as i64)
        .bind(max_events.min(i64::MAX as usize) as i64)
        .fetch_all(&self.inner.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in rows {
            let encoded: Vec<u8> = row.try_get::<Option<Vec<u8>>, _>(1)?.unwrap_or_default();
            // Sized by the stored size, as `fetch_batch` does.
            let size = row.try_get::<i64, _>(2)?.max(0) as usize;
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(OutboxRow {
                seq: Seq(row.try_get::<i64, _>(0)? as u64),
                encoded,
            });
        }
        Ok(out)
    }

    /// The next uplink batch from `from` on: the encoded events of up to
    /// `max_events` rows and about `max_bytes`, concatenated in seq order by
    /// SQLite itself, so one row crosses into Rust instead of hundreds.
    /// The bytes splice straight into an `UpBatch`.
    pub async fn fetch_batch(
        &self,
        from: Seq,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<RawBatch>, JournalError> {
        // Outbox seqs are contiguous (rows only leave from the bottom), so
        // the count bound is a seq range; the byte bound uses the stored
        // running total. CAST(.. AS TEXT) only relabels the bytes;
        // group_concat appends them by length (embedded NULs are fine) in
        // the rowid scan's order, which is seq order (tested).
        let row = sqlx::query(
            "WITH f AS (SELECT seq AS first, cum_bytes - bytes AS base FROM outbox WHERE seq >= ?1 ORDER BY seq LIMIT 1) \
             SELECT COUNT(*), MIN(o.seq), MAX(o.seq), \
                    group_concat(CAST(COALESCE(o.payload, s.body) AS TEXT), '') \
             FROM f, outbox o LEFT JOIN sales s ON s.seq = o.seq \
             WHERE o.seq >= f.first AND o.seq < f.first + ?2 \
               AND (o.cum_bytes - f.base <= ?3 OR o.seq = f.first)",
        )
        .bind(from.0 as i64)
        .bind(max_events.min(i64::MAX as usize) as i64)
        .bind(max_bytes.min(i64::MAX as usize) as i64)
        .fetch_one(&self.inner.read)
        .await?;
        let count: i64 = row.try_get(0)?;
        if count == 0 {
            return Ok(None);
        }
        let first: i64 = row.try_get(1)?;
        let last: i64 = row.try_get(2)?;
        let bytes: Vec<u8> = row
            .try_get_unchecked::<Option<Vec<u8>>, _>(3)?
            .unwrap_or_default();
        Ok(Some(RawBatch {
            events: count as usize,
            first: Seq(first as u64),
            last: Seq(last as u64),
            bytes,
        }))
    }

    /// Wall clock at which the oldest unsynced event was recorded.
    pub async fn oldest_unsynced_ms(&self) -> Result<Option<i64>, JournalError> {
        Ok(
            sqlx::query_scalar("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1")
                .fetch_optional(&self.inner.read)
                .await?,
        )
    }

    /// The stock this store shows for `sku`: the hub's level as of the edge
    /// seq it includes, plus this store's own movements after that seq.
    pub async fn stock_view(&self, sku: &str) -> Result<i64, JournalError> {
        Ok(sqlx::query_scalar(STOCK_VIEW_SQL)
            .bind(sku)
            .fetch_one(&self.inner.read)
            .await?)
    }

    /// Every event still in the outbox, decoded (for tests and diagnostics).
    pub async fn outbox_events(&self) -> Result<Vec<Event>, JournalError> {
        let rows = self.fetch_outbox(Seq(0), usize::MAX >> 1, usize::MAX).await?;
        rows.iter()
            .map(|r| decode_event(&r.encoded).map_err(|e| JournalError::Invalid(e.to_string())))
            .collect()
    }
}

/// A sale as this store recorded it.
#[derive(Debug, Clone)]
pub struct SaleRecord {
    /// The sale.
    pub sale: Sale,
    /// Its seq.
    pub seq: Seq,
    /// Voided since.
    pub voided: bool,
}

/// Offline card payments not yet settled by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unsettled {
    /// Their sum, minor units.
    pub total_minor: i64,
    /// When the oldest was taken, ms.
    pub oldest_ms: Option<i64>,
}

fn decoded(body: &[u8]) -> Result<EventBody, JournalError> {
    decode_event(body)
        .map(|e| e.body)
        .map_err(|e| JournalError::Invalid(format!("stored event unreadable: {e}")))
}

impl Journal {
    /// A sale recorded at this store.
    pub async fn sale(&self, sale_id: EventId) -> Result<Option<SaleRecord>, JournalError> {
        let row: Option<(Vec<u8>, i64, i64)> =
            sqlx::query_as("SELECT body, seq, voided FROM sales WHERE sale_id = ?")
                .bind(sale_id.to_bytes().as_slice())
                .fetch_optional(self.reader())
                .await?;
        let Some((body, seq, voided)) = row else {
            return Ok(None);
        };
        match decoded(&body)? {
            EventBody::Sale(sale) => Ok(Some(SaleRecord {
                sale,
                seq: Seq(seq as u64),
                voided: voided != 0,
            })),
            other => Err(JournalError::Invalid(format!(
                "sales row holds a {}",
                other.kind()
            ))),
        }
    }

    /// Returns recorded against `sale_id`.
    pub async fn returns_of(&self, sale_id: EventId) -> Result<Vec<Return>, JournalError> {
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM returns WHERE original_sale = ?")
            .bind(sale_id.to_bytes().as_slice())
            .fetch_all(self.reader())
            .await?;
        let mut out = Vec::with_capacity(bodies.len());
        for b in bodies {
            if let EventBody::Return(r) = decoded(&b)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Offline card payments the hub has not settled yet.
    pub async fn unsettled_offline(&self) -> Result<Unsettled, JournalError> {
        let (total_minor, oldest_ms): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COALESCE(SUM(amount_minor), 0), MIN(created_ms) FROM payments \
             WHERE offline = 1 AND status = 'pending_capture'",
        )
        .fetch_one(self.reader())
        .await?;
        Ok(Unsettled {
            total_minor,
            oldest_ms,
        })
    }
}
