//! [`RedisStore`]: lookups on a request's path, and the writes the sync task performs, each
//! bounded in time and behind the circuit breaker.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mcp_affinity::BackendId;
use mcp_affinity::router::store::{Looked, MAX_LOOKUPS, StoreWrite};
use mcp_affinity::router::{Routed, Router};
use mcp_affinity::table::SessionTable;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::circuit::{Breaker, Circuit};
use crate::config::RedisStoreConfig;
use crate::error::{Error, Kind, Unavailable};
use crate::in_flight::InFlight;
use crate::metrics::{Counters, StoreMetrics};

/// Compare-and-delete: `KEYS[1]` is deleted only if its value starts with `ARGV[1]` (the
/// owner that forgets it). Redis 7.0 has no conditional delete of its own.
const FORGET: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Refresh: `KEYS[1]`'s life becomes `ARGV[2]` ms; if it is gone (expired, or the store
/// restarted empty), it is set to `ARGV[1]` if still absent.
const REFRESH: &str = r"
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 1 then
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return 0
";

/// Keep the greatest: `KEYS[1]` is set to `ARGV[1]` (Unix seconds) to expire after `ARGV[2]`
/// ms, unless it holds a greater number.
const KEEP_GREATEST: &str = r"
local old = tonumber(redis.call('GET', KEYS[1]))
if old == nil or old <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// A connection to Redis shared by every worker (cheap to clone: one multiplexed connection,
/// reconnected in the background when it breaks), with the circuit breaker and the counters.
///
/// On a request's path: [`resolve`](Self::resolve) (or [`lookup`](Self::lookup)) answers the
/// router's [`Routed::Lookup`]. Off it: [`spawn_sync`](Self::spawn_sync) starts the task that
/// performs the router's writes and polls what the other routers recorded: one task per
/// router. A store may serve several routers; they share its circuit and its counters.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    conn: ConnectionManager,
    pub(crate) config: RedisStoreConfig,
    pub(crate) breaker: Breaker,
    pub(crate) counters: Counters,
    forget: redis::Script,
    keep_greatest: redis::Script,
    refresh: redis::Script,
    /// The batches of writes taken from the router and not yet performed (one dropped
    /// unperformed, as by a write-through that failed, has the sync task reseed).
    pub(crate) in_flight: Arc<InFlight>,
    /// When a call last lost its connection or met the open circuit (a lone timeout is not
    /// recorded): the start of the recovery grace.
    last_failure: std::sync::Mutex<Option<Instant>>,
    /// The restart marker's key and the value the sync task last read: a lookup that finds
    /// its key missing reads the marker in the same round trip.
    pub(crate) epoch: std::sync::Mutex<Option<(String, String)>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.inner.config)
            .field("circuit", &self.inner.breaker.circuit())
            .finish_non_exhaustive()
    }
}

/// What the store said of a lookup, owned (the value outlives the call).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// The key's value.
    Found(String),
    /// The store does not have the key.
    Missing,
    /// No answer, and why.
    Unavailable(Unavailable),
}

impl Answer {
    /// The answer as [`Router::on_lookup`] takes it.
    pub fn looked(&self) -> Looked<'_> {
        match self {
            Answer::Found(value) => Looked::Found(value),
            Answer::Missing => Looked::Missing,
            Answer::Unavailable(_) => Looked::Unavailable,
        }
    }
}

/// What a batch of writes did ([`RedisStore::perform`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Performed {
    /// Writes the store performed (a bind that found its own value counts as performed).
    pub written: usize,
    /// Binds that found the key bound to another value: the key and that value, for
    /// [`Router::on_bind_taken`].
    pub taken: Vec<(String, String)>,
    /// Writes the server refused with an error (a key of another type, say): dropped.
    pub refused: usize,
}

