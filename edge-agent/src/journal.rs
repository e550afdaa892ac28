//! The durable journal: every business fact and its outbox row in one
//! SQLite transaction, committed before anyone is told it is saved.
//!
//! # Durability
//!
//! SQLite in WAL mode with `synchronous = FULL`: every commit fsyncs the
//! WAL, so a committed sale survives `kill -9` and power loss. A sale is
//! acknowledged to a till only after its commit returns.
//!
//! # Write path (group commit)
//!
//! One writer task owns the only writing connection. Callers send it
//! operations over a channel; it takes everything queued (up to
//! `journal.max_group`), applies it in ONE transaction and commits once, so
//! fifty lanes completing sales at once pay for one fsync, not fifty. If a
//! group fails, each operation is retried alone, so one bad operation cannot
//! fail its neighbours.
//!
//! For each recorded event the writer, in that transaction: assigns the
//! next `seq` (gap-free, never reused: the counter lives in `sync_state`,
//! not in `max(seq)`), mints a time-ordered event id, writes the outbox row
//! and the journal projections (sales, payments, returns, stock moves,
//! tasks), and records the idempotency key if there is one.
//!
//! # Read path
//!
//! A small read-only pool serves the sync engine (outbox batches), the
//! status endpoint and lookups; WAL readers never block the writer.
//!
//! # When data is deleted
//!
//! Outbox rows are deleted only when the hub's application ack covers them
//! ([`Journal::ack`]). Over the disk budget, telemetry payloads are dropped
//! oldest first; the row and its seq stay (as a placeholder the hub sees as
//! `TelemetryDropped`), so the sequence never has a gap. Business events
//! are never dropped.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, SqliteTransaction};
use storegate_protocol::downlink::{DownBody, DownItem, PaymentOutcome};
use storegate_protocol::envelope::{decode_event, encode_event};
use storegate_protocol::event::{
    CardAuth, Event, EventBody, EventClass, EventKind, TaskStatus, TelemetryDropped, Tender, TenderMethod,
};
use storegate_protocol::ids::EventIdGenerator;
use storegate_protocol::{Currency, EventId, Measure, Money, Seq};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::settings::JournalSettings;

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The writer task has stopped (shutting down).
    #[error("journal is closed")]
    Closed,
    /// The database failed; nothing of the operation was written.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The operation was refused; nothing was written.
    #[error("{0}")]
    Invalid(String),
}

/// A recorded event's place in the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// Its seq.
    pub seq: Seq,
    /// Its id.
    pub id: EventId,
    /// True when the idempotency key was seen before: nothing new was written
    /// and `seq`/`id` are the first recording's.
    pub duplicate: bool,
}

/// What applying a downlink batch did.
#[derive(Debug, Clone, Default)]
pub struct DownApplied {
    /// Downlink applied up to this seq (answer it with a `DownAck`).
    pub applied_up_to: Seq,
    /// The items newly applied, for whoever forwards tasks and config to devices.
    pub applied: Vec<DownBody>,
    /// Items skipped because they were applied before.
    pub duplicates: usize,
    /// True when an item after a gap was held back.
    pub gap: bool,
}

/// An outbox row, ready to splice into an uplink batch.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its seq.
    pub seq: Seq,
    /// The postcard-encoded `Event` (a `TelemetryDropped` placeholder when
    /// the payload was dropped over budget).
    pub encoded: Vec<u8>,
}

/// Encoded events of consecutive outbox rows, concatenated.
#[derive(Debug, Clone)]
pub struct RawBatch {
    /// How many events.
    pub events: usize,
    /// The first one's seq.
    pub first: Seq,
    /// The last one's seq.
    pub last: Seq,
    /// Their postcard encodings, back to back.
    pub bytes: Vec<u8>,
}

/// Live counters, updated after every commit. Cheap to read.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Seq the next event will get.
    pub next_seq: AtomicU64,
    /// Hub committed up to.
    pub acked_up_to: AtomicU64,
    /// Bytes of live outbox payloads.
    pub outbox_bytes: AtomicU64,
    /// Telemetry payloads dropped, ever.
    pub dropped_telemetry: AtomicU64,
    /// Downlink applied up to.
    pub down_applied: AtomicU64,
    /// Wall clock of the last application ack (0: never).
    pub last_ack_ms: AtomicI64,
    /// True when only business events remain and the outbox is still over budget.
    pub over_budget: AtomicBool,
    /// Durable commits (groups) so far.
    pub commits: AtomicU64,
}

