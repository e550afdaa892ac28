//! Devices the edge serves: a registry of their health (last seen, errors,
//! status) shown on the status page and sent up as telemetry, and the
//! serial port plumbing the drivers share.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use storegate_protocol::DeviceId;
use storegate_protocol::event::{DeviceHealthRecord, DeviceKind, EventBody, HealthStatus};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::journal::{Journal, now_ms};

/// A byte stream a driver talks to: a serial port, a pty, a test duplex.
pub trait Port: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Port for T {}

/// Opens (or reopens) a driver's port.
pub type Opener =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Port>>> + Send>> + Send + Sync>;

/// An opener for a serial device (8N1 at `baud`).
pub fn serial_opener(path: String, baud: u32) -> Opener {
    Arc::new(move || {
        let path = path.clone();
        Box::pin(async move {
            use tokio_serial::SerialPortBuilderExt;
            let port = tokio_serial::new(&path, baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(tokio_serial::Parity::None)
                .stop_bits(tokio_serial::StopBits::One)
                .open_native_async()
                .map_err(std::io::Error::other)?;
            Ok(Box::new(port) as Box<dyn Port>)
        })
    })
}

/// One device's state.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceState {
    /// What kind of device.
    pub kind: DeviceKind,
    /// Its condition.
    pub status: HealthStatus,
    /// Last error or status text.
    pub detail: String,
    /// Errors since the agent started.
    pub errors: u32,
    /// Last time it did anything, ms.
    pub last_seen_ms: i64,
}

/// The registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    /// Device id -> state.
    inner: Arc<Mutex<BTreeMap<String, DeviceState>>>,
}

impl Devices {
    fn update(
        &self,
        id: &DeviceId,
        kind: DeviceKind,
        f: impl FnOnce(&mut DeviceState),
    ) -> Option<DeviceState> {
        let mut map = self.inner.lock().ok()?;
        let entry = map.entry(id.to_string()).or_insert_with(|| DeviceState {
            kind,
            status: HealthStatus::Ok,
            detail: String::new(),
            errors: 0,
            last_seen_ms: 0,
        });
        let before = entry.status;
        f(entry);
        (entry.status != before).then(|| entry.clone())
    }

    /// The device did something normal. Returns its new state if its
    /// status changed.
    pub fn seen(&self, id: &DeviceId, kind: DeviceKind) -> Option<DeviceState> {
        self.update(id, kind, |d| {
            d.last_seen_ms = now_ms();
            if d.status != HealthStatus::Ok {
                d.status = HealthStatus::Ok;
                d.detail = "recovered".into();
            }
        })
    }

    /// The device misbehaved but is there (garbage, timeouts).
    pub fn error(&self, id: &DeviceId, kind: DeviceKind, detail: impl Into<String>) -> Option<DeviceState> {
        let detail = detail.into();
        metrics::counter!("edge_device_errors_total", "device" => id.to_string()).increment(1);
        tracing::warn!(device = %id, detail, "device error");
        self.update(id, kind, |d| {
            d.errors = d.errors.saturating_add(1);
            d.status = HealthStatus::Degraded;
            d.detail = detail;
        })
    }

    /// The device is gone (unplugged, port cannot open).
    pub fn offline(&self, id: &DeviceId, kind: DeviceKind, detail: impl Into<String>) -> Option<DeviceState> {
        let detail = detail.into();
        self.update(id, kind, |d| {
            if d.status != HealthStatus::Offline {
                tracing::warn!(device = %id, detail, "device offline");
            }
            d.status = HealthStatus::Offline;
            d.detail = detail;
        })
    }

    /// A device reported its own health (over the device bus).
    pub fn reported(
        &self,
        id: &DeviceId,
        kind: DeviceKind,
        status: HealthStatus,
        detail: String,
    ) -> Option<DeviceState> {
        self.update(id, kind, |d| {
            d.kind = kind;
            d.status = status;
            d.detail = detail;
            d.last_seen_ms = now_ms();
        })
    }

    /// Every device, by id.
    pub fn snapshot(&self) -> BTreeMap<String, DeviceState> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Records a device's changed state as telemetry (best effort: telemetry
/// may be dropped under disk pressure, never blocks anything).
pub fn report(journal: &Journal, id: &DeviceId, state: Option<DeviceState>) {
    let Some(s) = state else { return };
    let journal = journal.clone();
    let body = EventBody::DeviceHealth(DeviceHealthRecord {
        device: id.clone(),
        kind: s.kind,
        status: s.status,
        detail: s.detail,
        error_count: s.errors,
    });
    tokio::spawn(async move {
        if let Err(e) = journal.record(body, None).await {
            tracing::warn!(error = %e, "device health not recorded");
        }
    });
}
