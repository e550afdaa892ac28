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
//! - [`trust`]: the store bundle: TLS to the hub's broker, the key every
//!   message is signed with, the hub keys every message is checked against.
//! - [`http`]: local status, metrics and integration API.
//! - [`lan`]: the store LAN device bus (embedded broker, JSON devices).
//! - [`pos`]: POS lanes: baskets, tenders, sales, voids, returns.
//! - [`pricing`]: line amounts, promotions, tax (pure; in the protocol crate so
//!   the hub prices online orders the same way).
//! - [`catalog`]: reads the catalog replica.
//! - [`barcode`]: GTIN and GS1 variable-measure decoding (pure).
//! - [`framing`] / [`scanner`]: serial scanner framing (pure) and driver.
//! - [`mtsics`] / [`scale`]: MT-SICS scale protocol (pure) and driver.
//! - [`devices`]: device registry and health, serial port plumbing.
//! - [`credential`]: a store device's role and password hash.
//!
//! # Entry point
//!
//! [`start`] takes settings and a cancellation token, binds everything
//! (port 0 allowed) and returns an [`Edge`] handle; the `edge-agent`
//! binary is a thin wrapper around it.

pub mod barcode;
pub mod catalog;
pub mod credential;
pub mod devices;
pub mod framing;
pub mod http;
pub mod journal;
pub mod lan;
pub mod mtsics;
pub mod pos;
pub use storegate_protocol::pricing;
pub mod scale;
pub mod scanner;
pub mod settings;
pub mod sync;
pub mod trust;

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
    /// The LAN device bus could not start.
    #[error("LAN device bus: {0}")]
    Lan(#[from] storegate_broker::BrokerError),
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
    /// Where devices connect (the LAN bus), if it runs.
    pub lan_addr: Option<SocketAddr>,
    /// What the device bus's gate admitted, refused and throttled.
    pub lan_gate: Option<std::sync::Arc<storegate_broker::gate::GateStats>>,
    /// The device registry.
    pub devices: devices::Devices,
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
            upstream: v.upstream.clone(),
            trust: v.trust.clone(),
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

    // Devices: serial scales and scanners, the LAN bus, the lanes.
    let devs = devices::Devices::default();
    let mut scale_handles = std::collections::HashMap::new();
    for sc in &settings.scales {
        let id =
            storegate_protocol::DeviceId::parse(&sc.id).map_err(|e| settings::SettingsError::Invalid {
                key: "scales.id",
                message: e.to_string(),
            })?;
        let (handle, driver) = scale::spawn(
            id,
            devices::serial_opener(sc.path.clone(), sc.baud),
            devs.clone(),
            journal.clone(),
            shutdown.clone(),
        );
        tasks.spawn(driver);
        scale_handles.insert(sc.id.clone(), handle);
    }
    let mut lan_addr = None;
    let mut lan_gate = None;
    if settings.lan.enabled {
        let mut lane_scales = std::collections::HashMap::new();
        let mut scanner_lanes = std::collections::HashMap::new();
        let mut lanes = std::collections::HashSet::new();
        for lane in &settings.lanes {
            let Ok(lane_id) = storegate_protocol::LaneId::parse(&lane.id) else {
                continue;
            };
            lanes.insert(lane_id.clone());
            if let Some(h) = lane.scale.as_ref().and_then(|s| scale_handles.get(s)) {
                lane_scales.insert(lane_id.clone(), h.clone());
            }
            if let Some(dev) = lane
                .scanner
                .as_ref()
                .and_then(|d| storegate_protocol::DeviceId::parse(d).ok())
            {
                scanner_lanes.insert(dev, lane_id);
            }
        }
        let ctx = pos::PosCtx {
            journal: journal.clone(),
            catalog: catalog::Catalog::new(journal.reader().clone()),
            sync: sync.clone(),
            cfg: std::sync::Arc::new(pos::PosConfig {
                store: v.store.clone(),
                currency: v.currency,
                tax_included: settings.pos.tax_included,
                card_timeout: Duration::from_millis(settings.pos.card_timeout_ms),
                weigh_timeout: Duration::from_millis(settings.pos.weigh_timeout_ms),
                offline: pos::OfflineCaps {
                    enabled: settings.pos.offline_enabled,
                    per_txn_minor: settings.pos.offline_per_txn_limit_minor,
                    total_minor: settings.pos.offline_total_limit_minor,
                    window_secs: settings.pos.offline_window_secs,
                },
                layouts: settings.pos.variable_layouts.clone(),
                approvals: (&settings.pos.approvals).into(),
            }),
            approvals: std::sync::Arc::default(),
        };
        for d in &v.devices {
            lanes.extend(d.lanes.iter().cloned());
        }
        let serial = settings
            .scales
            .iter()
            .map(|s| &s.id)
            .chain(settings.scanners.iter().map(|s| &s.id))
            .filter_map(|id| storegate_protocol::DeviceId::parse(id).ok())
            .collect();
        let lan = lan::start(
            lan::LanConfig {
                store: v.store.clone(),
                listen: v.lan_listen,
                scanner_lanes,
                lane_scales,
                lanes,
                devices: v.devices.clone(),
                device_rate: storegate_broker::gate::Rate {
                    per_sec: settings.lan.device_rate_per_sec,
                    burst: settings.lan.device_burst,
                },
                serial,
            },
            ctx,
            devs.clone(),
            &tasks,
            shutdown.clone(),
        )?;
        for sc in &settings.scanners {
            let Ok(id) = storegate_protocol::DeviceId::parse(&sc.id) else {
                continue;
            };
            tasks.spawn(scanner::run(
                id,
                devices::serial_opener(sc.path.clone(), sc.baud),
                scanner::ScannerConfig {
                    terminator: sc.terminator,
                    idle: Duration::from_millis(sc.idle_ms.max(1)),
                },
                lan.scans.clone(),
                devs.clone(),
                journal.clone(),
                shutdown.clone(),
            ));
        }
        lan_addr = Some(lan.addr);
        lan_gate = Some(lan.gate.clone());
    }

    tasks.spawn(http::serve(
        listener,
        http::HttpState {
            store: v.store.clone(),
            journal: journal.clone(),
            link: sync.status.clone(),
            budget_bytes: settings.journal.outbox_budget_bytes,
            api_token: settings.http.api_token.clone(),
            devices: devs.clone(),
        },
        shutdown.clone(),
    ));
    tasks.close();
    if v.trust.accept_unsigned {
        tracing::warn!(
            "upstream.insecure_unsigned: WAN messages are sent and accepted UNSIGNED; anyone who reaches the broker can forge acks and downlink"
        );
    }
    if !v.upstream.tls && !v.upstream.is_loopback() {
        tracing::warn!(upstream = %v.upstream, "upstream.allow_plain_remote: plain MQTT to another machine; anyone on the network can read this store's traffic (messages stay signed)");
    }
    tracing::info!(
        store = %v.store,
        http = %http_addr,
        lan = ?lan_addr,
        upstream = %v.upstream,
        credential = ?v.trust.credential.map(|k| k.to_string()),
        "edge agent started"
    );
    Ok(Edge {
        journal,
        sync,
        http_addr,
        lan_addr,
        lan_gate,
        devices: devs,
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
