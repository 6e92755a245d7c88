//! The session table: the learned map from affinity key to owning backend.
//!
//! Every routing decision for a keyed request is one [`SessionTable::get`]. The router learns
//! keys only from backend responses ([`SessionTable::insert`]), forgets them when a conversation
//! ends ([`SessionTable::remove`]), and sweeps idle ones ([`SessionTable::evict_idle`]).
//!
//! - [`MemoryTable`] is the default: sharded, bounded, no allocation on lookups.
//! - [`NullTable`] stores nothing (affinity off), and says so.
//! - Your own store implements [`SessionTable`] and checks itself with
//!   [`contract::check`] (feature `test-util`).
//!
//! # Keys
//!
//! A [`Key`] is a tenant, a [`KeyKind`] and an id of visible ASCII, validated once where it
//! enters (an [`InvalidKey`] otherwise). Equal ids of different tenants or kinds are different
//! keys, so one tenant's id can never select another tenant's backend.

use std::time::{Duration, Instant};

use crate::{BackendId, TenantId};

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod contract;
mod index;
mod key;
mod memory;
mod null;

pub use key::{InvalidKey, Key, KeyKind, OwnedKey};
pub use memory::{FastHash, FastHasher, MemoryTable, MemoryTableConfig};
pub use null::NullTable;

/// A fingerprint of the authenticated principal (for example a hash of the bearer token) that
/// a key was learned under. The router rejects the key when another principal presents it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Principal(u64);

impl Principal {
    /// The principal with this fingerprint.
    pub const fn new(fingerprint: u64) -> Self {
        Principal(fingerprint)
    }

    /// The fingerprint.
    pub const fn fingerprint(self) -> u64 {
        self.0
    }
}

/// The resolution of the times [`MemoryTable`] keeps.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// What the table knows of a key: returned by value, no lock held.
///
/// Tables may keep times at a coarser resolution than `Instant`: [`MemoryTable`] rounds them
/// down to 100 ms, and turns them into `Instant`s only when asked.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Entry {
    /// The backend that owns the key.
    pub owner: BackendId,
    /// The principal the key was learned under, if the router binds principals.
    pub principal: Option<Principal>,
    /// Streams open on the key (long-lived GETs); an entry with an open stream does not expire.
    pub streams: u32,
    times: Times,
}

/// When an entry was learned and last used.
#[derive(Clone, Copy, Debug)]
enum Times {
    Exact {
        learned: Instant,
        used: Instant,
    },
    /// Counted in [`TICK`]s from `epoch`: computed only when asked.
    Ticked {
        epoch: Instant,
        learned: u32,
        used: u32,
    },
}

impl Entry {
    /// An entry for a key just learned at `now`, with no principal and no stream (for table
    /// implementations).
    pub fn new(owner: BackendId, now: Instant) -> Self {
        Entry {
            owner,
            principal: None,
            streams: 0,
            times: Times::Exact {
                learned: now,
                used: now,
            },
        }
    }

    /// An entry whose times are counted in [`TICK`]s since `epoch`.
    pub(crate) fn ticked(owner: BackendId, epoch: Instant, learned: u32, used: u32) -> Self {
        Entry {
            owner,
            principal: None,
            streams: 0,
            times: Times::Ticked {
                epoch,
                learned,
                used,
            },
        }
    }

    /// Sets the principal.
    pub fn with_principal(mut self, principal: Option<Principal>) -> Self {
        self.principal = principal;
        self
    }

    /// Sets the number of open streams.
    pub fn with_streams(mut self, streams: u32) -> Self {
        self.streams = streams;
        self
    }

    /// Sets when the key was last used.
    pub fn with_last_used(mut self, last_used: Instant) -> Self {
        self.times = Times::Exact {
            learned: self.learned_at(),
            used: last_used,
        };
        self
    }

    /// When the key was learned.
    pub fn learned_at(&self) -> Instant {
        match self.times {
            Times::Exact { learned, .. } => learned,
            Times::Ticked { epoch, learned, .. } => epoch + TICK * learned,
        }
    }

    /// When the key was last used (looked up, learned, or a stream opened or closed on it).
    pub fn last_used(&self) -> Instant {
        match self.times {
            Times::Exact { used, .. } => used,
            Times::Ticked { epoch, used, .. } => epoch + TICK * used,
        }
    }
}

