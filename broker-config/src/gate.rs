//! The gate: an MQTT-aware front door (TLS-terminating, or plain TCP on a
//! store LAN) for an embedded rumqttd, which has no per-client
//! authorisation of its own. The hub's WAN listener (client certificates)
//! and the edge's device bus (device usernames and passwords) both use it.
//!
//! Each TCP connection gets its own task, so a peer that never finishes its
//! TLS handshake (or never sends CONNECT) holds up nobody else (rumqttd's
//! own TLS listener handshakes inside its accept loop: one idle socket
//! froze every client). The handshake and the CONNECT must both arrive
//! within `handshake_timeout`; at most `max_pending` connections may be in
//! that state at once, and past it the *oldest* pending one is dropped to
//! make room, so a flood of idle sockets cannot lock real clients out (a
//! real handshake takes milliseconds; the flood's sockets are always the
//! oldest). A CONNECT is at most [`MAX_CONNECT`] bytes, and packet bodies
//! are read as they arrive, never allocated up front from a declared
//! length.
//!
//! After the handshake the [`Policy`] decides, from the client certificate
//! and the CONNECT packet, whether the peer may connect and what it may
//! publish and subscribe to ([`Grant`]). The CONNECT is then forwarded
//! unchanged to the broker's loopback listener, and every later packet from
//! the client is framed and checked: a PUBLISH to a topic, or a SUBSCRIBE
//! to a filter, outside the grant closes the connection (MQTT 3.1.1 has no
//! negative PUBACK; closing is what the standard allows), as does a second
//! CONNECT or a malformed packet. Packets from the broker to the client are
//! copied as they are: the broker only sends what the client subscribed to,
//! and that was checked. A grant's `revoked` token closes the connection
//! whenever it is cancelled (revocation without a restart). QoS 2 is
//! refused (no storegate client uses it, and rumqttd holds every
//! unreleased QoS 2 message in memory). A grant may carry a rate, shared by
//! every connection under its label and kept across reconnects, counting
//! every packet: past it the gate stops reading that client's socket until
//! the rate allows the next packet (TCP pushes back on the client; nothing
//! queues in the gate), counted as throttled.
//!
//! The gate also keeps rumqttd 0.20 standing: it panics (and poisons the
//! lock every later CONNECT takes, so the broker admits no one again) when
//! a client id reconnects after a connection that ended before rumqttd
//! wrote its CONNACK, or that the router refused for being one too many.
//! The router also silently refuses a client id holding `/`, `+`, `#` or
//! `$`, which sets up the same panic; the gate refuses those ids itself.
//! So the gate reads the broker's CONNACK before it lets anything close,
//! and admits at most `max_clients` connections (below the broker's
//! `max_connections`) and at most a grant's `max_sessions` per identity.
//!
//! Only MQTT 3.1.1 (protocol level 4) is spoken here; every storegate
//! client uses it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::burst::BurstLog;

/// A CONNECT's password: shown nowhere (its `Debug` is a placeholder).
#[derive(Clone, Copy)]
pub struct Password<'a>(pub &'a [u8]);

impl std::fmt::Debug for Password<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What a peer presented.
#[derive(Debug)]
pub struct Peer<'a> {
    /// Its address.
    pub addr: SocketAddr,
    /// Its TLS client certificate (leaf, DER).
    pub cert: Option<&'a [u8]>,
    /// The CONNECT's client id.
    pub client_id: &'a str,
    /// The CONNECT's will topic, if any.
    pub will_topic: Option<&'a str>,
    /// The CONNECT's username, if any.
    pub username: Option<&'a str>,
    /// The CONNECT's password, if any.
    pub password: Option<Password<'a>>,
}

/// Largest CONNECT packet accepted.
pub const MAX_CONNECT: usize = 16 * 1024;

