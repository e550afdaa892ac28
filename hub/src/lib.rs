//! storegate-hub: the central service.
//!
//! It ingests every store's events from the MQTT broker (the hub half of
//! the sync contract), owns stores, devices, stock, users and keys, sends
//! downlink to stores, and serves the back-office REST API.
//!
//! # Modules
//!
//! - [`settings`]: TOML + `SG_HUB_*` environment settings.
//! - [`db`]: SQLite (default) or PostgreSQL through sqlx `Any`; migrations.
//! - [`mqtt`]: the hub's MQTT link: shared-subscription uplink, ordered
//!   manual acks after commit, presence, downlink sending.
//! - [`ingest`]: applies batches idempotently in one transaction each
//!   group; high-water marks, gaps, discrepancies, stock, order, payment
//!   and task effects.
//! - [`catalog`]: products, barcodes, suppliers, categories, prices,
//!   promotions, CSV; replication to edges (snapshot, then deltas).
//! - [`stock`]: levels and the movement ledger, reservations, pushes of
//!   levels to edges.
//! - [`orders`]: store sales and online orders; the durable order saga.
//! - [`allocation`]: rules that pick the fulfilling location.
//! - [`payments`]: provider interface and simulated provider, gift cards,
//!   lane RPC authorisations, capture/void/refund worker, exceptions.
//! - [`shipping`]: carriers, zones, rates, shipments, tracking.
//! - [`tasks`]: tasks for stores' devices.
//! - [`idempotency`]: `Idempotency-Key` handling.
//! - [`audit`]: the append-only audit log.
//! - [`downlink`]: the per-store downlink outbox.
//! - [`quarantine`]: messages that could not be used, with raw bytes.
//! - [`stores`]: store registry, presence, sync state, devices.
//! - [`auth`]: users, argon2 passwords, JWTs, API keys, login throttle.
//! - [`api`]: the REST API (axum, OpenAPI via utoipa).
//! - [`sql`]: `$N` SQL text helpers for both databases.
//!
//! # Entry point
//!
//! [`start`] takes settings and a cancellation token, binds everything
//! (port 0 allowed), and returns a [`Hub`]; the `hub` binary wraps it.

