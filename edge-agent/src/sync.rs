//! The sync engine: drains the outbox to the hub and applies the downlink.
//!
//! [`SyncCore`] is the state machine (no I/O: methods change state and say
//! what to do). [`run`] is the thin loop that drives it with rumqttc and
//! the journal.
//!
//! # Contract (DESIGN.md §4, edge half)
//!
//! - Outbox rows are published in seq order, in batches bounded by count
//!   and bytes, QoS 1, at most `sync.window` batches awaiting the hub.
//! - MQTT PUBACK means only that the broker has the batch. Rows are deleted
//!   when the hub's application ack (`AppAck { committed_up_to }`) arrives.
//! - `ResendRequest { from }` means the hub committed up to `from - 1` and
//!   wants the rest again: the engine rewinds.
//! - `ResendUnacked` means the hub (re)subscribed without its broker
//!   session, so what was sent while it was away may be gone (a store that
//!   reconnected before the hub resent into the void): the engine rewinds
//!   and sends everything unacked again, implying no ack.
//! - After ANY (re)connect everything unacked is sent again: rumqttc drops
//!   its pending queue when the broker lost the session, and a broker's
//!   PUBACK was never a promise the hub got it. The hub drops duplicates by
//!   seq, so resending is always safe.
//! - If the hub acks nothing for `sync.ack_timeout_ms`, the engine rewinds
//!   and resends too.
//! - Reconnects back off exponentially with jitter.
//! - Presence: a retained `Presence { online: true }` on connect; the last
//!   will publishes `online: false` if the connection dies.
//! - Downlink batches are applied in downlink seq order, idempotently, and
//!   acked with `DownAck`. A malformed message is logged, counted and
//!   skipped; the stream goes on.
//! - Every message the edge sends is signed with its store key, bound to
//!   its topic; every message it receives must be signed by a hub key
//!   from its bundle for the topic it came on, or it is dropped with no
//!   effect (counted, logged once per burst). Whatever the signature, an
//!   ack (or the ack a resend request implies) above the highest seq this
//!   engine has published is ignored: it could only delete what the hub
//!   never saw.
//! - The journal's commit path never waits on any of this.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, Event, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use storegate_broker::burst::BurstLog;
use storegate_protocol::endpoint::BrokerUrl;
use storegate_protocol::envelope::{
    self, DownAck, Message, PROTOCOL_VERSION, Presence, up_batch_body_from_encoded,
};
use storegate_protocol::rpc::{RpcRequest, RpcResponse};
use storegate_protocol::seal::Sealer;
use storegate_protocol::topic::{RpcLeg, RpcSide, WanTopic};
use storegate_protocol::{Seq, StoreId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::journal::{DownApplied, Journal, now_ms};
use crate::settings::SyncSettings;
use crate::trust::EdgeTrust;

/// A batch published and not yet acked.
#[derive(Debug, Clone, Copy)]
struct Inflight {
    /// Its last seq.
    last: Seq,
    /// When it was published.
    sent_at: Instant,
}

/// The sync state machine. No I/O.
#[derive(Debug)]
pub struct SyncCore {
    /// Hub committed up to.
    acked: Seq,
    /// Published up to, on this connection.
    sent: Seq,
    /// The highest seq ever published by this engine (not rewound): no
    /// honest ack goes above it.
    published_max: Seq,
    /// Batches awaiting the hub's ack, oldest first.
    inflight: VecDeque<Inflight>,
    /// Connected to the broker.
    connected: bool,
    /// Most batches awaiting the hub.
    window: usize,
}

impl SyncCore {
    /// Starts from what the journal says the hub has committed.
    pub fn new(acked: Seq, window: usize) -> Self {
        SyncCore {
            acked,
            sent: acked,
            published_max: acked,
            inflight: VecDeque::new(),
            connected: false,
            window: window.max(1),
        }
    }

    /// Connected (or reconnected): everything unacked goes again.
    pub fn on_connected(&mut self) {
        self.connected = true;
        self.rewind();
    }

    /// Lost the connection.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.rewind();
    }

    fn rewind(&mut self) {
        self.sent = self.acked;
        self.inflight.clear();
    }

    /// The hub asks for everything unacked again (`ResendUnacked`).
    pub fn on_resend_unacked(&mut self) {
        self.rewind();
    }

    /// Where the next batch starts, if one may be sent now.
    pub fn next_from(&self) -> Option<Seq> {
        (self.connected && self.inflight.len() < self.window).then(|| self.sent.next())
    }

    /// A batch ending at `last` was handed to the MQTT client.
    pub fn on_published(&mut self, last: Seq, now: Instant) {
        self.sent = self.sent.max(last);
        self.published_max = self.published_max.max(last);
        self.inflight.push_back(Inflight { last, sent_at: now });
    }

    /// Whether an ack up to `n` is possible: at most what was published.
    pub fn could_ack(&self, n: Seq) -> bool {
        n <= self.published_max
    }

    /// The hub committed up to `n`. Returns `Some(m)` when that is news and
    /// the journal should delete up to `m`. An ack is capped at what this
    /// engine published: nothing unpublished is ever deleted, yet a hub
    /// ahead of the journal (its ack of events sent before a crash, when
    /// deletes were still pending) still moves the store on.
    pub fn on_app_ack(&mut self, n: Seq) -> Option<Seq> {
        let n = n.min(self.published_max);
        if n <= self.acked {
            return None;
        }
        self.acked = n;
        while self.inflight.front().is_some_and(|b| b.last <= n) {
            self.inflight.pop_front();
        }
        self.sent = self.sent.max(n);
        Some(n)
    }

    /// The hub wants everything from `from` again; it committed up to
    /// `from - 1`. Returns the implied ack (capped as in
    /// [`SyncCore::on_app_ack`]), if it is news.
    pub fn on_resend(&mut self, from: Seq) -> Option<Seq> {
        let ack = self.on_app_ack(Seq(from.0.saturating_sub(1)));
        self.rewind();
        ack
    }

    /// Whether a resend request from `from` asks for what was already
    /// acked (and deleted): a hub restored from an old backup, or an old
    /// request replayed.
    pub fn is_stale_resend(&self, from: Seq) -> bool {
        from.0.saturating_sub(1) < self.acked.0
    }

    /// Called periodically: if the oldest batch waited longer than
    /// `timeout`, rewind and return true.
    pub fn on_tick(&mut self, now: Instant, timeout: Duration) -> bool {
        match self.inflight.front() {
            Some(b) if now.duration_since(b.sent_at) >= timeout => {
                self.rewind();
                true
            }
            _ => false,
        }
    }

    /// Hub committed up to.
    pub fn acked(&self) -> Seq {
        self.acked
    }

    /// Published up to.
    pub fn sent(&self) -> Seq {
        self.sent
    }

    /// Batches awaiting the hub.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

/// Exponential backoff with jitter: each delay is drawn from
/// `[d/2, d]` where `d` doubles from `initial` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    initial: Duration,
    /// Ceiling.
    max: Duration,
    /// Failures since the last success.
    attempt: u32,
}

