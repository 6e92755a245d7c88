//! The default table: in memory, sharded, bounded.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hashbrown::{DefaultHashBuilder, HashMap};
use parking_lot::RwLock;
use std::hash::Hash;

use super::index::Index;
use super::{
    Entry, Eviction, Insert, InsertError, Key, KeyKind, Occupancy, OwnedKey, Principal, Scope,
    SessionTable, SetOwnerError, TICK,
};
use crate::{BackendId, TenantId};

/// Ids up to this many bytes are stored inside the entry; longer ones get a heap allocation.
/// 37 covers the ids MCP SDKs mint: UUIDs with hyphens (36), hex UUIDs (32), ULIDs (26).
const INLINE: usize = 37;
/// `Slot::id_len` of an id stored out of line.
const LONG: u8 = u8::MAX;
/// No slot (end of an owner list).
const NIL: u32 = u32::MAX;
/// Entries sampled when looking for one to evict.
const SAMPLES: usize = 16;
/// Entries scanned, after sampling failed, for an entry with no open stream of a full tenant
/// (or an operator key with no open stream).
const TENANT_SCAN: usize = 256;
/// `Slot::kind` of a [`KeyKind::Operator`] key.
const OPERATOR: u8 = KeyKind::Operator.to_u8();

/// Which entries an insert into a full table may evict.
#[derive(Clone, Copy)]
struct Only {
    /// Only this tenant's (its tenant is full).
    tenant: Option<u16>,
    /// Only operator keys (the key is one: client-chosen keys never displace another kind).
    operator: bool,
}
/// `Slot::flags` bit: the entry has a principal in `Shard::principals`.
const HAS_PRINCIPAL: u8 = 1;

/// Bounds and shape of a [`MemoryTable`].
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`capacity`](MemoryTableConfig::with_capacity) | 1,048,576 | entries in the whole table |
/// | [`tenant_capacity`](MemoryTableConfig::with_tenant_capacity) | 1,048,576 | entries of one tenant |
/// | [`operator_capacity`](MemoryTableConfig::with_operator_capacity) | capacity / 8 | client-chosen ([`KeyKind::Operator`]) entries |
/// | [`idle_ttl`](MemoryTableConfig::with_idle_ttl) | 1 hour | life of an entry with no open stream and no use |
/// | [`shards`](MemoryTableConfig::with_shards) | 64 | independently locked parts (a power of two) |
///
/// When an insert finds the table (or the key's tenant) full, it samples 16 entries of the
/// key's shard and evicts the least recently used one that has no open stream (for a full
/// tenant, one of that tenant, scanning up to 256 more entries if the sample had none); if there
/// is none, the insert is refused with [`InsertError::Full`]. A tenant at its capacity never
/// evicts another tenant's entries.
///
/// Operator keys are chosen by clients, not minted by backends, so they have a bound of
/// their own and never displace another kind: an operator key that finds the table full, or
/// the operator keys at their bound, may only evict an operator key with no open stream,
/// chosen as above (else it is refused with [`Scope::Operator`]). A client sending fresh
/// operator values evicts operator keys, never a backend-minted session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryTableConfig {
    capacity: usize,
    tenant_capacity: usize,
    operator_capacity: Option<usize>,
    idle_ttl: Option<Duration>,
    shards: usize,
}

impl MemoryTableConfig {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        MemoryTableConfig {
            capacity: 1 << 20,
            tenant_capacity: 1 << 20,
            operator_capacity: None,
            idle_ttl: Some(Duration::from_secs(3600)),
            shards: 64,
        }
    }

    /// Sets the most entries the table holds.
    pub fn with_capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// Sets the most entries one tenant holds.
    pub fn with_tenant_capacity(mut self, entries: usize) -> Self {
        self.tenant_capacity = entries;
        self
    }

    /// Sets the most client-chosen ([`KeyKind::Operator`]) entries the table holds; by
    /// default an eighth of the capacity.
    pub fn with_operator_capacity(mut self, entries: usize) -> Self {
        self.operator_capacity = Some(entries);
        self
    }

    /// Sets how long an entry with no open stream lives without use (`None`: forever). Kept to
    /// 100 ms.
    pub fn with_idle_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Sets the number of shards, rounded up to a power of two between 1 and 65,536.
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// The most entries the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most entries one tenant holds.
    pub fn tenant_capacity(&self) -> usize {
        self.tenant_capacity
    }

    /// The most client-chosen ([`KeyKind::Operator`]) entries the table holds.
    pub fn operator_capacity(&self) -> usize {
        self.operator_capacity
            .unwrap_or(self.capacity / 8)
            .min(self.capacity)
    }

    /// How long an entry with no open stream lives without use.
    pub fn idle_ttl(&self) -> Option<Duration> {
        self.idle_ttl
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }
}

impl Default for MemoryTableConfig {
    fn default() -> Self {
        MemoryTableConfig::new()
    }
}

