//! The hub's MQTT link: receives every store's uplink through a shared
//! subscription, hands batches to ingestion workers, acks MQTT messages in
//! order after their work is committed, and publishes acks and downlink.
//!
//! Every message is checked ([`Trust::open`]: signed by a valid credential
//! of the store the topic names) before anything reads it, and everything
//! the hub publishes is signed ([`Link::send`]). A message that fails the
//! check is dropped with no effect and still acked at the MQTT level, so
//! nothing behind it waits. Only checked messages from a store can end up
//! in quarantine; nothing unchecked ever reaches the database.
//!
//! # Tasks
//!
//! - the **event loop** polls rumqttc and never waits on anything else: it
//!   numbers each incoming QoS 1 message (its *receipt*) and routes it by
//!   topic and store;
//! - **ingestion workers** (`ingest.workers`), each owning a fixed share of
//!   the stores, so one store's batches are applied in order; each checks
//!   its messages' signatures, then applies whatever is queued as one
//!   transaction (group commit); downlink acks go on to the misc worker;
//! - a **misc worker** for presence and downlink acks;
//! - the **RPC opener**, which checks and decodes lanes' RPC requests and
//!   hands them to the commerce side;
//! - the **acker**, which acks MQTT messages strictly in receipt order once
//!   their work is done (rumqttd disconnects a client that acks out of
//!   order; acking from the poll loop deadlocked under load);
//! - the **downlink sweeper**, resending unacked downlink.
//!
//! Files: this one (connection, routing, the acker), `uplink` (ingestion
//! workers), `rpc` (the RPC opener), `misc` (presence, downlink acks and
//! sends, the sweeper), [`trust`] (what is signed and who may send it).
//!
//! Queues between them are unbounded on purpose: the broker delivers at most
//! its inflight limit of unacked messages, and acks only follow the work, so
//! the queues cannot outgrow that limit, and the event loop never blocks on
//! a worker that is itself waiting for the event loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use storegate_protocol::envelope::Message;
use storegate_protocol::rpc::RpcResponse;
use storegate_protocol::topic::{RpcLeg, RpcSide, WanKind, WanTopic};
use storegate_protocol::{Seq, StoreId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod misc;
mod rpc;
pub mod trust;
mod uplink;

use self::misc::{misc_worker, sweeper};
use self::rpc::rpc_opener;
pub use self::trust::Trust;
use self::uplink::{Worker, worker};
use crate::db::Db;
use crate::settings::IngestSettings;

/// Where and how to connect.
#[derive(Debug)]
pub struct LinkConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// This replica's stable client id.
    pub client_id: String,
    /// Credentials, if any.
    pub credentials: Option<(String, String)>,
    /// TLS towards an external `mqtts://` broker.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The hub replicas' shared-subscription group (a secret of theirs;
    /// see `protocol::topic`).
    pub share_group: String,
    /// Signs what the hub sends, checks what arrives.
    pub trust: Trust,
    /// Ingestion settings.
    pub ingest: IngestSettings,
    /// MQTT clean session (see `broker.clean_session`).
    pub clean_session: bool,
    /// Test hook (`STOREGATE_FAILPOINT=abort_after_commit`): abort the process
    /// right after a batch commits, before anything is acked, so crash tests
    /// can prove a replay has no double effect.
    pub abort_after_commit: bool,
    /// Where RPC requests from edges go (answered by the commerce side,
    /// which sends its answers back on `rpc_replies`); `None`: the hub does
    /// not subscribe to them.
    pub rpc: Option<mpsc::Sender<RpcJob>>,
    /// Answers to send back to stores.
    pub rpc_replies: Option<mpsc::Receiver<RpcReply>>,
    /// Downlink kicks from the services.
    pub kicks: Option<mpsc::UnboundedReceiver<StoreId>>,
}

pub use crate::payments::{RpcJob, RpcReply};

/// Most RPC requests waiting for their check, and checked ones waiting
/// for the commerce side.
pub const RPC_QUEUE: usize = 1024;
/// How late past its own deadline (by the edge's clock) an RPC request
/// may arrive and still be answered.
const STALE_RPC_SLACK_MS: i64 = 5 * 60 * 1000;
/// Largest presence or RPC request accepted (they are well under 1 KiB).
const SMALL_PAYLOAD: usize = 16 * 1024;