/// A point-in-time copy of [`JournalStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Seq the next event will get.
    pub next_seq: u64,
    /// Hub committed up to.
    pub acked_up_to: u64,
    /// Events waiting for the hub.
    pub outbox_depth: u64,
    /// Bytes of live outbox payloads.
    pub outbox_bytes: u64,
    /// Telemetry payloads dropped, ever.
    pub dropped_telemetry: u64,
    /// Downlink applied up to.
    pub down_applied: u64,
    /// Wall clock of the last application ack.
    pub last_ack_ms: Option<i64>,
    /// Over budget with nothing left to drop.
    pub over_budget: bool,
}

/// An idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A sale's own id (looked up in `sales`).
    Sale(EventId),
    /// Any other key (kept in `journal_keys`).
    Named(String),
}

enum Op {
    Record {
        body: EventBody,
        key: Option<Key>,
        reply: oneshot::Sender<Result<Recorded, JournalError>>,
    },
    Ack {
        up_to: Seq,
        /// `None` for acks sent in the background.
        reply: Option<oneshot::Sender<Result<(), JournalError>>>,
    },
    Downlink {
        items: Vec<DownItem>,
        reply: oneshot::Sender<Result<DownApplied, JournalError>>,
    },
}

enum Outcome {
    Record(Result<Recorded, JournalError>),
    Ack,
    Downlink(DownApplied),
    /// The operation's transaction failed; nothing of it was written.
    Failed(JournalError),
}

impl Op {
    fn deliver(self, outcome: Outcome) {
        match (self, outcome) {
            (Op::Record { reply, .. }, Outcome::Record(r)) => {
                let _ = reply.send(r);
            }
            (Op::Ack { reply, .. }, Outcome::Ack) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            (Op::Downlink { reply, .. }, Outcome::Downlink(d)) => {
                let _ = reply.send(Ok(d));
            }
            (op, Outcome::Failed(e)) => op.fail(e),
            (op, _) => op.fail(JournalError::Invalid(
                "internal: mismatched journal outcome".into(),
            )),
        }
    }

