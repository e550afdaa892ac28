//! Operations: quarantined messages, discrepancies, the audit log.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use super::catalog::actor;
use super::{
    Admin, ApiError, ApiResult, AppState, Authed, ErrorBody, Operator, Page, PageParams, Path, Query,
};
pub use crate::audit::AuditView;
pub use crate::ingest::DiscrepancyView;
pub use crate::quarantine::QuarantineView;
use crate::{audit, ingest, quarantine};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/quarantine", get(list_quarantine))
        .route("/api/v1/quarantine/{id}", get(get_quarantine))
        .route("/api/v1/discrepancies", get(list_discrepancies))
        .route("/api/v1/discrepancies/{id}/resolve", post(resolve_discrepancy))
        .route("/api/v1/audit", get(list_audit))
}

/// Pages over numeric ids run newest first: the cursor is the last id seen.
fn before_id(page: &PageParams) -> ApiResult<i64> {
    match page.after()? {
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("invalid cursor")),
        None => Ok(i64::MAX),
    }
}

/// Quarantined messages, newest first.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "ops", security(("bearer" = ["operator"])), params(PageParams),
    responses((status = 200, body = Page<QuarantineView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_quarantine(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<QuarantineView>>> {
    let items = quarantine::list(&s.db, before_id(&page)?, page.limit() + 1).await?;
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
    quarantine::get(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("quarantined message {id}")))
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
    let items = ingest::discrepancies(
        &s.db,
        before_id(&page)?,
        f.open.unwrap_or(true),
        f.store_id.as_deref(),
        f.kind.as_deref(),
        page.limit() + 1,
    )
    .await?;
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
    if !ingest::resolve_discrepancy(&s.db, &actor(&p), id).await? {
        return Err(ApiError::not_found(format!("open discrepancy {id}")));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
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
    let items = audit::list(
        &s.db,
        before_id(&page)?,
        f.entity.as_deref(),
        f.entity_id.as_deref(),
        page.limit() + 1,
    )
    .await?;
    Ok(Json(Page::from(items, page.limit(), |a| a.id.to_string())))
}
