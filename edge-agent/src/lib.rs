//! storegate-edge: the agent that runs in each store or warehouse.
//!
//! It records every sale, payment, stock movement and device reading in a
//! local SQLite journal, and syncs with the hub over MQTT, losing nothing
//! and duplicating nothing across outages, crashes and restarts. A store
//! never stops selling because the WAN, the broker or the hub is down.
//!
//! # Modules
//!
//! - [`settings`]: TOML + `SG_EDGE_*` environment settings.
//! - [`journal`]: the durable journal and outbox (SQLite WAL, group commit,
//!   idempotency keys, disk budget) and the catalog/stock replicas.
//! - [`sync`]: the sync engine (sans-I/O core + rumqttc loop): uplink
//!   batches, application acks, resends, downlink, presence, RPC.
//! - [`http`]: local status, metrics and integration API.
//!
//! # Entry point
//!
//! [`start`] takes settings and a cancellation token, binds everything
//! (port 0 allowed) and returns an [`Edge`] handle; the `edge-agent`
//! binary is a thin wrapper around it.

pub mod http;
pub mod journal;
pub mod settings;
pub mod sync;

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use journal::{Journal, JournalError, Recorded};
pub use settings::Settings;
pub use sync::SyncHandle;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The journal could not be opened.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// A listener could not bind.
    #[error("{what}: cannot listen on {addr} ({source}); change `{setting}`")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The setting that holds the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running edge agent.
#[derive(Debug)]
pub struct Edge {
    /// The journal (record events, read counters).
    pub journal: Journal,
    /// The sync engine's handle (RPC to the hub, downlink notifications).
    pub sync: SyncHandle,
    /// Where the local HTTP endpoint listens.
    pub http_addr: SocketAddr,
    /// Cancelled to stop.
    shutdown: CancellationToken,
    /// The agent's tasks.
    tasks: TaskTracker,
    /// The journal writer (ends when every journal handle is dropped).
    writer: tokio::task::JoinHandle<()>,
}

/// Starts an edge agent. Everything it spawns stops when `shutdown` is
/// cancelled; [`Edge::stopped`] waits for that.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Edge, StartError> {
    let v = settings.validate()?;
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.clone(),
        source,
    })?;
    let _ = http::metrics_handle();
    let (journal, writer) = Journal::open(
        &settings.data_dir.join("journal.db"),
        &settings.journal,
        v.currency,
    )
    .await?;
    let listener = http::bind(v.http_listen).await?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "local HTTP endpoint",
        setting: "http.listen (SG_EDGE_HTTP__LISTEN)",
        addr: v.http_listen,
        source,
    })?;

    let tasks = TaskTracker::new();
    let (sync, sync_loop) = sync::spawn(
        sync::SyncConfig {
            store: v.store.clone(),
            host: v.upstream_host.clone(),
            port: v.upstream_port,
            client_id: v.client_id.clone(),
            credentials: settings
                .upstream
                .username
                .clone()
                .map(|u| (u, settings.upstream.password.clone().unwrap_or_default())),
            keep_alive: Duration::from_secs(settings.upstream.keep_alive_secs.max(1)),
            sync: settings.sync.clone(),
        },
        journal.clone(),
        shutdown.clone(),
    );
    tasks.spawn(sync_loop);
    tasks.spawn(http::serve(
        listener,
        http::HttpState {
            store: v.store.clone(),
            journal: journal.clone(),
            link: sync.status.clone(),
            budget_bytes: settings.journal.outbox_budget_bytes,
            api_token: settings.http.api_token.clone(),
        },
        shutdown.clone(),
    ));
    tasks.close();
    tracing::info!(store = %v.store, http = %http_addr, upstream = %settings.upstream.url, "edge agent started");
    Ok(Edge {
        journal,
        sync,
        http_addr,
        shutdown,
        tasks,
        writer,
    })
}

impl Edge {
    /// Cancels the agent and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }

    /// Waits until the agent has stopped (after its token is cancelled).
    pub async fn stopped(self) {
        self.tasks.wait().await;
        let Edge { journal, writer, .. } = self;
        drop(journal);
        let _ = writer.await;
    }
}