impl Backoff {
    /// A backoff from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Connected: start again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Connection state the status endpoint shows.
#[derive(Debug, Default)]
pub struct LinkStatus {
    /// Connected to the upstream broker now.
    pub connected: AtomicBool,
    /// Successful connections since start.
    pub connects: AtomicU64,
    /// Malformed, unsigned, forged or unexpected downlink messages rejected.
    pub rejected: AtomicU64,
    /// Acks above anything published, ignored.
    pub acks_beyond: AtomicU64,
}

/// A request to the hub over the RPC topic, for [`SyncHandle::call`].
#[derive(Debug)]
struct RpcOut {
    request: RpcRequest,
    reply: oneshot::Sender<RpcResponse>,
}

/// Handle for other modules: RPC calls to the hub and downlink notifications.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    /// RPC requests for the loop to publish.
    rpc_tx: mpsc::Sender<RpcOut>,
    /// Downlink items as they are applied.
    applied_tx: broadcast::Sender<Arc<DownApplied>>,
    /// Connection state.
    pub status: Arc<LinkStatus>,
}

/// Why an RPC call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Not connected to the broker: the hub cannot be asked now.
    #[error("hub unreachable")]
    Offline,
    /// No answer before the deadline.
    #[error("no answer from the hub in time")]
    Timeout,
}

