//! Every MQTT topic storegate uses, built and parsed here and nowhere else.
//!
//! WAN topics (edge <-> hub, postcard envelopes, QoS 1):
//!
//! | topic | direction | carries |
//! |---|---|---|
//! | `sg/v1/store/{store}/up` | edge -> hub | `UpBatch`, `DownAck` |
//! | `sg/v1/store/{store}/ack` | hub -> edge | `AppAck`, `ResendRequest`, `ResendUnacked` |
//! | `sg/v1/store/{store}/down` | hub -> edge | `DownBatch` |
//! | `sg/v1/store/{store}/rpc/edge/req` | edge -> hub | `RpcRequest` the edge asks |
//! | `sg/v1/store/{store}/rpc/edge/res` | hub -> edge | `RpcResponse` to it |
//! | `sg/v1/store/{store}/rpc/hub/req` | hub -> edge | `RpcRequest` the hub asks |
//! | `sg/v1/store/{store}/rpc/hub/res` | edge -> hub | `RpcResponse` to it |
//! | `sg/v1/store/{store}/status` | edge -> all | retained `Presence`; last will = offline |
//!
//! Hubs read `up` and edge-initiated RPC through shared subscriptions
//! ([`WanTopic::shared_filter`]) so that replicas split the stores between
//! them. The group's name is a secret of the hub replicas (derived from
//! their signing key): a store that subscribes to a shared filter at a
//! broker that does not check subscriptions joins a group of its own, not
//! the hubs', and so cannot take a share of other stores' messages.
//!
//! Store LAN topics (device bus, JSON, see [`crate::device`]):
//!
//! | topic | direction | carries |
//! |---|---|---|
//! | `store/{store}/device/{device}/scan` | device -> edge | `ScanMsg` |
//! | `store/{store}/device/{device}/weight` | device -> edge | `WeightMsg` |
//! | `store/{store}/device/{device}/health` | device -> edge | `HealthMsg` |
//! | `store/{store}/device/{device}/reply` | edge -> device | `DeviceReply` (e.g. a refused scan) |
//! | `store/{store}/pos/{lane}/req` | POS -> edge | `PosRequest` |
//! | `store/{store}/pos/{lane}/reply` | edge -> POS | `PosReply` |
//! | `store/{store}/task` | edge -> devices | `TaskMsg` |
//! | `store/{store}/task/update` | device -> edge | `TaskUpdateMsg` |

use std::fmt;

use crate::ids::{DeviceId, IdError, LaneId, StoreId};

/// Why a topic string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is not one storegate uses.
    #[error("unknown topic {0:?}")]
    Unknown(String),
    /// The topic has the right shape but an invalid identifier in it.
    #[error("topic {topic:?}: {source}")]
    BadId {
        /// The offending topic.
        topic: String,
        /// What was wrong with the identifier.
        source: IdError,
    },
}

/// Which side started an RPC exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcSide {
    /// The edge asks, the hub answers (card authorisation, lookups).
    Edge,
    /// The hub asks, the edge answers.
    Hub,
}

impl RpcSide {
    fn as_str(self) -> &'static str {
        match self {
            RpcSide::Edge => "edge",
            RpcSide::Hub => "hub",
        }
    }
}

/// Request or response leg of an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcLeg {
    /// The request.
    Req,
    /// The response.
    Res,
}

/// Who may send on a WAN topic (and so whose key must sign what arrives
/// there; see [`crate::seal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The hub.
    Hub,
    /// The store the topic names.
    Store,
}

/// A WAN topic between an edge and the hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WanTopic {
    /// `sg/v1/store/{store}/up`
    Up(StoreId),
    /// `sg/v1/store/{store}/ack`
    Ack(StoreId),
    /// `sg/v1/store/{store}/down`
    Down(StoreId),
    /// `sg/v1/store/{store}/rpc/{side}/{leg}`
    Rpc(StoreId, RpcSide, RpcLeg),
    /// `sg/v1/store/{store}/status`
    Status(StoreId),
}

const WAN_PREFIX: &str = "sg/v1/store/";