/// What an admitted peer may do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who it is (logs).
    pub label: String,
    /// Topics it may publish to (exact), at QoS 1 or 2 unless `qos0`.
    pub publish: Vec<String>,
    /// QoS 0 publishes allowed too. Off for WAN peers (QoS 0 would bypass
    /// the broker's in-flight limit towards the subscriber); on for store
    /// devices, which `mosquitto_pub` drives at QoS 0 by default.
    pub qos0: bool,
    /// Most packets per second, with a burst, for all of this label's
    /// connections together; `None`: no limit.
    pub rate: Option<Rate>,
    /// Most connections at once under this grant's label; `None`: no limit.
    pub max_sessions: Option<usize>,
    /// Of those, the topics it may publish retained (or set as its will).
    pub retain: Vec<String>,
    /// Filters it may subscribe to (exact).
    pub subscribe: Vec<String>,
    /// Cancelled when its identity stops being valid (revoked): the
    /// connection is closed.
    pub revoked: CancellationToken,
}

/// A publish rate: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained publishes per second (at least 1).
    pub per_sec: u32,
    /// Publishes allowed back to back (at least 1).
    pub burst: u32,
}

/// A token bucket for one connection's [`Rate`] (tokio time, so tests can
/// pause it).
#[derive(Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        let rate = Rate {
            per_sec: rate.per_sec.max(1),
            burst: rate.burst.max(1),
        };
        Bucket {
            rate,
            tokens: f64::from(rate.burst),
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes a token; if none is left, how long until one is (the token is
    /// then spent: the caller waits that long before going on).
    fn take(&mut self) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let per_sec = f64::from(self.rate.per_sec);
        let refill = now.duration_since(self.last).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst));
        self.last = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / per_sec))
    }
}

/// Why a peer was refused at CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No or unknown identity (CONNACK 5, not authorised).
    NotAuthorized(&'static str),
    /// The client id is not the one its identity must use (CONNACK 2).
    BadClientId,
}

/// Decides who may connect and what they may do.
pub trait Policy: Send + Sync + 'static {
    /// Admits `peer` with a grant, or refuses it.
    fn admit(&self, peer: &Peer<'_>) -> impl Future<Output = Result<Grant, Refused>> + Send;
}

/// How the gate runs.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// A name for logs and metrics (`wan`).
    pub name: &'static str,
    /// The broker's own (loopback) listener the gate forwards to.
    pub upstream: SocketAddr,
    /// TLS (the WAN: requiring client certificates), or `None` for plain
    /// TCP (a store LAN, where devices present a username and password).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest time from accept to a complete CONNECT.
    pub handshake_timeout: Duration,
    /// Most connections between accept and CONNECT at once.
    pub max_pending: usize,
    /// Largest MQTT packet accepted from a client.
    pub max_packet: usize,
    /// Most admitted connections at once; keep it below the broker's
    /// `router.max_connections` (see the module docs).
    pub max_clients: usize,
}

/// The admitted connections, in all and per grant label, and each rated
/// label's bucket (kept across reconnects; as many as labels with a rate).
#[derive(Debug, Default)]
struct Sessions {
    by_label: std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>,
    buckets: std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<Bucket>>>>,
}

/// One admitted connection's place; given back on drop.
struct Session {
    sessions: Arc<Sessions>,
    label: String,
}

impl Sessions {
    /// The bucket every connection under `grant`'s label shares.
    fn bucket(&self, grant: &Grant) -> Option<Arc<std::sync::Mutex<Bucket>>> {
        let rate = grant.rate?;
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(
            b.entry(grant.label.clone())
                .or_insert_with(|| Arc::new(std::sync::Mutex::new(Bucket::new(rate))))
                .clone(),
        )
    }

    fn enter(self: &Arc<Self>, grant: &Grant, max_clients: usize) -> Result<Session, &'static str> {
        let mut g = self
            .by_label
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, by_label) = &mut *g;
        if *total >= max_clients {
            return Err("too_many_clients");
        }
        let n = by_label.entry(grant.label.clone()).or_default();
        if grant.max_sessions.is_some_and(|max| *n >= max) {
            return Err("too_many_sessions");
        }
        *n += 1;
        *total += 1;
        Ok(Session {
            sessions: self.clone(),
            label: grant.label.clone(),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut g = self
            .sessions
            .by_label
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, by_label) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = by_label.get_mut(&self.label) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_label.remove(&self.label);
            }
        }
    }
}

