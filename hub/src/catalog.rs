//! The catalog: products (several barcodes each), suppliers, categories,
//! prices per chain / region / location with effective dates, promotions;
//! CSV import and export; and its replication to the stores' edges.
//!
//! # Replication
//!
//! A store's edge gets the whole catalog once ([`snapshot_if_new`], when
//! it first comes online) and every change after that as downlink deltas,
//! in the same transaction as the change. Downlink is per-store, seq'd and
//! kept until acked, so an edge that was offline catches up in order. A
//! `locks` row serialises catalog changes with snapshots so that no change
//! falls between a snapshot and the first delta.
//!
//! # Prices at the edge
//!
//! The hub resolves scopes (location beats region beats chain; then the
//! latest start) and sends each store its own schedule ([`price_schedule`]):
//! one `PriceSet` per breakpoint, each ending at the next breakpoint. Price
//! rows are append-only, so every start an edge ever received stays a
//! breakpoint and is overwritten with the right value on every change.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use storegate_protocol::downlink::{self as dl, DownBody, PromotionRule};
use storegate_protocol::{Currency, Gtin, Measure, Money, Sku, StoreId};
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::{audit, sql};

/// Why a catalog change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// It clashes with existing data.
    #[error("{0}")]
    Conflict(String),
    /// It refers to something that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A catalog price row.
#[derive(Debug, Clone)]
pub struct PriceRow {
    /// Product.
    pub sku: String,
    /// `all`, `region` or `location`.
    pub scope: String,
    /// Region or location id (empty for `all`).
    pub scope_id: String,
    /// Minor units.
    pub price: i64,
    /// ISO code.
    pub currency: String,
    /// Start, ms.
    pub from: i64,
    /// End (exclusive), ms.
    pub to: Option<i64>,
}

/// The effective catalog price of `sku` at `location` (in `region`) at
/// time `at`: the most specific scope wins, then the latest start.
pub fn effective_price<'a>(
    prices: &'a [PriceRow],
    sku: &str,
    location: &str,
    region: Option<&str>,
    at: i64,
) -> Option<&'a PriceRow> {
    prices
        .iter()
        .filter(|p| p.sku == sku && p.from <= at && p.to.is_none_or(|t| at < t))
        .filter_map(|p| {
            let rank = match p.scope.as_str() {
                "location" if p.scope_id == location => 3,
                "region" if Some(p.scope_id.as_str()) == region => 2,
                "all" => 1,
                _ => return None,
            };
            Some((rank, p.from, p))
        })
        .max_by_key(|(rank, from, _)| (*rank, *from))
        .map(|(_, _, p)| p)
}

fn applies_to(p: &PriceRow, location: &str, region: Option<&str>) -> bool {
    match p.scope.as_str() {
        "all" => true,
        "region" => Some(p.scope_id.as_str()) == region,
        "location" => p.scope_id == location,
        _ => false,
    }
}

/// One segment of a store's price schedule: `price` from `from` until
/// `to`; `None` means no price in that segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start, ms.
    pub from: i64,
    /// End (exclusive), ms; `None` for the last.
    pub to: Option<i64>,
    /// Minor units and currency.
    pub price: Option<(i64, String)>,
}

/// The schedule of `sku` at `location` from the segment in force at `now`
/// onwards (see the module docs).
pub fn price_schedule(
    prices: &[PriceRow],
    sku: &str,
    location: &str,
    region: Option<&str>,
    now: i64,
) -> Vec<Segment> {
    let rows: Vec<&PriceRow> = prices
        .iter()
        .filter(|p| p.sku == sku && applies_to(p, location, region))
        .collect();
    let points: BTreeSet<i64> = rows
        .iter()
        .flat_map(|p| std::iter::once(p.from).chain(p.to))
        .collect();
    let points: Vec<i64> = points.into_iter().collect();
    let start = points.iter().rposition(|&p| p <= now).unwrap_or(0);
    (start..points.len())
        .map(|i| Segment {
            from: points[i],
            to: points.get(i + 1).copied(),
            price: effective_price(prices, sku, location, region, points[i])
                .map(|p| (p.price, p.currency.clone())),
        })
        .collect()
}

fn segment_items(sku: &Sku, segments: &[Segment], fallback: Currency) -> Vec<DownBody> {
    segments
        .iter()
        .map(|s| {
            let (price, to) = match &s.price {
                Some((minor, cur)) => (Money::new(*minor, Currency::parse(cur).unwrap_or(fallback)), s.to),
                // No price here: an empty range, never in force.
                None => (Money::zero(fallback), Some(s.from)),
            };
            DownBody::PriceSet(dl::Price {
                sku: sku.clone(),
                price,
                effective_from_ms: s.from,
                effective_to_ms: to,
            })
        })
        .collect()
}

/// Takes the catalog lock for this transaction.
pub async fn lock(tx: &mut Transaction<'static, Any>, db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT name FROM locks WHERE name = 'catalog'{}",
        db.for_update()
    )))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(())
}

/// A store that gets catalog deltas.
#[derive(Debug, Clone)]
struct Replica {
    store: String,
    region: Option<String>,
}

async fn replicas(tx: &mut Transaction<'static, Any>) -> Result<Vec<Replica>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT s.store_id, s.region FROM stores s JOIN store_sync y ON y.store_id = s.store_id \
         WHERE y.snapshot_ms IS NOT NULL ORDER BY s.store_id",
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Replica {
                store: r.try_get(0)?,
                region: r.try_get(1)?,
            })
        })
        .collect()
}

