//! Suppliers and categories.

use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use utoipa::ToSchema;

use super::CatalogError;
use crate::audit;
use crate::db::{Db, now_ms};
use crate::domain::product::validate_named;
use crate::sql::{self, row};

/// Which named list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedKind {
    /// Suppliers.
    Supplier,
    /// Categories (with a parent).
    Category,
}

impl NamedKind {
    fn table(self) -> &'static str {
        match self {
            NamedKind::Supplier => "suppliers",
            NamedKind::Category => "categories",
        }
    }

    /// One of them, in messages and the audit log.
    pub fn singular(self) -> &'static str {
        match self {
            NamedKind::Supplier => "supplier",
            NamedKind::Category => "category",
        }
    }
}

row! {
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
}

/// Whether a supplier or category exists.
pub(super) async fn exists(conn: &mut AnyConnection, kind: NamedKind, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
        "SELECT id FROM {} WHERE id = $1",
        kind.table()
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// Creates or renames a supplier or category.
pub(super) async fn save(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    kind: NamedKind,
    v: &NamedView,
) -> Result<(), CatalogError> {
    validate_named(&v.id, &v.name)?;
    let now = now_ms();
    match kind {
        NamedKind::Category => {
            if let Some(p) = &v.parent
                && (p == &v.id || !exists(tx, NamedKind::Category, p).await?)
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
        }
        NamedKind::Supplier => {
            sqlx::query(
                "INSERT INTO suppliers (id, name, created_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            )
            .bind(v.id.as_str())
            .bind(sql::text(&v.name))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
    }
    audit::record(
        tx,
        actor,
        &format!("{}_saved", kind.singular()),
        kind.singular(),
        &v.id,
        serde_json::json!({"name": v.name, "parent": v.parent}),
    )
    .await?;
    Ok(())
}

/// All suppliers or categories, by id.
pub async fn list_named(db: &Db, kind: NamedKind) -> Result<Vec<NamedView>, sqlx::Error> {
    let parent = match kind {
        NamedKind::Category => "parent",
        NamedKind::Supplier => "NULL AS parent",
    };
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, name, {parent} FROM {} ORDER BY id LIMIT 10000",
        kind.table()
    )))
    .fetch_all(&db.pool)
    .await
}