/// What one gate admitted and refused (the `mqtt_gate_*` metrics count
/// the same, process-wide).
#[derive(Debug, Default)]
pub struct GateStats {
    /// Connections admitted.
    pub admitted: std::sync::atomic::AtomicU64,
    /// Publishes held back by a grant's rate.
    pub throttled: std::sync::atomic::AtomicU64,
    /// Refusals by reason.
    refused: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl GateStats {
    /// Refusals for `reason` so far.
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every refusal reason with its count.
    pub fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.refused.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn count(&self, reason: &'static str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
}

/// Starts the gate on `listener`. Returns at once (with its counters); the
/// accept loop and every connection live on `tracker` until `shutdown`.
pub fn spawn<P: Policy>(
    listener: TcpListener,
    cfg: GateConfig,
    policy: Arc<P>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Arc<GateStats> {
    let acceptor = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let pending = Arc::new(Pending::new(cfg.max_pending));
    let sessions = Arc::new(Sessions::default());
    let cfg = Arc::new(cfg);
    let log = Arc::new(Log {
        burst: BurstLog::new(Duration::from_secs(10)),
        stats: Arc::default(),
    });
    let stats = log.stats.clone();
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(gate = cfg.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (slot, evict) = pending.enter();
            if evict {
                refused(&cfg, &log, "evicted_pending", addr);
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, cfg, policy, log, shutdown) = (
                acceptor.clone(),
                cfg.clone(),
                policy.clone(),
                log.clone(),
                shutdown.clone(),
            );
            let pending = pending.clone();
            let sessions = sessions.clone();
            conns.spawn(async move {
                let admitted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = slot.evicted.cancelled() => return,
                    r = tokio::time::timeout(
                        cfg.handshake_timeout,
                        handshake(acceptor.as_ref(), tcp, addr, &cfg, policy.as_ref(), &sessions),
                    ) => r,
                };
                pending.leave(slot.id);
                let (client, connect, grant, _session) = match admitted {
                    Ok(Ok(x)) => x,
                    Ok(Err(reason)) => return refused(&cfg, &log, reason, addr),
                    Err(_) => return refused(&cfg, &log, "handshake_timeout", addr),
                };
                metrics::counter!("mqtt_gate_admitted_total", "gate" => cfg.name).increment(1);
                log.stats.admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(gate = cfg.name, peer = %addr, who = %grant.label, "admitted");
                let bucket = sessions.bucket(&grant);
                if let Some(reason) = relay(client, connect, &grant, bucket, &cfg, &log, &shutdown).await {
                    refused(&cfg, &log, reason, addr);
                    tracing::info!(gate = cfg.name, peer = %addr, who = %grant.label, reason, "connection closed");
                }
            });
        }
    });
    stats
}

/// Connections between accept and CONNECT, oldest first.
struct Pending {
    /// Most at once.
    max: usize,
    /// Accept order -> cancelled to evict.
    slots: std::sync::Mutex<(u64, std::collections::BTreeMap<u64, CancellationToken>)>,
}

/// A connection's place among the pending.
struct Slot {
    id: u64,
    evicted: CancellationToken,
}

impl Pending {
    fn new(max: usize) -> Pending {
        Pending {
            max: max.max(1),
            slots: std::sync::Mutex::default(),
        }
    }

    /// Takes a slot for a new connection; if all were taken, evicts the
    /// oldest (returns true).
    fn enter(&self) -> (Slot, bool) {
        let mut g = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, slots) = &mut *g;
        let mut evicted = false;
        if slots.len() >= self.max
            && let Some((_, oldest)) = slots.pop_first()
        {
            oldest.cancel();
            evicted = true;
        }
        *next += 1;
        let slot = Slot {
            id: *next,
            evicted: CancellationToken::new(),
        };
        slots.insert(slot.id, slot.evicted.clone());
        (slot, evicted)
    }

    /// The connection is past CONNECT (or gone).
    fn leave(&self, id: u64) {
        let mut g = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1.remove(&id);
    }
}