/// Enqueues `bodies` to every replica; returns the stores.
async fn fan_out(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    bodies: &[DownBody],
) -> Result<Vec<StoreId>, sqlx::Error> {
    let mut out = Vec::new();
    if bodies.is_empty() {
        return Ok(out);
    }
    for r in replicas(tx).await? {
        crate::downlink::enqueue(tx, db, &r.store, bodies).await?;
        out.extend(StoreId::parse(r.store).ok());
    }
    Ok(out)
}

async fn price_rows(
    tx: &mut Transaction<'static, Any>,
    skus: Option<&[String]>,
) -> Result<Vec<PriceRow>, sqlx::Error> {
    let select =
        "SELECT sku, scope, scope_id, price_minor, currency, effective_from_ms, effective_to_ms FROM prices";
    let rows = match skus {
        None => sqlx::query(select).fetch_all(&mut **tx).await?,
        Some(skus) => {
            let mut rows = Vec::new();
            for chunk in skus.chunks(sql::CHUNK) {
                let mut q = sqlx::query(AssertSqlSafe(format!(
                    "{select} WHERE sku IN {}",
                    sql::list(1, chunk.len())
                )));
                for s in chunk {
                    q = q.bind(s.as_str());
                }
                rows.extend(q.fetch_all(&mut **tx).await?);
            }
            rows
        }
    };
    rows.iter()
        .map(|r| {
            Ok(PriceRow {
                sku: r.try_get(0)?,
                scope: r.try_get(1)?,
                scope_id: r.try_get(2)?,
                price: r.try_get(3)?,
                currency: r.try_get(4)?,
                from: r.try_get(5)?,
                to: r.try_get(6)?,
            })
        })
        .collect()
}

/// Sends each replica its schedule of `skus`.
async fn fan_out_prices(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    skus: &[String],
    only: Option<&(String, String)>,
) -> Result<Vec<StoreId>, sqlx::Error> {
    let rows = price_rows(tx, Some(skus)).await?;
    let now = now_ms();
    let fallback = Currency::parse("EUR").map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let mut out = Vec::new();
    for r in replicas(tx).await? {
        if let Some((scope, id)) = only {
            let hit = match scope.as_str() {
                "region" => r.region.as_deref() == Some(id.as_str()),
                "location" => &r.store == id,
                _ => true,
            };
            if !hit {
                continue;
            }
        }
        let mut items = Vec::new();
        for sku in skus {
            let Ok(parsed) = Sku::parse(sku.as_str()) else {
                continue;
            };
            let segments = price_schedule(&rows, sku, &r.store, r.region.as_deref(), now);
            items.extend(segment_items(&parsed, &segments, fallback));
        }
        crate::downlink::enqueue(tx, db, &r.store, &items).await?;
        out.extend(StoreId::parse(r.store).ok());
    }
    Ok(out)
}

/// Sends `store` the whole catalog, its stock levels and its open tasks, once (when its
/// edge first comes online). Returns true if it did.
pub async fn snapshot_if_new(db: &Db, store: &StoreId) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    lock(&mut tx, db).await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT y.snapshot_ms, y.hwm, s.region FROM store_sync y JOIN stores s ON s.store_id = y.store_id \
         WHERE y.store_id = $1{}",
        db.for_update()
    )))
    .bind(store.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(false) };
    let snapshot: Option<i64> = row.try_get(0)?;
    if snapshot.is_some() {
        return Ok(false);
    }
    let hwm: i64 = row.try_get(1)?;
    let region: Option<String> = row.try_get(2)?;
    let products = load_products(&mut tx, None).await?;
    let mut items: Vec<DownBody> = products
        .iter()
        .filter_map(|p| p.to_down().map(DownBody::ProductUpsert))
        .collect();
    let prices = price_rows(&mut tx, None).await?;
    let now = now_ms();
    let fallback = Currency::parse("EUR").map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let skus: BTreeSet<&str> = prices.iter().map(|p| p.sku.as_str()).collect();
    for sku in skus {
        let Ok(parsed) = Sku::parse(sku) else { continue };
        let segments = price_schedule(&prices, sku, store.as_str(), region.as_deref(), now);
        items.extend(segment_items(&parsed, &segments, fallback));
    }
    for p in list_promotions(&mut tx).await? {
        if p.active
            && let Some(d) = p.to_down()
        {
            items.push(DownBody::PromotionUpsert(d));
        }
    }
    items.extend(crate::stock::level_items(&mut tx, store.as_str(), None, hwm).await?);
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

/// A product as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductInput {
    /// Name for tills, receipts and the web shop.
    pub name: String,
    /// Category id.
    pub category: Option<String>,
    /// Supplier id.
    pub supplier: Option<String>,
    /// `each` (counted) or `grams` (weighed; prices are per kilogram).
    #[serde(default = "each")]
    pub measure: String,
    /// Tax rate in basis points (2000 = 20%).
    pub tax_rate_bp: u32,
    /// Barcodes (EAN-8, UPC-A, EAN-13, GTIN-14), check digits verified.
    #[serde(default)]
    pub barcodes: Vec<String>,
    /// Free attributes (`weight_grams` is used for shipping).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// False: may not be sold.
    #[serde(default = "yes")]
    pub active: bool,
}

fn each() -> String {
    "each".into()
}
fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}
fn yes() -> bool {
    true
}

/// A product.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    /// Key.
    pub sku: String,
    /// Name.
    pub name: String,
    /// Category id.
    pub category: Option<String>,
    /// Supplier id.
    pub supplier: Option<String>,
    /// `each` or `grams`.
    pub measure: String,
    /// Tax rate, basis points.
    pub tax_rate_bp: u32,
    /// Barcodes as GTIN-14.
    pub barcodes: Vec<String>,
    /// Free attributes.
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// Sellable.
    pub active: bool,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

