//! The circuit breaker: after [`breaker_threshold`](crate::RedisStoreConfig::breaker_threshold)
//! consecutive failures the store is left alone for a cool-down, so that lookups answer 503 at
//! once instead of each waiting out its timeout; then one call probes it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, as [`StoreMetrics::circuit`](crate::StoreMetrics::circuit) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Circuit {
    /// Calls go to the store.
    Closed,
    /// The store failed too often: calls answer [`Unavailable::CircuitOpen`](crate::Unavailable)
    /// at once until the cool-down ends.
    Open,
    /// The cool-down ended: one call (the sync task's probe, or the first lookup) is trying the
    /// store; the others still answer at once. Its success closes the circuit, its failure
    /// opens it for another cool-down.
    HalfOpen,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    /// A probe that has not reported after this long was dropped (its caller went away):
    /// another may try.
    probe_bound: Duration,
    state: Mutex<State>,
    opened: AtomicU64,
    recovered: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration, probe_bound: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cool_down,
            probe_bound,
            state: Mutex::new(State::Closed { failures: 0 }),
            opened: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go to the store now; the first call after a cool-down becomes the
    /// probe.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { since }
                if now.saturating_duration_since(since) > self.probe_bound =>
            {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// The store answered.
    pub(crate) fn success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            self.recovered.fetch_add(1, Relaxed);
        }
        *state = State::Closed { failures: 0 };
    }

    /// The store did not answer (timeout, connection error).
    pub(crate) fn failure(&self, now: Instant) {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen { .. } => true,
            // Calls admitted before it opened, failing late: the cool-down stands.
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: now + self.cool_down,
            };
            self.opened.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn circuit(&self) -> Circuit {
        match *self.lock() {
            State::Closed { .. } => Circuit::Closed,
            State::Open { .. } => Circuit::Open,
            State::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }

    /// When the cool-down of an open circuit ends (`None` unless open).
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match *self.lock() {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// How many times the circuit opened.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Relaxed)
    }

    /// How many times it closed again after opening.
    pub(crate) fn recovered(&self) -> u64 {
        self.recovered.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_after_the_cool_down_and_recovers() {
        let breaker = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(breaker.admit(t0));
            breaker.failure(t0);
        }
        assert_eq!(breaker.circuit(), Circuit::Closed);
        // A success between failures starts the count over.
        breaker.success();
        for _ in 0..3 {
            breaker.failure(t0);
        }
        assert_eq!(breaker.circuit(), Circuit::Open);
        assert_eq!(breaker.opened(), 1);
        assert!(!breaker.admit(t0 + Duration::from_millis(999)));
        // The cool-down is over: one probe, the rest wait.
        let t1 = t0 + Duration::from_secs(1);
        assert!(breaker.admit(t1));
        assert_eq!(breaker.circuit(), Circuit::HalfOpen);
        assert!(!breaker.admit(t1));
        // The probe fails: another cool-down.
        breaker.failure(t1);
        assert_eq!(breaker.circuit(), Circuit::Open);
        assert_eq!(breaker.opened(), 2);
        let t2 = t1 + Duration::from_secs(1);
        assert!(breaker.admit(t2));
        breaker.success();
        assert_eq!(breaker.circuit(), Circuit::Closed);
        assert_eq!(breaker.recovered(), 1);
        assert!(breaker.admit(t2));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_its_bound() {
        let breaker = Breaker::new(1, Duration::from_millis(10), Duration::from_millis(100));
        let t0 = Instant::now();
        breaker.failure(t0);
        let t1 = t0 + Duration::from_millis(10);
        assert!(breaker.admit(t1));
        assert!(!breaker.admit(t1 + Duration::from_millis(100)));
        assert!(breaker.admit(t1 + Duration::from_millis(101)));
    }
}