impl SyncHandle {
    /// Sends `request` to the hub and waits for its response, at most
    /// `request.timeout_ms`.
    pub async fn call(&self, request: RpcRequest) -> Result<RpcResponse, RpcError> {
        if !self.status.connected.load(Ordering::Acquire) {
            return Err(RpcError::Offline);
        }
        let timeout = Duration::from_millis(u64::from(request.timeout_ms));
        let (reply, rx) = oneshot::channel();
        self.rpc_tx
            .send(RpcOut { request, reply })
            .await
            .map_err(|_| RpcError::Offline)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(RpcError::Offline),
            Err(_) => Err(RpcError::Timeout),
        }
    }

    /// Downlink items as they are applied (tasks and config for devices).
    pub fn subscribe_applied(&self) -> broadcast::Receiver<Arc<DownApplied>> {
        self.applied_tx.subscribe()
    }
}

/// What the sync loop needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// This store.
    pub store: StoreId,
    /// Upstream broker.
    pub upstream: BrokerUrl,
    /// Signing, checking, TLS.
    pub trust: Arc<EdgeTrust>,
    /// Stable MQTT client id.
    pub client_id: String,
    /// Credentials, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Batching, window, timeouts.
    pub sync: SyncSettings,
}

/// Creates the handle and the future that runs the sync loop until
/// `shutdown` is cancelled.
pub fn spawn(
    cfg: SyncConfig,
    journal: Journal,
    shutdown: CancellationToken,
) -> (SyncHandle, impl Future<Output = ()> + Send + 'static) {
    let (rpc_tx, rpc_rx) = mpsc::channel(256);
    let (applied_tx, _) = broadcast::channel(256);
    let status = Arc::new(LinkStatus::default());
    let handle = SyncHandle {
        rpc_tx,
        applied_tx: applied_tx.clone(),
        status: status.clone(),
    };
    let fut = run(cfg, journal, status, rpc_rx, applied_tx, shutdown);
    (handle, fut)
}

fn presence(sealer: &Sealer, store: &StoreId, online: bool) -> Vec<u8> {
    sealer.seal(
        &WanTopic::Status(store.clone()),
        &Message::Presence(Presence {
            store: store.clone(),
            online,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            at_ms: now_ms(),
        }),
    )
}

/// An uplink batch read and encoded ahead by the reader task.
#[derive(Debug)]
struct ReadyBatch {
    /// Which restart of the reader produced it.
    generation: u64,
    /// Its last seq.
    last: Seq,
    /// Events in it.
    events: usize,
    /// The encoded `UpBatch` envelope.
    bytes: Vec<u8>,
}

