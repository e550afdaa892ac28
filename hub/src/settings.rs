//! Hub settings: defaults, then a TOML file, then `SG_HUB_*` environment
//! variables (`__` separates sections: `SG_HUB_DATABASE__URL=postgres://...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the hub can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded SQLite database lives (when no URL is given).
    pub data_dir: PathBuf,
    /// The database.
    pub database: DatabaseSettings,
    /// The MQTT broker.
    pub broker: BrokerSettings,
    /// Trust on the WAN: keys, certificates, TLS.
    pub wan: WanSettings,
    /// The REST API.
    pub api: ApiSettings,
    /// Tokens and passwords.
    pub auth: AuthSettings,
    /// Ingestion of store batches.
    pub ingest: IngestSettings,
    /// Orders, stock pushes and payments.
    pub commerce: CommerceSettings,
}

/// Which database, and how many connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path` or `postgres://user@host/db`. Empty: SQLite in
    /// `data_dir/hub.db`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

/// The MQTT broker the hub uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `mqtts://host:port` (or `mqtt://` on loopback) of an external broker
    /// (Mosquitto, EMQX). Empty: run rumqttd in-process.
    pub url: String,
    /// Where the embedded broker listens for plain MQTT. Port 0 picks a
    /// free port. Loopback only, unless `wan.allow_plain_remote`: the hub
    /// itself and local tools connect here; stores connect to `tls_listen`.
    pub listen: String,
    /// Where the embedded broker listens for stores over TLS with client
    /// certificates (e.g. `0.0.0.0:8883`). Empty: no TLS listener.
    pub tls_listen: Option<String>,
    /// A rumqttd TOML file for the embedded broker; empty: the built-in
    /// `broker-config/rumqttd.toml`.
    pub config_file: Option<PathBuf>,
    /// This replica's MQTT client id. Stable across restarts so the broker
    /// keeps its session; unique per replica.
    pub client_id: String,
    /// MQTT username, if the broker wants one.
    pub username: Option<String>,
    /// MQTT password.
    pub password: Option<String>,
    /// MQTT clean session. Default: true on the embedded broker (its
    /// sessions die with the hub process anyway, and rumqttd 0.20's router
    /// panics when the last member of a shared-subscription group leaves a
    /// persistent session with messages unacked), false on an external
    /// broker (so it keeps the hub's queue while the hub restarts).
    pub clean_session: Option<bool>,
}

/// Trust on the WAN (see ARCHITECTURE.md, threat model).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WanSettings {
    /// The PKI directory (`hub ca init`): chain CA, the hub's signing key
    /// and certificates. Empty: `{data_dir}/pki`.
    pub pki_dir: Option<PathBuf>,
    /// When the PKI directory has no CA and the broker is embedded, create
    /// one at start (a single-hub setup that just works). With an external
    /// broker the CA must exist (`hub ca init`), so replicas share it.
    pub auto_init: bool,
    /// The hub's message signing key. Empty: `{pki_dir}/hub-signing.key`.
    pub signing_key: Option<PathBuf>,
    /// The chain CA certificate. Empty: `{pki_dir}/ca.pem`.
    pub ca: Option<PathBuf>,
    /// The TLS listener's certificate. Empty: `{pki_dir}/hub-server.pem`.
    pub server_cert: Option<PathBuf>,
    /// Its key. Empty: `{pki_dir}/hub-server.key`.
    pub server_key: Option<PathBuf>,
    /// The hub's client certificate for an external `mqtts://` broker.
    /// Empty: `{pki_dir}/hub-client.pem`.
    pub client_cert: Option<PathBuf>,
    /// Its key. Empty: `{pki_dir}/hub-client.key`.
    pub client_key: Option<PathBuf>,
    /// The CA that issued the external broker's certificate. Empty: the
    /// chain CA.
    pub broker_ca: Option<PathBuf>,
    /// How often store credentials are re-read, seconds: a revocation takes
    /// effect on connected stores within this time.
    pub refresh_secs: u64,
    /// TLS handshake and MQTT CONNECT must complete within this, seconds.
    pub handshake_timeout_secs: u64,
    /// Connections allowed between accept and CONNECT at once.
    pub max_pending_handshakes: usize,
    /// Allow plain MQTT off loopback (`broker.listen` on another address,
    /// or an external `mqtt://` broker on another host). Anyone on that
    /// network then sees every store's traffic; messages stay signed.
    /// Logged as a warning at every start.
    pub allow_plain_remote: bool,
    /// Send and accept unsigned (version 1) messages: anyone who reaches
    /// the broker can then forge acks, batches and downlink. Only for
    /// measuring what signatures cost; logged as a warning at every start.
    pub insecure_unsigned: bool,
}

impl Default for WanSettings {
    fn default() -> Self {
        WanSettings {
            pki_dir: None,
            auto_init: true,
            signing_key: None,
            ca: None,
            server_cert: None,
            server_key: None,
            client_cert: None,
            client_key: None,
            broker_ca: None,
            refresh_secs: 5,
            handshake_timeout_secs: 10,
            max_pending_handshakes: 1024,
            allow_plain_remote: false,
            insecure_unsigned: false,
        }
    }
}