impl WanTopic {
    /// The store the topic belongs to.
    pub fn store(&self) -> &StoreId {
        match self {
            WanTopic::Up(s)
            | WanTopic::Ack(s)
            | WanTopic::Down(s)
            | WanTopic::Rpc(s, _, _)
            | WanTopic::Status(s) => s,
        }
    }

    /// Who sends on this topic.
    pub fn sender(&self) -> Sender {
        match self {
            WanTopic::Up(_)
            | WanTopic::Status(_)
            | WanTopic::Rpc(_, RpcSide::Edge, RpcLeg::Req)
            | WanTopic::Rpc(_, RpcSide::Hub, RpcLeg::Res) => Sender::Store,
            WanTopic::Ack(_)
            | WanTopic::Down(_)
            | WanTopic::Rpc(_, RpcSide::Edge, RpcLeg::Res)
            | WanTopic::Rpc(_, RpcSide::Hub, RpcLeg::Req) => Sender::Hub,
        }
    }

    /// Every WAN topic of `store`.
    pub fn all_of(store: &StoreId) -> [WanTopic; 8] {
        let s = || store.clone();
        [
            WanTopic::Up(s()),
            WanTopic::Ack(s()),
            WanTopic::Down(s()),
            WanTopic::Status(s()),
            WanTopic::Rpc(s(), RpcSide::Edge, RpcLeg::Req),
            WanTopic::Rpc(s(), RpcSide::Edge, RpcLeg::Res),
            WanTopic::Rpc(s(), RpcSide::Hub, RpcLeg::Req),
            WanTopic::Rpc(s(), RpcSide::Hub, RpcLeg::Res),
        ]
    }

    /// Parses a topic string; anything that is not exactly one of the WAN
    /// topics is an error.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let unknown = || TopicError::Unknown(topic.to_owned());
        let rest = topic.strip_prefix(WAN_PREFIX).ok_or_else(unknown)?;
        let mut parts = rest.split('/');
        let store = parts.next().ok_or_else(unknown)?;
        let tail: Vec<&str> = parts.collect();
        let kind = match tail.as_slice() {
            ["up"] => WanKind::Up,
            ["ack"] => WanKind::Ack,
            ["down"] => WanKind::Down,
            ["status"] => WanKind::Status,
            ["rpc", side, leg] => {
                let side = match *side {
                    "edge" => RpcSide::Edge,
                    "hub" => RpcSide::Hub,
                    _ => return Err(unknown()),
                };
                let leg = match *leg {
                    "req" => RpcLeg::Req,
                    "res" => RpcLeg::Res,
                    _ => return Err(unknown()),
                };
                WanKind::Rpc(side, leg)
            }
            _ => return Err(unknown()),
        };
        let store = StoreId::parse(store).map_err(|source| TopicError::BadId {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(WanTopic::new(store, kind))
    }

    /// The topic of `kind` for `store`.
    pub fn new(store: StoreId, kind: WanKind) -> Self {
        match kind {
            WanKind::Up => WanTopic::Up(store),
            WanKind::Ack => WanTopic::Ack(store),
            WanKind::Down => WanTopic::Down(store),
            WanKind::Status => WanTopic::Status(store),
            WanKind::Rpc(side, leg) => WanTopic::Rpc(store, side, leg),
        }
    }

    /// Topic filter matching one kind of WAN topic for every store (`+`).
    pub fn filter_all(kind: WanKind) -> String {
        format!("{WAN_PREFIX}+/{}", kind.suffix())
    }

    /// The shared-subscription filter hub replicas use for `kind` in the
    /// share group `group`, e.g. `$share/hub-1f2e3d4c/sg/v1/store/+/up`.
    pub fn shared_filter(group: &str, kind: WanKind) -> String {
        format!("$share/{group}/{}", Self::filter_all(kind))
    }

    /// The kind of this topic.
    pub fn kind(&self) -> WanKind {
        match self {
            WanTopic::Up(_) => WanKind::Up,
            WanTopic::Ack(_) => WanKind::Ack,
            WanTopic::Down(_) => WanKind::Down,
            WanTopic::Status(_) => WanKind::Status,
            WanTopic::Rpc(_, side, leg) => WanKind::Rpc(*side, *leg),
        }
    }
}

/// A WAN topic without its store: what a filter subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WanKind {
    /// Uplink.
    Up,
    /// Application acks.
    Ack,
    /// Downlink.
    Down,
    /// Presence.
    Status,
    /// RPC legs.
    Rpc(RpcSide, RpcLeg),
}

