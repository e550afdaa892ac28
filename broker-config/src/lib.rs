//! storegate-broker: the broker configurations (this directory's TOML
//! files) and the embedded rumqttd starter the hub (WAN broker) and the edge
//! agent (store LAN device bus) share.
//!
//! Mosquitto and EMQX configurations for production sit beside this crate
//! (`mosquitto.conf`, `mosquitto.acl`, `EMQX.md`).
//!
//! - [`gate`]: the TLS, MQTT-aware front door that gives the embedded
//!   rumqttd per-client authorisation (rumqttd has none of its own).
//! - [`burst`]: logging a repeated refusal once per burst.
//! - [`tls`]: the rustls client and server configurations of the WAN.
//! - [`process`]: what both binaries share: settings loading, logging,
//!   the Prometheus recorder, stopping on a signal.
//!
//! rumqttd has no shutdown API and does not report a failed bind (it logs
//! and the server thread ends). So [`start_embedded`] binds the address
//! itself first (a taken port is a clear error naming the setting), reads
//! back the port when 0 was asked for, releases it for rumqttd, starts the
//! broker on its own thread, and waits until the port accepts connections.
//! The broker then lives until the process exits.

pub mod burst;
pub mod gate;
pub mod process;
pub mod tls;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The hub's embedded broker configuration (`rumqttd.toml`).
pub const HUB_CONFIG: &str = include_str!("../rumqttd.toml");
/// The edge agent's store LAN bus configuration (`rumqttd-lan.toml`).
pub const LAN_CONFIG: &str = include_str!("../rumqttd-lan.toml");
/// The production Mosquitto configuration (`mosquitto.conf`); its files
/// live under [`MOSQUITTO_DIR`].
pub const MOSQUITTO_CONF: &str = include_str!("../mosquitto.conf");
/// Its ACL file (`mosquitto.acl`).
pub const MOSQUITTO_ACL: &str = include_str!("../mosquitto.acl");
/// Where [`MOSQUITTO_CONF`] expects its CA, certificate, key, CRL and ACL.
pub const MOSQUITTO_DIR: &str = "/etc/mosquitto/storegate/";

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration could not be read or parsed.
    #[error("broker config {path}: {message}")]
    Config {
        /// Where it came from.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The listen address is taken or not ours.
    #[error(
        "embedded MQTT broker cannot listen on {addr}: {source}; change `{setting}` (another broker, e.g. Mosquitto, may hold the port)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The setting that holds it.
        setting: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// rumqttd did not start listening.
    #[error("embedded MQTT broker did not start listening on {0} within 10 s")]
    NotListening(SocketAddr),
}

/// Parses a rumqttd TOML configuration: `file`, or `builtin` (one of the
/// configurations compiled in, [`HUB_CONFIG`] or [`LAN_CONFIG`]).
pub fn load_config(file: Option<&Path>, builtin: &str) -> Result<rumqttd::Config, BrokerError> {
    let (path, text) = match file {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| BrokerError::Config {
                path: p.display().to_string(),
                message: e.to_string(),
            })?,
        ),
        None => ("(built in) broker-config".to_owned(), builtin.to_owned()),
    };
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| BrokerError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if config.router.max_connections == 0 || config.router.max_segment_size == 0 {
        return Err(BrokerError::Config {
            path,
            message: "router.max_connections and router.max_segment_size must be set (rumqttd aborts every client on zeros)"
                .into(),
        });
    }
    Ok(config)
}

pub use rumqttd::Notification;
pub use rumqttd::local::{LinkRx, LinkTx};

/// Starts rumqttd with `config`, its first v4 server listening on `listen`
/// (port 0: a free port). Returns the address it listens on.
pub fn start_embedded(
    config: rumqttd::Config,
    listen: SocketAddr,
    setting: &'static str,
) -> Result<SocketAddr, BrokerError> {
    start_embedded_with_link(config, listen, setting, None).map(|(addr, _)| addr)
}

/// Like [`start_embedded`], and also returns an in-process client link named
/// `link` (no TCP: no Nagle delays, no socket). The link publishes and
/// subscribes at QoS 0, which in-process loses nothing.
pub fn start_embedded_with_link(
    mut config: rumqttd::Config,
    listen: SocketAddr,
    setting: &'static str,
    link: Option<&str>,
) -> Result<(SocketAddr, Option<(LinkTx, LinkRx)>), BrokerError> {
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        setting,
        source,
    })?;
    let addr = probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        setting,
        source,
    })?;
    drop(probe);

    let mut servers = config.v4.take().unwrap_or_default();
    let mut server = match servers.drain().next() {
        Some((_, s)) => s,
        None => {
            return Err(BrokerError::Config {
                path: "broker config".into(),
                message: "needs one [v4.x] server section".into(),
            });
        }
    };
    server.listen = addr;
    config.v4 = Some([("1".to_owned(), server)].into_iter().collect());
    config.v5 = None;
    config.ws = None;
    config.prometheus = None;
    config.console = None;
    config.metrics = None;

    let mut broker = rumqttd::Broker::new(config);
    let link = match link {
        Some(id) => Some(broker.link(id).map_err(|e| BrokerError::Config {
            path: "in-process link".into(),
            message: e.to_string(),
        })?),
        None => None,
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|source| BrokerError::Bind {
            addr,
            setting,
            source,
        })?;

    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if mqtt_handshake(addr).is_ok() {
            tracing::info!(%addr, "embedded MQTT broker listening");
            return Ok((addr, link));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(addr))
}

/// Proves the broker answers MQTT: CONNECT (3.1.1, clean session), expect
/// CONNACK accepted, DISCONNECT.
fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    const ID: &[u8] = b"storegate-probe";
    let mut connect = vec![
        0x10,
        (10 + 2 + ID.len()) as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        10,
    ];
    connect.extend_from_slice(&[0, ID.len() as u8]);
    connect.extend_from_slice(ID);
    s.write_all(&connect)?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other("broker refused the probe"));
    }
    s.write_all(&[0xE0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configs_parse() {
        for builtin in [HUB_CONFIG, LAN_CONFIG] {
            let c = load_config(None, builtin).unwrap();
            assert!(c.router.max_connections > 1000);
            assert!(c.v4.is_some());
        }
    }

    #[test]
    fn a_taken_port_names_the_setting() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = start_embedded(load_config(None, HUB_CONFIG).unwrap(), addr, "broker.listen").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("broker.listen"), "{text}");
    }

    #[test]
    fn port_zero_starts_a_broker_that_accepts_connections() {
        let addr = start_embedded(
            load_config(None, HUB_CONFIG).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            "broker.listen",
        )
        .unwrap();
        assert_ne!(addr.port(), 0);
        TcpStream::connect(addr).unwrap();
    }
}
