//! Who may use the store LAN bus, and for what: every device has an id, a
//! role and a password (only its SHA-256 is configured), and the gate in
//! front of the bus's broker admits a device only with them and grants it
//! exactly the topics its role and lanes need. A device's client id is its
//! id, or its id then `@` and one digit 1-9 (another connection of the same
//! device; `@` is in no device id, so no device can take over another's
//! session), at most [`MAX_SESSIONS`] at once. The ids are a fixed set
//! because rumqttd remembers every client id it has seen, for good.
//!
//! | role | publishes | subscribes |
//! |---|---|---|
//! | every device | `device/{id}/health` | `device/{id}/reply` |
//! | scanner | `device/{id}/scan` (a scan names only its own lanes) | |
//! | scale | `device/{id}/weight` | |
//! | till | `pos/{lane}/req` for its lanes | `pos/{lane}/reply` for its lanes |
//! | handheld | what a till and a scanner do, and `task/update` | `task` |
//! | supervisor | `device/{id}/approve` | `approval` |
//!
//! Passwords are compared in constant time. An address that gets
//! [`MAX_FAILURES`] logins for one username wrong within
//! [`FAILURE_WINDOW`] is refused that username until the window passes
//! (counted as `locked_out`), so guessing runs at a few tries a minute and
//! a neighbour behind the same address keeps its own login.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use storegate_broker::gate::{Grant, Peer, Policy, Rate, Refused};
use storegate_protocol::StoreId;
use storegate_protocol::topic::{DeviceChannel, LanTopic};
use tokio_util::sync::CancellationToken;

pub use crate::credential::{DeviceAccess, DeviceRole, hex, new_password, parse_hash, password_hash};

/// Wrong logins from one address before it is locked out.
pub const MAX_FAILURES: u32 = 10;
/// How long failures are counted, and a lock-out lasts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Connections one device may hold at once.
pub const MAX_SESSIONS: usize = 4;
/// (address, username) pairs whose failures are remembered (past it the
/// oldest is forgotten).
const MAX_ADDRESSES: usize = 4096;

/// The topics `d` may publish to and subscribe to on `store`'s bus.
pub fn topics(store: &StoreId, d: &DeviceAccess) -> (Vec<String>, Vec<String>) {
    let dev = |ch| LanTopic::Device(store.clone(), d.id.clone(), ch).to_string();
    let mut publish = vec![dev(DeviceChannel::Health)];
    let mut subscribe = vec![dev(DeviceChannel::Reply)];
    let lanes = |publish: &mut Vec<String>, subscribe: &mut Vec<String>| {
        for l in &d.lanes {
            publish.push(LanTopic::PosRequest(store.clone(), l.clone()).to_string());
            subscribe.push(LanTopic::PosReply(store.clone(), l.clone()).to_string());
        }
    };
    match d.role {
        DeviceRole::Till => lanes(&mut publish, &mut subscribe),
        DeviceRole::Scanner => publish.push(dev(DeviceChannel::Scan)),
        DeviceRole::Scale => publish.push(dev(DeviceChannel::Weight)),
        DeviceRole::Handheld => {
            lanes(&mut publish, &mut subscribe);
            publish.push(dev(DeviceChannel::Scan));
            publish.push(LanTopic::TaskUpdate(store.clone()).to_string());
            subscribe.push(LanTopic::Tasks(store.clone()).to_string());
        }
        DeviceRole::Supervisor => {
            publish.push(dev(DeviceChannel::Approve));
            subscribe.push(LanTopic::Approvals(store.clone()).to_string());
        }
        DeviceRole::Other => {}
    }
    (publish, subscribe)
}

/// The bus's admission policy.
#[derive(Debug)]
pub struct LanPolicy {
    store: StoreId,
    devices: HashMap<String, DeviceAccess>,
    rate: Rate,
    failures: Mutex<HashMap<(IpAddr, String), (u32, Instant)>>,
}

impl LanPolicy {
    /// A policy admitting `devices`, each publishing at most at `rate`.
    pub fn new(store: StoreId, devices: &[DeviceAccess], rate: Rate) -> LanPolicy {
        LanPolicy {
            store,
            devices: devices.iter().map(|d| (d.id.to_string(), d.clone())).collect(),
            rate,
            failures: Mutex::default(),
        }
    }

