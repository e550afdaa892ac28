//! A minimal stand-in for the hub's half of the sync contract, for edge
//! tests, demos and benchmarks without a hub: keeps a high-water mark per
//! store, accepts events in seq order, re-acks duplicates, asks for a
//! resend on a gap, and publishes application acks.
//!
//! Like the hub it checks every message's signature (against the stores
//! its [`TestChain`] issued bundles to, [`Responder::write_bundle`]) and
//! signs everything it sends with its own hub key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use storegate_protocol::envelope::{self, AppAck, Message, ResendRequest, UpBatchHeader};
use storegate_protocol::event::Event;
use storegate_protocol::seal;
use storegate_protocol::topic::{WanKind, WanTopic};
use storegate_protocol::{Seq, StoreId};

use crate::trust::TestChain;

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
    /// Messages that could not be decoded.
    pub undecodable: Arc<AtomicU64>,
    /// Messages refused: unsigned, forged or signed by an unknown key.
    pub refused: Arc<AtomicU64>,
    /// Its CA and hub key; the stores it issued credentials to.
    chain: Arc<TestChain>,
    /// Whether accepted events are kept in the logs.
    keep_events: bool,
    /// Card authorisations answer after this many ms (to test deadlines).
    pub rpc_delay_ms: Arc<AtomicU64>,
    /// Card authorisations for amounts ending in these minor units are declined.
    pub decline_cents: u64,
    /// RPC requests seen: (store, request).
    pub rpc_seen: Arc<Mutex<Vec<(String, storegate_protocol::rpc::RpcRequest)>>>,
    /// The next this-many batches are ignored, as if lost on the way.
    pub lose_batches: Arc<AtomicU64>,
    /// For publishing downlink in tests.
    client: AsyncClient,
}

impl Responder {
    /// Connects to the broker at `addr` and starts answering; returns once
    /// it is subscribed. Keeps every accepted event (see [`Responder::log`]).
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Responder> {
        Self::start_with(addr, true).await
    }

