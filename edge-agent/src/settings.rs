//! Edge agent settings: defaults, then a TOML file, then `SG_EDGE_*`
//! environment variables (`__` separates sections:
//! `SG_EDGE_UPSTREAM__URL=mqtt://hub.example:1883`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storegate_protocol::{Currency, StoreId};

use crate::trust::EdgeTrust;

/// Everything the edge agent can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This store's id: names its topics and its data.
    pub store_id: String,
    /// Where the SQLite journal lives.
    pub data_dir: PathBuf,
    /// ISO 4217 currency of every amount at this store.
    pub currency: String,
    /// The broker the hub listens on.
    pub upstream: UpstreamSettings,
    /// How the outbox is drained.
    pub sync: SyncSettings,
    /// Journal and outbox limits.
    pub journal: JournalSettings,
    /// The local HTTP endpoint (status, metrics, local API).
    pub http: HttpSettings,
    /// The store LAN device bus.
    pub lan: LanSettings,
    /// POS lanes: tax, card and scale timeouts, offline caps, barcodes.
    pub pos: PosSettings,
    /// Lanes and the devices bound to them.
    pub lanes: Vec<LaneSettings>,
    /// Serial scales (MT-SICS).
    pub scales: Vec<SerialScaleSettings>,
    /// Serial barcode scanners.
    pub scanners: Vec<SerialScannerSettings>,
    /// Devices allowed on the LAN bus, each with its credentials
    /// (`edge-agent device new ID --role till --lane 7` prints one; not in
    /// the printed defaults, so that those entries can be appended).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSettings>,
}

/// A device allowed on the store LAN bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// Its id: its MQTT username and the start of its client id, and its
    /// topics (`store/{store}/device/{id}/...`).
    pub id: String,
    /// What it is: till, scanner, scale, handheld, supervisor or other (decides its topics).
    pub role: crate::credential::DeviceRole,
    /// SHA-256 of its password, 64 hex digits (the password itself is kept
    /// on the device only).
    pub password_sha256: String,
    /// The lanes it acts on (tills, scanners, handhelds).
    #[serde(default)]
    pub lanes: Vec<String>,
}

impl DeviceSettings {
    /// A device entry for `password`.
    pub fn new(
        id: &str,
        role: crate::credential::DeviceRole,
        lanes: &[&str],
        password: &str,
    ) -> DeviceSettings {
        DeviceSettings {
            id: id.to_owned(),
            role,
            password_sha256: crate::credential::hex(&crate::credential::password_hash(password.as_bytes())),
            lanes: lanes.iter().map(|l| (*l).to_owned()).collect(),
        }
    }
}

/// The embedded device bus broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanSettings {
    /// Run it.
    pub enabled: bool,
    /// Where devices connect: the store LAN address in production
    /// (`0.0.0.0:1883`), loopback by default. Port 0 picks a free port.
    pub listen: String,
    /// Most packets a second one device sends over all its connections,
    /// sustained; past it the bus reads that device more slowly (counted as
    /// throttled).
    pub device_rate_per_sec: u32,
    /// Packets one device may send back to back.
    pub device_burst: u32,
}

/// POS lane behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PosSettings {
    /// Shelf prices include tax (EU) or not (US).
    pub tax_included: bool,
    /// How long a card authorisation through the hub may take.
    pub card_timeout_ms: u64,
    /// How long the scale may take to settle.
    pub weigh_timeout_ms: u64,
    /// Offline (store-and-forward) card payments allowed. The hub's config
    /// `payments.offline.*` overrides these four.
    pub offline_enabled: bool,
    /// Most per offline card payment, minor units.
    pub offline_per_txn_limit_minor: i64,
    /// Most unsettled offline card payments in all, minor units.
    pub offline_total_limit_minor: i64,
    /// Oldest unsettled offline payment allowed, seconds.
    pub offline_window_secs: i64,
    /// GS1 variable-measure barcode layouts (prefixes 20-29).
    pub variable_layouts: Vec<crate::barcode::VariableLayout>,
    /// Which lane operations need a supervisor's approval.
    pub approvals: ApprovalSettings,
}

