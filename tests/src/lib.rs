//! Test harness shared by storegate's integration and end-to-end tests.
//!
//! Everything here is real: rumqttd in-process on a free port, Mosquitto as
//! a child process, the `edge-agent` binary as a child process, a TCP proxy
//! that cuts a store's WAN. Nothing binds a fixed port; every edge gets a
//! temp directory.
//!
//! - [`broker`]: embedded rumqttd on a free port.
//! - [`Proxy`] (from `storegate_sim::netfault`): a TCP proxy whose link can
//!   be cut and restored.
//! - [`Responder`] (from `storegate_sim::responder`): a minimal stand-in for
//!   the hub's side of the sync contract.
//! - [`Mosquitto`]: a real Mosquitto process that can be killed and restarted.
//! - [`EdgeProcess`]: the real `edge-agent` binary.
//! - [`service_or_skip`]: CI fails on a missing service; elsewhere the test
//!   skips, saying so.

#![allow(clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use storegate_protocol::StoreId;
pub use storegate_sim::netfault::Proxy;
pub use storegate_sim::responder::{Responder, StoreLog};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

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
