//! Operations: quarantined messages, discrepancies, the audit log.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use super::{
    Admin, ApiError, ApiResult, AppState, Authed, ErrorBody, Operator, Page, PageParams, Path, Query,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/quarantine", get(list_quarantine))
        .route("/api/v1/quarantine/{id}", get(get_quarantine))
        .route("/api/v1/discrepancies", get(list_discrepancies))
        .route("/api/v1/discrepancies/{id}/resolve", post(resolve_discrepancy))
        .route("/api/v1/audit", get(list_audit))
}

/// Pages over numeric ids run newest first: the cursor is the last id seen.
fn after_id(page: &PageParams) -> ApiResult<i64> {
    match page.after()? {
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("invalid cursor")),
        None => Ok(i64::MAX),
    }
}

/// A quarantined message.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineView {
    /// Id.
    pub id: i64,
    /// When received, ms.
    pub received_ms: i64,
    /// Its topic.
    pub topic: String,
    /// The store the topic names, if any.
    pub store_id: Option<String>,
    /// Why it was quarantined.
    pub reason: String,
    /// Its size in bytes.
    pub size: i64,
    /// The raw bytes as hex (at most 64 KiB kept); only on the single-item route.
    pub payload_hex: Option<String>,
}

fn quarantine_view(r: &sqlx::any::AnyRow, with_payload: bool) -> Result<QuarantineView, sqlx::Error> {
    let payload_hex = if with_payload {
        let p: Vec<u8> = r.try_get(6)?;
        Some(p.iter().map(|b| format!("{b:02x}")).collect())
    } else {
        None
    };
    Ok(QuarantineView {
        id: r.try_get(0)?,
        received_ms: r.try_get(1)?,
        topic: r.try_get(2)?,
        store_id: r.try_get(3)?,
        reason: r.try_get(4)?,
        size: r.try_get(5)?,
        payload_hex,
    })
}