/// The default hash of a [`MemoryTable`]: fast, seeded at random per table (`foldhash`, the
/// default of `hashbrown`). Not a keyed cryptographic hash: where keys come from untrusted
/// clients and collision flooding is a concern, build the table
/// [`with_hasher`](MemoryTable::with_hasher) and a hardened `BuildHasher` such as
/// `std::collections::hash_map::RandomState`.
#[derive(Clone, Default)]
pub struct FastHash(DefaultHashBuilder);

impl fmt::Debug for FastHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FastHash")
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0.build_hasher())
    }
}

/// The hasher [`FastHash`] builds.
pub struct FastHasher(<DefaultHashBuilder as BuildHasher>::Hasher);

impl fmt::Debug for FastHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FastHasher")
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
    fn write_u8(&mut self, n: u8) {
        self.0.write_u8(n);
    }
    fn write_u16(&mut self, n: u16) {
        self.0.write_u16(n);
    }
    fn write_u32(&mut self, n: u32) {
        self.0.write_u32(n);
    }
    fn write_u64(&mut self, n: u64) {
        self.0.write_u64(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
    }
}

/// One entry: 64 bytes, ids up to [`INLINE`] bytes included, aligned so that an entry is
/// exactly one cache line (a lookup that reaches it costs one memory access, not two).
#[repr(align(64))]
struct Slot {
    /// The id, or for a long id the index of its box in `Shard::long_ids` (first 4 bytes).
    id: [u8; INLINE],
    /// The id's length, or [`LONG`].
    id_len: u8,
    kind: u8,
    flags: u8,
    tenant: u16,
    streams: u16,
    owner: u32,
    learned: u32,
    /// Written by readers, at most once per tick.
    used: AtomicU32,
    /// Neighbours in the owner's list.
    prev: u32,
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// One independently locked part of the table.
///
/// Entries live densely in `slots`; `index` maps key hashes to slot numbers (see
/// [`Index`]: a probe reads one cache line, a hit one more for the slot); each owner's
/// entries form a doubly linked list through `prev`/`next`, so an owner's keys are found in
/// time proportional to their number. Removal swaps the last slot into the hole.
struct Shard {
    index: Index,
    slots: Vec<Slot>,
    /// Parallel to `slots` once any entry had a principal (`tracks_principals`); empty before.
    principals: Vec<u64>,
    tracks_principals: bool,
    long_ids: Vec<Box<[u8]>>,
    long_free: Vec<u32>,
    /// Each owner's first slot.
    heads: HashMap<u32, u32>,
    /// The table-wide counts of the owners and tenants this shard has held entries of, found
    /// here under the shard's lock rather than in the table-wide maps under theirs.
    counts: Counts,
    /// Where the idle sweep goes on.
    cursor: usize,
    /// State of the eviction sampler (xorshift).
    rng: u64,
}

/// The table-wide count of one owner's or one tenant's entries, shared by the table-wide map
/// and by every shard that has held entries of it.
#[derive(Default)]
struct Count(AtomicUsize);

/// Set on a [`Count`] taken out of the table-wide map at zero (its owner's entries were
/// removed): a shard that still holds it must look the owner up afresh.
const RETIRED: usize = 1 << (usize::BITS - 1);

type CountMap<K> = HashMap<K, Arc<Count>>;

/// The most handles a shard keeps on owners' counts, and on tenants' counts: past it, a
/// shard lets go of them all and takes them again as it needs them (a handle is a shortcut,
/// not what the count rests on: an entry's count stays in the table-wide map while it counts
/// any entry). 64 shards keep at most 2 x 64 x 256 handles, about half a MiB.
const HANDLES: usize = 256;

/// A shard's handles on the counts of the owners and tenants it has held entries of (at most
/// [`HANDLES`] of each).
#[derive(Default)]
struct Counts {
    owners: CountMap<u32>,
    tenants: CountMap<u16>,
}

/// A shard alone on its cache lines, so that locking one does not slow its neighbours.
#[repr(align(128))]
struct Padded<T>(T);

/// The default [`SessionTable`]: in memory, sharded, bounded.
///
/// - **Fast**: a lookup hashes the key with a seeded fast hash ([`FastHash`]; pass a hardened
///   `BuildHasher` such as `std::collections::hash_map::RandomState` with
///   [`with_hasher`](MemoryTable::with_hasher)), takes one shard's read lock and allocates
///   nothing. Readers write only the entry's last-use time, and only when it moved by a tick
///   (100 ms). Times are kept in ticks, rounded down, from a year before the first instant
///   the table is given to about 12.6 years after it.
/// - **Lean**: entries are 64 bytes with ids up to 37 bytes inline (every SDK's session id
///   fits), stored densely, indexed by 4-byte slot numbers.
/// - **Bounded**: capacity in total and per tenant, idle expiry, eviction policy: see
///   [`MemoryTableConfig`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use mcp_affinity::{BackendId, TenantId};
/// use mcp_affinity::table::{Insert, Key, KeyKind, MemoryTable, SessionTable};
///
/// let table = MemoryTable::new();
/// let now = Instant::now();
/// let key = Key::new(TenantId::DEFAULT, KeyKind::Session, b"9b1f0c2e").unwrap();
/// let owner = BackendId::new(1, 0);
///
/// assert_eq!(table.insert(&key, owner, None, now), Ok(Insert::Added { evicted: false }));
/// assert_eq!(table.get(&key, now).unwrap().owner, owner);
///
/// // An hour and a bit later, unused and with no open stream, it expires.
/// let later = now + Duration::from_secs(3601);
/// assert_eq!(table.evict_idle(later, 1000).evicted, 1);
/// assert!(table.get(&key, later).is_none());
/// ```
pub struct MemoryTable<S = FastHash> {
    shards: Box<[Padded<RwLock<Shard>>]>,
    shard_mask: usize,
    hasher: S,
    config: MemoryTableConfig,
    /// The instant of tick 0: [`REACH_BACK`] before the first `now` the table was given, or
    /// the instant it was aligned on ([`SessionTable::align_clock`]).
    epoch: OnceLock<Instant>,
    len: AtomicUsize,
    /// Entries of [`KeyKind::Operator`].
    operators: AtomicUsize,
    owners: RwLock<CountMap<u32>>,
    tenants: RwLock<CountMap<u16>>,
    /// The shard the next idle sweep starts with.
    sweep: AtomicUsize,
}

impl MemoryTable {
    /// A table with the default [`MemoryTableConfig`].
    pub fn new() -> Self {
        MemoryTable::with_config(MemoryTableConfig::new())
    }

