//! Scale and scanner drivers against simulated devices on real
//! pseudo-terminals: readings, garbage, silence, unplug and replug.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use storegate_e2e::wait_until;
use storegate_edge::devices::{Devices, serial_opener};
use storegate_edge::framing::{Frame, Terminator};
use storegate_edge::journal::Journal;
use storegate_edge::scale::{self, ScaleError};
use storegate_edge::scanner::{self, ScannerConfig};
use storegate_edge::settings::JournalSettings;
use storegate_protocol::event::HealthStatus;
use storegate_protocol::{Currency, DeviceId};
use storegate_sim::devices::{ScaleState, open_pty, scan, serve_scale};
use tokio_util::sync::CancellationToken;

async fn journal(dir: &std::path::Path) -> Journal {
    Journal::open(&dir.join("j.db"), &JournalSettings::default(), Currency::EUR)
        .await
        .unwrap()
        .0
}

/// Wraps an opener to count how often the driver tries to open its port.
fn counting(
    inner: storegate_edge::devices::Opener,
    count: Arc<std::sync::atomic::AtomicU32>,
) -> storegate_edge::devices::Opener {
    Arc::new(move || {
        count.fetch_add(1, Ordering::Relaxed);
        inner()
    })
}

/// A pty behind a stable symlink, so the device can be "replugged" on a
/// new pty at the same path.
fn plug(link: &std::path::Path) -> storegate_sim::devices::Pty {
    let pty = open_pty().unwrap();
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&pty.path, link).unwrap();
    pty
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_driver_weighs_survives_garbage_silence_and_an_unplug() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyScale");
    let state = Arc::new(ScaleState::default());
    state.milligrams.store(1_250_000, Ordering::Release);
    let stop = CancellationToken::new();
    let pty = plug(&link);
    tokio::spawn(serve_scale(pty.master, state.clone(), stop.clone()));

    let devices = Devices::default();
    let id = DeviceId::parse("scale-1").unwrap();
    let opens = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (handle, driver) = scale::spawn(
        id.clone(),
        counting(serial_opener(link.display().to_string(), 9600), opens.clone()),
        devices.clone(),
        journal(dir.path()).await,
        CancellationToken::new(),
    );
    tokio::spawn(driver);
    let t = Duration::from_millis(800);
    assert_eq!(handle.weigh(t).await, Ok(1_250_000));
    handle.zero(t).await.unwrap();
    assert_eq!(handle.weigh(t).await, Ok(0));

    state.milligrams.store(500_000, Ordering::Release);
    state.unsettled.store(true, Ordering::Release);
    assert_eq!(handle.weigh(t).await, Err(ScaleError::Unstable));
    state.unsettled.store(false, Ordering::Release);

    state.garbage.store(1, Ordering::Release);
    assert!(
        matches!(handle.weigh(t).await, Err(ScaleError::Failed(_))),
        "garbage is an error"
    );
    assert_eq!(handle.weigh(t).await, Ok(500_000), "and the next weighing works");

    state.mute.store(true, Ordering::Release);
    assert_eq!(handle.weigh(t).await, Err(ScaleError::Timeout));
    state.mute.store(false, Ordering::Release);
    assert_eq!(
        handle.weigh(t).await,
        Ok(500_000),
        "a late reply is not mistaken for the next"
    );
    assert_eq!(devices.snapshot()["scale-1"].status, HealthStatus::Ok);

    // Unplugged: the pty's master goes away.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_file(&link);
    assert!(matches!(
        handle.weigh(t).await,
        Err(ScaleError::Offline(_) | ScaleError::Timeout)
    ));
    // Gone for 3 s: the driver retries its port every 2 s, no faster (a
    // driver that spun on end-of-file would retry thousands of times).
    let before = opens.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let tries = opens.load(Ordering::Relaxed) - before;
    assert!(
        tries <= 3,
        "a vanished port must not be hammered: {tries} opens in 3 s"
    );
    assert!(matches!(handle.weigh(t).await, Err(ScaleError::Offline(_))));
    assert_eq!(devices.snapshot()["scale-1"].status, HealthStatus::Offline);

    // Plugged back in.
    let stop = CancellationToken::new();
    let pty = plug(&link);
    state.milligrams.store(80_000, Ordering::Release);
    tokio::spawn(serve_scale(pty.master, state.clone(), stop.clone()));
    let mut weighed = Err(ScaleError::Timeout);
    for _ in 0..20 {
        weighed = handle.weigh(t).await;
        if weighed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(weighed, Ok(80_000));
    assert_eq!(devices.snapshot()["scale-1"].status, HealthStatus::Ok);
    assert_eq!(
        devices.snapshot()["scale-1"].errors,
        2,
        "garbage and silence count; an unsettled reading does not"
    );
    stop.cancel();
}

async fn scanner_with(
    terminator: Terminator,
    dir: &std::path::Path,
) -> (
    storegate_sim::devices::Pty,
    tokio::sync::mpsc::Receiver<(DeviceId, Frame)>,
) {
    let pty = open_pty().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let devices = Devices::default();
    tokio::spawn(scanner::run(
        DeviceId::parse("scanner-1").unwrap(),
        serial_opener(pty.path.clone(), 9600),
        ScannerConfig {
            terminator,
            idle: Duration::from_millis(80),
        },
        tx,
        devices.clone(),
        journal(dir).await,
        CancellationToken::new(),
    ));
    // Nothing is written before the driver has its port open.
    wait_until("the scanner's port open", Duration::from_secs(10), || async {
        devices
            .snapshot()
            .get("scanner-1")
            .is_some_and(|d| d.status == HealthStatus::Ok)
    })
    .await;
    (pty, rx)
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<(DeviceId, Frame)>) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scanner_driver_frames_codes_and_reports_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pty, mut rx) = scanner_with(Terminator::CrLf, dir.path()).await;
    scan(&mut pty.master, "4006381333931", Terminator::CrLf)
        .await
        .unwrap();
    scan(&mut pty.master, "]E0036000291452", Terminator::CrLf)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, Frame::Code("4006381333931".into()));
    assert_eq!(next(&mut rx).await, Frame::Code("]E0036000291452".into()));
    use tokio::io::AsyncWriteExt;
    pty.master.write_all(b"40063\x07\x01\r\n").await.unwrap();
    assert!(matches!(next(&mut rx).await, Frame::Garbage(_)));
    scan(&mut pty.master, "96385074", Terminator::CrLf).await.unwrap();
    assert_eq!(
        next(&mut rx).await,
        Frame::Code("96385074".into()),
        "the scanner keeps working after garbage"
    );

    let (mut pty, mut rx) = scanner_with(Terminator::StxEtx, dir.path()).await;
    scan(&mut pty.master, "4006381333931", Terminator::StxEtx)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, Frame::Code("4006381333931".into()));

    let (mut pty, mut rx) = scanner_with(Terminator::None, dir.path()).await;
    scan(&mut pty.master, "4006381333931", Terminator::None)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Frame::Code("4006381333931".into()),
        "a quiet line ends the code"
    );
}
