//! The catalog: products (several barcodes each), suppliers, categories,
//! prices per chain / region / location with effective dates, promotions;
//! CSV import and export; and its replication to the stores' edges.
//!
//! - [`Catalog`]: the changes, one transaction each, after which the
//!   stores that got deltas are kicked.
//! - `products`, `prices`, `promotions`, `named` (suppliers and
//!   categories): their SQL and reads. The rules are in
//!   [`crate::domain::product`] and [`crate::domain::price`].
//! - `replicate`: what stores get (snapshots and deltas).
//! - `csv`: the import and export format.
//! - [`favourites`]: customers' favourite products.
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
//! latest start) and sends each store its own schedule
//! ([`crate::domain::price::price_schedule`]).

mod csv;
pub mod favourites;
mod named;
mod prices;
mod products;
mod promotions;
mod replicate;

use sqlx::{Any, AssertSqlSafe, Transaction};
use storegate_protocol::StoreId;

pub use self::csv::{PRICE_COLUMNS, PRODUCT_COLUMNS, RowError, parse_prices_csv, parse_products_csv};
pub use self::named::{NamedKind, NamedView, list_named};
pub use self::prices::{current_price, current_prices, list_prices, of as price_rows};
pub use self::products::{ProductView, Search, get_product, known_skus, products_lite, search};
pub use self::promotions::{list_promotions, promotions_at};
pub use self::replicate::snapshot_if_new;
use crate::db::Db;
use crate::domain::Invalid;
pub use crate::domain::price::{Price as PriceView, PriceInput, PriceScope};
pub use crate::domain::product::{Measure, ProductInput, Promotion as PromotionView, ValidProduct};
use crate::downlink::Kick;

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

impl From<Invalid> for CatalogError {
    fn from(e: Invalid) -> Self {
        CatalogError::Invalid(e.0)
    }
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

/// Catalog changes: each one transaction (under the catalog lock, with
/// its deltas to the stores and its audit rows), then the stores kicked.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The database.
    pub db: Db,
    /// To kick downlink sends.
    pub kick: Kick,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Rows read.
    pub rows: usize,
    /// Rows that created something.
    pub created: usize,
}

impl Catalog {
    fn kick_all(&self, stores: &[StoreId]) {
        for s in stores {
            self.kick.send(s);
        }
    }

    /// Creates or replaces a product; returns whether it is new, and it.
    pub async fn put_product(
        &self,
        actor: &str,
        sku: &str,
        input: ProductInput,
    ) -> Result<(bool, ProductView), CatalogError> {
        let valid = crate::domain::product::validate_product(sku, input)?;
        let mut tx = self.db.begin().await?;
        let (created, stores) = products::save(&mut tx, &self.db, actor, &[valid]).await?;
        let view = products::load(&mut tx, Some(&[sku])).await?.pop();
        tx.commit().await?;
        self.kick_all(&stores);
        let view = view.ok_or_else(|| CatalogError::NotFound(format!("product {sku}")))?;
        Ok((created > 0, view))
    }

    /// Stops selling a product everywhere (it stays, inactive).
    pub async fn deactivate(&self, actor: &str, sku: &str) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        let stores = products::deactivate(&mut tx, &self.db, actor, sku).await?;
        tx.commit().await?;
        self.kick_all(&stores);
        Ok(())
    }

    /// Imports a products CSV, all or nothing: `Ok(Err(rows))` names every
    /// bad row and writes nothing.
    pub async fn import_products(
        &self,
        actor: &str,
        text: &str,
    ) -> Result<Result<Imported, Vec<RowError>>, CatalogError> {
        let valid = match parse_products_csv(text) {
            Ok(v) => v,
            Err(rows) => return Ok(Err(rows)),
        };
        let mut tx = self.db.begin().await?;
        let (created, stores) = products::save(&mut tx, &self.db, actor, &valid).await?;
        tx.commit().await?;
        self.kick_all(&stores);
        Ok(Ok(Imported {
            rows: valid.len(),
            created,
        }))
    }

    /// Appends price rows; the stores concerned get their new schedules.
    pub async fn add_prices(&self, actor: &str, input: &[PriceInput]) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        let stores = prices::add(&mut tx, &self.db, actor, input).await?;
        tx.commit().await?;
        self.kick_all(&stores);
        Ok(())
    }

    /// Imports a prices CSV, all or nothing (as [`Catalog::import_products`]).
    pub async fn import_prices(
        &self,
        actor: &str,
        text: &str,
    ) -> Result<Result<Imported, Vec<RowError>>, CatalogError> {
        let rows = match parse_prices_csv(text) {
            Ok(v) => v,
            Err(rows) => return Ok(Err(rows)),
        };
        self.add_prices(actor, &rows).await?;
        Ok(Ok(Imported {
            rows: rows.len(),
            created: rows.len(),
        }))
    }

    /// Creates or renames a supplier or a category.
    pub async fn save_named(&self, actor: &str, kind: NamedKind, v: &NamedView) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        named::save(&mut tx, actor, kind, v).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates or replaces a promotion; every store gets it.
    pub async fn save_promotion(&self, actor: &str, p: &PromotionView) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        let stores = promotions::save(&mut tx, &self.db, actor, p).await?;
        tx.commit().await?;
        self.kick_all(&stores);
        Ok(())
    }

    /// Ends a promotion everywhere.
    pub async fn remove_promotion(&self, actor: &str, id: &str) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        let stores = promotions::remove(&mut tx, &self.db, actor, id).await?;
        tx.commit().await?;
        self.kick_all(&stores);
        Ok(())
    }

    /// Every product as CSV (the import format).
    pub async fn products_csv(&self) -> Result<String, sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        let all = products::load(&mut tx, None).await?;
        tx.rollback().await?;
        Ok(csv::products(all))
    }

    /// Every price row as CSV (the import format).
    pub async fn prices_csv(&self) -> Result<String, sqlx::Error> {
        Ok(csv::prices(list_prices(&self.db, None, 0, i64::MAX).await?))
    }
}
