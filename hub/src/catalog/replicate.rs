//! What stores get of the catalog: the whole of it once (a snapshot, when
//! an edge first comes online) and every change after that as downlink
//! deltas in the change's transaction.

use std::collections::BTreeSet;

use sqlx::{Any, AssertSqlSafe, Transaction};
use storegate_protocol::downlink::DownBody;
use storegate_protocol::{Currency, Sku, StoreId};

use super::{lock, prices, products, promotions};
use crate::audit;
use crate::db::{Db, now_ms};
use crate::domain::price::{Price, PriceScope, price_schedule, segment_items};
use crate::sql::row;

row! {
    /// A store that gets catalog deltas (it had its snapshot).
    struct Replica {
        store_id: String,
        region: Option<String>,
    }
}

async fn replicas(tx: &mut Transaction<'static, Any>) -> Result<Vec<Replica>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.store_id AS store_id, s.region AS region FROM stores s \
         JOIN store_sync y ON y.store_id = s.store_id WHERE y.snapshot_ms IS NOT NULL ORDER BY s.store_id",
    )
    .fetch_all(&mut **tx)
    .await
}

/// Enqueues `bodies` to every replica; returns the stores.
pub(super) async fn fan_out(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    bodies: &[DownBody],
) -> Result<Vec<StoreId>, sqlx::Error> {
    let mut out = Vec::new();
    if bodies.is_empty() {
        return Ok(out);
    }
    for r in replicas(tx).await? {
        crate::downlink::enqueue(tx, db, &r.store_id, bodies).await?;
        out.extend(StoreId::parse(r.store_id).ok());
    }
    Ok(out)
}

/// The currency of a price whose own does not parse (never stored: prices
/// are checked on the way in).
fn fallback() -> Result<Currency, sqlx::Error> {
    Currency::parse("EUR").map_err(|e| sqlx::Error::Protocol(e.to_string()))
}

/// A store's schedule of each of `skus` as downlink items.
fn schedules<'a>(
    rows: &[Price],
    skus: impl IntoIterator<Item = &'a str>,
    store: &str,
    region: Option<&str>,
    now: i64,
) -> Result<Vec<DownBody>, sqlx::Error> {
    let fallback = fallback()?;
    let mut items = Vec::new();
    for sku in skus {
        let Ok(parsed) = Sku::parse(sku) else { continue };
        let segments = price_schedule(rows, sku, store, region, now);
        items.extend(segment_items(&parsed, &segments, fallback));
    }
    Ok(items)
}

/// Sends the replicas a price of `scope` (`id`) concerns their schedules
/// of `skus`.
pub(super) async fn fan_out_prices(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    skus: &[String],
    scope: PriceScope,
    id: &str,
) -> Result<Vec<StoreId>, sqlx::Error> {
    let rows = prices::of(tx, Some(skus)).await?;
    let now = now_ms();
    let mut out = Vec::new();
    for r in replicas(tx).await? {
        let concerned = match scope {
            PriceScope::All => true,
            PriceScope::Region => r.region.as_deref() == Some(id),
            PriceScope::Location => r.store_id == id,
        };
        if !concerned {
            continue;
        }
        let items = schedules(
            &rows,
            skus.iter().map(String::as_str),
            &r.store_id,
            r.region.as_deref(),
            now,
        )?;
        crate::downlink::enqueue(tx, db, &r.store_id, &items).await?;
        out.extend(StoreId::parse(r.store_id).ok());
    }
    Ok(out)
}

row! {
    struct SyncRow {
        snapshot_ms: Option<i64>,
        hwm: i64,
        region: Option<String>,
    }
}

/// Sends `store` the whole catalog, its stock levels and its open tasks,
/// once (when its edge first comes online). Returns true if it did.
pub async fn snapshot_if_new(db: &Db, store: &StoreId) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    lock(&mut tx, db).await?;
    let row: Option<SyncRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT y.snapshot_ms AS snapshot_ms, y.hwm AS hwm, s.region AS region FROM store_sync y \
         JOIN stores s ON s.store_id = y.store_id WHERE y.store_id = $1{}",
        db.for_update()
    )))
    .bind(store.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row.filter(|r| r.snapshot_ms.is_none()) else {
        return Ok(false);
    };
    let mut items: Vec<DownBody> = products::load(&mut tx, None)
        .await?
        .iter()
        .filter_map(|p| p.to_down().map(DownBody::ProductUpsert))
        .collect();
    let rows = prices::of(&mut tx, None).await?;
    let now = now_ms();
    let skus: BTreeSet<&str> = rows.iter().map(|p| p.sku.as_str()).collect();
    items.extend(schedules(
        &rows,
        skus,
        store.as_str(),
        row.region.as_deref(),
        now,
    )?);
    items.extend(promotions::snapshot_items(&mut tx).await?);
    items.extend(crate::stock::level_items(&mut tx, store.as_str(), None, row.hwm).await?);
    items.extend(crate::tasks::open_items(&mut tx, store.as_str()).await?);
    let n = items.len();
    crate::downlink::enqueue(&mut tx, db, store.as_str(), &items).await?;
    sqlx::query("UPDATE store_sync SET snapshot_ms = $2 WHERE store_id = $1")
        .bind(store.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        "hub:catalog",
        "catalog_snapshot_sent",
        "store",
        store.as_str(),
        serde_json::json!({ "items": n }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(store = %store, items = n, "catalog snapshot queued for a new store");
    Ok(true)
}