/// Which lane operations need a supervisor's approval (given from a
/// device with the `supervisor` role).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalSettings {
    /// Voiding a completed sale (a post-void).
    pub void_sale: bool,
    /// A return without the receipt.
    pub return_without_receipt: bool,
    /// Any refund above this, minor units.
    pub refund_limit_minor: i64,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            void_sale: true,
            return_without_receipt: true,
            refund_limit_minor: 10_000,
        }
    }
}

impl ApprovalSettings {
    /// No approvals at all (tests of other things).
    pub fn none() -> Self {
        ApprovalSettings {
            void_sale: false,
            return_without_receipt: false,
            refund_limit_minor: i64::MAX,
        }
    }
}

/// A POS lane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSettings {
    /// Lane id (its topics: `store/{store}/pos/{id}/...`).
    pub id: String,
    /// The serial scale weighed items go on.
    #[serde(default)]
    pub scale: Option<String>,
    /// A scanner whose scans go into this lane's basket.
    #[serde(default)]
    pub scanner: Option<String>,
}

/// A serial MT-SICS scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialScaleSettings {
    /// Device id.
    pub id: String,
    /// Port, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// Baud rate (MT-SICS default 9600, 8N1).
    #[serde(default = "default_baud")]
    pub baud: u32,
}

/// A serial barcode scanner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialScannerSettings {
    /// Device id.
    pub id: String,
    /// Port, e.g. `/dev/ttyACM0`.
    pub path: String,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// How codes end: cr, lf, cr_lf, stx_etx, none.
    #[serde(default = "default_terminator")]
    pub terminator: crate::framing::Terminator,
    /// A quiet line this long ends a code, ms.
    #[serde(default = "default_idle")]
    pub idle_ms: u64,
}

fn default_baud() -> u32 {
    9600
}
fn default_terminator() -> crate::framing::Terminator {
    crate::framing::Terminator::CrLf
}
fn default_idle() -> u64 {
    60
}

impl Default for LanSettings {
    fn default() -> Self {
        LanSettings {
            enabled: true,
            listen: "127.0.0.1:1885".into(),
            device_rate_per_sec: 50,
            device_burst: 100,
        }
    }
}

impl Default for PosSettings {
    fn default() -> Self {
        PosSettings {
            tax_included: true,
            card_timeout_ms: 3000,
            weigh_timeout_ms: 3000,
            offline_enabled: true,
            offline_per_txn_limit_minor: 10_000,
            offline_total_limit_minor: 100_000,
            offline_window_secs: 86_400,
            variable_layouts: crate::barcode::default_layouts(),
            approvals: ApprovalSettings::default(),
        }
    }
}

/// Connection to the upstream (WAN) MQTT broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// The store bundle from `hub store provision`: this store's TLS
    /// certificate and signing key, the chain CA, the hub's keys and the
    /// broker address. Required unless `insecure_unsigned`.
    pub bundle: Option<PathBuf>,
    /// `mqtts://host:port` (or `mqtt://` on loopback). Empty: the broker
    /// the bundle names.
    pub url: String,
    /// Allow plain `mqtt://` to a broker that is not on this machine:
    /// anyone on the network then sees this store's traffic (messages stay
    /// signed). Logged as a warning at every start.
    pub allow_plain_remote: bool,
    /// Run without a bundle: send and accept unsigned messages, so anyone
    /// who reaches the broker can forge acks and downlink. Only for
    /// measuring what signatures cost; logged as a warning at every start.
    pub insecure_unsigned: bool,
    /// MQTT client id; stable across restarts so the broker keeps the
    /// session. Default: `edge-{store_id}`.
    pub client_id: Option<String>,
    /// MQTT username, if the broker wants one.
    pub username: Option<String>,
    /// MQTT password, if the broker wants one.
    pub password: Option<String>,
    /// MQTT keep-alive in seconds.
    pub keep_alive_secs: u64,
}

/// Outbox draining and reconnecting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Most events in one uplink batch.
    pub batch_max_events: usize,
    /// Most bytes of events in one uplink batch (one larger event still goes alone).
    pub batch_max_bytes: usize,
    /// Batches published and not yet acked by the hub.
    pub window: usize,
    /// Resend everything unacked if the hub has not acked for this long.
    pub ack_timeout_ms: u64,
    /// First reconnect delay.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// Largest MQTT packet sent or accepted.
    pub max_packet_bytes: usize,
}