    fn locked_out(&self, key: &(IpAddr, String)) -> bool {
        let Ok(mut f) = self.failures.lock() else {
            return false;
        };
        match f.get(key) {
            Some((n, since)) if since.elapsed() < FAILURE_WINDOW => *n >= MAX_FAILURES,
            Some(_) => {
                f.remove(key);
                false
            }
            None => false,
        }
    }

    fn failed(&self, key: (IpAddr, String)) {
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        if f.len() >= MAX_ADDRESSES && !f.contains_key(&key) {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if f.len() >= MAX_ADDRESSES
                && let Some(oldest) = f.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| k.clone())
            {
                f.remove(&oldest);
            }
        }
        let e = f.entry(key).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 = e.0.saturating_add(1);
    }

    /// Checks a login (the part of [`Policy::admit`] that needs no runtime).
    pub fn check(&self, peer: &Peer<'_>) -> Result<Grant, Refused> {
        let key = (peer.addr.ip(), peer.username.unwrap_or_default().to_owned());
        if self.locked_out(&key) {
            return Err(Refused::NotAuthorized("locked_out"));
        }
        let (Some(user), Some(password)) = (peer.username, peer.password) else {
            self.failed(key);
            return Err(Refused::NotAuthorized("no_credentials"));
        };
        // Hash whatever the username, so timing does not tell known ids.
        let given = password_hash(password.0);
        let Some(d) = self.devices.get(user) else {
            self.failed(key);
            return Err(Refused::NotAuthorized("unknown_device"));
        };
        if !storegate_protocol::secret::same(&given, &d.password_sha256) {
            self.failed(key);
            return Err(Refused::NotAuthorized("bad_password"));
        }
        let own = d.id.as_str();
        if peer.client_id != own
            && !peer
                .client_id
                .strip_prefix(own)
                .and_then(|rest| rest.strip_prefix('@'))
                .is_some_and(|n| matches!(n.as_bytes(), [b'1'..=b'9']))
        {
            return Err(Refused::BadClientId);
        }
        let (publish, subscribe) = topics(&self.store, d);
        Ok(Grant {
            label: format!("device {} ({:?})", d.id, d.role),
            publish,
            retain: Vec::new(),
            subscribe,
            qos0: true,
            rate: Some(self.rate),
            max_sessions: Some(MAX_SESSIONS),
            revoked: CancellationToken::new(),
        })
    }
}

impl Policy for LanPolicy {
    async fn admit(&self, peer: &Peer<'_>) -> Result<Grant, Refused> {
        self.check(peer)
    }
}

#[cfg(test)]
mod tests {
    use storegate_broker::gate::Password;
    use storegate_protocol::{DeviceId, LaneId};

    use super::*;

    fn device(id: &str, role: DeviceRole, lanes: &[&str], password: &str) -> DeviceAccess {
        DeviceAccess {
            id: DeviceId::parse(id).unwrap(),
            role,
            lanes: lanes.iter().map(|l| LaneId::parse(*l).unwrap()).collect(),
            password_sha256: password_hash(password.as_bytes()),
        }
    }

    fn policy() -> LanPolicy {
        LanPolicy::new(
            StoreId::parse("s1").unwrap(),
            &[
                device("till-1", DeviceRole::Till, &["1"], "pw-till-1"),
                device("scan-1", DeviceRole::Scanner, &["1"], "pw-scan-1"),
                device("hh-1", DeviceRole::Handheld, &["2"], "pw-hh-1"),
            ],
            Rate {
                per_sec: 50,
                burst: 100,
            },
        )
    }