/// A write's time to live in milliseconds, as `PX` and `PEXPIRE` take it (at least 1).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`), waiting
    /// for the first connection at most [`connect_timeout`](RedisStoreConfig::connect_timeout).
    /// Needs a Tokio runtime (the connection lives on it).
    pub async fn connect(url: &str, config: RedisStoreConfig) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let manager = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client, manager_config(&config)),
        )
        .await
        .map_err(|_| Error::Connect("timed out".into()))?
        .map_err(|e| Error::Connect(e.to_string()))?;
        Ok(Self::with(manager, config))
    }

    /// A store for the Redis at `url` that connects on its first call: a router may start
    /// while Redis is down (its lookups answer 503 and its writes wait until Redis answers).
    /// Fails only on a bad URL. Must be called within a Tokio runtime.
    pub fn open(url: &str, config: RedisStoreConfig) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config(&config))
            .map_err(|e| Error::InvalidUrl(e.to_string()))?;
        Ok(Self::with(manager, config))
    }

    fn with(conn: ConnectionManager, config: RedisStoreConfig) -> Self {
        // A probe is one call of the sync task, or one lookup: past the longer of their
        // bounds it was dropped.
        let probe_bound = config.command_timeout.max(config.lookup_timeout) * 2;
        RedisStore {
            inner: Arc::new(Inner {
                conn,
                breaker: Breaker::new(
                    config.breaker_threshold,
                    config.breaker_cool_down,
                    probe_bound,
                ),
                counters: Counters::new(),
                forget: redis::Script::new(FORGET),
                keep_greatest: redis::Script::new(KEEP_GREATEST),
                refresh: redis::Script::new(REFRESH),
                in_flight: Arc::default(),
                last_failure: std::sync::Mutex::new(None),
                epoch: std::sync::Mutex::new(None),
                config,
            }),
        }
    }

    /// The circuit breaker's state now.
    pub fn circuit(&self) -> Circuit {
        self.inner.breaker.circuit()
    }

    /// A snapshot of the counters. The queue depth and pending writes are those the sync
    /// task saw last (at most [`flush_every`](RedisStoreConfig::flush_every) old while it
    /// runs).
    pub fn metrics(&self) -> StoreMetrics {
        self.inner
            .counters
            .snapshot(self.inner.breaker.circuit(), self.inner.breaker.opened())
    }

    /// Reads `key` (a [`Lookup::key`](mcp_affinity::router::store::Lookup::key)), within the
    /// [lookup timeout](RedisStoreConfig::lookup_timeout). An open circuit answers
    /// [`Unavailable::CircuitOpen`] without a call.
    ///
    /// A missing key is [`Answer::Missing`] (the router answers 404) only when nothing says
    /// it may be on its way back: once the sync task has read the store's restart marker, the
    /// lookup reads the marker with the key (one pipeline, one round trip), and a marker missing or
    /// changed makes it [`Unavailable::Changed`]; within the
    /// [recovery grace](RedisStoreConfig::recovery_grace) of a lost connection or an open
    /// circuit it is [`Unavailable::Recovering`]. Both are 503s.
    pub async fn lookup(&self, key: &str) -> Answer {
        let inner = &*self.inner;
        inner.counters.lookups.fetch_add(1, Relaxed);
        let epoch = inner.epoch.lock().expect("epoch lock").clone();
        let marker = epoch.as_ref().map(|(marker, _)| marker.as_str());
        let start = Instant::now();
        let result = inner
            .call(inner.config.lookup_timeout, |mut conn| async move {
                // `GET`s, not `MGET`: a key of another type must be an error, not a miss.
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(key);
                if let Some(marker) = marker {
                    pipe.cmd("GET").arg(marker);
                }
                pipe.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await
            })
            .await;
        if result != Err(Unavailable::CircuitOpen) {
            inner.counters.latency.record(start.elapsed());
        }
        let result = result.map(|mut values| {
            let found_marker = values.get_mut(1).and_then(Option::take);
            (values.into_iter().next().flatten(), found_marker)
        });
        let (answer, counter) = match result {
            Ok((Some(value), _)) => match String::from_utf8(value) {
                Ok(value) => (Answer::Found(value), &inner.counters.found),
                // Not a binding (no binding is anything but ASCII): never a guess.
                Err(_) => {
                    inner.counters.error(Kind::Other);
                    let why = Unavailable::Server;
                    (Answer::Unavailable(why), &inner.counters.unavailable)
                }
            },
            Ok((None, found_marker)) => {
                let known = epoch.as_ref().map(|(_, value)| value.as_bytes());
                if known.is_some() && found_marker.as_deref() != known {
                    let why = Unavailable::Changed;
                    (Answer::Unavailable(why), &inner.counters.unavailable)
                } else if inner.failed_within(inner.config.recovery_grace) {
                    let why = Unavailable::Recovering;
                    (Answer::Unavailable(why), &inner.counters.unavailable)
                } else {
                    (Answer::Missing, &inner.counters.missing)
                }
            }
            Err(why) => (Answer::Unavailable(why), &inner.counters.unavailable),
        };
        counter.fetch_add(1, Relaxed);
        answer
    }

    /// Completes a routing decision: a [`Routed::Lookup`] is looked up in the store and
    /// handed to [`Router::on_lookup`] (which forwards to the owner the store names, places
    /// an operator key nobody bound, or rejects; when the store does not answer in time, 503 +
    /// `Retry-After`), as often as the router asks (once for each key the request names, at
    /// most [`MAX_LOOKUPS`]); any other decision is returned as it is.
    ///
    /// The router is told the time after the store answered.
    pub async fn resolve<T: SessionTable>(&self, router: &Router<T>, routed: Routed) -> Routed {
        self.resolve_with(router, routed, |_| true).await
    }

    /// [`resolve`](Self::resolve), where `accept` may veto the placement of an operator key
    /// nobody bound, as in [`Router::on_lookup_with`].
    pub async fn resolve_with<T: SessionTable>(
        &self,
        router: &Router<T>,
        routed: Routed,
        mut accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let mut routed = routed;
        // Once for each key the request names (a key it carries is checked first).
        for _ in 0..MAX_LOOKUPS {
            let Routed::Lookup(lookup) = routed else {
                return routed;
            };
            let answer = self.lookup(lookup.key()).await;
            let now = Instant::now().into_std();
            routed = router.on_lookup_with(lookup, answer.looked(), now, &mut accept);
        }
        match routed {
            // (Not reached: the router asks no more than that.)
            Routed::Lookup(lookup) => {
                router.on_lookup(lookup, Looked::Unavailable, Instant::now().into_std())
            }
            decided => decided,
        }
    }

    /// Performs what `router` has queued now, in batches, reporting taken binds to it: the
    /// write-through the router asks for before a response that revealed a shared key
    /// reaches the client (give it to
    /// `mcp_affinity::tower::AffinityLayer::store_sync` (feature `tower` of the core), or
    /// call it when [`Exchange::take_store_sync`](mcp_affinity::router::Exchange::take_store_sync)
    /// says so). It writes until the queue is empty, then waits for the batches the sync task
    /// (or another write-through) took before its last look and has not performed yet: the
    /// write this call is for may be in one of them. All within one command timeout, and
    /// without waiting while the circuit is not closed; what is still queued at the deadline
    /// is left to the sync task. On failure the writes taken are lost for now, and the sync
    /// task's next reseed writes them again.
    pub async fn write_through<T: SessionTable>(&self, router: &Router<T>) {
        let batch = self.inner.config.batch;
        let in_flight = &self.inner.in_flight;
        // Until the queue is empty, within one command timeout in all: the key this call is
        // for is somewhere in it, or was taken by someone else before.
        let deadline = Instant::now() + self.inner.config.command_timeout;
        let taken_before = loop {
            if Instant::now() >= deadline {
                // What is left stays queued, for the sync task.
                return;
            }
            let taken = in_flight.take(|| router.take_store_writes(batch));
            let Some(ticket) = taken.ticket else {
                break taken.before;
            };
            match self.perform(&taken.writes).await {
                Ok(performed) => {
                    let now = Instant::now().into_std();
                    for (key, found) in &performed.taken {
                        router.on_bind_taken(key, found, now);
                    }
                    ticket.performed();
                }
                // The ticket, dropped unperformed, has the sync task write everything again.
                Err(_) => return,
            }
        };
        if self.inner.breaker.circuit() != Circuit::Closed {
            // The store is failing: nothing taken is on its way (a reseed writes it later),
            // and new conversations must not wait for it.
            return;
        }
        let _ = tokio::time::timeout_at(deadline, in_flight.released_below(taken_before)).await;
    }

    /// Performs `writes` in one pipeline, in order, within the
    /// [command timeout](RedisStoreConfig::command_timeout):
    ///
    /// | write | command |
    /// |---|---|
    /// | [`StoreWrite::Bind`] | `SET key value NX PX ttl GET` (Redis 7.0+): the value found, if any, is [`Performed::taken`] |
    /// | [`StoreWrite::Refresh`] | a Lua refresh: `PEXPIRE key ttl`, or, if the key is gone, `SET key value NX PX ttl` |
    /// | [`StoreWrite::Forget`] | a Lua compare-and-delete: deleted only if the value starts with `owner` |
    /// | [`StoreWrite::Lost`] | a Lua keep-greatest: set to `before` with `PX ttl` unless a greater number is stored |
    ///
    /// Every write is idempotent, so a batch that failed (`Err`: nothing is known of what
    /// the store did) may be sent again as it is. The sync task does all this; call it
    /// yourself only to drive the store your own way.
    pub async fn perform(&self, writes: &[StoreWrite]) -> Result<Performed, Unavailable> {
        let mut performed = Performed::default();
        let mut from = 0;
        // Scripts unknown to the server (it restarted): load them, and send again from the
        // first write that needed one (the later ones are idempotent). Once.
        for attempt in 0..2 {
            let batch = &writes[from..];
            if batch.is_empty() {
                break;
            }
            let replies = self.send(batch).await?;
            self.inner.counters.write_batches.fetch_add(1, Relaxed);
            let mut no_script = None;
            for (i, (write, reply)) in batch.iter().zip(replies).enumerate() {
                match reply {
                    Reply::Written => performed.written += 1,
                    Reply::Taken(found) => {
                        if let StoreWrite::Bind { key, .. } = write {
                            performed.taken.push((key.clone(), found));
                        }
                    }
                    Reply::NoScript if attempt == 0 => {
                        no_script = Some(i);
                        break;
                    }
                    Reply::NoScript | Reply::Refused => {
                        performed.refused += 1;
                        self.inner.counters.error(Kind::Server);
                    }
                }
            }
            let Some(i) = no_script else { break };
            self.load_scripts().await?;
            from += i;
        }
        let counters = &self.inner.counters;
        counters.writes.fetch_add(performed.written as u64, Relaxed);
        counters
            .binds_taken
            .fetch_add(performed.taken.len() as u64, Relaxed);
        counters
            .writes_refused
            .fetch_add(performed.refused as u64, Relaxed);
        Ok(performed)
    }

    /// One pipeline for `writes`, and how each went.
    async fn send(&self, writes: &[StoreWrite]) -> Result<Vec<Reply>, Unavailable> {
        let inner = &*self.inner;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for write in writes {
            match write {
                StoreWrite::Bind { key, value, ttl } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(*ttl))
                        .arg("GET");
                }
                StoreWrite::Refresh { key, value, ttl } => {
                    pipe.cmd("EVALSHA")
                        .arg(inner.refresh.get_hash())
                        .arg(1)
                        .arg(key)
                        .arg(value)
                        .arg(millis(*ttl));
                }
                StoreWrite::Forget { key, owner } => {
                    pipe.cmd("EVALSHA")
                        .arg(inner.forget.get_hash())
                        .arg(1)
                        .arg(key)
                        .arg(owner);
                }
                StoreWrite::Lost { key, before, ttl } => {
                    pipe.cmd("EVALSHA")
                        .arg(inner.keep_greatest.get_hash())
                        .arg(1)
                        .arg(key)
                        .arg(*before)
                        .arg(millis(*ttl));
                }
                // A write this adapter does not know (the core grew one): the server is
                // asked nothing, and the write counts as refused.
                _ => {
                    pipe.cmd("ECHO").arg("mcp-affinity-redis: unknown write");
                }
            }
        }
        let values = inner
            .call(inner.config.command_timeout, |mut conn| async move {
                pipe.query_async::<Vec<redis::Value>>(&mut conn).await
            })
            .await?;
        Ok(writes
            .iter()
            .zip(values)
            .map(|(write, value)| Reply::of(write, value))
            .collect())
    }

    /// Loads the three scripts: forget, refresh, keep-greatest (after a restart, the server
    /// knows none).
    pub(crate) async fn load_scripts(&self) -> Result<(), Unavailable> {
        let inner = &*self.inner;
        let (forget, keep) = (inner.forget.clone(), inner.keep_greatest.clone());
        let refresh = inner.refresh.clone();
        inner
            .call(inner.config.command_timeout, |mut conn| async move {
                forget.load_async(&mut conn).await?;
                refresh.load_async(&mut conn).await?;
                keep.load_async(&mut conn).await
            })
            .await
            .map(drop)
    }

    /// `PING`: the sync task's probe of a circuit after its cool-down.
    pub(crate) async fn ping(&self) -> Result<(), Unavailable> {
        let inner = &*self.inner;
        inner
            .call(inner.config.command_timeout, |mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await
    }

    /// `SET marker candidate NX GET` and `INFO server`, in one pipeline: the store's restart
    /// marker, set to `candidate` if it was missing (then `None` is returned: the store is
    /// new, or came back empty), and the server's `run_id` (new at every start of a server,
    /// so it also tells a restart from a snapshot, or a failover, that kept the marker).
    pub(crate) async fn mark(
        &self,
        marker: &str,
        candidate: &str,
    ) -> Result<(Option<String>, Option<String>), Unavailable> {
        let inner = &*self.inner;
        let (found, info) = inner
            .call(inner.config.command_timeout, |mut conn| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(marker)
                    .arg(candidate)
                    .arg("NX")
                    .arg("GET")
                    .cmd("INFO")
                    .arg("server")
                    .query_async::<(Option<String>, String)>(&mut conn)
                    .await
            })
            .await?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string());
        Ok((found, run_id))
    }

    /// `MGET keys`: the values, as bytes (one that is not text fails no other), `None` where
    /// missing.
    pub(crate) async fn read(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        let inner = &*self.inner;
        inner
            .call(inner.config.command_timeout, |mut conn| async move {
                redis::cmd("MGET")
                    .arg(keys)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .await
            })
            .await
    }
}

