//! A shared store: the routers of a fleet share the keys they learn through a store every one
//! of them reaches (Redis, Valkey, or anything that can set-if-absent with a TTL and
//! compare-and-delete), and the router stays sans-IO: it asks, the embedder does the I/O.
//!
//! # The protocol
//!
//! The local [`SessionTable`] is a cache in front of the store.
//!
//! - **Lookups.** A request presenting a shared key the local table does not know is not
//!   rejected: [`Router::route`] answers [`Routed::Lookup`]. The embedder reads
//!   [`Lookup::key`] from the store and hands the answer to
//!   [`on_lookup`](Router::on_lookup) ([`Looked::Found`] with the stored value,
//!   [`Looked::Missing`], or [`Looked::Unavailable`] when the store could not answer in
//!   time), which answers as [`route`](Router::route) would have: forward to the owner the
//!   store names (and cache it), or reject. An operator key the store does not know is placed.
//!   With principal binding, a key the request carries without being routed by it (a
//!   session header on a discovery path, say) is looked up the same way before the request
//!   is routed: it passes if the store binds it to the request's principal. So one request
//!   may ask again, once for each key it names ([`MAX_LOOKUPS`]): answer every
//!   `Routed::Lookup` that `on_lookup` returns, as the first.
//! - **Writes.** What the router learns and forgets becomes [`StoreWrite`]s in a bounded queue
//!   the embedder drains with [`take_store_writes`](Router::take_store_writes) and performs:
//!   a learned key is bound if absent ([`StoreWrite::Bind`]: `SET key value NX PX ttl`; if
//!   another router bound it first, report the value found with
//!   [`on_bind_taken`](Router::on_bind_taken), and the router adopts that owner); a key in use
//!   is refreshed lazily, at most once per [refresh period](SharedStore::refresh_after)
//!   ([`StoreWrite::Refresh`]: `PEXPIRE`); a forgotten key is deleted only if it still names
//!   the owner that forgets it ([`StoreWrite::Forget`]: compare-and-delete); an owner lost
//!   (removed, restarted, down) records when ([`StoreWrite::Lost`]: keep the greatest).
//! - **Owners lost anywhere.** A binding names its owner by fleet-wide name and incarnation
//!   and says when it was bound. Every router polls the lost records of its backends
//!   ([`lost_keys`](Router::lost_keys), [`on_lost`](Router::on_lost)): a binding made before
//!   its owner was lost (less the [clock skew](SharedStore::clock_skew)) is refused by every
//!   router as gone, whichever router saw the loss.
//! - **Outages.** When the store is slow or down, local hits keep routing; a presented key
//!   the local table does not know gets 503 + `Retry-After` ([`Reason::StoreUnavailable`]),
//!   never 404 (which would end a live session) and never a guess; new conversations keep
//!   being placed and learned locally, their writes queued (bounded: past it, writes are
//!   dropped and counted). When the store answers again (or comes back empty after a restart),
//!   the embedder calls [`reseed_store`](Router::reseed_store): every shared key the router
//!   holds is bound again.
//!
//! # What is shared
//!
//! 2026-07-28 task ids and operator keys always; Streamable HTTP and legacy SSE sessions too,
//! unless the router seals them ([`Sealing`](super::Sealing) needs no store). Keys are
//! namespaced by tenant and kind in the store as in the table, validated (length, visible
//! ASCII) before any store call, and only ever written when a backend revealed them.
//!
//! # Store layout
//!
//! | key | value | written by |
//! |---|---|---|
//! | `{prefix}:b:{tenant}:{kind}:{id}` | `1:{owner}:{incarnation}:{bound at}:{principal}` | [`StoreWrite::Bind`], refreshed, compare-and-deleted on the `1:{owner}:{incarnation}:` prefix |
//! | `{prefix}:lost:{tenant}:{owner}:{incarnation}` | Unix seconds | [`StoreWrite::Lost`], the greatest kept |
//!
//! `{owner}` is the backend name's fingerprint (16 hex digits,
//! [`seal::owner_fingerprint`](crate::seal)-compatible: FNV-1a 64), `{principal}` the
//! principal's fingerprint in hex or `-`, times Unix seconds, `{kind}` the key kind's number,
//! `{incarnation}` the lost process's (decimal): a router that knows a newer one ignores it.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Router;
use super::classify::Intent;
use super::exchange::{Exchange, How, IdBuf, Routed};
use super::fleet::{Claim, Identity, Loss, Named, OwnerStatus};
use super::reject::Reason;
use super::route::{Ask, Next};
use super::wall::WallClock;
use crate::table::{Key, KeyKind, Principal, SessionTable};
use crate::{BackendId, TenantId};

/// Sharing learned keys with the other routers of a fleet through a store (see the
/// [module docs](self) for the protocol, and `mcp-affinity-redis` for a Redis adapter).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`binding_ttl`](SharedStore::binding_ttl) | 1 hour | a binding not refreshed for this long expires in the store |
/// | [`refresh_after`](SharedStore::refresh_after) | a quarter of the TTL | a key in use is refreshed at most this often, per router |
/// | [`write_queue`](SharedStore::write_queue) | 65,536 | writes waiting for the embedder; past it, dropped and counted |
/// | [`clock_skew`](SharedStore::clock_skew) | 2 s | how far apart the routers' clocks may be |
/// | [`restart_warmup`](SharedStore::restart_warmup) | 30 s | after the store came back empty, how long a key it does not have is 503, not 404 |
/// | [`operator_binds`](SharedStore::operator_binds) | 65,536 | operator-key binds this router writes per binding TTL as it learns keys; past it, kept local until the refresh pass |
///
/// The binding TTL the router uses is at least the table's idle TTL plus the refresh period,
/// so that a key the router still holds never expires in the store first.
#[derive(Clone)]
pub struct SharedStore {
    prefix: Arc<str>,
    ttl: Duration,
    refresh: Option<Duration>,
    queue: usize,
    skew: u32,
    warmup: Duration,
    operator_binds: usize,
    clock: WallClock,
}

