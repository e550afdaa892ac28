//! The hub's database: SQLite (embedded default) or PostgreSQL, through
//! sqlx's `Any` driver so that one SQL text serves both.
//!
//! Rules that keep one text valid on both: placeholders are `$1, $2...`
//! (SQLite accepts them through sqlx); times are BIGINT milliseconds; flags
//! are 0/1 integers; ids are TEXT or BLOB/BYTEA. Where the two differ
//! (row locks, upserts returning values), callers branch on [`DbKind`].
//!
//! SQLite runs in WAL mode with `synchronous=FULL`; write transactions start
//! with `BEGIN IMMEDIATE` so that concurrent writers wait for the lock
//! instead of failing when they upgrade from reading.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Transaction};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The pool and what it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    /// Connections.
    pub pool: AnyPool,
    /// Connections whose commits do not wait for the disk (PostgreSQL's
    /// `synchronous_commit = off`; on SQLite, the same pool as `pool`).
    /// Only for records whose loss in a crash of the database server is
    /// harmless, and which every later durable commit makes durable too
    /// (the server's log is written in order): an Idempotency-Key's claim
    /// (lost, the request never happened) and its stored answer (lost, the
    /// answer is read again from what the request created), and the
    /// simulated payment provider's bookkeeping. Never money, stock or
    /// orders.
    pub relaxed: AnyPool,
    /// SQLite or PostgreSQL.
    pub kind: DbKind,
}

/// Why the database is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Could not connect.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, without password.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite directory could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn redact(url: &str) -> String {
    // postgres://user:secret@host/db -> postgres://user:***@host/db
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Every migration: version, description, SQLite text, PostgreSQL text.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "core",
        include_str!("../migrations/sqlite/0001_core.sql"),
        include_str!("../migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        "commerce",
        include_str!("../migrations/sqlite/0002_commerce.sql"),
        include_str!("../migrations/postgres/0002_commerce.sql"),
    ),
    (
        3,
        "order line discounts",
        include_str!("../migrations/sqlite/0003_order_line_discounts.sql"),
        include_str!("../migrations/postgres/0003_order_line_discounts.sql"),
    ),
    (
        4,
        "store credentials",
        include_str!("../migrations/sqlite/0004_store_credentials.sql"),
        include_str!("../migrations/postgres/0004_store_credentials.sql"),
    ),
    (
        5,
        "token epochs",
        include_str!("../migrations/sqlite/0005_token_epochs.sql"),
        include_str!("../migrations/postgres/0005_token_epochs.sql"),
    ),
];

fn migrations(kind: DbKind) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sqlite, postgres)| {
                let sql = match kind {
                    DbKind::Sqlite => *sqlite,
                    DbKind::Postgres => *postgres,
                };
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect(),
    )
}

impl Db {
    /// Connects (creating the SQLite file and its directory if needed).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else {
            DbKind::Postgres
        };
        let url = if kind == DbKind::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default();
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|source| DbError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            }
        } else {
            url.to_owned()
        };
        let pool = Self::pool(kind, &url, max_connections, false).await?;
        let relaxed = match kind {
            DbKind::Sqlite => pool.clone(),
            DbKind::Postgres => Self::pool(kind, &url, (max_connections / 2).max(2), true).await?,
        };
        Ok(Db { pool, relaxed, kind })
    }

    async fn pool(kind: DbKind, url: &str, max_connections: u32, relaxed: bool) -> Result<AnyPool, DbError> {
        AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                    } else if relaxed {
                        conn.execute("SET synchronous_commit = off").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| DbError::Connect {
                url: redact(url),
                source,
            })
    }

    /// Brings the schema up to date.
    pub async fn migrate(&self) -> Result<(), DbError> {
        migrations(self.kind).run(&self.pool).await?;
        Ok(())
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.kind {
            DbKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            DbKind::Postgres => self.pool.begin().await,
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// ` FOR UPDATE` on PostgreSQL (row locks), nothing on SQLite (whose
    /// write lock covers the transaction).
    pub fn for_update(&self) -> &'static str {
        match self.kind {
            DbKind::Sqlite => "",
            DbKind::Postgres => " FOR UPDATE",
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