    /// A table with the given bounds.
    pub fn with_config(config: MemoryTableConfig) -> Self {
        MemoryTable::with_hasher(config, FastHash::default())
    }
}

impl Default for MemoryTable {
    fn default() -> Self {
        MemoryTable::new()
    }
}

impl<S: BuildHasher> MemoryTable<S> {
    /// A table with the given bounds, hashing keys with `hasher`.
    pub fn with_hasher(config: MemoryTableConfig, hasher: S) -> Self {
        let config = MemoryTableConfig {
            shards: config.shards.clamp(1, 1 << 16).next_power_of_two(),
            ..config
        };
        let shards = (0..config.shards)
            .map(|i| {
                Padded(RwLock::new(Shard {
                    index: Index::default(),
                    slots: Vec::new(),
                    principals: Vec::new(),
                    tracks_principals: false,
                    long_ids: Vec::new(),
                    long_free: Vec::new(),
                    heads: HashMap::new(),
                    counts: Counts::default(),
                    cursor: 0,
                    rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
                }))
            })
            .collect();
        MemoryTable {
            shard_mask: config.shards - 1,
            shards,
            hasher,
            config,
            epoch: OnceLock::new(),
            len: AtomicUsize::new(0),
            operators: AtomicUsize::new(0),
            owners: RwLock::new(HashMap::new()),
            tenants: RwLock::new(HashMap::new()),
            sweep: AtomicUsize::new(0),
        }
    }

    /// The table's bounds.
    pub fn config(&self) -> &MemoryTableConfig {
        &self.config
    }

    fn hash(&self, key: &Key<'_>) -> u64 {
        hash_parts(
            &self.hasher,
            key.tenant().get(),
            key.kind().to_u8(),
            key.id_bytes(),
        )
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // The low bits pick the shard; the shard's index keeps the upper 32.
        &self.shards[hash as usize & self.shard_mask].0
    }

