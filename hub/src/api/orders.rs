//! Order routes (online orders with `Idempotency-Key`, history, cancel),
//! allocation rules, shipping, tasks and favourites.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::catalog::actor;
use super::{
    Admin, ApiError, ApiResult, AppState, Authed, Body, Client, ErrorBody, Operator, Page, Path, Query,
    json_response,
};
use crate::auth::{Principal, Role};
use crate::catalog::favourites::{self, Favourite};
use crate::domain::allocation::Rule;
use crate::idempotency::{self, Begin, KeyRef};
use crate::orders::{self, Created, OrderError, OrderInput, OrderSummary, OrderView};
use crate::shipping::{self, CarrierView, Quote, RateView, ShipmentEvent, ShipmentView};
use crate::tasks::{self, TaskView};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/orders", get(list_orders).post(create_order))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/orders/{id}/cancel", post(cancel_order))
        .route("/api/v1/allocation-rules", get(get_rules).put(put_rules))
        .route("/api/v1/carriers", get(list_carriers))
        .route("/api/v1/carriers/{id}", put(put_carrier))
        .route("/api/v1/shipping/zones/{region}", put(put_zone))
        .route("/api/v1/shipping/rates", get(list_rates).put(put_rate))
        .route("/api/v1/shipping/quote", get(quote))
        .route("/api/v1/shipments/{id}", get(get_shipment))
        .route("/api/v1/shipments/{id}/events", post(shipment_event))
        .route("/api/v1/tasks", get(list_tasks).post(create_task))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/me/favourites", get(list_favourites))
        .route(
            "/api/v1/me/favourites/{sku}",
            put(add_favourite).delete(remove_favourite),
        )
}

impl From<shipping::ShippingError> for ApiError {
    fn from(e: shipping::ShippingError) -> Self {
        match e {
            shipping::ShippingError::Invalid(m) => ApiError::invalid(m),
            shipping::ShippingError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Invalid(m) => ApiError::invalid(m),
            OrderError::OutOfStock(m) => ApiError::new(StatusCode::CONFLICT, "out_of_stock", m),
            OrderError::NotFound(m) => ApiError::not_found(m),
            OrderError::NotCancellable { .. } | OrderError::ShipmentLeft | OrderError::Shipment(_) => {
                ApiError::conflict(e.to_string())
            }
            OrderError::Raced => ApiError::new(StatusCode::CONFLICT, "out_of_stock", e.to_string()),
            OrderError::Db(e) => ApiError::internal(e),
        }
    }
}

fn key_ref(p: &Principal, headers: &HeaderMap, route: &str) -> ApiResult<KeyRef> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "this route needs an Idempotency-Key header (a unique value per operation; reuse it to retry)",
            )
        })?;
    if !idempotency::valid_key(key) {
        return Err(ApiError::bad_request(
            "Idempotency-Key: 1 to 255 visible ASCII characters",
        ));
    }
    Ok(KeyRef {
        key: key.to_owned(),
        principal: actor(p),
        route: route.to_owned(),
    })
}

/// Runs `work` once per key (IETF Idempotency-Key semantics) and returns
/// its stored response on retries. `settled` rebuilds the response of a
/// first request that died after creating `resource`.
pub(super) async fn idempotent<F, S>(
    s: &AppState,
    k: &KeyRef,
    body: &[u8],
    settled: S,
    work: F,
) -> ApiResult<Response>
where
    F: AsyncFnOnce() -> (u16, String),
    S: AsyncFnOnce(String) -> Option<(u16, String)>,
{
    match idempotency::begin(&s.db, k, &idempotency::fingerprint(body)).await? {
        Begin::Replay { status, body } => return Ok(json_response(status, body, true)),
        Begin::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        Begin::InFlight { resource } => {
            if let Some(r) = resource
                && let Some((status, body)) = settled(r).await
            {
                idempotency::finish(&s.db, k, status, &body).await?;
                return Ok(json_response(status, body, true));
            }
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_in_flight",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ));
        }
        Begin::Fresh => {}
    }
    let (status, out) = work().await;
    idempotency::finish(&s.db, k, status, &out).await?;
    Ok(json_response(status, out, false))
}