pub(super) struct RawRpc {
    pub(super) topic: WanTopic,
    pub(super) text: String,
    pub(super) payload: Vec<u8>,
    pub(super) received: std::time::Instant,
}

/// Link state other modules read and use.
#[derive(Debug, Clone)]
pub struct Link {
    /// Publishes acks and downlink.
    pub client: AsyncClient,
    /// True while connected.
    pub connected: Arc<AtomicBool>,
    /// True once the broker confirmed the subscriptions on this connection:
    /// the hub is consuming (readiness).
    pub subscribed: Arc<AtomicBool>,
    /// Messages received since start.
    pub received: Arc<AtomicU64>,
    /// Asks the misc worker to send pending downlink to a store.
    kick: mpsc::UnboundedSender<Misc>,
    /// Signs what the hub sends.
    trust: Trust,
}

impl Link {
    /// Sends whatever downlink is pending for `store` (after a commit that
    /// enqueued some).
    pub fn send_downlink(&self, store: &StoreId) {
        let _ = self.kick.send(Misc::SendDownlink(store.clone()));
    }

    /// Publishes `message` on `topic`, signed by the hub (QoS 1).
    pub async fn send(&self, topic: &WanTopic, message: &Message) {
        let payload = self.trust.seal(topic, message);
        // Topics come from `WanTopic`, so the only failure is an event loop
        // that has stopped: the hub is shutting down, and what was not sent
        // is resent after the restart (acks by the broker's redelivery,
        // downlink by the sweeper). Not worth a warning on every stop.
        if let Err(e) = self
            .client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::debug!(error = %e, "publish not queued: the MQTT link has stopped");
        }
    }

    /// Answers a store's RPC request.
    pub async fn reply_rpc(&self, store: &StoreId, response: RpcResponse) {
        let topic = WanTopic::Rpc(store.clone(), RpcSide::Edge, RpcLeg::Res);
        self.send(&topic, &Message::RpcResponse(response)).await;
    }
}

/// A message's place in the ack order.
#[derive(Debug)]
pub(super) struct Receipt {
    /// Connection generation; receipts of an older connection are void.
    pub(super) generation: u64,
    /// Position in this connection's receive order.
    pub(super) no: u64,
    /// The message without its payload (for its ack).
    pub(super) publish: Publish,
}

pub(super) enum AckMsg {
    /// A new connection: start numbering again.
    Reset(u64),
    /// This message's work is committed (or it was quarantined).
    Done(Receipt),
}

pub(super) struct Job {
    pub(super) store: StoreId,
    /// The topic, parsed.
    pub(super) wan: WanTopic,
    /// The topic as received (what the signature covers).
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) receipt: Receipt,
}

impl Job {
    /// It, for quarantining.
    fn received(&self) -> crate::quarantine::Received<'_> {
        crate::quarantine::Received {
            topic: &self.topic,
            store: self.store.as_str(),
            payload: &self.payload,
        }
    }
}

impl RawRpc {
    /// It, for quarantining.
    fn received_msg(&self) -> crate::quarantine::Received<'_> {
        crate::quarantine::Received {
            topic: &self.text,
            store: self.topic.store().as_str(),
            payload: &self.payload,
        }
    }
}

pub(super) enum Misc {
    /// A `status` message.
    Presence(Job),
    /// A `DownAck` from a store.
    DownAck(StoreId, Seq, Receipt),
    /// Send pending downlink to a store.
    SendDownlink(StoreId),
    /// The hub subscribed without its broker session: ask every store to
    /// send what it has unacked again.
    InviteResends,
}

