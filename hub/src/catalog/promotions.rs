//! Promotions: saved and ended with their deltas to every store; the ones
//! in effect price online orders by the same rules stores apply.

use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use storegate_protocol::StoreId;
use storegate_protocol::downlink::{self as dl, DownBody};

use super::{CatalogError, lock, products, replicate};
use crate::audit;
use crate::db::{Db, now_ms};
use crate::domain::product::Promotion;
use crate::sql::{self, row};

row! {
    struct PromotionRow {
        id: String,
        label: String,
        rule: String,
        skus: String,
        starts_ms: i64,
        ends_ms: Option<i64>,
        active: i64,
    }
}

impl PromotionRow {
    /// The promotion, or `None` (logged) if what is stored does not read.
    fn promotion(self) -> Option<Promotion> {
        let read = (serde_json::from_str(&self.rule), serde_json::from_str(&self.skus));
        let (Ok(rule), Ok(skus)) = read else {
            tracing::warn!(promotion = %self.id, "promotion unreadable; skipped");
            return None;
        };
        Some(Promotion {
            id: self.id,
            label: self.label,
            rule,
            skus,
            starts_ms: self.starts_ms,
            ends_ms: self.ends_ms,
            active: self.active != 0,
        })
    }
}

/// Promotions, by id: all of them, or those in effect at `at_ms`.
async fn load(conn: &mut AnyConnection, at_ms: Option<i64>) -> Result<Vec<Promotion>, sqlx::Error> {
    let filter = if at_ms.is_some() {
        "WHERE active = 1 AND starts_ms <= $1 AND (ends_ms IS NULL OR ends_ms > $1)"
    } else {
        "WHERE $1 = 0"
    };
    let rows: Vec<PromotionRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, label, rule, skus, starts_ms, ends_ms, active FROM promotions {filter} ORDER BY id"
    )))
    .bind(at_ms.unwrap_or(0))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().filter_map(PromotionRow::promotion).collect())
}

/// Every promotion, by id (ended ones inactive).
pub async fn list_promotions(db: &Db) -> Result<Vec<Promotion>, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    load(&mut conn, None).await
}

/// The promotions in effect at `at_ms`, as stores get them (the same
/// rules price online orders and store baskets).
pub async fn promotions_at(conn: &mut AnyConnection, at_ms: i64) -> Result<Vec<dl::Promotion>, sqlx::Error> {
    Ok(load(conn, Some(at_ms))
        .await?
        .iter()
        .filter_map(Promotion::to_down)
        .collect())
}

/// Active promotions as downlink items (a store's snapshot).
pub(super) async fn snapshot_items(conn: &mut AnyConnection) -> Result<Vec<DownBody>, sqlx::Error> {
    Ok(load(conn, None)
        .await?
        .iter()
        .filter(|p| p.active)
        .filter_map(Promotion::to_down)
        .map(DownBody::PromotionUpsert)
        .collect())
}

/// Creates or replaces a promotion and sends it to every store.
pub(super) async fn save(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    p: &Promotion,
) -> Result<Vec<StoreId>, CatalogError> {
    let down = p.validate()?;
    lock(tx, db).await?;
    for s in &p.skus {
        if !products::exists(tx, s).await? {
            return Err(CatalogError::Invalid(format!("product {s} does not exist")));
        }
    }
    sqlx::query(
        "INSERT INTO promotions (id, label, rule, skus, starts_ms, ends_ms, active, created_ms) VALUES ($1, $2, $3, $4, $5, $6, 1, $7) \
         ON CONFLICT (id) DO UPDATE SET label = excluded.label, rule = excluded.rule, skus = excluded.skus, \
         starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms, active = 1",
    )
    .bind(p.id.as_str())
    .bind(sql::text(&p.label))
    .bind(serde_json::to_string(&p.rule).unwrap_or_default())
    .bind(serde_json::to_string(&p.skus).unwrap_or_default())
    .bind(p.starts_ms)
    .bind(p.ends_ms)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        "promotion_saved",
        "promotion",
        &p.id,
        serde_json::to_value(p).unwrap_or_default(),
    )
    .await?;
    Ok(replicate::fan_out(tx, db, &[DownBody::PromotionUpsert(down)]).await?)
}

/// Ends a promotion everywhere.
pub(super) async fn remove(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    id: &str,
) -> Result<Vec<StoreId>, CatalogError> {
    lock(tx, db).await?;
    let n = sqlx::query("UPDATE promotions SET active = 0 WHERE id = $1 AND active = 1")
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(CatalogError::NotFound(format!("active promotion {id}")));
    }
    audit::record(
        tx,
        actor,
        "promotion_removed",
        "promotion",
        id,
        serde_json::json!({}),
    )
    .await?;
    Ok(replicate::fan_out(tx, db, &[DownBody::PromotionRemoved { id: id.to_owned() }]).await?)
}
