//! Payment routes: payments, capture, void, refund (idempotent), the
//! store-and-forward exception queue, gift cards.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::catalog::actor;
use super::orders::idempotent;
use super::{Admin, ApiError, ApiResult, AppState, Authed, Body, ErrorBody, Operator, Page, Path, Query};
use crate::idempotency::{self, KeyRef};
use crate::payments::{
    self, ActionError, ExceptionView, GiftCardQuery, GiftCardView, NewGiftCard, PaymentView,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payments", get(list_payments))
        .route("/api/v1/payments/{id}", get(get_payment))
        .route("/api/v1/payments/{id}/capture", post(capture))
        .route("/api/v1/payments/{id}/void", post(void))
        .route("/api/v1/payments/{id}/refund", post(refund))
        .route("/api/v1/payment-exceptions", get(list_exceptions))
        .route("/api/v1/payment-exceptions/{id}/resolve", post(resolve_exception))
        .route("/api/v1/gift-cards", post(issue_gift_card))
        .route("/api/v1/gift-cards/balance", post(gift_card_balance))
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::NotFound(m) => ApiError::not_found(format!("payment {m}")),
            ActionError::State(m) => ApiError::conflict(m),
            ActionError::Invalid(m) => ApiError::invalid(m),
            ActionError::Db(e) => ApiError::internal(e),
        }
    }
}

/// Payment filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PaymentQuery {
    /// One order.
    pub order_id: Option<String>,
    /// One status.
    #[param(inline)]
    pub status: Option<payments::PaymentStatus>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Payments (store tenders, online authorisations, refunds).
#[utoipa::path(get, path = "/api/v1/payments", tag = "payments", security(("bearer" = ["operator"])), params(PaymentQuery),
    responses((status = 200, body = Page<PaymentView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_payments(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(q): Query<PaymentQuery>,
) -> ApiResult<Json<Page<PaymentView>>> {
    let page = super::PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let after = page.after()?.unwrap_or_default();
    let items = payments::list(&s.db, q.order_id.as_deref(), q.status, &after, page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |p| p.id.clone())))
}

/// One payment.
#[utoipa::path(get, path = "/api/v1/payments/{id}", tag = "payments", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = PaymentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_payment(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PaymentView>> {
    payments::get(&s.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("payment {id}")))
}

/// Captures an authorised payment (the worker settles it with the
/// provider; the status shows `pending_capture` until then).
#[utoipa::path(post, path = "/api/v1/payments/{id}/capture", tag = "payments", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 202, body = PaymentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn capture(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<PaymentView>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(payments::capture(&s.db, &actor(&p), &id).await?),
    ))
}

/// Voids an authorised payment.
#[utoipa::path(post, path = "/api/v1/payments/{id}/void", tag = "payments", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 202, body = PaymentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn void(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<PaymentView>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(payments::void(&s.db, &actor(&p), &id).await?),
    ))
}

/// A refund request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefundInput {
    /// Amount, minor units (at most what is captured and not yet refunded).
    pub amount_minor: i64,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// Refunds part or all of a captured payment. Needs an `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/payments/{id}/refund", tag = "payments", security(("bearer" = ["operator"])), request_body = RefundInput,
    params(("id" = String, Path, description = "Payment id"), ("Idempotency-Key" = String, Header, description = "Unique per refund")),
    responses((status = 202, body = PaymentView, description = "The refund, pending with the provider"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn refund(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    super::RawBody(body): super::RawBody,
) -> ApiResult<Response> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| idempotency::valid_key(k))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "refunds need an Idempotency-Key header (1 to 255 visible ASCII characters)",
            )
        })?
        .to_owned();
    let input: RefundInput = super::parse_json(&body)?;
    let k = KeyRef {
        key: key.clone(),
        principal: actor(&p),
        route: format!("POST /api/v1/payments/{id}/refund"),
    };
    let who = actor(&p);
    idempotent(
        &s,
        &k,
        &body,
        async |_: String| None,
        async || match payments::refund(&s.db, &who, &id, input.amount_minor, &key, &input.reason).await {
            Ok(v) => (202, serde_json::to_string(&v).unwrap_or_default()),
            Err(e) => ApiError::from(e).to_parts(),
        },
    )
    .await
}

/// `?all=true` includes resolved exceptions.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExceptionQuery {
    /// Include resolved ones.
    pub all: Option<bool>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Store-and-forward card payments the provider declined after the goods
/// left: money to collect.
#[utoipa::path(get, path = "/api/v1/payment-exceptions", tag = "payments", security(("bearer" = ["operator"])), params(ExceptionQuery),
    responses((status = 200, body = Page<ExceptionView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_exceptions(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(q): Query<ExceptionQuery>,
) -> ApiResult<Json<Page<ExceptionView>>> {
    let page = super::PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let after = match page.after()? {
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("invalid cursor"))?,
        None => 0,
    };
    let items = payments::exceptions(&s.db, q.all.unwrap_or(false), after, page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |e| e.id.to_string())))
}

/// How an exception was closed.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Resolution {
    /// `collected` or `written_off`.
    pub status: payments::ExceptionStatus,
    /// Free text.
    #[serde(default)]
    pub note: String,
}

/// Closes an exception.
#[utoipa::path(post, path = "/api/v1/payment-exceptions/{id}/resolve", tag = "payments", security(("bearer" = ["operator"])), request_body = Resolution,
    params(("id" = i64, Path, description = "Exception id")),
    responses((status = 204, description = "Resolved"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn resolve_exception(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Body(r): Body<Resolution>,
) -> ApiResult<StatusCode> {
    if payments::resolve_exception(&s.db, &actor(&p), id, r.status, &r.note).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("open payment exception {id}")))
    }
}

/// Issues (or tops up) a gift card.
#[utoipa::path(post, path = "/api/v1/gift-cards", tag = "payments", security(("bearer" = ["admin"])), request_body = NewGiftCard,
    responses((status = 201, body = GiftCardView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn issue_gift_card(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    Body(g): Body<NewGiftCard>,
) -> ApiResult<(StatusCode, Json<GiftCardView>)> {
    let card = payments::issue_gift_card(&s.db, &actor(&p), &g).await?;
    Ok((StatusCode::CREATED, Json(card)))
}

/// A gift card's balance. The token goes in the body: a URL path is
/// logged by proxies and servers.
#[utoipa::path(post, path = "/api/v1/gift-cards/balance", tag = "payments", security(("bearer" = ["operator"])),
    request_body = GiftCardQuery,
    responses((status = 200, body = GiftCardView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn gift_card_balance(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Body(q): Body<GiftCardQuery>,
) -> ApiResult<Json<GiftCardView>> {
    payments::gift_card(&s.db, &q.token)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("gift card"))
}