/// The refusal log and counters.
struct Log {
    burst: BurstLog,
    stats: Arc<GateStats>,
}

fn refused(cfg: &GateConfig, log: &Log, reason: &'static str, addr: SocketAddr) {
    metrics::counter!("mqtt_gate_refused_total", "gate" => cfg.name, "reason" => reason).increment(1);
    log.stats.count(reason);
    if let Some(suppressed) = log.burst.note(reason) {
        tracing::warn!(gate = cfg.name, peer = %addr, reason, suppressed, "connection refused");
    }
}

/// A client's byte stream: TLS or plain TCP.
trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientIo for T {}
type Client = Box<dyn ClientIo>;

/// TLS handshake (if any), CONNECT, policy. Returns the stream, the
/// CONNECT bytes to forward and the grant; or why not.
async fn handshake<P: Policy>(
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    tcp: TcpStream,
    addr: SocketAddr,
    cfg: &GateConfig,
    policy: &P,
    sessions: &Arc<Sessions>,
) -> Result<(Client, Vec<u8>, Grant, Session), &'static str> {
    let (mut tls, cert): (Client, Option<Vec<u8>>) = match acceptor {
        Some(acceptor) => {
            let tls = acceptor.accept(tcp).await.map_err(|_| "tls_handshake")?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            (Box::new(tls), cert)
        }
        None => (Box::new(tcp), None),
    };
    let packet = read_packet(&mut tls, MAX_CONNECT.min(cfg.max_packet))
        .await
        .map_err(|e| e.reason())?;
    let connect = parse_connect(&packet).ok_or("bad_connect")?;
    if connect.client_id.contains(['/', '+', '#', '$']) {
        // CONNACK 2: identifier rejected.
        let _ = tls.write_all(&[0x20, 0x02, 0x00, 0x02]).await;
        return Err("bad_client_id");
    }
    let peer = Peer {
        addr,
        cert: cert.as_deref(),
        client_id: &connect.client_id,
        will_topic: connect.will_topic.as_deref(),
        username: connect.username.as_deref(),
        password: connect.password.as_deref().map(Password),
    };
    match policy.admit(&peer).await {
        Ok(grant) => {
            if let Some(t) = &connect.will_topic
                && !grant.retain.iter().any(|p| p == t)
            {
                let _ = tls.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
                return Err("will_not_allowed");
            }
            match sessions.enter(&grant, cfg.max_clients) {
                Ok(session) => Ok((tls, packet, grant, session)),
                Err(reason) => {
                    // CONNACK 3: server unavailable (try later).
                    let _ = tls.write_all(&[0x20, 0x02, 0x00, 0x03]).await;
                    let _ = tls.shutdown().await;
                    Err(reason)
                }
            }
        }
        Err(r) => {
            let (code, reason) = match r {
                Refused::NotAuthorized(why) => (0x05, why),
                Refused::BadClientId => (0x02, "bad_client_id"),
            };
            let _ = tls.write_all(&[0x20, 0x02, 0x00, code]).await;
            let _ = tls.shutdown().await;
            Err(reason)
        }
    }
}

