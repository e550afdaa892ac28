//! A light virtual store for chain-scale load: one MQTT connection that
//! speaks the edge's side of the sync contract (gap-free seqs; like the
//! edge, at most `window` batches awaiting the hub, each carrying whatever
//! is unsent, so an idle store sends one sale per batch and a busy one
//! larger batches; everything unacknowledged resent after a reconnect or a
//! resend request; application acks) without a
//! journal, so a thousand of them fit in one process. The durable edge is
//! exercised by the edge benchmarks and the end-to-end tests; this one
//! loads the hub and the broker the way a chain does.
//!
//! Latency is measured from the moment a sale is published to the hub's
//! application ack covering it. The hub acks only after the transaction
//! holding the event and its effects (the stock ledger and levels)
//! committed, so this is "sale -> visible in hub stock" seen from the store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use storegate_edge::trust::EdgeTrust;
use storegate_protocol::envelope::{self, Message, UpBatch};
use storegate_protocol::event::{Event, EventBody};
use storegate_protocol::seal;
use storegate_protocol::topic::WanTopic;
use storegate_protocol::{EventId, Seq, StoreId, samples};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Totals over all virtual stores of a run.
#[derive(Debug, Default)]
pub struct VStats {
    /// Sales published (first time).
    pub sent: AtomicU64,
    /// Sales acknowledged by the hub.
    pub acked: AtomicU64,
    /// Batches published again (after a reconnect or a resend request).
    pub resent: AtomicU64,
    /// Publish -> ack latencies of sales sent after the warm-up.
    pub latencies: Mutex<Vec<Duration>>,
}

/// How a virtual store behaves.
#[derive(Debug, Clone)]
pub struct VStoreConfig {
    /// Its id.
    pub store: StoreId,
    /// Where it connects (the hub's broker, or a proxy standing for its WAN).
    pub broker: SocketAddr,
    /// Over TLS with its certificate (the broker's certificate must name
    /// the address's IP).
    pub tls: bool,
    /// Its credential: signs its batches, checks the hub's acks.
    pub trust: Arc<EdgeTrust>,
    /// Sales per second (exponential inter-arrival times).
    pub rate: f64,
    /// Lines per sale, chosen uniformly in this range.
    pub lines: (usize, usize),
    /// Latencies of sales published before this instant are not kept.
    pub measure_from: Instant,
    /// When to stop selling (it keeps running until every sale is acked or
    /// `stop` is cancelled).
    pub sell_until: Instant,
    /// Most batches awaiting the hub's ack, as the edge's `sync.window`.
    pub window: usize,
}

fn sale_event(store_no: u64, seq: u64, lines: usize) -> Event {
    let mut s = samples::cash_sale(lines);
    let n = (u128::from(store_no) << 40) | u128::from(seq);
    let now = storegate_edge::journal::now_ms();
    s.sale_id = EventId::from_parts(now as u64, n << 4);
    for (i, t) in s.tenders.iter_mut().enumerate() {
        t.payment_key = EventId::from_parts(now as u64, (n << 4) | (i as u128 + 1));
    }
    s.started_at_ms = now;
    s.completed_at_ms = now;
    Event {
        id: EventId::from_parts(now as u64 + 1, n),
        seq: Seq(seq),
        recorded_at_ms: now,
        body: EventBody::Sale(s),
    }
}

enum Link {
    Connected,
    Ack(u64),
    Resend(u64),
    ResendUnacked,
}