    fn tick(&self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_init(|| reach_back(now));
        let since = now.saturating_duration_since(epoch);
        // Integer math on u64 (`as_millis` is u128, and u128 division is slow).
        let ticks = since.as_secs() * 10 + u64::from(since.subsec_millis() / 100);
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    fn entry(&self, shard: &Shard, i: usize) -> Entry {
        let slot = &shard.slots[i];
        let principal =
            (slot.flags & HAS_PRINCIPAL != 0).then(|| Principal::new(shard.principals[i]));
        let epoch = *self
            .epoch
            .get()
            .expect("an entry exists, so time was given");
        Entry::ticked(
            BackendId::from_bits(slot.owner),
            epoch,
            slot.learned,
            slot.used.load(Relaxed),
        )
        .with_principal(principal)
        .with_streams(u32::from(slot.streams))
    }

    /// Counts one entry more (`add`) or one fewer of `key`, through the shard's handle on its
    /// count if it has one, else through the table-wide map; returns the count before.
    ///
    /// A handle is taken, and a count made, only under the map's lock, and
    /// [`remove_owner`](SessionTable::remove_owner) retires a count at zero under the same
    /// lock, atomically with the check: an add through a retired handle sees [`RETIRED`] in the
    /// value it added to, takes it back, and goes to the map. A removal never meets a retired
    /// count: the entry it removes was counted on the shard's handle or, if the shard let go
    /// of its handles since, on the count the map still holds (a count is retired only at
    /// zero).
    fn bump<K: Hash + Eq + Copy>(
        map: &RwLock<CountMap<K>>,
        handles: &mut CountMap<K>,
        key: K,
        add: bool,
    ) -> usize {
        if let Some(count) = handles.get(&key) {
            if !add {
                return count.0.fetch_sub(1, Relaxed);
            }
            let before = count.0.fetch_add(1, Relaxed);
            if before & RETIRED == 0 {
                return before;
            }
            count.0.fetch_sub(1, Relaxed);
            handles.remove(&key);
        }
        let apply = |count: &Arc<Count>| {
            let before = if add {
                count.0.fetch_add(1, Relaxed)
            } else {
                count.0.fetch_sub(1, Relaxed)
            };
            (before, Arc::clone(count))
        };
        // Counted while the lock is held: a count is retired only at zero under the write lock.
        let found = map.read().get(&key).map(apply);
        let (before, count) = found.unwrap_or_else(|| apply(map.write().entry(key).or_default()));
        if handles.len() >= HANDLES {
            handles.clear();
        }
        handles.insert(key, count);
        before
    }

    fn read_count<K: Hash + Eq>(map: &RwLock<CountMap<K>>, key: &K) -> usize {
        map.read().get(key).map_or(0, |c| c.0.load(Relaxed))
    }

    /// Updates the counters for a slot that left the table (`counts`: its shard's).
    fn forget_counts(&self, counts: &mut Counts, slot: &Slot) {
        self.len.fetch_sub(1, Relaxed);
        if slot.kind == OPERATOR {
            self.operators.fetch_sub(1, Relaxed);
        }
        Self::bump(&self.owners, &mut counts.owners, slot.owner, false);
        Self::bump(&self.tenants, &mut counts.tenants, slot.tenant, false);
    }
}

impl<S: BuildHasher> MemoryTable<S> {
    /// The first step of [`remove_owner`](SessionTable::remove_owner): every entry of the
    /// owner `bits`, shard by shard, and each shard's handle on its count.
    fn remove_entries_of(&self, bits: u32) -> usize {
        let mut removed = 0;
        let mut doomed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.0.write();
            doomed.clear();
            let mut i = shard.heads.get(&bits).copied().unwrap_or(NIL);
            while i != NIL {
                doomed.push(i as usize);
                i = shard.slots[i as usize].next;
            }
            // Highest first: a swap-removal then only moves slots this loop is done with.
            doomed.sort_unstable_by(|a, b| b.cmp(a));
            for &i in &doomed {
                let slot = shard.remove_at(&self.hasher, i);
                self.forget_counts(&mut shard.counts, &slot);
            }
            // No entry of the owner is left here: nor is the shard's handle on its count.
            shard.counts.owners.remove(&bits);
            removed += doomed.len();
        }
        removed
    }

    /// The second step: the owner's count leaves the map if it is at zero, retired in the
    /// same step (see `bump`: a shard may have taken a handle on it since the first step).
    fn retire_count_of(&self, bits: u32) {
        let mut owners = self.owners.write();
        let retired = owners.get(&bits).is_some_and(|count| {
            (count.0)
                .compare_exchange(0, RETIRED, Relaxed, Relaxed)
                .is_ok()
        });
        if retired {
            owners.remove(&bits);
        }
    }
}

impl<S: BuildHasher> MemoryTable<S> {
    /// Inserts `key` with `streams` open, or counts `streams` more on it if it exists with
    /// the same owner: one critical section, so nothing can evict it in between.
    fn insert_with_streams(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
        streams: u16,
    ) -> Result<Insert, InsertError> {
        let hash = self.hash(key);
        let tick = self.tick(now);
        let mut shard = self.shard(hash).write();
        if let Some(i) = shard.find(hash, key) {
            let existing = self.entry(&shard, i);
            if streams > 0 && existing.owner == owner {
                let slot = &mut shard.slots[i];
                slot.streams = add_streams(slot.streams, streams);
                slot.used.store(tick, Relaxed);
            }
            return Ok(Insert::Exists(existing));
        }
        // Reserve room first, so that concurrent inserts never overshoot a bound.
        let tenant = key.tenant().get();
        let global_ok = self.len.fetch_add(1, Relaxed) < self.config.capacity;
        let tenant_ok = Self::bump(&self.tenants, &mut shard.counts.tenants, tenant, true)
            < self.config.tenant_capacity;
        let operator = key.kind() == KeyKind::Operator;
        let operator_ok =
            !operator || self.operators.fetch_add(1, Relaxed) < self.config.operator_capacity();
        let mut evicted = false;
        if !(global_ok && tenant_ok && operator_ok) {
            let scope = if !tenant_ok {
                Scope::Tenant
            } else if operator {
                Scope::Operator
            } else {
                Scope::Global
            };
            let only = Only {
                tenant: (!tenant_ok).then_some(tenant),
                operator,
            };
            match shard.lru_victim(only) {
                Some(victim) => {
                    let slot = shard.remove_at(&self.hasher, victim);
                    self.forget_counts(&mut shard.counts, &slot);
                    evicted = true;
                }
                None => {
                    self.len.fetch_sub(1, Relaxed);
                    Self::bump(&self.tenants, &mut shard.counts.tenants, tenant, false);
                    if operator {
                        self.operators.fetch_sub(1, Relaxed);
                    }
                    return Err(InsertError::Full { scope });
                }
            }
        }
        let i = shard.push(hash, key, owner.to_bits(), principal, tick);
        shard.slots[i].streams = streams;
        Self::bump(
            &self.owners,
            &mut shard.counts.owners,
            owner.to_bits(),
            true,
        );
        Ok(Insert::Added { evicted })
    }
}

/// Counts more open streams. At the top of the count it sticks: a session with 65,535 open
/// streams never expires by idleness (it ends by a `DELETE`, a 404 when the router binds
/// principals, or the loss of its owner: removed, down or revoked).
fn add_streams(streams: u16, more: u16) -> u16 {
    streams.saturating_add(more)
}

/// Counts one stream fewer, never below zero, and not down from a stuck top count.
fn close_one(streams: u16) -> u16 {
    if streams == u16::MAX {
        streams
    } else {
        streams.saturating_sub(1)
    }
}

/// Hashes a key's parts the same way for lookups and for rehashing stored slots.
fn hash_parts<S: BuildHasher>(hasher: &S, tenant: u16, kind: u8, id: &[u8]) -> u64 {
    let mut state = hasher.build_hasher();
    state.write_u32((u32::from(tenant) << 8) | u32::from(kind));
    state.write(id);
    state.finish()
}

impl Shard {
    fn id<'a>(&'a self, slot: &'a Slot) -> &'a [u8] {
        if slot.id_len == LONG {
            let at = u32::from_le_bytes(slot.id[..4].try_into().expect("4 bytes"));
            &self.long_ids[at as usize]
        } else {
            &slot.id[..usize::from(slot.id_len)]
        }
    }

