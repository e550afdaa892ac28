//! The REST API (axum), versioned under `/api/v1`.
//!
//! - One JSON error shape: `{"error": {"code", "message", "request_id"}}`
//!   ([`ApiError`]); internals are logged, never returned. The OAuth2
//!   endpoints (`/oauth/*`) answer errors in RFC 6749's shape instead,
//!   which OAuth client libraries expect.
//! - Every route needs a bearer JWT or an API key except `/healthz`,
//!   `/readyz`, `/oauth/token` and the API description (`/api/v1/openapi.json`,
//!   `/api/docs`), which hold no data. A handler states its minimum role in
//!   its signature (`Authed<Operator>`); the same role is its OpenAPI
//!   security scope, and a test checks every documented route against it.
//! - Lists are paginated with an opaque `cursor` and a `limit`
//!   ([`PageParams`], [`Page`]).
//! - Each request gets an `x-request-id` (kept if the client sent a sane
//!   one), logged with the request and returned with every error.

pub mod auth_routes;
pub mod catalog;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod stock;
pub mod stores;
pub mod users;

use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::{Auth, AuthError, Principal, Role};
use crate::db::Db;
use crate::mqtt::Link;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Tokens and keys.
    pub auth: Auth,
    /// The MQTT link (readiness, downlink kicks).
    pub link: Link,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// Orders, payments, stock.
    pub commerce: crate::orders::Commerce,
    /// Catalog changes.
    pub catalog: crate::catalog::Catalog,
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id, inside a request.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Text for humans.
    pub message: String,
    /// `Retry-After` seconds, for 429.
    pub retry_after: Option<i64>,
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code (`unauthorized`, `forbidden`, `not_found`, `invalid`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request's id, to find it in the logs.
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 422.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} not found", what.into()),
        )
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 500, after logging the cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, request_id = request_id().unwrap_or_default(), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the hub's logs",
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                request_id: request_id(),
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// A minimum role, as a type.
pub trait MinRole: Send + Sync + 'static {
    /// The role.
    const ROLE: Role;
}

/// Any signed-in principal (clients included).
#[derive(Debug)]
pub struct Client;
impl MinRole for Client {
    const ROLE: Role = Role::Client;
}
/// Back-office operators and admins.
#[derive(Debug)]
pub struct Operator;
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
/// Admins only.
#[derive(Debug)]
pub struct Admin;
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// An authenticated principal with at least role `R`: 401 without valid
/// credentials, 403 with too small a role.
#[derive(Debug)]
pub struct Authed<R: MinRole>(pub Principal, PhantomData<R>);

/// The credential on a request: `Authorization: Bearer ...` or `X-API-Key`.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = v.splitn(2, ' ');
        if parts.next().is_some_and(|s| s.eq_ignore_ascii_case("bearer")) {
            return parts.next().map(str::trim);
        }
        return None;
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl<R: MinRole> FromRequestParts<AppState> for Authed<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(cred) = credential(&parts.headers) else {
            return Err(ApiError::unauthorized(
                "this route needs a bearer token or an API key",
            ));
        };
        let principal = match state.auth.authenticate(&state.db, cred).await {
            Ok(p) => p,
            Err(AuthError::Db(e)) => return Err(ApiError::internal(e)),
            Err(e) => return Err(ApiError::unauthorized(e.to_string())),
        };
        if principal.role < R::ROLE {
            return Err(ApiError::forbidden(format!(
                "this route needs the {} role; you have {}",
                R::ROLE,
                principal.role
            )));
        }
        Ok(Authed(principal, PhantomData))
    }
}

/// A JSON request body whose errors (bad JSON, wrong content type,
/// missing fields) come back in the API's error shape.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // As a document first: every string in it is searched for card
        // data (one check for every free-text field of every route).
        let doc = match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(e) => return Err(ApiError::new(e.status(), "invalid_body", e.body_text())),
        };
        refuse_card_data(&doc)?;
        serde_json::from_value(doc).map(Body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
    }
}

/// A path parameter whose parse errors come back in the API's error shape
/// (400, `invalid_path`), not as axum's plain text.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                e.body_text(),
            )),
        }
    }
}

/// A query string whose parse errors come back in the API's error shape
/// (400, `invalid_query`).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                e.body_text(),
            )),
        }
    }
}

/// A request body read whole as bytes (routes that hash it, or parse it
/// themselves), with the limit's rejection in the error shape (413).
#[derive(Debug)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))
    }
}

/// A request body read whole as UTF-8 text (CSV), its rejections (too
/// large, not UTF-8) in the error shape.
#[derive(Debug)]
pub struct TextBody(pub String);