/// Journal limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalSettings {
    /// Outbox disk budget in bytes. Over it, telemetry is dropped oldest
    /// first; sales, payments and stock are never dropped.
    pub outbox_budget_bytes: u64,
    /// Most writes grouped into one durable commit.
    pub max_group: usize,
}

/// The local HTTP endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address; loopback by default. Port 0 picks a free port.
    pub listen: String,
    /// If set (16 characters or more), every route but `/healthz` needs
    /// `Authorization: Bearer <token>`. Required when `listen` is off
    /// loopback: the agent refuses to start without it.
    pub api_token: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store_id: "store-0001".into(),
            data_dir: PathBuf::from("data/edge"),
            currency: "EUR".into(),
            upstream: UpstreamSettings::default(),
            sync: SyncSettings::default(),
            journal: JournalSettings::default(),
            http: HttpSettings::default(),
            lan: LanSettings::default(),
            devices: Vec::new(),
            pos: PosSettings::default(),
            lanes: Vec::new(),
            scales: Vec::new(),
            scanners: Vec::new(),
        }
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            bundle: None,
            url: String::new(),
            allow_plain_remote: false,
            insecure_unsigned: false,
            client_id: None,
            username: None,
            password: None,
            keep_alive_secs: 15,
        }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            batch_max_events: 500,
            batch_max_bytes: 256 * 1024,
            window: 16,
            ack_timeout_ms: 30_000,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            max_packet_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            outbox_budget_bytes: 256 * 1024 * 1024,
            max_group: 256,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "127.0.0.1:8081".into(),
            api_token: None,
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
        /// Dotted key of the setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Settings after validation, in the types the agent uses.
#[derive(Debug, Clone)]
pub struct Validated {
    /// This store.
    pub store: StoreId,
    /// Its currency.
    pub currency: Currency,
    /// Upstream broker.
    pub upstream: BrokerUrl,
    /// Keys, certificates and how messages are signed and checked.
    pub trust: Arc<EdgeTrust>,
    /// MQTT client id.
    pub client_id: String,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// LAN bus listen address.
    pub lan_listen: SocketAddr,
    /// The devices allowed on the LAN bus.
    pub devices: Vec<crate::credential::DeviceAccess>,
}