    fn slot_hash<S: BuildHasher>(&self, hasher: &S, i: usize) -> u64 {
        let slot = &self.slots[i];
        hash_parts(hasher, slot.tenant, slot.kind, self.id(slot))
    }

    fn find(&self, hash: u64, key: &Key<'_>) -> Option<usize> {
        let (tenant, kind, id) = (key.tenant().get(), key.kind().to_u8(), key.id_bytes());
        self.index
            .find(hash, |i| {
                let slot = &self.slots[i as usize];
                slot.tenant == tenant && slot.kind == kind && self.id(slot) == id
            })
            .map(|i| i as usize)
    }

    /// Appends a slot for `key` and indexes it; returns its number.
    fn push(
        &mut self,
        hash: u64,
        key: &Key<'_>,
        owner: u32,
        principal: Option<Principal>,
        tick: u32,
    ) -> usize {
        let i = self.slots.len();
        let id = key.id_bytes();
        let mut slot = Slot {
            id: [0; INLINE],
            id_len: 0,
            kind: key.kind().to_u8(),
            flags: 0,
            tenant: key.tenant().get(),
            streams: 0,
            owner,
            learned: tick,
            used: AtomicU32::new(tick),
            prev: NIL,
            next: NIL,
        };
        if id.len() <= INLINE {
            slot.id[..id.len()].copy_from_slice(id);
            slot.id_len = id.len() as u8;
        } else {
            let boxed: Box<[u8]> = id.into();
            let at = match self.long_free.pop() {
                Some(at) => {
                    self.long_ids[at as usize] = boxed;
                    at
                }
                None => {
                    self.long_ids.push(boxed);
                    (self.long_ids.len() - 1) as u32
                }
            };
            slot.id[..4].copy_from_slice(&at.to_le_bytes());
            slot.id_len = LONG;
        }
        if principal.is_some() {
            slot.flags |= HAS_PRINCIPAL;
            if !self.tracks_principals {
                self.principals.resize(i, 0);
                self.tracks_principals = true;
            }
        }
        if self.tracks_principals {
            self.principals
                .push(principal.map_or(0, Principal::fingerprint));
        }
        self.slots.push(slot);
        self.link(i);
        self.index.insert(hash, i as u32);
        i
    }

    /// Puts slot `i` at the head of its owner's list.
    fn link(&mut self, i: usize) {
        let owner = self.slots[i].owner;
        let old = self.heads.insert(owner, i as u32).unwrap_or(NIL);
        self.slots[i].prev = NIL;
        self.slots[i].next = old;
        if old != NIL {
            self.slots[old as usize].prev = i as u32;
        }
    }

    /// Takes slot `i` out of its owner's list.
    fn unlink(&mut self, i: usize) {
        let (prev, next, owner) = {
            let slot = &self.slots[i];
            (slot.prev, slot.next, slot.owner)
        };
        if prev == NIL {
            if next == NIL {
                self.heads.remove(&owner);
            } else {
                self.heads.insert(owner, next);
            }
        } else {
            self.slots[prev as usize].next = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        }
    }

    /// Removes slot `i`, moving the last slot into its place; returns the removed slot.
    fn remove_at<S: BuildHasher>(&mut self, hasher: &S, i: usize) -> Slot {
        self.unlink(i);
        let hash = self.slot_hash(hasher, i);
        self.index.remove(hash, i as u32);
        let last = self.slots.len() - 1;
        let removed = self.slots.swap_remove(i);
        if self.tracks_principals {
            self.principals.swap_remove(i);
        }
        if i != last {
            // The former last slot now lives at `i`: re-point its index entry and neighbours.
            let hash = self.slot_hash(hasher, i);
            self.index.repoint(hash, last as u32, i as u32);
            let (prev, next, owner) = {
                let slot = &self.slots[i];
                (slot.prev, slot.next, slot.owner)
            };
            if prev == NIL {
                self.heads.insert(owner, i as u32);
            } else {
                self.slots[prev as usize].next = i as u32;
            }
            if next != NIL {
                self.slots[next as usize].prev = i as u32;
            }
        }
        if removed.id_len == LONG {
            let at = u32::from_le_bytes(removed.id[..4].try_into().expect("4 bytes"));
            self.long_ids[at as usize] = Box::default();
            self.long_free.push(at);
        }
        removed
    }