impl Inner {
    /// One call to the store: refused at once by an open circuit, bounded by `timeout`, and
    /// counted (errors by kind; the breaker's success or failure).
    async fn call<R, F, Fut>(&self, timeout: Duration, f: F) -> Result<R, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<R>>,
    {
        if !self.breaker.admit(Instant::now()) {
            self.counters.circuit_rejected.fetch_add(1, Relaxed);
            self.failed_now();
            return Err(Unavailable::CircuitOpen);
        }
        let kind = match tokio::time::timeout(timeout, f(self.conn.clone())).await {
            Ok(Ok(reply)) => {
                self.breaker.success();
                return Ok(reply);
            }
            Ok(Err(e)) => Kind::of(&e),
            Err(_) => Kind::Timeout,
        };
        self.counters.error(kind);
        if kind.answered() {
            self.breaker.success();
        } else {
            self.breaker.failure(Instant::now());
            // A lost connection (the server went away, restarted, failed over) starts the
            // recovery grace; a lone timeout does not (a slow moment, not an outage: it opens
            // the circuit, and so the grace, only when it repeats).
            if kind == Kind::Connection {
                self.failed_now();
            }
        }
        Err(kind.unavailable())
    }

    fn failed_now(&self) {
        *self.last_failure.lock().expect("failure lock") = Some(Instant::now());
    }