impl WanKind {
    fn suffix(self) -> String {
        match self {
            WanKind::Up => "up".into(),
            WanKind::Ack => "ack".into(),
            WanKind::Down => "down".into(),
            WanKind::Status => "status".into(),
            WanKind::Rpc(side, leg) => format!(
                "rpc/{}/{}",
                side.as_str(),
                match leg {
                    RpcLeg::Req => "req",
                    RpcLeg::Res => "res",
                }
            ),
        }
    }
}

impl fmt::Display for WanTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{WAN_PREFIX}{}/{}", self.store(), self.kind().suffix())
    }
}

/// What a device publishes or receives under `store/{store}/device/{device}/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceChannel {
    /// A scanned code.
    Scan,
    /// A weight reading.
    Weight,
    /// Device health report.
    Health,
    /// The edge's reply to a device (for example a refused scan).
    Reply,
    /// A supervisor's approval decision.
    Approve,
}

impl DeviceChannel {
    fn as_str(self) -> &'static str {
        match self {
            DeviceChannel::Scan => "scan",
            DeviceChannel::Weight => "weight",
            DeviceChannel::Health => "health",
            DeviceChannel::Reply => "reply",
            DeviceChannel::Approve => "approve",
        }
    }
}

/// A store LAN (device bus) topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LanTopic {
    /// `store/{store}/device/{device}/{channel}`
    Device(StoreId, DeviceId, DeviceChannel),
    /// `store/{store}/pos/{lane}/req`
    PosRequest(StoreId, LaneId),
    /// `store/{store}/pos/{lane}/reply`
    PosReply(StoreId, LaneId),
    /// `store/{store}/task`
    Tasks(StoreId),
    /// `store/{store}/task/update`
    TaskUpdate(StoreId),
    /// `store/{store}/approval`: operations waiting for a supervisor.
    Approvals(StoreId),
}

impl LanTopic {
    /// Parses a device bus topic.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let unknown = || TopicError::Unknown(topic.to_owned());
        let bad = |source| TopicError::BadId {
            topic: topic.to_owned(),
            source,
        };
        let parts: Vec<&str> = topic.split('/').collect();
        match parts.as_slice() {
            ["store", store, "device", device, ch] => {
                let ch = match *ch {
                    "scan" => DeviceChannel::Scan,
                    "weight" => DeviceChannel::Weight,
                    "health" => DeviceChannel::Health,
                    "reply" => DeviceChannel::Reply,
                    "approve" => DeviceChannel::Approve,
                    _ => return Err(unknown()),
                };
                Ok(LanTopic::Device(
                    StoreId::parse(*store).map_err(bad)?,
                    DeviceId::parse(*device).map_err(bad)?,
                    ch,
                ))
            }
            ["store", store, "pos", lane, leg @ ("req" | "reply")] => {
                let store = StoreId::parse(*store).map_err(bad)?;
                let lane = LaneId::parse(*lane).map_err(bad)?;
                Ok(if *leg == "req" {
                    LanTopic::PosRequest(store, lane)
                } else {
                    LanTopic::PosReply(store, lane)
                })
            }
            ["store", store, "task"] => Ok(LanTopic::Tasks(StoreId::parse(*store).map_err(bad)?)),
            ["store", store, "approval"] => Ok(LanTopic::Approvals(StoreId::parse(*store).map_err(bad)?)),
            ["store", store, "task", "update"] => {
                Ok(LanTopic::TaskUpdate(StoreId::parse(*store).map_err(bad)?))
            }
            _ => Err(unknown()),
        }
    }

    /// Filter for everything devices of `store` publish to the edge.
    pub fn inbound_filters(store: &StoreId) -> [String; 6] {
        [
            format!("store/{store}/device/+/scan"),
            format!("store/{store}/device/+/approve"),
            format!("store/{store}/device/+/weight"),
            format!("store/{store}/device/+/health"),
            format!("store/{store}/pos/+/req"),
            format!("store/{store}/task/update"),
        ]
    }
}

