//! Test harness shared by storegate's integration and end-to-end tests.
//!
//! Everything here is real: rumqttd in-process on a free port, Mosquitto as
//! a child process, the `edge-agent` binary as a child process, a TCP proxy
//! that cuts a store's WAN. Nothing binds a fixed port; every edge gets a
//! temp directory.
//!
//! - [`broker`]: embedded rumqttd on a free port.
//! - [`Proxy`]: a TCP proxy whose link can be cut and restored.
//! - [`Responder`]: a minimal stand-in for the hub's side of the sync
//!   contract (high-water mark per store, app acks, resend requests).
//! - [`Mosquitto`]: a real Mosquitto process that can be killed and restarted.
//! - [`EdgeProcess`]: the real `edge-agent` binary.
//! - [`service_or_skip`]: CI fails on a missing service; elsewhere the test
//!   skips, saying so.

#![allow(clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use storegate_protocol::envelope::{self, AppAck, Message, ResendRequest};
use storegate_protocol::event::Event;
use storegate_protocol::topic::{WanKind, WanTopic};
use storegate_protocol::{Seq, StoreId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Starts an embedded rumqttd on a free loopback port.
pub fn broker() -> SocketAddr {
    let config = storegate_hub::broker::load_config(None).expect("shipped broker config parses");
    storegate_hub::broker::start_embedded(config, "127.0.0.1:0".parse().expect("addr"), "test")
        .expect("embedded broker starts")
}

/// Under CI (`CI=true`) a missing service fails the test; elsewhere it is
/// skipped with a message. Returns whether the test should go on.
pub fn service_or_skip(name: &str, reachable: bool) -> bool {
    if reachable {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{name} is required under CI but is not reachable");
    }
    eprintln!("SKIPPED: {name} is not reachable on this machine");
    false
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of a broker: [`Proxy::cut`] drops every connection
/// and refuses new ones (the store's WAN is down), [`Proxy::restore`] lets
/// them through again.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// True while the link is cut.
    cut: Arc<AtomicBool>,
    /// Cancelled to drop the live connections; replaced on each cut.
    live: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    /// Starts a proxy to `target` on a free port.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let proxy = Proxy {
            addr,
            cut: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Mutex::new(CancellationToken::new())),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if p.cut.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let token = p.live.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        proxy
    }

    /// Cuts the link: live connections drop, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let mut live = self.live.lock().expect("lock");
        live.cancel();
        *live = CancellationToken::new();
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

/// What the responder has seen of one store.
#[derive(Debug, Default, Clone)]
pub struct StoreLog {
    /// Committed up to.
    pub hwm: u64,
    /// Events accepted, in order.
    pub events: Vec<Event>,
    /// Events received again at or below the mark.
    pub duplicates: u64,
    /// Resend requests sent.
    pub resends: u64,
    /// Last presence seen.
    pub online: Option<bool>,
    /// Last backlog the edge reported.
    pub backlog: u64,
    /// Last dropped-telemetry count the edge reported.
    pub dropped_telemetry: u64,
    /// Last downlink ack.
    pub down_acked: u64,
}

/// A minimal stand-in for the hub's half of the sync contract: keeps a
/// high-water mark per store, accepts events in seq order, re-acks
/// duplicates, asks for a resend on a gap, and publishes application acks.
#[derive(Debug, Clone)]
pub struct Responder {
    /// Per-store logs.
    state: Arc<Mutex<HashMap<String, StoreLog>>>,
    /// While true, batches are recorded but not acked.
    pub hold_acks: Arc<AtomicBool>,
    /// Batches received.
    pub batches: Arc<AtomicU64>,
    /// The next this-many batches are ignored, as if lost on the way.
    pub lose_batches: Arc<AtomicU64>,
    /// For publishing downlink in tests.
    client: AsyncClient,
}