impl SharedStore {
    pub(crate) fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Sharing under the key prefix `prefix` (for example `mcp-affinity`; every router of a
    /// fleet must use the same), with the wall clock read once: `unix_secs` is the Unix time
    /// at `now` (the router reads no clock).
    pub fn new(prefix: &str, now: Instant, unix_secs: u64) -> Self {
        SharedStore {
            prefix: prefix.into(),
            ttl: Duration::from_secs(3600),
            refresh: None,
            queue: 1 << 16,
            skew: 2,
            warmup: Duration::from_secs(30),
            operator_binds: 1 << 16,
            clock: WallClock::new(now, unix_secs),
        }
    }

    /// How long a binding lives in the store without being refreshed (default 1 hour; kept
    /// between 1 ms and 10 years).
    pub fn binding_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_millis(1), MAX_TTL);
        self
    }

    /// How often, at most, a router refreshes a key in use (default a quarter of the TTL).
    pub fn refresh_after(mut self, every: Duration) -> Self {
        self.refresh = Some(every);
        self
    }

    /// The most writes waiting to be taken (default 65,536; at least 1: `write_queue(0)` is
    /// taken as 1).
    pub fn write_queue(mut self, writes: usize) -> Self {
        self.queue = writes.max(1);
        self
    }

    /// How far apart the routers' clocks may be (default 2 s). A lost record dated further
    /// ahead of this router's clock is believed only up to this router's time plus the skew,
    /// and one dated more than a minute beyond that is ignored (and counted): one router with
    /// a clock far ahead must not condemn every new binding of a backend. The skew is kept
    /// in whole seconds, the fraction dropped: `clock_skew(500 ms)` means 0, and 2.5 s means
    /// 2 s. Each router reads the wall clock once, in whole seconds (`unix_secs`), so
    /// its seconds may run up to one behind its clock: the skew must cover how far apart the
    /// clocks may be plus that second (the default, 2 s, covers clocks within a second of
    /// each other; routers further apart judged a live session lost: the fourteenth
    /// review's R14-2).
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.skew = u32::try_from(skew.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// After the store came back empty ([`Router::on_store_restart`]), how long a presented
    /// key it does not have is answered 503 (the routers are still writing back what they
    /// hold), not 404 (default 30 s).
    pub fn restart_warmup(mut self, warmup: Duration) -> Self {
        self.warmup = warmup;
        self
    }

    /// The most operator-key binds this router writes to the store per binding TTL as it
    /// learns keys (default 65,536). Operator keys are chosen by clients: past the budget a
    /// new one is bound in this router's table only (counted in
    /// `store_operator_binds_refused`), so that a burst of fresh keys does not become a burst
    /// of store writes.
    ///
    /// The budget paces binds; it does not cap what the store holds. The refresh pass and a
    /// reseed write back every key this router's table holds and uses, operator keys kept
    /// local included (a binding a router routes by must not go missing from the store, or
    /// another router would place its key elsewhere). What one router keeps in the store is
    /// bounded by the operator keys its table holds
    /// ([`with_operator_capacity`](crate::table::MemoryTableConfig::with_operator_capacity),
    /// an eighth of the capacity by default), each living at most a binding TTL past its last
    /// use.
    pub fn operator_binds(mut self, binds: usize) -> Self {
        self.operator_binds = binds;
        self
    }

    /// The key prefix every store key of the fleet starts with (an adapter keeps its own keys,
    /// such as a restart marker, under it too).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn refresh_period(&self) -> Duration {
        self.refresh
            .unwrap_or(self.ttl / 4)
            .max(Duration::from_millis(1))
    }
}

/// How far ahead of a router's clock plus the skew a lost record may be dated and still be
/// believed (up to that router's time), in seconds.
const FUTURE_LOST: u32 = 60;

/// The longest binding TTL: ten years.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("refresh_after", &self.refresh_period())
            .field("write_queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// A write for the embedder to perform on the store (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreWrite {
    /// Set `key` to `value` if it is absent, to expire after `ttl` (`SET key value NX PX`).
    /// If it was present, report its value with [`Router::on_bind_taken`].
    Bind {
        /// The binding's store key.
        key: String,
        /// The owner it names.
        value: String,
        /// Its life.
        ttl: Duration,
    },
    /// Extend `key`'s life to `ttl` from now (`PEXPIRE`); if it is gone (expired, or the
    /// store restarted empty), set it to `value` if it is still absent (`SET key value NX
    /// PX`): a key this router routes stays in the store. Nothing to report.
    Refresh {
        /// The binding's store key.
        key: String,
        /// The binding this router holds, to write if the key is gone.
        value: String,
        /// Its new life.
        ttl: Duration,
    },
    /// Delete `key` only if its value starts with `owner` (compare-and-delete): a binding
    /// another router made since, for another owner (or for the same owner later), stays.
    Forget {
        /// The binding's store key.
        key: String,
        /// The start of the value to delete: the owner and incarnation
        /// (`1:{owner}:{incarnation}:`) when a conversation ended, the whole binding up to its
        /// time (`1:{owner}:{incarnation}:{bound at}:`) when a lost binding is cleared.
        owner: String,
    },
    /// Set `key` to `before` unless it holds a greater number, to expire after `ttl`: the
    /// owner's bindings made before then (Unix seconds) belong to a lost incarnation.
    Lost {
        /// The owner's lost record.
        key: String,
        /// Unix seconds.
        before: u32,
        /// Its life (the bindings it condemns are gone by then).
        ttl: Duration,
    },
}

/// The most lookups one request needs: one for each key it carries without being routed by
/// it (a session header, a legacy session parameter, a task name) and one for the key that
/// routes it.
pub const MAX_LOOKUPS: usize = 4;

