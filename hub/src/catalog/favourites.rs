//! Customers' favourite products.

use serde::Serialize;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::sql::row;

row! {
    /// A favourite product.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct Favourite {
        /// Product.
        pub sku: String,
        /// Added, ms.
        pub created_ms: i64,
    }
}

/// A customer's favourites, oldest first.
pub async fn list(db: &Db, customer: &str) -> Result<Vec<Favourite>, sqlx::Error> {
    sqlx::query_as("SELECT sku, created_ms FROM favourites WHERE customer_id = $1 ORDER BY created_ms, sku")
        .bind(customer)
        .fetch_all(&db.pool)
        .await
}

/// Adds a product that exists to a customer's favourites (again is
/// fine); returns false if there is no such product.
pub async fn add(db: &Db, customer: &str, sku: &str) -> Result<bool, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    if !super::products::exists(&mut conn, sku).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO favourites (customer_id, sku, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(customer)
    .bind(sku)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Removes a product from a customer's favourites (absent is fine).
pub async fn remove(db: &Db, customer: &str, sku: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM favourites WHERE customer_id = $1 AND sku = $2")
        .bind(customer)
        .bind(sku)
        .execute(&db.pool)
        .await?;
    Ok(())
}
