//! The audit event log: append-only, one row per state change, written in
//! the same transaction as the change where there is one.

use sqlx::{Any, Transaction};

use crate::db::now_ms;

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
    sqlx::query(
        "INSERT INTO audit_log (at_ms, actor, action, entity, entity_id, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(crate::sql::text(actor))
    .bind(action)
    .bind(entity)
    .bind(crate::sql::text(entity_id))
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends several audit events in one statement, in order.
pub async fn record_many(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    entity: &str,
    entity_id: &str,
    events: &[(&str, serde_json::Value)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let text = crate::sql::values(
        "INSERT INTO audit_log (at_ms, actor, action, entity, entity_id, detail)",
        events.len(),
        6,
        "",
    );
    let now = now_ms();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
    for (action, detail) in events {
        q = q
            .bind(now)
            .bind(crate::sql::text(actor))
            .bind(*action)
            .bind(entity)
            .bind(crate::sql::text(entity_id))
            .bind(detail.to_string());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}
