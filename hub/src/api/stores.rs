//! Stores, their devices, sync state and synced events.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use storegate_protocol::StoreId;
use utoipa::{IntoParams, ToSchema};

use super::{
    Admin, ApiError, ApiResult, AppState, Authed, ErrorBody, Operator, Page, PageParams, Path, Query,
};
use crate::ingest::{self, EventView};
use crate::stores::{self, DeviceView, StoreView};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stores", get(list_stores))
        .route("/api/v1/stores/{id}", get(get_store).put(put_store))
        .route("/api/v1/stores/{id}/devices", get(list_devices))
        .route("/api/v1/stores/{id}/events", get(list_events))
}

/// Lists stores with their sync state (high-water mark, lag, backlog).
#[utoipa::path(get, path = "/api/v1/stores", tag = "stores", security(("bearer" = ["operator"])), params(PageParams),
    responses((status = 200, body = Page<StoreView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_stores(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<StoreView>>> {
    let after = page.after()?;
    let items = stores::list(&s.db, after.as_deref(), page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |v| v.store_id.clone())))
}

/// One store with its sync state.
#[utoipa::path(get, path = "/api/v1/stores/{id}", tag = "stores", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Store id")),
    responses((status = 200, body = StoreView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_store(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StoreView>> {
    stores::get(&s.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("store {id}")))
}

/// A store's descriptive fields.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StoreInput {
    /// Display name.
    pub name: String,
    /// `store` or `warehouse`.
    pub kind: String,
    /// Region (allocation, regional prices).
    pub region: Option<String>,
}

/// Registers a store or warehouse, or renames it.
#[utoipa::path(put, path = "/api/v1/stores/{id}", tag = "stores", security(("bearer" = ["admin"])), request_body = StoreInput,
    params(("id" = String, Path, description = "Store id")),
    responses((status = 200, body = StoreView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_store(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    super::Body(req): super::Body<StoreInput>,
) -> ApiResult<Json<StoreView>> {
    let id = StoreId::parse(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if !matches!(req.kind.as_str(), "store" | "warehouse") {
        return Err(ApiError::invalid("kind is `store` or `warehouse`"));
    }
    if req.name.trim().is_empty() {
        return Err(ApiError::invalid("name must not be empty"));
    }
    stores::upsert(&s.db, id.as_str(), &req.name, &req.kind, req.region.as_deref()).await?;
    super::audit(
        &s.db,
        &p,
        "store_saved",
        "store",
        id.as_str(),
        json!({"name": req.name, "kind": req.kind, "region": req.region}),
    )
    .await;
    stores::get(&s.db, id.as_str())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::internal("store vanished after saving"))
}

/// A store's devices (from their health reports).
#[utoipa::path(get, path = "/api/v1/stores/{id}/devices", tag = "stores", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Store id")),
    responses((status = 200, body = Vec<DeviceView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_devices(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<DeviceView>>> {
    Ok(Json(stores::devices(&s.db, &id).await?))
}

/// `?after_seq=&limit=` for events.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventParams {
    /// Events with a seq above this (default 0).
    pub after_seq: Option<i64>,
    /// Most events (1 to 500, default 100).
    pub limit: Option<i64>,
}

/// A store's events in seq order.
#[utoipa::path(get, path = "/api/v1/stores/{id}/events", tag = "stores", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Store id"), EventParams),
    responses((status = 200, body = Vec<EventView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_events(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventParams>,
) -> ApiResult<Json<Vec<EventView>>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    Ok(Json(
        ingest::events(&s.db, &id, q.after_seq.unwrap_or(0), limit).await?,
    ))
}