impl ProductView {
    fn to_down(&self) -> Option<dl::Product> {
        Some(dl::Product {
            sku: Sku::parse(self.sku.as_str()).ok()?,
            name: self.name.clone(),
            measure: if self.measure == "grams" {
                Measure::Grams
            } else {
                Measure::Each
            },
            tax_rate_bp: self.tax_rate_bp,
            barcodes: self.barcodes.iter().filter_map(|g| Gtin::parse(g).ok()).collect(),
            category: self.category.clone(),
            active: self.active,
        })
    }

    /// Shipping weight of one unit in grams (weighed goods: 1 per gram).
    pub fn unit_grams(&self, default: i64) -> i64 {
        if self.measure == "grams" {
            return 1;
        }
        self.attributes
            .get("weight_grams")
            .and_then(serde_json::Value::as_i64)
            .filter(|g| *g > 0)
            .unwrap_or(default)
    }
}

/// A validated product input.
#[derive(Debug, Clone)]
pub struct ValidProduct {
    sku: Sku,
    input: ProductInput,
    gtins: Vec<String>,
}

/// Checks a product input.
pub fn validate_product(sku: &str, input: ProductInput) -> Result<ValidProduct, CatalogError> {
    let sku = Sku::parse(sku).map_err(|e| CatalogError::Invalid(format!("sku: {e}")))?;
    if input.name.trim().is_empty() || input.name.len() > 200 {
        return Err(CatalogError::Invalid("name must be 1 to 200 bytes".into()));
    }
    if !matches!(input.measure.as_str(), "each" | "grams") {
        return Err(CatalogError::Invalid(format!(
            "measure {:?}: use `each` or `grams`",
            input.measure
        )));
    }
    if input.tax_rate_bp > 10_000 {
        return Err(CatalogError::Invalid(
            "tax_rate_bp is at most 10000 (100%)".into(),
        ));
    }
    if !input.attributes.is_object() {
        return Err(CatalogError::Invalid("attributes must be a JSON object".into()));
    }
    let mut gtins = Vec::new();
    for b in &input.barcodes {
        let g = Gtin::parse(b.trim()).map_err(|e| CatalogError::Invalid(format!("barcode {b:?}: {e}")))?;
        gtins.push(g.to_gtin14());
    }
    gtins.sort();
    gtins.dedup();
    Ok(ValidProduct { sku, input, gtins })
}

async fn load_products(
    tx: &mut Transaction<'static, Any>,
    skus: Option<&[&str]>,
) -> Result<Vec<ProductView>, sqlx::Error> {
    let select = "SELECT sku, name, category, supplier, measure, tax_rate_bp, attributes, active, created_ms, updated_ms \
                  FROM products";
    let rows = match skus {
        None => {
            sqlx::query(AssertSqlSafe(format!("{select} ORDER BY sku")))
                .fetch_all(&mut **tx)
                .await?
        }
        Some(skus) => {
            let mut rows = Vec::new();
            for chunk in skus.chunks(sql::CHUNK) {
                let mut q = sqlx::query(AssertSqlSafe(format!(
                    "{select} WHERE sku IN {} ORDER BY sku",
                    sql::list(1, chunk.len())
                )));
                for s in chunk {
                    q = q.bind(*s);
                }
                rows.extend(q.fetch_all(&mut **tx).await?);
            }
            rows
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(product_from_row(r)?);
    }
    let mut barcodes: HashMap<String, Vec<String>> = HashMap::new();
    let want: Vec<&str> = out.iter().map(|p| p.sku.as_str()).collect();
    for chunk in want.chunks(sql::CHUNK) {
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT sku, gtin14 FROM product_barcodes WHERE sku IN {} ORDER BY gtin14",
            sql::list(1, chunk.len())
        )));
        for s in chunk {
            q = q.bind(*s);
        }
        for r in q.fetch_all(&mut **tx).await? {
            barcodes.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
        }
    }
    for p in &mut out {
        p.barcodes = barcodes.remove(&p.sku).unwrap_or_default();
    }
    Ok(out)
}

fn product_from_row(r: &sqlx::any::AnyRow) -> Result<ProductView, sqlx::Error> {
    let attributes: String = r.try_get(6)?;
    let tax: i64 = r.try_get(5)?;
    let active: i64 = r.try_get(7)?;
    Ok(ProductView {
        sku: r.try_get(0)?,
        name: r.try_get(1)?,
        category: r.try_get(2)?,
        supplier: r.try_get(3)?,
        measure: r.try_get(4)?,
        tax_rate_bp: tax.clamp(0, 10_000) as u32,
        barcodes: Vec::new(),
        attributes: serde_json::from_str(&attributes).unwrap_or_else(|_| empty_object()),
        active: active != 0,
        created_ms: r.try_get(8)?,
        updated_ms: r.try_get(9)?,
    })
}

/// One product.
pub async fn get_product(db: &Db, sku: &str) -> Result<Option<ProductView>, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let p = load_products(&mut tx, Some(&[sku])).await?.pop();
    tx.rollback().await?;
    Ok(p)
}

/// Products by SKUs without their barcodes (one query; orders need no
/// barcodes).
pub async fn products_lite(
    tx: &mut Transaction<'static, Any>,
    skus: &[&str],
) -> Result<Vec<ProductView>, sqlx::Error> {
    let mut out = Vec::with_capacity(skus.len());
    for chunk in skus.chunks(sql::CHUNK) {
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT sku, name, category, supplier, measure, tax_rate_bp, attributes, active, created_ms, updated_ms \
             FROM products WHERE sku IN {}",
            sql::list(1, chunk.len())
        )));
        for s in chunk {
            q = q.bind(*s);
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.push(product_from_row(&r)?);
        }
    }
    Ok(out)
}

