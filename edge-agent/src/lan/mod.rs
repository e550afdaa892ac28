//! The store LAN device bus: an embedded MQTT broker that scanners, scales,
//! handhelds and POS lanes talk JSON to (topics and messages in
//! `storegate_protocol::{topic, device}`), so they keep working when the WAN
//! is down, and the dispatcher that serves them.
//!
//! - Devices connect through the gate ([`access`]): each with its own
//!   credentials, publishing and reading only its own topics and its
//!   lanes' (the broker itself listens on loopback only).
//! - POS requests go to the lane's actor (one task per lane, requests in
//!   order); the reply goes to the lane's reply topic. A request that cannot
//!   be parsed still gets an error reply, with its id if one can be read.
//!   Requests are idempotent by id: a lane remembers its last 64 replies and
//!   answers a repeated id (a client retry, a QoS 1 redelivery) with the
//!   first reply instead of doing the work again; the same id with a
//!   different request is refused, not answered with the other's reply.
//! - A scan from a scanner bound to a lane (by configuration, or the scan's
//!   `lane` field, which may name only the scanner's own lanes) adds the
//!   item to that lane's basket and the lane gets the basket; other scans
//!   are answered on the device's reply topic. Every scan is recorded as
//!   telemetry with what came of it.
//! - Weights and health reports update the device registry and are
//!   recorded as telemetry; task updates are recorded as business events.
//! - Tasks the hub sends down are published on `store/{store}/task`.
//! - The agent talks to its own broker through rumqttd's in-process link,
//!   not TCP (rumqttd does not set TCP_NODELAY on its sockets; small
//!   messages between broker and agent met 40 ms delayed-ACK stalls).
//!
//! Bad input never stops the bus: malformed JSON, unknown barcodes and
//! garbled serial frames each get a clear error and a counter. Everything
//! is bounded: connections (the gate: 1,000 in all, 4 per device), each
//! device's packet rate (the gate), the dispatcher's inbox ([`INBOX`]), each lane's
//! queue ([`LANE_QUEUE`]), the lanes and the device registry (configured
//! ones only).

pub mod access;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::Digest as _;

use storegate_broker::{LinkTx, Notification};
use storegate_protocol::device::{
    self, ApprovalDecision, BusError, DeviceReply, ErrorCode, HealthMsg, PosReply, PosRequest, PosResult,
    ScanMsg, WeightMsg,
};
use storegate_protocol::downlink::DownBody;
use storegate_protocol::event::{DeviceKind, EventBody, ScanOutcome, ScanRecord, TaskUpdate, WeightRecord};
use storegate_protocol::topic::{DeviceChannel, LanTopic};
use storegate_protocol::{DeviceId, LaneId, StoreId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::barcode;
use crate::devices::{Devices, report};
use crate::framing::Frame;
use crate::pos::{Lane, PosCtx};
use crate::scale::ScaleHandle;

/// Replies a lane remembers, by request id.
const REPLY_CACHE: usize = 64;

/// Messages waiting for the dispatcher; past it the broker link waits
/// (the broker holds what devices send, within its segment bounds).
pub const INBOX: usize = 1024;

/// Most messages waiting for one lane; past it a request is answered
/// "busy" (retry) and counted, so a flood holds no memory.
pub const LANE_QUEUE: usize = 64;

/// What the bus needs to run.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// This store.
    pub store: StoreId,
    /// Where devices connect (the gate; the broker itself is on loopback).
    pub listen: SocketAddr,
    /// Scanner device -> the lane its scans go to.
    pub scanner_lanes: HashMap<DeviceId, LaneId>,
    /// Lane -> its scale.
    pub lane_scales: HashMap<LaneId, ScaleHandle>,
    /// The lanes this store runs (in the settings, or a device's): the
    /// only ones served; a request for another is refused, counted.
    pub lanes: std::collections::HashSet<LaneId>,
    /// The devices allowed on the bus.
    pub devices: Vec<access::DeviceAccess>,
    /// Each device's packet rate, over all its connections.
    pub device_rate: storegate_broker::gate::Rate,
    /// Serial devices (scales and scanners the agent drives itself).
    pub serial: std::collections::HashSet<DeviceId>,
}