/// Forwards between the admitted client and the broker until either side
/// closes, the grant is revoked or the gate stops. Returns why the gate
/// closed it, if it did.
async fn relay(
    client: Client,
    connect: Vec<u8>,
    grant: &Grant,
    bucket: Option<Arc<std::sync::Mutex<Bucket>>>,
    cfg: &GateConfig,
    log: &Log,
    shutdown: &CancellationToken,
) -> Option<&'static str> {
    let mut broker = match TcpStream::connect(cfg.upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(gate = cfg.name, error = %e, upstream = %cfg.upstream, "broker unreachable");
            return Some("broker_unreachable");
        }
    };
    let _ = broker.set_nodelay(true);
    if broker.write_all(&connect).await.is_err() {
        return Some("broker_unreachable");
    }
    // The broker's CONNACK is read before anything may close (see the
    // module docs), then handed to the client.
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    match tokio::time::timeout(cfg.handshake_timeout, read_packet(&mut broker_rx, 64)).await {
        Ok(Ok(connack)) => {
            if client_tx.write_all(&connack).await.is_err() {
                return None;
            }
        }
        _ => {
            tracing::error!(gate = cfg.name, who = %grant.label, "the broker did not answer a CONNECT");
            return Some("broker_no_connack");
        }
    }
    let upstream = async {
        loop {
            let packet = match read_packet(&mut client_rx, cfg.max_packet).await {
                Ok(p) => p,
                Err(PacketError::Closed) => return None,
                Err(e) => return Some(e.reason()),
            };
            if let Err(reason) = check(&packet, grant) {
                return Some(reason);
            }
            let wait = bucket
                .as_ref()
                .and_then(|b| b.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
            if let Some(wait) = wait {
                metrics::counter!("mqtt_gate_throttled_total", "gate" => cfg.name).increment(1);
                log.stats
                    .throttled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(suppressed) = log.burst.note("throttled") {
                    tracing::warn!(gate = cfg.name, who = %grant.label, suppressed, "publishing faster than its rate; held back");
                }
                tokio::time::sleep(wait).await;
            }
            if broker_tx.write_all(&packet).await.is_err() {
                return None;
            }
        }
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut broker_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::select! {
        r = upstream => r,
        () = downstream => None,
        () = grant.revoked.cancelled() => Some("revoked"),
        () = shutdown.cancelled() => None,
    }
}

/// Checks one client packet against the grant.
fn check(packet: &[u8], grant: &Grant) -> Result<(), &'static str> {
    let kind = packet[0] >> 4;
    let body = body_of(packet).ok_or("malformed")?;
    match kind {
        // PUBLISH
        3 => {
            let topic = read_str(body, 0).ok_or("malformed")?.0;
            if !grant.publish.iter().any(|t| t == topic) {
                Err("publish_not_allowed")
            } else if (packet[0] >> 1) & 3 == 0 && !grant.qos0 {
                Err("qos0_not_allowed")
            } else if (packet[0] >> 1) & 3 >= 2 {
                Err("qos2_not_allowed")
            } else if packet[0] & 1 == 1 && !grant.retain.iter().any(|t| t == topic) {
                Err("retain_not_allowed")
            } else {
                Ok(())
            }
        }
        // SUBSCRIBE
        8 => {
            let mut at = 2; // packet id
            if body.len() <= at {
                return Err("malformed");
            }
            while at < body.len() {
                let (filter, next) = read_str(body, at).ok_or("malformed")?;
                if !grant.subscribe.iter().any(|f| f == filter) {
                    return Err("subscribe_not_allowed");
                }
                at = next + 1; // requested QoS
                if at > body.len() {
                    return Err("malformed");
                }
            }
            Ok(())
        }
        // CONNECT again
        1 => Err("second_connect"),
        // PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBSCRIBE, PINGREQ, DISCONNECT
        4..=7 | 10 | 12 | 14 => Ok(()),
        _ => Err("unexpected_packet"),
    }
}

/// The variable header and payload of a framed packet.
fn body_of(packet: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    while *packet.get(i)? & 0x80 != 0 {
        i += 1;
    }
    packet.get(i + 1..)
}

/// A length-prefixed UTF-8 string at `at`; returns it and where it ends.
fn read_str(buf: &[u8], at: usize) -> Option<(&str, usize)> {
    let len = usize::from(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]));
    let end = at.checked_add(2)?.checked_add(len)?;
    let s = std::str::from_utf8(buf.get(at + 2..end)?).ok()?;
    Some((s, end))
}

