//! Supervisor approval for the risky lane operations real POS guard: a
//! post-void, a return without a receipt, a refund above the store's limit
//! ([`ApprovalRules`], from `pos.approvals`).
//!
//! A lane asking for one without an approval gets `approval_required`
//! with a new approval id, and the request goes to the supervisors' devices
//! on `store/{store}/approval`. A supervisor device (role `supervisor`,
//! its own credentials) answers on its `device/{id}/approve` topic. The
//! lane then repeats the same request with the id: it goes through only if
//! it is the very operation that was approved (same lane, same sale, same
//! lines, same refund method), once, within [`APPROVAL_TTL`]. The event
//! recorded says who approved it. No PIN or secret travels in a payload:
//! the supervisor is known by their device's login.
//!
//! At most [`PER_LANE`] approvals are kept per lane (its oldest goes
//! first), so one lane's flood cannot push out another's. The refund limit
//! counts what the sale already refunded, so splitting a return does not
//! avoid it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use storegate_protocol::device::ApprovalRequest;
use storegate_protocol::{DeviceId, LaneId};
use tokio::sync::broadcast;

/// How long an approval stays valid, asked or granted.
pub const APPROVAL_TTL: Duration = Duration::from_secs(300);
/// Most approvals kept per lane.
pub const PER_LANE: usize = 8;

/// Which operations need a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalRules {
    /// Voiding a completed sale.
    pub void_sale: bool,
    /// A return with no receipt.
    pub return_without_receipt: bool,
    /// A refund above this many minor units (with a receipt too).
    pub refund_limit_minor: i64,
}

impl ApprovalRules {
    /// No approvals at all.
    pub const NONE: ApprovalRules = ApprovalRules {
        void_sale: false,
        return_without_receipt: false,
        refund_limit_minor: i64::MAX,
    };

    /// Why a supervisor must approve this operation, if one must.
    pub fn needs(&self, op: Risky, refund: i64) -> Option<String> {
        match op {
            Risky::PostVoid if self.void_sale => Some("void of a completed sale".into()),
            Risky::Return { receipt: false } if self.return_without_receipt => {
                Some("return without a receipt".into())
            }
            _ if refund > self.refund_limit_minor => Some(format!(
                "refund of {refund} above the store's limit of {}",
                self.refund_limit_minor
            )),
            _ => None,
        }
    }
}

impl From<&crate::settings::ApprovalSettings> for ApprovalRules {
    fn from(s: &crate::settings::ApprovalSettings) -> Self {
        ApprovalRules {
            void_sale: s.void_sale,
            return_without_receipt: s.return_without_receipt,
            refund_limit_minor: s.refund_limit_minor,
        }
    }
}

/// A risky operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risky {
    /// Voiding a completed sale.
    PostVoid,
    /// Taking goods back.
    Return {
        /// With the original receipt.
        receipt: bool,
    },
}

/// Where an approval stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Approved by this supervisor device: go ahead (the approval is used up).
    Approved(DeviceId),
    /// Nobody has answered yet.
    Waiting,
    /// Denied by this supervisor device.
    Denied(DeviceId),
    /// No such approval for this operation (never asked, another
    /// operation, already used, or expired).
    Unknown,
}

#[derive(Debug)]
enum State {
    Waiting,
    Approved(DeviceId),
    Denied(DeviceId),
}

#[derive(Debug)]
struct Pending {
    lane: LaneId,
    digest: [u8; 32],
    at: Instant,
    state: State,
}

/// The store's approvals, shared by its lanes and the bus.
#[derive(Debug)]
pub struct Approvals {
    pending: Mutex<HashMap<String, Pending>>,
    notices: broadcast::Sender<ApprovalRequest>,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            pending: Mutex::default(),
            notices: broadcast::channel(64).0,
        }
    }
}

/// What identifies one operation: a digest of its parts.
pub fn digest_of(parts: &impl serde::Serialize) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(parts).unwrap_or_default()).into()
}

impl Approvals {
    /// Approval requests as they are made, for the supervisors' topic.
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalRequest> {
        self.notices.subscribe()
    }

