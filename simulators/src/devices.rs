//! Simulated serial devices on pseudo-terminals: an MT-SICS scale and a
//! barcode scanner. The simulator keeps the pty's master side; the edge
//! agent opens the slave path as if it were `/dev/ttyUSB0`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use storegate_edge::framing::Terminator;
use storegate_edge::mtsics;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// A pseudo-terminal: its master side and the slave's path.
#[derive(Debug)]
pub struct Pty {
    /// The simulator's side.
    pub master: tokio_serial::SerialStream,
    /// What the edge opens.
    pub path: String,
}

/// Opens a pty pair and keeps only the master (the slave path stays valid
/// while the master is open).
pub fn open_pty() -> anyhow::Result<Pty> {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair()?;
    let path = slave
        .name()
        .ok_or_else(|| anyhow::anyhow!("pty without a name"))?;
    drop(slave);
    Ok(Pty { master, path })
}

/// What the simulated scale does; change it while it runs.
#[derive(Debug, Default)]
pub struct ScaleState {
    /// What is on the platter, mg.
    pub milligrams: AtomicI64,
    /// Whether the reading has settled.
    pub unsettled: AtomicBool,
    /// Answer nothing at all.
    pub mute: AtomicBool,
    /// The next this-many replies are garbage.
    pub garbage: AtomicU32,
    /// Commands answered.
    pub answered: AtomicU32,
}

/// Serves MT-SICS on `port` until `shutdown`.
pub async fn serve_scale<P: AsyncRead + AsyncWrite + Unpin>(
    port: P,
    state: Arc<ScaleState>,
    shutdown: CancellationToken,
) {
    let mut port = BufReader::new(port);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            r = port.read_until(b'\n', &mut line) => r,
        };
        match read {
            Ok(0) | Err(_) => {
                // No slave open yet (EIO) or closed: wait and retry.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(_) => {}
        }
        if state.mute.load(Ordering::Acquire) {
            continue;
        }
        let cmd = String::from_utf8_lossy(&line).trim().to_owned();
        let reply = if state.garbage.load(Ordering::Acquire) > 0 {
            state.garbage.fetch_sub(1, Ordering::AcqRel);
            "\u{1}\u{2}#@!garbage\r\n".to_owned()
        } else {
            let mg = state.milligrams.load(Ordering::Acquire);
            let stable = !state.unsettled.load(Ordering::Acquire);
            match cmd.as_str() {
                "S" if stable => mtsics::format_weight(true, mg),
                "S" => "S I\r\n".to_owned(),
                "SI" => mtsics::format_weight(stable, mg),
                "Z" => {
                    state.milligrams.store(0, Ordering::Release);
                    "Z A\r\n".to_owned()
                }
                "T" => {
                    state.milligrams.store(0, Ordering::Release);
                    format!("T S {:>10.2} g\r\n", mg as f64 / 1000.0)
                }
                _ => "ES\r\n".to_owned(),
            }
        };
        state.answered.fetch_add(1, Ordering::Relaxed);
        let _ = port.get_mut().write_all(reply.as_bytes()).await;
    }
}

/// Writes `code` the way a scanner with `terminator` sends it.
pub async fn scan<P: AsyncWrite + Unpin>(
    port: &mut P,
    code: &str,
    terminator: Terminator,
) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(code.len() + 2);
    match terminator {
        Terminator::StxEtx => {
            bytes.push(0x02);
            bytes.extend_from_slice(code.as_bytes());
            bytes.push(0x03);
        }
        other => {
            bytes.extend_from_slice(code.as_bytes());
            bytes.extend_from_slice(match other {
                Terminator::Cr => b"\r",
                Terminator::Lf => b"\n",
                Terminator::CrLf => b"\r\n",
                _ => b"",
            });
        }
    }
    port.write_all(&bytes).await?;
    port.flush().await
}