/// The REST API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Listen address. Port 0 picks a free port.
    pub listen: String,
}

/// Tokens, passwords and login throttling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HMAC secret for access tokens. Empty: one is generated at first
    /// start and kept in the database, so every replica shares it.
    pub jwt_secret: String,
    /// Access token lifetime in seconds.
    pub token_ttl_secs: u64,
    /// Failed logins allowed per account and client address per window.
    pub max_failed_logins: u32,
    /// The window, in seconds.
    pub failed_login_window_secs: u64,
    /// Creates this admin at start if no admin exists (with the password below).
    pub bootstrap_admin_email: Option<String>,
    /// Password for `bootstrap_admin_email`.
    pub bootstrap_admin_password: Option<String>,
}

/// Ingestion of store batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Parallel ingestion workers; each store always goes to the same one.
    pub workers: usize,
    /// Most queued batches a worker applies in one transaction.
    pub max_group: usize,
    /// Payloads larger than this are quarantined unread.
    pub max_payload_bytes: usize,
}

/// Orders, stock pushes and payments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommerceSettings {
    /// ISO currency of online orders.
    pub currency: String,
    /// Whether catalog prices include tax (EU style) or tax is added.
    pub tax_included: bool,
    /// How long a worker owns a saga step before another may resume it, ms.
    pub saga_lease_ms: u64,
    /// How often changed stock levels are pushed down to stores, ms.
    pub stock_push_interval_ms: u64,
    /// Longest wait for the payment provider, ms.
    pub provider_timeout_ms: u64,
    /// Simulated provider: added latency per call, ms.
    pub sim_latency_ms: u64,
    /// Simulated provider: amounts whose minor units end in these two
    /// digits are declined (100 or more: none; cards whose token starts
    /// with `decline` still are; tokens starting with `timeout` never get
    /// an answer).
    pub sim_decline_cents: u8,
    /// Weight of a product with no `weight_grams` attribute, for shipping.
    pub default_item_grams: i64,
    /// Most online orders taken in one group (one transaction for step 1,
    /// one for confirmation); 1 takes each order alone.
    pub order_group_max: usize,
    /// Groups in flight at once (one in step 1, the others waiting for the
    /// provider or confirming).
    pub order_group_workers: usize,
}

