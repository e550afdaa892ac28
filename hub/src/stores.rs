//! Stores and warehouses: the registry, presence and per-store sync state.
//!
//! Stores register themselves when they first sync (their id is all the
//! hub knows then); an admin can name them, set their kind and region.

use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use storegate_protocol::envelope::Presence;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::sql::row;

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

const SELECT: &str = "SELECT s.store_id AS store_id, s.name AS name, s.kind AS kind, s.region AS region, \
     s.online AS online, s.last_seen_ms AS last_seen_ms, s.agent_version AS agent_version, \
     COALESCE(y.hwm, 0) AS hwm, COALESCE(y.backlog, 0) AS backlog, y.last_batch_ms AS last_batch_ms, \
     COALESCE(y.dropped_telemetry, 0) AS dropped_telemetry, COALESCE(y.events_ingested, 0) AS events_ingested, \
     COALESCE(y.duplicates, 0) AS duplicates, COALESCE(y.resend_requests, 0) AS resend_requests, \
     COALESCE(y.down_next - 1 - y.down_acked, 0) AS downlink_pending \
     FROM stores s LEFT JOIN store_sync y ON y.store_id = s.store_id";

row! {
    struct StoreRow {
        store_id: String,
        name: String,
        kind: String,
        region: Option<String>,
        online: i64,
        last_seen_ms: Option<i64>,
        agent_version: Option<String>,
        hwm: i64,
        backlog: i64,
        last_batch_ms: Option<i64>,
        dropped_telemetry: i64,
        events_ingested: i64,
        duplicates: i64,
        resend_requests: i64,
        downlink_pending: i64,
    }
}

impl StoreRow {
    fn view(self, now: i64) -> StoreView {
        StoreView {
            store_id: self.store_id,
            name: self.name,
            kind: self.kind,
            region: self.region,
            online: self.online != 0,
            last_seen_ms: self.last_seen_ms,
            agent_version: self.agent_version,
            hwm: self.hwm,
            backlog: self.backlog,
            lag_ms: self.last_batch_ms.map(|t| now.saturating_sub(t).max(0)),
            dropped_telemetry: self.dropped_telemetry,
            events_ingested: self.events_ingested,
            duplicates: self.duplicates,
            resend_requests: self.resend_requests,
            downlink_pending: self.downlink_pending,
        }
    }
}

/// One store.
pub async fn get(db: &Db, store_id: &str) -> Result<Option<StoreView>, sqlx::Error> {
    let row: Option<StoreRow> = sqlx::query_as(AssertSqlSafe(format!("{SELECT} WHERE s.store_id = $1")))
        .bind(store_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.view(now_ms())))
}

/// Stores after `after` (by id), at most `limit`.
pub async fn list(db: &Db, after: Option<&str>, limit: i64) -> Result<Vec<StoreView>, sqlx::Error> {
    let rows: Vec<StoreRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE s.store_id > $1 ORDER BY s.store_id LIMIT $2"
    )))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let now = now_ms();
    Ok(rows.into_iter().map(|r| r.view(now)).collect())
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

/// The kinds of the stores `ids` that exist, by id.
pub async fn kinds(
    conn: &mut sqlx::AnyConnection,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let mut q = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(format!(
        "SELECT store_id, kind FROM stores WHERE store_id IN {}",
        crate::sql::list(1, ids.len())
    )));
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(conn).await?.into_iter().collect())
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

row! {
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
}

/// A store's devices.
pub async fn devices(db: &Db, store_id: &str) -> Result<Vec<DeviceView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, kind, status, detail, error_count, last_seen_ms FROM devices WHERE store_id = $1 ORDER BY device_id",
    )
    .bind(store_id)
    .fetch_all(&db.pool)
    .await
}

/// A region.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RegionView {
    /// Name.
    pub region: String,
    /// Its shipping zone, if set.
    pub zone: Option<String>,
    /// Stores and warehouses in it.
    pub locations: Vec<String>,
}

row! {
    struct RegionRow {
        region: String,
        zone: Option<String>,
        store_id: String,
    }
}

/// Regions with their locations and shipping zone.
pub async fn regions(db: &Db) -> Result<Vec<RegionView>, sqlx::Error> {
    let rows: Vec<RegionRow> = sqlx::query_as(
        "SELECT s.region AS region, z.zone AS zone, s.store_id AS store_id FROM stores s \
         LEFT JOIN shipping_zones z ON z.region = s.region WHERE s.region IS NOT NULL ORDER BY s.region, s.store_id",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut out: Vec<RegionView> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(last) if last.region == r.region => last.locations.push(r.store_id),
            _ => out.push(RegionView {
                region: r.region,
                zone: r.zone,
                locations: vec![r.store_id],
            }),
        }
    }
    Ok(out)
}
