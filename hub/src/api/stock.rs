//! Stock routes: levels, the ledger, adjustments, receipts, transfers,
//! counts, low-stock thresholds, availability, and a ledger check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::catalog::actor;
use super::{ApiError, ApiResult, AppState, Authed, Body, Client, ErrorBody, Operator, Page, Path, Query};
use crate::stock::{self, Availability, LevelView, Mismatch, MovementView};
use crate::stores::{self, RegionView};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stock", get(list_levels))
        .route("/api/v1/stock/movements", get(list_movements))
        .route("/api/v1/stock/verify", get(verify))
        .route("/api/v1/stock/adjustments", post(adjust))
        .route("/api/v1/stock/receipts", post(receive))
        .route("/api/v1/stock/transfers", post(transfer))
        .route("/api/v1/stock/counts", post(count))
        .route("/api/v1/stock/thresholds", put(put_threshold))
        .route("/api/v1/products/{sku}/availability", get(availability))
        .route("/api/v1/regions", get(regions))
}

/// Level filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LevelQuery {
    /// One location.
    pub location: Option<String>,
    /// One product.
    pub sku: Option<String>,
    /// Only levels below their threshold.
    pub low: Option<bool>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Stock levels (on hand, reserved, available, threshold).
#[utoipa::path(get, path = "/api/v1/stock", tag = "stock", security(("bearer" = ["operator"])), params(LevelQuery),
    responses((status = 200, body = Page<LevelView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_levels(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(q): Query<LevelQuery>,
) -> ApiResult<Json<Page<LevelView>>> {
    let page = super::PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let after = page.after()?;
    let items = stock::levels(
        &s.db,
        q.location.as_deref(),
        q.sku.as_deref(),
        q.low.unwrap_or(false),
        after.as_deref(),
        page.limit() + 1,
    )
    .await?;
    Ok(Json(Page::from(items, page.limit(), |l| {
        format!("{}/{}", l.location, l.sku)
    })))
}

/// Ledger filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct MovementQuery {
    /// The location.
    pub location: String,
    /// The product.
    pub sku: String,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The movement ledger of one location and SKU, oldest first: its sums
/// are the level.
#[utoipa::path(get, path = "/api/v1/stock/movements", tag = "stock", security(("bearer" = ["operator"])), params(MovementQuery),
    responses((status = 200, body = Page<MovementView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_movements(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(q): Query<MovementQuery>,
) -> ApiResult<Json<Page<MovementView>>> {
    let page = super::PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let after = match page.after()? {
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("invalid cursor"))?,
        None => 0,
    };
    let items = stock::movements(&s.db, &q.location, &q.sku, after, page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |m| m.id.to_string())))
}

/// Levels that disagree with the sum of their ledger rows (always empty
/// unless something is badly wrong).
#[utoipa::path(get, path = "/api/v1/stock/verify", tag = "stock", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<Mismatch>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn verify(_: Authed<Operator>, State(s): State<AppState>) -> ApiResult<Json<Vec<Mismatch>>> {
    Ok(Json(stock::verify(&s.db).await?))
}

/// A signed change of one SKU.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeltaLine {
    /// Product.
    pub sku: String,
    /// Base units (items or grams); negative takes stock away.
    pub delta: i64,
}

/// A quantity of one SKU.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QtyLine {
    /// Product.
    pub sku: String,
    /// Base units, positive.
    pub qty: i64,
}

/// An adjustment (damage, theft, found goods, corrections).
#[derive(Debug, Deserialize, ToSchema)]
pub struct Adjustment {
    /// Location.
    pub location: String,
    /// Why (`damaged`, `expired`, `theft`, `found`, `correction`...).
    pub reason: String,
    /// The changes.
    pub lines: Vec<DeltaLine>,
}

/// A delivery from a supplier.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Receipt {
    /// Receiving location.
    pub location: String,
    /// Supplier id.
    pub supplier: Option<String>,
    /// Delivery note number.
    pub reference: Option<String>,
    /// What arrived.
    pub lines: Vec<QtyLine>,
}

/// Goods moved between locations.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TransferInput {
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// What moves.
    pub lines: Vec<QtyLine>,
}

/// A count: what is on the shelf. The difference to the level is booked.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CountInput {
    /// Location.
    pub location: String,
    /// Counted lines.
    pub lines: Vec<CountLine>,
}

/// One counted SKU.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CountLine {
    /// Product.
    pub sku: String,
    /// Base units on the shelf.
    pub counted: i64,
}

/// What a stock operation booked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Booked {
    /// An id for the operation (the ledger rows' reference).
    pub reference: String,
    /// Rows booked.
    pub movements: usize,
}