/// A presented key the local table does not know: read [`key`](Lookup::key) from the store
/// and hand the answer to [`Router::on_lookup`].
#[must_use = "a lookup must be answered with Router::on_lookup"]
pub struct Lookup {
    key: String,
    tenant: TenantId,
    kind: KeyKind,
    id: IdBuf,
    intent: Intent,
    principal: Option<Principal>,
    /// A key the request carries without being routed by it: what routes the request once
    /// the key passed (rare: boxed).
    then: Option<Box<Resume>>,
}

/// The rest of a decision that waits for the store's word on a key the request carries: the
/// carried keys still to check, and what routes the request.
#[derive(Debug)]
struct Resume {
    carried: Vec<(KeyKind, IdBuf)>,
    next: Next<IdBuf>,
}

impl Lookup {
    /// The store key to read.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The kind of key looked up.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The tenant of the request.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// This lookup, of a key the request carries without being routed by it, to be followed
    /// by the rest of the decision.
    pub(super) fn then(mut self, carried: Vec<(KeyKind, IdBuf)>, next: Next<IdBuf>) -> Self {
        self.then = Some(Box::new(Resume { carried, next }));
        self
    }
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("key", &self.key)
            .field("intent", &self.intent)
            .finish_non_exhaustive()
    }
}

/// What the store said of a [`Lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Looked<'a> {
    /// The key's value.
    Found(&'a str),
    /// The store does not have the key.
    Missing,
    /// The store did not answer in time (down, slow, circuit open): the request gets 503 +
    /// `Retry-After`, never a guess.
    Unavailable,
}

/// The future of a [`StoreSync`].
pub type SyncFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// Performs the router's queued store writes now (drains
/// [`take_store_writes`](Router::take_store_writes) and writes them), resolving when they are
/// done or have failed (within the store's own timeout). Called before a response that
/// revealed a shared key reaches the client (see [`Exchange::take_store_sync`]), so that the
/// client cannot present the key to another router before the store has it. Implemented for
/// every `Fn() -> impl Future<Output = ()>`.
pub trait StoreSync: Send + Sync + 'static {
    /// Writes what the router has queued.
    fn sync(&self) -> SyncFuture;
}

impl<F, Fut> StoreSync for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    fn sync(&self) -> SyncFuture {
        Box::pin(self())
    }
}

/// Where [`Router::reseed_store`] goes on from.
#[derive(Clone, Debug, Default)]
pub struct ReseedCursor {
    /// Lost records handed out so far.
    lost: usize,
    lost_done: bool,
    table: u64,
    done: bool,
}

/// A binding as the store holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    owner: u64,
    incarnation: u32,
    bound_at: u32,
    principal: Option<Principal>,
}

impl Binding {
    /// What it says of its owner's process.
    fn claim(&self) -> Claim {
        Claim {
            incarnation: self.incarnation,
            made: self.bound_at,
        }
    }

    /// `1:{owner}:{incarnation}:{bound at}:{principal}`.
    fn encode(&self) -> String {
        let mut value = owner_prefix(self.owner, self.incarnation);
        let _ = write!(value, "{}:", self.bound_at);
        match self.principal {
            Some(p) => {
                let _ = write!(value, "{:016x}", p.fingerprint());
            }
            None => value.push('-'),
        }
        value
    }

    /// The start of this binding's value, up to its time: what clears this binding and no
    /// later one of the same owner.
    fn exact_prefix(&self) -> String {
        let mut prefix = owner_prefix(self.owner, self.incarnation);
        let _ = write!(prefix, "{}:", self.bound_at);
        prefix
    }

    fn decode(value: &str) -> Option<Binding> {
        let mut fields = value.split(':');
        if fields.next()? != "1" {
            return None;
        }
        let owner = u64::from_str_radix(fields.next()?, 16).ok()?;
        let incarnation = fields.next()?.parse().ok()?;
        let bound_at = fields.next()?.parse().ok()?;
        let principal = match fields.next()? {
            "-" => None,
            hex => Some(Principal::new(u64::from_str_radix(hex, 16).ok()?)),
        };
        fields.next().is_none().then_some(Binding {
            owner,
            incarnation,
            bound_at,
            principal,
        })
    }
}

/// The start of the values that name `owner` in `incarnation`: what a forget compares.
fn owner_prefix(owner: u64, incarnation: u32) -> String {
    format!("1:{owner:016x}:{incarnation}:")
}

/// The router's side of the store: its settings, the write queue, the refresh pass, the
/// warm-up after a restart and the operator-key budget.
pub(super) struct StoreState {
    config: SharedStore,
    /// The binding TTL in use: at least the table's idle TTL plus the refresh period.
    ttl: Duration,
    queue: Mutex<VecDeque<StoreWrite>>,
    upkeep: Mutex<Upkeep>,
    /// Until when a key the store does not have is 503 (it came back empty).
    warm_until: Mutex<Option<Instant>>,
    /// Operator-key binds written in the current TTL window: (window, count).
    operator_binds: Mutex<(u64, usize)>,
}

/// The refresh pass over the table.
#[derive(Default)]
struct Upkeep {
    cursor: u64,
    /// When the pass under way started, and the one before it.
    started: Option<Instant>,
    previous: Option<Instant>,
    /// When the last refresh round ran.
    last_round: Option<Instant>,
}

impl StoreState {
    pub(super) fn new(config: SharedStore, idle_ttl: Option<Duration>) -> Self {
        let period = config.refresh_period();
        let ttl = match idle_ttl {
            Some(idle) => config.ttl.max(idle.saturating_add(period)).min(MAX_TTL),
            None => config.ttl,
        };
        StoreState {
            config,
            ttl,
            queue: Mutex::new(VecDeque::new()),
            upkeep: Mutex::new(Upkeep::default()),
            warm_until: Mutex::new(None),
            operator_binds: Mutex::new((0, 0)),
        }
    }

