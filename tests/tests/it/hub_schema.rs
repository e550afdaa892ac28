//! The SQLite and PostgreSQL migrations define the same schema: the same
//! tables, each with the same columns (by name, in any order) and the same
//! indexes (by name, with the same uniqueness).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;
use storegate_e2e::{drop_pg_database, fresh_pg_database};

/// Table -> (columns, index name -> unique).
type Schema = BTreeMap<String, (BTreeSet<String>, BTreeMap<String, bool>)>;

async fn sqlite_schema(db: &storegate_hub::db::Db) -> Schema {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut out = Schema::new();
    for t in tables {
        let cols: BTreeSet<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{t}')"
        )))
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
        // Explicit indexes only: SQLite names the implicit ones of PRIMARY
        // KEY and UNIQUE constraints `sqlite_autoindex_*`, PostgreSQL
        // `*_pkey` / `*_key`; those come with the columns' constraints.
        let indexes: BTreeMap<String, bool> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, \"unique\" FROM pragma_index_list('{t}') WHERE origin = 'c'"
        )))
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) == 1))
        .collect();
        out.insert(t, (cols, indexes));
    }
    out
}

async fn postgres_schema(db: &storegate_hub::db::Db) -> Schema {
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut out = Schema::new();
    for r in rows {
        out.entry(r.get::<String, _>(0))
            .or_default()
            .0
            .insert(r.get::<String, _>(1));
    }
    // Explicit indexes: not those backing a primary key or UNIQUE constraint.
    let rows = sqlx::query(
        "SELECT t.relname::text, i.relname::text, CASE WHEN x.indisunique THEN 1 ELSE 0 END \
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND t.relname <> '_sqlx_migrations' \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for r in rows {
        out.entry(r.get::<String, _>(0))
            .or_default()
            .1
            .insert(r.get::<String, _>(1), r.get::<i32, _>(2) == 1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_and_postgresql_migrations_define_the_same_schema() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lite = storegate_hub::db::Db::connect(&format!("sqlite://{}", dir.path().join("s.db").display()), 1)
        .await
        .unwrap();
    lite.migrate().await.unwrap();
    let pg = storegate_hub::db::Db::connect(&url, 1).await.unwrap();
    pg.migrate().await.unwrap();
    let (a, b) = (sqlite_schema(&lite).await, postgres_schema(&pg).await);
    assert!(a.len() > 20, "the schema was read: {} tables", a.len());
    for s in [&a, &b] {
        assert_eq!(
            s["store_credentials"].1.get("store_credentials_store"),
            Some(&false),
            "indexes are read"
        );
    }
    let tables_a: BTreeSet<&String> = a.keys().collect();
    let tables_b: BTreeSet<&String> = b.keys().collect();
    assert_eq!(tables_a, tables_b, "the same tables");
    for (t, (cols, idx)) in &a {
        let (cols_b, idx_b) = &b[t];
        assert_eq!(cols, cols_b, "columns of {t}");
        assert_eq!(idx, idx_b, "indexes of {t}");
    }
    pg.pool.close().await;
    drop_pg_database(&url).await;
}