    /// Whether a call failed within the last `grace`.
    fn failed_within(&self, grace: Duration) -> bool {
        let last = *self.last_failure.lock().expect("failure lock");
        last.is_some_and(|at| at.elapsed() < grace)
    }
}

/// How one write of a pipeline went.
enum Reply {
    Written,
    Taken(String),
    NoScript,
    Refused,
}

impl Reply {
    fn of(write: &StoreWrite, value: redis::Value) -> Reply {
        match (write, value) {
            (_, redis::Value::ServerError(e)) => {
                if e.kind() == Some(redis::ServerErrorKind::NoScript) {
                    Reply::NoScript
                } else {
                    Reply::Refused
                }
            }
            (StoreWrite::Bind { value: ours, .. }, redis::Value::BulkString(found)) => {
                match String::from_utf8(found) {
                    // Our own earlier attempt (a batch sent again): done.
                    Ok(found) if found == *ours => Reply::Written,
                    Ok(found) => Reply::Taken(found),
                    Err(_) => Reply::Refused,
                }
            }
            (StoreWrite::Bind { .. } | StoreWrite::Refresh { .. }, _) => Reply::Written,
            (StoreWrite::Forget { .. } | StoreWrite::Lost { .. }, _) => Reply::Written,
            _ => Reply::Refused,
        }
    }
}

fn manager_config(config: &RedisStoreConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        // The adapter bounds every call itself; the connection's own bound only clears
        // answers that never come.
        .set_response_timeout(Some(config.command_timeout.max(config.lookup_timeout)))
        .set_number_of_retries(config.reconnect_attempts)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}