/// Current prices of `skus` at `location` (two queries for all of them).
pub async fn current_prices(
    tx: &mut Transaction<'static, Any>,
    skus: &[String],
    location: &str,
) -> Result<HashMap<String, (i64, String)>, sqlx::Error> {
    let region: Option<String> = sqlx::query_scalar("SELECT region FROM stores WHERE store_id = $1")
        .bind(location)
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
    let rows = price_rows(tx, Some(skus)).await?;
    let now = now_ms();
    Ok(skus
        .iter()
        .filter_map(|sku| {
            effective_price(&rows, sku, location, region.as_deref(), now)
                .map(|p| (sku.clone(), (p.price, p.currency.clone())))
        })
        .collect())
}

/// Products by SKUs (missing ones left out).
pub async fn get_products(
    tx: &mut Transaction<'static, Any>,
    skus: &[&str],
) -> Result<Vec<ProductView>, sqlx::Error> {
    load_products(tx, Some(skus)).await
}

/// Creates or replaces products (and their barcodes) and sends them to
/// every store. Returns how many were new, and the stores to kick.
pub async fn save_products(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    products: &[ValidProduct],
) -> Result<(usize, Vec<StoreId>), CatalogError> {
    lock(tx, db).await?;
    let now = now_ms();
    // Referenced suppliers and categories must exist.
    for p in products {
        if let Some(c) = &p.input.category
            && !exists(tx, "categories", c).await?
        {
            return Err(CatalogError::Invalid(format!(
                "{}: category {c:?} does not exist",
                p.sku
            )));
        }
        if let Some(s) = &p.input.supplier
            && !exists(tx, "suppliers", s).await?
        {
            return Err(CatalogError::Invalid(format!(
                "{}: supplier {s:?} does not exist",
                p.sku
            )));
        }
    }
    let mut created = 0;
    for p in products {
        // A barcode may name one product only.
        for g in &p.gtins {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT sku FROM product_barcodes WHERE gtin14 = $1")
                    .bind(g.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
            if let Some(o) = owner
                && o != p.sku.as_str()
            {
                return Err(CatalogError::Conflict(format!(
                    "barcode {g} already names product {o}"
                )));
            }
        }
        let new = sqlx::query(
            "INSERT INTO products (sku, name, measure, tax_rate_bp, category, supplier, attributes, active, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (sku) DO NOTHING",
        )
        .bind(p.sku.as_str())
        .bind(sql::text(&p.input.name))
        .bind(p.input.measure.as_str())
        .bind(i64::from(p.input.tax_rate_bp))
        .bind(p.input.category.clone())
        .bind(p.input.supplier.clone())
        .bind(p.input.attributes.to_string())
        .bind(i64::from(p.input.active))
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if new {
            created += 1;
        } else {
            sqlx::query(
                "UPDATE products SET name = $2, measure = $3, tax_rate_bp = $4, category = $5, supplier = $6, \
                 attributes = $7, active = $8, updated_ms = $9 WHERE sku = $1",
            )
            .bind(p.sku.as_str())
            .bind(sql::text(&p.input.name))
            .bind(p.input.measure.as_str())
            .bind(i64::from(p.input.tax_rate_bp))
            .bind(p.input.category.clone())
            .bind(p.input.supplier.clone())
            .bind(p.input.attributes.to_string())
            .bind(i64::from(p.input.active))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("DELETE FROM product_barcodes WHERE sku = $1")
            .bind(p.sku.as_str())
            .execute(&mut **tx)
            .await?;
        for g in &p.gtins {
            sqlx::query("INSERT INTO product_barcodes (gtin14, sku) VALUES ($1, $2)")
                .bind(g.as_str())
                .bind(p.sku.as_str())
                .execute(&mut **tx)
                .await?;
        }
        audit::record(
            tx,
            actor,
            if new { "product_created" } else { "product_updated" },
            "product",
            p.sku.as_str(),
            serde_json::to_value(&p.input).unwrap_or_default(),
        )
        .await?;
    }
    let skus: Vec<&str> = products.iter().map(|p| p.sku.as_str()).collect();
    let saved = load_products(tx, Some(&skus)).await?;
    let bodies: Vec<DownBody> = saved
        .iter()
        .filter_map(|p| p.to_down().map(DownBody::ProductUpsert))
        .collect();
    let stores = fan_out(tx, db, &bodies).await?;
    Ok((created, stores))
}

async fn exists(tx: &mut Transaction<'static, Any>, table: &str, id: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, String>(AssertSqlSafe(format!("SELECT id FROM {table} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

/// Stops selling a product everywhere (it stays in the catalog, inactive).
pub async fn deactivate(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    sku: &str,
) -> Result<Vec<StoreId>, CatalogError> {
    lock(tx, db).await?;
    let n = sqlx::query("UPDATE products SET active = 0, updated_ms = $2 WHERE sku = $1")
        .bind(sku)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(CatalogError::NotFound(format!("product {sku}")));
    }
    audit::record(
        tx,
        actor,
        "product_deactivated",
        "product",
        sku,
        serde_json::json!({}),
    )
    .await?;
    let parsed = Sku::parse(sku).map_err(|e| CatalogError::Invalid(e.to_string()))?;
    Ok(fan_out(tx, db, &[DownBody::ProductRemoved { sku: parsed }]).await?)
}

/// Search filters.
#[derive(Debug, Default, Clone)]
pub struct Search {
    /// Substring of the name or SKU (case-insensitive).
    pub q: Option<String>,
    /// Exact category.
    pub category: Option<String>,
    /// A barcode (any GTIN form).
    pub barcode: Option<String>,
    /// Only sellable products.
    pub active_only: bool,
}

/// Products matching `s`, by SKU, after SKU `after`.
pub async fn search(
    db: &Db,
    s: &Search,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ProductView>, CatalogError> {
    let barcode_sku = match &s.barcode {
        Some(b) => {
            let g =
                Gtin::parse(b.trim()).map_err(|e| CatalogError::Invalid(format!("barcode {b:?}: {e}")))?;
            let sku: Option<String> =
                sqlx::query_scalar("SELECT sku FROM product_barcodes WHERE gtin14 = $1")
                    .bind(g.to_gtin14())
                    .fetch_optional(&db.pool)
                    .await?;
            match sku {
                Some(s) => Some(s),
                None => return Ok(Vec::new()),
            }
        }
        None => None,
    };
    let pattern =
        s.q.as_deref()
            .map(|q| format!("%{}%", q.to_lowercase().replace(['%', '_'], "")));
    let rows = sqlx::query(
        "SELECT sku FROM products WHERE sku > $1 AND ($2 = '' OR sku = $2) AND ($3 = '' OR category = $3) \
         AND ($4 = '' OR LOWER(name) LIKE $4 OR LOWER(sku) LIKE $4) AND ($5 = 0 OR active = 1) ORDER BY sku LIMIT $6",
    )
    .bind(after.unwrap_or(""))
    .bind(barcode_sku.unwrap_or_default())
    .bind(s.category.clone().unwrap_or_default())
    .bind(pattern.unwrap_or_default())
    .bind(i64::from(s.active_only))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let skus: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    let mut tx = db.pool.begin().await?;
    let out = load_products(&mut tx, Some(&refs)).await?;
    tx.rollback().await?;
    Ok(out)
}

/// A price as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PriceInput {
    /// Product.
    pub sku: String,
    /// `all` (chain-wide), `region` or `location`.
    pub scope: String,
    /// Region or location id (omit for `all`).
    #[serde(default)]
    pub scope_id: String,
    /// Minor units, per item or per kilogram.
    pub price_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Start, ms since the epoch (default: now).
    pub effective_from_ms: Option<i64>,
    /// End (exclusive), if limited.
    pub effective_to_ms: Option<i64>,
}

/// A price row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PriceView {
    /// Row id.
    pub id: i64,
    /// Product.
    pub sku: String,
    /// `all`, `region` or `location`.
    pub scope: String,
    /// Region or location id.
    pub scope_id: String,
    /// Minor units.
    pub price_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Start, ms.
    pub effective_from_ms: i64,
    /// End, ms.
    pub effective_to_ms: Option<i64>,
}

/// Checks a price input.
pub fn validate_price(p: &PriceInput) -> Result<(), CatalogError> {
    Sku::parse(p.sku.as_str()).map_err(|e| CatalogError::Invalid(format!("sku: {e}")))?;
    match p.scope.as_str() {
        "all" if p.scope_id.is_empty() => {}
        "all" => return Err(CatalogError::Invalid("scope `all` takes no scope_id".into())),
        "region" | "location" if !p.scope_id.is_empty() => {}
        "region" | "location" => {
            return Err(CatalogError::Invalid(format!(
                "scope `{}` needs a scope_id",
                p.scope
            )));
        }
        other => {
            return Err(CatalogError::Invalid(format!(
                "scope {other:?}: use `all`, `region` or `location`"
            )));
        }
    }
    if p.price_minor < 0 {
        return Err(CatalogError::Invalid("price_minor must not be negative".into()));
    }
    Currency::parse(&p.currency).map_err(|e| CatalogError::Invalid(format!("currency: {e}")))?;
    if let (Some(from), Some(to)) = (p.effective_from_ms, p.effective_to_ms)
        && to <= from
    {
        return Err(CatalogError::Invalid(
            "effective_to_ms must be after effective_from_ms".into(),
        ));
    }
    Ok(())
}

/// Appends prices (rows are never changed; a later row supersedes) and
/// sends the affected stores their new schedules.
pub async fn add_prices(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    prices: &[PriceInput],
) -> Result<Vec<StoreId>, CatalogError> {
    lock(tx, db).await?;
    let now = now_ms();
    for p in prices {
        validate_price(p)?;
        if !exists_product(tx, &p.sku).await? {
            return Err(CatalogError::Invalid(format!("product {} does not exist", p.sku)));
        }
        sqlx::query(
            "INSERT INTO prices (sku, scope, scope_id, price_minor, currency, effective_from_ms, effective_to_ms, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(p.sku.as_str())
        .bind(p.scope.as_str())
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
    let mut by_scope: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for p in prices {
        by_scope
            .entry((p.scope.clone(), p.scope_id.clone()))
            .or_default()
            .insert(p.sku.clone());
    }
    let mut stores = Vec::new();
    for (scope, skus) in by_scope {
        let skus: Vec<String> = skus.into_iter().collect();
        stores.extend(fan_out_prices(tx, db, &skus, Some(&scope)).await?);
    }
    stores.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    stores.dedup();
    Ok(stores)
}

async fn exists_product(tx: &mut Transaction<'static, Any>, sku: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, String>("SELECT sku FROM products WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

/// Price rows of a product (or all), by id, after `after`.
pub async fn list_prices(
    db: &Db,
    sku: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<PriceView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, sku, scope, scope_id, price_minor, currency, effective_from_ms, effective_to_ms FROM prices \
         WHERE ($1 = '' OR sku = $1) AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(sku.unwrap_or(""))
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PriceView {
                id: r.try_get(0)?,
                sku: r.try_get(1)?,
                scope: r.try_get(2)?,
                scope_id: r.try_get(3)?,
                price_minor: r.try_get(4)?,
                currency: r.try_get(5)?,
                effective_from_ms: r.try_get(6)?,
                effective_to_ms: r.try_get(7)?,
            })
        })
        .collect()
}

/// The price of `sku` at `location` now, if any.
pub async fn current_price(
    tx: &mut Transaction<'static, Any>,
    sku: &str,
    location: &str,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let region: Option<String> = sqlx::query_scalar("SELECT region FROM stores WHERE store_id = $1")
        .bind(location)
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
    let rows = price_rows(tx, Some(&[sku.to_owned()])).await?;
    Ok(effective_price(&rows, sku, location, region.as_deref(), now_ms())
        .map(|p| (p.price, p.currency.clone())))
}

/// A supplier or a category.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamedView {
    /// Key.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Parent category (categories only).
    pub parent: Option<String>,
}