impl Settings {
    /// Defaults, overridden by `file` (if given) and then by `SG_EDGE_*`.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        storegate_broker::process::load_settings(&Settings::default(), file, "SG_EDGE_")
            .map_err(SettingsError::Load)
    }

    /// The defaults as TOML, for `--print-default-config`.
    pub fn default_toml() -> String {
        storegate_broker::process::settings_toml(&Settings::default())
    }

    /// Checks every value and converts to working types.
    pub fn validate(&self) -> Result<Validated, SettingsError> {
        let invalid = |key, message: String| SettingsError::Invalid { key, message };
        let named = StoreId::parse(&self.store_id).map_err(|e| invalid("store_id", e.to_string()))?;
        let currency = Currency::parse(&self.currency).map_err(|e| invalid("currency", e.to_string()))?;
        let trust = match (&self.upstream.bundle, self.upstream.insecure_unsigned) {
            (Some(path), _) => {
                let t = EdgeTrust::from_bundle_file(path)
                    .map_err(|e| invalid("upstream.bundle", e.to_string()))?;
                if self.store_id != Settings::default().store_id && t.store != named {
                    return Err(invalid(
                        "store_id",
                        format!("{named} does not match the bundle's store {}", t.store),
                    ));
                }
                t
            }
            (None, true) => EdgeTrust::unsigned(named),
            (None, false) => {
                return Err(invalid(
                    "upstream.bundle",
                    "required: provision this store at the hub (`hub store provision STORE --broker mqtts://HUB:8883`) \
                     and point upstream.bundle (--bundle) at the file it writes"
                        .into(),
                ));
            }
        };
        let store = trust.store.clone();
        let url = match (self.upstream.url.as_str(), &trust.broker) {
            ("", Some(b)) => b.clone(),
            ("", None) => {
                return Err(invalid(
                    "upstream.url",
                    "no broker address: set upstream.url".into(),
                ));
            }
            (u, _) => u.to_owned(),
        };
        let upstream = BrokerUrl::parse(&url).map_err(|m| invalid("upstream.url", m))?;
        if upstream.tls && trust.tls.is_none() {
            return Err(invalid(
                "upstream.url",
                format!("{url} is TLS and needs this store's certificate: set upstream.bundle"),
            ));
        }
        if !upstream.tls && !upstream.is_loopback() && !self.upstream.allow_plain_remote {
            return Err(invalid(
                "upstream.url",
                format!(
                    "{url} is plain MQTT to another machine: anyone on the network would see this store's traffic; \
                     use mqtts:// or set upstream.allow_plain_remote = true (warned at every start)"
                ),
            ));
        }
        let http_listen = self
            .http
            .listen
            .parse()
            .map_err(|e| invalid("http.listen", format!("{:?}: {e}", self.http.listen)))?;
        let http_listen: SocketAddr = http_listen;
        let token = self.http.api_token.as_deref().unwrap_or("");
        if !token.is_empty() && token.len() < 16 {
            return Err(invalid(
                "http.api_token",
                "must be at least 16 characters (a random string: openssl rand -hex 16)".into(),
            ));
        }
        if token.is_empty() && !http_listen.ip().is_loopback() {
            return Err(invalid(
                "http.api_token",
                format!(
                    "required when http.listen ({http_listen}) is off loopback: anyone on the store network could \
                     record events; set SG_EDGE_HTTP__API_TOKEN or listen on 127.0.0.1"
                ),
            ));
        }
        if self.sync.batch_max_events == 0 || self.sync.window == 0 {
            return Err(invalid(
                "sync.batch_max_events / sync.window",
                "must be at least 1".into(),
            ));
        }
        if self.sync.max_packet_bytes < self.sync.batch_max_bytes + 1024 {
            return Err(invalid(
                "sync.max_packet_bytes",
                "must exceed sync.batch_max_bytes by at least 1 KiB (envelope headroom)".into(),
            ));
        }
        if self.journal.max_group == 0 {
            return Err(invalid("journal.max_group", "must be at least 1".into()));
        }
        let lan_listen = self
            .lan
            .listen
            .parse()
            .map_err(|e| invalid("lan.listen", format!("{:?}: {e}", self.lan.listen)))?;
        for l in &self.pos.variable_layouts {
            l.validate().map_err(|m| invalid("pos.variable_layouts", m))?;
        }
        for lane in &self.lanes {
            storegate_protocol::LaneId::parse(&lane.id).map_err(|e| invalid("lanes.id", e.to_string()))?;
            if let Some(s) = &lane.scale
                && !self.scales.iter().any(|x| &x.id == s)
            {
                return Err(invalid(
                    "lanes.scale",
                    format!("lane {} names scale {s:?}, which is not in [[scales]]", lane.id),
                ));
            }
        }
        for id in self
            .scales
            .iter()
            .map(|s| &s.id)
            .chain(self.scanners.iter().map(|s| &s.id))
        {
            storegate_protocol::DeviceId::parse(id)
                .map_err(|e| invalid("scales/scanners id", e.to_string()))?;
        }
        let devices = self.validate_devices()?;
        let client_id = self
            .upstream
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{store}"));
        Ok(Validated {
            store,
            currency,
            upstream,
            trust: Arc::new(trust),
            client_id,
            http_listen,
            lan_listen,
            devices,
        })
    }

    fn validate_devices(&self) -> Result<Vec<crate::credential::DeviceAccess>, SettingsError> {
        let invalid = |message: String| SettingsError::Invalid {
            key: "devices",
            message,
        };
        if self.lan.device_rate_per_sec == 0 || self.lan.device_burst == 0 {
            return Err(SettingsError::Invalid {
                key: "lan.device_rate_per_sec / lan.device_burst",
                message: "must be at least 1".into(),
            });
        }
        let mut out: Vec<crate::credential::DeviceAccess> = Vec::new();
        for d in &self.devices {
            let id = storegate_protocol::DeviceId::parse(&d.id).map_err(|e| invalid(e.to_string()))?;
            if id.as_str().starts_with("edge-") {
                // The agent's own link to its bus is `edge-{store}-lan`.
                return Err(invalid(format!(
                    "device {id}: ids starting `edge-` are the agent's own"
                )));
            }
            if out.iter().any(|o| o.id == id) {
                return Err(invalid(format!("device {id} is listed twice")));
            }
            let password_sha256 = crate::credential::parse_hash(&d.password_sha256).ok_or_else(|| {
                invalid(format!(
                    "device {id}: password_sha256 must be 64 hex digits (`edge-agent device new` prints one)"
                ))
            })?;
            let lanes = d
                .lanes
                .iter()
                .map(|l| {
                    storegate_protocol::LaneId::parse(l).map_err(|e| invalid(format!("device {id}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            match (d.role.has_lanes(), lanes.is_empty()) {
                (false, false) => {
                    return Err(invalid(format!(
                        "device {id}: a {:?} is bound to no lane",
                        d.role
                    )));
                }
                (true, true) if d.role == crate::credential::DeviceRole::Till => {
                    return Err(invalid(format!("device {id}: a till needs its lanes")));
                }
                _ => {}
            }
            out.push(crate::credential::DeviceAccess {
                id,
                role: d.role,
                lanes,
                password_sha256,
            });
        }
        Ok(out)
    }
}

impl SyncSettings {
    /// `ack_timeout_ms` as a duration.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

pub use storegate_protocol::endpoint::BrokerUrl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_want_a_bundle_and_print_as_toml_that_loads_back() {
        let mut s = Settings::default();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.bundle"), "{e}");
        s.upstream.insecure_unsigned = true;
        s.upstream.url = "mqtt://127.0.0.1:1883".into();
        s.validate().unwrap();
        let text = Settings::default_toml();
        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back.store_id, s.store_id);
        assert_eq!(back.sync.batch_max_events, s.sync.batch_max_events);
    }

    #[test]
    fn a_device_entry_appended_to_the_printed_defaults_loads() {
        #[derive(Serialize)]
        struct Entry<'a> {
            devices: [&'a DeviceSettings; 1],
        }
        let entry = DeviceSettings::new("till-7", crate::credential::DeviceRole::Till, &["7"], "pw");
        let appended = toml::to_string(&Entry { devices: [&entry] }).unwrap();
        let mut s: Settings = toml::from_str(&format!("{}\n{appended}", Settings::default_toml())).unwrap();
        s.upstream.insecure_unsigned = true;
        s.upstream.url = "mqtt://127.0.0.1:1883".into();
        let v = s.validate().unwrap();
        assert_eq!(v.devices.len(), 1);
        assert_eq!(v.devices[0].lanes[0].as_str(), "7");
        assert_eq!(
            v.devices[0].password_sha256,
            crate::credential::password_hash(b"pw")
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut s = Settings {
            store_id: "bad/store".into(),
            ..Settings::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("store_id"), "{e}");
        s.store_id = "ok".into();
        s.upstream.insecure_unsigned = true;
        s.upstream.url = "http://x".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.url"), "{e}");
    }

    #[test]
    fn plain_mqtt_off_loopback_or_tls_without_a_bundle_is_refused() {
        let mut s = Settings::default();
        s.upstream.insecure_unsigned = true;
        s.upstream.url = "mqtt://10.0.0.9:1883".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("allow_plain_remote"), "{e}");
        s.upstream.allow_plain_remote = true;
        s.validate().unwrap();
        s.upstream.url = "mqtts://hub.example:8883".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.bundle"), "{e}");
    }

    #[test]
    fn the_local_api_off_loopback_needs_a_long_token() {
        let mut s = Settings::default();
        s.upstream.insecure_unsigned = true;
        s.upstream.url = "mqtt://127.0.0.1:1883".into();
        s.http.listen = "0.0.0.0:8080".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("http.api_token") && e.contains("off loopback"), "{e}");
        s.http.api_token = Some("short".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        s.http.api_token = Some("0123456789abcdef0123".into());
        s.validate().unwrap();
        s.http.listen = "127.0.0.1:0".into();
        s.http.api_token = None;
        s.validate().unwrap();
    }
}
