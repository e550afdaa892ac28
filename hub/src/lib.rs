//! storegate-hub: the central service.
//!
//! It ingests every store's events from the MQTT broker (the hub half of
//! the sync contract), owns stores, devices, stock, users and keys, sends
//! downlink to stores, and serves the back-office REST API.
//!
//! # Modules
//!
//! Four rooms; imports run adapters -> services -> [`domain`]
//! (ARCHITECTURE.md's code map has each module).
//!
//! - The rules, pure: [`domain`] (typed statuses and their moves, orders
//!   and the saga, payments, allocation, prices, products, stock lines,
//!   the plan of an ingest batch).
//! - Services, each with its SQL and one transaction per change:
//!   [`ingest`], [`catalog`], [`stock`], [`orders`], [`payments`],
//!   [`shipping`], [`tasks`], [`stores`], [`downlink`], [`quarantine`],
//!   [`audit`], [`idempotency`], [`auth`], [`credentials`].
//! - Adapters: [`api`] (REST, OpenAPI) and [`mqtt`] (the broker link,
//!   WAN trust).
//! - Plumbing: [`settings`], [`db`], [`pki`] and
//!   [`sql`] (typed rows, `$N` text for both databases).
//!
//! # Entry point
//!
//! [`start`] takes settings and a cancellation token, binds everything
//! (port 0 allowed), and returns a [`Hub`]; the `hub` binary wraps it.

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod credentials;
pub mod db;
pub mod domain;
pub mod downlink;
pub mod idempotency;
pub mod ingest;
pub mod mqtt;
pub mod orders;
pub mod payments;
pub mod pki;
pub mod quarantine;
pub mod settings;
pub mod shipping;
pub mod sql;
pub mod stock;
pub mod stores;
pub mod tasks;

use std::net::SocketAddr;

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
    /// Keys or certificates are missing or unusable.
    #[error("WAN trust: {0}")]
    Pki(#[from] pki::PkiError),
    /// The store credentials could not be read.
    #[error("store credentials: {0}")]
    Credentials(#[from] credentials::CredentialError),
    /// A TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] storegate_broker::tls::TlsError),
    /// The TLS listener could not bind.
    #[error("embedded broker TLS listener cannot listen on {addr}: {source}; change `broker.tls_listen`")]
    TlsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
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
    /// Where the embedded broker's TLS listener (the gate) listens.
    pub tls_addr: Option<SocketAddr>,
    /// What that gate admitted and refused.
    pub gate: Option<std::sync::Arc<storegate_broker::gate::GateStats>>,
    /// Signs and checks WAN messages; the store credentials.
    pub trust: mqtt::trust::Trust,
    /// The PKI directory (chain CA, the hub's keys).
    pub pki_dir: std::path::PathBuf,
    /// The database.
    pub db: db::Db,
    /// The MQTT link.
    pub link: mqtt::Link,
    /// Cancelled to stop.
    shutdown: CancellationToken,
    /// The hub's tasks.
    tasks: TaskTracker,
}

pub use storegate_broker::process::{metrics_handle, use_metrics};

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
    let rehashed = payments::hash_stored_gift_card_tokens(&db).await?;
    if rehashed > 0 {
        tracing::info!(
            rehashed,
            "gift-card tokens stored in clear by an earlier version replaced by their hashes"
        );
    }
    let auth = auth::Auth::init(&db, &settings.auth).await?;
    if let (Some(email), Some(password)) = (
        settings.auth.bootstrap_admin_email.as_deref(),
        settings.auth.bootstrap_admin_password.as_deref(),
    ) && auth::bootstrap_admin(&db, email, password).await?
    {
        tracing::info!(email, "bootstrap admin created");
    }

    let identity = load_identity(&settings, &v)?;
    let registry = credentials::Registry::load(db.clone()).await?;
    let sealer = if settings.wan.insecure_unsigned {
        tracing::warn!(
            "wan.insecure_unsigned: WAN messages are sent and accepted UNSIGNED; anyone who reaches the broker can forge acks, batches and downlink"
        );
        storegate_protocol::seal::Sealer::unsigned()
    } else {
        storegate_protocol::seal::Sealer::signing(identity.signing.clone())
    };
    let trust = mqtt::trust::Trust::new(sealer, registry.clone(), settings.wan.insecure_unsigned);
    if v.plain_remote {
        tracing::warn!(
            "wan.allow_plain_remote: plain MQTT leaves this machine; anyone on the network can read every store's traffic (messages stay signed)"
        );
    }

    let tasks = TaskTracker::new();
    tasks.spawn(registry.clone().run_refresher(
        std::time::Duration::from_secs(settings.wan.refresh_secs),
        shutdown.clone(),
    ));
    let pki_dir = pki::PkiDir(v.pki_dir.clone());
    let path_or = |p: &Option<std::path::PathBuf>, d: std::path::PathBuf| p.clone().unwrap_or(d);
    let mut tls_addr = None;
    let mut gate = None;
    let (host, port, broker_addr, link_tls) = match &v.external_broker {
        Some(url) => {
            let tls = if url.tls {
                let ca = pki::read(&path_or(&settings.wan.broker_ca, pki_dir.ca_cert()))?;
                let cert = pki::read(&path_or(&settings.wan.client_cert, pki_dir.client_cert()))?;
                let key = pki::read(&path_or(&settings.wan.client_key, pki_dir.client_key()))?;
                Some(storegate_broker::tls::client_config(&ca, &cert, &key)?)
            } else {
                None
            };
            let addr = if url.host.contains(':') {
                format!("[{}]:{}", url.host, url.port)
            } else {
                format!("{}:{}", url.host, url.port)
            };
            (url.host.clone(), url.port, addr, tls)
        }
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
            if let Some(listen) = v.broker_tls_listen {
                let cert = pki::read(&path_or(&settings.wan.server_cert, pki_dir.server_cert()))?;
                let key = pki::read(&path_or(&settings.wan.server_key, pki_dir.server_key()))?;
                let server = storegate_broker::tls::server_config(&identity.ca_pem, &cert, &key)?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|source| StartError::TlsBind { addr: listen, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::TlsBind { addr: listen, source })?;
                gate = Some(storegate_broker::gate::spawn(
                    listener,
                    storegate_broker::gate::GateConfig {
                        name: "wan",
                        upstream: addr,
                        tls: Some(server),
                        handshake_timeout: std::time::Duration::from_secs(
                            settings.wan.handshake_timeout_secs,
                        ),
                        max_pending: settings.wan.max_pending_handshakes,
                        max_packet: settings.ingest.max_payload_bytes.saturating_add(64 * 1024),
                        // Below the broker's router.max_connections (20010).
                        max_clients: 20_000,
                    },
                    std::sync::Arc::new(mqtt::trust::StoreGate {
                        registry: registry.clone(),
                    }),
                    &tasks,
                    shutdown.clone(),
                ));
                tracing::info!(addr = %bound, "embedded broker TLS listener (client certificates required)");
                tls_addr = Some(bound);
            }
            (addr.ip().to_string(), addr.port(), addr.to_string(), None)
        }
    };

    let (rpc_tx, rpc_rx) = tokio::sync::mpsc::channel(mqtt::RPC_QUEUE);
    let (reply_tx, reply_rx) = tokio::sync::mpsc::channel(mqtt::RPC_QUEUE);
    let (kick, kicks) = downlink::Kick::channel();
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
            tls: link_tls,
            share_group: identity.share_group(),
            trust: trust.clone(),
            ingest: settings.ingest.clone(),
            clean_session: settings
                .broker
                .clean_session
                .unwrap_or(v.external_broker.is_none()),
            abort_after_commit: failpoint("abort_after_commit"),
            rpc: Some(rpc_tx),
            rpc_replies: Some(reply_rx),
            kicks: Some(kicks),
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
    let (groups, group_queue) = orders::queue();
    let grouped = settings.commerce.order_group_max > 1;
    let commerce = orders::Commerce {
        db: db.clone(),
        payments: payments.clone(),
        settings: settings.commerce.clone(),
        currency,
        kick: kick.clone(),
        abort_after_authorize: failpoint("abort_after_authorize"),
        groups: grouped.then_some(groups),
    };
    if grouped {
        tasks.spawn(orders::run_groups(
            commerce.clone(),
            group_queue,
            settings.commerce.order_group_workers,
            settings.commerce.order_group_max,
            shutdown.clone(),
        ));
    }
    tasks.spawn(payments::rpc_loop(
        payments.clone(),
        rpc_rx,
        reply_tx,
        shutdown.clone(),
    ));
    tasks.spawn(payments::worker(
        payments,
        kick.clone(),
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
        kick.clone(),
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
            catalog: catalog::Catalog {
                db: db.clone(),
                kick: kick.clone(),
            },
            commerce,
        },
        shutdown.clone(),
    ));
    tasks.close();
    tracing::info!(api = %api_addr, broker = %broker_addr, database = ?db.kind, "hub started");
    Ok(Hub {
        api_addr,
        broker_addr,
        tls_addr,
        gate,
        trust,
        pki_dir: v.pki_dir.clone(),
        db,
        link,
        shutdown,
        tasks,
    })
}