/// Runs one virtual store until it has sold until `sell_until` and every
/// sale is acknowledged, or `stop`. Returns the last seq it sold.
pub async fn run(cfg: VStoreConfig, store_no: u64, stats: Arc<VStats>, stop: CancellationToken) -> u64 {
    let mut opts = MqttOptions::new(
        format!("edge-{}", cfg.store),
        cfg.broker.ip().to_string(),
        cfg.broker.port(),
    );
    if cfg.tls
        && let Some(tls) = &cfg.trust.tls
    {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    opts.set_keep_alive(Duration::from_secs(15))
        .set_clean_session(true)
        .set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let ack_wan = WanTopic::Ack(cfg.store.clone());
    let ack_topic = ack_wan.to_string();
    let up_wan = WanTopic::Up(cfg.store.clone());
    let up_topic = up_wan.to_string();
    let trust = cfg.trust.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = client.clone();
    let link_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                () = link_stop.cancelled() => return,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(Link::Connected);
                }
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce);
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => match seal::open(
                    &p.payload,
                    &ack_wan,
                    &p.topic,
                    &trust.hub_keys,
                    trust.accept_unsigned,
                )
                .map_err(|e| e.to_string())
                .and_then(|body| envelope::decode_body(body).map_err(|e| e.to_string()))
                {
                    Ok(Message::AppAck(a)) => {
                        let _ = tx.send(Link::Ack(a.committed_up_to.0));
                    }
                    Ok(Message::ResendRequest(r)) => {
                        let _ = tx.send(Link::Resend(r.from.0));
                    }
                    Ok(Message::ResendUnacked(_)) => {
                        let _ = tx.send(Link::ResendUnacked);
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    });

    let publish = |events: Vec<Event>| {
        let first = events.first().map_or(0, |e| e.seq.0);
        let last = events.last().map_or(0, |e| e.seq.0);
        let batch = cfg.trust.sealer.seal(
            &up_wan,
            &Message::UpBatch(UpBatch {
                store: cfg.store.clone(),
                first: Seq(first),
                last: Seq(last),
                events,
                backlog: 0,
                dropped_telemetry: 0,
            }),
        );
        client.try_publish(up_topic.clone(), QoS::AtLeastOnce, false, batch)
    };
    // seq -> (event, published at)
    let mut pending: BTreeMap<u64, (Event, Instant)> = BTreeMap::new();
    // Last seq of each batch awaiting its ack; the first unsent seq.
    let mut in_flight: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut unsent = 1u64;
    let mut next_seq = 1u64;
    let mut connected = false;
    let mean = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut next_sale = Instant::now() + mean.mul_f64(rand::random::<f64>());
    loop {
        // Like the edge: while fewer than `window` batches await the hub,
        // send everything not yet sent as one batch.
        if connected && in_flight.len() < cfg.window.max(1) && unsent < next_seq {
            let batch: Vec<Event> = pending
                .range(unsent..)
                .take(500)
                .map(|(_, (e, _))| e.clone())
                .collect();
            if let Some(last) = batch.last().map(|e| e.seq.0)
                && publish(batch).is_ok()
            {
                in_flight.push_back(last);
                unsent = last + 1;
                continue;
            }
        }
        let selling = Instant::now() < cfg.sell_until;
        if !selling && pending.is_empty() {
            return next_seq - 1;
        }
        let wake = if selling {
            next_sale
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            () = stop.cancelled() => return next_seq - 1,
            () = tokio::time::sleep_until(wake.into()) => {
                let lines = rand::rng().random_range(cfg.lines.0..=cfg.lines.1);
                let e = sale_event(store_no, next_seq, lines);
                next_seq += 1;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                pending.insert(e.seq.0, (e, Instant::now()));
                next_sale += mean.mul_f64(-(1.0 - rand::random::<f64>()).ln());
            }
            msg = rx.recv() => match msg {
                None => return next_seq - 1,
                Some(Link::Connected | Link::ResendUnacked) => {
                    // A new session, or a hub that lost its own: whatever
                    // was in flight is sent again.
                    connected = true;
                    if !in_flight.is_empty() {
                        stats.resent.fetch_add(1, Ordering::Relaxed);
                    }
                    in_flight.clear();
                    unsent = pending.keys().next().copied().unwrap_or(next_seq);
                }
                Some(Link::Ack(up_to)) => {
                    let now = Instant::now();
                    while in_flight.front().is_some_and(|l| *l <= up_to) {
                        in_flight.pop_front();
                    }
                    let done: Vec<u64> = pending.range(..=up_to).map(|(s, _)| *s).collect();
                    let mut lat = Vec::with_capacity(done.len());
                    for s in done {
                        if let Some((_, at)) = pending.remove(&s) {
                            stats.acked.fetch_add(1, Ordering::Relaxed);
                            if at >= cfg.measure_from && at < cfg.sell_until {
                                lat.push(now - at);
                            }
                        }
                    }
                    unsent = unsent.max(up_to + 1);
                    if !lat.is_empty()
                        && let Ok(mut l) = stats.latencies.lock()
                    {
                        l.extend(lat);
                    }
                }
                Some(Link::Resend(from)) => {
                    stats.resent.fetch_add(1, Ordering::Relaxed);
                    in_flight.clear();
                    unsent = from.max(pending.keys().next().copied().unwrap_or(from));
                }
            }
        }
    }
}