/// The fields of a CONNECT the policy needs (its `Debug` hides the password).
#[derive(PartialEq, Eq)]
struct Connect {
    /// Protocol level (4: MQTT 3.1.1).
    level: u8,
    /// Client id.
    client_id: String,
    /// Will topic.
    will_topic: Option<String>,
    /// Username.
    username: Option<String>,
    /// Password.
    password: Option<Vec<u8>>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("level", &self.level)
            .field("client_id", &self.client_id)
            .field("will_topic", &self.will_topic)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Parses an MQTT 3.1.1 CONNECT packet (framed); `None` if it is not one.
fn parse_connect(packet: &[u8]) -> Option<Connect> {
    if packet.first()? != &0x10 {
        return None;
    }
    let body = body_of(packet)?;
    let (name, at) = read_str(body, 0)?;
    let level = *body.get(at)?;
    if name != "MQTT" || level != 4 {
        return None;
    }
    let flags = *body.get(at + 1)?;
    if flags & 0x01 != 0 {
        return None; // reserved bit
    }
    let at = at + 4; // level, flags, keep alive
    let (client_id, mut at) = read_str(body, at)?;
    let mut will_topic = None;
    if flags & 0x04 != 0 {
        let (t, next) = read_str(body, at)?;
        will_topic = Some(t.to_owned());
        let len = usize::from(u16::from_be_bytes([*body.get(next)?, *body.get(next + 1)?]));
        at = next + 2 + len;
        body.get(..at)?;
    }
    let mut username = None;
    if flags & 0x80 != 0 {
        let (u, next) = read_str(body, at)?;
        username = Some(u.to_owned());
        at = next;
    }
    let mut password = None;
    if flags & 0x40 != 0 {
        let len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
        password = Some(body.get(at + 2..at + 2 + len)?.to_vec());
    }
    Some(Connect {
        level,
        client_id: client_id.to_owned(),
        will_topic,
        username,
        password,
    })
}

#[derive(Debug)]
enum PacketError {
    /// The peer closed cleanly between packets.
    Closed,
    /// Read failed or ended mid-packet.
    Io,
    /// Larger than allowed.
    TooLarge,
    /// The remaining length is not a valid varint.
    Malformed,
}

impl PacketError {
    fn reason(&self) -> &'static str {
        match self {
            PacketError::Closed | PacketError::Io => "closed_early",
            PacketError::TooLarge => "packet_too_large",
            PacketError::Malformed => "malformed",
        }
    }
}

/// Reads one framed MQTT packet (fixed header included).
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, PacketError> {
    let mut first = [0u8; 1];
    match r.read(&mut first).await {
        Ok(0) => return Err(PacketError::Closed),
        Ok(_) => {}
        Err(_) => return Err(PacketError::Io),
    }
    let mut out = Vec::with_capacity(64);
    out.push(first[0]);
    let mut len = 0usize;
    for i in 0..4 {
        let b = r.read_u8().await.map_err(|_| PacketError::Io)?;
        out.push(b);
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if len > max {
                return Err(PacketError::TooLarge);
            }
            // As the bytes arrive: a declared length costs nothing until
            // the peer actually sends that much.
            let start = out.len();
            let got = (&mut *r)
                .take(len as u64)
                .read_to_end(&mut out)
                .await
                .map_err(|_| PacketError::Io)?;
            if got != len || out.len() != start + len {
                return Err(PacketError::Io);
            }
            return Ok(out);
        }
    }
    Err(PacketError::Malformed)
}