    /// Like [`Responder::start`]; with `keep_events` false only the marks
    /// and counters are kept (for long benchmarks).
    pub async fn start_with(addr: SocketAddr, keep_events: bool) -> anyhow::Result<Responder> {
        let mut opts = MqttOptions::new(
            format!("responder-{}", rand_suffix()),
            addr.ip().to_string(),
            addr.port(),
        );
        opts.set_max_packet_size(8 << 20, 8 << 20)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let r = Responder {
            state: Arc::default(),
            hold_acks: Arc::default(),
            batches: Arc::default(),
            lose_batches: Arc::default(),
            undecodable: Arc::default(),
            refused: Arc::default(),
            chain: TestChain::new()?,
            keep_events,
            rpc_delay_ms: Arc::default(),
            decline_cents: 13,
            rpc_seen: Arc::default(),
            client: client.clone(),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let me = r.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        for k in [
                            WanKind::Up,
                            WanKind::Status,
                            WanKind::Rpc(
                                storegate_protocol::topic::RpcSide::Edge,
                                storegate_protocol::topic::RpcLeg::Req,
                            ),
                        ] {
                            if let Err(e) = client.try_subscribe(WanTopic::filter_all(k), QoS::AtLeastOnce) {
                                tracing::error!(error = %e, "responder: subscribe not queued");
                            }
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
            .map_err(|_| anyhow::anyhow!("responder not subscribed within 10 s"))??;
        Ok(r)
    }

    async fn handle(&self, client: &AsyncClient, topic: &str, payload: &[u8]) {
        let Ok(t) = WanTopic::parse(topic) else { return };
        let store = t.store().clone();
        let payload = match seal::open(payload, &t, topic, self.chain.as_ref(), false) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(topic, error = %e, "responder: refused a message");
                self.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if !self.keep_events
            && let Ok(Some(h)) = envelope::peek_up_batch_body(payload)
        {
            // Counting mode: the header says everything needed to ack.
            return self.ack_header(client, store, h).await;
        }
        if let Ok(Message::RpcRequest(req)) = envelope::decode_body(payload) {
            return self.answer_rpc(client, store, req).await;
        }
        let msg = match envelope::decode_body(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(topic, error = %e, "responder: undecodable message");
                self.undecodable.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let reply = {
            let Ok(mut state) = self.state.lock() else { return };
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
                            if self.keep_events {
                                log.events.push(e);
                            }
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
            let topic = WanTopic::Ack(store);
            let bytes = self.chain.hub_sealer().seal(&topic, &m);
            let _ = client
                .publish(topic.to_string(), QoS::AtLeastOnce, false, bytes)
                .await;
        }
    }

    /// Answers like a hub with an always-available card provider: declines
    /// amounts ending in `decline_cents`, authorises the rest.
    async fn answer_rpc(
        &self,
        client: &AsyncClient,
        store: StoreId,
        req: storegate_protocol::rpc::RpcRequest,
    ) {
        use storegate_protocol::rpc::{RpcCall, RpcErrorCode, RpcResponse, RpcResult};
        if let Ok(mut seen) = self.rpc_seen.lock() {
            seen.push((store.to_string(), req.clone()));
        }
        let delay = self.rpc_delay_ms.load(Ordering::Acquire);
        let result = match &req.call {
            RpcCall::CardAuthorize {
                amount, payment_key, ..
            } => {
                if amount.minor.unsigned_abs() % 100 == self.decline_cents {
                    RpcResult::CardDeclined {
                        reason: "do not honour".into(),
                    }
                } else {
                    RpcResult::CardAuthorized {
                        authorization_id: format!("auth-{payment_key}"),
                        auth_code: "OK1234".into(),
                    }
                }
            }
            RpcCall::CardVoid { .. } => RpcResult::CardVoided,
            _ => RpcResult::Error {
                code: RpcErrorCode::NotFound,
                message: "the stand-in hub answers card calls only".into(),
            },
        };
        let topic = WanTopic::Rpc(
            store,
            storegate_protocol::topic::RpcSide::Edge,
            storegate_protocol::topic::RpcLeg::Res,
        );
        let bytes = self.chain.hub_sealer().seal(
            &topic,
            &Message::RpcResponse(RpcResponse {
                correlation_id: req.correlation_id,
                result,
            }),
        );
        let topic = topic.to_string();
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            let _ = client.publish(topic, QoS::AtLeastOnce, false, bytes).await;
        });
    }

    async fn ack_header(&self, client: &AsyncClient, store: StoreId, h: UpBatchHeader) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let reply = {
            let Ok(mut state) = self.state.lock() else { return };
            let log = state.entry(store.to_string()).or_default();
            if h.last.0 <= log.hwm {
                log.duplicates += h.count;
                Message::AppAck(AppAck {
                    committed_up_to: Seq(log.hwm),
                })
            } else if h.first.0 <= log.hwm + 1 {
                log.duplicates += log.hwm + 1 - h.first.0;
                log.hwm = h.last.0;
                Message::AppAck(AppAck {
                    committed_up_to: Seq(log.hwm),
                })
            } else {
                log.resends += 1;
                Message::ResendRequest(ResendRequest {
                    from: Seq(log.hwm + 1),
                })
            }
        };
        let topic = WanTopic::Ack(store);
        let bytes = self.chain.hub_sealer().seal(&topic, &reply);
        let _ = client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, bytes)
            .await;
    }

    /// What the responder has of `store`.
    pub fn log(&self, store: &str) -> StoreLog {
        self.state
            .lock()
            .map(|s| s.get(store).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The CA and hub key it stands in with.
    pub fn chain(&self) -> Arc<TestChain> {
        self.chain.clone()
    }

    /// Issues a credential for `store` (whose edge connects to `broker`,
    /// `mqtt://...`) and writes its bundle into `dir`.
    pub fn write_bundle(
        &self,
        store: &str,
        broker: &str,
        dir: &std::path::Path,
    ) -> anyhow::Result<std::path::PathBuf> {
        self.chain.write_bundle(&StoreId::parse(store)?, broker, dir)
    }

    /// Publishes `message` on `topic`, signed as the hub (downlink, for tests).
    pub async fn send(&self, topic: &WanTopic, message: &Message) -> anyhow::Result<()> {
        let bytes = self.chain.hub_sealer().seal(topic, message);
        self.publish(topic.to_string(), bytes).await
    }

    /// Publishes raw bytes (forgeries, for tests).
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> anyhow::Result<()> {
        Ok(self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