/// Reads outbox batches ahead of the sync loop, so the loop never waits on
/// the disk (nor on signing). Starts over wherever the loop says (a new
/// generation); sends batches into a small channel, so it reads at most a
/// batch or two ahead.
async fn reader(
    journal: Journal,
    store: StoreId,
    sealer: Sealer,
    sync: SyncSettings,
    mut restart: watch::Receiver<(u64, Seq)>,
    out: mpsc::Sender<ReadyBatch>,
    shutdown: CancellationToken,
) {
    let outbox_changed = journal.outbox_changed();
    let up_topic = WanTopic::Up(store.clone()).to_string();
    let (mut generation, mut cursor) = *restart.borrow_and_update();
    loop {
        if restart.has_changed().unwrap_or(false) {
            (generation, cursor) = *restart.borrow_and_update();
        }
        // (Every path that waits on `restart.changed()` takes the new value
        // itself, because `changed` marks it seen.)
        let raw = match journal
            .fetch_batch(cursor, sync.batch_max_events, sync.batch_max_bytes)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read outbox; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let Some(raw) = raw else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = outbox_changed.notified() => {}
                r = restart.changed() => {
                    if r.is_err() {
                        return;
                    }
                    (generation, cursor) = *restart.borrow_and_update();
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let (first, last) = (raw.first, raw.last);
        let stats = journal.stats();
        let backlog = stats.next_seq.saturating_sub(1).saturating_sub(last.0);
        let body = up_batch_body_from_encoded(
            &store,
            (first, last),
            raw.events,
            &raw.bytes,
            backlog,
            stats.dropped_telemetry,
        );
        let batch = ReadyBatch {
            generation,
            last,
            events: raw.events,
            bytes: sealer.seal_body(&up_topic, &body),
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = out.send(batch) => {
                if r.is_err() {
                    return;
                }
                cursor = last.next();
            }
            r = restart.changed() => {
                if r.is_err() {
                    return;
                }
                // `changed` marked the value seen; take it now.
                (generation, cursor) = *restart.borrow_and_update();
            }
        }
    }
}

struct Loop {
    cfg: SyncConfig,
    journal: Journal,
    client: AsyncClient,
    core: SyncCore,
    status: Arc<LinkStatus>,
    applied_tx: broadcast::Sender<Arc<DownApplied>>,
    pending_rpc: HashMap<u128, (oneshot::Sender<RpcResponse>, Instant)>,
    topics: Topics,
    /// Current reader generation; batches from older ones are stale.
    generation: u64,
    /// Restarts the reader at a seq.
    restart_tx: watch::Sender<(u64, Seq)>,
    /// Hub ack whose outbox rows are still to be deleted.
    pending_delete: Option<Seq>,
    /// Throttles refusal logs.
    refusals: BurstLog,
    /// When a stale resend request last made the engine rewind.
    last_stale_resend: Option<Instant>,
}

struct Topics {
    up: String,
    ack: String,
    down: String,
    status: String,
    rpc_req: String,
    rpc_res: String,
}

async fn run(
    cfg: SyncConfig,
    journal: Journal,
    status: Arc<LinkStatus>,
    mut rpc_rx: mpsc::Receiver<RpcOut>,
    applied_tx: broadcast::Sender<Arc<DownApplied>>,
    shutdown: CancellationToken,
) {
    let store = cfg.store.clone();
    let topics = Topics {
        up: WanTopic::Up(store.clone()).to_string(),
        ack: WanTopic::Ack(store.clone()).to_string(),
        down: WanTopic::Down(store.clone()).to_string(),
        status: WanTopic::Status(store.clone()).to_string(),
        rpc_req: WanTopic::Rpc(store.clone(), RpcSide::Edge, RpcLeg::Req).to_string(),
        rpc_res: WanTopic::Rpc(store.clone(), RpcSide::Edge, RpcLeg::Res).to_string(),
    };
    let mut opts = MqttOptions::new(
        cfg.client_id.clone(),
        cfg.upstream.host.clone(),
        cfg.upstream.port,
    );
    if cfg.upstream.tls
        && let Some(tls) = &cfg.trust.tls
    {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    opts.set_clean_session(false)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(cfg.sync.max_packet_bytes, cfg.sync.max_packet_bytes)
        .set_inflight(100)
        .set_last_will(LastWill::new(
            topics.status.clone(),
            presence(&cfg.trust.sealer, &store, false),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((u, p)) = &cfg.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 128);
    let acked = Seq(journal.stats().acked_up_to);
    let (restart_tx, restart_rx) = watch::channel((0u64, acked.next()));
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    let reader_task = tokio::spawn(reader(
        journal.clone(),
        cfg.store.clone(),
        cfg.trust.sealer.clone(),
        cfg.sync.clone(),
        restart_rx,
        ready_tx,
        shutdown.clone(),
    ));
    let mut net = eventloop.network_options();
    // Acks and small batches must not wait for Nagle's algorithm.
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let mut me = Loop {
        core: SyncCore::new(acked, cfg.sync.window),
        generation: 0,
        restart_tx,
        pending_delete: None,
        refusals: BurstLog::new(Duration::from_secs(10)),
        last_stale_resend: None,
        cfg,
        journal,
        client,
        status,
        applied_tx,
        pending_rpc: HashMap::new(),
        topics,
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(me.cfg.sync.backoff_initial_ms),
        Duration::from_millis(me.cfg.sync.backoff_max_ms),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    me.on_connected(ack.session_present);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => me.on_publish(p).await,
                Ok(_) => {}
                Err(e) => {
                    if me.status.connected.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "upstream connection lost");
                        metrics::gauge!("edge_upstream_connected").set(0.0);
                    } else if matches!(
                        e,
                        rumqttc::ConnectionError::ConnectionRefused(_) | rumqttc::ConnectionError::Tls(_)
                    ) {
                        // The broker refuses this store (revoked, expired,
                        // wrong CA or client id): say so, once per burst.
                        if let Some(suppressed) = me.refusals.note("connect_refused") {
                            tracing::warn!(error = %e, suppressed, "the upstream broker refuses this store's connection");
                        }
                    } else {
                        tracing::debug!(error = %e, "upstream connect failed");
                    }
                    me.core.on_disconnected();
                    me.restart_reader();
                    me.fail_pending_rpc();
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            },
            Some(batch) = ready_rx.recv(), if me.core.next_from().is_some() => me.publish_ready(batch),
            Some(out) = rpc_rx.recv() => me.send_rpc(out),
            _ = tick.tick() => {
                let now = Instant::now();
                if me.core.on_tick(now, me.cfg.sync.ack_timeout()) {
                    tracing::warn!(acked = me.core.acked().0, "no application ack in time; resending everything unacked");
                    metrics::counter!("edge_sync_ack_timeouts_total").increment(1);
                    me.restart_reader();
                }
                me.pending_rpc.retain(|_, (_, deadline)| *deadline > now);
                me.flush_deletes();
            }
        }
    }
    me.flush_deletes();
    // Graceful: say we are going offline, then disconnect.
    if me.status.connected.load(Ordering::Acquire) {
        let _ = me.client.try_publish(
            &me.topics.status,
            QoS::AtLeastOnce,
            true,
            presence(&me.cfg.trust.sealer, &me.cfg.store, false),
        );
        let _ = me.client.try_disconnect();
        let drain = async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    let _ = reader_task.await;
    tracing::info!("sync engine stopped");
}

impl Loop {
    fn on_connected(&mut self, session_present: bool) {
        tracing::info!(
            session_present,
            acked = self.core.acked().0,
            "connected to upstream broker; resending everything unacked"
        );
        self.status.connected.store(true, Ordering::Release);
        self.status.connects.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("edge_upstream_connected").set(1.0);
        metrics::counter!("edge_sync_connects_total").increment(1);
        self.core.on_connected();
        self.restart_reader();
        for t in [&self.topics.ack, &self.topics.down, &self.topics.rpc_res] {
            if let Err(e) = self.client.try_subscribe(t.as_str(), QoS::AtLeastOnce) {
                tracing::warn!(error = %e, topic = %t, "subscribe not queued");
            }
        }
        let _ = self.client.try_publish(
            &self.topics.status,
            QoS::AtLeastOnce,
            true,
            presence(&self.cfg.trust.sealer, &self.cfg.store, true),
        );
        // The hub may have downlink waiting; tell it where we are.
        self.send_down_ack(Seq(self.journal.stats().down_applied));
    }

    /// Tells the reader to start again at the core's next seq (after any
    /// rewind); batches it read before are discarded.
    fn restart_reader(&mut self) {
        self.generation += 1;
        let _ = self.restart_tx.send((self.generation, self.core.sent().next()));
    }

    /// Publishes a batch the reader prepared, if it is still wanted.
    fn publish_ready(&mut self, b: ReadyBatch) {
        let Some(expected) = self.core.next_from() else {
            return self.restart_reader();
        };
        if b.generation != self.generation || b.last < expected {
            return; // read before a rewind or an ack; stale
        }
        match self
            .client
            .try_publish(&self.topics.up, QoS::AtLeastOnce, false, b.bytes)
        {
            Ok(()) => {
                self.core.on_published(b.last, Instant::now());
                metrics::counter!("edge_sync_batches_published_total").increment(1);
                metrics::counter!("edge_sync_events_published_total").increment(b.events as u64);
            }
            Err(ClientError::TryRequest(_)) | Err(ClientError::Request(_)) => {
                // The client's queue is full: read it again later.
                self.restart_reader();
            }
        }
    }

    async fn on_publish(&mut self, p: Publish) {
        let topic = p.topic.clone();
        let Ok(wan) = WanTopic::parse(&topic) else {
            return self.reject(&topic, "unknown", "message on a topic this edge does not read");
        };
        let trust = &self.cfg.trust;
        let body = match storegate_protocol::seal::open(
            &p.payload,
            &wan,
            &topic,
            &trust.hub_keys,
            trust.accept_unsigned,
        ) {
            Ok(b) => b,
            Err(why) => return self.reject(&topic, why.name(), &why.to_string()),
        };
        let msg = match envelope::decode_body(body) {
            Ok(m) => m,
            Err(e) => return self.reject(&topic, "undecodable", &format!("undecodable: {e}")),
        };
        if topic == self.topics.ack {
            match msg {
                Message::AppAck(a) => {
                    if !self.core.could_ack(a.committed_up_to) {
                        self.ack_beyond(a.committed_up_to);
                    }
                    if let Some(n) = self.core.on_app_ack(a.committed_up_to) {
                        self.commit_ack(n);
                    }
                }
                Message::ResendRequest(r) if self.core.is_stale_resend(r.from) => {
                    // What is asked for is gone (acked, deleted); what is
                    // left goes again, but at most once per ack timeout, so
                    // a replayed old request cannot make the store resend
                    // its window over and over.
                    metrics::counter!("edge_sync_unrecoverable_resend_total").increment(1);
                    let now = Instant::now();
                    if self
                        .last_stale_resend
                        .is_some_and(|t| now.duration_since(t) < self.cfg.sync.ack_timeout())
                    {
                        return;
                    }
                    self.last_stale_resend = Some(now);
                    if let Some(suppressed) = self.refusals.note("stale_resend") {
                        tracing::error!(
                            from = r.from.0,
                            acked = self.core.acked().0,
                            suppressed,
                            "hub asks for events it already acked and this store deleted; resending what is left"
                        );
                    }
                    self.core.on_resend_unacked();
                    self.restart_reader();
                }
                Message::ResendRequest(r) => {
                    tracing::debug!(from = r.from.0, "hub asks for a resend");
                    metrics::counter!("edge_sync_resend_requests_total").increment(1);
                    let implied = Seq(r.from.0.saturating_sub(1));
                    if !self.core.could_ack(implied) {
                        self.ack_beyond(implied);
                    }
                    if let Some(n) = self.core.on_resend(r.from) {
                        self.commit_ack(n);
                    }
                    self.restart_reader();
                }
                Message::ResendUnacked(_) => {
                    if let Some(suppressed) = self.refusals.note("resend_unacked") {
                        tracing::info!(
                            acked = self.core.acked().0,
                            suppressed,
                            "hub lost its session; resending everything unacked"
                        );
                    }
                    metrics::counter!("edge_sync_resend_unacked_total").increment(1);
                    self.core.on_resend_unacked();
                    self.restart_reader();
                }
                other => self.reject(
                    &topic,
                    "unexpected",
                    &format!("unexpected {} on the ack topic", other.name()),
                ),
            }
        } else if topic == self.topics.down {
            match msg {
                Message::DownBatch(b) if b.store == self.cfg.store => self.on_down(b.items).await,
                Message::DownBatch(b) => self.reject(
                    &topic,
                    "unexpected",
                    &format!("downlink addressed to store {}", b.store),
                ),
                other => self.reject(
                    &topic,
                    "unexpected",
                    &format!("unexpected {} on the down topic", other.name()),
                ),
            }
        } else if topic == self.topics.rpc_res {
            match msg {
                Message::RpcResponse(r) => match self.pending_rpc.remove(&r.correlation_id.as_u128()) {
                    Some((reply, _)) => {
                        let _ = reply.send(r);
                    }
                    None => {
                        tracing::info!(correlation = %r.correlation_id, "late or unknown RPC response dropped")
                    }
                },
                other => self.reject(
                    &topic,
                    "unexpected",
                    &format!("unexpected {} on the rpc topic", other.name()),
                ),
            }
        } else {
            self.reject(&topic, "unknown", "message on a topic this edge does not read");
        }
    }

    /// Drops a message with no effect: counted, logged once per burst.
    fn reject(&self, topic: &str, reason: &'static str, why: &str) {
        self.status.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("edge_downlink_rejected_total", "reason" => reason).increment(1);
        if let Some(suppressed) = self.refusals.note(reason) {
            tracing::warn!(
                topic,
                why,
                suppressed,
                "rejected a message from upstream: no effect"
            );
        }
    }

    /// An ack above anything published: capped, counted.
    fn ack_beyond(&self, n: Seq) {
        self.status.acks_beyond.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("edge_sync_acks_beyond_total").increment(1);
        if let Some(suppressed) = self.refusals.note("ack_beyond") {
            tracing::warn!(
                ack = n.0,
                published = self.core.published_max.0,
                suppressed,
                "capped an ack above anything this store published"
            );
        }
    }

    fn commit_ack(&mut self, n: Seq) {
        metrics::counter!("edge_sync_acks_total").increment(1);
        // Deleting acked rows only frees disk, so it is coalesced and done
        // on the next tick, never blocking the loop. A crash before then
        // means a few events are resent and dropped by the hub as
        // duplicates.
        self.pending_delete = Some(n);
    }

    fn flush_deletes(&mut self) {
        if let Some(n) = self.pending_delete.take() {
            self.journal.ack_in_background(n);
        }
    }

    async fn on_down(&mut self, items: Vec<storegate_protocol::downlink::DownItem>) {
        match self.journal.apply_downlink(items).await {
            Ok(applied) => {
                metrics::counter!("edge_downlink_items_applied_total")
                    .increment(applied.applied.len() as u64);
                if applied.gap {
                    tracing::info!(
                        applied_up_to = applied.applied_up_to.0,
                        "downlink gap; asking the hub to resend"
                    );
                }
                self.send_down_ack(applied.applied_up_to);
                if !applied.applied.is_empty() {
                    let _ = self.applied_tx.send(Arc::new(applied));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot apply downlink; it will be resent"),
        }
    }

    fn send_down_ack(&self, applied_up_to: Seq) {
        let bytes = self.cfg.trust.sealer.seal_body(
            &self.topics.up,
            &envelope::encode_body(&Message::DownAck(DownAck { applied_up_to })),
        );
        if let Err(e) = self
            .client
            .try_publish(&self.topics.up, QoS::AtLeastOnce, false, bytes)
        {
            tracing::debug!(error = %e, "down ack not queued; the hub will resend");
        }
    }

    fn send_rpc(&mut self, out: RpcOut) {
        let id = out.request.correlation_id.as_u128();
        let deadline = Instant::now() + Duration::from_millis(u64::from(out.request.timeout_ms));
        let bytes = self.cfg.trust.sealer.seal_body(
            &self.topics.rpc_req,
            &envelope::encode_body(&Message::RpcRequest(out.request)),
        );
        if self
            .client
            .try_publish(&self.topics.rpc_req, QoS::AtLeastOnce, false, bytes)
            .is_ok()
        {
            self.pending_rpc.insert(id, (out.reply, deadline));
        }
        // Dropping `out.reply` on failure tells the caller at once.
    }

    fn fail_pending_rpc(&mut self) {
        self.pending_rpc.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limits_batches_in_flight() {
        let mut c = SyncCore::new(Seq(0), 2);
        assert_eq!(c.next_from(), None, "nothing is sent while disconnected");
        c.on_connected();
        let now = Instant::now();
        assert_eq!(c.next_from(), Some(Seq(1)));
        c.on_published(Seq(10), now);
        assert_eq!(c.next_from(), Some(Seq(11)));
        c.on_published(Seq(20), now);
        assert_eq!(c.next_from(), None);
        assert_eq!(c.on_app_ack(Seq(10)), Some(Seq(10)));
        assert_eq!(c.next_from(), Some(Seq(21)));
        assert_eq!(c.on_app_ack(Seq(5)), None, "old acks are ignored");
    }

    #[test]
    fn an_ack_above_anything_published_is_capped() {
        let mut c = SyncCore::new(Seq(3), 4);
        c.on_connected();
        c.on_published(Seq(10), Instant::now());
        c.on_published(Seq(20), Instant::now());
        assert!(!c.could_ack(Seq(21)));
        assert_eq!(
            c.on_app_ack(Seq(u64::MAX)),
            Some(Seq(20)),
            "nothing unpublished is deleted"
        );
        assert_eq!(c.acked(), Seq(20));
        assert_eq!(c.inflight(), 0);
        assert_eq!(c.on_app_ack(Seq(u64::MAX)), None, "and it is news once");
        assert_eq!(c.on_resend(Seq(u64::MAX)), None, "a resend implying more too");
        assert_eq!(c.next_from(), Some(Seq(21)));
        c.on_published(Seq(30), Instant::now());
        c.on_disconnected();
        assert!(
            c.could_ack(Seq(30)),
            "what was published before a reconnect still counts"
        );
    }

    #[test]
    fn after_a_crash_a_hub_ahead_of_the_journal_moves_the_store_on() {
        // The journal kept 1..=50 (deletes were pending at the crash), the
        // hub has committed them all and acks 50 to the first batch.
        let mut c = SyncCore::new(Seq(0), 1);
        c.on_connected();
        c.on_published(Seq(10), Instant::now());
        assert_eq!(c.on_app_ack(Seq(50)), Some(Seq(10)));
        assert_eq!(c.next_from(), Some(Seq(11)));
        c.on_published(Seq(20), Instant::now());
        assert_eq!(c.on_resend(Seq(51)), Some(Seq(20)));
        assert_eq!(c.next_from(), Some(Seq(21)));
    }

    #[test]
    fn reconnect_resends_everything_unacked() {
        let mut c = SyncCore::new(Seq(4), 8);
        c.on_connected();
        c.on_published(Seq(10), Instant::now());
        c.on_disconnected();
        c.on_connected();
        assert_eq!(c.next_from(), Some(Seq(5)));
    }

    #[test]
    fn resend_request_implies_an_ack_and_rewinds() {
        let mut c = SyncCore::new(Seq(0), 8);
        c.on_connected();
        c.on_published(Seq(10), Instant::now());
        c.on_published(Seq(20), Instant::now());
        assert_eq!(c.on_resend(Seq(8)), Some(Seq(7)));
        assert_eq!(c.next_from(), Some(Seq(8)));
        assert_eq!(c.inflight(), 0);
        assert!(c.is_stale_resend(Seq(5)), "asks for what was acked");
        assert!(!c.is_stale_resend(Seq(8)));
    }

    #[test]
    fn resend_unacked_rewinds_without_acking() {
        let mut c = SyncCore::new(Seq(4), 8);
        c.on_connected();
        c.on_published(Seq(10), Instant::now());
        c.on_published(Seq(20), Instant::now());
        c.on_resend_unacked();
        assert_eq!(c.acked(), Seq(4), "nothing more is acked");
        assert_eq!(c.inflight(), 0);
        assert_eq!(c.next_from(), Some(Seq(5)));
    }

    #[test]
    fn ack_timeout_rewinds() {
        let mut c = SyncCore::new(Seq(0), 8);
        c.on_connected();
        let t0 = Instant::now();
        c.on_published(Seq(10), t0);
        assert!(!c.on_tick(t0 + Duration::from_secs(1), Duration::from_secs(5)));
        assert!(c.on_tick(t0 + Duration::from_secs(6), Duration::from_secs(5)));
        assert_eq!(c.next_from(), Some(Seq(1)));
    }

    /// A card authorisation the hub never answers fails at its deadline,
    /// not later; an edge that is not connected fails at once. Paused time.
    #[tokio::test]
    async fn an_rpc_call_gives_up_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _writer) = Journal::open(
            &dir.path().join("j.db"),
            &crate::settings::JournalSettings::default(),
            storegate_protocol::Currency::EUR,
        )
        .await
        .unwrap();
        tokio::time::pause();
        let store = StoreId::parse("s1").unwrap();
        let (handle, _loop_not_run) = spawn(
            SyncConfig {
                store: store.clone(),
                upstream: BrokerUrl::parse("mqtt://127.0.0.1:9").unwrap(),
                trust: Arc::new(EdgeTrust::unsigned(store)),
                client_id: "edge-s1".into(),
                credentials: None,
                keep_alive: Duration::from_secs(5),
                sync: SyncSettings::default(),
            },
            journal,
            CancellationToken::new(),
        );
        let request = || RpcRequest {
            correlation_id: storegate_protocol::EventId::from_u128(1),
            sent_at_ms: 0,
            timeout_ms: 3_000,
            call: storegate_protocol::rpc::RpcCall::PriceLookup {
                sku: storegate_protocol::Sku::parse("SKU-1").unwrap(),
            },
        };
        assert_eq!(handle.call(request()).await, Err(RpcError::Offline));
        handle.status.connected.store(true, Ordering::Release);
        let asked = Instant::now();
        assert_eq!(handle.call(request()).await, Err(RpcError::Timeout));
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_millis(3_010),
            "{waited:?} (the timer wheel rounds up to the millisecond)"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d[5] >= Duration::from_millis(500) && d[5] <= Duration::from_millis(1000));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