impl fmt::Display for LanTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LanTopic::Device(s, d, ch) => write!(f, "store/{s}/device/{d}/{}", ch.as_str()),
            LanTopic::PosRequest(s, l) => write!(f, "store/{s}/pos/{l}/req"),
            LanTopic::PosReply(s, l) => write!(f, "store/{s}/pos/{l}/reply"),
            LanTopic::Tasks(s) => write!(f, "store/{s}/task"),
            LanTopic::TaskUpdate(s) => write!(f, "store/{s}/task/update"),
            LanTopic::Approvals(s) => write!(f, "store/{s}/approval"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreId {
        StoreId::parse("s-001").unwrap()
    }

    #[test]
    fn every_wan_topic_round_trips() {
        let s = store();
        let all = WanTopic::all_of(&s);
        let hub_sends = all.iter().filter(|t| t.sender() == Sender::Hub).count();
        assert_eq!(hub_sends, 4, "half the topics are the hub's");
        for t in all {
            let text = t.to_string();
            assert_eq!(WanTopic::parse(&text), Ok(t.clone()), "{text}");
        }
        assert_eq!(WanTopic::Up(s).to_string(), "sg/v1/store/s-001/up");
    }

    #[test]
    fn shared_filter_is_the_one_in_the_design() {
        assert_eq!(
            WanTopic::shared_filter("hub", WanKind::Up),
            "$share/hub/sg/v1/store/+/up"
        );
        assert_eq!(
            WanTopic::shared_filter("g", WanKind::Rpc(RpcSide::Edge, RpcLeg::Req)),
            "$share/g/sg/v1/store/+/rpc/edge/req"
        );
    }

    #[test]
    fn malformed_wan_topics_are_errors() {
        for bad in [
            "",
            "sg/v1/store/",
            "sg/v1/store/s1",
            "sg/v1/store/s1/up/extra",
            "sg/v2/store/s1/up",
            "sg/v1/store/s1/rpc/edge",
            "sg/v1/store/s1/rpc/shop/req",
            "sg/v1/store/s1/sideways",
        ] {
            assert!(
                matches!(WanTopic::parse(bad), Err(TopicError::Unknown(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            WanTopic::parse("sg/v1/store/+/up"),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(
            WanTopic::parse("sg/v1/store//up"),
            Err(TopicError::BadId { .. })
        ));
    }

    #[test]
    fn every_lan_topic_round_trips() {
        let s = store();
        let d = DeviceId::parse("scale-1").unwrap();
        let l = LaneId::parse("3").unwrap();
        let all = [
            LanTopic::Device(s.clone(), d.clone(), DeviceChannel::Scan),
            LanTopic::Device(s.clone(), d.clone(), DeviceChannel::Weight),
            LanTopic::Device(s.clone(), d.clone(), DeviceChannel::Health),
            LanTopic::Device(s.clone(), d.clone(), DeviceChannel::Reply),
            LanTopic::Device(s.clone(), d, DeviceChannel::Approve),
            LanTopic::Approvals(s.clone()),
            LanTopic::PosRequest(s.clone(), l.clone()),
            LanTopic::PosReply(s.clone(), l),
            LanTopic::Tasks(s.clone()),
            LanTopic::TaskUpdate(s),
        ];
        for t in all {
            let text = t.to_string();
            assert_eq!(LanTopic::parse(&text), Ok(t.clone()), "{text}");
        }
        for bad in [
            "store/s1/device/d1",
            "store/s1/device/d1/smell",
            "store/s1/pos/1/request",
            "shop/s1/task",
            "store/s1/task/update/x",
        ] {
            assert!(LanTopic::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            LanTopic::parse("store/s1/pos/#/req"),
            Err(TopicError::BadId { .. })
        ));
    }
}
