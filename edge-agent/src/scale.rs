//! The scale driver: MT-SICS over a serial port, one command in flight.
//!
//! The driver owns the port and reopens it when it vanishes (a read of 0
//! bytes is end of file, not "no data": treating it otherwise spins a core).
//! A command that gets no reply in time fails with `Timeout`; a late reply
//! to an earlier command is recognised by its identifier and skipped.

use std::time::Duration;

use storegate_protocol::DeviceId;
use storegate_protocol::event::DeviceKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::devices::{Devices, Opener, Port, report};
use crate::journal::Journal;
use crate::mtsics::{self, Command, Reply};

/// Why the scale could not give a weight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// The port is not there.
    #[error("scale offline: {0}")]
    Offline(String),
    /// No reply in time.
    #[error("scale did not answer in time")]
    Timeout,
    /// The scale would not settle (`S I`, or a dynamic reading).
    #[error("scale not stable")]
    Unstable,
    /// Over or under the scale's range.
    #[error("scale out of range ({0})")]
    Range(&'static str),
    /// The reply was garbage, or an error code.
    #[error("scale error: {0}")]
    Failed(String),
}

type Request = (Command, Duration, oneshot::Sender<Result<Reply, ScaleError>>);

/// Handle to a scale driver.
#[derive(Debug, Clone)]
pub struct ScaleHandle {
    /// The device.
    pub id: DeviceId,
    /// Commands for the driver.
    tx: mpsc::Sender<Request>,
}

impl ScaleHandle {
    async fn ask(&self, cmd: Command, timeout: Duration) -> Result<Reply, ScaleError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, timeout, reply))
            .await
            .map_err(|_| ScaleError::Offline("driver stopped".into()))?;
        // The driver answers every command by the timeout; the margin covers queueing.
        match tokio::time::timeout(timeout * 2 + Duration::from_millis(500), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ScaleError::Offline("driver stopped".into())),
            Err(_) => Err(ScaleError::Timeout),
        }
    }

    /// A stable weight in milligrams.
    pub async fn weigh(&self, timeout: Duration) -> Result<i64, ScaleError> {
        match self.ask(Command::Stable, timeout).await? {
            Reply::Weight {
                stable: true,
                milligrams,
            } => Ok(milligrams),
            Reply::Weight { stable: false, .. } | Reply::NotExecutable => Err(ScaleError::Unstable),
            Reply::Overload => Err(ScaleError::Range("overload")),
            Reply::Underload => Err(ScaleError::Range("underload")),
            other => Err(ScaleError::Failed(format!("{other:?}"))),
        }
    }

    /// Zeroes the scale.
    pub async fn zero(&self, timeout: Duration) -> Result<(), ScaleError> {
        match self.ask(Command::Zero, timeout).await? {
            Reply::Zeroed => Ok(()),
            other => Err(ScaleError::Failed(format!("{other:?}"))),
        }
    }
}

/// Starts a driver for the scale `id` on the port `open` opens.
pub fn spawn(
    id: DeviceId,
    open: Opener,
    devices: Devices,
    journal: Journal,
    shutdown: CancellationToken,
) -> (ScaleHandle, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::channel(16);
    let handle = ScaleHandle { id: id.clone(), tx };
    (handle, run(id, open, devices, journal, rx, shutdown))
}

async fn run(
    id: DeviceId,
    open: Opener,
    devices: Devices,
    journal: Journal,
    mut rx: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let kind = DeviceKind::Scale;
    let mut port: Option<BufReader<Box<dyn Port>>> = None;
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => return,
            r = rx.recv() => match r { Some(r) => Some(r), None => return },
            _ = retry.tick(), if port.is_none() => None,
        };
        if port.is_none() {
            match open().await {
                Ok(p) => {
                    port = Some(BufReader::new(p));
                    tracing::info!(device = %id, "scale port open");
                    report(&journal, &id, devices.seen(&id, kind));
                }
                Err(e) => {
                    report(
                        &journal,
                        &id,
                        devices.offline(&id, kind, format!("cannot open port: {e}")),
                    );
                    if let Some((_, _, reply)) = request {
                        let _ = reply.send(Err(ScaleError::Offline(e.to_string())));
                    }
                    continue;
                }
            }
        }
        let Some((cmd, timeout, reply)) = request else {
            continue;
        };
        let Some(p) = port.as_mut() else { continue };
        let result = exchange(p, cmd, timeout).await;
        match &result {
            Ok(_) => report(&journal, &id, devices.seen(&id, kind)),
            Err(ScaleError::Offline(why)) => {
                port = None;
                report(&journal, &id, devices.offline(&id, kind, why.clone()));
            }
            Err(e) => report(&journal, &id, devices.error(&id, kind, e.to_string())),
        }
        let _ = reply.send(result);
    }
}

/// One command and its reply.
async fn exchange(
    port: &mut BufReader<Box<dyn Port>>,
    cmd: Command,
    timeout: Duration,
) -> Result<Reply, ScaleError> {
    // Drop whatever an earlier, timed-out command left behind.
    let stale = port.buffer().len();
    port.consume(stale);
    port.get_mut()
        .write_all(cmd.bytes())
        .await
        .map_err(|e| ScaleError::Offline(format!("write failed: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::time::timeout_at(deadline, port.read_until(b'\n', &mut line)).await;
        match read {
            Err(_) => return Err(ScaleError::Timeout),
            Ok(Err(e)) => return Err(ScaleError::Offline(format!("read failed: {e}"))),
            Ok(Ok(0)) => return Err(ScaleError::Offline("port closed (unplugged?)".into())),
            Ok(Ok(_)) => {}
        }
        let text = String::from_utf8_lossy(&line);
        match mtsics::parse(cmd, &text) {
            Ok(Reply::SyntaxError) => return Err(ScaleError::Failed("ES: syntax error".into())),
            Ok(Reply::TransmissionError) => return Err(ScaleError::Failed("ET: transmission error".into())),
            Ok(Reply::LogicalError) => return Err(ScaleError::Failed("EL: logical error".into())),
            Ok(r) => return Ok(r),
            // A late reply to an earlier command: keep reading.
            Err(mtsics::ParseError::Unexpected { .. }) => continue,
            Err(e) => return Err(ScaleError::Failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use storegate_protocol::Currency;

    use super::*;
    use crate::settings::JournalSettings;

    /// An unplugged scale's port is tried every 2 s, and a weighing meanwhile
    /// is answered at once (offline), not after its timeout. Paused time.
    #[tokio::test]
    async fn an_unplugged_scale_is_retried_every_two_seconds_and_says_so_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _writer) = Journal::open(
            &dir.path().join("j.db"),
            &JournalSettings::default(),
            Currency::EUR,
        )
        .await
        .unwrap();
        tokio::time::pause();
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let open: Opener = Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Err(std::io::Error::other("unplugged")) })
        });
        let stop = CancellationToken::new();
        let (handle, driver) = spawn(
            DeviceId::parse("scale-1").unwrap(),
            open,
            Devices::default(),
            journal,
            stop.clone(),
        );
        let task = tokio::spawn(driver);
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        // Ticks at 0, 2, 4, 6 and 8 s.
        assert_eq!(attempts.load(Ordering::Relaxed), 5);
        let asked = tokio::time::Instant::now();
        assert!(matches!(
            handle.weigh(Duration::from_secs(3)).await,
            Err(ScaleError::Offline(_))
        ));
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "no waiting for the timeout"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