    fn fail(self, e: JournalError) {
        match self {
            Op::Record { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Op::Ack { reply, .. } => match reply {
                Some(reply) => {
                    let _ = reply.send(Err(e));
                }
                None => {
                    tracing::warn!(error = %e, "background ack failed; the rows stay and are acked again later")
                }
            },
            Op::Downlink { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Handle to the journal. Cheap to clone; every clone talks to the same writer.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Operations for the writer task.
    tx: mpsc::Sender<Op>,
    /// Read-only connections (WAL readers).
    read: SqlitePool,
    /// Counters mirrored from `sync_state` after each commit.
    stats: Arc<JournalStats>,
    /// Woken after a commit that added outbox rows.
    outbox_changed: Arc<Notify>,
    /// The store's currency; every amount recorded must be in it.
    currency: Currency,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Record { body, .. } => write!(f, "Record({})", body.kind()),
            Op::Ack { up_to, .. } => write!(f, "Ack({up_to})"),
            Op::Downlink { items, .. } => write!(f, "Downlink({} items)", items.len()),
        }
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "journal".into(),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(include_str!("../migrations/0001_journal.sql")),
        false,
    )])
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`, runs migrations and
    /// starts the writer task.
    pub async fn open(
        path: &Path,
        settings: &JournalSettings,
        currency: Currency,
    ) -> Result<(Journal, tokio::task::JoinHandle<()>), JournalError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Multi-row INSERTs have one statement per row count and table;
            // keep them all prepared.
            .statement_cache_capacity(4096);
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        migrator().run(&mut conn).await?;
        // Checkpoints run on their own connection (see `checkpointer`), so a
        // till's commit rarely pays for one. The writer's own checkpoint is a
        // backstop: under non-stop load a background checkpoint never lets
        // the WAL restart, the writer's does (and finds little left to copy).
        sqlx::query("PRAGMA wal_autocheckpoint = 4000")
            .execute(&mut conn)
            .await?;
        sqlx::query("PRAGMA journal_size_limit = 67108864")
            .execute(&mut conn)
            .await?;
        let checkpoint_conn = SqliteConnection::connect_with(&opts).await?;
        let state = WriterState::load(&mut conn).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        let stats = Arc::new(JournalStats::default());
        state.publish(&stats);
        let outbox_changed = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            conn,
            state,
            ids: EventIdGenerator::new(),
            stats: stats.clone(),
            outbox_changed: outbox_changed.clone(),
            budget: settings.outbox_budget_bytes,
            max_group: settings.max_group.max(1),
        };
        let writer_done = tokio_util::sync::CancellationToken::new();
        let checkpoints = tokio::spawn(checkpointer(checkpoint_conn, writer_done.clone()));
        let handle = tokio::spawn(async move {
            writer.run(rx).await;
            writer_done.cancel();
            let _ = checkpoints.await;
        });
        Ok((
            Journal {
                inner: Arc::new(Inner {
                    tx,
                    read,
                    stats,
                    outbox_changed,
                    currency,
                }),
            },
            handle,
        ))
    }

    /// Records an event durably. Returns after the commit.
    ///
    /// `key` makes the call idempotent: a second call with the same key
    /// writes nothing and returns the first recording. Sales, returns and
    /// payment voids use their own ids as key when none is given.
    pub async fn record(&self, body: EventBody, key: Option<String>) -> Result<Recorded, JournalError> {
        validate(&body, self.inner.currency)?;
        let key = key.map(Key::Named).or_else(|| natural_key(&body));
        let (reply, rx) = oneshot::channel();
        self.send(Op::Record { body, key, reply }).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// The hub committed everything up to `up_to`: delete those outbox rows.
    pub async fn ack(&self, up_to: Seq) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Ack {
            up_to,
            reply: Some(reply),
        })
        .await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Like [`Journal::ack`] without waiting for the deletion: the sync
    /// loop must not stall on the disk. Acks are cumulative, so one that
    /// cannot be queued now is covered by the next.
    pub fn ack_in_background(&self, up_to: Seq) {
        if self.inner.tx.try_send(Op::Ack { up_to, reply: None }).is_err() {
            tracing::debug!(up_to = up_to.0, "journal busy; ack deferred to the next one");
        }
    }

    /// Applies downlink items in seq order, idempotently.
    pub async fn apply_downlink(&self, items: Vec<DownItem>) -> Result<DownApplied, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Downlink { items, reply }).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    async fn send(&self, op: Op) -> Result<(), JournalError> {
        self.inner.tx.send(op).await.map_err(|_| JournalError::Closed)
    }

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

    /// The read-only pool, for modules that serve lookups.
    pub fn reader(&self) -> &SqlitePool {
        &self.inner.read
    }

    /// Live counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let next = s.next_seq.load(Ordering::Acquire);
        let acked = s.acked_up_to.load(Ordering::Acquire);
        let last = s.last_ack_ms.load(Ordering::Acquire);
        StatsSnapshot {
            next_seq: next,
            acked_up_to: acked,
            outbox_depth: next.saturating_sub(1).saturating_sub(acked),
            outbox_bytes: s.outbox_bytes.load(Ordering::Acquire),
            dropped_telemetry: s.dropped_telemetry.load(Ordering::Acquire),
            down_applied: s.down_applied.load(Ordering::Acquire),
            last_ack_ms: (last > 0).then_some(last),
            over_budget: s.over_budget.load(Ordering::Acquire),
        }
    }

    /// Durable commits so far.
    pub fn commits(&self) -> u64 {
        self.inner.stats.commits.load(Ordering::Relaxed)
    }

    /// Resolves after the next commit that added outbox rows.
    pub fn outbox_changed(&self) -> Arc<Notify> {
        self.inner.outbox_changed.clone()
    }

    /// The store's currency.
    pub fn currency(&self) -> Currency {
        self.inner.currency
    }
}

/// The idempotency key a body carries by itself.
fn natural_key(body: &EventBody) -> Option<Key> {
    match body {
        EventBody::Sale(s) => Some(Key::Sale(s.sale_id)),
        EventBody::SaleVoided(v) => Some(Key::Named(format!("void:{}", v.sale_id))),
        EventBody::Return(r) => Some(Key::Named(format!("return:{}", r.return_id))),
        EventBody::PaymentVoided(p) => Some(Key::Named(format!("payment-void:{}", p.payment_key))),
        _ => None,
    }
}

/// Checks what can be checked without the database.
fn validate(body: &EventBody, currency: Currency) -> Result<(), JournalError> {
    let bad = |m: String| Err(JournalError::Invalid(m));
    let check_money = |what: &str, m: &Money| {
        if m.currency != currency {
            Err(JournalError::Invalid(format!(
                "{what} is in {} but this store works in {currency}",
                m.currency
            )))
        } else {
            Ok(())
        }
    };
    match body {
        EventBody::TelemetryDropped(_) => {
            return bad("TelemetryDropped is written by the journal itself, never recorded".into());
        }
        EventBody::Sale(s) => {
            if s.lines.is_empty() {
                return bad("a sale needs at least one line".into());
            }
            check_money("sale total", &s.totals.total)?;
            for l in &s.lines {
                check_money("line total", &l.total)?;
                check_money("unit price", &l.unit_price)?;
            }
            for t in &s.tenders {
                check_money("tender", &t.amount)?;
            }
            let paid = Money::sum(currency, s.tenders.iter().map(|t| &t.amount))
                .map_err(|e| JournalError::Invalid(e.to_string()))?;
            if paid != s.totals.total {
                return bad(format!(
                    "tenders sum to {paid} but the sale total is {}",
                    s.totals.total
                ));
            }
        }
        EventBody::Return(r) => {
            if r.lines.is_empty() {
                return bad("a return needs at least one line".into());
            }
            for l in &r.lines {
                check_money("return line", &l.amount)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Copies the WAL back into the database in the background (PASSIVE: never
/// blocks the writer), so the WAL stays small and no commit pays for a
/// checkpoint. Stops when the journal is closed.
async fn checkpointer(mut conn: SqliteConnection, writer_done: tokio_util::sync::CancellationToken) {
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
struct WriterState {
    next_seq: u64,
    acked: u64,
    outbox_bytes: i64,
    dropped: u64,
    down_applied: u64,
    last_ack_ms: Option<i64>,
    over_budget: bool,
    /// Running total of outbox `bytes`, continued from the newest row.
    cum_bytes: i64,
}

impl WriterState {
    async fn load(conn: &mut SqliteConnection) -> Result<WriterState, JournalError> {
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

    fn publish(&self, stats: &JournalStats) {
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

struct Writer {
    /// The one writing connection.
    conn: SqliteConnection,
    /// Counters as of the last commit (plus this group's changes while applying).
    state: WriterState,
    /// Mints event ids in seq order.
    ids: EventIdGenerator,
    /// Where committed counters are published.
    stats: Arc<JournalStats>,
    /// Woken after commits that add outbox rows.
    outbox_changed: Arc<Notify>,
    /// Outbox budget in bytes.
    budget: u64,
    /// Most operations per commit.
    max_group: usize,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
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

/// Rows staged by a group, written with one multi-row INSERT per table:
/// a group of fifty sales costs a handful of statements, not hundreds.
#[derive(Default)]
struct Staged {
    outbox: Vec<OutboxIns>,
    keys: Vec<(String, i64, [u8; 16])>,
    sales: Vec<SaleIns>,
    returns: Vec<ReturnIns>,
    payments: Vec<PaymentIns>,
    moves: Vec<(i64, String, i64)>,
}

struct OutboxIns {
    seq: i64,
    id: [u8; 16],
    kind: &'static str,
    telemetry: bool,
    /// `None` for sales: their bytes live in `sales.body`.
    payload: Option<Vec<u8>>,
    bytes: i64,
    cum_bytes: i64,
    created_ms: i64,
}

struct SaleIns {
    sale_id: [u8; 16],
    event_id: [u8; 16],
    seq: i64,
    lane: String,
    total_minor: i64,
    currency: Currency,
    completed_ms: i64,
    /// The encoded sale event (the same bytes as its outbox payload).
    body: Vec<u8>,
}

struct ReturnIns {
    return_id: [u8; 16],
    seq: i64,
    original_sale: Option<[u8; 16]>,
    refund_minor: i64,
    body: Vec<u8>,
}

struct PaymentIns {
    payment_key: [u8; 16],
    sale_id: Option<[u8; 16]>,
    method: &'static str,
    amount_minor: i64,
    currency: Currency,
    offline: bool,
    status: &'static str,
    last4: Option<String>,
    created_ms: i64,
}

/// Rows per multi-row INSERT (well under SQLite's 32766 bound parameters).
const CHUNK: usize = 400;

impl Staged {
    fn is_empty(&self) -> bool {
        self.outbox.is_empty()
            && self.keys.is_empty()
            && self.sales.is_empty()
            && self.returns.is_empty()
            && self.payments.is_empty()
            && self.moves.is_empty()
    }

    async fn flush(&mut self, tx: &mut SqliteTransaction<'_>) -> Result<(), JournalError> {
        if self.is_empty() {
            return Ok(());
        }
        for chunk in self.outbox.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO outbox (seq, event_id, kind, telemetry, payload, bytes, cum_bytes, created_ms) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.seq)
                    .push_bind(r.id.as_slice())
                    .push_bind(r.kind)
                    .push_bind(i64::from(r.telemetry))
                    .push_bind(r.payload.as_deref())
                    .push_bind(r.bytes)
                    .push_bind(r.cum_bytes)
                    .push_bind(r.created_ms);
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.keys.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO journal_keys (key, seq, event_id) ");
            q.push_values(chunk, |mut b, (k, seq, id)| {
                b.push_bind(k.as_str()).push_bind(*seq).push_bind(id.as_slice());
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.sales.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO sales (sale_id, event_id, seq, lane, total_minor, currency, completed_ms, body) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.sale_id.as_slice())
                    .push_bind(r.event_id.as_slice())
                    .push_bind(r.seq)
                    .push_bind(r.lane.as_str())
                    .push_bind(r.total_minor)
                    .push_bind(r.currency.as_str())
                    .push_bind(r.completed_ms)
                    .push_bind(r.body.as_slice());
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.returns.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO returns (return_id, seq, original_sale, refund_minor, body) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.return_id.as_slice())
                    .push_bind(r.seq)
                    .push_bind(r.original_sale.map(|s| s.to_vec()))
                    .push_bind(r.refund_minor)
                    .push_bind(r.body.as_slice());
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.payments.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO payments (payment_key, sale_id, method, amount_minor, currency, offline, status, last4, created_ms) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.payment_key.as_slice())
                    .push_bind(r.sale_id.map(|s| s.to_vec()))
                    .push_bind(r.method)
                    .push_bind(r.amount_minor)
                    .push_bind(r.currency.as_str())
                    .push_bind(i64::from(r.offline))
                    .push_bind(r.status)
                    .push_bind(r.last4.as_deref())
                    .push_bind(r.created_ms);
            });
            q.push(" ON CONFLICT (payment_key) DO NOTHING");
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.moves.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO stock_moves (seq, sku, delta) ");
            q.push_values(chunk, |mut b, (seq, sku, delta)| {
                b.push_bind(*seq).push_bind(sku.as_str()).push_bind(*delta);
            });
            // Two lines of one event for the same SKU add up.
            q.push(" ON CONFLICT (sku, seq) DO UPDATE SET delta = delta + excluded.delta");
            q.build().execute(&mut **tx).await?;
        }
        *self = Staged::default();
        Ok(())
    }
}

/// Looks up every idempotency key of the group's records: one query for
/// sale ids, one for named keys.
async fn lookup_keys(
    tx: &mut SqliteTransaction<'_>,
    ops: &[Op],
) -> Result<HashMap<Key, Recorded>, JournalError> {
    let mut sales = Vec::new();
    let mut named = Vec::new();
    for op in ops {
        match op {
            Op::Record {
                key: Some(Key::Sale(id)),
                ..
            } => sales.push(id.to_bytes()),
            Op::Record {
                key: Some(Key::Named(k)),
                ..
            } => named.push(k.as_str()),
            _ => {}
        }
    }
    let mut known = HashMap::new();
    let recorded = |seq: i64, id: Vec<u8>| Recorded {
        seq: Seq(seq as u64),
        id: EventId::from_slice(&id).unwrap_or(EventId::from_u128(0)),
        duplicate: true,
    };
    for chunk in sales.chunks(CHUNK) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT sale_id, seq, event_id FROM sales WHERE sale_id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(id.as_slice());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
            let sale: Vec<u8> = row.try_get(0)?;
            if let Some(sale) = EventId::from_slice(&sale) {
                known.insert(Key::Sale(sale), recorded(row.try_get(1)?, row.try_get(2)?));
            }
        }
    }
    for chunk in named.chunks(CHUNK) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT key, seq, event_id FROM journal_keys WHERE key IN (");
        let mut list = q.separated(", ");
        for k in chunk {
            list.push_bind(*k);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
            known.insert(
                Key::Named(row.try_get(0)?),
                recorded(row.try_get(1)?, row.try_get(2)?),
            );
        }
    }
    Ok(known)
}

/// Kinds whose projection reads the journal (and so cannot be staged blind).
fn needs_reads(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::SaleVoided(_)
            | EventBody::StockCounted(_)
            | EventBody::PaymentVoided(_)
            | EventBody::TaskUpdated(_)
    )
}

/// Checks that need the journal, before a seq is spent. `Ok(Err(..))`
/// refuses this operation alone.
async fn check_with_reads(
    tx: &mut SqliteTransaction<'_>,
    body: &EventBody,
) -> Result<Result<(), JournalError>, JournalError> {
    if let EventBody::SaleVoided(v) = body {
        let voided: Option<i64> = sqlx::query_scalar("SELECT voided FROM sales WHERE sale_id = ?")
            .bind(v.sale_id.to_bytes().as_slice())
            .fetch_optional(&mut **tx)
            .await?;
        match voided {
            None => return Ok(Err(JournalError::Invalid(format!("no sale {}", v.sale_id)))),
            Some(1) => {
                return Ok(Err(JournalError::Invalid(format!(
                    "sale {} is already voided",
                    v.sale_id
                ))));
            }
            Some(_) => {}
        }
    }
    Ok(Ok(()))
}

/// Assigns the next seq and an event id, encodes the event, and stages its
/// outbox row, idempotency key and (for kinds that need no reads) its
/// journal projection.
fn stage(
    staged: &mut Staged,
    st: &mut WriterState,
    ids: &mut EventIdGenerator,
    now: i64,
    body: &EventBody,
    key: Option<&Key>,
) -> Recorded {
    let seq = Seq(st.next_seq);
    let id = ids.next(now.max(0) as u64, rand::random::<u128>);
    let encoded = encode_event(&Event {
        id,
        seq,
        recorded_at_ms: now,
        body: body.clone(),
    });
    st.next_seq += 1;
    st.outbox_bytes += encoded.len() as i64;
    st.cum_bytes += encoded.len() as i64;
    if let Some(Key::Named(key)) = key {
        staged.keys.push((key.clone(), seq.0 as i64, id.to_bytes()));
    }
    let bytes = encoded.len() as i64;
    let mut payload = Some(encoded);
    let seq_i = seq.0 as i64;
    staged.moves.extend(
        body.stock_deltas()
            .into_iter()
            .map(|(sku, d)| (seq_i, sku.as_str().to_owned(), d)),
    );
    match body {
        EventBody::Sale(s) => {
            stage_payments(staged, Some(s.sale_id), &s.tenders, false, now);
            staged.sales.push(SaleIns {
                sale_id: s.sale_id.to_bytes(),
                event_id: id.to_bytes(),
                seq: seq_i,
                lane: s.lane.as_str().to_owned(),
                total_minor: s.totals.total.minor,
                currency: s.totals.total.currency,
                completed_ms: s.completed_at_ms,
                // Stored once: the outbox row joins it by seq.
                body: payload.take().unwrap_or_default(),
            });
        }
        EventBody::Return(r) => {
            stage_payments(staged, r.original_sale, &r.refunds, true, now);
            staged.returns.push(ReturnIns {
                return_id: r.return_id.to_bytes(),
                seq: seq_i,
                original_sale: r.original_sale.map(EventId::to_bytes),
                refund_minor: r.lines.iter().map(|l| l.amount.minor).sum(),
                body: payload.clone().unwrap_or_default(),
            });
        }
        _ => {}
    }
    staged.outbox.push(OutboxIns {
        seq: seq_i,
        id: id.to_bytes(),
        kind: body.kind().as_str(),
        telemetry: body.class() == EventClass::Telemetry,
        payload,
        bytes,
        cum_bytes: st.cum_bytes,
        created_ms: now,
    });
    Recorded {
        seq,
        id,
        duplicate: false,
    }
}

fn stage_payments(staged: &mut Staged, sale_id: Option<EventId>, tenders: &[Tender], refund: bool, now: i64) {
    for t in tenders {
        let (method, offline, status, last4) = match &t.method {
            TenderMethod::Cash { .. } => ("cash", false, "tendered", None),
            TenderMethod::Card(c) | TenderMethod::GiftCard(c) => {
                let method = if matches!(t.method, TenderMethod::Card(_)) {
                    "card"
                } else {
                    "gift_card"
                };
                let last4 = Some(c.card.last4.as_str().to_owned());
                match c.auth {
                    CardAuth::Online { .. } => (method, false, "authorized", last4),
                    CardAuth::StoreAndForward { .. } => (method, true, "pending_capture", last4),
                }
            }
        };
        staged.payments.push(PaymentIns {
            payment_key: t.payment_key.to_bytes(),
            sale_id: sale_id.map(EventId::to_bytes),
            method,
            amount_minor: t.amount.minor,
            currency: t.amount.currency,
            offline,
            status: if refund { "refunded" } else { status },
            last4,
            created_ms: now,
        });
    }
}

/// Projections that read the journal; runs after the group's earlier rows
/// were flushed, and stages whatever it can.
async fn project_with_reads(
    tx: &mut SqliteTransaction<'_>,
    staged: &mut Staged,
    seq: Seq,
    now: i64,
    body: &EventBody,
) -> Result<(), JournalError> {
    let seq_i = seq.0 as i64;
    match body {
        EventBody::SaleVoided(v) => {
            let sale_event: Vec<u8> = sqlx::query_scalar("SELECT body FROM sales WHERE sale_id = ?")
                .bind(v.sale_id.to_bytes().as_slice())
                .fetch_one(&mut **tx)
                .await?;
            sqlx::query("UPDATE sales SET voided = 1 WHERE sale_id = ?")
                .bind(v.sale_id.to_bytes().as_slice())
                .execute(&mut **tx)
                .await?;
            if v.restock
                && let Ok(Event {
                    body: EventBody::Sale(sale),
                    ..
                }) = decode_event(&sale_event)
            {
                staged.moves.extend(
                    sale.lines
                        .iter()
                        .map(|l| (seq_i, l.sku.as_str().to_owned(), l.qty.base_units())),
                );
            }
            stage_payments(staged, Some(v.sale_id), &v.refunds, true, now);
        }
        EventBody::StockCounted(c) => {
            for line in &c.lines {
                let view: i64 = sqlx::query_scalar(STOCK_VIEW_SQL)
                    .bind(line.sku.as_str())
                    .fetch_one(&mut **tx)
                    .await?;
                staged
                    .moves
                    .push((seq_i, line.sku.as_str().to_owned(), line.counted - view));
            }
        }
        EventBody::PaymentVoided(p) => {
            sqlx::query(
                "INSERT INTO payments (payment_key, sale_id, method, amount_minor, currency, offline, status, detail, created_ms) \
                 VALUES (?, NULL, 'card', ?, ?, 0, 'voided', ?, ?) \
                 ON CONFLICT (payment_key) DO UPDATE SET status = 'voided', detail = excluded.detail",
            )
            .bind(p.payment_key.to_bytes().as_slice())
            .bind(p.amount.minor)
            .bind(p.amount.currency.as_str())
            .bind(p.reason.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        EventBody::TaskUpdated(t) => {
            let status = match t.status {
                TaskStatus::Accepted => "accepted",
                TaskStatus::InProgress => "in_progress",
                TaskStatus::Done => "done",
                TaskStatus::Failed => "failed",
            };
            sqlx::query("UPDATE tasks SET status = ?, updated_ms = ? WHERE task_id = ?")
                .bind(status)
                .bind(now)
                .bind(t.task_id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The stock a store shows for `?1`: hub level plus later local movements.
const STOCK_VIEW_SQL: &str = "SELECT COALESCE((SELECT on_hand FROM stock_levels WHERE sku = ?1), 0) + \
     COALESCE((SELECT SUM(delta) FROM stock_moves WHERE sku = ?1 AND seq > \
     COALESCE((SELECT as_of_seq FROM stock_levels WHERE sku = ?1), 0)), 0)";

fn postcard_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("protocol types have known lengths and no fallible Serialize impls")
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

async fn downlink(
    tx: &mut SqliteTransaction<'_>,
    st: &mut WriterState,
    items: &[DownItem],
) -> Result<DownApplied, JournalError> {
    let mut out = DownApplied::default();
    let mut sorted: Vec<&DownItem> = items.iter().collect();
    sorted.sort_by_key(|i| i.seq);
    let mut seen = HashSet::new();
    for item in sorted {
        if item.seq.0 <= st.down_applied || !seen.insert(item.seq) {
            out.duplicates += 1;
            continue;
        }
        if st.down_applied.checked_add(1) != Some(item.seq.0) {
            out.gap = true;
            break;
        }
        apply_down_item(tx, &item.body).await?;
        st.down_applied = item.seq.0;
        out.applied.push(item.body.clone());
    }
    out.applied_up_to = Seq(st.down_applied);
    Ok(out)
}

async fn apply_down_item(tx: &mut SqliteTransaction<'_>, body: &DownBody) -> Result<(), JournalError> {
    let now = now_ms();
    match body {
        DownBody::ProductUpsert(p) => {
            sqlx::query(
                "INSERT INTO products (sku, name, measure, tax_rate_bp, category, active) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (sku) DO UPDATE SET name = excluded.name, measure = excluded.measure, \
                 tax_rate_bp = excluded.tax_rate_bp, category = excluded.category, active = excluded.active",
            )
            .bind(p.sku.as_str())
            .bind(p.name.as_str())
            .bind(match p.measure {
                Measure::Each => "each",
                Measure::Grams => "grams",
            })
            .bind(i64::from(p.tax_rate_bp))
            .bind(p.category.as_deref())
            .bind(i64::from(p.active))
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM barcodes WHERE sku = ?")
                .bind(p.sku.as_str())
                .execute(&mut **tx)
                .await?;
            for g in &p.barcodes {
                sqlx::query("INSERT INTO barcodes (gtin14, sku) VALUES (?, ?) ON CONFLICT (gtin14) DO UPDATE SET sku = excluded.sku")
                    .bind(g.to_gtin14())
                    .bind(p.sku.as_str())
                    .execute(&mut **tx)
                    .await?;
            }
        }
        DownBody::ProductRemoved { sku } => {
            sqlx::query("UPDATE products SET active = 0 WHERE sku = ?")
                .bind(sku.as_str())
                .execute(&mut **tx)
                .await?;
        }
        DownBody::PriceSet(p) => {
            sqlx::query(
                "INSERT INTO prices (sku, effective_from_ms, effective_to_ms, price_minor, currency) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (sku, effective_from_ms) DO UPDATE SET effective_to_ms = excluded.effective_to_ms, \
                 price_minor = excluded.price_minor, currency = excluded.currency",
            )
            .bind(p.sku.as_str())
            .bind(p.effective_from_ms)
            .bind(p.effective_to_ms)
            .bind(p.price.minor)
            .bind(p.price.currency.as_str())
            .execute(&mut **tx)
            .await?;
        }
        DownBody::PromotionUpsert(p) => {
            sqlx::query(
                "INSERT INTO promotions (id, starts_ms, ends_ms, body) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms, body = excluded.body",
            )
            .bind(p.id.as_str())
            .bind(p.starts_ms)
            .bind(p.ends_ms)
            .bind(postcard_bytes(p))
            .execute(&mut **tx)
            .await?;
        }
        DownBody::PromotionRemoved { id } => {
            sqlx::query("DELETE FROM promotions WHERE id = ?")
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        DownBody::StockLevel(l) => {
            sqlx::query(
                "INSERT INTO stock_levels (sku, on_hand, reserved, as_of_seq) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved, \
                 as_of_seq = excluded.as_of_seq WHERE excluded.as_of_seq >= stock_levels.as_of_seq",
            )
            .bind(l.sku.as_str())
            .bind(l.on_hand)
            .bind(l.reserved)
            .bind(l.as_of_edge_seq.0 as i64)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "DELETE FROM stock_moves WHERE sku = ?1 AND seq <= (SELECT as_of_seq FROM stock_levels WHERE sku = ?1)",
            )
            .bind(l.sku.as_str())
            .execute(&mut **tx)
            .await?;
        }
        DownBody::TaskAssigned(t) => {
            sqlx::query(
                "INSERT INTO tasks (task_id, status, body, updated_ms) VALUES (?, 'assigned', ?, ?) \
                 ON CONFLICT (task_id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
            )
            .bind(t.task_id.as_str())
            .bind(postcard_bytes(t))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        DownBody::TaskCancelled { task_id } => {
            sqlx::query("UPDATE tasks SET status = 'cancelled', updated_ms = ? WHERE task_id = ?")
                .bind(now)
                .bind(task_id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        DownBody::Config(c) => {
            for e in &c.entries {
                sqlx::query("INSERT INTO config (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                    .bind(e.key.as_str())
                    .bind(postcard_bytes(&e.value))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        DownBody::PaymentDecision(d) => {
            let (status, detail) = match &d.outcome {
                PaymentOutcome::Captured { capture_id } => ("captured", capture_id.as_str()),
                PaymentOutcome::Declined { reason } => ("declined", reason.as_str()),
            };
            sqlx::query("UPDATE payments SET status = ?, detail = ? WHERE payment_key = ?")
                .bind(status)
                .bind(detail)
                .bind(d.payment_key.to_bytes().as_slice())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}