/// Creates or renames a supplier (`table` = suppliers) or category.
pub async fn save_named(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    table: &'static str,
    v: &NamedView,
) -> Result<(), CatalogError> {
    if v.id.is_empty()
        || v.id.len() > 64
        || !v
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(CatalogError::Invalid(
            "id: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'".into(),
        ));
    }
    if v.name.trim().is_empty() {
        return Err(CatalogError::Invalid("name must not be empty".into()));
    }
    let now = now_ms();
    if table == "categories" {
        if let Some(p) = &v.parent
            && (p == &v.id || !exists(tx, "categories", p).await?)
        {
            return Err(CatalogError::Invalid(format!(
                "parent category {p:?} does not exist"
            )));
        }
        sqlx::query(
            "INSERT INTO categories (id, name, parent, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, parent = excluded.parent",
        )
        .bind(v.id.as_str())
        .bind(sql::text(&v.name))
        .bind(v.parent.clone())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO suppliers (id, name, created_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(v.id.as_str())
        .bind(sql::text(&v.name))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    audit::record(
        tx,
        actor,
        if table == "categories" {
            "category_saved"
        } else {
            "supplier_saved"
        },
        if table == "categories" {
            "category"
        } else {
            "supplier"
        },
        &v.id,
        serde_json::json!({"name": v.name, "parent": v.parent}),
    )
    .await?;
    Ok(())
}

/// All suppliers or categories, by id.
pub async fn list_named(db: &Db, table: &'static str) -> Result<Vec<NamedView>, sqlx::Error> {
    let parent = if table == "categories" { "parent" } else { "NULL" };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, name, {parent} FROM {table} ORDER BY id LIMIT 10000"
    )))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NamedView {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                parent: r.try_get(2)?,
            })
        })
        .collect()
}

