//! Scratch PostgreSQL databases for tests and benchmarks: one fresh
//! database each, on the server in `STOREGATE_TEST_PG`.

use std::time::Duration;

use sqlx::Connection;

/// The server to use (a maintenance database on it).
pub fn server_url() -> String {
    std::env::var("STOREGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh database and returns its URL.
pub async fn fresh_database(prefix: &str) -> anyhow::Result<String> {
    let admin = server_url();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
        .await
        .map_err(|_| anyhow::anyhow!("PostgreSQL at {admin}: connect timed out"))?
        .map_err(|e| anyhow::anyhow!("PostgreSQL at {admin}: {e}"))?;
    let id: u64 = rand::random();
    let name = format!("{prefix}_{id:016x}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(b, _)| b)
        .to_owned();
    Ok(format!("{base}/{name}"))
}

/// Drops a database made by [`fresh_database`] (best effort).
pub async fn drop_database(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&server_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}
