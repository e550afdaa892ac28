//! The audit event log: append-only, one row per state change, written in
//! the same transaction as the change where there is one.

use serde::Serialize;
use sqlx::{Any, AssertSqlSafe, Transaction};
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::sql::row;

const INSERT: &str = "INSERT INTO audit_log (at_ms, actor, action, entity, entity_id, detail)";

/// Appends an audit event inside `tx`. `actor` is `user:ID`, `key:ID`,
/// `store:ID` or `hub:WHAT` (the hub's own workers).
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    action: &str,
    entity: &str,
    entity_id: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    record_many(tx, actor, entity, entity_id, &[(action, detail)]).await
}

/// Appends an audit event outside any transaction (a change that has
/// none, such as a login); a failure is logged, not returned.
pub async fn record_alone(
    db: &Db,
    actor: &str,
    action: &str,
    entity: &str,
    entity_id: &str,
    detail: serde_json::Value,
) {
    let result = async {
        let mut tx = db.begin().await?;
        record(&mut tx, actor, action, entity, entity_id, detail).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action, entity, "audit event not written");
    }
}

/// Appends several audit events of one entity in one statement, in order.
pub async fn record_many(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    entity: &str,
    entity_id: &str,
    events: &[(&str, serde_json::Value)],
) -> Result<(), sqlx::Error> {
    let rows: Vec<Event<'_>> = events
        .iter()
        .map(|(action, detail)| Event {
            actor,
            action,
            entity,
            entity_id,
            detail: detail.clone(),
        })
        .collect();
    record_rows(tx, &rows).await
}

/// An audit event to append.
#[derive(Debug)]
pub struct Event<'a> {
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// Entity kind.
    pub entity: &'a str,
    /// Entity id.
    pub entity_id: &'a str,
    /// Details.
    pub detail: serde_json::Value,
}

/// Appends audit events of any entities in one statement, in order.
pub async fn record_rows(
    tx: &mut Transaction<'static, Any>,
    events: &[Event<'_>],
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    for chunk in events.chunks(crate::sql::CHUNK) {
        let text = crate::sql::values(INSERT, chunk.len(), 6, "");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
        for e in chunk {
            q = q
                .bind(now)
                .bind(crate::sql::text(e.actor))
                .bind(e.action)
                .bind(e.entity)
                .bind(crate::sql::text(e.entity_id))
                .bind(e.detail.to_string());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

row! {
    /// An audit event.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct AuditView {
        /// Id (append order).
        pub id: i64,
        /// When, ms.
        pub at_ms: i64,
        /// Who (`user:<id>`, `api_key:<id>`, `store:<id>`, `hub:<worker>`).
        pub actor: String,
        /// What (`user_created`, `order_confirmed`...).
        pub action: String,
        /// Entity kind.
        pub entity: String,
        /// Entity id.
        pub entity_id: String,
        /// Details: any JSON value (an object, or a list for rules), as
        /// stored.
        #[serde(serialize_with = "as_json")]
        #[schema(value_type = Value)]
        pub detail: String,
    }
}

/// Writes stored JSON text as JSON (`null` if it does not parse).
fn as_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    v.serialize(s)
}

/// Audit events, newest first, below id `before`, optionally of one
/// entity (kind, id).
pub async fn list(
    db: &Db,
    before: i64,
    entity: Option<&str>,
    entity_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditView>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(
        "SELECT id, at_ms, actor, action, entity, entity_id, detail FROM audit_log \
         WHERE id < $1 AND ($2 = '' OR entity = $2) AND ($3 = '' OR entity_id = $3) ORDER BY id DESC LIMIT $4",
    ))
    .bind(before)
    .bind(entity.unwrap_or(""))
    .bind(entity_id.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}