/// A promotion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromotionView {
    /// Key.
    #[serde(default)]
    pub id: String,
    /// Receipt text.
    pub label: String,
    /// `{"PercentOff": {"bp": 1500}}`, `{"AmountOff": {"amount": {"minor": 50, "currency": "EUR"}}}`
    /// or `{"MultiBuy": {"buy": 3, "pay": 2}}`.
    #[schema(value_type = Object)]
    pub rule: PromotionRule,
    /// Products it applies to.
    pub skus: Vec<String>,
    /// Start, ms.
    pub starts_ms: i64,
    /// End, ms.
    pub ends_ms: Option<i64>,
    /// False once removed.
    #[serde(default = "yes")]
    pub active: bool,
}

impl PromotionView {
    fn to_down(&self) -> Option<dl::Promotion> {
        Some(dl::Promotion {
            id: self.id.clone(),
            label: self.label.clone(),
            rule: self.rule.clone(),
            skus: self
                .skus
                .iter()
                .map(|s| Sku::parse(s.as_str()))
                .collect::<Result<_, _>>()
                .ok()?,
            starts_ms: self.starts_ms,
            ends_ms: self.ends_ms,
        })
    }
}

/// Creates or replaces a promotion and sends it to every store.
pub async fn save_promotion(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    p: &PromotionView,
) -> Result<Vec<StoreId>, CatalogError> {
    if p.id.is_empty() || p.id.len() > 64 {
        return Err(CatalogError::Invalid("id must be 1 to 64 bytes".into()));
    }
    if p.label.trim().is_empty() {
        return Err(CatalogError::Invalid("label must not be empty".into()));
    }
    match &p.rule {
        PromotionRule::PercentOff { bp } if *bp == 0 || *bp > 10_000 => {
            return Err(CatalogError::Invalid("PercentOff.bp must be 1 to 10000".into()));
        }
        PromotionRule::AmountOff { amount } if amount.minor <= 0 => {
            return Err(CatalogError::Invalid("AmountOff.amount must be positive".into()));
        }
        PromotionRule::MultiBuy { buy, pay } if *pay >= *buy || *pay == 0 => {
            return Err(CatalogError::Invalid("MultiBuy needs 0 < pay < buy".into()));
        }
        _ => {}
    }
    if p.skus.is_empty() {
        return Err(CatalogError::Invalid("a promotion needs at least one SKU".into()));
    }
    if let Some(end) = p.ends_ms
        && end <= p.starts_ms
    {
        return Err(CatalogError::Invalid("ends_ms must be after starts_ms".into()));
    }
    lock(tx, db).await?;
    for s in &p.skus {
        if !exists_product(tx, s).await? {
            return Err(CatalogError::Invalid(format!("product {s} does not exist")));
        }
    }
    let down = p
        .to_down()
        .ok_or_else(|| CatalogError::Invalid("a SKU is malformed".into()))?;
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
    Ok(fan_out(tx, db, &[DownBody::PromotionUpsert(down)]).await?)
}