impl<S: Send + Sync> FromRequest<S> for TextBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        String::from_request(req, state)
            .await
            .map(TextBody)
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))
    }
}

/// Parses a JSON body already read as bytes (routes that also hash it).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let invalid = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("request body: {e}"),
        )
    };
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
    refuse_card_data(&doc)?;
    serde_json::from_value(doc).map_err(invalid)
}

/// Refuses a JSON document with card data in any string (barcodes and
/// SKUs excepted): 422 `card_data`, naming the field, never the digits.
fn refuse_card_data(doc: &serde_json::Value) -> ApiResult<()> {
    match storegate_protocol::pan::find_in_json(doc) {
        None => Ok(()),
        Some((path, found)) => {
            metrics::counter!("hub_card_data_refused_total", "entry" => "rest").increment(1);
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "card_data",
                format!("{path} holds {found}: card data may not be stored; write it another way"),
            ))
        }
    }
}

impl ApiError {
    /// The error's status and JSON body, for responses that are stored
    /// (idempotency) before they are sent.
    pub fn to_parts(&self) -> (u16, String) {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message.clone(),
                request_id: request_id(),
            },
        };
        (
            self.status.as_u16(),
            serde_json::to_string(&body).unwrap_or_default(),
        )
    }
}

/// A JSON response from a stored status and body.
pub fn json_response(status: u16, body: String, replayed: bool) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// `?limit=&cursor=` on list routes.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PageParams {
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The limit, clamped.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(50).clamp(1, 500)
    }

    /// The key to continue after.
    pub fn after(&self) -> ApiResult<Option<String>> {
        self.cursor.as_deref().map(decode_cursor).transpose()
    }
}

