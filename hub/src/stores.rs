//! Stores and warehouses: the registry, presence and per-store sync state.
//!
//! Stores register themselves when they first sync (their id is all the
//! hub knows then); an admin can name them, set their kind and region.

use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row};
use storegate_protocol::envelope::Presence;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};

/// A store or warehouse with its sync state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoreView {
    /// The store's id (also its MQTT topic segment).
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// `store` or `warehouse`.
    pub kind: String,
    /// Region, for allocation and regional prices.
    pub region: Option<String>,
    /// Connected to the broker, as its presence says.
    pub online: bool,
    /// Last presence or batch, ms since the epoch.
    pub last_seen_ms: Option<i64>,
    /// Edge agent version.
    pub agent_version: Option<String>,
    /// Uplink committed up to this seq.
    pub hwm: i64,
    /// Events the edge still holds, as of its last batch.
    pub backlog: i64,
    /// Milliseconds since the last batch was committed.
    pub lag_ms: Option<i64>,
    /// Telemetry events the edge dropped over its disk budget.
    pub dropped_telemetry: i64,
    /// Events ingested.
    pub events_ingested: i64,
    /// Events received again and ignored.
    pub duplicates: i64,
    /// Resend requests sent to the edge.
    pub resend_requests: i64,
    /// Downlink items not yet acked by the edge.
    pub downlink_pending: i64,
}

const SELECT: &str = "SELECT s.store_id, s.name, s.kind, s.region, s.online, s.last_seen_ms, s.agent_version, \
     COALESCE(y.hwm, 0), COALESCE(y.backlog, 0), y.last_batch_ms, COALESCE(y.dropped_telemetry, 0), \
     COALESCE(y.events_ingested, 0), COALESCE(y.duplicates, 0), COALESCE(y.resend_requests, 0), \
     COALESCE(y.down_next - 1 - y.down_acked, 0) \
     FROM stores s LEFT JOIN store_sync y ON y.store_id = s.store_id";

fn view(r: &sqlx::any::AnyRow, now: i64) -> Result<StoreView, sqlx::Error> {
    let last_batch: Option<i64> = r.try_get(9)?;
    Ok(StoreView {
        store_id: r.try_get(0)?,
        name: r.try_get(1)?,
        kind: r.try_get(2)?,
        region: r.try_get(3)?,
        online: r.try_get::<i64, _>(4)? != 0,
        last_seen_ms: r.try_get(5)?,
        agent_version: r.try_get(6)?,
        hwm: r.try_get(7)?,
        backlog: r.try_get(8)?,
        lag_ms: last_batch.map(|t| (now - t).max(0)),
        dropped_telemetry: r.try_get(10)?,
        events_ingested: r.try_get(11)?,
        duplicates: r.try_get(12)?,
        resend_requests: r.try_get(13)?,
        downlink_pending: r.try_get(14)?,
    })
}

/// One store.
pub async fn get(db: &Db, store_id: &str) -> Result<Option<StoreView>, sqlx::Error> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE s.store_id = $1")))
        .bind(store_id)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| view(&r, now_ms())).transpose()
}

/// Stores after `after` (by id), at most `limit`.
pub async fn list(db: &Db, after: Option<&str>, limit: i64) -> Result<Vec<StoreView>, sqlx::Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE s.store_id > $1 ORDER BY s.store_id LIMIT $2"
    )))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let now = now_ms();
    rows.iter().map(|r| view(r, now)).collect()
}

/// Registers or updates a store's descriptive fields.
pub async fn upsert(
    db: &Db,
    store_id: &str,
    name: &str,
    kind: &str,
    region: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stores (store_id, name, kind, region, created_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (store_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, region = excluded.region",
    )
    .bind(store_id)
    .bind(crate::sql::text(name))
    .bind(kind)
    .bind(region.map(crate::sql::text))
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    sqlx::query("INSERT INTO store_sync (store_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(store_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A location's kind (`store` or `warehouse`), if it exists.
pub async fn kind(conn: &mut sqlx::AnyConnection, store_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT kind FROM stores WHERE store_id = $1")
        .bind(store_id)
        .fetch_optional(conn)
        .await
}

/// Records a presence message.
/// Makes sure a store has its registry and sync rows (stores register
/// themselves on first contact; an admin names them later).
pub async fn ensure(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    store: &storegate_protocol::StoreId,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO stores (store_id, name, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(store.as_str())
        .bind(store.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO store_sync (store_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(store.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records a store's presence.
pub async fn presence(db: &Db, p: &Presence) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO stores (store_id, name, created_ms, online, last_seen_ms, agent_version, protocol_version) \
         VALUES ($1, $1, $2, $3, $2, $4, $5) ON CONFLICT (store_id) DO UPDATE SET online = excluded.online, \
         last_seen_ms = excluded.last_seen_ms, agent_version = excluded.agent_version, \
         protocol_version = excluded.protocol_version",
    )
    .bind(p.store.as_str())
    .bind(now)
    .bind(i64::from(p.online))
    .bind(crate::sql::text(&p.agent_version))
    .bind(i64::from(p.protocol_version))
    .execute(&db.pool)
    .await?;
    sqlx::query("INSERT INTO store_sync (store_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(p.store.as_str())
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A device seen at a store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// The device's id.
    pub device_id: String,
    /// scanner, scale, pos, handheld, printer, other.
    pub kind: String,
    /// ok, degraded, error, offline.
    pub status: String,
    /// Last error text.
    pub detail: String,
    /// Errors since the edge agent started.
    pub error_count: i64,
    /// Last report, ms since the epoch (edge clock).
    pub last_seen_ms: i64,
}

/// A store's devices.
pub async fn devices(db: &Db, store_id: &str) -> Result<Vec<DeviceView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT device_id, kind, status, detail, error_count, last_seen_ms FROM devices WHERE store_id = $1 ORDER BY device_id",
    )
    .bind(store_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeviceView {
                device_id: r.try_get(0)?,
                kind: r.try_get(1)?,
                status: r.try_get(2)?,
                detail: r.try_get(3)?,
                error_count: r.try_get(4)?,
                last_seen_ms: r.try_get(5)?,
            })
        })
        .collect()
}