/// Ends a promotion everywhere.
pub async fn remove_promotion(
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
    Ok(fan_out(tx, db, &[DownBody::PromotionRemoved { id: id.to_owned() }]).await?)
}

/// The promotions in effect at `at_ms`, as stores get them (the same
/// rules price online orders and store baskets).
pub async fn promotions_at(
    tx: &mut Transaction<'static, Any>,
    at_ms: i64,
) -> Result<Vec<dl::Promotion>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, label, rule, skus, starts_ms, ends_ms FROM promotions \
         WHERE active = 1 AND starts_ms <= $1 AND (ends_ms IS NULL OR ends_ms > $1) ORDER BY id",
    )
    .bind(at_ms)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let rule: String = r.try_get(2)?;
        let skus: String = r.try_get(3)?;
        let (Ok(rule), Ok(skus)) = (serde_json::from_str(&rule), serde_json::from_str(&skus)) else {
            continue;
        };
        let view = PromotionView {
            id: r.try_get(0)?,
            label: r.try_get(1)?,
            rule,
            skus,
            starts_ms: r.try_get(4)?,
            ends_ms: r.try_get(5)?,
            active: true,
        };
        out.extend(view.to_down());
    }
    Ok(out)
}

/// Every promotion, by id.
pub async fn list_promotions(tx: &mut Transaction<'static, Any>) -> Result<Vec<PromotionView>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT id, label, rule, skus, starts_ms, ends_ms, active FROM promotions ORDER BY id")
            .fetch_all(&mut **tx)
            .await?;
    let mut out = Vec::new();
    for r in rows {
        let rule: String = r.try_get(2)?;
        let skus: String = r.try_get(3)?;
        let active: i64 = r.try_get(6)?;
        let Ok(rule) = serde_json::from_str(&rule) else {
            continue;
        };
        out.push(PromotionView {
            id: r.try_get(0)?,
            label: r.try_get(1)?,
            rule,
            skus: serde_json::from_str(&skus).unwrap_or_default(),
            starts_ms: r.try_get(4)?,
            ends_ms: r.try_get(5)?,
            active: active != 0,
        });
    }
    Ok(out)
}

// ---- CSV ----

/// Columns of the products CSV.
pub const PRODUCT_COLUMNS: [&str; 9] = [
    "sku",
    "name",
    "category",
    "supplier",
    "measure",
    "tax_rate_bp",
    "barcodes",
    "active",
    "attributes",
];

/// Columns of the prices CSV.
pub const PRICE_COLUMNS: [&str; 7] = [
    "sku",
    "scope",
    "scope_id",
    "price_minor",
    "currency",
    "effective_from_ms",
    "effective_to_ms",
];

/// A CSV row that could not be used.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// A CSV record: its line and its values by column.
type CsvRow = (u64, HashMap<String, String>);

