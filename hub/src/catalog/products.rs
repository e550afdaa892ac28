//! Products and their barcodes: reads, saves (with their deltas to every
//! store), deactivation, search.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use storegate_protocol::downlink::{self as dl, DownBody};
use storegate_protocol::{Gtin, Sku, StoreId};
use utoipa::ToSchema;

use super::{CatalogError, lock, replicate};
use crate::audit;
use crate::db::{Db, now_ms};
use crate::domain::product::{MAX_TAX_BP, Measure, ValidProduct};
use crate::sql::{self, row};

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
    /// Counted or weighed.
    pub measure: Measure,
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
    /// As stores get it.
    pub(super) fn to_down(&self) -> Option<dl::Product> {
        Some(dl::Product {
            sku: Sku::parse(self.sku.as_str()).ok()?,
            name: self.name.clone(),
            measure: self.measure.to_down(),
            tax_rate_bp: self.tax_rate_bp,
            barcodes: self.barcodes.iter().filter_map(|g| Gtin::parse(g).ok()).collect(),
            category: self.category.clone(),
            active: self.active,
        })
    }

    /// Shipping weight of one unit in grams (weighed goods: 1 per gram).
    pub fn unit_grams(&self, default: i64) -> i64 {
        if self.measure == Measure::Grams {
            return 1;
        }
        self.attributes
            .get("weight_grams")
            .and_then(serde_json::Value::as_i64)
            .filter(|g| *g > 0)
            .unwrap_or(default)
    }
}

row! {
    struct ProductRow {
        sku: String,
        name: String,
        category: Option<String>,
        supplier: Option<String>,
        measure: Measure,
        tax_rate_bp: i64,
        attributes: String,
        active: i64,
        created_ms: i64,
        updated_ms: i64,
    }
}

impl ProductRow {
    fn view(self) -> ProductView {
        ProductView {
            sku: self.sku,
            name: self.name,
            category: self.category,
            supplier: self.supplier,
            measure: self.measure,
            tax_rate_bp: u32::try_from(self.tax_rate_bp.clamp(0, i64::from(MAX_TAX_BP))).unwrap_or(0),
            barcodes: Vec::new(),
            attributes: serde_json::from_str(&self.attributes).unwrap_or_else(|_| serde_json::json!({})),
            active: self.active != 0,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }
    }
}

const SELECT: &str = "SELECT sku, name, category, supplier, measure, tax_rate_bp, attributes, active, created_ms, updated_ms FROM products";

/// Products (all, or by SKUs, missing ones left out) without barcodes,
/// by SKU.
async fn rows(conn: &mut AnyConnection, skus: Option<&[&str]>) -> Result<Vec<ProductView>, sqlx::Error> {
    let Some(skus) = skus else {
        let all: Vec<ProductRow> = sqlx::query_as(AssertSqlSafe(format!("{SELECT} ORDER BY sku")))
            .fetch_all(conn)
            .await?;
        return Ok(all.into_iter().map(ProductRow::view).collect());
    };
    let mut out = Vec::with_capacity(skus.len());
    for chunk in skus.chunks(sql::CHUNK) {
        let mut q = sqlx::query_as::<_, ProductRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE sku IN {} ORDER BY sku",
            sql::list(1, chunk.len())
        )));
        for s in chunk {
            q = q.bind(*s);
        }
        out.extend(q.fetch_all(&mut *conn).await?.into_iter().map(ProductRow::view));
    }
    Ok(out)
}

row! {
    struct BarcodeRow {
        sku: String,
        gtin14: String,
    }
}

/// Products (all, or by SKUs) with their barcodes.
pub(super) async fn load(
    conn: &mut AnyConnection,
    skus: Option<&[&str]>,
) -> Result<Vec<ProductView>, sqlx::Error> {
    let mut out = rows(conn, skus).await?;
    let mut barcodes: HashMap<String, Vec<String>> = HashMap::new();
    let want: Vec<&str> = out.iter().map(|p| p.sku.as_str()).collect();
    for chunk in want.chunks(sql::CHUNK) {
        let mut q = sqlx::query_as::<_, BarcodeRow>(AssertSqlSafe(format!(
            "SELECT sku, gtin14 FROM product_barcodes WHERE sku IN {} ORDER BY gtin14",
            sql::list(1, chunk.len())
        )));
        for s in chunk {
            q = q.bind(*s);
        }
        for r in q.fetch_all(&mut *conn).await? {
            barcodes.entry(r.sku).or_default().push(r.gtin14);
        }
    }
    for p in &mut out {
        p.barcodes = barcodes.remove(&p.sku).unwrap_or_default();
    }
    Ok(out)
}