    fn binding_key(&self, key: &Key<'_>) -> String {
        format!(
            "{}:b:{}:{}:{}",
            self.config.prefix,
            key.tenant().get(),
            key.kind().to_u8(),
            key.id()
        )
    }

    /// The record that `lost`'s bindings and tokens from before `before` are of a lost
    /// process (kept twice a binding's life: longer than any binding it condemns).
    fn lost_write(&self, lost: Identity, before: u32) -> StoreWrite {
        StoreWrite::Lost {
            key: self.lost_key(lost),
            before,
            ttl: self.ttl.saturating_mul(2),
        }
    }

    fn lost_key(&self, lost: Identity) -> String {
        format!(
            "{}:lost:{}:{:016x}:{}",
            self.config.prefix,
            lost.tenant.get(),
            lost.owner,
            lost.incarnation
        )
    }

    /// The key of a lost record back to the backend it names.
    fn parse_lost_key(&self, key: &str) -> Option<Identity> {
        let rest = key
            .strip_prefix(&*self.config.prefix)?
            .strip_prefix(":lost:")?;
        let mut parts = rest.split(':');
        let lost = Identity {
            tenant: TenantId::new(parts.next()?.parse().ok()?),
            owner: u64::from_str_radix(parts.next()?, 16).ok()?,
            incarnation: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(lost)
    }
}

impl<T: SessionTable> Router<T> {
    /// Whether keys of `kind` are shared through the store.
    pub(super) fn shared(&self, kind: KeyKind) -> bool {
        let sealed = matches!(kind, KeyKind::Session | KeyKind::SseSession) && self.seals();
        self.store.is_some() && !sealed
    }

    /// A lookup of a presented key the table does not know, if keys of its kind are shared.
    pub(super) fn lookup(
        &self,
        key: &Key<'_>,
        intent: Intent,
        principal: Option<Principal>,
    ) -> Option<Lookup> {
        let store = self.store.as_ref().filter(|_| self.shared(key.kind()))?;
        self.counters.incr(|s| &s.store_lookups);
        Some(Lookup {
            key: store.binding_key(key),
            tenant: key.tenant(),
            kind: key.kind(),
            id: IdBuf::new(key.id_bytes()),
            intent,
            principal,
            then: None,
        })
    }

    /// Routes a request whose key was looked up in the store: see the
    /// [store protocol](super::store). Answers [`Routed::Forward`] or [`Routed::Reject`];
    /// or, when the key looked up was one the request carries without being routed by it
    /// (checked against the principal), another [`Routed::Lookup`] for the next key the
    /// request names that this router does not hold: at most [`MAX_LOOKUPS`] in all.
    pub fn on_lookup(&self, lookup: Lookup, answer: Looked<'_>, now: Instant) -> Routed {
        self.on_lookup_with(lookup, answer, now, |_| true)
    }

    /// [`on_lookup`](Router::on_lookup), where `accept` may veto the placement of an operator
    /// key the store does not know, as in [`route_with`](Router::route_with).
    pub fn on_lookup_with(
        &self,
        lookup: Lookup,
        answer: Looked<'_>,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let tenant = lookup.tenant;
        let routed = self.looked_up(lookup, answer, now, accept);
        self.traced(Some(tenant), routed)
    }