pub mod allocation;
pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod db;
pub mod downlink;
pub mod idempotency;
pub mod ingest;
pub mod mqtt;
pub mod orders;
pub mod payments;
pub mod quarantine;
pub mod settings;
pub mod shipping;
pub mod sql;
pub mod stock;
pub mod stores;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use settings::Settings;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The database is unusable.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A database query at start failed.
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] storegate_broker::BrokerError),
    /// The bootstrap admin could not be created.
    #[error("bootstrap admin: {0}")]
    Bootstrap(#[from] auth::CreateUserError),
    /// The API could not listen.
    #[error("REST API cannot listen on {addr}: {source}; change `api.listen` (SG_HUB_API__LISTEN)")]
    ApiBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    /// Where the REST API listens.
    pub api_addr: SocketAddr,
    /// The broker the hub uses (the embedded one's address, or the external one's).
    pub broker_addr: String,
    /// The database.
    pub db: db::Db,
    /// The MQTT link.
    pub link: mqtt::Link,
    /// Cancelled to stop.
    shutdown: CancellationToken,
    /// The hub's tasks.
    tasks: TaskTracker,
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Renders metrics from `handle`, a recorder the host process installed,
/// instead of installing one (a process running a hub and edge agents
/// together installs one recorder and gives it to both). Call before
/// [`start`]; returns false if a handle was already chosen.
pub fn use_metrics(handle: PrometheusHandle) -> bool {
    METRICS.set(handle).is_ok()
}

/// The process-wide Prometheus recorder (installed on first use unless the
/// host gave one with [`use_metrics`]).
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if the host installed a recorder; then ours renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Test hook: `STOREGATE_FAILPOINT=name` makes the hub abort at that point
/// so crash tests can prove recovery (`abort_after_commit`,
/// `abort_after_authorize`).
fn failpoint(name: &str) -> bool {
    std::env::var("STOREGATE_FAILPOINT").is_ok_and(|v| v == name)
}

/// Starts a hub. Everything it spawns stops when `shutdown` is cancelled.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Hub, StartError> {
    let v = settings.validate()?;
    let metrics = metrics_handle();
    let db = db::Db::connect(&v.database_url, settings.database.max_connections).await?;
    db.migrate().await?;
    let auth = auth::Auth::init(&db, &settings.auth).await?;
    if let (Some(email), Some(password)) = (
        settings.auth.bootstrap_admin_email.as_deref(),
        settings.auth.bootstrap_admin_password.as_deref(),
    ) && auth::bootstrap_admin(&db, email, password).await?
    {
        tracing::info!(email, "bootstrap admin created");
    }

    let (host, port, broker_addr) = match &v.external_broker {
        Some((h, p)) => (h.clone(), *p, format!("{h}:{p}")),
        None => {
            let config = storegate_broker::load_config(
                settings.broker.config_file.as_deref(),
                storegate_broker::HUB_CONFIG,
            )?;
            let addr = storegate_broker::start_embedded(
                config,
                v.broker_listen,
                "broker.listen (SG_HUB_BROKER__LISTEN)",
            )?;
            (addr.ip().to_string(), addr.port(), addr.to_string())
        }
    };

    let tasks = TaskTracker::new();
    let (rpc_tx, rpc_rx) = tokio::sync::mpsc::unbounded_channel();
    let link = mqtt::spawn(
        mqtt::LinkConfig {
            host,
            port,
            client_id: settings.broker.client_id.clone(),
            credentials: settings
                .broker
                .username
                .clone()
                .map(|u| (u, settings.broker.password.clone().unwrap_or_default())),
            ingest: settings.ingest.clone(),
            clean_session: settings
                .broker
                .clean_session
                .unwrap_or(v.external_broker.is_none()),
            abort_after_commit: failpoint("abort_after_commit"),
            rpc: Some(rpc_tx),
        },
        db.clone(),
        &tasks,
        shutdown.clone(),
    );

    let currency = storegate_protocol::Currency::parse(&settings.commerce.currency).map_err(|e| {
        settings::SettingsError::Invalid {
            key: "commerce.currency",
            message: e.to_string(),
        }
    })?;
    let payments = payments::Payments {
        db: db.clone(),
        provider: std::sync::Arc::new(payments::SimProvider::new(
            db.clone(),
            std::time::Duration::from_millis(settings.commerce.sim_latency_ms),
            settings.commerce.sim_decline_cents,
        )),
        timeout: std::time::Duration::from_millis(settings.commerce.provider_timeout_ms),
    };
    let commerce = orders::Commerce {
        db: db.clone(),
        payments: payments.clone(),
        settings: settings.commerce.clone(),
        currency,
        link: link.clone(),
        abort_after_authorize: failpoint("abort_after_authorize"),
    };
    tasks.spawn(payments::rpc_loop(
        payments.clone(),
        link.clone(),
        rpc_rx,
        shutdown.clone(),
    ));
    tasks.spawn(payments::worker(
        payments,
        link.clone(),
        std::time::Duration::from_millis(250),
        shutdown.clone(),
    ));
    tasks.spawn(orders::worker(
        commerce.clone(),
        std::time::Duration::from_millis(500),
        shutdown.clone(),
    ));
    tasks.spawn(stock::pusher(
        db.clone(),
        link.clone(),
        std::time::Duration::from_millis(settings.commerce.stock_push_interval_ms),
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(v.api_listen)
        .await
        .map_err(|source| StartError::ApiBind {
            addr: v.api_listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| StartError::ApiBind {
        addr: v.api_listen,
        source,
    })?;
    tasks.spawn(api::serve(
        listener,
        api::AppState {
            db: db.clone(),
            auth,
            link: link.clone(),
            metrics,
            commerce,
        },
        shutdown.clone(),
    ));
    tasks.close();
    tracing::info!(api = %api_addr, broker = %broker_addr, database = ?db.kind, "hub started");
    Ok(Hub {
        api_addr,
        broker_addr,
        db,
        link,
        shutdown,
        tasks,
    })
}

impl Hub {
    /// Cancels the hub and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
        self.db.pool.close().await;
    }

    /// Waits until the hub has stopped (after its token is cancelled).
    pub async fn stopped(self) {
        self.tasks.wait().await;
        self.db.pool.close().await;
    }
}
