//! A POS lane client: talks to an edge agent's device bus over MQTT, one
//! JSON request at a time, matching replies by id. Scans that arrive from
//! the lane's scanner produce replies the lane did not ask for; those are
//! kept apart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use storegate_protocol::device::{PosOp, PosReply, PosRequest};
use storegate_protocol::topic::LanTopic;
use storegate_protocol::{LaneId, StoreId};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<PosReply>>>>;

/// A device's login on a store's bus (its `[[devices]]` entry holds the
/// password's hash).
#[derive(Clone)]
pub struct DeviceLogin {
    /// The device id (MQTT username, client id prefix).
    pub device: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogin")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DeviceLogin {
    /// A new device with a fresh random password, and its settings entry.
    pub fn new(
        device: impl Into<String>,
        role: storegate_edge::lan::access::DeviceRole,
        lanes: &[&str],
    ) -> (DeviceLogin, storegate_edge::settings::DeviceSettings) {
        let device = device.into();
        let password = storegate_edge::lan::access::new_password();
        let entry = storegate_edge::settings::DeviceSettings::new(&device, role, lanes, &password);
        (DeviceLogin { device, password }, entry)
    }

    /// MQTT options for this device on the bus at `lan` (its id as the
    /// client id: one connection per device).
    pub fn options(&self, lan: SocketAddr) -> MqttOptions {
        let mut opts = MqttOptions::new(self.device.clone(), lan.ip().to_string(), lan.port());
        opts.set_credentials(self.device.clone(), self.password.clone());
        opts
    }
}

/// A connected lane.
#[derive(Debug)]
pub struct LaneClient {
    /// The MQTT client.
    client: AsyncClient,
    /// Where requests go.
    req_topic: String,
    /// Replies awaited, by request id.
    pending: Pending,
    /// Replies nobody asked for (scans).
    unsolicited: mpsc::UnboundedReceiver<PosReply>,
    /// Next request id.
    next: u64,
}

impl LaneClient {
    /// Connects lane `lane` of `store` to the bus at `lan`, as the till `login`.
    pub async fn connect(
        lan: SocketAddr,
        store: &StoreId,
        lane: &LaneId,
        login: &DeviceLogin,
    ) -> anyhow::Result<LaneClient> {
        let mut opts = login.options(lan);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let reply_topic = LanTopic::PosReply(store.clone(), lane.clone()).to_string();
        let pending: Pending = Arc::default();
        let (unsolicited_tx, unsolicited) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let p = pending.clone();
        let c = client.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(reply_topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(m))) => {
                        let Ok(reply) = serde_json::from_slice::<PosReply>(&m.payload) else {
                            continue;
                        };
                        let waiter = reply
                            .id
                            .as_ref()
                            .and_then(|id| p.lock().ok().and_then(|mut w| w.remove(id)));
                        match waiter {
                            Some(w) => {
                                let _ = w.send(reply);
                            }
                            None => {
                                let _ = unsolicited_tx.send(reply);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("lane did not subscribe in time")??;
        Ok(LaneClient {
            client,
            req_topic: LanTopic::PosRequest(store.clone(), lane.clone()).to_string(),
            pending,
            unsolicited,
            next: 0,
        })
    }

    /// Sends `op` and waits for its reply.
    pub async fn request(&mut self, op: PosOp) -> anyhow::Result<PosReply> {
        self.next += 1;
        let id = self.next.to_string();
        self.raw(id.clone(), serde_json::to_vec(&PosRequest { id, op })?)
            .await
    }

    /// Sends raw bytes as a request with `id` and waits for the reply with
    /// that id (for malformed-input tests and retries). Requests go at QoS 0:
    /// the reply acknowledges them, and a retry with the same id is safe.
    pub async fn raw(&mut self, id: String, payload: Vec<u8>) -> anyhow::Result<PosReply> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(id, tx);
        self.client
            .publish(self.req_topic.clone(), QoS::AtMostOnce, false, payload)
            .await?;
        Ok(tokio::time::timeout(Duration::from_secs(15), rx)
            .await
            .context("no reply from the edge in 15 s")??)
    }

    /// The next reply nobody asked for (from a scan), if one comes in time.
    pub async fn unsolicited(&mut self, timeout: Duration) -> Option<PosReply> {
        tokio::time::timeout(timeout, self.unsolicited.recv())
            .await
            .ok()
            .flatten()
    }
}
