//! Store-and-forward card payments, pure: the caps a store works within
//! while the hub cannot authorise, and whether one more payment fits.

use storegate_protocol::downlink::ConfigValue;
use storegate_protocol::{Currency, Money};

use crate::journal::Unsettled;

/// Offline card payment caps (the hub may override them with config
/// `payments.offline.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineCaps {
    /// Offline card payments allowed at all.
    pub enabled: bool,
    /// Most per payment, minor units.
    pub per_txn_minor: i64,
    /// Most unsettled in all, minor units.
    pub total_minor: i64,
    /// Oldest unsettled payment allowed, seconds.
    pub window_secs: i64,
}

/// The config keys the hub may set.
pub const CONFIG_KEYS: [&str; 4] = [
    "payments.offline.enabled",
    "payments.offline.per_txn_limit",
    "payments.offline.total_limit",
    "payments.offline.window_secs",
];

impl OfflineCaps {
    /// These caps with what the hub configured (`value` of a key); a value
    /// of the wrong type is ignored.
    pub fn configured(mut self, value: impl Fn(&str) -> Option<ConfigValue>) -> OfflineCaps {
        if let Some(ConfigValue::Bool(b)) = value(CONFIG_KEYS[0]) {
            self.enabled = b;
        }
        if let Some(ConfigValue::Money(m)) = value(CONFIG_KEYS[1]) {
            self.per_txn_minor = m.minor;
        }
        if let Some(ConfigValue::Money(m)) = value(CONFIG_KEYS[2]) {
            self.total_minor = m.minor;
        }
        if let Some(ConfigValue::Int(s)) = value(CONFIG_KEYS[3]) {
            self.window_secs = s;
        }
        self
    }

    /// Whether an offline payment of `amount` fits, given what is
    /// unsettled, what the open basket already took offline, and the time;
    /// the reason for the lane if not.
    pub fn check(
        &self,
        amount: i64,
        unsettled: Unsettled,
        in_basket: i64,
        now_ms: i64,
        currency: Currency,
    ) -> Result<(), String> {
        let money = |m: i64| Money::new(m, currency).to_string();
        if !self.enabled {
            return Err("card payments cannot be taken offline at this store".into());
        }
        if amount > self.per_txn_minor {
            return Err(format!(
                "offline card payments are limited to {} each",
                money(self.per_txn_minor)
            ));
        }
        let after = unsettled
            .total_minor
            .checked_add(in_basket)
            .and_then(|t| t.checked_add(amount));
        if after.is_none_or(|t| t > self.total_minor) {
            return Err(format!(
                "unsettled offline card payments would exceed {}",
                money(self.total_minor)
            ));
        }
        if let Some(oldest) = unsettled.oldest_ms
            && now_ms.saturating_sub(oldest) > self.window_secs.saturating_mul(1000)
        {
            return Err("offline card payments older than the settlement window are still unsettled".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: OfflineCaps = OfflineCaps {
        enabled: true,
        per_txn_minor: 5_000,
        total_minor: 20_000,
        window_secs: 3_600,
    };

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn unsettled(total_minor: i64, oldest_ms: Option<i64>) -> Unsettled {
        Unsettled {
            total_minor,
            oldest_ms,
        }
    }

    #[test]
    fn each_cap_refuses_on_its_own() {
        let now = 10_000_000;
        assert_eq!(CAPS.check(5_000, unsettled(0, None), 0, now, eur()), Ok(()));
        assert!(
            CAPS.check(5_001, unsettled(0, None), 0, now, eur())
                .unwrap_err()
                .contains("limited to"),
            "per transaction"
        );
        assert!(
            CAPS.check(1_000, unsettled(15_000, Some(now)), 4_001, now, eur())
                .unwrap_err()
                .contains("would exceed"),
            "the basket's own offline tenders count towards the total"
        );
        assert_eq!(
            CAPS.check(1_000, unsettled(15_000, Some(now)), 4_000, now, eur()),
            Ok(())
        );
        assert!(
            CAPS.check(1, unsettled(1, Some(now - 3_600_001)), 0, now, eur())
                .unwrap_err()
                .contains("settlement window"),
            "the oldest unsettled payment is too old"
        );
        let off = OfflineCaps {
            enabled: false,
            ..CAPS
        };
        assert!(off.check(1, unsettled(0, None), 0, now, eur()).is_err());
        assert!(
            CAPS.check(1, unsettled(i64::MAX, None), i64::MAX, now, eur())
                .is_err(),
            "no overflow"
        );
    }

    #[test]
    fn the_hub_overrides_caps_of_the_right_type() {
        let caps = CAPS.configured(|k| match k {
            "payments.offline.enabled" => Some(ConfigValue::Bool(false)),
            "payments.offline.per_txn_limit" => Some(ConfigValue::Money(Money::new(100, eur()))),
            "payments.offline.total_limit" => Some(ConfigValue::Int(7)),
            _ => None,
        });
        assert!(!caps.enabled);
        assert_eq!(caps.per_txn_minor, 100);
        assert_eq!(
            caps.total_minor, CAPS.total_minor,
            "a value of the wrong type is ignored"
        );
        assert_eq!(caps.window_secs, CAPS.window_secs);
    }
}
