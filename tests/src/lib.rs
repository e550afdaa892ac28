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
//! - [`StorePeer`]: a client acting as a store with a real credential.
//! - [`probe`]: a raw MQTT client that reports what a broker did with an
//!   attacker's attempt.

#![allow(clippy::missing_panics_doc)]

pub mod probe;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use storegate_protocol::StoreId;
pub use storegate_sim::netfault::Proxy;
pub use storegate_sim::procs::Mosquitto;
pub use storegate_sim::responder::{Responder, StoreLog};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Installs the process's one Prometheus recorder, which the hub and the
/// edge libraries share. Idempotent.
pub fn shared_metrics() {
    let _ = storegate_broker::process::metrics_handle();
}

/// Starts an embedded rumqttd on a free loopback port.
pub fn broker() -> SocketAddr {
    shared_metrics();
    let config = storegate_broker::load_config(None, storegate_broker::HUB_CONFIG)
        .expect("shipped broker config parses");
    storegate_broker::start_embedded(config, "127.0.0.1:0".parse().expect("addr"), "test")
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

/// A child's stderr: appended to `log`, or the test's own.
fn log_to(log: Option<&Path>) -> Stdio {
    match log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_or_else(|_| Stdio::inherit(), Stdio::from),
        None => Stdio::inherit(),
    }
}

/// The real `edge-agent` binary running as a child process, with the
/// store bundle given.
#[derive(Debug)]
pub struct EdgeProcess {
    /// The process.
    child: Child,
    /// Its local HTTP endpoint.
    pub http: SocketAddr,
    /// Its device bus (store LAN broker).
    pub lan: Option<SocketAddr>,
    /// The devices allowed on its bus: `till-1` (lane 1) and `handheld-1`.
    pub till: storegate_sim::lane::DeviceLogin,
    /// The handheld.
    pub handheld: storegate_sim::lane::DeviceLogin,
}

impl EdgeProcess {
    /// Spawns `edge-agent` with the store bundle `bundle` and its journal
    /// in `dir`, syncing to the broker at `upstream` (plain, loopback).
    /// Extra `SG_EDGE_*` variables in `env`.
    pub async fn spawn(bundle: &Path, dir: &Path, upstream: SocketAddr, env: &[(&str, &str)]) -> EdgeProcess {
        Self::spawn_logged(bundle, dir, upstream, env, None).await
    }