/// A page of items.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items.
    pub fn from(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
        let more = items.len() as i64 > limit;
        items.truncate(limit.max(0) as usize);
        let next_cursor = if more {
            items.last().map(|i| encode_cursor(&key(i)))
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// Opaque cursor: hex of the key.
pub fn encode_cursor(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a cursor from [`encode_cursor`]; anything else is a 400.
pub fn decode_cursor(c: &str) -> ApiResult<String> {
    let bad = || ApiError::bad_request("invalid cursor");
    if !c.len().is_multiple_of(2) || c.len() > 512 {
        return Err(bad());
    }
    // By bytes: slicing the text could split a multi-byte character.
    let digit = |b: u8| char::from(b).to_digit(16).ok_or_else(bad);
    let bytes = c
        .as_bytes()
        .chunks_exact(2)
        .map(|p| u8::try_from(digit(p[0])? * 16 + digit(p[1])?).map_err(|_| bad()))
        .collect::<ApiResult<Vec<u8>>>()?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// Assigns the request id, logs the request, and makes the id available to
/// errors.
async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(crate::auth::new_id);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("http", request_id = %id, %method, %path);
    let mut resp = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(req), span.clone()),
        )
        .await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::info!(status, ms = started.elapsed().as_millis() as u64, "request");
    });
    metrics::counter!("hub_http_requests_total", "status" => status.to_string()).increment(1);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "storegate hub API", version = "1", description = "Back office and integration API of the storegate hub."),
    paths(
        healthz, readyz, metrics_text,
        auth_routes::token, auth_routes::introspect, auth_routes::me, auth_routes::logout, auth_routes::change_password,
        users::create_user, users::list_users, users::get_user, users::update_user,
        users::create_key, users::list_keys, users::revoke_key,
        stores::list_stores, stores::get_store, stores::put_store, stores::list_devices, stores::list_events,
        ops::list_quarantine, ops::get_quarantine, ops::list_discrepancies, ops::resolve_discrepancy, ops::list_audit,
        catalog::list_products, catalog::get_product, catalog::put_product, catalog::delete_product,
        catalog::export_products, catalog::import_products, catalog::list_prices, catalog::add_price,
        catalog::export_prices, catalog::import_prices, catalog::list_suppliers, catalog::put_supplier,
        catalog::list_categories, catalog::put_category, catalog::list_promotions, catalog::put_promotion,
        catalog::delete_promotion,
        stock::list_levels, stock::list_movements, stock::verify, stock::adjust, stock::receive, stock::transfer,
        stock::count, stock::put_threshold, stock::availability, stock::regions,
        orders::create_order, orders::list_orders, orders::get_order, orders::cancel_order, orders::get_rules,
        orders::put_rules, orders::list_carriers, orders::put_carrier, orders::put_zone, orders::list_rates,
        orders::put_rate, orders::quote, orders::get_shipment, orders::shipment_event, orders::list_tasks,
        orders::get_task, orders::create_task, orders::list_favourites, orders::add_favourite, orders::remove_favourite,
        payments::list_payments, payments::get_payment, payments::capture, payments::void, payments::refund,
        payments::list_exceptions, payments::resolve_exception, payments::issue_gift_card, payments::gift_card_balance,
    ),
    components(schemas(ErrorBody, ErrorDetail, Role, Principal)),
    modifiers(&SecurityAddon, &ErrorResponses),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "auth", description = "Tokens, profile, logout"),
        (name = "admin", description = "Users and API keys"),
        (name = "stores", description = "Stores, devices, sync state, events"),
        (name = "ops", description = "Quarantine, discrepancies, audit log"),
        (name = "catalog", description = "Products, barcodes, prices, suppliers, categories, promotions, CSV"),
        (name = "stock", description = "Levels, ledger, adjustments, receipts, transfers, counts, thresholds"),
        (name = "orders", description = "Online and store orders, allocation rules, favourites"),
        (name = "payments", description = "Payments, refunds, exceptions, gift cards"),
        (name = "shipping", description = "Carriers, zones, rates, shipments"),
        (name = "tasks", description = "Tasks for stores' devices"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Access token from /oauth/token, or an API key. The scope names the minimum role.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// Documents, on every operation, the errors the API's own machinery can
/// answer with (beyond what each handler documents): 400 for a malformed
/// path, query or body, 413/415/422 for a request body that is too large,
/// not JSON or not the expected shape, 404 where a path names something,
/// 401/403 where credentials are needed, 429 where logins are throttled.
/// All in the one error shape.
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::Content, schema::Ref};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || path.contains('{');
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let mut add = |code: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description));
                };
                if has_body || has_params {
                    add("400", "Malformed request: path, query or body syntax");
                }
                if has_body {
                    add("413", "Request body too large");
                    add("415", "Request body is not of the expected content type");
                    add(
                        "422",
                        "Request body is not the expected shape, or a value is invalid",
                    );
                }
                if path.contains('{') {
                    add("404", "Not found");
                }
                if secured {
                    add("401", "No, expired or revoked credentials");
                    add("403", "Credentials without the role this needs");
                }
            }
        }
    }
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers and the hub is consuming from the broker.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    let db = s.db.ping().await;
    let broker = s.link.subscribed.load(std::sync::atomic::Ordering::Acquire);
    let status = if db && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"database": db, "broker": broker}))).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = ["operator"])),
    responses((status = 200, description = "Prometheus text"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics_text(_: Authed<Operator>, State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>storegate hub API</title></head>
<body>
<script id="api-reference" data-url="/api/v1/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
<noscript>The machine-readable description is at <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</noscript>
</body></html>"#,
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method (see /api/v1/openapi.json)",
    )
}

/// Largest request body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/docs", get(docs))
        .merge(auth_routes::routes())
        .merge(users::routes())
        .merge(stores::routes())
        .merge(ops::routes())
        .merge(catalog::routes())
        .merge(stock::routes())
        .merge(orders::routes())
        .merge(payments::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies over the limit are refused by the extractors, in the
        // error shape (413).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "api server failed");
    }
}

/// Writes an audit event (append-only). Failures are logged: the change
/// itself has already happened.
pub async fn audit(
    db: &Db,
    actor: &Principal,
    action: &str,
    entity: &str,
    entity_id: &str,
    detail: serde_json::Value,
) {
    let who = format!("{}:{}", actor.kind, actor.subject);
    crate::audit::record_alone(db, &who, action, entity, entity_id, detail).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor("store-0042");
        assert_eq!(decode_cursor(&c).unwrap(), "store-0042");
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor("abc").is_err());
        // Multi-byte characters are refused, not sliced through (a panic).
        assert!(decode_cursor("aéb").is_err());
        assert!(decode_cursor("éé").is_err());
        assert!(decode_cursor("+1").is_err());
    }

    #[test]
    fn pages_know_when_there_is_more() {
        let p = Page::from(vec![1, 2, 3], 2, |i| i.to_string());
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next_cursor.as_deref().map(decode_cursor).unwrap().unwrap(), "2");
        let p = Page::from(vec![1, 2], 2, |i| i.to_string());
        assert!(p.next_cursor.is_none());
    }

    #[test]
    fn credentials_come_from_bearer_or_api_key_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("sgk_a_b"));
        assert_eq!(credential(&h), Some("sgk_a_b"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(credential(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&h), None);
    }
}