    fn looked_up(
        &self,
        lookup: Lookup,
        answer: Looked<'_>,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let kind = lookup.kind;
        let reject = |reason| Routed::Reject(self.reject(reason));
        let Some(store) = &self.store else {
            // A lookup handed to a router without a store (another router's): nothing to
            // cache it in, nothing to tidy; the client retries.
            return reject(Reason::StoreUnavailable(kind));
        };
        let unavailable = || {
            self.counters.incr(|s| &s.store_unavailable);
            reject(Reason::StoreUnavailable(kind))
        };
        if let Some(resume) = lookup.then {
            // A carried key: it passes if the store binds it to the request's principal
            // (whatever became of its owner), as a local entry would.
            let reason = match answer {
                Looked::Missing if store.warming(now) => return unavailable(),
                Looked::Missing => Reason::UnknownKey(kind),
                Looked::Unavailable => return unavailable(),
                Looked::Found(value) => match Binding::decode(value) {
                    None => Reason::UnknownOwner(kind),
                    Some(binding) if binding.principal == lookup.principal => {
                        let ask = Ask {
                            tenant: lookup.tenant,
                            intent: lookup.intent,
                            principal: lookup.principal,
                        };
                        let carried = resume.carried.iter().map(|(k, id)| (*k, id.as_bytes()));
                        return self.route_checked(ask, carried, resume.next.as_ref(), now, accept);
                    }
                    Some(_) => Reason::WrongPrincipal(kind),
                },
            };
            return reject(reason);
        }
        let value = match answer {
            // The store came back empty and the fleet is still writing back what it holds:
            // absent may only mean "not yet".
            Looked::Missing if store.warming(now) => return unavailable(),
            // Never bound anywhere: bound to whoever answers its first request 2xx.
            Looked::Missing if kind == KeyKind::Operator => {
                return self.place_operator(lookup, accept);
            }
            Looked::Missing => return reject(self.unknown_presented(kind)),
            Looked::Unavailable => return unavailable(),
            Looked::Found(value) => value,
        };
        // A value this router cannot read (a newer format during a rolling upgrade, or
        // corruption) decides nothing about the session: 503, never 404.
        let Some(binding) = Binding::decode(value) else {
            return reject(Reason::UnknownOwner(kind));
        };
        let (clock, skew) = (&store.config.clock, store.config.skew);
        let claim = binding.claim();
        let named = self.fleet.named(lookup.tenant, binding.owner);
        let (owner, incarnation, loss, down_since) = match named {
            Named::Backend {
                id,
                incarnation,
                lost,
                down_since,
            } => (id, incarnation, lost, down_since),
            // A newer process than the one removed here, or bound more than the clock skew
            // after the removal: another router added it since (or had not removed it yet).
            // Not this router's to end: 503, nothing forgotten.
            Named::Removed { at, incarnation } if claim.after((at, incarnation), clock, skew) => {
                return reject(Reason::UnknownOwner(kind));
            }
            Named::Removed { .. } if kind == KeyKind::Operator => {
                // A client cannot start an operator key over: its owner removed, it is bound
                // afresh (this binding, and no later one, is cleared first).
                self.enqueue(StoreWrite::Forget {
                    key: lookup.key.clone(),
                    owner: binding.exact_prefix(),
                });
                return self.place_operator(lookup, accept);
            }
            Named::Removed { .. } => return reject(Reason::OwnerGone(kind)),
            Named::Unknown => return reject(Reason::UnknownOwner(kind)),
        };
        let lost = claim.lost(incarnation, loss);
        if binding.incarnation > incarnation && !lost {
            // Another router knows a newer process of this backend: this one is behind.
            return reject(Reason::UnknownOwner(kind));
        }
        let Ok(key) = Key::with_max_len(lookup.tenant, kind, lookup.id.as_bytes(), usize::MAX)
        else {
            return reject(Reason::UnknownKey(kind));
        };
        if self.foreign_principal(kind, binding.principal, lookup.principal) {
            return reject(Reason::WrongPrincipal(kind));
        }
        let (status, term) = self.fleet.owner_state(owner, now);
        // An operator key bound after the loss's cut-off is never taken for the lost
        // process's: it would be bound afresh here while the routers that saw the comeback
        // keep it where it is (a split); 503 until this router sees the owner back, or the
        // binding expires.
        let unsure =
            kind == KeyKind::Operator || self.unsure_of_loss(claim, down_since, clock, skew, now);
        if status == OwnerStatus::Down && !lost && unsure {
            // The backend's new process may be up, and this router has not seen it yet. Not
            // this router's to end: 503, nothing forgotten.
            return reject(Reason::UnknownOwner(kind));
        }
        let forget = StoreWrite::Forget {
            key: lookup.key.clone(),
            owner: binding.exact_prefix(),
        };
        if kind == KeyKind::Operator && (lost || status != OwnerStatus::Live) {
            // A client cannot start an operator key over: its owner lost, it is bound afresh
            // (this binding, and no later one, is cleared first).
            self.enqueue(forget);
            return self.place_operator(lookup, accept);
        }
        let reason = match status {
            OwnerStatus::Live if !lost => {
                // Cached, so that the next request is a local hit (a full table just does not
                // cache). Dated when it was bound, so that a loss recorded later condemns it.
                let bound_at = store.config.clock.instant(binding.bound_at, now);
                let _ = self
                    .table
                    .insert(&key, owner, binding.principal, bound_at.min(now));
                // Used now, not when it was bound: an idle sweep must not take it at once.
                let _ = self.table.get(&key, now);
                self.counters.incr(|s| &s.store_found);
                return Routed::Forward(self.pin(
                    lookup.tenant,
                    owner,
                    term,
                    (kind, lookup.id),
                    lookup.intent,
                    lookup.principal,
                ));
            }
            OwnerStatus::Live | OwnerStatus::Gone | OwnerStatus::Down => Reason::OwnerGone(kind),
            OwnerStatus::Revoked => Reason::OwnerRevoked(kind),
        };
        // The store still names a lost owner: tidy it.
        self.enqueue(forget);
        reject(reason)
    }

    /// Places an operator key that no live binding names.
    fn place_operator(&self, lookup: Lookup, accept: impl FnMut(BackendId) -> bool) -> Routed {
        let mut exchange = Exchange::new(
            lookup.tenant,
            BackendId::CONTESTED,
            How::Placed,
            lookup.intent,
            lookup.principal,
        );
        exchange.bind_operator = Some(Box::new(lookup.id));
        self.place(exchange, None, accept)
    }

    /// The shared store's settings, if the router shares its keys through one.
    pub fn shared_store(&self) -> Option<&SharedStore> {
        self.store.as_ref().map(|s| &s.config)
    }

    /// Takes up to `max` writes for the embedder to perform, oldest first.
    pub fn take_store_writes(&self, max: usize) -> Vec<StoreWrite> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let mut queue = store.queue.lock();
        let n = max.min(queue.len());
        queue.drain(..n).collect()
    }