    fn peer<'a>(addr: &str, client: &'a str, user: Option<&'a str>, pw: Option<&'a str>) -> Peer<'a> {
        Peer {
            addr: addr.parse().unwrap(),
            cert: None,
            client_id: client,
            will_topic: None,
            username: user,
            password: pw.map(|p| Password(p.as_bytes())),
        }
    }

    #[test]
    fn each_role_gets_its_own_topics_only() {
        let p = policy();
        let till = p
            .check(&peer("10.0.0.2:1", "till-1", Some("till-1"), Some("pw-till-1")))
            .unwrap();
        assert_eq!(
            till.publish,
            ["store/s1/device/till-1/health", "store/s1/pos/1/req"]
        );
        assert_eq!(
            till.subscribe,
            ["store/s1/device/till-1/reply", "store/s1/pos/1/reply"]
        );
        assert!(till.qos0 && till.retain.is_empty() && till.rate.is_some());
        let scan = p
            .check(&peer("10.0.0.3:1", "scan-1@2", Some("scan-1"), Some("pw-scan-1")))
            .unwrap();
        assert_eq!(
            scan.publish,
            ["store/s1/device/scan-1/health", "store/s1/device/scan-1/scan"]
        );
        assert_eq!(
            scan.subscribe,
            ["store/s1/device/scan-1/reply"],
            "no lane replies"
        );
        let hh = p
            .check(&peer("10.0.0.4:1", "hh-1", Some("hh-1"), Some("pw-hh-1")))
            .unwrap();
        assert!(hh.publish.contains(&"store/s1/task/update".to_owned()));
        assert!(hh.subscribe.contains(&"store/s1/task".to_owned()));
        assert!(hh.publish.contains(&"store/s1/pos/2/req".to_owned()));
        assert!(!hh.publish.contains(&"store/s1/pos/1/req".to_owned()));
    }

    #[test]
    fn strangers_wrong_passwords_and_borrowed_client_ids_are_refused() {
        let p = policy();
        let refused = |r: Result<Grant, Refused>| r.unwrap_err();
        assert_eq!(
            refused(p.check(&peer("10.0.0.9:1", "x", None, None))),
            Refused::NotAuthorized("no_credentials")
        );
        assert_eq!(
            refused(p.check(&peer("10.0.0.9:1", "evil", Some("evil"), Some("x")))),
            Refused::NotAuthorized("unknown_device")
        );
        assert_eq!(
            refused(p.check(&peer("10.0.0.9:1", "till-1", Some("till-1"), Some("pw-scan-1")))),
            Refused::NotAuthorized("bad_password")
        );
        // The scanner's own credentials, but the till's session.
        assert_eq!(
            refused(p.check(&peer("10.0.0.3:1", "till-1", Some("scan-1"), Some("pw-scan-1")))),
            Refused::BadClientId
        );
        assert_eq!(
            refused(p.check(&peer("10.0.0.3:1", "scan-10", Some("scan-1"), Some("pw-scan-1")))),
            Refused::BadClientId,
            "a longer id is another device"
        );
        for made_up in ["scan-1@x", "scan-1@10", "scan-1@", "scan-1@0"] {
            assert_eq!(
                refused(p.check(&peer("10.0.0.3:1", made_up, Some("scan-1"), Some("pw-scan-1")))),
                Refused::BadClientId,
                "{made_up}: a device has ten client ids, no more"
            );
        }
    }

    #[test]
    fn an_address_guessing_passwords_is_locked_out_for_a_while() {
        let p = policy();
        for i in 0..MAX_FAILURES {
            let guess = format!("guess-{i}");
            let r = p.check(&peer("10.0.0.66:1", "till-1", Some("till-1"), Some(&guess)));
            assert_eq!(r.unwrap_err(), Refused::NotAuthorized("bad_password"));
        }
        let r = p.check(&peer("10.0.0.66:2", "till-1", Some("till-1"), Some("pw-till-1")));
        assert_eq!(
            r.unwrap_err(),
            Refused::NotAuthorized("locked_out"),
            "even the right password, from that address, until the window passes"
        );
        p.check(&peer("10.0.0.2:1", "till-1", Some("till-1"), Some("pw-till-1")))
            .expect("the till itself, from its own address, is not locked out");
        p.check(&peer("10.0.0.66:3", "scan-1", Some("scan-1"), Some("pw-scan-1")))
            .expect("nor another device behind the guesser's address");
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = password_hash(b"secret");
        assert_eq!(parse_hash(&hex(&h)), Some(h));
        assert_eq!(parse_hash("zz"), None);
        assert_eq!(parse_hash(&"g".repeat(64)), None);
        assert_eq!(new_password().len(), 32);
        assert_ne!(new_password(), new_password());
    }
}
