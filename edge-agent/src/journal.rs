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

use std::collections::HashSet;
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
    CardAuth, Event, EventBody, EventClass, EventKind, Sale, TelemetryDropped, Tender, TenderMethod,
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

enum Op {
    Record {
        body: EventBody,
        key: Option<String>,
        reply: oneshot::Sender<Result<Recorded, JournalError>>,
    },
    Ack {
        up_to: Seq,
        reply: oneshot::Sender<Result<(), JournalError>>,
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
                let _ = reply.send(Ok(()));
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
            Op::Ack { reply, .. } => {
                let _ = reply.send(Err(e));
            }
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
            .busy_timeout(Duration::from_secs(10));
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        migrator().run(&mut conn).await?;
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
        let handle = tokio::spawn(writer.run(rx));
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
        let key = key.or_else(|| natural_key(&body));
        let (reply, rx) = oneshot::channel();
        self.send(Op::Record { body, key, reply }).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// The hub committed everything up to `up_to`: delete those outbox rows.
    pub async fn ack(&self, up_to: Seq) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Ack { up_to, reply }).await?;
        rx.await.map_err(|_| JournalError::Closed)?
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
    /// about `max_bytes` (a single larger row is still returned alone).
    pub async fn fetch_outbox(
        &self,
        from: Seq,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, JournalError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, kind, payload, created_ms FROM outbox WHERE seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(from.0 as i64)
        .bind(max_events as i64)
        .fetch_all(&self.inner.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in rows {
            let seq = Seq(row.try_get::<i64, _>(0)? as u64);
            let payload: Option<Vec<u8>> = row.try_get(3)?;
            let encoded = match payload {
                Some(p) => p,
                None => {
                    let id: Vec<u8> = row.try_get(1)?;
                    let kind: String = row.try_get(2)?;
                    encode_event(&Event {
                        id: EventId::from_slice(&id).unwrap_or(EventId::from_u128(0)),
                        seq,
                        recorded_at_ms: row.try_get(4)?,
                        body: EventBody::TelemetryDropped(TelemetryDropped {
                            kind: EventKind::parse(&kind).unwrap_or(EventKind::Scan),
                        }),
                    })
                }
            };
            if !out.is_empty() && bytes + encoded.len() > max_bytes {
                break;
            }
            bytes += encoded.len();
            out.push(OutboxRow { seq, encoded });
        }
        Ok(out)
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
        Ok(sqlx::query_scalar(
            "SELECT COALESCE((SELECT on_hand FROM stock_levels WHERE sku = ?1), 0) + \
             COALESCE((SELECT SUM(delta) FROM stock_moves WHERE sku = ?1 AND seq > \
             COALESCE((SELECT as_of_seq FROM stock_levels WHERE sku = ?1), 0)), 0)",
        )
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
fn natural_key(body: &EventBody) -> Option<String> {
    match body {
        EventBody::Sale(s) => Some(format!("sale:{}", s.sale_id)),
        EventBody::SaleVoided(v) => Some(format!("void:{}", v.sale_id)),
        EventBody::Return(r) => Some(format!("return:{}", r.return_id)),
        EventBody::PaymentVoided(p) => Some(format!("payment-void:{}", p.payment_key)),
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
}

impl WriterState {
    async fn load(conn: &mut SqliteConnection) -> Result<WriterState, JournalError> {
        let row = sqlx::query(
            "SELECT next_seq, acked_up_to, outbox_bytes, dropped_telemetry, down_applied, last_ack_ms \
             FROM sync_state WHERE id = 1",
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
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let outcome = match op {
                Op::Record { body, key, .. } => {
                    Outcome::Record(record(&mut tx, &mut st, &mut self.ids, body, key.as_deref()).await?)
                }
                Op::Ack { up_to, .. } => {
                    ack(&mut tx, &mut st, *up_to).await?;
                    Outcome::Ack
                }
                Op::Downlink { items, .. } => Outcome::Downlink(downlink(&mut tx, &mut st, items).await?),
            };
            outcomes.push(outcome);
        }
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

/// Records one event inside the group's transaction. `Ok(Err(..))` is a
/// refusal of this operation alone (nothing written); `Err` fails the group.
async fn record(
    tx: &mut SqliteTransaction<'_>,
    st: &mut WriterState,
    ids: &mut EventIdGenerator,
    body: &EventBody,
    key: Option<&str>,
) -> Result<Result<Recorded, JournalError>, JournalError> {
    if let Some(key) = key {
        let prior = sqlx::query("SELECT seq, event_id FROM journal_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = prior {
            let id: Vec<u8> = row.try_get(1)?;
            return Ok(Ok(Recorded {
                seq: Seq(row.try_get::<i64, _>(0)? as u64),
                id: EventId::from_slice(&id).unwrap_or(EventId::from_u128(0)),
                duplicate: true,
            }));
        }
    }
    // Checks that need the journal, before anything is written.
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

    let now = now_ms();
    let seq = Seq(st.next_seq);
    let id = ids.next(now.max(0) as u64, rand::random::<u128>);
    let event = Event {
        id,
        seq,
        recorded_at_ms: now,
        body: body.clone(),
    };
    let encoded = encode_event(&event);
    let telemetry = body.class() == EventClass::Telemetry;
    sqlx::query(
        "INSERT INTO outbox (seq, event_id, kind, telemetry, payload, bytes, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq.0 as i64)
    .bind(id.to_bytes().as_slice())
    .bind(body.kind().as_str())
    .bind(i64::from(telemetry))
    .bind(encoded.as_slice())
    .bind(encoded.len() as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    st.next_seq += 1;
    st.outbox_bytes += encoded.len() as i64;
    if let Some(key) = key {
        sqlx::query("INSERT INTO journal_keys (key, seq, event_id) VALUES (?, ?, ?)")
            .bind(key)
            .bind(seq.0 as i64)
            .bind(id.to_bytes().as_slice())
            .execute(&mut **tx)
            .await?;
    }
    project(tx, seq, now, body).await?;
    metrics::counter!("edge_events_recorded_total", "kind" => body.kind().as_str()).increment(1);
    Ok(Ok(Recorded {
        seq,
        id,
        duplicate: false,
    }))
}

fn tender_row(t: &Tender) -> (&'static str, bool, &'static str, Option<&str>) {
    match &t.method {
        TenderMethod::Cash { .. } => ("cash", false, "tendered", None),
        TenderMethod::Card(c) | TenderMethod::GiftCard(c) => {
            let method = if matches!(t.method, TenderMethod::Card(_)) {
                "card"
            } else {
                "gift_card"
            };
            match c.auth {
                CardAuth::Online { .. } => (method, false, "authorized", Some(c.card.last4.as_str())),
                CardAuth::StoreAndForward { .. } => {
                    (method, true, "pending_capture", Some(c.card.last4.as_str()))
                }
            }
        }
    }
}

async fn insert_payments(
    tx: &mut SqliteTransaction<'_>,
    sale_id: Option<EventId>,
    tenders: &[Tender],
    refund: bool,
    now: i64,
) -> Result<(), JournalError> {
    if tenders.is_empty() {
        return Ok(());
    }
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO payments (payment_key, sale_id, method, amount_minor, currency, offline, status, last4, created_ms) ",
    );
    q.push_values(tenders, |mut b, t| {
        let (method, offline, status, last4) = tender_row(t);
        let status = if refund { "refunded" } else { status };
        b.push_bind(t.payment_key.to_bytes().to_vec())
            .push_bind(sale_id.map(|s| s.to_bytes().to_vec()))
            .push_bind(method)
            .push_bind(t.amount.minor)
            .push_bind(t.amount.currency.as_str().to_owned())
            .push_bind(i64::from(offline))
            .push_bind(status)
            .push_bind(last4.map(str::to_owned))
            .push_bind(now);
    });
    q.push(" ON CONFLICT (payment_key) DO NOTHING");
    q.build().execute(&mut **tx).await?;
    Ok(())
}

async fn insert_moves(
    tx: &mut SqliteTransaction<'_>,
    seq: Seq,
    moves: &[(String, i64)],
) -> Result<(), JournalError> {
    if moves.is_empty() {
        return Ok(());
    }
    for chunk in moves.chunks(2000) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO stock_moves (seq, sku, delta) ");
        q.push_values(chunk, |mut b, (sku, delta)| {
            b.push_bind(seq.0 as i64)
                .push_bind(sku.as_str())
                .push_bind(*delta);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes the journal tables an event implies.
async fn project(
    tx: &mut SqliteTransaction<'_>,
    seq: Seq,
    now: i64,
    body: &EventBody,
) -> Result<(), JournalError> {
    let mut moves: Vec<(String, i64)> = body
        .stock_deltas()
        .into_iter()
        .map(|(sku, d)| (sku.as_str().to_owned(), d))
        .collect();
    match body {
        EventBody::Sale(s) => {
            sqlx::query(
                "INSERT INTO sales (sale_id, seq, lane, total_minor, currency, completed_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(s.sale_id.to_bytes().as_slice())
            .bind(seq.0 as i64)
            .bind(s.lane.as_str())
            .bind(s.totals.total.minor)
            .bind(s.totals.total.currency.as_str())
            .bind(s.completed_at_ms)
            .bind(postcard_bytes(s))
            .execute(&mut **tx)
            .await?;
            insert_payments(tx, Some(s.sale_id), &s.tenders, false, now).await?;
        }
        EventBody::SaleVoided(v) => {
            let body: Vec<u8> = sqlx::query_scalar("SELECT body FROM sales WHERE sale_id = ?")
                .bind(v.sale_id.to_bytes().as_slice())
                .fetch_one(&mut **tx)
                .await?;
            sqlx::query("UPDATE sales SET voided = 1 WHERE sale_id = ?")
                .bind(v.sale_id.to_bytes().as_slice())
                .execute(&mut **tx)
                .await?;
            if v.restock
                && let Ok(sale) = postcard::from_bytes::<Sale>(&body)
            {
                moves.extend(
                    sale.lines
                        .iter()
                        .map(|l| (l.sku.as_str().to_owned(), l.qty.base_units())),
                );
            }
            insert_payments(tx, Some(v.sale_id), &v.refunds, true, now).await?;
        }
        EventBody::Return(r) => {
            let refund = Money::sum(
                r.lines
                    .first()
                    .map(|l| l.amount.currency)
                    .unwrap_or(Currency::EUR),
                r.lines.iter().map(|l| &l.amount),
            )
            .map(|m| m.minor)
            .unwrap_or(0);
            sqlx::query("INSERT INTO returns (return_id, seq, original_sale, refund_minor, body) VALUES (?, ?, ?, ?, ?)")
                .bind(r.return_id.to_bytes().as_slice())
                .bind(seq.0 as i64)
                .bind(r.original_sale.map(|s| s.to_bytes().to_vec()))
                .bind(refund)
                .bind(postcard_bytes(r))
                .execute(&mut **tx)
                .await?;
            insert_payments(tx, r.original_sale, &r.refunds, true, now).await?;
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
        EventBody::StockCounted(c) => {
            for line in &c.lines {
                let view: i64 = sqlx::query_scalar(
                    "SELECT COALESCE((SELECT on_hand FROM stock_levels WHERE sku = ?1), 0) + \
                     COALESCE((SELECT SUM(delta) FROM stock_moves WHERE sku = ?1 AND seq > \
                     COALESCE((SELECT as_of_seq FROM stock_levels WHERE sku = ?1), 0)), 0)",
                )
                .bind(line.sku.as_str())
                .fetch_one(&mut **tx)
                .await?;
                moves.push((line.sku.as_str().to_owned(), line.counted - view));
            }
        }
        EventBody::TaskUpdated(t) => {
            let status = match t.status {
                storegate_protocol::event::TaskStatus::Accepted => "accepted",
                storegate_protocol::event::TaskStatus::InProgress => "in_progress",
                storegate_protocol::event::TaskStatus::Done => "done",
                storegate_protocol::event::TaskStatus::Failed => "failed",
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
    insert_moves(tx, seq, &moves).await
}

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
    let freed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(bytes), 0) FROM outbox WHERE seq <= ? AND payload IS NOT NULL",
    )
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
            "SELECT seq, bytes FROM outbox WHERE telemetry = 1 AND payload IS NOT NULL ORDER BY seq LIMIT 256",
        )
        .fetch_all(&mut **tx)
        .await?;
        if victims.is_empty() {
            st.over_budget = true;
            return Ok(());
        }
        let mut last_seq = 0i64;
        let mut count = 0u64;
        for v in &victims {
            let seq: i64 = v.try_get(0)?;
            let bytes: i64 = v.try_get(1)?;
            if st.outbox_bytes.max(0) as u64 <= budget {
                break;
            }
            st.outbox_bytes -= bytes;
            last_seq = seq;
            count += 1;
        }
        sqlx::query(
            "UPDATE outbox SET payload = NULL WHERE telemetry = 1 AND payload IS NOT NULL AND seq <= ?",
        )
        .bind(last_seq)
        .execute(&mut **tx)
        .await?;
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
        if item.seq.0 != st.down_applied + 1 {
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