/// Quarantined messages, newest first.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "ops", security(("bearer" = ["operator"])), params(PageParams),
    responses((status = 200, body = Page<QuarantineView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_quarantine(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<QuarantineView>>> {
    let rows = sqlx::query(
        "SELECT id, received_ms, topic, store_id, reason, size FROM quarantine WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(after_id(&page)?)
    .bind(page.limit() + 1)
    .fetch_all(&s.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| quarantine_view(r, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from(items, page.limit(), |q| q.id.to_string())))
}

/// One quarantined message with its raw bytes.
#[utoipa::path(get, path = "/api/v1/quarantine/{id}", tag = "ops", security(("bearer" = ["operator"])),
    params(("id" = i64, Path, description = "Quarantine id")),
    responses((status = 200, body = QuarantineView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_quarantine(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<QuarantineView>> {
    let row = sqlx::query(
        "SELECT id, received_ms, topic, store_id, reason, size, payload FROM quarantine WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("quarantined message {id}")))?;
    Ok(Json(quarantine_view(&row, true)?))
}

/// A discrepancy between what a store recorded and what the hub knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscrepancyView {
    /// Id.
    pub id: i64,
    /// The store.
    pub store_id: String,
    /// The event's seq at that store.
    pub seq: i64,
    /// `unknown_sku`, `price_mismatch`, `totals_mismatch`, ...
    pub kind: String,
    /// What was found.
    pub detail: String,
    /// When flagged, ms.
    pub created_ms: i64,
    /// When resolved, ms.
    pub resolved_ms: Option<i64>,
}

/// Filters for discrepancies.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DiscrepancyParams {
    /// Only unresolved ones (default true).
    pub open: Option<bool>,
    /// Only this store.
    pub store_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
}

/// Discrepancies, newest first.
#[utoipa::path(get, path = "/api/v1/discrepancies", tag = "ops", security(("bearer" = ["operator"])), params(PageParams, DiscrepancyParams),
    responses((status = 200, body = Page<DiscrepancyView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_discrepancies(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
    Query(f): Query<DiscrepancyParams>,
) -> ApiResult<Json<Page<DiscrepancyView>>> {
    let rows = sqlx::query(
        "SELECT id, store_id, seq, kind, detail, created_ms, resolved_ms FROM discrepancies \
         WHERE id < $1 AND ($2 = 0 OR resolved_ms IS NULL) AND ($3 = '' OR store_id = $3) AND ($4 = '' OR kind = $4) \
         ORDER BY id DESC LIMIT $5",
    )
    .bind(after_id(&page)?)
    .bind(i64::from(f.open.unwrap_or(true)))
    .bind(f.store_id.unwrap_or_default())
    .bind(f.kind.unwrap_or_default())
    .bind(page.limit() + 1)
    .fetch_all(&s.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(DiscrepancyView {
                id: r.try_get(0)?,
                store_id: r.try_get(1)?,
                seq: r.try_get(2)?,
                kind: r.try_get(3)?,
                detail: r.try_get(4)?,
                created_ms: r.try_get(5)?,
                resolved_ms: r.try_get(6)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Page::from(items, page.limit(), |d| d.id.to_string())))
}

/// Marks a discrepancy resolved.
#[utoipa::path(post, path = "/api/v1/discrepancies/{id}/resolve", tag = "ops", security(("bearer" = ["operator"])),
    params(("id" = i64, Path, description = "Discrepancy id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn resolve_discrepancy(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<axum::http::StatusCode> {
    let done = sqlx::query("UPDATE discrepancies SET resolved_ms = $2 WHERE id = $1 AND resolved_ms IS NULL")
        .bind(id)
        .bind(crate::db::now_ms())
        .execute(&s.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("open discrepancy {id}")));
    }
    super::audit(
        &s.db,
        &p,
        "discrepancy_resolved",
        "discrepancy",
        &id.to_string(),
        json!({}),
    )
    .await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// An audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// Id (append order).
    pub id: i64,
    /// When, ms.
    pub at_ms: i64,
    /// Who (`user:<id>`, `api_key:<id>`, `system`).
    pub actor: String,
    /// What (`user_created`, `order_confirmed`...).
    pub action: String,
    /// Entity kind.
    pub entity: String,
    /// Entity id.
    pub entity_id: String,
    /// Details: any JSON value (an object, or a list for rules).
    #[schema(value_type = Value)]
    pub detail: serde_json::Value,
}

/// Filters for the audit log.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditParams {
    /// Only this entity kind.
    pub entity: Option<String>,
    /// Only this entity id.
    pub entity_id: Option<String>,
}

/// The audit log, newest first (append-only).
#[utoipa::path(get, path = "/api/v1/audit", tag = "ops", security(("bearer" = ["admin"])), params(PageParams, AuditParams),
    responses((status = 200, body = Page<AuditView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_audit(
    _: Authed<Admin>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
    Query(f): Query<AuditParams>,
) -> ApiResult<Json<Page<AuditView>>> {
    let rows = sqlx::query(
        "SELECT id, at_ms, actor, action, entity, entity_id, detail FROM audit_log \
         WHERE id < $1 AND ($2 = '' OR entity = $2) AND ($3 = '' OR entity_id = $3) ORDER BY id DESC LIMIT $4",
    )
    .bind(after_id(&page)?)
    .bind(f.entity.unwrap_or_default())
    .bind(f.entity_id.unwrap_or_default())
    .bind(page.limit() + 1)
    .fetch_all(&s.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            let detail: String = r.try_get(6)?;
            Ok(AuditView {
                id: r.try_get(0)?,
                at_ms: r.try_get(1)?,
                actor: r.try_get(2)?,
                action: r.try_get(3)?,
                entity: r.try_get(4)?,
                entity_id: r.try_get(5)?,
                detail: serde_json::from_str(&detail).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Page::from(items, page.limit(), |a| a.id.to_string())))
}