    /// Looks at up to `budget` slots, each at most once, from the cursor on and around,
    /// removing those `expired` says; returns (examined, removed).
    fn sweep<S: BuildHasher>(
        &mut self,
        hasher: &S,
        budget: usize,
        expired: impl Fn(&Slot) -> bool,
        mut gone: impl FnMut(&mut Counts, &Slot),
    ) -> (usize, usize) {
        let (mut examined, mut removed) = (0, 0);
        let start = self.cursor.min(self.slots.len());
        // First from the cursor to the end. A removal moves the last slot, not yet looked at,
        // into the hole: look at the same position again.
        let mut i = start;
        while i < self.slots.len() && examined < budget {
            examined += 1;
            if expired(&self.slots[i]) {
                let slot = self.remove_at(hasher, i);
                gone(&mut self.counts, &slot);
                removed += 1;
            } else {
                i += 1;
            }
        }
        if examined >= budget {
            self.cursor = i;
            return (examined, removed);
        }
        // Then the positions before the cursor, `[0, end)`. Everything from `end` on was looked
        // at above, so a slot moved from there into a hole is skipped, not looked at twice.
        let (mut i, mut end) = (0, start);
        while i < end && examined < budget {
            examined += 1;
            if expired(&self.slots[i]) {
                let last = self.slots.len() - 1;
                let slot = self.remove_at(hasher, i);
                gone(&mut self.counts, &slot);
                removed += 1;
                if last >= end {
                    i += 1;
                } else {
                    end -= 1;
                }
            } else {
                i += 1;
            }
        }
        self.cursor = i;
        (examined, removed)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: deterministic, no dependency, good enough to sample slots.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The least recently used slot with no open stream among a random sample (of `tenant`
    /// only, if given).
    fn lru_victim(&mut self, only: Only) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let eligible = |slot: &Slot| {
            slot.streams == 0
                && only.tenant.is_none_or(|t| slot.tenant == t)
                && (!only.operator || slot.kind == OPERATOR)
        };
        // Keeps the least recently used eligible slot seen so far.
        let consider = |best: Option<(u32, usize)>, slots: &[Slot], i: usize| {
            let slot = &slots[i];
            let used = slot.used.load(Relaxed);
            match best {
                _ if !eligible(slot) => best,
                Some((u, _)) if u <= used => best,
                _ => Some((used, i)),
            }
        };
        let mut best = None;
        for _ in 0..SAMPLES {
            let i = (self.random() % n as u64) as usize;
            best = consider(best, &self.slots, i);
        }
        if best.is_none() && (only.tenant.is_some() || only.operator) {
            let start = (self.random() % n as u64) as usize;
            for k in 0..n.min(TENANT_SCAN) {
                best = consider(best, &self.slots, (start + k) % n);
            }
        }
        best.map(|(_, i)| i)
    }
}

/// How long before the first instant it is given (or the instant it is aligned on) the
/// table's clock starts: a year, in whole seconds. A key may be learned at an earlier time
/// than the table has seen (a binding cached from a shared store keeps the time it was
/// made): with the clock starting at the first instant, such a key read as learned then,
/// after a loss of its owner's process that condemns it, and was kept while other routers
/// refused it (a split: the tenth review, R10-3). Earlier times read as the start: a
/// binding over a year old escapes a loss dated before the start (one recorded by a router
/// whose clock is that far behind). The clock's `u32` ticks run out about 12.6 years after
/// the first instant.
const REACH_BACK: Duration = Duration::from_secs(366 * 24 * 3600);

/// `from` less [`REACH_BACK`], or as far back as `Instant` goes on this platform, in whole
/// seconds.
fn reach_back(from: Instant) -> Instant {
    let mut back = REACH_BACK.as_secs();
    loop {
        if let Some(start) = from.checked_sub(Duration::from_secs(back)) {
            return start;
        }
        back /= 2;
    }
}

impl<S: BuildHasher + Send + Sync> SessionTable for MemoryTable<S> {
    fn get(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
        let hash = self.hash(key);
        let shard = self.shard(hash).read();
        let i = shard.find(hash, key)?;
        // Only a hit pays for reading the clock value.
        let tick = self.tick(now);
        let used = &shard.slots[i].used;
        if used.load(Relaxed) < tick {
            used.store(tick, Relaxed);
        }
        Some(self.entry(&shard, i))
    }

