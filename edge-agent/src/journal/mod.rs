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
//!
//! # Files
//!
//! This one: the handle ([`Journal`]) and what it answers. `writer`: the
//! writer task, its group commit, acks and the outbox budget. `stage`: what
//! each event writes (outbox row, key, projections). `replica`: downlink
//! applied to the catalog replica, stock, tasks and config. `reads`: the
//! read path (uplink batches, lookups for lanes). `rules`: the checks and
//! keys that need no database.

mod reads;
mod replica;
mod rules;
mod stage;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use storegate_protocol::downlink::{DownBody, DownItem};
use storegate_protocol::event::EventBody;
use storegate_protocol::ids::EventIdGenerator;
use storegate_protocol::{Currency, EventId, Seq};
use tokio::sync::{Notify, mpsc, oneshot};

pub use self::reads::{SaleRecord, Unsettled};
use self::rules::{Key, natural_key, validate};
use self::writer::{Writer, WriterState, checkpointer};
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

pub(crate) enum Op {
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

pub(crate) enum Outcome {
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
        sqlx::SqlSafeStr::into_sql_str(include_str!("../../migrations/0001_journal.sql")),
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