/// Starts the link's tasks on `tracker`.
pub fn spawn(mut cfg: LinkConfig, db: Db, tracker: &TaskTracker, shutdown: CancellationToken) -> Link {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    let max_packet = cfg.ingest.max_payload_bytes.max(1 << 20) * 8;
    opts.set_clean_session(cfg.clean_session)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(max_packet, max_packet)
        .set_inflight(100);
    if let Some((u, p)) = &cfg.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 16 * 1024);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);

    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (misc_tx, misc_rx) = mpsc::unbounded_channel();
    let connected = Arc::new(AtomicBool::new(false));
    let subscribed = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let link = Link {
        client: client.clone(),
        connected: connected.clone(),
        subscribed: subscribed.clone(),
        received: received.clone(),
        kick: misc_tx.clone(),
        trust: cfg.trust.clone(),
    };

    tracker.spawn(acker(client.clone(), ack_rx, shutdown.clone()));
    let mut shards = Vec::new();
    for i in 0..cfg.ingest.workers {
        let (tx, rx) = mpsc::unbounded_channel();
        shards.push(tx);
        tracker.spawn(worker(
            Worker {
                index: i,
                db: db.clone(),
                link: link.clone(),
                trust: cfg.trust.clone(),
                misc: misc_tx.clone(),
                acks: ack_tx.clone(),
                max_group: cfg.ingest.max_group,
                abort_after_commit: cfg.abort_after_commit,
            },
            rx,
            shutdown.clone(),
        ));
    }
    tracker.spawn(misc_worker(
        db.clone(),
        link.clone(),
        cfg.trust.clone(),
        misc_rx,
        ack_tx.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(sweeper(db.clone(), link.clone(), shutdown.clone()));
    if let Some(mut kicks) = cfg.kicks.take() {
        let (misc, stop) = (misc_tx.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    k = kicks.recv() => match k {
                        Some(store) => { let _ = misc.send(Misc::SendDownlink(store)); }
                        None => return,
                    },
                }
            }
        });
    }
    if let Some(mut replies) = cfg.rpc_replies.take() {
        let (link, stop) = (link.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = replies.recv() => match r {
                        Some(r) => link.reply_rpc(&r.store, r.response).await,
                        None => return,
                    },
                }
            }
        });
    }

    let max_payload = cfg.ingest.max_payload_bytes;
    let trust = cfg.trust.clone();
    let share_group = cfg.share_group.clone();
    let rpc = cfg.rpc.clone().map(|commerce| {
        let (raw_tx, raw_rx) = mpsc::channel(RPC_QUEUE);
        tracker.spawn(rpc_opener(
            db.clone(),
            cfg.trust.clone(),
            raw_rx,
            commerce,
            shutdown.clone(),
        ));
        raw_tx
    });
    tracker.spawn(async move {
        let mut generation = 0u64;
        let mut next_no = 0u64;
        let mut failures = 0u32;
        let mut awaiting_subacks = 0usize;
        let mut session_lost = false;
        loop {
            let ev = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    generation += 1;
                    next_no = 0;
                    let _ = ack_tx.send(AckMsg::Reset(generation));
                    connected.store(true, Ordering::Release);
                    metrics::gauge!("hub_broker_connected").set(1.0);
                    tracing::info!(session_present = ack.session_present, "hub connected to broker");
                    awaiting_subacks = 0;
                    session_lost = !ack.session_present;
                    let mut filters = vec![
                        (WanTopic::shared_filter(&share_group, WanKind::Up), "uplink"),
                        (WanTopic::filter_all(WanKind::Status), "presence"),
                    ];
                    if rpc.is_some() {
                        // A group of its own: rumqttd keeps one read cursor
                        // per shared group, whatever its filters, so an
                        // RPC request read through the uplink's group moved
                        // the uplink's cursor and stalled it.
                        filters.push((
                            WanTopic::shared_filter(
                                &rpc_group(&share_group),
                                WanKind::Rpc(RpcSide::Edge, RpcLeg::Req),
                            ),
                            "rpc",
                        ));
                    }
                    for (filter, what) in filters {
                        match client.try_subscribe(filter, QoS::AtLeastOnce) {
                            Ok(()) => awaiting_subacks += 1,
                            Err(e) => tracing::error!(error = %e, what, "subscribe not queued"),
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    awaiting_subacks = awaiting_subacks.saturating_sub(1);
                    if awaiting_subacks == 0 {
                        subscribed.store(true, Ordering::Release);
                        // Uplinks published while the hub had no session
                        // (a store that reconnected first resent into the
                        // void) would wait for the store's ack timeout.
                        if std::mem::take(&mut session_lost) {
                            let _ = misc_tx.send(Misc::InviteResends);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    received.fetch_add(1, Ordering::Relaxed);
                    let receipt = Receipt {
                        generation,
                        no: next_no,
                        publish: Publish {
                            payload: Default::default(),
                            ..p.clone()
                        },
                    };
                    if p.qos != QoS::AtMostOnce {
                        next_no += 1;
                    }
                    dispatch(
                        &trust,
                        &shards,
                        &misc_tx,
                        &ack_tx,
                        rpc.as_ref(),
                        p,
                        receipt,
                        max_payload,
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    subscribed.store(false, Ordering::Release);
                    if connected.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "hub lost the broker");
                        metrics::gauge!("hub_broker_connected").set(0.0);
                    }
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    });
    link
}

/// Routes a message by topic and store. Nothing here reads the payload:
/// its signature is checked by whoever handles it, before anything else.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    trust: &Trust,
    shards: &[mpsc::UnboundedSender<Job>],
    misc: &mpsc::UnboundedSender<Misc>,
    acks: &mpsc::UnboundedSender<AckMsg>,
    rpc: Option<&mpsc::Sender<RawRpc>>,
    p: Publish,
    receipt: Receipt,
    max_payload: usize,
) {
    let needs_ack = p.qos != QoS::AtMostOnce;
    let done = |receipt: Receipt| {
        if needs_ack {
            let _ = acks.send(AckMsg::Done(receipt));
        }
    };
    let wan = match WanTopic::parse(&p.topic) {
        Ok(t) => t,
        Err(_) => {
            // Not a store's topic (a filter matched an invalid store id).
            trust.count("unknown_topic");
            return done(receipt);
        }
    };
    // Only uplink carries batches; presence and RPC requests are small.
    let limit = match wan.kind() {
        WanKind::Up => max_payload,
        _ => SMALL_PAYLOAD,
    };
    if p.payload.len() > limit {
        trust.count("oversized");
        return done(receipt);
    }
    if !needs_ack {
        // QoS 0 would bypass the broker's in-flight limit, the only bound
        // on the queues below; stores publish at QoS 1.
        trust.count("qos0");
        return;
    }
    let store = wan.store().clone();
    let job = Job {
        store,
        wan,
        topic: p.topic,
        payload: p.payload.to_vec(),
        receipt,
    };
    match job.wan.kind() {
        WanKind::Up => {
            let shard = shard_of(&job.store, shards.len());
            let _ = shards[shard].send(job);
        }
        WanKind::Status => {
            let _ = misc.send(Misc::Presence(job));
        }
        WanKind::Rpc(RpcSide::Edge, RpcLeg::Req) if rpc.is_some() => {
            if let Some(rpc) = rpc {
                let raw = RawRpc {
                    topic: job.wan,
                    text: job.topic,
                    payload: job.payload,
                    received: std::time::Instant::now(),
                };
                if rpc.try_send(raw).is_err() {
                    // Acked at once (not durable), so the broker does not
                    // bound these: a full queue drops, counted; the lane
                    // times out and falls back.
                    trust.count("rpc_queue_full");
                }
            }
            // An RPC is not durable: the lane times out and falls back.
            done(job.receipt);
        }
        _ => {
            // The hub subscribes to nothing else; a broker bridge might.
            done(job.receipt);
        }
    }
}

/// The shared-subscription group of lanes' RPC requests: the hubs' group
/// with `-rpc` appended (one group per filter; see where it is used).
pub fn rpc_group(share_group: &str) -> String {
    format!("{share_group}-rpc")
}

fn shard_of(store: &StoreId, shards: usize) -> usize {
    // FNV-1a: stable across processes and replicas.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in store.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

async fn acker(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<AckMsg>, shutdown: CancellationToken) {
    let mut generation = 0u64;
    let mut next = 0u64;
    let mut done: BTreeMap<u64, Publish> = BTreeMap::new();
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        match msg {
            AckMsg::Reset(g) => {
                generation = g;
                next = 0;
                done.clear();
            }
            AckMsg::Done(r) if r.generation == generation => {
                done.insert(r.no, r.publish);
                while let Some(p) = done.remove(&next) {
                    if let Err(e) = client.ack(&p).await {
                        tracing::warn!(error = %e, "mqtt ack not sent");
                    }
                    next += 1;
                }
            }
            AckMsg::Done(_) => {} // from a connection that is gone; the broker redelivers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let s = |x: &str| StoreId::parse(x).unwrap();
        assert_eq!(shard_of(&s("store-1"), 4), shard_of(&s("store-1"), 4));
        let used: std::collections::HashSet<usize> =
            (0..100).map(|i| shard_of(&s(&format!("store-{i}")), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