    fn insert(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Result<Insert, InsertError> {
        self.insert_with_streams(key, owner, principal, now, 0)
    }

    fn insert_streaming(
        &self,
        key: &Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: Instant,
    ) -> Result<Insert, InsertError> {
        self.insert_with_streams(key, owner, principal, now, 1)
    }

    fn set_owner(
        &self,
        key: &Key<'_>,
        expected: BackendId,
        new: BackendId,
        now: Instant,
    ) -> Result<Entry, SetOwnerError> {
        let hash = self.hash(key);
        let tick = self.tick(now);
        let mut shard = self.shard(hash).write();
        let i = shard.find(hash, key).ok_or(SetOwnerError::NotFound)?;
        if shard.slots[i].owner != expected.to_bits() {
            return Err(SetOwnerError::OwnerChanged(self.entry(&shard, i)));
        }
        if expected != new {
            shard.unlink(i);
            shard.slots[i].owner = new.to_bits();
            shard.link(i);
            let handles = &mut shard.counts.owners;
            Self::bump(&self.owners, handles, expected.to_bits(), false);
            Self::bump(&self.owners, handles, new.to_bits(), true);
        }
        shard.slots[i].used.store(tick, Relaxed);
        Ok(self.entry(&shard, i))
    }

    fn remove(&self, key: &Key<'_>, owner: Option<BackendId>) -> Option<Entry> {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).write();
        let i = shard.find(hash, key)?;
        if owner.is_some_and(|o| shard.slots[i].owner != o.to_bits()) {
            return None;
        }
        let entry = self.entry(&shard, i);
        let slot = shard.remove_at(&self.hasher, i);
        self.forget_counts(&mut shard.counts, &slot);
        Some(entry)
    }

    fn open_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
        let hash = self.hash(key);
        let tick = self.tick(now);
        let mut shard = self.shard(hash).write();
        let i = shard.find(hash, key)?;
        let slot = &mut shard.slots[i];
        slot.streams = add_streams(slot.streams, 1);
        slot.used.store(tick, Relaxed);
        Some(self.entry(&shard, i))
    }

    fn close_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
        let hash = self.hash(key);
        let tick = self.tick(now);
        let mut shard = self.shard(hash).write();
        let i = shard.find(hash, key)?;
        let slot = &mut shard.slots[i];
        slot.streams = close_one(slot.streams);
        slot.used.store(tick, Relaxed);
        Some(self.entry(&shard, i))
    }

    fn release_stream(&self, key: &Key<'_>, owner: BackendId, now: Instant) -> Option<Entry> {
        let hash = self.hash(key);
        let tick = self.tick(now);
        let mut shard = self.shard(hash).write();
        let i = shard.find(hash, key)?;
        if shard.slots[i].owner != owner.to_bits() {
            return None;
        }
        let slot = &mut shard.slots[i];
        slot.streams = close_one(slot.streams);
        slot.used.store(tick, Relaxed);
        let entry = self.entry(&shard, i);
        if entry.streams == 0 {
            let slot = shard.remove_at(&self.hasher, i);
            self.forget_counts(&mut shard.counts, &slot);
        }
        Some(entry)
    }

    fn remove_owner(&self, owner: BackendId) -> usize {
        let removed = self.remove_entries_of(owner.to_bits());
        self.retire_count_of(owner.to_bits());
        removed
    }

    fn keys_of(&self, owner: BackendId, max: usize) -> Vec<OwnedKey> {
        let bits = owner.to_bits();
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.0.read();
            let mut i = shard.heads.get(&bits).copied().unwrap_or(NIL);
            while i != NIL && keys.len() < max {
                let slot = &shard.slots[i as usize];
                let kind = KeyKind::from_u8(slot.kind).expect("stored kinds are valid");
                // Stored ids were validated against the bound they were inserted with, which
                // may be above the default: only their bytes are checked again.
                let key =
                    Key::with_max_len(TenantId::new(slot.tenant), kind, shard.id(slot), usize::MAX)
                        .expect("stored ids are valid")
                        .to_owned();
                keys.push(key);
                i = slot.next;
            }
            if keys.len() >= max {
                break;
            }
        }
        keys
    }

    fn align_clock(&self, anchor: Instant) {
        let _ = self.epoch.get_or_init(|| reach_back(anchor));
    }