impl Responder {
    /// Connects to the broker at `addr` and starts answering.
    pub async fn start(addr: SocketAddr) -> Responder {
        let mut opts = MqttOptions::new(
            format!("responder-{}", rand_suffix()),
            addr.ip().to_string(),
            addr.port(),
        );
        opts.set_max_packet_size(8 << 20, 8 << 20)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let r = Responder {
            state: Arc::default(),
            hold_acks: Arc::default(),
            batches: Arc::default(),
            lose_batches: Arc::default(),
            client: client.clone(),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let me = r.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        for k in [WanKind::Up, WanKind::Status] {
                            client
                                .subscribe(WanTopic::filter_all(k), QoS::AtLeastOnce)
                                .await
                                .expect("subscribe");
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        me.handle(&client, &p.topic, &p.payload).await
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("responder subscribed in time")
            .expect("responder task alive");
        r
    }

    async fn handle(&self, client: &AsyncClient, topic: &str, payload: &[u8]) {
        let Ok(t) = WanTopic::parse(topic) else { return };
        let store = t.store().clone();
        let msg = match envelope::decode(payload) {
            Ok(m) => m,
            Err(e) => panic!("responder got an undecodable message on {topic}: {e}"),
        };
        let reply = {
            let mut state = self.state.lock().expect("lock");
            let log = state.entry(store.to_string()).or_default();
            match msg {
                Message::Presence(p) => {
                    log.online = Some(p.online);
                    None
                }
                Message::DownAck(a) => {
                    log.down_acked = a.applied_up_to.0;
                    None
                }
                Message::UpBatch(_)
                    if self
                        .lose_batches
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok() =>
                {
                    None
                }
                Message::UpBatch(b) => {
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    log.backlog = b.backlog;
                    log.dropped_telemetry = b.dropped_telemetry;
                    let mut gap = None;
                    for e in b.events {
                        if e.seq.0 <= log.hwm {
                            log.duplicates += 1;
                        } else if e.seq.0 == log.hwm + 1 {
                            log.hwm = e.seq.0;
                            log.events.push(e);
                        } else {
                            gap = Some(log.hwm + 1);
                            break;
                        }
                    }
                    if self.hold_acks.load(Ordering::Acquire) {
                        None
                    } else if let Some(from) = gap {
                        log.resends += 1;
                        Some(Message::ResendRequest(ResendRequest { from: Seq(from) }))
                    } else {
                        Some(Message::AppAck(AppAck {
                            committed_up_to: Seq(log.hwm),
                        }))
                    }
                }
                _ => None,
            }
        };
        if let Some(m) = reply {
            let _ = client
                .publish(
                    WanTopic::Ack(store).to_string(),
                    QoS::AtLeastOnce,
                    false,
                    envelope::encode(&m),
                )
                .await;
        }
    }

    /// What the responder has of `store`.
    pub fn log(&self, store: &str) -> StoreLog {
        self.state
            .lock()
            .expect("lock")
            .get(store)
            .cloned()
            .unwrap_or_default()
    }

    /// Publishes raw bytes (for downlink tests).
    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Mosquitto broker run as a child process on a free port, so a test can
/// kill and restart it (the embedded broker cannot be stopped).
#[derive(Debug)]
pub struct Mosquitto {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its config file.
    conf: PathBuf,
    /// The process, while running.
    child: Option<Child>,
}

impl Mosquitto {
    /// The Mosquitto binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    }

    /// Starts Mosquitto on a free port with its config in `dir`.
    pub async fn start(dir: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nmessage_size_limit 0\nlog_dest none\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            child: None,
        };
        m.restart().await;
        m
    }

    /// Kills the broker (SIGKILL): every session and queued message is lost.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        let bin = Self::binary().expect("mosquitto installed");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let addr = self.addr;
        wait_until("mosquitto to listen", Duration::from_secs(10), || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }
}

/// Path of a workspace binary built by `cargo build --workspace --bins`
/// (`./test.sh` does that before the tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which ./test.sh does)",
        path.display()
    );
    path
}

/// The real `edge-agent` binary running as a child process.
#[derive(Debug)]
pub struct EdgeProcess {
    /// The process.
    child: Child,
    /// Its local HTTP endpoint.
    pub http: SocketAddr,
}

impl EdgeProcess {
    /// Spawns `edge-agent` for `store` with its journal in `dir`, syncing to
    /// the broker at `upstream`. Extra `SG_EDGE_*` variables in `env`.
    pub async fn spawn(
        store: &StoreId,
        dir: &Path,
        upstream: SocketAddr,
        env: &[(&str, &str)],
    ) -> EdgeProcess {
        let mut cmd = Command::new(bin("edge-agent"));
        cmd.arg("--store-id")
            .arg(store.as_str())
            .arg("--data-dir")
            .arg(dir)
            .arg("--upstream")
            .arg(format!("mqtt://{upstream}"))
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env("SG_EDGE_SYNC__BACKOFF_INITIAL_MS", "50")
            .env("SG_EDGE_SYNC__BACKOFF_MAX_MS", "500")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edge-agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let http = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("edge-agent listening http=") {
                    return addr.parse::<SocketAddr>().expect("addr");
                }
            }
            panic!("edge-agent exited before listening");
        })
        .await
        .expect("edge-agent started in time");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        EdgeProcess { child, http }
    }

    /// `kill -9`.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait for a graceful exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("edge-agent exits after SIGTERM")
            .expect("wait")
    }
}

/// A plain HTTP/1.1 client for the tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}
