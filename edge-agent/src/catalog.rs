//! The store's catalog replica, read-only: products, barcodes, prices,
//! promotions and configuration as the hub sent them down.

use sqlx::{Row, SqlitePool};
use storegate_protocol::downlink::{ConfigValue, Promotion};
use storegate_protocol::{Currency, Measure, Money, Sku};

/// A product as the till needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRow {
    /// The SKU.
    pub sku: Sku,
    /// Name for display and receipt.
    pub name: String,
    /// Items or grams.
    pub measure: Measure,
    /// Tax rate, basis points.
    pub tax_rate_bp: u32,
    /// Sellable.
    pub active: bool,
}

/// Reads the replica.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Read-only connections to the journal.
    pool: SqlitePool,
}

fn product(r: &sqlx::sqlite::SqliteRow) -> Result<Option<ProductRow>, sqlx::Error> {
    let sku: String = r.try_get(0)?;
    let measure: String = r.try_get(2)?;
    let Ok(sku) = Sku::parse(sku) else { return Ok(None) };
    Ok(Some(ProductRow {
        sku,
        name: r.try_get(1)?,
        measure: if measure == "grams" {
            Measure::Grams
        } else {
            Measure::Each
        },
        tax_rate_bp: r.try_get::<i64, _>(3)?.clamp(0, 100_000) as u32,
        active: r.try_get::<i64, _>(4)? != 0,
    }))
}

impl Catalog {
    /// A reader over `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Catalog { pool }
    }

    /// The product a barcode names (GTIN zero-padded to 14 digits).
    pub async fn by_gtin14(&self, gtin14: &str) -> Result<Option<ProductRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT p.sku, p.name, p.measure, p.tax_rate_bp, p.active FROM barcodes b JOIN products p ON p.sku = b.sku \
             WHERE b.gtin14 = ?",
        )
        .bind(gtin14)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => product(&r)?,
            None => None,
        })
    }

    /// A product by SKU.
    pub async fn by_sku(&self, sku: &str) -> Result<Option<ProductRow>, sqlx::Error> {
        let row = sqlx::query("SELECT sku, name, measure, tax_rate_bp, active FROM products WHERE sku = ?")
            .bind(sku)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => product(&r)?,
            None => None,
        })
    }

    /// The price in effect for `sku` at `at_ms` (per item, or per kilogram).
    pub async fn price(&self, sku: &str, at_ms: i64) -> Result<Option<Money>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT price_minor, currency FROM prices WHERE sku = ?1 AND effective_from_ms <= ?2 \
             AND (effective_to_ms IS NULL OR effective_to_ms > ?2) ORDER BY effective_from_ms DESC LIMIT 1",
        )
        .bind(sku)
        .bind(at_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => {
                let cur: String = r.try_get(1)?;
                Currency::parse(&cur)
                    .ok()
                    .map(|c| Money::new(r.try_get(0).unwrap_or(0), c))
            }
            None => None,
        })
    }

    /// Promotions in effect at `at_ms`.
    pub async fn promotions(&self, at_ms: i64) -> Result<Vec<Promotion>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT body FROM promotions WHERE starts_ms <= ?1 AND (ends_ms IS NULL OR ends_ms > ?1)",
        )
        .bind(at_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<Vec<u8>, _>(0).ok())
            .filter_map(|b| postcard::from_bytes(&b).ok())
            .collect())
    }

    /// A configuration value the hub sent.
    pub async fn config(&self, key: &str) -> Result<Option<ConfigValue>, sqlx::Error> {
        let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM config WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.and_then(|b| postcard::from_bytes(&b).ok()))
    }
}