/// Entries are equal when they say the same things, however their times are kept.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.owner == other.owner
            && self.principal == other.principal
            && self.streams == other.streams
            && self.learned_at() == other.learned_at()
            && self.last_used() == other.last_used()
    }
}

impl Eq for Entry {}

/// The outcome of [`SessionTable::insert`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Insert {
    /// The key was unknown and is now bound to the owner.
    Added {
        /// The table was full and evicted an entry to make room. A [`MemoryTable`] evicts the
        /// least recently used entry with no open stream among 16 sampled from the key's
        /// shard, whether or not it has been idle for long.
        evicted: bool,
    },
    /// The key is already bound; nothing changed. This is the existing entry, whose owner may
    /// differ from the one offered: learning never overwrites an owner.
    Exists(Entry),
}

/// Which bound a full table hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// The table's total capacity.
    Global,
    /// The capacity of the key's tenant.
    Tenant,
    /// The bound on client-chosen ([`KeyKind::Operator`]) keys; also an operator key that
    /// finds the table full and no operator key with no open stream to evict.
    Operator,
}

/// Why [`SessionTable::insert`] did not store a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The table (or the key's tenant, or the operator keys) is at capacity and no entry
    /// could be evicted: a [`MemoryTable`] found no entry with no open stream that it may
    /// evict among those it sampled (see [`MemoryTableConfig`]).
    #[error("session table full ({scope:?} capacity)")]
    Full {
        /// The bound that was hit.
        scope: Scope,
    },
    /// The table stores nothing (the [`NullTable`]).
    #[error("session table disabled")]
    Disabled,
}

/// Why [`SessionTable::set_owner`] changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetOwnerError {
    /// The key is not in the table.
    #[error("no such key")]
    NotFound,
    /// The key is owned by another backend than expected; this is its entry.
    #[error("key owned by {} instead", .0.owner)]
    OwnerChanged(Entry),
}

/// What one [`SessionTable::evict_idle`] call did.
#[must_use]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Eviction {
    /// Entries looked at.
    pub examined: usize,
    /// Entries removed because they were idle beyond the table's TTL with no open stream.
    pub evicted: usize,
}

/// How full a table is (see [`Occupancy::new`] for table implementations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Occupancy {
    /// Entries stored.
    pub len: usize,
    /// The most entries the table holds, if it has a bound.
    pub capacity: Option<usize>,
}