    /// Like [`EdgeProcess::spawn`], its log (stderr) written to `log` if given.
    pub async fn spawn_logged(
        bundle: &Path,
        dir: &Path,
        upstream: SocketAddr,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> EdgeProcess {
        use storegate_edge::lan::access::DeviceRole;
        use storegate_sim::lane::DeviceLogin;
        let (till, t) = DeviceLogin::new("till-1", DeviceRole::Till, &["1"]);
        let (handheld, h) = DeviceLogin::new("handheld-1", DeviceRole::Handheld, &[]);
        let config = dir.join("edge.toml");
        let mut text = String::new();
        for d in [&t, &h] {
            text.push_str(&format!(
                "[[devices]]\nid = {:?}\nrole = \"{}\"\npassword_sha256 = {:?}\nlanes = {:?}\n\n",
                d.id,
                serde_json::to_value(d.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                d.password_sha256,
                d.lanes
            ));
        }
        std::fs::write(&config, text).expect("edge.toml written");
        let mut cmd = Command::new(bin("edge-agent"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--bundle")
            .arg(bundle)
            .arg("--data-dir")
            .arg(dir)
            .arg("--upstream")
            .arg(format!("mqtt://{upstream}"))
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .arg("--lan-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env("SG_EDGE_SYNC__BACKOFF_INITIAL_MS", "50")
            .env("SG_EDGE_SYNC__BACKOFF_MAX_MS", "500")
            .stdout(Stdio::piped())
            .stderr(log_to(log))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edge-agent");
        let (http, lan) = storegate_sim::procs::edge_listening_logged(&mut child, log)
            .await
            .expect("edge-agent started");
        EdgeProcess {
            child,
            http,
            lan,
            till,
            handheld,
        }
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

/// Which database a hub test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temp SQLite file.
    Sqlite,
    /// A fresh database on the PostgreSQL server in `STOREGATE_TEST_PG`.
    Postgres,
}

/// Creates a fresh PostgreSQL database and returns its URL, or `None` when
/// no server is reachable (skipped outside CI, a failure under CI).
pub async fn fresh_pg_database() -> Option<String> {
    match storegate_sim::pg::fresh_database("sg_test").await {
        Ok(url) => Some(url),
        Err(e) => {
            eprintln!("{e}");
            service_or_skip("PostgreSQL", false);
            None
        }
    }
}

pub use storegate_sim::pg::drop_database as drop_pg_database;

/// The admin every test hub starts with.
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// Its password.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A hub running in this process for a test.
#[derive(Debug)]
pub struct TestHub {
    /// The hub.
    pub hub: storegate_hub::Hub,
    /// `http://127.0.0.1:port`.
    pub api: String,
    /// Its embedded broker.
    pub broker: SocketAddr,
    /// The database URL.
    pub database_url: String,
    /// An admin access token.
    pub admin_token: String,
    /// Keeps the SQLite file alive.
    _dir: tempfile::TempDir,
}

/// Hub settings for a test: ports 0, temp dir, the given database.
pub fn hub_settings(dir: &Path, database_url: &str) -> storegate_hub::Settings {
    let mut s = storegate_hub::Settings {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    s.database.url = database_url.to_owned();
    s.database.max_connections = 8;
    s.broker.listen = "127.0.0.1:0".into();
    s.broker.client_id = format!("hub-test-{}", storegate_hub::auth::new_id());
    s.api.listen = "127.0.0.1:0".into();
    s.auth.bootstrap_admin_email = Some(ADMIN_EMAIL.into());
    s.auth.bootstrap_admin_password = Some(ADMIN_PASSWORD.into());
    s
}

/// Starts a hub on `backend`; `None` if that backend is unavailable here.
pub async fn spawn_hub(backend: Backend) -> Option<TestHub> {
    spawn_hub_with(backend, |_| {}).await
}

/// Like [`spawn_hub`], with a chance to change settings first.
pub async fn spawn_hub_with(
    backend: Backend,
    tweak: impl FnOnce(&mut storegate_hub::Settings),
) -> Option<TestHub> {
    shared_metrics();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("hub.db").display()),
        Backend::Postgres => fresh_pg_database().await?,
    };
    let mut settings = hub_settings(dir.path(), &database_url);
    tweak(&mut settings);
    if !settings.broker.url.is_empty() && settings.wan.pki_dir.is_none() {
        // Hubs on an external broker share a CA made beforehand (`hub ca init`).
        storegate_hub::pki::init(
            &storegate_hub::pki::PkiDir(dir.path().join("pki")),
            "storegate test chain",
            &["localhost".into(), "127.0.0.1".into()],
            &settings.broker.client_id,
        )
        .expect("test PKI");
    }
    let hub = storegate_hub::start(settings, CancellationToken::new())
        .await
        .expect("hub starts");
    let api = format!("http://{}", hub.api_addr);
    let broker = hub.broker_addr.parse().expect("broker addr");
    let admin_token = token(&api, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("admin logs in");
    wait_until(
        "hub subscribed at its broker",
        Duration::from_secs(10),
        || async { hub.link.subscribed.load(std::sync::atomic::Ordering::Acquire) },
    )
    .await;
    Some(TestHub {
        hub,
        api,
        broker,
        database_url,
        admin_token,
        _dir: dir,
    })
}

impl TestHub {
    /// Provisions `store` at this hub (as `hub store provision` does) for
    /// an edge reaching its plain loopback listener; returns the bundle's
    /// path, written into `dir`.
    pub async fn bundle(&self, store: &StoreId, dir: &Path) -> PathBuf {
        storegate_sim::trust::bundle_at_hub(&self.hub, store, &format!("mqtt://{}", self.broker), dir)
            .await
            .expect("store provisioned")
    }

    /// Provisions `store` at this hub; returns its credential.
    pub async fn credential(&self, store: &str) -> std::sync::Arc<storegate_edge::trust::EdgeTrust> {
        let store = StoreId::parse(store).expect("valid store id");
        let broker = match self.hub.tls_addr {
            Some(a) => format!("mqtts://{a}"),
            None => format!("mqtt://{}", self.broker),
        };
        let bundle = storegate_sim::trust::provision_at_hub(&self.hub.db, &self.hub.pki_dir, &store, &broker)
            .await
            .expect("store provisioned");
        std::sync::Arc::new(storegate_edge::trust::EdgeTrust::from_bundle(&bundle).expect("bundle usable"))
    }

    /// A new store credential and a client acting as that store on the
    /// hub's plain loopback listener.
    pub async fn store_peer(&self, store: &str) -> StorePeer {
        let trust = self.credential(store).await;
        StorePeer::connect(self.broker, &format!("edge-{store}"), trust, false).await
    }

    /// Stops the hub and drops its PostgreSQL database.
    pub async fn stop(self) {
        let url = self.database_url.clone();
        self.hub.stop().await;
        if url.starts_with("postgres") {
            drop_pg_database(&url).await;
        }
    }
}

/// Logs in with the password grant; returns the access token.
pub async fn token(api: &str, email: &str, password: &str) -> Result<String, String> {
    let resp = http()
        .post(format!("{api}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username={}&password={}",
            urlencode(email),
            urlencode(password)
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| v.to_string())
    } else {
        Err(format!("{status}: {v}"))
    }
}

/// Percent-encodes for a form body.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain MQTT client for tests: publishes raw bytes, collects what
/// arrives on its subscriptions.
#[derive(Debug)]
pub struct MqttPeer {
    /// The client.
    pub client: rumqttc::AsyncClient,
    /// Messages received: (topic, payload).
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// The task polling the connection; aborted on drop, so a dropped peer
    /// does not reconnect and take its client id back from a newer one.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttPeer {
    /// Connects to `addr` and subscribes to `filters`; returns when subscribed.
    pub async fn connect(addr: SocketAddr, client_id: &str, filters: &[String]) -> MqttPeer {
        Self::connect_with(addr, client_id, filters, None).await
    }

    /// Connects as the store device `login` (its credentials, a client id
    /// of its own) and subscribes to `filters`.
    pub async fn connect_device(
        addr: SocketAddr,
        login: &storegate_sim::lane::DeviceLogin,
        filters: &[String],
    ) -> MqttPeer {
        Self::connect_opts(login.options(addr), filters, None).await
    }

    /// Like [`MqttPeer::connect`], over TLS with `tls` if given.
    pub async fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        filters: &[String],
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> MqttPeer {
        let opts = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        Self::connect_opts(opts, filters, tls).await
    }

    /// Connects with `opts`, over TLS with `tls` if given.
    pub async fn connect_opts(
        mut opts: rumqttc::MqttOptions,
        filters: &[String],
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> MqttPeer {
        use rumqttc::{Event, Packet, QoS};
        opts.set_max_packet_size(16 << 20, 16 << 20)
            .set_keep_alive(Duration::from_secs(5));
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let filters = filters.to_vec();
        let c = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut pending = 0usize;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        pending = filters.len();
                        for f in &filters {
                            let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                        if pending == 0
                            && let Some(r) = ready.take()
                        {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        pending = pending.saturating_sub(1);
                        if pending == 0
                            && let Some(r) = ready.take()
                        {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("peer subscribed in time")
            .expect("peer task alive");
        MqttPeer { client, rx, task }
    }

    /// Publishes QoS 1.
    pub async fn publish(&self, topic: impl Into<String>, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
    }

    /// Publishes QoS 1, retained.
    pub async fn publish_retained(&self, topic: impl Into<String>, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish queued");
    }

    /// The next message, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok().flatten()
    }
}

/// A test client acting as a store: its credential signs what it sends and
/// checks what the hub sends back, like an edge agent's sync engine.
#[derive(Debug)]
pub struct StorePeer {
    /// The MQTT connection.
    pub mqtt: MqttPeer,
    /// The store.
    pub store: StoreId,
    /// Its credential.
    pub trust: std::sync::Arc<storegate_edge::trust::EdgeTrust>,
}

impl StorePeer {
    /// Connects as `store` with `trust` (client id `client_id`), subscribed
    /// to every topic the hub sends the store (`ack`, `down`, RPC answers
    /// and requests); over TLS if `tls`.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        trust: std::sync::Arc<storegate_edge::trust::EdgeTrust>,
        tls: bool,
    ) -> StorePeer {
        use storegate_protocol::topic::WanTopic;
        let store = trust.store.clone();
        let filters: Vec<String> = WanTopic::all_of(&store)
            .iter()
            .filter(|t| t.sender() == storegate_protocol::topic::Sender::Hub)
            .map(ToString::to_string)
            .collect();
        let mqtt = MqttPeer::connect_with(
            addr,
            client_id,
            &filters,
            tls.then(|| trust.tls.clone()).flatten(),
        )
        .await;
        StorePeer { mqtt, store, trust }
    }

    /// The envelope of `message` for `topic`, signed with this store's key.
    pub fn seal(
        &self,
        topic: &storegate_protocol::topic::WanTopic,
        message: &storegate_protocol::Message,
    ) -> Vec<u8> {
        self.trust.sealer.seal(topic, message)
    }

    /// Publishes `message` on `topic`, signed.
    pub async fn send(
        &self,
        topic: &storegate_protocol::topic::WanTopic,
        message: &storegate_protocol::Message,
    ) {
        self.mqtt
            .publish(topic.to_string(), self.seal(topic, message))
            .await;
    }

    /// Publishes `message` on `topic` (a WAN topic), signed.
    pub async fn publish(&self, topic: impl Into<String>, message: storegate_protocol::Message) {
        let topic = storegate_protocol::topic::WanTopic::parse(&topic.into()).expect("a WAN topic");
        self.send(&topic, &message).await;
    }

    /// Publishes `message` retained on `topic`, signed.
    pub async fn publish_retained(&self, topic: impl Into<String>, message: storegate_protocol::Message) {
        let topic = storegate_protocol::topic::WanTopic::parse(&topic.into()).expect("a WAN topic");
        self.mqtt
            .publish_retained(topic.to_string(), self.seal(&topic, &message))
            .await;
    }

    /// The next message from the hub with its topic, checked, waiting at
    /// most `timeout`; panics if it fails the check.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, storegate_protocol::Message)> {
        let (topic, payload) = self.mqtt.next(timeout).await?;
        let wan = storegate_protocol::topic::WanTopic::parse(&topic).expect("a WAN topic");
        let body = storegate_protocol::seal::open(&payload, &wan, &topic, &self.trust.hub_keys, false)
            .unwrap_or_else(|e| panic!("the hub's message on {topic} fails its check: {e}"));
        Some((
            topic,
            storegate_protocol::envelope::decode_body(body).expect("hub messages decode"),
        ))
    }

    /// Publishes `message` on this store's `up` topic, signed.
    pub async fn send_up(&self, message: &storegate_protocol::Message) {
        self.send(
            &storegate_protocol::topic::WanTopic::Up(self.store.clone()),
            message,
        )
        .await;
    }

    /// The next message from the hub, checked against the hub's key
    /// (panics if none comes in 15 s or it fails the check).
    ///
    /// The hub's `ResendUnacked` invitations are skipped: a hub sends one to
    /// every store it knows whenever it subscribes without a broker session
    /// (at its start, racing a test's first exchange); [`StorePeer::next_any`]
    /// returns them too.
    pub async fn next_message(&mut self) -> storegate_protocol::Message {
        loop {
            match self.next_any().await {
                storegate_protocol::Message::ResendUnacked(_) => continue,
                m => return m,
            }
        }
    }

    /// The next message from the hub, whatever it is (checked; panics if
    /// none comes in 15 s).
    pub async fn next_any(&mut self) -> storegate_protocol::Message {
        self.next(Duration::from_secs(15))
            .await
            .expect("a message from the hub")
            .1
    }
}

/// Runs `$body` (an async block taking a [`Backend`]) once per backend,
/// as `<name>_sqlite` and `<name>_postgres` tests.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::Backend::Postgres).await
            }
        }
    };
}

/// The real `hub` binary running as a child process.
#[derive(Debug)]
pub struct HubProcess {
    /// The process.
    child: Child,
    /// Its REST API.
    pub api: SocketAddr,
    /// Its embedded broker.
    pub broker: SocketAddr,
    /// Its data directory (PKI in `pki/`).
    pub dir: PathBuf,
    /// Its database.
    pub database_url: String,
}

/// Runs the `hub` binary as an operator would (`hub --data-dir DIR
/// --database-url URL ARGS`); panics if it fails. Returns its stdout.
pub async fn hub_cli(dir: &Path, database_url: &str, args: &[&str]) -> String {
    let out = Command::new(bin("hub"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(database_url)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("run hub");
    assert!(
        out.status.success(),
        "hub {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which broker a [`HubProcess`] uses.
#[derive(Debug, Clone, Copy)]
pub enum HubBroker {
    /// Its embedded broker, on a port of its own choosing (port 0: read back
    /// from what the hub prints; a restarted hub gets another).
    Embedded,
    /// A broker of its own (Mosquitto) at this address.
    External(SocketAddr),
}

impl HubProcess {
    /// Spawns `hub` on `database_url` with its embedded broker on a port
    /// of its own; extra environment in `env`.
    pub async fn spawn(dir: &Path, database_url: &str, env: &[(&str, &str)]) -> HubProcess {
        Self::spawn_on(dir, database_url, HubBroker::Embedded, env).await
    }

    /// Spawns `hub` on `database_url` with `broker`; extra environment in
    /// `env`.
    pub async fn spawn_on(
        dir: &Path,
        database_url: &str,
        broker: HubBroker,
        env: &[(&str, &str)],
    ) -> HubProcess {
        Self::spawn_logged(dir, database_url, broker, env, None).await
    }

    /// Like [`HubProcess::spawn_on`], its log (stderr) written to `log` if given.
    pub async fn spawn_logged(
        dir: &Path,
        database_url: &str,
        broker: HubBroker,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> HubProcess {
        if matches!(broker, HubBroker::External(_)) && !dir.join("pki").join("ca.pem").exists() {
            // Hubs on an external broker share a CA made beforehand.
            hub_cli(dir, database_url, &["ca", "init"]).await;
        }
        let mut cmd = Command::new(bin("hub"));
        cmd.arg("--database-url")
            .arg(database_url)
            .arg("--data-dir")
            .arg(dir);
        match broker {
            HubBroker::Embedded => cmd.arg("--broker-listen").arg("127.0.0.1:0"),
            HubBroker::External(addr) => cmd.arg("--broker").arg(format!("mqtt://{addr}")),
        };
        cmd.arg("--api-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env("SG_HUB_BROKER__CLIENT_ID", "hub-crash-test")
            .env("SG_HUB_AUTH__BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("SG_HUB_AUTH__BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(log_to(log))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hub");
        let (api, broker) = storegate_sim::procs::hub_listening_logged(&mut child, log)
            .await
            .expect("hub started");
        let ready = format!("http://{api}/readyz");
        wait_until(
            "hub ready (database up, consuming)",
            Duration::from_secs(30),
            || {
                let ready = ready.clone();
                async move {
                    http()
                        .get(&ready)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
        HubProcess {
            child,
            api,
            broker,
            dir: dir.to_path_buf(),
            database_url: database_url.to_owned(),
        }
    }

    /// Provisions `store` with `hub store provision` for an edge reaching
    /// `broker`; writes the bundle into `out_dir` and returns its path.
    pub async fn provision(&self, store: &StoreId, broker: &str, out_dir: &Path) -> PathBuf {
        provision_with_cli(&self.dir, &self.database_url, store, broker, out_dir).await
    }

    /// Waits for the process to exit by itself.
    pub async fn exited(mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("hub exited in time")
            .expect("wait")
    }

    /// `kill -9` (its embedded broker dies with it).
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// `hub store provision STORE --broker BROKER --out OUT_DIR/STORE.bundle.toml`
/// against a hub's data directory and database (the hub may be running or
/// not). Returns the bundle's path.
pub async fn provision_with_cli(
    dir: &Path,
    database_url: &str,
    store: &StoreId,
    broker: &str,
    out_dir: &Path,
) -> PathBuf {
    std::fs::create_dir_all(out_dir).expect("bundle dir");
    let out = out_dir.join(format!("{store}.bundle.toml"));
    let _ = std::fs::remove_file(&out);
    let shown = out.display().to_string();
    hub_cli(
        dir,
        database_url,
        &[
            "store",
            "provision",
            store.as_str(),
            "--broker",
            broker,
            "--out",
            &shown,
        ],
    )
    .await;
    out
}

/// Loads a store bundle file as its edge would.
pub fn load_bundle(path: &Path) -> std::sync::Arc<storegate_edge::trust::EdgeTrust> {
    std::sync::Arc::new(storegate_edge::trust::EdgeTrust::from_bundle_file(path).expect("bundle loads"))
}

/// A REST client for one principal.
#[derive(Debug, Clone)]
pub struct Rest {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Bearer token.
    pub token: String,
}

/// A REST answer: status, JSON body (`Null` if none), headers.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Rest {
    /// A client for `base` with `token`.
    pub fn new(base: &str, token: &str) -> Rest {
        Rest {
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// Any call; `body` as JSON; extra headers.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = http()
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            body,
            headers,
        }
    }

    /// GET that must succeed.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let a = self.call(reqwest::Method::GET, path, None, &[]).await;
        assert!(
            (200..300).contains(&a.status),
            "GET {path}: {} {}",
            a.status,
            a.body
        );
        a.body
    }

    /// PUT that must succeed.
    pub async fn put(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let a = self.call(reqwest::Method::PUT, path, Some(&body), &[]).await;
        assert!(
            (200..300).contains(&a.status),
            "PUT {path}: {} {}",
            a.status,
            a.body
        );
        a.body
    }

    /// POST that must succeed.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let a = self.call(reqwest::Method::POST, path, Some(&body), &[]).await;
        assert!(
            (200..300).contains(&a.status),
            "POST {path}: {} {}",
            a.status,
            a.body
        );
        a.body
    }
}
