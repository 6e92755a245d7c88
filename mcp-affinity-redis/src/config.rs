//! Every bound the adapter keeps, with its default.

use std::time::Duration;

/// How a [`RedisStore`](crate::RedisStore) talks to Redis: every call is bounded in time, and
/// the store is left alone for a while when it keeps failing.
///
/// | setting | default | bounds |
/// |---|---|---|
/// | [`connect_timeout`](Self::connect_timeout) | 1 s | each connection attempt (the first, and every reconnection) |
/// | [`lookup_timeout`](Self::lookup_timeout) | 200 ms | one lookup on a request's path; past it the request gets 503 + `Retry-After` |
/// | [`command_timeout`](Self::command_timeout) | 1 s | one pipeline of the sync task (a batch of writes, a poll, a probe) |
/// | [`breaker_threshold`](Self::breaker_threshold) | 5 | consecutive failures (timeouts, connection errors) that open the circuit |
/// | [`breaker_cool_down`](Self::breaker_cool_down) | 1 s | how long an open circuit answers at once, before one probe may try |
/// | [`batch`](Self::batch) | 512 | writes per pipeline, lost records per `MGET` |
/// | [`flush_every`](Self::flush_every) | 10 ms | how often an idle sync task looks at the router's write queue |
/// | [`lost_poll`](Self::lost_poll) | 1 s | how often the sync task reads the lost records and the restart marker |
/// | [`shutdown_grace`](Self::shutdown_grace) | 2 s | how long a stopping sync task keeps writing what is queued |
/// | [`reconnect_attempts`](Self::reconnect_attempts) | 2 | retries of one reconnection, 50 ms apart and doubling, before the call fails |
/// | [`recovery_grace`](Self::recovery_grace) | 10 s | after a lost connection or an open circuit, how long a key the store lacks is [`Unavailable::Recovering`](crate::Unavailable::Recovering) (503), not missing (404) |
///
/// A timeout or connection error counts towards the breaker; an error the server answers
/// (a key of the wrong type, say) does not, since the server is there.
#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) lookup_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cool_down: Duration,
    pub(crate) batch: usize,
    pub(crate) flush_every: Duration,
    pub(crate) lost_poll: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) reconnect_attempts: usize,
    pub(crate) recovery_grace: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            connect_timeout: Duration::from_secs(1),
            lookup_timeout: Duration::from_millis(200),
            command_timeout: Duration::from_secs(1),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(1),
            batch: 512,
            flush_every: Duration::from_millis(10),
            lost_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
            reconnect_attempts: 2,
            recovery_grace: Duration::from_secs(10),
        }
    }
}

/// The shortest time any bound may be set to: a zero timeout would fail every call.
const MIN: Duration = Duration::from_millis(1);

impl RedisStoreConfig {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Each connection attempt gives up after this long (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(MIN);
        self
    }

    /// A lookup that has no answer after this long is
    /// [`Unavailable`](crate::Unavailable::Timeout) (default 200 ms). It is on the path of a
    /// request: keep it well under the clients' own timeouts.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout.max(MIN);
        self
    }

    /// A pipeline of the sync task (writes, polls, probes) fails after this long (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout.max(MIN);
        self
    }

    /// Consecutive failures that open the circuit (default 5; at least 1).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures.max(1);
        self
    }

    /// How long an open circuit answers every call at once, before one call may probe the
    /// store again (default 1 s).
    pub fn breaker_cool_down(mut self, cool_down: Duration) -> Self {
        self.breaker_cool_down = cool_down.max(MIN);
        self
    }

    /// Writes per pipeline and keys per `MGET` (default 512; at least 1).
    pub fn batch(mut self, writes: usize) -> Self {
        self.batch = writes.max(1);
        self
    }

    /// How often an idle sync task looks at the router's write queue (default 10 ms). A busy
    /// one goes on at once while writes are waiting.
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every.max(MIN);
        self
    }

    /// How often the sync task reads the lost records of the router's backends and the
    /// restart marker (default 1 s).
    pub fn lost_poll(mut self, every: Duration) -> Self {
        self.lost_poll = every.max(MIN);
        self
    }

    /// How long a stopping sync task keeps writing what is queued (default 2 s); what is left
    /// then is lost to the store (the other routers' lookups of those keys find nothing).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Retries of one reconnection before the call waiting on it fails (default 2: three
    /// attempts, 50 ms then 100 ms apart, each within the connect timeout). The next call
    /// starts a new reconnection.
    pub fn reconnect_attempts(mut self, retries: usize) -> Self {
        self.reconnect_attempts = retries;
        self
    }

    /// For this long after a call lost its connection or met the open circuit (not after a
    /// lone timeout: a slow moment, which opens the circuit only when it repeats), a key the
    /// store does not have is answered [`Unavailable::Recovering`](crate::Unavailable::Recovering)
    /// (503), not [`Answer::Missing`](crate::Answer::Missing) (default 10 s): while the store
    /// was away, other routers kept learning keys, and their writes are still on their way
    /// from their queues. Zero turns it off.
    pub fn recovery_grace(mut self, grace: Duration) -> Self {
        self.recovery_grace = grace;
        self
    }
}
