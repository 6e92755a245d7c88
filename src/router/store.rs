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
//! | `{prefix}:lost:{tenant}:{owner}` | Unix seconds | [`StoreWrite::Lost`], the greatest kept |
//!
//! `{owner}` is the backend name's fingerprint (16 hex digits,
//! [`seal::owner_fingerprint`](crate::seal)-compatible: FNV-1a 64), `{principal}` the
//! principal's fingerprint in hex or `-`, times Unix seconds, `{kind}` the key kind's number.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;

use super::OperatorScope;
use super::Router;
use super::classify::Intent;
use super::exchange::{Exchange, How, IdBuf, Routed};
use super::fleet::{Named, OwnerStatus};
use super::reject::Reason;
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
#[derive(Clone)]
pub struct SharedStore {
    prefix: Arc<str>,
    ttl: Duration,
    refresh: Option<Duration>,
    queue: usize,
    skew: u32,
    clock: WallClock,
}

impl SharedStore {
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
            clock: WallClock::new(now, unix_secs),
        }
    }

    /// How long a binding lives in the store without being refreshed (default 1 hour).
    pub fn binding_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How often, at most, a router refreshes a key in use (default a quarter of the TTL).
    pub fn refresh_after(mut self, every: Duration) -> Self {
        self.refresh = Some(every);
        self
    }

    /// The most writes waiting to be taken (default 65,536).
    pub fn write_queue(mut self, writes: usize) -> Self {
        self.queue = writes.max(1);
        self
    }

    /// How far apart the routers' clocks may be (default 2 s).
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.skew = u32::try_from(skew.as_secs()).unwrap_or(u32::MAX);
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
    /// Extend `key`'s life to `ttl` from now (`PEXPIRE`); nothing if it is gone.
    Refresh {
        /// The binding's store key.
        key: String,
        /// Its new life.
        ttl: Duration,
    },
    /// Delete `key` only if its value starts with `owner` (compare-and-delete): a binding
    /// another router made since, for another owner, stays.
    Forget {
        /// The binding's store key.
        key: String,
        /// The prefix of the value that names the owner forgetting it.
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

/// Where [`Router::reseed_store`] goes on from.
#[derive(Clone, Debug, Default)]
pub struct ReseedCursor {
    next: usize,
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

/// The router's side of the store: its settings, the write queue, and when it last refreshed
/// each key it uses.
pub(super) struct StoreState {
    config: SharedStore,
    queue: Mutex<VecDeque<StoreWrite>>,
    /// Per shard: key hash → the refresh period it was last refreshed in. Bounded: a shard
    /// over its bound starts over (a few refreshes more, never fewer).
    refreshed: Box<[Mutex<HashMap<u64, u64>>]>,
}

/// Shards of the refresh record, and the keys each remembers.
const REFRESH_SHARDS: usize = 16;
const REFRESH_PER_SHARD: usize = 1 << 14;

impl StoreState {
    pub(super) fn new(config: SharedStore) -> Self {
        StoreState {
            config,
            queue: Mutex::new(VecDeque::new()),
            refreshed: (0..REFRESH_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
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

    fn lost_key(&self, tenant: TenantId, owner: u64) -> String {
        format!("{}:lost:{}:{owner:016x}", self.config.prefix, tenant.get())
    }

    /// The key of a lost record back to its tenant and owner.
    fn parse_lost_key(&self, key: &str) -> Option<(TenantId, u64)> {
        let rest = key
            .strip_prefix(&*self.config.prefix)?
            .strip_prefix(":lost:")?;
        let (tenant, owner) = rest.split_once(':')?;
        Some((
            TenantId::new(tenant.parse().ok()?),
            u64::from_str_radix(owner, 16).ok()?,
        ))
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
        self.counters.store_lookups.incr();
        Some(Lookup {
            key: store.binding_key(key),
            tenant: key.tenant(),
            kind: key.kind(),
            id: IdBuf::new(key.id_bytes()),
            intent,
            principal,
        })
    }

    /// Routes a request whose key was looked up in the store: see the
    /// [store protocol](super::store).
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
        let kind = lookup.kind;
        let reject = |reason| Routed::Reject(self.reject(reason));
        let value = match answer {
            Looked::Found(value) => value,
            Looked::Missing if kind == KeyKind::Operator => {
                // Never bound anywhere: bound to whoever answers its first request 2xx.
                let mut exchange = Exchange::new(
                    lookup.tenant,
                    BackendId::CONTESTED,
                    How::Placed,
                    lookup.intent,
                    lookup.principal,
                );
                exchange.bind_operator = Some(Box::new(lookup.id));
                return self.place(exchange, accept);
            }
            Looked::Missing => return reject(self.unknown_presented(kind)),
            Looked::Unavailable => {
                self.counters.store_unavailable.incr();
                return reject(Reason::StoreUnavailable(kind));
            }
        };
        let Some(binding) = Binding::decode(value) else {
            return reject(Reason::UnknownKey(kind));
        };
        let (owner, incarnation, lost_before) = match self.fleet.named(lookup.tenant, binding.owner)
        {
            Named::Backend {
                id,
                incarnation,
                lost_before,
            } => (id, incarnation, lost_before),
            Named::Removed => return reject(Reason::OwnerGone(kind)),
            Named::Unknown => return reject(Reason::UnknownOwner(kind)),
        };
        if binding.incarnation > incarnation {
            return reject(Reason::UnknownOwner(kind));
        }
        let store = self.store.as_ref().expect("a lookup comes from a store");
        let key = Key::with_max_len(lookup.tenant, kind, lookup.id.as_bytes(), usize::MAX)
            .expect("looked-up keys were validated");
        let lost = binding.incarnation < incarnation || binding.bound_at < lost_before;
        let shared =
            kind == KeyKind::Operator && self.config.operator_scope == OperatorScope::Shared;
        if self.config.principal.is_some() && !shared && binding.principal != lookup.principal {
            return reject(Reason::WrongPrincipal(kind));
        }
        let (status, term) = self.fleet.owner_state(owner, now);
        if kind == KeyKind::Operator && (lost || status != OwnerStatus::Live) {
            // A client cannot start an operator key over: its owner lost, it is bound afresh.
            self.enqueue(StoreWrite::Forget {
                key: lookup.key,
                owner: owner_prefix(binding.owner, binding.incarnation),
            });
            let mut exchange = Exchange::new(
                lookup.tenant,
                BackendId::CONTESTED,
                How::Placed,
                lookup.intent,
                lookup.principal,
            );
            exchange.bind_operator = Some(Box::new(lookup.id));
            return self.place(exchange, accept);
        }
        let reason = match status {
            OwnerStatus::Live if !lost => {
                // Cached, so that the next request is a local hit (a full table just does not
                // cache).
                let _ = self.table.insert(&key, owner, binding.principal, now);
                self.counters.store_found.incr();
                self.counters.pinned.incr();
                let mut exchange = Exchange::new(
                    lookup.tenant,
                    owner,
                    How::Pinned,
                    lookup.intent,
                    lookup.principal,
                );
                exchange.term = term;
                exchange.key = Some((kind, lookup.id));
                return Routed::Forward(exchange);
            }
            OwnerStatus::Live | OwnerStatus::Gone => Reason::OwnerGone(kind),
            OwnerStatus::Down => Reason::OwnerDown(kind),
            OwnerStatus::Revoked => Reason::OwnerRevoked(kind),
        };
        // The store still names a lost owner: tidy it.
        let _ = store;
        self.enqueue(StoreWrite::Forget {
            key: lookup.key,
            owner: owner_prefix(binding.owner, binding.incarnation),
        });
        reject(reason)
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

    /// A [`StoreWrite::Bind`] found `key` bound already, to `value`: another router bound it
    /// first. The router adopts that owner if it knows it and it is live (an operator key
    /// placed by two routers at once ends on one backend); otherwise it keeps its own. A
    /// binding of a lost owner (a removed backend, an incarnation lost, a binding from before
    /// a loss) is replaced: compare-and-deleted, and this router's binding written again.
    pub fn on_bind_taken(&self, key: &str, value: &str, now: Instant) {
        let Some(store) = &self.store else { return };
        let Some(binding) = Binding::decode(value) else {
            return;
        };
        let Some((tenant, kind, id)) = parse_binding_key(&store.config.prefix, key) else {
            return;
        };
        let Ok(key) = Key::with_max_len(tenant, kind, id.as_bytes(), usize::MAX) else {
            return;
        };
        let Some(entry) = self
            .table
            .get(&key, now)
            .filter(|entry| entry.owner != BackendId::CONTESTED)
        else {
            return;
        };
        let winner = match self.fleet.named(tenant, binding.owner) {
            Named::Backend {
                id,
                incarnation,
                lost_before,
            } if binding.incarnation >= incarnation && binding.bound_at >= lost_before => id,
            Named::Backend { .. } | Named::Removed => {
                self.enqueue(StoreWrite::Forget {
                    key: store.binding_key(&key),
                    owner: owner_prefix(binding.owner, binding.incarnation),
                });
                let learned = Some(entry.learned_at());
                if let Some(write) = self.bind_write(&key, entry.owner, entry.principal, learned) {
                    self.enqueue(write);
                }
                return;
            }
            // A router behind its fleet: it keeps its own.
            Named::Unknown => return,
        };
        if self.fleet.owner_status(winner, now) != OwnerStatus::Live {
            return;
        }
        if entry.owner != winner {
            let _ = self.table.set_owner(&key, entry.owner, winner, now);
            self.counters.store_adopted.incr();
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
            .map(|(tenant, owner)| store.lost_key(tenant, owner))
            .collect()
    }

    /// The lost record `key` says `before` (Unix seconds): bindings and sealed ids of that
    /// owner made before then belong to a lost incarnation, whichever router saw it die.
    ///
    /// That includes the bindings this router holds in its table (learned here, or cached
    /// from a lookup) from before then: when the record is news, they are purged, and their
    /// next requests are answered from the store. (The keys of that owner the table keeps
    /// are marked used at `now`.)
    pub fn on_lost(&self, key: &str, before: u32, now: Instant) {
        let Some(store) = &self.store else { return };
        let Some((tenant, owner)) = store.parse_lost_key(key) else {
            return;
        };
        let Some(id) = self.fleet.raise_lost_before(tenant, owner, before) else {
            return;
        };
        let mut purged = 0;
        for key in self.table.keys_of(id, usize::MAX) {
            let key = key.as_key();
            let lost = self.table.get(&key, now).is_some_and(|entry| {
                entry.owner == id && store.config.clock.unix(entry.learned_at()) < before
            });
            if lost && self.table.remove(&key, Some(id)).is_some() {
                purged += 1;
            }
        }
        self.counters.purged.add(purged);
    }

    /// Bind writes for up to `max` shared keys the router holds, from `cursor` on: after a
    /// store outage, or when the store came back empty, call it until it returns nothing, and
    /// perform the writes (set-if-absent: nothing newer is overwritten).
    pub fn reseed_store(
        &self,
        cursor: &mut ReseedCursor,
        max: usize,
        now: Instant,
    ) -> Vec<StoreWrite> {
        if self.store.is_none() {
            return Vec::new();
        }
        let backends = self.fleet.infos(&self.table);
        let mut writes = Vec::new();
        while writes.len() < max && cursor.next < backends.len() {
            let backend = &backends[cursor.next];
            cursor.next += 1;
            for key in self.table.keys_of(backend.id, usize::MAX) {
                let key = key.as_key();
                if !self.shared(key.kind()) {
                    continue;
                }
                let Some(entry) = self.table.get(&key, now) else {
                    continue;
                };
                let learned = Some(entry.learned_at());
                if let Some(write) = self.bind_write(&key, backend.id, entry.principal, learned) {
                    writes.push(write);
                }
            }
        }
        writes
    }

    /// A key was learned for `owner` (and added to the table): bind it in the store.
    pub(super) fn store_learned(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) {
        if !self.shared(key.kind()) {
            return;
        }
        if let Some(write) = self.bind_write(key, owner, principal, Some(now)) {
            self.enqueue(write);
        }
    }

    fn bind_write(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Option<Instant>,
    ) -> Option<StoreWrite> {
        let store = self.store.as_ref()?;
        let (fingerprint, incarnation) = self.fleet.sealing_identity(owner)?;
        let bound_at = now.map_or(0, |now| store.config.clock.unix(now));
        let binding = Binding {
            owner: fingerprint,
            incarnation,
            bound_at,
            principal,
        };
        Some(StoreWrite::Bind {
            key: store.binding_key(key),
            value: binding.encode(),
            ttl: store.config.ttl,
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

    /// A shared key in use: refresh it in the store, at most once per refresh period.
    pub(super) fn store_used(&self, key: &Key<'_>, now: Instant) {
        let Some(store) = self.store.as_ref().filter(|_| self.shared(key.kind())) else {
            return;
        };
        let hash = crate::backend::fnv1a(key.id_bytes())
            ^ u64::from(key.tenant().get()) << 48
            ^ u64::from(key.kind().to_u8()) << 40;
        let period = store.config.refresh_period();
        let unix_ms = u64::from(store.config.clock.unix(now)) * 1000;
        let bucket = unix_ms / u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        let shard = &store.refreshed[hash as usize % REFRESH_SHARDS];
        {
            let mut refreshed = shard.lock();
            if refreshed.get(&hash) == Some(&bucket) {
                return;
            }
            if refreshed.len() >= REFRESH_PER_SHARD {
                refreshed.clear();
            }
            refreshed.insert(hash, bucket);
        }
        self.enqueue(StoreWrite::Refresh {
            key: store.binding_key(key),
            ttl: store.config.ttl,
        });
    }

    /// The backend `identity` names (its tenant and name fingerprint) was lost (removed,
    /// restarted, down) at `cutoff`: every router must refuse its bindings from before.
    pub(super) fn store_lost(&self, identity: Option<(TenantId, u64)>, cutoff: u32) {
        let (Some(store), Some((tenant, owner))) = (&self.store, identity) else {
            return;
        };
        self.enqueue(StoreWrite::Lost {
            key: store.lost_key(tenant, owner),
            before: cutoff,
            ttl: store.config.ttl * 2,
        });
    }

    fn enqueue(&self, write: StoreWrite) {
        let Some(store) = &self.store else { return };
        let mut queue = store.queue.lock();
        if queue.len() >= store.config.queue {
            self.counters.store_dropped.incr();
            return;
        }
        queue.push_back(write);
    }

    /// The cut-off for bindings of an owner lost at `now`, by the store's clock.
    pub(super) fn store_cutoff(&self, now: Instant) -> Option<u32> {
        self.store
            .as_ref()
            .map(|s| s.config.clock.unix(now).saturating_sub(s.config.skew))
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
