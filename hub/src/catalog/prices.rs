//! Price rows: append-only; reads, the price in force at a location, and
//! additions (with the new schedules sent to the stores concerned).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use storegate_protocol::StoreId;

use super::{CatalogError, lock, products, replicate};
use crate::audit;
use crate::db::{Db, now_ms};
use crate::domain::price::{Price, PriceInput, PriceScope, effective_price, validate_price};
use crate::sql::{self, row_impl};

row_impl!(Price {
    id,
    sku,
    scope,
    scope_id,
    price_minor,
    currency,
    effective_from_ms,
    effective_to_ms
});

const SELECT: &str =
    "SELECT id, sku, scope, scope_id, price_minor, currency, effective_from_ms, effective_to_ms FROM prices";

/// Price rows of `skus` (all rows if `None`), for
/// [`effective_price`] and schedules.
pub async fn of(conn: &mut AnyConnection, skus: Option<&[String]>) -> Result<Vec<Price>, sqlx::Error> {
    let Some(skus) = skus else {
        return sqlx::query_as(SELECT).fetch_all(conn).await;
    };
    let mut rows = Vec::new();
    for chunk in skus.chunks(sql::CHUNK) {
        let mut q = sqlx::query_as::<_, Price>(AssertSqlSafe(format!(
            "{SELECT} WHERE sku IN {}",
            sql::list(1, chunk.len())
        )));
        for s in chunk {
            q = q.bind(s.as_str());
        }
        rows.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Price rows of a product (or all), by id, after `after`.
pub async fn list_prices(
    db: &Db,
    sku: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<Price>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE ($1 = '' OR sku = $1) AND id > $2 ORDER BY id LIMIT $3"
    )))
    .bind(sku.unwrap_or(""))
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

async fn region_of(conn: &mut AnyConnection, location: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT region FROM stores WHERE store_id = $1")
            .bind(location)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

/// Current prices of `skus` at `location` (two queries for all of them).
pub async fn current_prices(
    conn: &mut AnyConnection,
    skus: &[String],
    location: &str,
) -> Result<HashMap<String, (i64, String)>, sqlx::Error> {
    let region = region_of(conn, location).await?;
    let rows = of(conn, Some(skus)).await?;
    let now = now_ms();
    Ok(skus
        .iter()
        .filter_map(|sku| {
            effective_price(&rows, sku, location, region.as_deref(), now)
                .map(|p| (sku.clone(), (p.price_minor, p.currency.clone())))
        })
        .collect())
}

/// The price of `sku` at `location` now, if any.
pub async fn current_price(
    conn: &mut AnyConnection,
    sku: &str,
    location: &str,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let sku = sku.to_owned();
    Ok(current_prices(conn, std::slice::from_ref(&sku), location)
        .await?
        .remove(&sku))
}

/// Appends prices (rows are never changed; a later row supersedes) and
/// sends the affected stores their new schedules.
pub(super) async fn add(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    prices: &[PriceInput],
) -> Result<Vec<StoreId>, CatalogError> {
    lock(tx, db).await?;
    let now = now_ms();
    for p in prices {
        validate_price(p)?;
        if !products::exists(tx, &p.sku).await? {
            return Err(CatalogError::Invalid(format!("product {} does not exist", p.sku)));
        }
        sqlx::query(
            "INSERT INTO prices (sku, scope, scope_id, price_minor, currency, effective_from_ms, effective_to_ms, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(p.sku.as_str())
        .bind(p.scope)
        .bind(p.scope_id.as_str())
        .bind(p.price_minor)
        .bind(p.currency.to_ascii_uppercase())
        .bind(p.effective_from_ms.unwrap_or(now))
        .bind(p.effective_to_ms)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        audit::record(
            tx,
            actor,
            "price_added",
            "product",
            &p.sku,
            serde_json::to_value(p).unwrap_or_default(),
        )
        .await?;
    }
    // Group by scope so each store gets only what concerns it.
    let mut by_scope: BTreeMap<(PriceScope, String), BTreeSet<String>> = BTreeMap::new();
    for p in prices {
        by_scope
            .entry((p.scope, p.scope_id.clone()))
            .or_default()
            .insert(p.sku.clone());
    }
    let mut stores = Vec::new();
    for ((scope, id), skus) in by_scope {
        let skus: Vec<String> = skus.into_iter().collect();
        stores.extend(replicate::fan_out_prices(tx, db, &skus, scope, &id).await?);
    }
    stores.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    stores.dedup();
    Ok(stores)
}