impl Default for CommerceSettings {
    fn default() -> Self {
        CommerceSettings {
            currency: "EUR".into(),
            tax_included: true,
            saga_lease_ms: 10_000,
            stock_push_interval_ms: 2_000,
            provider_timeout_ms: 5_000,
            sim_latency_ms: 0,
            sim_decline_cents: 13,
            default_item_grams: 500,
            order_group_max: 64,
            order_group_workers: 4,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("data/hub"),
            database: DatabaseSettings::default(),
            broker: BrokerSettings::default(),
            wan: WanSettings::default(),
            api: ApiSettings::default(),
            auth: AuthSettings::default(),
            ingest: IngestSettings::default(),
            commerce: CommerceSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: String::new(),
            max_connections: 16,
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            url: String::new(),
            listen: "127.0.0.1:1884".into(),
            tls_listen: None,
            config_file: None,
            client_id: "hub-1".into(),
            username: None,
            password: None,
            clean_session: None,
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: String::new(),
            token_ttl_secs: 3600,
            max_failed_logins: 5,
            failed_login_window_secs: 300,
            bootstrap_admin_email: None,
            bootstrap_admin_password: None,
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            workers: 4,
            max_group: 16,
            max_payload_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or environment could not be read or parsed.
    #[error("settings: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is invalid.
    #[error("setting `{key}`: {message}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Validated addresses.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Database URL (SQLite default filled in).
    pub database_url: String,
    /// External broker, or `None` for the embedded one.
    pub external_broker: Option<BrokerUrl>,
    /// Embedded broker listen address (plain).
    pub broker_listen: SocketAddr,
    /// Embedded broker TLS listen address.
    pub broker_tls_listen: Option<SocketAddr>,
    /// Plain MQTT leaves this machine (allowed by `wan.allow_plain_remote`).
    pub plain_remote: bool,
    /// The PKI directory.
    pub pki_dir: PathBuf,
    /// API listen address.
    pub api_listen: SocketAddr,
}

impl Settings {
    /// Defaults, overridden by `file` (if given) and then by `SG_HUB_*`.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        storegate_broker::process::load_settings(&Settings::default(), file, "SG_HUB_")
            .map_err(SettingsError::Load)
    }

    /// The defaults as TOML, for `--print-default-config`.
    pub fn default_toml() -> String {
        storegate_broker::process::settings_toml(&Settings::default())
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<Validated, SettingsError> {
        let invalid = |key, message: String| SettingsError::Invalid { key, message };
        let database_url = if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("hub.db").display())
        } else {
            self.database.url.clone()
        };
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres:")
            || database_url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database.url",
                format!("{database_url:?}: use sqlite://path or postgres://..."),
            ));
        }
        let external_broker = if self.broker.url.is_empty() {
            None
        } else {
            Some(BrokerUrl::parse(&self.broker.url).map_err(|m| invalid("broker.url", m))?)
        };
        let broker_listen: SocketAddr = self
            .broker
            .listen
            .parse()
            .map_err(|e| invalid("broker.listen", format!("{:?}: {e}", self.broker.listen)))?;
        let broker_tls_listen = match self.broker.tls_listen.as_deref() {
            None | Some("") => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|e| invalid("broker.tls_listen", format!("{a:?}: {e}")))?,
            ),
        };
        let plain_remote = match &external_broker {
            Some(b) => !b.tls && !b.is_loopback(),
            None => !broker_listen.ip().is_loopback(),
        };
        if plain_remote && !self.wan.allow_plain_remote {
            let key = if external_broker.is_some() {
                "broker.url"
            } else {
                "broker.listen"
            };
            return Err(invalid(
                key,
                "plain MQTT off this machine lets anyone on the network read every store's traffic; \
                 use mqtts:// (or broker.tls_listen for stores) and keep plain MQTT on loopback, \
                 or set wan.allow_plain_remote = true (warned at every start)"
                    .into(),
            ));
        }
        if self.wan.refresh_secs == 0 || self.wan.handshake_timeout_secs == 0 {
            return Err(invalid(
                "wan.refresh_secs / wan.handshake_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        let pki_dir = self
            .wan
            .pki_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"));
        let api_listen = self
            .api
            .listen
            .parse()
            .map_err(|e| invalid("api.listen", format!("{:?}: {e}", self.api.listen)))?;
        if self.ingest.workers == 0 || self.ingest.max_group == 0 {
            return Err(invalid(
                "ingest.workers / ingest.max_group",
                "must be at least 1".into(),
            ));
        }
        if self.auth.token_ttl_secs == 0 {
            return Err(invalid("auth.token_ttl_secs", "must be at least 1".into()));
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return Err(invalid("auth.jwt_secret", "must be at least 32 bytes".into()));
        }
        if storegate_protocol::Currency::parse(&self.commerce.currency).is_err() {
            return Err(invalid(
                "commerce.currency",
                format!("{:?} is not a three-letter ISO code", self.commerce.currency),
            ));
        }
        if !(1..=500).contains(&self.commerce.order_group_max)
            || !(1..=64).contains(&self.commerce.order_group_workers)
        {
            return Err(invalid(
                "commerce.order_group_max / commerce.order_group_workers",
                "out of range (1 to 500 orders; 1 to 64 groups in flight)".into(),
            ));
        }
        if self.commerce.saga_lease_ms < 100 || self.commerce.stock_push_interval_ms < 10 {
            return Err(invalid(
                "commerce.saga_lease_ms / commerce.stock_push_interval_ms",
                "too small (at least 100 and 10 ms)".into(),
            ));
        }
        if self.broker.client_id.is_empty() {
            return Err(invalid("broker.client_id", "must not be empty".into()));
        }
        Ok(Validated {
            database_url,
            external_broker,
            broker_listen,
            broker_tls_listen,
            plain_remote,
            pki_dir,
            api_listen,
        })
    }
}

pub use storegate_protocol::endpoint::BrokerUrl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_print_as_toml_that_loads_back() {
        let v = Settings::default().validate().unwrap();
        assert!(v.database_url.starts_with("sqlite://"));
        assert!(v.external_broker.is_none());
        let back: Settings = toml::from_str(&Settings::default_toml()).unwrap();
        assert_eq!(back.api.listen, "127.0.0.1:8080");
    }

    #[test]
    fn plain_mqtt_off_loopback_needs_an_explicit_setting() {
        let mut s = Settings::default();
        s.broker.listen = "0.0.0.0:1884".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("allow_plain_remote")
        );
        s.wan.allow_plain_remote = true;
        assert!(s.validate().unwrap().plain_remote);
        let mut s = Settings::default();
        s.broker.url = "mqtt://10.1.2.3:1883".into();
        assert!(s.validate().unwrap_err().to_string().contains("broker.url"));
        s.broker.url = "mqtt://127.0.0.1:1883".into();
        assert!(!s.validate().unwrap().plain_remote);
        s.broker.url = "mqtts://10.1.2.3:8883".into();
        assert!(!s.validate().unwrap().plain_remote);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut s = Settings::default();
        s.database.url = "mysql://x".into();
        assert!(s.validate().unwrap_err().to_string().contains("database.url"));
        s.database.url = String::new();
        s.broker.url = "http://x".into();
        assert!(s.validate().unwrap_err().to_string().contains("broker.url"));
        s.broker.url = "mqtts://broker:8883".into();
        assert_eq!(
            s.validate().unwrap().external_broker,
            Some(BrokerUrl::parse("mqtts://broker:8883").unwrap())
        );
        s.auth.jwt_secret = "short".into();
        assert!(s.validate().unwrap_err().to_string().contains("jwt_secret"));
    }
}