/// The hub's signing key and the chain CA, from the PKI directory; on a
/// single hub with its embedded broker, a PKI is created there first if
/// none exists (`wan.auto_init`).
fn load_identity(settings: &Settings, v: &settings::Validated) -> Result<pki::HubIdentity, StartError> {
    let dir = pki::PkiDir(v.pki_dir.clone());
    let explicit_key = settings.wan.signing_key.is_some() && settings.wan.ca.is_some();
    if !dir.exists() && !explicit_key {
        if settings.wan.auto_init && v.external_broker.is_none() {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            if let Some(a) = v.broker_tls_listen
                && !a.ip().is_unspecified()
                && !a.ip().is_loopback()
            {
                names.push(a.ip().to_string());
            }
            let report = pki::init(&dir, "storegate", &names, &settings.broker.client_id)?;
            tracing::info!(
                dir = %report.dir.display(),
                hub_key = %report.hub_key,
                "created a chain CA and the hub's keys (wan.auto_init); in production create them with `hub ca init` and keep ca.key offline"
            );
        } else {
            return Err(pki::PkiError::Missing(dir.0).into());
        }
    }
    let key_path = settings
        .wan
        .signing_key
        .clone()
        .unwrap_or_else(|| dir.hub_signing_key());
    let ca_path = settings.wan.ca.clone().unwrap_or_else(|| dir.ca_cert());
    let signing = pki::load_signing_key(&key_path)?;
    let ca_pem = pki::read(&ca_path)?;
    tracing::info!(
        hub_key = %signing.kid(),
        share_group = %pki::share_group(&signing),
        "hub signing key loaded"
    );
    let production =
        v.external_broker.is_some() || v.broker_tls_listen.is_some_and(|a| !a.ip().is_loopback());
    if production && dir.ca_key().exists() {
        tracing::warn!(
            ca_key = %dir.ca_key().display(),
            "the chain CA's private key is on this host: whoever reads it can issue any store's or hub's certificate; keep it on the provisioning machine only"
        );
    }
    Ok(pki::HubIdentity {
        signing: std::sync::Arc::new(signing),
        ca_pem,
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
