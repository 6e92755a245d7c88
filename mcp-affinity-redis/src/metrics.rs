//! What the adapter counts: lookups and their latency, errors by kind, the circuit, writes,
//! reseeds, and the writes waiting.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::circuit::Circuit;
use crate::error::Kind;

/// Buckets of the latency histogram: four per power of two of microseconds, from 1 µs to
/// 2^27 µs (134 s); a longer one counts in the last.
const BUCKETS: usize = 104;

/// The bucket of a latency of `us` microseconds: its power of two and its top two bits below
/// the leading one (so every bucket is at most a quarter of its lower bound wide).
fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize;
    (4 * (exp - 1) + ((us >> (exp - 2)) & 3) as usize).min(BUCKETS - 1)
}

/// The least latency that falls past bucket `i` (its exclusive upper bound).
fn upper(i: usize) -> Duration {
    let us = if i < 4 {
        i as u64 + 1
    } else {
        let (exp, sub) = (i / 4 + 1, (i % 4) as u64);
        (5 + sub) << (exp - 2)
    };
    Duration::from_micros(us)
}

/// Lock-free histogram the lookups record into.
#[derive(Debug)]
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> Latency {
        Latency {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
        }
    }
}

/// Lookup latencies (from the call to the store's answer or the timeout; lookups refused by
/// an open circuit are not timed), in buckets a quarter of a power of two wide: enough for
/// percentiles within 25 %.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latency {
    counts: Box<[u64]>,
}

impl Latency {
    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency under which a share `q` (0 to 1) of the lookups fell: the upper bound of
    /// the bucket holding that rank (`None` when nothing was recorded). `quantile(0.5)` is the
    /// median, `quantile(0.99)` the 99th percentile.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper(i));
            }
        }
        Some(upper(BUCKETS - 1))
    }

    /// Each bucket's exclusive upper bound and count, shortest first, empty buckets included
    /// (for a Prometheus histogram, sum the counts as you go). The last bucket counts every
    /// longer latency too: its bound is `Duration::MAX` (`+Inf`).
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.counts.iter().enumerate().map(|(i, &n)| {
            let bound = if i == BUCKETS - 1 {
                Duration::MAX
            } else {
                upper(i)
            };
            (bound, n)
        })
    }
}

/// Errors by kind, counted over every call (lookups, writes, polls, probes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Errors {
    /// No answer within the call's timeout.
    pub timeouts: u64,
    /// The connection failed, was refused, or was closed under the call.
    pub connection: u64,
    /// The server answered with an error (for a write: that write was dropped).
    pub server: u64,
    /// The server answered something the adapter could not read.
    pub other: u64,
}