impl From<stock::ops::OpError> for ApiError {
    fn from(e: stock::ops::OpError) -> ApiError {
        use stock::ops::OpError;
        match e {
            OpError::Db(e) => e.into(),
            OpError::Shortage { .. } => ApiError::new(StatusCode::CONFLICT, "out_of_stock", e.to_string()),
            OpError::Lines(_)
            | OpError::UnknownLocation(_)
            | OpError::UnknownProduct(_)
            | OpError::Invalid(_) => ApiError::invalid(e.to_string()),
        }
    }
}

fn created(b: stock::ops::Booked) -> (StatusCode, Json<Booked>) {
    (
        StatusCode::CREATED,
        Json(Booked {
            reference: b.reference,
            movements: b.movements,
        }),
    )
}

/// Books an adjustment. Lines of one SKU are booked as their sum.
#[utoipa::path(post, path = "/api/v1/stock/adjustments", tag = "stock", security(("bearer" = ["operator"])), request_body = Adjustment,
    responses((status = 201, body = Booked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn adjust(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(a): Body<Adjustment>,
) -> ApiResult<(StatusCode, Json<Booked>)> {
    let cmd = stock::ops::Adjust {
        location: a.location,
        reason: a.reason,
        lines: a.lines.into_iter().map(|l| (l.sku, l.delta)).collect(),
    };
    Ok(created(stock::ops::adjust(&s.db, &actor(&p), cmd).await?))
}

/// Books a delivery from a supplier. Lines of one SKU are booked as their sum.
#[utoipa::path(post, path = "/api/v1/stock/receipts", tag = "stock", security(("bearer" = ["operator"])), request_body = Receipt,
    responses((status = 201, body = Booked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn receive(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(r): Body<Receipt>,
) -> ApiResult<(StatusCode, Json<Booked>)> {
    let cmd = stock::ops::Receive {
        location: r.location,
        supplier: r.supplier,
        reference: r.reference,
        lines: r.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
    };
    Ok(created(stock::ops::receive(&s.db, &actor(&p), cmd).await?))
}

/// Moves goods from one location to another (out and in at once). Only
/// available stock can leave; lines of one SKU are checked and booked as
/// their sum.
#[utoipa::path(post, path = "/api/v1/stock/transfers", tag = "stock", security(("bearer" = ["operator"])), request_body = TransferInput,
    responses((status = 201, body = Booked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn transfer(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(t): Body<TransferInput>,
) -> ApiResult<(StatusCode, Json<Booked>)> {
    let cmd = stock::ops::Transfer {
        from: t.from,
        to: t.to,
        lines: t.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
    };
    Ok(created(stock::ops::transfer(&s.db, &actor(&p), cmd).await?))
}

/// Books a count: `counted - on_hand` per SKU (lines of one SKU, counted
/// in different places, add up).
#[utoipa::path(post, path = "/api/v1/stock/counts", tag = "stock", security(("bearer" = ["operator"])), request_body = CountInput,
    responses((status = 201, body = Booked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn count(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(c): Body<CountInput>,
) -> ApiResult<(StatusCode, Json<Booked>)> {
    let cmd = stock::ops::Count {
        location: c.location,
        lines: c.lines.into_iter().map(|l| (l.sku, l.counted)).collect(),
    };
    Ok(created(stock::ops::count(&s.db, &actor(&p), cmd).await?))
}

/// A low-stock threshold.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Threshold {
    /// Location.
    pub location: String,
    /// Product.
    pub sku: String,
    /// Warn when available stock is below this; `null` removes it.
    pub min_level: Option<i64>,
}

/// Sets (or removes) a low-stock threshold; `GET /api/v1/stock?low=true`
/// lists what is below.
#[utoipa::path(put, path = "/api/v1/stock/thresholds", tag = "stock", security(("bearer" = ["operator"])), request_body = Threshold,
    responses((status = 204, description = "Saved"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_threshold(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(t): Body<Threshold>,
) -> ApiResult<StatusCode> {
    stock::ops::set_threshold(&s.db, &actor(&p), &t.location, &t.sku, t.min_level).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where a product can be bought or collected now.
#[utoipa::path(get, path = "/api/v1/products/{sku}/availability", tag = "stock", security(("bearer" = ["client"])),
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, body = Vec<Availability>), (status = 401, body = ErrorBody)))]
pub async fn availability(
    _: Authed<Client>,
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<Json<Vec<Availability>>> {
    Ok(Json(stock::availability(&s.db, &sku).await?))
}

/// Regions with their locations and shipping zone.
#[utoipa::path(get, path = "/api/v1/regions", tag = "stock", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<RegionView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn regions(_: Authed<Operator>, State(s): State<AppState>) -> ApiResult<Json<Vec<RegionView>>> {
    Ok(Json(stores::regions(&s.db).await?))
}