/// Publishes through the in-process link (shared by the dispatcher and the lanes).
#[derive(Clone)]
struct Bus(Arc<Mutex<LinkTx>>);

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    fn publish(&self, topic: String, payload: Vec<u8>) {
        let result = match self.0.lock() {
            Ok(mut tx) => tx.publish(topic, payload).map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("link lock poisoned".into()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "lan publish failed");
        }
    }
}

/// What the dispatcher hears.
enum Inbound {
    /// A message on the bus.
    Mqtt(String, Vec<u8>),
    /// A frame from a serial scanner.
    Serial(DeviceId, Frame),
}

/// Messages for a lane's actor.
enum LaneMsg {
    /// A POS request's raw JSON.
    Request(Vec<u8>),
    /// A scan from the lane's scanner.
    Scan(String),
}

/// The running bus.
#[derive(Debug, Clone)]
pub struct Lan {
    /// Where devices connect.
    pub addr: SocketAddr,
    /// Serial scanners send their frames here.
    pub scans: mpsc::Sender<(DeviceId, Frame)>,
    /// What the gate admitted, refused and throttled.
    pub gate: Arc<storegate_broker::gate::GateStats>,
}

/// Starts the broker, the gate in front of it and the dispatcher.
pub fn start(
    cfg: LanConfig,
    ctx: PosCtx,
    devices: Devices,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Lan, storegate_broker::BrokerError> {
    let config = storegate_broker::load_config(None, storegate_broker::LAN_CONFIG)?;
    let link_id = format!("edge-{}-lan", cfg.store);
    // Devices reach the broker only through the gate: it listens on
    // loopback, the gate on the store LAN.
    let listener = std::net::TcpListener::bind(cfg.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| storegate_broker::BrokerError::Bind {
            addr: cfg.listen,
            setting: "lan.listen (SG_EDGE_LAN__LISTEN)",
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| storegate_broker::BrokerError::Bind {
            addr: cfg.listen,
            setting: "lan.listen (SG_EDGE_LAN__LISTEN)",
            source,
        })?;
    let (upstream, link) = storegate_broker::start_embedded_with_link(
        config,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        "lan.listen (SG_EDGE_LAN__LISTEN)",
        Some(&link_id),
    )?;
    let gate = storegate_broker::gate::spawn(
        listener,
        storegate_broker::gate::GateConfig {
            name: "lan",
            upstream,
            tls: None,
            handshake_timeout: std::time::Duration::from_secs(10),
            max_pending: 256,
            max_packet: 64 * 1024 + 1024,
            // Below rumqttd-lan.toml's router.max_connections (1010).
            max_clients: 1000,
        },
        Arc::new(access::LanPolicy::new(
            cfg.store.clone(),
            &cfg.devices,
            cfg.device_rate,
        )),
        tracker,
        shutdown.clone(),
    );
    let (mut link_tx, mut link_rx) = link.ok_or_else(|| storegate_broker::BrokerError::Config {
        path: "in-process link".into(),
        message: "the broker gave no link".into(),
    })?;
    for f in LanTopic::inbound_filters(&cfg.store) {
        if let Err(e) = link_tx.subscribe(f) {
            tracing::error!(error = %e, "lan subscribe failed");
        }
    }
    let bus = Bus(Arc::new(Mutex::new(link_tx)));
    let (inbox_tx, mut inbox) = mpsc::channel::<Inbound>(INBOX);
    let (scans_tx, mut scans_rx) = mpsc::channel::<(DeviceId, Frame)>(1024);

    // Serial scanner frames into the inbox.
    let tx = inbox_tx.clone();
    tracker.spawn(async move {
        while let Some((dev, frame)) = scans_rx.recv().await {
            if tx.send(Inbound::Serial(dev, frame)).await.is_err() {
                return;
            }
        }
    });
    // Bus messages into the inbox.
    let stop = shutdown.clone();
    tracker.spawn(async move {
        loop {
            let n = tokio::select! {
                () = stop.cancelled() => return,
                n = link_rx.next() => n,
            };
            match n {
                Ok(Some(Notification::Forward(f))) => {
                    let topic = String::from_utf8_lossy(&f.publish.topic).into_owned();
                    if inbox_tx
                        .send(Inbound::Mqtt(topic, f.publish.payload.to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "lan link closed");
                    return;
                }
            }
        }
    });
    // Tasks from the hub to the devices.
    let mut applied = ctx.sync.subscribe_applied();
    let task_topic = LanTopic::Tasks(cfg.store.clone()).to_string();
    let tasks_bus = bus.clone();
    let stop = shutdown.clone();
    tracker.spawn(async move {
        while let Some(batch) = next_of(&mut applied, &stop, "task forwarding").await {
            for body in &batch.applied {
                let json = match body {
                    DownBody::TaskAssigned(t) => device::to_json(t),
                    DownBody::TaskCancelled { task_id } => {
                        device::to_json(&serde_json::json!({"task_id": task_id, "status": "cancelled"}))
                    }
                    _ => continue,
                };
                tasks_bus.publish(task_topic.clone(), json);
            }
        }
    });
    // The dispatcher.
    let mut device_lanes: HashMap<DeviceId, Vec<LaneId>> = HashMap::new();
    let mut supervisors = std::collections::HashSet::new();
    for d in &cfg.devices {
        device_lanes.insert(d.id.clone(), d.lanes.clone());
        if d.role == access::DeviceRole::Supervisor {
            supervisors.insert(d.id.clone());
        }
    }
    // Approval requests to the supervisors' devices.
    let mut asked = ctx.approvals.subscribe();
    let approvals_topic = LanTopic::Approvals(cfg.store.clone()).to_string();
    let approvals_bus = bus.clone();
    let stop = shutdown.clone();
    tracker.spawn(async move {
        while let Some(request) = next_of(&mut asked, &stop, "approval requests").await {
            approvals_bus.publish(approvals_topic.clone(), device::to_json(&request));
        }
    });
    let mut d = Dispatcher {
        device_lanes,
        supervisors,
        cfg,
        ctx,
        devices,
        bus,
        lanes: HashMap::new(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                () = d.shutdown.cancelled() => break,
                m = inbox.recv() => match m { Some(m) => m, None => break },
            };
            match msg {
                Inbound::Mqtt(topic, payload) => d.incoming(&topic, &payload).await,
                Inbound::Serial(dev, frame) => d.serial_scan(dev, frame).await,
            }
        }
    });
    Ok(Lan {
        addr,
        scans: scans_tx,
        gate,
    })
}

/// The next message on `rx`, until `stop`; what it lagged behind on is
/// skipped and logged.
async fn next_of<T: Clone>(
    rx: &mut tokio::sync::broadcast::Receiver<T>,
    stop: &CancellationToken,
    what: &'static str,
) -> Option<T> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            r = rx.recv() => match r {
                Ok(x) => return Some(x),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, what, "lagged");
                }
                Err(_) => return None,
            },
        }
    }
}