fn csv_rows(text: &str, columns: &[&str]) -> Result<Vec<CsvRow>, Vec<RowError>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|s| s.to_ascii_lowercase()).collect(),
        Err(e) => {
            return Err(vec![RowError {
                line: 1,
                message: format!("header: {e}"),
            }]);
        }
    };
    let unknown: Vec<&String> = header.iter().filter(|h| !columns.contains(&h.as_str())).collect();
    if !unknown.is_empty() || !header.iter().any(|h| h == "sku") {
        return Err(vec![RowError {
            line: 1,
            message: format!("header must name columns from {columns:?} including sku; unknown: {unknown:?}"),
        }]);
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i as u64 + 2;
        match rec {
            Ok(r) => rows.push((
                line,
                header.iter().cloned().zip(r.iter().map(str::to_owned)).collect(),
            )),
            Err(e) => errors.push(RowError {
                line,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

/// Parses a products CSV into validated products. Every row is checked;
/// any error refuses the whole file (with every row's error).
pub fn parse_products_csv(text: &str) -> Result<Vec<ValidProduct>, Vec<RowError>> {
    let rows = csv_rows(text, &PRODUCT_COLUMNS)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (line, r) in rows {
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        let opt = |k: &str| Some(get(k)).filter(|v| !v.is_empty());
        let result = (|| {
            let sku = get("sku");
            if !seen.insert(sku.clone()) {
                return Err(CatalogError::Invalid(format!("SKU {sku} appears twice")));
            }
            let tax = get("tax_rate_bp");
            let input = ProductInput {
                name: get("name"),
                category: opt("category"),
                supplier: opt("supplier"),
                measure: opt("measure").unwrap_or_else(each),
                tax_rate_bp: tax
                    .parse()
                    .map_err(|_| CatalogError::Invalid(format!("tax_rate_bp {tax:?} is not a number")))?,
                barcodes: get("barcodes")
                    .split([';', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                active: !matches!(get("active").to_ascii_lowercase().as_str(), "0" | "false" | "no"),
                attributes: match opt("attributes") {
                    Some(a) => serde_json::from_str(&a)
                        .map_err(|e| CatalogError::Invalid(format!("attributes: {e}")))?,
                    None => empty_object(),
                },
            };
            validate_product(&sku, input)
        })();
        match result {
            Ok(p) => out.push(p),
            Err(e) => errors.push(RowError {
                line,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Parses a prices CSV.
pub fn parse_prices_csv(text: &str) -> Result<Vec<PriceInput>, Vec<RowError>> {
    let rows = csv_rows(text, &PRICE_COLUMNS)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (line, r) in rows {
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        let num = |k: &str| -> Result<Option<i64>, CatalogError> {
            let v = get(k);
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| CatalogError::Invalid(format!("{k} {v:?} is not a whole number")))
        };
        let result = (|| {
            let p = PriceInput {
                sku: get("sku"),
                scope: Some(get("scope"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "all".into()),
                scope_id: get("scope_id"),
                price_minor: num("price_minor")?
                    .ok_or_else(|| CatalogError::Invalid("price_minor is required".into()))?,
                currency: get("currency"),
                effective_from_ms: num("effective_from_ms")?,
                effective_to_ms: num("effective_to_ms")?,
            };
            validate_price(&p)?;
            Ok::<_, CatalogError>(p)
        })();
        match result {
            Ok(p) => out.push(p),
            Err(e) => errors.push(RowError {
                line,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Every product as CSV (the import format).
pub async fn products_csv(db: &Db) -> Result<String, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let products = load_products(&mut tx, None).await?;
    tx.rollback().await?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(PRODUCT_COLUMNS);
    for p in products {
        let _ = w.write_record([
            p.sku,
            p.name,
            p.category.unwrap_or_default(),
            p.supplier.unwrap_or_default(),
            p.measure,
            p.tax_rate_bp.to_string(),
            p.barcodes.join(";"),
            u8::from(p.active).to_string(),
            p.attributes.to_string(),
        ]);
    }
    Ok(String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default())
}

/// Every price row as CSV (the import format).
pub async fn prices_csv(db: &Db) -> Result<String, sqlx::Error> {
    let rows = list_prices(db, None, 0, i64::MAX).await?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(PRICE_COLUMNS);
    for p in rows {
        let _ = w.write_record([
            p.sku,
            p.scope,
            p.scope_id,
            p.price_minor.to_string(),
            p.currency,
            p.effective_from_ms.to_string(),
            p.effective_to_ms.map(|t| t.to_string()).unwrap_or_default(),
        ]);
    }
    Ok(String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scope: &str, id: &str, price: i64, from: i64, to: Option<i64>) -> PriceRow {
        PriceRow {
            sku: "A".into(),
            scope: scope.into(),
            scope_id: id.into(),
            price,
            currency: "EUR".into(),
            from,
            to,
        }
    }

    #[test]
    fn the_most_specific_effective_price_wins() {
        let prices = vec![
            row("all", "", 100, 0, None),
            row("all", "", 120, 50, None),
            row("region", "north", 110, 0, None),
            row("location", "s1", 90, 0, Some(40)),
        ];
        let at = |loc, region, t| effective_price(&prices, "A", loc, region, t).map(|p| p.price);
        assert_eq!(at("s1", Some("north"), 10), Some(90));
        assert_eq!(at("s1", Some("north"), 45), Some(110));
        assert_eq!(at("s2", None, 45), Some(100));
        assert_eq!(at("s2", None, 60), Some(120));
        assert!(effective_price(&prices, "B", "s2", None, 60).is_none());
    }

    #[test]
    fn a_schedule_resolves_scopes_per_store_and_keeps_every_breakpoint() {
        let prices = vec![
            row("all", "", 100, 0, None),
            row("location", "s1", 90, 10, Some(40)),
            row("all", "", 120, 50, None),
        ];
        // s1 at t=20: the location price is in force until 40, then the
        // chain price, then the new chain price from 50.
        let s = price_schedule(&prices, "A", "s1", None, 20);
        assert_eq!(
            s,
            vec![
                Segment {
                    from: 10,
                    to: Some(40),
                    price: Some((90, "EUR".into()))
                },
                Segment {
                    from: 40,
                    to: Some(50),
                    price: Some((100, "EUR".into()))
                },
                Segment {
                    from: 50,
                    to: None,
                    price: Some((120, "EUR".into()))
                },
            ]
        );
        // s2 ignores s1's row but still gets its breakpoints, at its own prices.
        let s = price_schedule(&prices, "A", "s2", None, 20);
        assert_eq!(
            s.first().map(|x| (x.from, x.price.clone())),
            Some((0, Some((100, "EUR".into()))))
        );
        // A price that ends with nothing after it leaves an empty segment.
        let prices = vec![row("all", "", 100, 0, Some(30))];
        let s = price_schedule(&prices, "A", "s1", None, 5);
        assert_eq!(
            s[1],
            Segment {
                from: 30,
                to: None,
                price: None
            }
        );
        let items = segment_items(&Sku::parse("A").unwrap(), &s, Currency::parse("EUR").unwrap());
        assert!(matches!(&items[1], DownBody::PriceSet(p) if p.effective_to_ms == Some(30)));
    }

    #[test]
    fn csv_import_checks_every_row_and_reports_lines() {
        let ok = "sku,name,measure,tax_rate_bp,barcodes,attributes\n\
                  MILK-1L,Milk 1 l,each,550,4001234500010,\"{\"\"weight_grams\"\": 1030}\"\n\
                  APPLE,Apples,grams,550,,\n";
        let products = parse_products_csv(ok).unwrap();
        assert_eq!(products.len(), 2);
        assert_eq!(products[0].gtins, vec!["04001234500010".to_string()]);
        let bad = "sku,name,measure,tax_rate_bp,barcodes\n\
                   A,Thing,each,550,4001234500011\n\
                   B,,each,550,\n\
                   C,Thing,litres,550,\n\
                   C,Thing,each,x,\n";
        let errors = parse_products_csv(bad).unwrap_err();
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5], "{errors:?}");
        assert!(errors[0].message.contains("barcode"));
        assert!(parse_products_csv("name\nx\n").is_err());
        let prices =
            parse_prices_csv("sku,scope,scope_id,price_minor,currency\nA,region,north,199,EUR\n").unwrap();
        assert_eq!(prices[0].price_minor, 199);
        let errors =
            parse_prices_csv("sku,scope,price_minor,currency\nA,region,199,EUR\nB,all,-1,EUR\n").unwrap_err();
        assert_eq!(errors.len(), 2);
    }
}