/// A snapshot of the adapter's counters ([`RedisStore::metrics`](crate::RedisStore::metrics)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreMetrics {
    /// Lookups asked for ([`RedisStore::lookup`](crate::RedisStore::lookup)).
    pub lookups: u64,
    /// Of those, the key was found.
    pub found: u64,
    /// Of those, the key was not in the store.
    pub missing: u64,
    /// Of those, no answer (timeout, connection, open circuit, server error): 503.
    pub unavailable: u64,
    /// The latency of the lookups that went to the store.
    pub lookup_latency: Latency,
    /// Errors by kind.
    pub errors: Errors,
    /// The circuit breaker's state now.
    pub circuit: Circuit,
    /// How many times the circuit opened.
    pub circuit_opened: u64,
    /// Calls answered at once because the circuit was open.
    pub circuit_rejected: u64,
    /// Writes the store performed (each [`StoreWrite`](mcp_affinity::router::store::StoreWrite),
    /// reseeding included).
    pub writes: u64,
    /// Pipelines of writes sent.
    pub write_batches: u64,
    /// Binds that found the key bound already, to another owner (reported to the router with
    /// `on_bind_taken`).
    pub binds_taken: u64,
    /// Writes the server refused with an error (dropped; see [`Errors::server`]).
    pub writes_refused: u64,
    /// Reseeds started: the store came back after an outage, came back empty (the restart
    /// marker changed), or the router dropped writes (one asked for while another runs
    /// starts when that one ends).
    pub reseeds: u64,
    /// Writes made by reseeding (bindings, and the records of lost backends).
    pub reseed_writes: u64,
    /// Times the store's restart marker was found missing or changed (not counting the first
    /// reading).
    pub store_restarts: u64,
    /// Polls of the lost records.
    pub lost_polls: u64,
    /// Polls the server answered with an error (a value of another type at the restart
    /// marker's key: something else writes under the prefix): the marker is read again a
    /// period later; the lost records are read, and the writes go on, meanwhile.
    pub poll_errors: u64,
    /// Lost records handed to the router (`on_lost`).
    pub lost_records: u64,
    /// The router's write queue as the sync task saw it last (`Router::store_queue_len`).
    pub queue_depth: usize,
    /// Writes the sync task took from the router and the store has not confirmed yet: in
    /// flight, or held to be sent again when the store answers.
    pub pending_writes: usize,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) lookups: AtomicU64,
    pub(crate) found: AtomicU64,
    pub(crate) missing: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) latency: Histogram,
    timeouts: AtomicU64,
    connection: AtomicU64,
    server: AtomicU64,
    other: AtomicU64,
    pub(crate) circuit_rejected: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) write_batches: AtomicU64,
    pub(crate) binds_taken: AtomicU64,
    pub(crate) writes_refused: AtomicU64,
    pub(crate) reseeds: AtomicU64,
    pub(crate) reseed_writes: AtomicU64,
    pub(crate) store_restarts: AtomicU64,
    pub(crate) lost_polls: AtomicU64,
    pub(crate) poll_errors: AtomicU64,
    pub(crate) lost_records: AtomicU64,
    pub(crate) queue_depth: AtomicUsize,
    pub(crate) pending_writes: AtomicUsize,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            lookups: AtomicU64::new(0),
            found: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            latency: Histogram::new(),
            timeouts: AtomicU64::new(0),
            connection: AtomicU64::new(0),
            server: AtomicU64::new(0),
            other: AtomicU64::new(0),
            circuit_rejected: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_batches: AtomicU64::new(0),
            binds_taken: AtomicU64::new(0),
            writes_refused: AtomicU64::new(0),
            reseeds: AtomicU64::new(0),
            reseed_writes: AtomicU64::new(0),
            store_restarts: AtomicU64::new(0),
            lost_polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            lost_records: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            pending_writes: AtomicUsize::new(0),
        }
    }

    pub(crate) fn error(&self, kind: Kind) {
        let counter = match kind {
            Kind::Timeout => &self.timeouts,
            Kind::Connection => &self.connection,
            Kind::Server => &self.server,
            Kind::Other => &self.other,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, circuit: Circuit, circuit_opened: u64) -> StoreMetrics {
        let get = |c: &AtomicU64| c.load(Relaxed);
        StoreMetrics {
            lookups: get(&self.lookups),
            found: get(&self.found),
            missing: get(&self.missing),
            unavailable: get(&self.unavailable),
            lookup_latency: self.latency.snapshot(),
            errors: Errors {
                timeouts: get(&self.timeouts),
                connection: get(&self.connection),
                server: get(&self.server),
                other: get(&self.other),
            },
            circuit,
            circuit_opened,
            circuit_rejected: get(&self.circuit_rejected),
            writes: get(&self.writes),
            write_batches: get(&self.write_batches),
            binds_taken: get(&self.binds_taken),
            writes_refused: get(&self.writes_refused),
            reseeds: get(&self.reseeds),
            reseed_writes: get(&self.reseed_writes),
            store_restarts: get(&self.store_restarts),
            lost_polls: get(&self.lost_polls),
            poll_errors: get(&self.poll_errors),
            lost_records: get(&self.lost_records),
            queue_depth: self.queue_depth.load(Relaxed),
            pending_writes: self.pending_writes.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_each_value_is_under_its_bucket_bound() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let i = bucket(us);
            assert!(
                i == last || i == last + 1,
                "{us} µs jumped from {last} to {i}"
            );
            assert!(
                Duration::from_micros(us) < upper(i),
                "{us} µs ≥ bound of {i}"
            );
            if i > 0 {
                assert!(
                    Duration::from_micros(us) >= upper(i - 1),
                    "{us} µs < bound of {}",
                    i - 1
                );
            }
            last = i;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_bucket_of_their_rank() {
        let h = Histogram::new();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..2 {
            h.record(Duration::from_millis(10));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        let p50 = s.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_micros(100) && p50 <= Duration::from_micros(125));
        let p99 = s.quantile(0.99).unwrap();
        assert!(p99 > Duration::from_millis(10) && p99 <= Duration::from_micros(12_500));
    }

    #[test]
    fn the_last_bucket_is_unbounded() {
        let h = Histogram::new();
        h.record(Duration::from_secs(3600));
        let s = h.snapshot();
        let (bound, count) = s.buckets().last().unwrap();
        assert_eq!((bound, count), (Duration::MAX, 1));
        assert!(s.buckets().all(|(bound, _)| bound > Duration::ZERO));
    }
}