    /// Writes waiting to be taken.
    pub fn store_queue_len(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.queue.lock().len())
    }

    /// A [`StoreWrite::Bind`] found `key` bound already, to `value`.
    ///
    /// - Another router bound it first, to an owner live here: the router adopts that
    ///   binding, its owner and the time it was made, as a lookup would cache it (an
    ///   operator key placed by two routers at once ends on one backend, and a loss of that
    ///   backend recorded later condemns it on every router or on none).
    /// - The binding found is lost (made before its owner was lost, or of an older
    ///   incarnation), or names an owner removed or revoked here: the router clears exactly
    ///   that binding and binds its own again (two routers repairing at once: one wins, the
    ///   other adopts it).
    /// - It names an owner this router believes down but was bound after the loss it knows
    ///   of, or one it does not know: the router is behind; it drops its own entry, so the
    ///   key's next request is looked up (503 until it catches up), never served two ways.
    pub fn on_bind_taken(&self, key: &str, value: &str, now: Instant) {
        let Some(store) = &self.store else { return };
        let Some((tenant, kind, id)) = parse_binding_key(&store.config.prefix, key) else {
            return;
        };
        let Ok(key) = Key::with_max_len(tenant, kind, id.as_bytes(), usize::MAX) else {
            return;
        };
        let Some(mine) = self.table.get(&key, now) else {
            return;
        };
        if mine.owner == BackendId::CONTESTED {
            return;
        }
        let drop_mine = || {
            self.purge_key(&key, mine.owner);
        };
        let Some(found) = Binding::decode(value) else {
            return drop_mine();
        };
        let (winner, incarnation, loss) = match self.fleet.named(tenant, found.owner) {
            Named::Backend {
                id,
                incarnation,
                lost,
                ..
            } => (id, incarnation, lost),
            // A newer process than the one removed here, or bound after the removal: not this
            // router's to judge.
            Named::Removed { at, incarnation }
                if found.claim().after(
                    (at, incarnation),
                    &store.config.clock,
                    store.config.skew,
                ) =>
            {
                return drop_mine();
            }
            Named::Removed { .. } => (BackendId::CONTESTED, u32::MAX, Loss::default()),
            Named::Unknown => return drop_mine(),
        };
        let lost = found.claim().lost(incarnation, loss);
        let status = if winner == BackendId::CONTESTED {
            OwnerStatus::Gone
        } else {
            self.fleet.owner_status(winner, now)
        };
        match status {
            // Bound under another principal: not this router's to serve either way (a lookup
            // caches the binding's principal, and refuses this one's requests).
            OwnerStatus::Live if !lost && found.principal != mine.principal => drop_mine(),
            OwnerStatus::Live if !lost => {
                // The store's binding wins, its owner and its date, as a lookup caches it:
                // moved to the winner, the entry kept the time this router learned its own
                // owner, so its reseeds wrote back a binding of the winner dated before the
                // winner was bound, and a loss between the two dates condemned that one
                // while the router that made the real binding kept it (the tenth review,
                // R10-2). (A key a stream holds open, a legacy SSE session bound for its
                // stream's life, is only moved.)
                let bound_at = store.config.clock.instant(found.bound_at, now).min(now);
                let dated = store.config.clock.unix(mine.learned_at()) == found.bound_at;
                if (mine.owner != winner || !dated) && mine.streams == 0 {
                    if let Some(removed) = self.table.remove(&key, Some(mine.owner)) {
                        self.rebind(&key, winner, removed, bound_at, now);
                    }
                } else if mine.owner != winner {
                    let _ = self.table.set_owner(&key, mine.owner, winner, now);
                }
                if mine.owner != winner {
                    self.counters.incr(|s| &s.store_adopted);
                }
            }
            OwnerStatus::Down if !lost => drop_mine(),
            _ => {
                self.enqueue(StoreWrite::Forget {
                    key: key_string(store, &key),
                    owner: found.exact_prefix(),
                });
                if let Some(write) =
                    self.bind_back(&key, mine.owner, mine.principal, mine.learned_at())
                {
                    self.enqueue(write);
                }
            }
        }
    }

    /// The store keys of the lost records of every backend this router knows: read them
    /// (every few seconds) and hand each value to [`on_lost`](Router::on_lost).
    pub fn lost_keys(&self) -> Vec<String> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        self.fleet
            .identities()
            .into_iter()
            .map(|identity| store.lost_key(identity))
            .collect()
    }

    /// The lost record `key` says `before` (Unix seconds): bindings and sealed ids of that
    /// owner made before then belong to a lost incarnation, whichever router saw it die. The
    /// keys this router holds for that owner from before then are dropped (their next
    /// request is looked up again). A record dated beyond this router's clock plus the
    /// [skew](SharedStore::clock_skew) comes from a clock that runs ahead: up to a minute
    /// more, it is believed up to this router's time plus the skew; further ahead, it is
    /// ignored and counted (`store_lost_ignored`).
    pub fn on_lost(&self, key: &str, before: u32, now: Instant) {
        let Some(store) = &self.store else { return };
        let Some(lost) = store.parse_lost_key(key) else {
            return;
        };
        // Dated ahead of this router's clock plus the skew, it comes from a clock that runs
        // ahead: a little (within a minute), it is believed up to this router's time; more,
        // it is ignored.
        let latest = store
            .config
            .clock
            .unix(now)
            .saturating_add(store.config.skew);
        if before > latest.saturating_add(FUTURE_LOST) {
            self.counters.incr(|s| &s.store_lost_ignored);
            event!(
                warn,
                key,
                before,
                latest,
                "lost record from a clock ahead of this router's: ignored"
            );
            return;
        }
        let before = before.min(latest);
        let Some(id) = self.fleet.raise_lost_before(lost, before) else {
            return;
        };
        // Judged by the second each key was learned in, as the store's bindings are judged
        // (an instant inside the second `before` would split that second in two).
        let clock = &store.config.clock;
        let mut dropped = 0;
        for owned in self.table.keys_of(id, usize::MAX) {
            let key = owned.as_key();
            let stale = self.table.get(&key, now).is_some_and(|e| {
                e.owner == id && clock.unix(e.learned_at()) < before && e.streams == 0
            });
            if stale && self.table.remove(&key, Some(id)).is_some() {
                dropped += 1;
            }
        }
        self.counters.add(|s| &s.purged, dropped);
        event!(debug, backend = %id, keys = dropped, "lost record: cached keys of a lost incarnation dropped");
    }

    /// The store came back empty (restarted, or failed over to an empty replica), as the
    /// embedder sees it (for example a marker key that is gone): for the
    /// [warm-up](SharedStore::restart_warmup), a presented key the store does not have is
    /// 503, not 404, while every router writes back what it holds. Reseed this router's keys
    /// now ([`reseed_store`](Router::reseed_store)).
    pub fn on_store_restart(&self, now: Instant) {
        let Some(store) = &self.store else { return };
        *store.warm_until.lock() = now.checked_add(store.config.warmup);
        self.counters.incr(|s| &s.store_restarts);
        event!(warn, "the shared store came back empty: warming up");
    }

    /// Writes that put back in the store what this router holds, up to `max` per call, from
    /// `cursor` on: the lost records it knows, then a [`Bind`](StoreWrite::Bind) for every
    /// shared key of a live owner in its table. Call it until it returns nothing after a
    /// store outage, or when the store came back empty (after
    /// [`on_store_restart`](Router::on_store_restart)), and perform the writes
    /// (set-if-absent: nothing newer is overwritten). Nothing means the pass is over: a call
    /// looks at as many entries as it takes to find a write (a stretch of keys that need
    /// none, such as a removed backend's, is passed over in the same call).
    pub fn reseed_store(
        &self,
        cursor: &mut ReseedCursor,
        max: usize,
        now: Instant,
    ) -> Vec<StoreWrite> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let max = max.max(1);
        let mut writes = Vec::new();
        if !cursor.lost_done {
            let lost = self.fleet.lost_records();
            for &(identity, before) in lost.iter().skip(cursor.lost).take(max) {
                writes.push(store.lost_write(identity, before));
            }
            cursor.lost += writes.len();
            cursor.lost_done = cursor.lost >= lost.len();
            if writes.len() >= max {
                return writes;
            }
        }
        if cursor.done {
            return writes;
        }
        // Entries that need no write (another kind, an owner not live) still count against a
        // scan's budget: scan on until there is a write or the pass is over, so that an empty
        // answer always means the end (it once came after a stretch of a removed backend's
        // keys, and the live keys after them were never written back).
        loop {
            let room = max - writes.len();
            let mut shown = 0;
            cursor.done = self.table.scan(&mut cursor.table, room, &mut |key, entry| {
                shown += 1;
                if !self.shared(key.kind())
                    || self.fleet.owner_status(entry.owner, now) != OwnerStatus::Live
                {
                    return;
                }
                if let Some(write) =
                    self.bind_back(key, entry.owner, entry.principal, entry.learned_at())
                {
                    writes.push(write);
                }
            });
            // (A table whose scan shows nothing and is not done breaks its contract; stop
            // rather than spin.)
            if cursor.done || !writes.is_empty() || shown == 0 {
                break;
            }
        }
        writes
    }

    /// Refreshes, in the store, the shared keys this router used since its last pass over
    /// them and those streams hold open: a part of the table per call of
    /// [`maintain`](Router::maintain) (its budget), one pass per refresh period.
    pub(super) fn store_upkeep(&self, now: Instant, budget: usize) {
        let Some(store) = &self.store else { return };
        let mut upkeep = store.upkeep.lock();
        let period = store.config.refresh_period();
        if upkeep.cursor == 0 {
            // A pass starts once per refresh period.
            if upkeep
                .started
                .is_some_and(|started| now.saturating_duration_since(started) < period)
            {
                return;
            }
            upkeep.previous = upkeep.started;
            upkeep.started = Some(now);
        }
        upkeep.last_round = Some(now);
        let since = upkeep.previous;
        let mut refreshes = Vec::new();
        let _ = self
            .table
            .scan(&mut upkeep.cursor, budget.max(1), &mut |key, entry| {
                let used =
                    since.is_none_or(|since| entry.last_used() >= since) || entry.streams > 0;
                if !used
                    || !self.shared(key.kind())
                    || self.fleet.owner_status(entry.owner, now) != OwnerStatus::Live
                {
                    return;
                }
                if let Some(StoreWrite::Bind { key, value, ttl }) =
                    self.bind_back(key, entry.owner, entry.principal, entry.learned_at())
                {
                    refreshes.push(StoreWrite::Refresh { key, value, ttl });
                }
            });
        drop(upkeep);
        for write in refreshes {
            self.enqueue(write);
        }
    }

    /// A key was learned for `owner` (and added to the table): bind it in the store.
    pub(super) fn store_learned(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Shared {
        let Some(store) = self.store.as_ref().filter(|_| self.shared(key.kind())) else {
            return Shared::No;
        };
        if key.kind() == KeyKind::Operator && !store.operator_bind_allowed(now) {
            // Client-chosen: past the budget, bound here only. (Not a dropped write: the
            // store misses nothing it should have, so nothing is written back for it.)
            self.counters.incr(|s| &s.store_operator_refused);
            return Shared::Dropped;
        }
        match self.bind_write(key, owner, principal, now) {
            Some(write) => {
                if self.enqueue(write) {
                    Shared::Queued
                } else {
                    Shared::Dropped
                }
            }
            None => Shared::Dropped,
        }
    }

    /// `key`, just removed as `removed`, bound again to `owner` as learned at `learned`, used
    /// `now`, with the streams `removed` had open (one may have opened since it was read:
    /// the eleventh review, R11-4).
    fn rebind(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        removed: crate::table::Entry,
        learned: Instant,
        now: Instant,
    ) {
        let principal = removed.principal;
        let inserted = if removed.streams == 0 {
            self.table.insert(key, owner, principal, learned)
        } else {
            self.table.insert_streaming(key, owner, principal, learned)
        };
        if inserted.is_ok() {
            for _ in 1..removed.streams {
                let _ = self.table.open_stream(key, now);
            }
        }
        // Used now, not when it was bound: an idle sweep must not take it at once.
        let _ = self.table.get(key, now);
    }

    /// The bind that writes back a key this router holds (a reseed, the refresh pass, a
    /// repair), learned at `learned` (its second exact: see [`SessionTable::align_clock`]);
    /// none for a key of a lost process.
    ///
    /// The table keeps no incarnation per key: a key is written under its owner's current
    /// incarnation and the time it was learned. One this router's own losses condemn so
    /// (learned before a loss that covers the current number: a count that started over)
    /// belongs to a lost process. Written back, it made a binding this router clears and
    /// writes again on every pass, filling the write queue and crowding out other repairs
    /// (the eighth review, R8-3).
    fn bind_back(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        learned: Instant,
    ) -> Option<StoreWrite> {
        let store = self.store.as_ref()?;
        if self.fleet.condemns(owner, store.config.clock.unix(learned)) {
            return None;
        }
        self.bind_write(key, owner, principal, learned)
    }

    fn bind_write(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        bound: Instant,
    ) -> Option<StoreWrite> {
        let store = self.store.as_ref()?;
        let (fingerprint, incarnation) = self.fleet.sealing_identity(owner)?;
        let binding = Binding {
            owner: fingerprint,
            incarnation,
            bound_at: store.config.clock.unix(bound),
            principal,
        };
        Some(StoreWrite::Bind {
            key: store.binding_key(key),
            value: binding.encode(),
            ttl: store.ttl,
        })
    }

    /// A key was forgotten for `owner` (its conversation ended): delete it from the store if
    /// it still names that owner.
    pub(super) fn store_forgotten(&self, key: &Key<'_>, owner: BackendId) {
        let Some(store) = self.store.as_ref().filter(|_| self.shared(key.kind())) else {
            return;
        };
        if let Some((fingerprint, incarnation)) = self.fleet.sealing_identity(owner) {
            self.enqueue(StoreWrite::Forget {
                key: store.binding_key(key),
                owner: owner_prefix(fingerprint, incarnation),
            });
        }
    }

    /// Queues the records of `id`'s losses that cover its current incarnation.
    pub(super) fn store_lost_records(&self, id: BackendId) {
        let Some(store) = &self.store else { return };
        for (identity, before) in self.fleet.current_lost_records(id) {
            self.enqueue(store.lost_write(identity, before));
        }
    }

    /// The process `identity` names was lost (removed, restarted, down) at `now`: every
    /// router that knows it must refuse its bindings from before.
    pub(super) fn store_lost(&self, identity: Option<Identity>, now: Instant) {
        let (Some(store), Some(identity)) = (&self.store, identity) else {
            return;
        };
        self.enqueue(store.lost_write(identity, store.cutoff(now)));
    }

    /// Queues a write; returns whether there was room. A full queue makes room for any
    /// other write by dropping its oldest refresh (a refresh only extends a life; the next
    /// pass writes it again).
    fn enqueue(&self, write: StoreWrite) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let mut queue = store.queue.lock();
        if queue.len() >= store.config.queue {
            let refresh = (!matches!(write, StoreWrite::Refresh { .. }))
                .then(|| {
                    queue
                        .iter()
                        .position(|w| matches!(w, StoreWrite::Refresh { .. }))
                })
                .flatten();
            self.counters.incr(|s| &s.store_dropped);
            match refresh {
                Some(at) => {
                    let _ = queue.remove(at);
                }
                None => return false,
            }
        }
        queue.push_back(write);
        true
    }

    /// The cut-off for bindings of an owner lost at `now`, by the store's clock.
    pub(super) fn store_cutoff(&self, now: Instant) -> Option<u32> {
        self.store.as_ref().map(|s| s.cutoff(now))
    }
}