    fn scan(&self, cursor: &mut u64, max: usize, visit: &mut dyn FnMut(&Key<'_>, &Entry)) -> bool {
        // The cursor is a shard (high half) and, in it, 1 + the number of slots not yet shown
        // (low half; 0: the shard is not begun). Each shard is walked from its last slot down:
        // a removal moves the last slot into the hole, so between two calls an entry can only
        // move from the part already shown into the part still to show (shown twice), never
        // the other way (missed). Entries added meanwhile go after the part still to show.
        let (mut shard_at, mut left) = ((*cursor >> 32) as usize, *cursor as u32 as usize);
        let mut seen = 0;
        while shard_at < self.shards.len() {
            let shard = self.shards[shard_at].0.read();
            let mut i = match left {
                0 => shard.slots.len(),
                left => (left - 1).min(shard.slots.len()),
            };
            while i > 0 {
                if seen >= max {
                    *cursor = (shard_at as u64) << 32 | (i as u64 + 1);
                    return false;
                }
                i -= 1;
                let slot = &shard.slots[i];
                let tenant = TenantId::new(slot.tenant);
                let kind = KeyKind::from_u8(slot.kind);
                let id = shard.id(slot);
                if let Some(Ok(key)) = kind.map(|k| Key::with_max_len(tenant, k, id, usize::MAX)) {
                    visit(&key, &self.entry(&shard, i));
                }
                seen += 1;
            }
            shard_at += 1;
            left = 0;
        }
        *cursor = 0;
        true
    }

    fn evict_idle(&self, now: Instant, max_work: usize) -> Eviction {
        let mut out = Eviction::default();
        let Some(ttl) = self.config.idle_ttl else {
            return out;
        };
        let now = self.tick(now);
        let ttl = u32::try_from(ttl.as_millis().div_ceil(TICK.as_millis())).unwrap_or(u32::MAX);
        let n = self.shards.len();
        let start = self.sweep.load(Relaxed);
        for k in 0..n {
            if out.examined >= max_work {
                self.sweep.store((start + k) % n, Relaxed);
                return out;
            }
            let mut shard = self.shards[(start + k) % n].0.write();
            let (examined, evicted) = shard.sweep(
                &self.hasher,
                max_work - out.examined,
                |slot| slot.streams == 0 && now.saturating_sub(slot.used.load(Relaxed)) >= ttl,
                |counts, slot| self.forget_counts(counts, slot),
            );
            out = Eviction::new(out.examined + examined, out.evicted + evicted);
        }
        self.sweep.store(start, Relaxed);
        out
    }

    fn count_owner(&self, owner: BackendId) -> usize {
        Self::read_count(&self.owners, &owner.to_bits())
    }

    fn count_tenant(&self, tenant: TenantId) -> usize {
        Self::read_count(&self.tenants, &tenant.get())
    }

    fn occupancy(&self) -> Occupancy {
        Occupancy::new(self.len.load(Relaxed), Some(self.config.capacity))
    }

    fn idle_ttl(&self) -> Option<Duration> {
        self.config.idle_ttl
    }
}

impl<S> fmt::Debug for MemoryTable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTable")
            .field("config", &self.config)
            .field("len", &self.len.load(Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
// The tests hold the clock.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::table::KeyKind;

    /// The interleaving an owner's removal races with, in order: its entries removed, then a
    /// key of the owner added and removed again (the shard takes a handle on the count, which
    /// goes back to zero), then the count retired. The next key must count on a fresh count.
    #[test]
    fn a_shards_handle_on_a_retired_count_is_not_counted_on() {
        let table = MemoryTable::with_config(MemoryTableConfig::new().with_shards(1));
        let (owner, now) = (BackendId::new(3, 1), Instant::now());
        let key = |id: &'static str| Key::new(TenantId::DEFAULT, KeyKind::Session, id.as_bytes());
        let add = |id| {
            let added = table.insert(&key(id).unwrap(), owner, None, now);
            assert!(matches!(added, Ok(Insert::Added { .. })), "{id}: {added:?}");
        };
        add("a");

        assert_eq!(table.remove_entries_of(owner.to_bits()), 1);
        add("b");
        table.remove(&key("b").unwrap(), None).unwrap();
        table.retire_count_of(owner.to_bits());
        assert_eq!(table.count_owner(owner), 0);

        add("c");
        assert_eq!(
            table.count_owner(owner),
            1,
            "counted where count_owner reads"
        );
        add("d");
        table.remove(&key("c").unwrap(), None).unwrap();
        assert_eq!(table.count_owner(owner), 1);
        assert_eq!(table.remove_owner(owner), 1);
        assert_eq!(table.count_owner(owner), 0);
    }

    /// A shard with entries of more tenants than it keeps handles for lets go of its handles
    /// and counts on through the map: every count stays exact, and the handles bounded.
    #[test]
    fn a_shard_keeps_at_most_its_bound_of_handles_and_the_counts_stay_exact() {
        let table = MemoryTable::with_config(MemoryTableConfig::new().with_shards(1));
        let (owner, now) = (BackendId::new(0, 0), Instant::now());
        let tenants = HANDLES as u16 * 2 + 3;
        let id = |tenant: u16, i: u16| format!("s-{tenant}-{i}");
        for round in 0..2 {
            for tenant in 0..tenants {
                let id = id(tenant, round);
                let key = Key::new(TenantId::new(tenant), KeyKind::Session, id.as_bytes());
                let added = table.insert(&key.unwrap(), owner, None, now);
                assert!(matches!(added, Ok(Insert::Added { .. })), "{added:?}");
                assert!(table.shards[0].0.read().counts.tenants.len() <= HANDLES);
            }
        }
        // Remove the first round's keys, so that removals too go through dropped handles.
        for tenant in 0..tenants {
            let id = id(tenant, 0);
            let key = Key::new(TenantId::new(tenant), KeyKind::Session, id.as_bytes());
            assert!(table.remove(&key.unwrap(), None).is_some());
        }
        for tenant in 0..tenants {
            assert_eq!(
                table.count_tenant(TenantId::new(tenant)),
                1,
                "tenant {tenant}"
            );
        }
        assert_eq!(table.count_owner(owner), usize::from(tenants));
        assert_eq!(table.occupancy().len, usize::from(tenants));
    }
}
