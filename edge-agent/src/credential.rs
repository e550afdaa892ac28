//! A store device's credential and role, as the settings hold them and
//! the LAN gate checks them (`lan::access`): only the SHA-256 of a device's
//! password is ever kept.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storegate_protocol::{DeviceId, LaneId};

/// What a device is, which decides its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRole {
    /// A POS lane's till: sends lane requests, reads lane replies.
    Till,
    /// A barcode scanner on the bus.
    Scanner,
    /// A scale on the bus.
    Scale,
    /// A handheld: scans, works tasks, and may act as a till on its lanes.
    Handheld,
    /// A supervisor's device: approves risky lane operations.
    Supervisor,
    /// Anything else (a sensor, a display): health reports only.
    Other,
}

impl DeviceRole {
    /// Whether a device of this role may be bound to lanes.
    pub fn has_lanes(self) -> bool {
        matches!(
            self,
            DeviceRole::Till | DeviceRole::Scanner | DeviceRole::Handheld
        )
    }
}

/// One device allowed on the bus.
#[derive(Debug, Clone)]
pub struct DeviceAccess {
    /// Its id (also its MQTT username).
    pub id: DeviceId,
    /// Its role.
    pub role: DeviceRole,
    /// The lanes it acts on.
    pub lanes: Vec<LaneId>,
    /// SHA-256 of its password.
    pub password_sha256: [u8; 32],
}

/// SHA-256 of a device password.
pub fn password_hash(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses 64 hex digits.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random device password (32 hex digits, 128 bits).
pub fn new_password() -> String {
    hex(&rand::random::<[u8; 16]>())
}
