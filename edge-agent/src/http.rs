//! The edge's local HTTP endpoint: health, sync status, Prometheus metrics,
//! and a small local API for in-store integrations.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | 200 while the agent runs |
//! | `GET /status` | JSON: connected, outbox depth and bytes, age of the oldest unsynced event, last ack, dropped telemetry |
//! | `GET /metrics` | Prometheus text |
//! | `POST /api/v1/events` | record an event (JSON `EventBody`); `Idempotency-Key` header honoured; 201 after the durable commit |
//! | `GET /api/v1/stock/{sku}` | the stock this store shows for a SKU |
//!
//! Listens on loopback by default. With `http.api_token` set, every route
//! but `/healthz` needs `Authorization: Bearer <token>` (compared in
//! constant time); off loopback the token is required (settings refuse to
//! start without one).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use storegate_protocol::event::EventBody;
use storegate_protocol::{Sku, StoreId};
use tokio_util::sync::CancellationToken;

use crate::journal::{Journal, JournalError, now_ms};
use crate::sync::LinkStatus;

pub use storegate_broker::process::{metrics_handle, use_metrics};

/// What the routes need.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// This store.
    pub store: StoreId,
    /// The journal.
    pub journal: Journal,
    /// Upstream connection state.
    pub link: Arc<LinkStatus>,
    /// Outbox budget, for the status page.
    pub budget_bytes: u64,
    /// Bearer token required on POST routes, if set.
    pub api_token: Option<String>,
    /// The device registry.
    pub devices: crate::devices::Devices,
}

/// The status page.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// This store.
    pub store: String,
    /// Connected to the upstream broker now.
    pub connected: bool,
    /// Successful connections since start.
    pub connects: u64,
    /// Events waiting for the hub's ack.
    pub outbox_depth: u64,
    /// Bytes of live outbox payloads.
    pub outbox_bytes: u64,
    /// The outbox budget.
    pub outbox_budget_bytes: u64,
    /// Over budget with only business events left.
    pub over_budget: bool,
    /// Age of the oldest unsynced event, ms.
    pub oldest_unsynced_age_ms: Option<i64>,
    /// Hub committed up to.
    pub acked_up_to: u64,
    /// Seq the next event gets.
    pub next_seq: u64,
    /// Wall clock of the last application ack.
    pub last_ack_ms: Option<i64>,
    /// Telemetry events dropped over budget, ever.
    pub dropped_telemetry: u64,
    /// Downlink applied up to.
    pub down_applied: u64,
    /// Messages from upstream rejected: malformed, unsigned, forged (bad
    /// or unknown signature), or unexpected.
    pub rejected_downlink: u64,
    /// Acks above anything this store published, ignored.
    pub acks_beyond: u64,
    /// Devices: last seen, errors, status.
    pub devices: std::collections::BTreeMap<String, crate::devices::DeviceState>,
}

/// Builds the router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/events", post(record_event))
        .route("/api/v1/stock/{sku}", get(stock))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState, shutdown: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "http server failed");
    }
}

/// Reads the status page's figures.
pub async fn status_view(s: &HttpState) -> Result<StatusView, JournalError> {
    let stats = s.journal.stats();
    let oldest = s.journal.oldest_unsynced_ms().await?;
    metrics::gauge!("edge_outbox_depth").set(stats.outbox_depth as f64);
    metrics::gauge!("edge_outbox_bytes").set(stats.outbox_bytes as f64);
    Ok(StatusView {
        store: s.store.to_string(),
        connected: s.link.connected.load(std::sync::atomic::Ordering::Acquire),
        connects: s.link.connects.load(std::sync::atomic::Ordering::Relaxed),
        outbox_depth: stats.outbox_depth,
        outbox_bytes: stats.outbox_bytes,
        outbox_budget_bytes: s.budget_bytes,
        over_budget: stats.over_budget,
        oldest_unsynced_age_ms: oldest.map(|t| (now_ms() - t).max(0)),
        acked_up_to: stats.acked_up_to,
        next_seq: stats.next_seq,
        last_ack_ms: stats.last_ack_ms,
        dropped_telemetry: stats.dropped_telemetry,
        down_applied: stats.down_applied,
        rejected_downlink: s.link.rejected.load(std::sync::atomic::Ordering::Relaxed),
        acks_beyond: s.link.acks_beyond.load(std::sync::atomic::Ordering::Relaxed),
        devices: s.devices.snapshot(),
    })
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

async fn status(State(s): State<HttpState>) -> Response {
    match status_view(&s).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "status query failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "journal unavailable",
            )
        }
    }
}

async fn metrics_text(State(s): State<HttpState>) -> Response {
    // Refresh the gauges that are only computed on demand.
    let _ = status_view(&s).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}

fn authorized(s: &HttpState, headers: &HeaderMap) -> bool {
    match s.api_token.as_deref().filter(|t| !t.is_empty()) {
        None => true,
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| storegate_protocol::secret::same(t.as_bytes(), token.as_bytes())),
    }
}

/// Refuses every route but `/healthz` without the token, when one is set.
async fn require_token(
    State(s): State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path() != "/healthz" && !authorized(&s, req.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
    }
    next.run(req).await
}

async fn record_event(State(s): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let event: EventBody = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("invalid event JSON: {e}"),
            );
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("client:{k}"));
    match s.journal.record(event, key).await {
        Ok(r) => {
            let code = if r.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (code, Json(r)).into_response()
        }
        Err(JournalError::Invalid(m)) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", m),
        Err(e) => {
            tracing::error!(error = %e, "recording failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the journal could not record the event; retry",
            )
        }
    }
}

async fn stock(State(s): State<HttpState>, Path(sku): Path<String>) -> Response {
    let sku = match Sku::parse(sku) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_sku", e.to_string()),
    };
    match s.journal.stock_view(sku.as_str()).await {
        Ok(level) => Json(json!({"sku": sku, "level": level})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "stock query failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "journal unavailable",
            )
        }
    }
}

/// Binds the HTTP listener, naming the setting to change if the port is taken.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::StartError::Bind {
            what: "local HTTP endpoint",
            setting: "http.listen (SG_EDGE_HTTP__LISTEN)",
            addr,
            source,
        })
}