fn order_parts(created: Result<Created, OrderError>) -> (u16, String) {
    let json = |v: &OrderView| serde_json::to_string(v).unwrap_or_default();
    match created {
        Ok(Created::Confirmed(o)) => (201, json(&o)),
        Ok(Created::Pending(o)) => (202, json(&o)),
        Ok(Created::Failed(o, why)) => {
            let mut e = ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_declined",
                format!("order {}: {why}", o.id),
            );
            e.retry_after = None;
            e.to_parts()
        }
        Ok(Created::Cancelled(o, why)) => {
            ApiError::conflict(format!("order {} was cancelled while it was placed: {why}", o.id)).to_parts()
        }
        Err(e) => ApiError::from(e).to_parts(),
    }
}

/// Places an online order: allocation, reservation, payment
/// authorisation, then a pick task (click-and-collect) or a shipment.
/// Needs an `Idempotency-Key`: a retry with the same key and body gets the
/// same answer; another body gets 422; a retry while the first runs, 409.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", security(("bearer" = ["client"])), request_body = OrderInput,
    params(("Idempotency-Key" = String, Header, description = "Unique per order; reuse it to retry")),
    responses((status = 201, body = OrderView, description = "Confirmed"), (status = 202, body = OrderView, description = "Payment pending; the saga goes on"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 402, body = ErrorBody, description = "Payment declined; the order failed and nothing is reserved"),
        (status = 409, body = ErrorBody, description = "Out of stock, or the same key still in flight"), (status = 422, body = ErrorBody)))]
pub async fn create_order(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    headers: HeaderMap,
    super::RawBody(body): super::RawBody,
) -> ApiResult<Response> {
    let k = key_ref(&p, &headers, "POST /api/v1/orders")?;
    let input: OrderInput = super::parse_json(&body)?;
    let customer = if p.role >= Role::Operator {
        input.customer_id.clone()
    } else {
        Some(p.subject.clone())
    };
    let who = actor(&p);
    let db = s.db.clone();
    idempotent(
        &s,
        &k,
        &body,
        async |order_id: String| {
            let o = orders::get(&db, &order_id).await.ok().flatten()?;
            match Created::of(o) {
                // Still running: the first request answers.
                Created::Pending(_) => None,
                settled => Some(order_parts(Ok(settled))),
            }
        },
        async || {
            let r = s
                .commerce
                .place(&who, customer.as_deref(), &input, Some(&k))
                .await;
            order_parts(r)
        },
    )
    .await
}

/// Order filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct OrderQuery {
    /// A customer (operators; clients always see their own).
    pub customer: Option<String>,
    /// A status.
    #[param(inline)]
    pub status: Option<orders::OrderStatus>,
    /// `store` or `online`.
    pub kind: Option<String>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Orders, newest first. Clients see only their own (their order history).
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = ["client"])), params(OrderQuery),
    responses((status = 200, body = Page<OrderSummary>), (status = 401, body = ErrorBody)))]
pub async fn list_orders(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    Query(q): Query<OrderQuery>,
) -> ApiResult<Json<Page<OrderSummary>>> {
    let page = super::PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let before = page.after()?;
    let customer = if p.role >= Role::Operator {
        q.customer
    } else {
        Some(p.subject.clone())
    };
    let items = orders::list(
        &s.db,
        customer.as_deref(),
        q.status,
        q.kind.as_deref(),
        before.as_deref(),
        page.limit() + 1,
    )
    .await?;
    Ok(Json(Page::from(items, page.limit(), |o| o.id.clone())))
}

/// One order with its lines, history, payments, shipments and tasks.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = ["client"])),
    params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = OrderView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_order(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    let o = orders::get(&s.db, &id)
        .await?
        .filter(|o| p.role >= Role::Operator || o.customer_id.as_deref() == Some(p.subject.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("order {id}")))?;
    Ok(Json(o))
}

/// Why an order is cancelled.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CancelInput {
    /// Free text.
    #[serde(default)]
    pub reason: String,
}

/// Cancels an order whose goods have not left: reservations released,
/// authorisation voided, tasks withdrawn.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = ["client"])), request_body = CancelInput,
    params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = OrderView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_order(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(c): Body<CancelInput>,
) -> ApiResult<Json<OrderView>> {
    let o = orders::get(&s.db, &id)
        .await?
        .filter(|o| p.role >= Role::Operator || o.customer_id.as_deref() == Some(p.subject.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("order {id}")))?;
    let reason = if c.reason.trim().is_empty() {
        "cancelled by request".to_owned()
    } else {
        c.reason
    };
    Ok(Json(s.commerce.cancel(&actor(&p), &o.id, &reason).await?))
}