struct Dispatcher {
    /// Every device allowed on the bus, with its lanes.
    device_lanes: HashMap<DeviceId, Vec<LaneId>>,
    /// Those with the supervisor role.
    supervisors: std::collections::HashSet<DeviceId>,
    cfg: LanConfig,
    ctx: PosCtx,
    devices: Devices,
    bus: Bus,
    lanes: HashMap<LaneId, mpsc::Sender<LaneMsg>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// Hands `msg` to `lane`'s actor (started on first use, if the store
    /// runs that lane); a request that cannot be taken is answered with an
    /// error on the lane's reply topic.
    fn hand_to_lane(&mut self, lane: &LaneId, msg: LaneMsg) {
        let id = match &msg {
            LaneMsg::Request(payload) => device::salvage_request_id(payload),
            LaneMsg::Scan(_) => None,
        };
        // A lane whose task ended (it never should) is started afresh.
        if self.lanes.get(lane).is_some_and(mpsc::Sender::is_closed) {
            tracing::error!(%lane, "lane task had ended; restarting it");
            self.lanes.remove(lane);
        }
        let (reason, e) = match self.lane(lane) {
            None => (
                "unknown_lane",
                BusError::new(
                    ErrorCode::BadRequest,
                    format!("lane {lane} is not configured at this store"),
                ),
            ),
            Some(tx) => match tx.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => (
                    "lane_down",
                    BusError::new(ErrorCode::Internal, format!("lane {lane} is restarting; retry")),
                ),
                Err(mpsc::error::TrySendError::Full(_)) => (
                    "lane_busy",
                    BusError::new(
                        ErrorCode::Internal,
                        format!("lane {lane} has {LANE_QUEUE} requests waiting; retry"),
                    ),
                ),
            },
        };
        metrics::counter!("edge_lan_refused_total", "reason" => reason).increment(1);
        let topic = LanTopic::PosReply(self.cfg.store.clone(), lane.clone()).to_string();
        self.bus.publish(topic, device::to_json(&PosReply::err(id, e)));
    }

    fn lane(&mut self, lane: &LaneId) -> Option<mpsc::Sender<LaneMsg>> {
        if let Some(tx) = self.lanes.get(lane) {
            return Some(tx.clone());
        }
        if !self.cfg.lanes.contains(lane) {
            return None;
        }
        let (tx, mut rx) = mpsc::channel(LANE_QUEUE);
        let mut actor = Lane::new(
            lane.clone(),
            self.cfg.lane_scales.get(lane).cloned(),
            self.ctx.clone(),
        );
        let reply_topic = LanTopic::PosReply(self.cfg.store.clone(), lane.clone()).to_string();
        let bus = self.bus.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut scans = 0u64;
            // The last replies, by request id: a repeated id is answered again, not redone.
            let mut replied: VecDeque<(String, [u8; 32], Vec<u8>)> = VecDeque::with_capacity(REPLY_CACHE);
            loop {
                let msg = tokio::select! {
                    () = shutdown.cancelled() => return,
                    m = rx.recv() => match m { Some(m) => m, None => return },
                };
                let bytes = match msg {
                    LaneMsg::Request(payload) => match device::parse_json::<PosRequest>(&payload) {
                        Ok(req) => {
                            let digest: [u8; 32] = sha2::Sha256::digest(&payload).into();
                            if let Some((_, first, bytes)) = replied.iter().find(|(id, _, _)| *id == req.id) {
                                let bytes = if *first == digest {
                                    metrics::counter!("edge_pos_repeated_requests_total").increment(1);
                                    bytes.clone()
                                } else {
                                    // Not a retry: another request under a used id
                                    // gets neither the first one's answer nor done.
                                    metrics::counter!("edge_lan_refused_total", "reason" => "id_reused").increment(1);
                                    device::to_json(&PosReply::err(
                                        Some(req.id),
                                        BusError::new(
                                            ErrorCode::BadRequest,
                                            "this request id was already used for another request at this lane; use a new id",
                                        ),
                                    ))
                                };
                                bus.publish(reply_topic.clone(), bytes);
                                continue;
                            }
                            let started = std::time::Instant::now();
                            let r = actor.handle(req.op).await;
                            metrics::histogram!("edge_pos_request_seconds")
                                .record(started.elapsed().as_secs_f64());
                            let bytes = device::to_json(&reply(Some(req.id.clone()), r));
                            if replied.len() == REPLY_CACHE {
                                replied.pop_front();
                            }
                            replied.push_back((req.id, digest, bytes.clone()));
                            bytes
                        }
                        Err(e) => {
                            metrics::counter!("edge_lan_malformed_total").increment(1);
                            device::to_json(&PosReply::err(device::salvage_request_id(&payload), e))
                        }
                    },
                    LaneMsg::Scan(code) => {
                        scans += 1;
                        device::to_json(&reply(Some(format!("scan-{scans}")), actor.scan(code).await))
                    }
                };
                bus.publish(reply_topic.clone(), bytes);
            }
        });
        self.lanes.insert(lane.clone(), tx.clone());
        Some(tx)
    }

    async fn incoming(&mut self, topic: &str, payload: &[u8]) {
        let parsed = match LanTopic::parse(topic) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(topic, error = %e, "message on an unknown LAN topic ignored");
                return;
            }
        };
        match parsed {
            LanTopic::PosRequest(store, lane) if store == self.cfg.store => {
                self.hand_to_lane(&lane, LaneMsg::Request(payload.to_vec()));
            }
            LanTopic::Device(store, dev, ch) if store == self.cfg.store => {
                self.device(dev, ch, payload).await
            }
            LanTopic::TaskUpdate(store) if store == self.cfg.store => {
                match device::parse_json::<TaskUpdate>(payload) {
                    Ok(update) => {
                        if let Err(e) = self
                            .ctx
                            .journal
                            .record(EventBody::TaskUpdated(update), None)
                            .await
                        {
                            tracing::error!(error = %e, "task update not recorded");
                        }
                    }
                    Err(e) => {
                        metrics::counter!("edge_lan_malformed_total").increment(1);
                        tracing::warn!(error = %e.message, "malformed task update");
                    }
                }
            }
            _ => {}
        }
    }

    fn device_reply(&self, dev: &DeviceId, reply: &DeviceReply) {
        let topic = LanTopic::Device(self.cfg.store.clone(), dev.clone(), DeviceChannel::Reply).to_string();
        self.bus.publish(topic, device::to_json(reply));
    }

    async fn device(&mut self, dev: DeviceId, ch: DeviceChannel, payload: &[u8]) {
        // The gate lets only configured devices publish; the registry holds
        // no one else.
        if !self.device_lanes.contains_key(&dev) && !self.cfg.serial.contains(&dev) {
            metrics::counter!("edge_lan_refused_total", "reason" => "unknown_device").increment(1);
            return;
        }
        let journal = &self.ctx.journal;
        match ch {
            DeviceChannel::Scan => match device::parse_json::<ScanMsg>(payload) {
                Ok(scan) => self.scan(dev, scan.code, scan.symbology, scan.lane).await,
                Err(e) => self.malformed(&dev, DeviceKind::Scanner, e),
            },
            DeviceChannel::Weight => match device::parse_json::<WeightMsg>(payload) {
                Ok(w) => {
                    report(journal, &dev, self.devices.seen(&dev, DeviceKind::Scale));
                    let body = EventBody::Weight(WeightRecord {
                        device: dev,
                        milligrams: w.milligrams,
                        stable: w.stable,
                    });
                    let _ = journal.record(body, None).await;
                }
                Err(e) => self.malformed(&dev, DeviceKind::Scale, e),
            },
            DeviceChannel::Health => match device::parse_json::<HealthMsg>(payload) {
                Ok(h) => report(
                    journal,
                    &dev,
                    self.devices.reported(&dev, h.kind, h.status, h.detail),
                ),
                Err(e) => self.malformed(&dev, DeviceKind::Other, e),
            },
            DeviceChannel::Approve => {
                let decided = match device::parse_json::<ApprovalDecision>(payload) {
                    Ok(_) if !self.supervisors.contains(&dev) => {
                        metrics::counter!("edge_lan_refused_total", "reason" => "not_a_supervisor")
                            .increment(1);
                        Err(BusError::new(
                            ErrorCode::BadRequest,
                            format!("device {dev} is not a supervisor's"),
                        ))
                    }
                    Ok(d) => self
                        .ctx
                        .approvals
                        .decide(&d.approval, &dev, d.approve)
                        .map_err(|m| BusError::new(ErrorCode::BadRequest, m)),
                    Err(e) => Err(e),
                };
                self.device_reply(
                    &dev,
                    &DeviceReply {
                        ok: decided.is_ok(),
                        error: decided.err(),
                        sku: None,
                    },
                );
            }
            DeviceChannel::Reply => {}
        }
    }

    /// Whether `dev`'s scans may go into `lane`'s basket.
    fn may_scan_into(&self, dev: &DeviceId, lane: &LaneId) -> bool {
        self.cfg.scanner_lanes.get(dev) == Some(lane)
            || self.device_lanes.get(dev).is_some_and(|ls| ls.contains(lane))
    }

    fn malformed(&self, dev: &DeviceId, kind: DeviceKind, e: BusError) {
        metrics::counter!("edge_lan_malformed_total").increment(1);
        report(
            &self.ctx.journal,
            dev,
            self.devices.error(dev, kind, e.message.clone()),
        );
        self.device_reply(
            dev,
            &DeviceReply {
                ok: false,
                error: Some(e),
                sku: None,
            },
        );
    }

    async fn serial_scan(&mut self, dev: DeviceId, frame: Frame) {
        match frame {
            Frame::Code(code) => {
                let (aim, _) = barcode::split_aim(&code);
                let symbology = aim.map(str::to_owned);
                self.scan(dev, code, symbology, None).await;
            }
            Frame::Garbage(why) => {
                // Already counted against the device by the driver; record it.
                let body = EventBody::Scan(ScanRecord {
                    device: dev,
                    lane: None,
                    code: String::new(),
                    symbology: None,
                    outcome: ScanOutcome::Invalid { reason: why },
                });
                let _ = self.ctx.journal.record(body, None).await;
            }
        }
    }

    async fn scan(
        &mut self,
        dev: DeviceId,
        mut code: String,
        symbology: Option<String>,
        lane: Option<LaneId>,
    ) {
        report(
            &self.ctx.journal,
            &dev,
            self.devices.seen(&dev, DeviceKind::Scanner),
        );
        let lane = match lane {
            Some(l) if !self.may_scan_into(&dev, &l) => {
                metrics::counter!("edge_lan_refused_total", "reason" => "lane_not_bound").increment(1);
                self.device_reply(
                    &dev,
                    &DeviceReply {
                        ok: false,
                        error: Some(BusError::new(
                            ErrorCode::BadRequest,
                            format!("device {dev} is not bound to lane {l}; nothing was added"),
                        )),
                        sku: None,
                    },
                );
                return;
            }
            Some(l) => Some(l),
            None => self.cfg.scanner_lanes.get(&dev).cloned(),
        };
        let outcome = match barcode::decode(&code, &self.ctx.cfg.layouts) {
            // A card swiped or keyed where a barcode goes: the code is not
            // kept anywhere (journal, hub, replies).
            Err(_) if storegate_protocol::pan::find(&code).is_some() => {
                metrics::counter!("edge_card_data_refused_total", "entry" => "scanner").increment(1);
                storegate_protocol::pan::REDACTED.clone_into(&mut code);
                ScanOutcome::Invalid {
                    reason: "card data scanned; not kept".into(),
                }
            }
            Err(e) => ScanOutcome::Invalid {
                reason: e.to_string(),
            },
            Ok(s) => {
                let key = match s.decoded {
                    barcode::Decoded::Gtin(g) => g.to_gtin14(),
                    barcode::Decoded::Variable { item_gtin, .. } => format!("{item_gtin:0>14}"),
                };
                match self.ctx.catalog.by_gtin14(&key).await {
                    Ok(Some(p)) => ScanOutcome::Matched { sku: p.sku },
                    _ => ScanOutcome::Unknown,
                }
            }
        };
        let body = EventBody::Scan(ScanRecord {
            device: dev.clone(),
            lane: lane.clone(),
            code: code.clone(),
            symbology,
            outcome: outcome.clone(),
        });
        let _ = self.ctx.journal.record(body, None).await;
        if let Some(lane) = lane {
            self.hand_to_lane(&lane, LaneMsg::Scan(code));
            return;
        }
        let reply = match outcome {
            ScanOutcome::Matched { sku } => DeviceReply {
                ok: true,
                error: None,
                sku: Some(sku),
            },
            ScanOutcome::Unknown => DeviceReply {
                ok: false,
                error: Some(BusError::new(
                    ErrorCode::UnknownBarcode,
                    format!("no product has barcode {code}"),
                )),
                sku: None,
            },
            ScanOutcome::Invalid { reason } => DeviceReply {
                ok: false,
                error: Some(BusError::new(ErrorCode::InvalidBarcode, reason)),
                sku: None,
            },
        };
        self.device_reply(&dev, &reply);
    }
}

fn reply(id: Option<String>, r: Result<PosResult, BusError>) -> PosReply {
    match r {
        Ok(result) => PosReply {
            id,
            ok: true,
            result: Some(result),
            error: None,
        },
        Err(e) => {
            metrics::counter!("edge_pos_errors_total", "code" => format!("{:?}", e.code)).increment(1);
            PosReply::err(id, e)
        }
    }
}
