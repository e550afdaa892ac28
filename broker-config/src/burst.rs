//! Logging once per burst: a refusal that repeats (a flood of forged
//! messages, a client retrying a bad certificate) is logged the first time
//! and then at most once per interval, with how many were not logged.
//! Metrics count every one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-key log throttle.
#[derive(Debug)]
pub struct BurstLog {
    /// Least time between two log lines of one key.
    every: Duration,
    /// Key -> (last logged, occurrences not logged since).
    seen: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl BurstLog {
    /// A throttle logging each key at most once per `every`.
    pub fn new(every: Duration) -> BurstLog {
        BurstLog {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Notes one occurrence of `key`. Returns `Some(suppressed)` when it
    /// should be logged now (with how many were not logged before it).
    pub fn note(&self, key: &'static str) -> Option<u64> {
        self.note_at(key, Instant::now())
    }

    fn note_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_once_then_once_per_interval_with_its_count() {
        let log = BurstLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.note_at("a", t0), Some(0));
        for i in 1..100 {
            assert_eq!(log.note_at("a", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.note_at("b", t0), Some(0), "keys are separate");
        assert_eq!(log.note_at("a", t0 + Duration::from_secs(11)), Some(99));
        assert_eq!(log.note_at("a", t0 + Duration::from_secs(12)), None);
    }
}