/// The allocation rules, in order.
#[utoipa::path(get, path = "/api/v1/allocation-rules", tag = "orders", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<Rule>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_rules(_: Authed<Operator>, State(s): State<AppState>) -> ApiResult<Json<Vec<Rule>>> {
    Ok(Json(orders::rules(&s.db).await?))
}

/// Replaces the allocation rules (first rule that tells two candidates
/// apart decides; then the location id).
#[utoipa::path(put, path = "/api/v1/allocation-rules", tag = "orders", security(("bearer" = ["admin"])), request_body = Vec<Rule>,
    responses((status = 200, body = Vec<Rule>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_rules(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    Body(rules): Body<Vec<Rule>>,
) -> ApiResult<Json<Vec<Rule>>> {
    if rules.len() > 20 {
        return Err(ApiError::invalid("at most 20 rules"));
    }
    for r in &rules {
        if let Rule::Kind { prefer } = r
            && !matches!(prefer.as_str(), "store" | "warehouse")
        {
            return Err(ApiError::invalid("kind.prefer is `store` or `warehouse`"));
        }
    }
    orders::save_rules(&s.db, &actor(&p), &rules).await?;
    Ok(Json(rules))
}

/// Every carrier.
#[utoipa::path(get, path = "/api/v1/carriers", tag = "shipping", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<CarrierView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_carriers(
    _: Authed<Operator>,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<CarrierView>>> {
    Ok(Json(shipping::carriers(&s.db).await?))
}

/// Creates or renames a carrier.
#[utoipa::path(put, path = "/api/v1/carriers/{id}", tag = "shipping", security(("bearer" = ["operator"])), request_body = CarrierView,
    params(("id" = String, Path, description = "Carrier id")),
    responses((status = 200, body = CarrierView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_carrier(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(c): Body<CarrierView>,
) -> ApiResult<Json<CarrierView>> {
    Ok(Json(
        shipping::save_carrier(&s.db, &actor(&p), &id, &c.name).await?,
    ))
}

/// A zone for a region.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ZoneInput {
    /// Zone name used by rate tables.
    pub zone: String,
}

/// Maps a region to a shipping zone.
#[utoipa::path(put, path = "/api/v1/shipping/zones/{region}", tag = "shipping", security(("bearer" = ["operator"])), request_body = ZoneInput,
    params(("region" = String, Path, description = "Region")),
    responses((status = 204, description = "Saved"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_zone(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(region): Path<String>,
    Body(z): Body<ZoneInput>,
) -> ApiResult<StatusCode> {
    shipping::save_zone(&s.db, &actor(&p), &region, &z.zone).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every rate.
#[utoipa::path(get, path = "/api/v1/shipping/rates", tag = "shipping", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<RateView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_rates(_: Authed<Operator>, State(s): State<AppState>) -> ApiResult<Json<Vec<RateView>>> {
    Ok(Json(shipping::rates(&s.db).await?))
}

/// Saves a rate (carrier, zone, weight bracket, price).
#[utoipa::path(put, path = "/api/v1/shipping/rates", tag = "shipping", security(("bearer" = ["operator"])), request_body = RateView,
    responses((status = 204, description = "Saved"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_rate(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(r): Body<RateView>,
) -> ApiResult<StatusCode> {
    shipping::save_rate(&s.db, &actor(&p), &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?region=&grams=`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct QuoteQuery {
    /// Ship-to region.
    pub region: String,
    /// Parcel weight, grams.
    pub grams: i64,
}

/// Shipping prices per carrier, cheapest first.
#[utoipa::path(get, path = "/api/v1/shipping/quote", tag = "shipping", security(("bearer" = ["client"])), params(QuoteQuery),
    responses((status = 200, body = Vec<Quote>), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn quote(
    _: Authed<Client>,
    State(s): State<AppState>,
    Query(q): Query<QuoteQuery>,
) -> ApiResult<Json<Vec<Quote>>> {
    if q.grams <= 0 {
        return Err(ApiError::invalid("grams must be positive"));
    }
    let mut tx = s.db.pool.begin().await?;
    let quotes = shipping::quote(&mut tx, &q.region, q.grams).await?;
    tx.rollback().await?;
    Ok(Json(quotes))
}

/// A shipment with its tracking events.
#[utoipa::path(get, path = "/api/v1/shipments/{id}", tag = "shipping", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Shipment id")),
    responses((status = 200, body = ShipmentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_shipment(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ShipmentView>> {
    shipping::list(&s.db, None, Some(&id))
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("shipment {id}")))
}

/// A tracking event (from the carrier or the warehouse): `in_transit`
/// (the goods leave: stock moves, payment is captured), `delivered`,
/// `exception`.
#[utoipa::path(post, path = "/api/v1/shipments/{id}/events", tag = "shipping", security(("bearer" = ["operator"])), request_body = ShipmentEvent,
    params(("id" = String, Path, description = "Shipment id")),
    responses((status = 200, body = ShipmentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn shipment_event(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(e): Body<ShipmentEvent>,
) -> ApiResult<Json<ShipmentView>> {
    Ok(Json(s.commerce.shipment_event(&actor(&p), &id, &e).await?))
}

/// Task filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TaskQuery {
    /// One store.
    pub store: Option<String>,
    /// One status.
    #[param(inline)]
    pub status: Option<tasks::TaskStatus>,
    /// One order.
    pub order_id: Option<String>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Tasks sent to stores' devices.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = ["operator"])), params(TaskQuery),
    responses((status = 200, body = Page<TaskView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_tasks(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Json<Page<TaskView>>> {
    let page = super::PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let after = page.after()?.unwrap_or_default();
    let items = tasks::list(
        &s.db,
        q.store.as_deref(),
        q.status,
        q.order_id.as_deref(),
        &after,
        page.limit() + 1,
    )
    .await?;
    Ok(Json(Page::from(items, page.limit(), |t| t.id.clone())))
}

/// One task.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, body = TaskView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskView>> {
    tasks::get(&s.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("task {id}")))
}

/// A task for a store's devices.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TaskInput {
    /// Store.
    pub store: String,
    /// count, replenish, pick, pack, collect.
    pub kind: String,
    /// Goods.
    pub lines: Vec<tasks::LineView>,
    /// Free text for the staff.
    pub note: Option<String>,
}

/// Sends a task (a count, a replenishment...) to a store's devices.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = ["operator"])), request_body = TaskInput,
    responses((status = 201, body = TaskView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_task(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(t): Body<TaskInput>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let kind = tasks::parse_kind(&t.kind)
        .ok_or_else(|| ApiError::invalid("kind: pick, pack, collect, count or replenish"))?;
    let store =
        storegate_protocol::StoreId::parse(t.store.as_str()).map_err(|e| ApiError::invalid(e.to_string()))?;
    if t.lines.is_empty()
        || t.lines
            .iter()
            .any(|l| l.qty < 0 || storegate_protocol::Sku::parse(l.sku.as_str()).is_err())
    {
        return Err(ApiError::invalid(
            "lines need valid SKUs and non-negative quantities",
        ));
    }
    let mut tx = s.db.begin().await?;
    let lines: Vec<(String, i64)> = t.lines.iter().map(|l| (l.sku.clone(), l.qty)).collect();
    let id = tasks::create(&mut tx, &s.db, store.as_str(), kind, None, &lines, t.note.clone()).await?;
    crate::audit::record(
        &mut tx,
        &actor(&p),
        "task_created",
        "task",
        &id,
        serde_json::json!({"store": store.as_str(), "kind": t.kind}),
    )
    .await?;
    tx.commit().await?;
    s.link.send_downlink(&store);
    let view = tasks::get(&s.db, &id)
        .await?
        .ok_or_else(|| ApiError::internal("task vanished"))?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The caller's favourite products.
#[utoipa::path(get, path = "/api/v1/me/favourites", tag = "orders", security(("bearer" = ["client"])),
    responses((status = 200, body = Vec<Favourite>), (status = 401, body = ErrorBody)))]
pub async fn list_favourites(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<Favourite>>> {
    Ok(Json(favourites::list(&s.db, &p.subject).await?))
}

/// Adds a favourite.
#[utoipa::path(put, path = "/api/v1/me/favourites/{sku}", tag = "orders", security(("bearer" = ["client"])),
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 204, description = "Added"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_favourite(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<StatusCode> {
    if !favourites::add(&s.db, &p.subject, &sku).await? {
        return Err(ApiError::not_found(format!("product {sku}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a favourite.
#[utoipa::path(delete, path = "/api/v1/me/favourites/{sku}", tag = "orders", security(("bearer" = ["client"])),
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorBody)))]
pub async fn remove_favourite(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<StatusCode> {
    favourites::remove(&s.db, &p.subject, &sku).await?;
    Ok(StatusCode::NO_CONTENT)
}