    /// Asks the supervisors to approve operation `digest` at `lane`;
    /// returns the approval's id.
    pub fn ask(
        &self,
        lane: &LaneId,
        digest: [u8; 32],
        what: String,
        amount: i64,
        currency: String,
    ) -> String {
        let id = format!("apr-{}", crate::credential::hex(&rand::random::<[u8; 8]>()));
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, x| x.at.elapsed() < APPROVAL_TTL);
            while p.values().filter(|x| &x.lane == lane).count() >= PER_LANE {
                let Some(oldest) = p
                    .iter()
                    .filter(|(_, x)| &x.lane == lane)
                    .min_by_key(|(_, x)| x.at)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                p.remove(&oldest);
            }
            p.insert(
                id.clone(),
                Pending {
                    lane: lane.clone(),
                    digest,
                    at: Instant::now(),
                    state: State::Waiting,
                },
            );
        }
        metrics::counter!("edge_pos_approvals_asked_total").increment(1);
        let _ = self.notices.send(ApprovalRequest {
            approval: id.clone(),
            lane: lane.clone(),
            what,
            amount,
            currency,
        });
        id
    }

    /// A supervisor device's answer.
    pub fn decide(&self, id: &str, by: &DeviceId, approve: bool) -> Result<(), String> {
        let mut p = self
            .pending
            .lock()
            .map_err(|_| "approvals unavailable".to_owned())?;
        match p.get_mut(id) {
            Some(x) if x.at.elapsed() < APPROVAL_TTL && matches!(x.state, State::Waiting) => {
                x.state = if approve {
                    State::Approved(by.clone())
                } else {
                    State::Denied(by.clone())
                };
                metrics::counter!("edge_pos_approvals_decided_total", "approved" => approve.to_string())
                    .increment(1);
                Ok(())
            }
            Some(x) if x.at.elapsed() < APPROVAL_TTL => Err(format!("approval {id} was already answered")),
            _ => Err(format!("no approval {id} is waiting (unknown or expired)")),
        }
    }

    /// Where approval `id` stands for operation `digest` at `lane`; an
    /// approval is used up by the operation it approves.
    pub fn take(&self, id: &str, lane: &LaneId, digest: [u8; 32]) -> Verdict {
        let Ok(mut p) = self.pending.lock() else {
            return Verdict::Unknown;
        };
        let Some(x) = p.get(id) else {
            return Verdict::Unknown;
        };
        if x.at.elapsed() >= APPROVAL_TTL || &x.lane != lane || x.digest != digest {
            return Verdict::Unknown;
        }
        match &x.state {
            State::Waiting => Verdict::Waiting,
            State::Denied(by) => Verdict::Denied(by.clone()),
            State::Approved(by) => {
                let by = by.clone();
                p.remove(id);
                Verdict::Approved(by)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(l: &str) -> LaneId {
        LaneId::parse(l).unwrap()
    }

    #[test]
    fn the_rules_say_which_operations_need_a_supervisor() {
        let r = ApprovalRules {
            void_sale: true,
            return_without_receipt: true,
            refund_limit_minor: 5000,
        };
        assert!(r.needs(Risky::PostVoid, 100).is_some());
        assert!(r.needs(Risky::Return { receipt: false }, 100).is_some());
        assert_eq!(
            r.needs(Risky::Return { receipt: true }, 5000),
            None,
            "at the limit"
        );
        assert!(
            r.needs(Risky::Return { receipt: true }, 5001)
                .unwrap()
                .contains("limit")
        );
        assert_eq!(ApprovalRules::NONE.needs(Risky::PostVoid, i64::MAX - 1), None);
    }

    #[test]
    fn an_approval_covers_one_operation_at_one_lane_once() {
        let a = Approvals::default();
        let mut notices = a.subscribe();
        let sup = DeviceId::parse("sup-1").unwrap();
        let op = digest_of(&("void", "sale-1"));
        let id = a.ask(&lane("1"), op, "void".into(), 990, "EUR".into());
        assert_eq!(notices.try_recv().unwrap().approval, id);
        assert_eq!(a.take(&id, &lane("1"), op), Verdict::Waiting);
        a.decide(&id, &sup, true).unwrap();
        assert!(a.decide(&id, &sup, false).is_err(), "answered once");
        assert_eq!(a.take(&id, &lane("2"), op), Verdict::Unknown, "another lane");
        assert_eq!(
            a.take(&id, &lane("1"), digest_of(&("void", "sale-2"))),
            Verdict::Unknown,
            "another operation"
        );
        assert_eq!(a.take(&id, &lane("1"), op), Verdict::Approved(sup.clone()));
        assert_eq!(a.take(&id, &lane("1"), op), Verdict::Unknown, "used up");
        let denied = a.ask(&lane("1"), op, "void".into(), 990, "EUR".into());
        a.decide(&denied, &sup, false).unwrap();
        assert_eq!(a.take(&denied, &lane("1"), op), Verdict::Denied(sup));
        assert!(
            a.decide("apr-nope", &DeviceId::parse("x").unwrap(), true)
                .is_err()
        );
    }

    #[test]
    fn pending_approvals_are_bounded_per_lane() {
        let a = Approvals::default();
        let sup = DeviceId::parse("sup-1").unwrap();
        let other = a.ask(&lane("2"), [9; 32], "x".into(), 1, "EUR".into());
        a.decide(&other, &sup, true).unwrap();
        let first = a.ask(&lane("1"), [0; 32], "x".into(), 1, "EUR".into());
        for i in 0..100u8 {
            a.ask(&lane("1"), [i; 32], "x".into(), 1, "EUR".into());
        }
        assert_eq!(a.pending.lock().unwrap().len(), PER_LANE + 1);
        assert_eq!(
            a.take(&first, &lane("1"), [0; 32]),
            Verdict::Unknown,
            "lane 1's oldest went"
        );
        assert_eq!(
            a.take(&other, &lane("2"), [9; 32]),
            Verdict::Approved(sup),
            "lane 2's approval outlived lane 1's flood"
        );
    }
}
