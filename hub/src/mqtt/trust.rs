//! The hub's side of WAN trust: it signs everything it sends to stores
//! with its key, checks everything that arrives against the store
//! credentials ([`crate::credentials::Registry`]), and decides who may
//! connect to the embedded broker's TLS listener ([`StoreGate`]).
//!
//! A message that fails its check is dropped with no effect (it is not
//! quarantined: that would let anyone who reaches the broker fill the
//! database), counted in `hub_wan_refused_total{reason}` and logged once
//! per burst; the MQTT message is still acked, so nothing behind it waits.

use std::sync::Arc;
use std::time::Duration;

use storegate_broker::burst::BurstLog;
use storegate_broker::gate::{Grant, Peer, Policy, Refused};
use storegate_protocol::envelope::Message;
use storegate_protocol::seal::{self, Refusal, Sealer};
use storegate_protocol::topic::{RpcLeg, RpcSide, WanTopic};

use crate::credentials::Registry;
use crate::pki::cert_sha256;

/// Signs and checks the hub's WAN messages. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Trust {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The hub's signing key (or unsigned, in the insecure mode).
    sealer: Sealer,
    /// Store credentials.
    registry: Registry,
    /// Accept version 1 (unsigned) messages: the insecure mode only.
    accept_unsigned: bool,
    /// Throttles refusal logs.
    log: BurstLog,
    /// Refusals by reason, for this hub (`hub_wan_refused_total` counts
    /// the same, process-wide).
    refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Trust {
    /// Signs with `sealer`, checks against `registry`.
    pub fn new(sealer: Sealer, registry: Registry, accept_unsigned: bool) -> Trust {
        Trust {
            inner: Arc::new(Inner {
                sealer,
                registry,
                accept_unsigned,
                log: BurstLog::new(Duration::from_secs(10)),
                refusals: std::sync::Mutex::default(),
            }),
        }
    }

    /// The store credentials.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The envelope of `message` for `topic`, signed by the hub.
    pub fn seal(&self, topic: &WanTopic, message: &Message) -> Vec<u8> {
        self.inner.sealer.seal(topic, message)
    }

    /// Checks a message that arrived on `topic` (text as received) and
    /// returns its body. A refusal is counted and logged here.
    pub async fn open<'a>(
        &self,
        topic: &WanTopic,
        topic_text: &str,
        bytes: &'a [u8],
    ) -> Result<&'a [u8], Refusal> {
        let i = &self.inner;
        let mut r = seal::open(bytes, topic, topic_text, &i.registry, i.accept_unsigned);
        if let Err(Refusal::UnknownKey(kid)) = &r
            && i.registry.look_up_key(kid).await
        {
            r = seal::open(bytes, topic, topic_text, &i.registry, i.accept_unsigned);
        }
        if let Err(why) = &r {
            metrics::counter!("hub_wan_refused_total", "reason" => why.name()).increment(1);
            if let Ok(mut m) = i.refusals.lock() {
                *m.entry(why.name()).or_default() += 1;
            }
            if let Some(suppressed) = i.log.note(why.name()) {
                tracing::warn!(topic = topic_text, reason = %why, suppressed, "refused a WAN message: no effect");
            }
        }
        r
    }

    /// Counts a message refused for `reason` (metrics and this hub's own
    /// count) and logs it once per burst.
    pub fn count(&self, reason: &'static str) {
        metrics::counter!("hub_wan_refused_total", "reason" => reason).increment(1);
        if let Ok(mut m) = self.inner.refusals.lock() {
            *m.entry(reason).or_default() += 1;
        }
        if let Some(suppressed) = self.inner.log.note(reason) {
            tracing::warn!(reason, suppressed, "refused a WAN message: no effect");
        }
    }

    /// Messages this hub refused for `reason` so far.
    pub fn refused(&self, reason: &str) -> u64 {
        self.inner
            .refusals
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every refusal this hub counted so far.
    pub fn refused_total(&self) -> u64 {
        self.inner.refusals.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// Who may connect to the embedded broker's TLS listener: a store whose
/// client certificate is a valid credential in the registry, with client
/// id `edge-{store}`, publishing and subscribing only on its own topics in
/// its own direction.
#[derive(Debug, Clone)]
pub struct StoreGate {
    /// Store credentials.
    pub registry: Registry,
}

/// The topics a store publishes to and subscribes to.
pub fn store_grant_topics(store: &storegate_protocol::StoreId) -> (Vec<String>, Vec<String>) {
    let s = || store.clone();
    let publish = [
        WanTopic::Up(s()),
        WanTopic::Status(s()),
        WanTopic::Rpc(s(), RpcSide::Edge, RpcLeg::Req),
        WanTopic::Rpc(s(), RpcSide::Hub, RpcLeg::Res),
    ];
    let subscribe = [
        WanTopic::Ack(s()),
        WanTopic::Down(s()),
        WanTopic::Rpc(s(), RpcSide::Edge, RpcLeg::Res),
        WanTopic::Rpc(s(), RpcSide::Hub, RpcLeg::Req),
    ];
    (
        publish.iter().map(ToString::to_string).collect(),
        subscribe.iter().map(ToString::to_string).collect(),
    )
}

impl Policy for StoreGate {
    async fn admit(&self, peer: &Peer<'_>) -> Result<Grant, Refused> {
        let der = peer.cert.ok_or(Refused::NotAuthorized("no_certificate"))?;
        let sha = cert_sha256(der);
        let mut found = self.registry.by_certificate(&sha);
        if found.is_none() && self.registry.look_up_certificate(&sha).await {
            found = self.registry.by_certificate(&sha);
        }
        let (store, kid, revoked) = found.ok_or(Refused::NotAuthorized("unknown_or_revoked_certificate"))?;
        if peer.client_id != format!("edge-{store}") {
            return Err(Refused::BadClientId);
        }
        let (publish, subscribe) = store_grant_topics(&store);
        Ok(Grant {
            label: format!("store {store} (credential {kid})"),
            publish,
            // Presence is retained (and is the last will); nothing else.
            retain: vec![WanTopic::Status(store.clone()).to_string()],
            subscribe,
            qos0: false,
            rate: None,
            // An edge has one connection; a second briefly while a dead
            // one times out.
            max_sessions: Some(4),
            revoked,
        })
    }
}