/// One product.
pub async fn get_product(db: &Db, sku: &str) -> Result<Option<ProductView>, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    Ok(load(&mut conn, Some(&[sku])).await?.pop())
}

/// Products by SKUs without their barcodes (orders need none).
pub async fn products_lite(conn: &mut AnyConnection, skus: &[&str]) -> Result<Vec<ProductView>, sqlx::Error> {
    rows(conn, Some(skus)).await
}

/// Which of `skus` are products.
pub async fn known_skus(
    conn: &mut AnyConnection,
    skus: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut out = std::collections::HashSet::new();
    for chunk in skus.chunks(sql::CHUNK) {
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
            "SELECT sku FROM products WHERE sku IN {}",
            sql::list(1, chunk.len())
        )));
        for s in chunk {
            q = q.bind(*s);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Whether a product exists.
pub(super) async fn exists(conn: &mut AnyConnection, sku: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, String>("SELECT sku FROM products WHERE sku = $1")
            .bind(sku)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Creates or replaces products (and their barcodes) and sends them to
/// every store. Returns how many were new, and the stores to kick.
pub(super) async fn save(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    actor: &str,
    products: &[ValidProduct],
) -> Result<(usize, Vec<StoreId>), CatalogError> {
    use super::named::{NamedKind, exists as named_exists};
    lock(tx, db).await?;
    let now = now_ms();
    // Referenced suppliers and categories must exist.
    for p in products {
        for (kind, id) in [
            (NamedKind::Category, &p.input.category),
            (NamedKind::Supplier, &p.input.supplier),
        ] {
            if let Some(id) = id
                && !named_exists(tx, kind, id).await?
            {
                return Err(CatalogError::Invalid(format!(
                    "{}: {} {id:?} does not exist",
                    p.sku,
                    kind.singular()
                )));
            }
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
        .bind(p.input.measure)
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
            .bind(p.input.measure)
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
    let saved = load(tx, Some(&skus)).await?;
    let bodies: Vec<DownBody> = saved
        .iter()
        .filter_map(|p| p.to_down().map(DownBody::ProductUpsert))
        .collect();
    Ok((created, replicate::fan_out(tx, db, &bodies).await?))
}

/// Stops selling a product everywhere (it stays in the catalog, inactive).
pub(super) async fn deactivate(
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
    Ok(replicate::fan_out(tx, db, &[DownBody::ProductRemoved { sku: parsed }]).await?)
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
    let mut conn = db.pool.acquire().await?;
    let barcode_sku = match &s.barcode {
        Some(b) => {
            let g =
                Gtin::parse(b.trim()).map_err(|e| CatalogError::Invalid(format!("barcode {b:?}: {e}")))?;
            let sku: Option<String> =
                sqlx::query_scalar("SELECT sku FROM product_barcodes WHERE gtin14 = $1")
                    .bind(g.to_gtin14())
                    .fetch_optional(&mut *conn)
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
    let skus: Vec<String> = sqlx::query_scalar(
        "SELECT sku FROM products WHERE sku > $1 AND ($2 = '' OR sku = $2) AND ($3 = '' OR category = $3) \
         AND ($4 = '' OR LOWER(name) LIKE $4 OR LOWER(sku) LIKE $4) AND ($5 = 0 OR active = 1) ORDER BY sku LIMIT $6",
    )
    .bind(after.unwrap_or(""))
    .bind(barcode_sku.unwrap_or_default())
    .bind(s.category.clone().unwrap_or_default())
    .bind(pattern.unwrap_or_default())
    .bind(i64::from(s.active_only))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    Ok(load(&mut conn, Some(&refs)).await?)
}