/// The learned map `affinity key → owner` that every routing decision reads.
///
/// The router holds one table behind `&self` and calls it from every worker thread, so
/// implementations are `Send + Sync` and return owned values: no lock guard escapes. No method
/// reads the clock; those that use time take `now`.
///
/// The router *learns* keys only from backend responses: a key taken from a client request is
/// only ever looked up. Implementations store what they are given and keep these contracts,
/// which [`contract::check`] verifies (feature `test-util`):
///
/// - keys are compared whole: tenant, kind and id; nothing else matches;
/// - [`insert`](SessionTable::insert) never replaces an existing owner;
/// - an entry with an open stream never expires, and an entry is never reported after it
///   was removed;
/// - counts ([`count_owner`](SessionTable::count_owner),
///   [`count_tenant`](SessionTable::count_tenant), [`occupancy`](SessionTable::occupancy))
///   agree with the entries stored once concurrent calls have returned.
///
/// A table may refuse to store (capacity, or the [`NullTable`] that stores nothing); it then
/// says so with an [`InsertError`] and the router rejects or degrades as documented there.
pub trait SessionTable: Send + Sync {
    /// Looks `key` up and marks it used at `now`.
    ///
    /// The router calls this for every request that carries a key. It is the hot path:
    /// implementations should not allocate or take exclusive locks here.
    fn get(&self, key: &Key<'_>, now: Instant) -> Option<Entry>;

    /// Binds `key` to `owner` (and `principal`) if the key is unknown.
    ///
    /// The router calls this when a backend response reveals a new key. If the key exists,
    /// nothing changes and the existing entry comes back as [`Insert::Exists`]. A table at
    /// capacity may evict an idle entry ([`Insert::Added`] says so) or refuse
    /// ([`InsertError::Full`]).
    fn insert(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Result<Insert, InsertError>;

    /// [`insert`](SessionTable::insert), with one stream open on the entry from the start, so
    /// that it can neither expire nor be evicted before its stream is counted; if the key
    /// exists with the same owner, one more stream is counted on it.
    ///
    /// The router calls this for a legacy SSE session, bound while its stream lives. The
    /// default implementation calls `insert` then [`open_stream`](SessionTable::open_stream),
    /// which leaves a window between the two; implementations should override it to do both
    /// at once, as [`MemoryTable`] does.
    fn insert_streaming(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Result<Insert, InsertError> {
        let inserted = self.insert(key, owner, principal, now)?;
        let ours = match inserted {
            Insert::Added { .. } => true,
            Insert::Exists(entry) => entry.owner == owner,
        };
        if ours {
            let _ = self.open_stream(key, now);
        }
        Ok(inserted)
    }

    /// Moves `key` from `expected` to `new`, if `expected` still owns it (compare-and-set).
    ///
    /// Used by fleet operations that hand keys over between incarnations; plain routing never
    /// moves a key.
    fn set_owner(
        &self,
        key: &Key<'_>,
        expected: BackendId,
        new: BackendId,
        now: Instant,
    ) -> Result<Entry, SetOwnerError>;

    /// Removes `key`, only if `owner` owns it when `owner` is given; returns the removed entry.
    ///
    /// The router calls this when a conversation ends: a `DELETE` answered 2xx; a 404 to a
    /// request carrying a legacy-era session (a `DELETE` among them), but only when the router
    /// binds principals (without binding, a 404 may be the backend refusing a stranger who
    /// knows the id, and the key stays until it idles out); the end of a legacy SSE session's
    /// last stream (through the default [`release_stream`](SessionTable::release_stream)). A
    /// `DELETE` or a 404 never removes a legacy SSE session that a stream still carries. The
    /// router also calls this when a key's owner turns out gone (removed, down, revoked, or a
    /// lost incarnation), when a new session's binding cannot be queued for the shared store,
    /// and for [`Router::evict_key`](crate::router::Router::evict_key).
    fn remove(&self, key: &Key<'_>, owner: Option<BackendId>) -> Option<Entry>;

    /// Counts one more stream open on `key` and marks it used; `None` if the key is unknown.
    fn open_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry>;

    /// Counts one stream fewer on `key` (never below zero) and marks it used; `None` if the key
    /// is unknown.
    fn close_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry>;

    /// Closes one stream on `key` if `owner` owns it, and removes the key when that was its
    /// last stream; returns the entry as it is afterwards (zero streams: removed), or `None`
    /// if the key is unknown or another backend owns it.
    ///
    /// The router calls this when a legacy SSE stream ends: its session lives exactly as long
    /// as its streams (a backend that mints one id for two streams keeps it until both end).
    /// The default implementation calls [`get`](SessionTable::get),
    /// [`close_stream`](SessionTable::close_stream) and [`remove`](SessionTable::remove) in
    /// turn, which leaves windows between them; implementations should override it to do it
    /// at once, as [`MemoryTable`] does.
    fn release_stream(&self, key: &Key<'_>, owner: BackendId, now: Instant) -> Option<Entry> {
        self.get(key, now).filter(|entry| entry.owner == owner)?;
        let closed = self.close_stream(key, now)?;
        if closed.streams == 0 {
            self.remove(key, Some(owner))?;
        }
        Some(closed)
    }

    /// Removes every key `owner` owns and returns how many; used when a backend is removed (at
    /// once, or once the removal grace has passed), after a backend was declared down, and
    /// when a draining backend's deadline passes.
    fn remove_owner(&self, owner: BackendId) -> usize;

    /// Lists up to `max` keys that `owner` owns, in no particular order.
    fn keys_of(&self, owner: BackendId, max: usize) -> Vec<OwnedKey>;

    /// Removes entries idle for longer than [`idle_ttl`](SessionTable::idle_ttl) with no open
    /// stream, looking at no more than `max_work` entries. The embedder calls this periodically
    /// (for example every second with a budget of a few thousand): there is no stop-the-world
    /// sweep.
    fn evict_idle(&self, now: Instant, max_work: usize) -> Eviction;

    /// How many keys `owner` owns.
    fn count_owner(&self, owner: BackendId) -> usize;

    /// How many keys `tenant` has.
    fn count_tenant(&self, tenant: TenantId) -> usize;

    /// How many entries the table holds, and its bound.
    fn occupancy(&self) -> Occupancy;

    /// How long an entry with no open stream lives without use; `None` if entries never
    /// expire.
    fn idle_ttl(&self) -> Option<Duration>;

    /// Shows `visit` up to `max` entries from `cursor` on (0 starts a pass over the whole
    /// table) and moves the cursor past them; returns `true` when the pass is complete (the
    /// cursor is back at 0). A call with `max` of at least 1 that shows nothing must complete
    /// the pass. Entries added, removed or moved while a pass runs may be missed
    /// or shown twice; an implementation should show at least once every entry that stays
    /// for the whole pass ([`MemoryTable`] does, whatever is removed between calls), or the
    /// keys it misses go unrefreshed. What a router's shared store uses to refresh and reseed
    /// the keys it holds; the default shows nothing (a table that cannot be walked shares
    /// only what it learns as it learns it).
    fn scan(&self, cursor: &mut u64, max: usize, visit: &mut dyn FnMut(&Key<'_>, &Entry)) -> bool {
        let _ = (max, visit);
        *cursor = 0;
        true
    }

    /// Aligns the table's clock on `anchor`, before any other call. A table that keeps times
    /// coarser than an `Instant` (as [`MemoryTable`] keeps them in 100 ms ticks) then rounds
    /// them on a grid through `anchor`, where whole seconds from it fall on the grid: the
    /// second a key was learned in, counted from `anchor`, is kept exactly. A router with a
    /// shared store passes the instant its wall clock was read at: it compares the Unix
    /// second a key was learned in with the second before which a backend's process was
    /// lost, as every router compares the store's bindings, and a key rounded into the
    /// second before was judged lost here only (the ninth and eleventh reviews, R9-1 and
    /// R11-1). The default does nothing (a table that keeps exact times needs nothing).
    fn align_clock(&self, anchor: Instant) {
        let _ = anchor;
    }
}

impl Eviction {
    /// A report of `examined` entries looked at and `evicted` removed (for implementations).
    pub fn new(examined: usize, evicted: usize) -> Self {
        Eviction { examined, evicted }
    }
}

impl Occupancy {
    /// `len` entries out of `capacity` (for implementations).
    pub fn new(len: usize, capacity: Option<usize>) -> Self {
        Occupancy { len, capacity }
    }
}

impl<T: SessionTable + ?Sized> SessionTable for std::sync::Arc<T> {
    fn get(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
        (**self).get(key, now)
    }
    fn insert(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Result<Insert, InsertError> {
        (**self).insert(key, owner, principal, now)
    }
    fn insert_streaming(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Result<Insert, InsertError> {
        (**self).insert_streaming(key, owner, principal, now)
    }
    fn set_owner(
        &self,
        key: &Key<'_>,
        expected: BackendId,
        new: BackendId,
        now: Instant,
    ) -> Result<Entry, SetOwnerError> {
        (**self).set_owner(key, expected, new, now)
    }
    fn remove(&self, key: &Key<'_>, owner: Option<BackendId>) -> Option<Entry> {
        (**self).remove(key, owner)
    }
    fn open_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
        (**self).open_stream(key, now)
    }
    fn close_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
        (**self).close_stream(key, now)
    }
    fn release_stream(&self, key: &Key<'_>, owner: BackendId, now: Instant) -> Option<Entry> {
        (**self).release_stream(key, owner, now)
    }
    fn remove_owner(&self, owner: BackendId) -> usize {
        (**self).remove_owner(owner)
    }
    fn keys_of(&self, owner: BackendId, max: usize) -> Vec<OwnedKey> {
        (**self).keys_of(owner, max)
    }
    fn evict_idle(&self, now: Instant, max_work: usize) -> Eviction {
        (**self).evict_idle(now, max_work)
    }
    fn count_owner(&self, owner: BackendId) -> usize {
        (**self).count_owner(owner)
    }
    fn count_tenant(&self, tenant: TenantId) -> usize {
        (**self).count_tenant(tenant)
    }
    fn occupancy(&self) -> Occupancy {
        (**self).occupancy()
    }
    fn idle_ttl(&self) -> Option<Duration> {
        (**self).idle_ttl()
    }
    fn scan(&self, cursor: &mut u64, max: usize, visit: &mut dyn FnMut(&Key<'_>, &Entry)) -> bool {
        (**self).scan(cursor, max, visit)
    }
    fn align_clock(&self, anchor: Instant) {
        (**self).align_clock(anchor)
    }
}
