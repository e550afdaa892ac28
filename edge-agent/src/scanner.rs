//! The serial scanner driver: reads bytes, frames codes, reconnects when
//! the port vanishes, and hands every code (or garbage report) on.

use std::time::Duration;

use storegate_protocol::DeviceId;
use storegate_protocol::event::DeviceKind;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::devices::{Devices, Opener, report};
use crate::framing::{Frame, Framer, Terminator};
use crate::journal::Journal;

/// A scanner's framing settings.
#[derive(Debug, Clone, Copy)]
pub struct ScannerConfig {
    /// How codes end.
    pub terminator: Terminator,
    /// A quiet line this long ends a code (or an unfinished frame).
    pub idle: Duration,
}

/// Runs a scanner on the port `open` opens, sending `(device, frame)` to `out`.
pub async fn run(
    id: DeviceId,
    open: Opener,
    cfg: ScannerConfig,
    out: mpsc::Sender<(DeviceId, Frame)>,
    devices: Devices,
    journal: Journal,
    shutdown: CancellationToken,
) {
    let kind = DeviceKind::Scanner;
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut port = tokio::select! {
            () = shutdown.cancelled() => return,
            p = open() => match p {
                Ok(p) => p,
                Err(e) => {
                    report(&journal, &id, devices.offline(&id, kind, format!("cannot open port: {e}")));
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(200);
        tracing::info!(device = %id, "scanner port open");
        report(&journal, &id, devices.seen(&id, kind));
        let mut framer = Framer::new(cfg.terminator);
        let mut buf = [0u8; 512];
        loop {
            // Only an unfinished code makes a quiet line mean something.
            let idle = if framer.pending() {
                cfg.idle
            } else {
                Duration::from_secs(3600)
            };
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(idle, port.read(&mut buf)) => r,
            };
            let frames = match read {
                Err(_) => framer.flush(),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // End of file: the port is gone. Reopen; never spin on Ok(0).
                    report(
                        &journal,
                        &id,
                        devices.offline(&id, kind, "port closed (unplugged?)"),
                    );
                    break;
                }
                Ok(Ok(n)) => framer.push(&buf[..n]),
            };
            for f in frames {
                if let Frame::Garbage(why) = &f {
                    report(
                        &journal,
                        &id,
                        devices.error(&id, kind, format!("garbled input: {why}")),
                    );
                } else {
                    report(&journal, &id, devices.seen(&id, kind));
                }
                if out.send((id.clone(), f)).await.is_err() {
                    return;
                }
            }
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

    /// A port that is gone is retried with a growing pause (200 ms,
    /// doubling, at most 5 s), never spun on. In paused time: the count is
    /// exact and the test takes no wall-clock seconds.
    #[tokio::test]
    async fn a_missing_port_is_retried_with_backoff_not_spun_on() {
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
            Box::pin(async { Err(std::io::Error::other("no such port")) })
        });
        let (tx, _rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            DeviceId::parse("scanner-1").unwrap(),
            open,
            ScannerConfig {
                terminator: Terminator::CrLf,
                idle: Duration::from_millis(50),
            },
            tx,
            Devices::default(),
            journal,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Tries at 0, 0.2, 0.6, 1.4, 3.0 and 6.2 s; the next at 11.2 s.
        assert_eq!(attempts.load(Ordering::Relaxed), 6);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Then every 5 s: 11.2, 16.2, ... 66.2 s.
        assert_eq!(attempts.load(Ordering::Relaxed), 6 + 12);
        stop.cancel();
        task.await.unwrap();
    }
}