/// For the fuzz target (`tests/fuzz`): frames `data` into packets as the
/// gate reads a client, parses the first as a CONNECT and checks every
/// later one against a fixed grant, as the gate would. Returns how many
/// packets were read and whether the first was a CONNECT.
#[doc(hidden)]
pub async fn fuzz_client_bytes(mut data: &[u8]) -> (usize, bool) {
    let grant = Grant {
        label: "fuzz".into(),
        publish: vec!["store/s1/pos/1/req".into()],
        retain: Vec::new(),
        subscribe: vec!["store/s1/pos/1/reply".into()],
        qos0: true,
        rate: None,
        max_sessions: None,
        revoked: CancellationToken::new(),
    };
    let mut packets = 0;
    let mut connect = false;
    while let Ok(packet) = read_packet(&mut data, 64 * 1024).await {
        if packets == 0 {
            connect = parse_connect(&packet).is_some();
        } else if check(&packet, &grant).is_err() {
            break;
        }
        packets += 1;
    }
    (packets, connect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(client_id: &str, will: Option<&str>, user: Option<&str>) -> Vec<u8> {
        connect_with(client_id, will, user, None)
    }

    fn connect_with(client_id: &str, will: Option<&str>, user: Option<&str>, pass: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
        let mut flags = 0x02;
        if will.is_some() {
            flags |= 0x04 | 0x20;
        }
        if user.is_some() {
            flags |= 0x80;
        }
        if pass.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&[0, 15]);
        let s = |b: &mut Vec<u8>, x: &[u8]| {
            b.extend_from_slice(&(x.len() as u16).to_be_bytes());
            b.extend_from_slice(x);
        };
        s(&mut body, client_id.as_bytes());
        if let Some(w) = will {
            s(&mut body, w.as_bytes());
            s(&mut body, b"bye");
        }
        if let Some(u) = user {
            s(&mut body, u.as_bytes());
        }
        if let Some(pw) = pass {
            s(&mut body, pw);
        }
        let mut p = vec![0x10, body.len() as u8];
        p.extend_from_slice(&body);
        p
    }

    fn grant() -> Grant {
        Grant {
            label: "t".into(),
            publish: vec!["a/up".into(), "a/status".into()],
            retain: vec!["a/status".into()],
            subscribe: vec!["a/ack".into()],
            qos0: false,
            rate: None,
            max_sessions: None,
            revoked: CancellationToken::new(),
        }
    }

    #[test]
    fn connect_fields_are_read() {
        assert_eq!(
            parse_connect(&connect("edge-a", Some("a/status"), Some("u"))),
            Some(Connect {
                level: 4,
                client_id: "edge-a".into(),
                will_topic: Some("a/status".into()),
                username: Some("u".into()),
                password: None,
            })
        );
        let c = parse_connect(&connect_with(
            "till-1",
            Some("a/status"),
            Some("till-1"),
            Some(b"s3cret"),
        ))
        .unwrap();
        assert_eq!(c.username.as_deref(), Some("till-1"));
        assert_eq!(c.password.as_deref(), Some(&b"s3cret"[..]));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password is never shown"
        );
        let mut short = connect_with("x", None, Some("u"), Some(b"pw"));
        short.truncate(short.len() - 1);
        short[1] -= 1;
        assert_eq!(parse_connect(&short), None, "a password cut short");
        assert_eq!(parse_connect(&connect("x", None, None)).unwrap().will_topic, None);
        let mut v5 = connect("x", None, None);
        v5[8] = 5;
        assert_eq!(parse_connect(&v5), None, "only MQTT 3.1.1");
        assert_eq!(parse_connect(&[0x10, 2, 0, 4]), None);
        assert_eq!(parse_connect(&[0x30, 0]), None);
    }

    #[test]
    fn publishes_and_subscriptions_outside_the_grant_are_refused() {
        let g = grant();
        let publish_with = |first: u8, t: &str| {
            let mut body = (t.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(t.as_bytes());
            if (first >> 1) & 3 > 0 {
                body.extend_from_slice(&[0, 1]);
            }
            body.extend_from_slice(b"payload");
            let mut p = vec![first, body.len() as u8];
            p.extend(body);
            p
        };
        let publish = |t: &str| publish_with(0x32, t);
        assert_eq!(check(&publish("a/up"), &g), Ok(()));
        assert_eq!(check(&publish_with(0x30, "a/up"), &g), Err("qos0_not_allowed"));
        let lan = Grant {
            qos0: true,
            ..grant()
        };
        assert_eq!(
            check(&publish_with(0x30, "a/up"), &lan),
            Ok(()),
            "a device's QoS 0"
        );
        assert_eq!(
            check(&publish_with(0x30, "b/up"), &lan),
            Err("publish_not_allowed")
        );
        assert_eq!(check(&publish_with(0x33, "a/up"), &g), Err("retain_not_allowed"));
        assert_eq!(check(&publish_with(0x33, "a/status"), &g), Ok(()));
        assert_eq!(check(&publish_with(0x34, "a/up"), &g), Err("qos2_not_allowed"));
        assert_eq!(check(&publish("b/up"), &g), Err("publish_not_allowed"));
        assert_eq!(check(&publish("a/up/x"), &g), Err("publish_not_allowed"));
        let subscribe = |filters: &[&str]| {
            let mut body = vec![0, 1];
            for f in filters {
                body.extend_from_slice(&(f.len() as u16).to_be_bytes());
                body.extend_from_slice(f.as_bytes());
                body.push(1);
            }
            let mut p = vec![0x82, body.len() as u8];
            p.extend(body);
            p
        };
        assert_eq!(check(&subscribe(&["a/ack"]), &g), Ok(()));
        assert_eq!(
            check(&subscribe(&["a/ack", "sg/#"]), &g),
            Err("subscribe_not_allowed")
        );
        assert_eq!(check(&subscribe(&["#"]), &g), Err("subscribe_not_allowed"));
        assert_eq!(check(&[0x82, 2, 0, 1], &g), Err("malformed"));
        assert_eq!(check(&connect("x", None, None), &g), Err("second_connect"));
        assert_eq!(check(&[0xC0, 0], &g), Ok(()), "PINGREQ passes");
        assert_eq!(check(&[0x32, 1, 0], &g), Err("malformed"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_allows_its_burst_then_spaces_publishes_out() {
        let mut b = Bucket::new(Rate {
            per_sec: 10,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(b.take(), None, "the burst goes through");
        }
        let wait = b.take().expect("the fourth waits");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        tokio::time::advance(wait).await;
        let wait = b.take().expect("still at the rate");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            assert_eq!(b.take(), None, "refilled to the burst, not past it");
        }
        assert!(b.take().is_some());
    }

    #[test]
    fn a_full_house_of_pending_connections_evicts_the_oldest() {
        let p = Pending::new(2);
        let (a, evicted) = p.enter();
        assert!(!evicted);
        let (b, _) = p.enter();
        let (c, evicted) = p.enter();
        assert!(evicted, "the third evicts one");
        assert!(a.evicted.is_cancelled(), "the oldest");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        p.leave(b.id);
        let (_, evicted) = p.enter();
        assert!(!evicted, "a slot was free again");
    }

    #[tokio::test]
    async fn a_declared_length_is_not_allocated_before_it_arrives() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // 2 MiB declared, 3 bytes sent, then the peer goes away.
        a.write_all(&[0x30, 0x80, 0x80, 0x80, 0x01, 1, 2, 3])
            .await
            .unwrap();
        drop(a);
        assert!(matches!(read_packet(&mut b, 4 << 20).await, Err(PacketError::Io)));
    }

    #[tokio::test]
    async fn packets_are_framed_and_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0xC0, 0, 0x30, 3, 0, 1, b'x']).await.unwrap();
        a.write_all(&[0x30, 0xFF, 0xFF, 0x7F]).await.unwrap();
        assert_eq!(read_packet(&mut b, 100).await.unwrap(), vec![0xC0, 0]);
        assert_eq!(read_packet(&mut b, 100).await.unwrap(), vec![0x30, 3, 0, 1, b'x']);
        assert!(matches!(
            read_packet(&mut b, 100).await,
            Err(PacketError::TooLarge)
        ));
        drop(a);
        let (a, mut b) = tokio::io::duplex(16);
        drop(a);
        assert!(matches!(read_packet(&mut b, 100).await, Err(PacketError::Closed)));
    }
}