/// What became of a learned key's store write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shared {
    /// Not a key shared through the store.
    No,
    /// Queued: the client must not see the key before it is written.
    Queued,
    /// Not written: the queue is full (or the operator-key budget spent).
    Dropped,
}

/// The store key of a binding.
fn key_string(store: &StoreState, key: &Key<'_>) -> String {
    store.binding_key(key)
}

impl StoreState {
    /// Whether the store came back empty lately (a missing key may be on its way back).
    fn warming(&self, now: Instant) -> bool {
        self.warm_until.lock().is_some_and(|until| now < until)
    }

    /// The cut-off for bindings of an owner lost at `now`: now, less the clock skew.
    fn cutoff(&self, now: Instant) -> u32 {
        self.config.clock.unix(now).saturating_sub(self.config.skew)
    }

    /// Counts an operator-key bind against the budget of the current TTL window.
    fn operator_bind_allowed(&self, now: Instant) -> bool {
        let window = u64::from(self.config.clock.unix(now)) / self.ttl.as_secs().max(1);
        let mut binds = self.operator_binds.lock();
        if binds.0 != window {
            *binds = (window, 0);
        }
        if binds.1 >= self.config.operator_binds {
            return false;
        }
        binds.1 += 1;
        true
    }
}

/// `{prefix}:b:{tenant}:{kind}:{id}` back to its parts.
fn parse_binding_key<'a>(prefix: &str, key: &'a str) -> Option<(TenantId, KeyKind, &'a str)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(":b:")?;
    let (tenant, rest) = rest.split_once(':')?;
    let (kind, id) = rest.split_once(':')?;
    Some((
        TenantId::new(tenant.parse().ok()?),
        KeyKind::from_u8(kind.parse().ok()?)?,
        id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_round_trip_and_garbage_is_refused() {
        for binding in [
            Binding {
                owner: 0xfeed_beef_0000_0001,
                incarnation: 3,
                bound_at: 1_795_000_000,
                principal: Some(Principal::new(42)),
            },
            Binding {
                owner: 0,
                incarnation: 0,
                bound_at: 0,
                principal: None,
            },
        ] {
            let value = binding.encode();
            assert_eq!(Binding::decode(&value), Some(binding), "{value}");
            assert!(value.starts_with(&owner_prefix(binding.owner, binding.incarnation)));
        }
        for garbage in [
            "",
            "2:00:0:0:-",
            "1:zz:0:0:-",
            "1:00:0:0:-:extra",
            "1:00:0:0",
        ] {
            assert_eq!(Binding::decode(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn binding_keys_parse_back() {
        assert_eq!(
            parse_binding_key("p", "p:b:3:4:acme:x"),
            Some((TenantId::new(3), KeyKind::Operator, "acme:x"))
        );
        assert_eq!(parse_binding_key("p", "q:b:3:4:acme"), None);
    }
}
