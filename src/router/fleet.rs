//! Backends, their tenants and states, and placement.
//!
//! Each backend slot publishes a packed atomic word (generation and state flags) and its drain
//! deadline, so that routing a pinned request checks its owner without a lock. Everything else
//! sits behind a read-mostly lock taken by placement and by out-of-band fleet changes; no
//! caller code ever runs under that lock.
//!
//! # States
//!
//! A backend is *ready* (healthy, not draining, weighted above zero: placement may choose it),
//! or it is one or more of:
//!
//! - *draining*: keeps serving its keys, gets nothing new; past a deadline its keys are
//!   revoked;
//! - *unhealthy*: it answers but fails checks (overloaded, slow). It still holds its sessions,
//!   so its keys keep routing to it; it gets nothing new;
//! - *down*: nothing accepts connections at its address, so its in-memory sessions are gone.
//!   Its keys are answered as owner gone at once and purged; when it answers again it is a
//!   new incarnation that inherits no key.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hashbrown::HashMap;
use parking_lot::RwLock;

use super::reject::Reason;
use super::wall::WallClock;
use crate::table::{KeyKind, SessionTable};
use crate::{BackendId, TenantId};

const OCCUPIED: u64 = 1 << 16;
const DRAINING: u64 = 1 << 17;
const UNHEALTHY: u64 = 1 << 18;
/// A draining backend whose deadline passed and whose keys were revoked.
const REVOKED: u64 = 1 << 19;
const DOWN: u64 = 1 << 20;

/// How the router chooses a backend for a request without a known owner.
///
/// Conversation starts (a legacy `initialize`, a legacy SSE connect) and an operator key's
/// first request (or one whose owner is gone) use this policy; keyless stateless calls (2026-07-28 era, non-MCP paths) always use weighted round robin, since they
/// leave no session behind to balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Placement {
    /// The ready backend with the fewest live keys (counting conversations placed on it and
    /// not answered yet, so that a burst of starts spreads); ties go round robin. The default.
    #[default]
    LeastSessions,
    /// Two ready backends picked at random; the one with fewer live keys (and pending starts)
    /// wins.
    PowerOfTwoChoices,
    /// Ready backends in turn, each as often as its weight.
    WeightedRoundRobin,
}

/// What one health check of a backend found (see
/// [`Router::report_health`](super::Router::report_health)).
///
/// `true` and `false` convert to [`Probe::Up`] and [`Probe::Failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Probe {
    /// It answered as expected.
    Up,
    /// It answered but failed the check (an error status, too slow), or the check timed out:
    /// the process may be alive and still hold its sessions.
    Failed,
    /// Nothing accepted the connection (refused, host unreachable): its process is gone, and
    /// its in-memory sessions with it.
    Refused,
}

impl From<bool> for Probe {
    fn from(ok: bool) -> Self {
        if ok { Probe::Up } else { Probe::Failed }
    }
}

/// A backend's health, as the router sees it after the embedder's reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Answers its checks.
    Healthy,
    /// Answers, but failed its recent checks: keeps its sessions, gets nothing new.
    Unhealthy,
    /// Refuses connections: its sessions are gone, and it gets nothing new until it answers
    /// again, as a new incarnation.
    Down,
}

/// A backend to add with [`Router::add`](super::Router::add): its tenant and label, and its
/// fleet-wide name, incarnation and weight.
///
/// The **name** (default: the label, for example the backend's URL) and the **incarnation**
/// (default 0) are what a fleet of routers agrees on: sealed ids name their owner by them (see
/// [`Sealing`](super::Sealing)), so every router of a fleet must give a backend the same name,
/// and a replica that restarts as a new process should come back with a new, higher
/// incarnation (a pod's start time or restart count, from the orchestrator), so that tokens
/// of the old process are refused by every router, not only by those that saw it die.
#[derive(Clone, Debug)]
pub struct NewBackend {
    pub(crate) tenant: TenantId,
    pub(crate) label: Arc<str>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) weight: u32,
    pub(crate) incarnation: u32,
    /// What this router knows was lost of the backend's processes.
    pub(crate) lost: Loss,
}

/// What a router knows was lost of a backend's processes: a few losses, each saying that
/// tokens and bindings of incarnations up to `upto` made before `before` (Unix seconds)
/// belong to a process that died. A newer incarnation's are not judged by a loss: it is not
/// of their process.
///
/// The losses are kept apart, not merged into one with the latest time and the highest
/// incarnation: a loss of incarnation 2 before t1 and one of incarnation 1 before a later t2
/// (a count that started over, then a restart of the lower number) do not say that 2 was
/// lost before t2, and merged they condemned the sessions of a new process numbered 2 made
/// in between (the eighth review, R8-2). Only losses that no other one contains are kept
/// (the higher the incarnation, the earlier the time), at most [`LOSSES`].
///
/// Past that, one is forgotten, and what it alone said is lost: a loss of incarnations up
/// to `u` before `t`, forgotten, leaves those of them above the next lower loss's `upto`
/// judged by the next higher loss (an earlier time), or by none. So the loss of the highest
/// incarnation is always kept (forgetting it, a router took a binding that the routers
/// that kept it refused for live: a split of an operator key, the ninth review's R9-2), and
/// of the others the one whose time is the closest to the next higher one's is forgotten:
/// the shortest stretch of time whose bindings are taken for live. A binding taken for live
/// is forwarded (its backend answers 404) or answered 503 while this router waits for a
/// process it has not seen; a live one is never taken for lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loss {
    /// `(upto, before)`, `upto` ascending and `before` descending; `before == 0` is none.
    points: [(u32, u32); LOSSES],
}

/// The most separate losses a backend keeps (see [`Loss`]).
const LOSSES: usize = 4;

impl Loss {
    /// Whether a token or binding of `incarnation` made at `at` belongs to a lost process.
    pub(crate) fn condemns(self, incarnation: u32, at: u32) -> bool {
        self.points
            .iter()
            .any(|&(upto, before)| incarnation <= upto && at < before)
    }

    /// Adds the loss of `incarnation`'s process before `before`; whether that changed it.
    pub(crate) fn raise(&mut self, before: u32, incarnation: u32) -> bool {
        let known = |&(upto, was): &(u32, u32)| upto >= incarnation && was >= before;
        if before == 0 || self.points.iter().any(known) {
            return false;
        }
        // The losses the new one does not contain, and the new one, in order.
        let mut points = [(0, 0); LOSSES + 1];
        let mut n = 0;
        for &(upto, was) in self.points() {
            if upto > incarnation || was > before {
                points[n] = (upto, was);
                n += 1;
            }
        }
        points[n] = (incarnation, before);
        let points = &mut points[..=n];
        points.sort_unstable();
        if points.len() > LOSSES {
            // Forget the loss, the last (the highest incarnation) aside, whose time is the
            // closest to the next one's (each earlier than the one before).
            let closest = (0..LOSSES)
                .min_by_key(|&k| points[k].1 - points[k + 1].1)
                .expect("LOSSES > 0");
            points.copy_within(closest + 1.., closest);
        }
        let kept = points.len().min(LOSSES);
        let mut raised = [(0, 0); LOSSES];
        raised[..kept].copy_from_slice(&points[..kept]);
        // (The new loss itself may be the one forgotten.)
        std::mem::replace(&mut self.points, raised) != raised
    }

    /// The losses, `(upto, before)`.
    pub(crate) fn points(&self) -> impl Iterator<Item = &(u32, u32)> {
        self.points.iter().filter(|(_, before)| *before > 0)
    }
}

impl NewBackend {
    /// A backend of `tenant` labelled `label` (for example its base URL), weight 1,
    /// incarnation 0, named by its label.
    pub fn new(tenant: TenantId, label: &str) -> Self {
        NewBackend {
            tenant,
            label: label.into(),
            name: None,
            weight: 1,
            incarnation: 0,
            lost: Loss::default(),
        }
    }

    /// Its fleet-wide name (default: the label). Unique within its tenant.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Its weight for weighted round robin (default 1; 0 takes it out of placement).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its incarnation (default 0): a new process of the same replica gets a higher one.
    pub fn incarnation(mut self, incarnation: u32) -> Self {
        self.incarnation = incarnation;
        self
    }

    fn name_or_label(&self) -> &Arc<str> {
        self.name.as_ref().unwrap_or(&self.label)
    }
}

/// A tenant's fleet: its backend slots, in the order they were added, and its own turn
/// counter (tenants do not share turns, or one tenant's traffic would skew another's).
#[derive(Debug, Default)]
struct Tenant {
    slots: Vec<u16>,
    turn: AtomicU64,
}

/// What a fleet operation was given that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// No such backend: never added, removed, or an older generation of its slot.
    #[error("no backend {0}")]
    NotFound(BackendId),
    /// Every backend slot is taken.
    #[error("no free backend slot ({0} in use)")]
    Full(usize),
    /// Another backend of the tenant has that name (this one).
    #[error("backend {0} already has that name")]
    DuplicateName(BackendId),
}

/// A backend as the router sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendInfo {
    /// Its identity (slot and generation).
    pub id: BackendId,
    /// The tenant whose fleet it belongs to.
    pub tenant: TenantId,
    /// The embedder's label (for example its base URL).
    pub label: Arc<str>,
    /// Its fleet-wide name (see [`NewBackend::name`]).
    pub name: Arc<str>,
    /// Its incarnation (see [`NewBackend::incarnation`]).
    pub incarnation: u32,
    /// Its weight for weighted round robin; 0 takes it out of every placement.
    pub weight: u32,
    /// Draining: keeps its keys, gets nothing new.
    pub draining: bool,
    /// When a draining backend's remaining keys are revoked, if set.
    pub drain_deadline: Option<Instant>,
    /// Its keys were revoked at the drain deadline.
    pub revoked: bool,
    /// Its health after the embedder's reports.
    pub health: Health,
    /// Healthy, as last reported by the embedder's health checks (after the flip
    /// thresholds): `health == Health::Healthy`.
    pub healthy: bool,
    /// Keys it owns in the session table.
    pub sessions: usize,
}

impl BackendInfo {
    /// Ready for new conversations: healthy, not draining, and weighted above zero.
    pub fn ready(&self) -> bool {
        self.healthy && !self.draining && self.weight > 0
    }
}

/// Whether the owner of a key can still serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerStatus {
    /// Ready, draining before its deadline, or unhealthy: it holds the state, forward.
    Live,
    /// Removed, or another generation.
    Gone,
    /// Draining past its deadline.
    Revoked,
    /// Refusing connections: its sessions died with its process.
    Down,
}

impl OwnerStatus {
    /// Why a request for a key of `kind` owned by a backend in this state is refused; `None`
    /// when the owner is live.
    pub(crate) fn refusal(self, kind: KeyKind) -> Option<Reason> {
        match self {
            OwnerStatus::Live => None,
            OwnerStatus::Gone => Some(Reason::OwnerGone(kind)),
            OwnerStatus::Revoked => Some(Reason::OwnerRevoked(kind)),
            OwnerStatus::Down => Some(Reason::OwnerDown(kind)),
        }
    }
}

#[derive(Debug)]
struct Meta {
    /// Changes whenever the slot's keys stop being valid (re-added, removed, down, revoked):
    /// an exchange speaks only for the term it was routed in.
    term: u32,
    tenant: TenantId,
    label: Arc<str>,
    name: Arc<str>,
    /// The name's fingerprint: how sealed tokens name this backend.
    owner: u64,
    incarnation: u32,
    /// The processes this router knows died.
    lost: Loss,
    weight: u32,
    generation: u16,
    occupied: bool,
    draining: bool,
    deadline: Option<Instant>,
    revoked: bool,
    health: Health,
    /// Consecutive health results of kind `streak_of` that would change `health`.
    streak: u32,
    streak_of: Option<Probe>,
    /// Down, and the keys of its lost incarnation are not purged yet.
    purge_pending: bool,
    /// While down: when this router saw it go down, and the incarnation that did. A token or
    /// binding of a newer incarnation, or dated more than the clock skew after that, was
    /// surely made after the loss (by a router that has seen the backend's new process).
    down_since: Option<(Instant, u32)>,
}

impl Meta {
    fn identity(&self) -> Identity {
        Identity {
            tenant: self.tenant,
            owner: self.owner,
            incarnation: self.incarnation,
        }
    }

    /// Its losses as records (see [`Fleet::lost_records`]): each keyed by the newest
    /// incarnation it covers, the current one at the most.
    fn lost_records(&self) -> impl Iterator<Item = (Identity, u32)> + '_ {
        self.lost.points().map(|&(upto, before)| {
            let identity = Identity {
                incarnation: upto.min(self.incarnation),
                ..self.identity()
            };
            (identity, before)
        })
    }

    /// Ready for new conversations: present, healthy, not draining, weighted above zero.
    fn ready(&self) -> bool {
        self.occupied && !self.draining && self.health == Health::Healthy && self.weight > 0
    }
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Meta>,
    free: Vec<u16>,
    tenants: HashMap<TenantId, Tenant>,
    /// Live backends by tenant and name fingerprint.
    names: HashMap<(TenantId, u64), u16>,
    /// Names of backends removed lately, when, their incarnation, and what this router knew
    /// was lost of their processes: their tokens are answered as gone, not as unknown, and a
    /// re-add inherits the losses (at most [`REMOVED_NAMES`], the oldest forgotten first).
    removed: HashMap<(TenantId, u64), (Instant, u32, Loss)>,
}

/// The most removed backends' names a fleet remembers.
const REMOVED_NAMES: usize = 4096;

/// What a sealed token or a store binding says of its owner's process: its incarnation, and
/// the Unix second it was made (sealed or bound).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim {
    pub(crate) incarnation: u32,
    pub(crate) made: u32,
}

impl Claim {
    /// Made for a process this router knows is gone: an older incarnation than `current`, or
    /// one of `loss` (as new as the incarnation lost, whatever the current one: a replica's
    /// count may start over).
    pub(crate) fn lost(self, current: u32, loss: Loss) -> bool {
        self.incarnation < current || loss.condemns(self.incarnation, self.made)
    }

    /// Surely not of the process that ran as incarnation `then` at `at` (when this router saw
    /// it removed or go down): of a newer incarnation, or made more than `skew` after `at`,
    /// read on `clock`.
    pub(crate) fn after(self, (at, then): (Instant, u32), clock: &WallClock, skew: u32) -> bool {
        self.incarnation > then || self.made > clock.unix(at).saturating_add(skew)
    }
}

/// A backend as the fleet of routers names it: its tenant, its name's fingerprint, and the
/// incarnation of its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) tenant: TenantId,
    pub(crate) owner: u64,
    pub(crate) incarnation: u32,
}

/// Who a sealed token's owner is, as this router knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "seal"), allow(dead_code))]
pub(crate) enum Named {
    /// A backend of the tenant: its id, incarnation, and the Unix second before which its
    /// tokens belong to a lost incarnation.
    Backend {
        id: BackendId,
        incarnation: u32,
        lost: Loss,
        down_since: Option<(Instant, u32)>,
    },
    /// A backend of that name was removed: when, and the incarnation it was.
    Removed { at: Instant, incarnation: u32 },
    /// No backend of that name, ever (to this router's knowledge).
    Unknown,
}

impl State {
    /// `tenant`'s ready backends (healthy, not draining, weighted above zero), each with its
    /// rank from this turn's start (so that ties take turns), and the turn; `None` if the
    /// tenant has no backend. Under the lock the metadata is current: the hot words are for
    /// lock-free readers.
    fn ready_in(
        &self,
        tenant: TenantId,
    ) -> Option<(impl Iterator<Item = Candidate> + Clone + '_, u64)> {
        let fleet = self.tenants.get(&tenant).filter(|f| !f.slots.is_empty())?;
        let turn = fleet.turn.fetch_add(1, Ordering::Relaxed);
        let n = fleet.slots.len();
        let start = (turn % n as u64) as usize;
        let ready = fleet
            .slots
            .iter()
            .enumerate()
            .filter_map(move |(i, &slot)| {
                let meta = &self.slots[usize::from(slot)];
                meta.ready().then(|| Candidate {
                    rank: (i + n - start) % n,
                    id: BackendId::new(slot, meta.generation),
                    weight: meta.weight,
                })
            });
        Some((ready, turn))
    }

    /// The metadata of `id` if it is the current generation of its slot.
    fn live(&self, id: BackendId) -> Option<&Meta> {
        self.slots
            .get(usize::from(id.slot()))
            .filter(|m| m.occupied && m.generation == id.generation())
    }

    /// The metadata of `id` if it is the current generation of its slot.
    fn live_mut(&mut self, id: BackendId) -> Result<&mut Meta, FleetError> {
        self.slots
            .get_mut(usize::from(id.slot()))
            .filter(|m| m.occupied && m.generation == id.generation())
            .ok_or(FleetError::NotFound(id))
    }
}

/// Per slot: conversations placed there whose answer has not come yet, tagged with the
/// generation they count for (bits 48..64; the count is bits 0..48), so that a start placed
/// on an older generation never counts against, or is released from, a newer one.
type PendingCounters = Arc<[AtomicU64]>;

/// A conversation placed on a backend and not answered yet: counted in the backend's load
/// while it lives, so that a burst of starts does not herd onto one backend. Released when
/// dropped (the exchange was answered, ended, or dropped by an embedder that forgot it).
pub(crate) struct PendingStart {
    counters: PendingCounters,
    id: BackendId,
}

impl Drop for PendingStart {
    fn drop(&mut self) {
        let tag = u64::from(self.id.generation()) << 48;
        let counter = &self.counters[usize::from(self.id.slot())];
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            (word >> 48 << 48 == tag && word & COUNT_MASK > 0).then(|| word - 1)
        });
    }
}

impl std::fmt::Debug for PendingStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingStart({})", self.id)
    }
}

const COUNT_MASK: u64 = (1 << 48) - 1;

/// What a health report changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reported {
    /// Its health before the report.
    pub(crate) was: Health,
    pub(crate) health: Health,
    /// The backend was declared down by this report.
    pub(crate) went_down: bool,
    /// The backend, down, answered enough checks to come back (see [`Fleet::report`]).
    pub(crate) comes_back: bool,
    /// Its term after the report.
    pub(crate) term: u32,
}

/// The backends of every tenant.
#[derive(Debug)]
pub(crate) struct Fleet {
    /// Per slot: generation (low 16 bits), state flags (bits 16 to 20) and term (high 32
    /// bits), as [`publish`](Fleet::publish) writes them.
    hot: Box<[AtomicU64]>,
    /// Per slot: the drain deadline in milliseconds since `epoch`, plus one (0: none).
    deadlines: Box<[AtomicU64]>,
    pending: PendingCounters,
    state: RwLock<State>,
    epoch: OnceLock<Instant>,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl Fleet {
    /// The most slots a fleet holds: slot numbers are 16-bit, and the last one is reserved
    /// (see [`BackendId::CONTESTED`]).
    pub(crate) const MAX_SLOTS: usize = (1 << 16) - 1;

    pub(crate) fn new(max_backends: usize, unhealthy_after: u32, healthy_after: u32) -> Self {
        let max = max_backends.clamp(1, Self::MAX_SLOTS);
        Fleet {
            hot: (0..max).map(|_| AtomicU64::new(0)).collect(),
            deadlines: (0..max).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..max).map(|_| AtomicU64::new(0)).collect(),
            state: RwLock::new(State::default()),
            epoch: OnceLock::new(),
            unhealthy_after: unhealthy_after.max(1),
            healthy_after: healthy_after.max(1),
        }
    }

    /// Milliseconds from the epoch to `at`, saturating (a deadline centuries away is simply
    /// never reached).
    fn millis(&self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| at);
        let since = at.saturating_duration_since(epoch);
        since
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(since.subsec_millis()))
    }

    fn publish(&self, slot: u16, meta: &Meta) {
        let mut word = u64::from(meta.generation) | u64::from(meta.term) << 32;
        for (set, flag) in [
            (meta.occupied, OCCUPIED),
            (meta.draining, DRAINING),
            (meta.health != Health::Healthy, UNHEALTHY),
            (meta.revoked, REVOKED),
            (meta.health == Health::Down, DOWN),
        ] {
            if set {
                word |= flag;
            }
        }
        // Milliseconds since the epoch (saturating: no wrap in any uptime or any deadline),
        // plus one so that zero means "no deadline". Stored before the flags, which readers
        // load first.
        let deadline = meta
            .deadline
            .map_or(0, |d| self.millis(d).saturating_add(1));
        self.deadlines[usize::from(slot)].store(deadline, Ordering::Release);
        self.hot[usize::from(slot)].store(word, Ordering::Release);
    }

    /// Whether `owner` can still serve its keys at `now`. Lock-free.
    pub(crate) fn owner_status(&self, owner: BackendId, now: Instant) -> OwnerStatus {
        self.owner_state(owner, now).0
    }

    /// [`owner_status`](Fleet::owner_status), and the owner's term (read in one load). Lock-free.
    pub(crate) fn owner_state(&self, owner: BackendId, now: Instant) -> (OwnerStatus, u32) {
        let Some(hot) = self.hot.get(usize::from(owner.slot())) else {
            return (OwnerStatus::Gone, 0);
        };
        let word = hot.load(Ordering::Acquire);
        let term = (word >> 32) as u32;
        if word & OCCUPIED == 0 || word as u16 != owner.generation() {
            return (OwnerStatus::Gone, term);
        }
        if word & DOWN != 0 {
            return (OwnerStatus::Down, term);
        }
        if word & REVOKED != 0 {
            return (OwnerStatus::Revoked, term);
        }
        if word & DRAINING != 0 {
            let deadline = self.deadlines[usize::from(owner.slot())].load(Ordering::Acquire);
            if deadline != 0 && self.millis(now).saturating_add(1) >= deadline {
                return (OwnerStatus::Revoked, term);
            }
        }
        (OwnerStatus::Live, term)
    }

    /// Whether `owner` serves its keys in `term`: live, and its keys not invalidated since.
    pub(crate) fn live_in(&self, owner: BackendId, term: u32, now: Instant) -> bool {
        self.owner_state(owner, now) == (OwnerStatus::Live, term)
    }

    /// The current term of `id`'s slot.
    pub(crate) fn term(&self, id: BackendId) -> u32 {
        self.hot
            .get(usize::from(id.slot()))
            .map_or(0, |hot| (hot.load(Ordering::Acquire) >> 32) as u32)
    }

    /// Whether `id` is a ready backend (as placement means it) of `tenant`'s fleet.
    pub(crate) fn is_ready_in(&self, id: BackendId, tenant: TenantId) -> bool {
        let state = self.state.read();
        state.slots.get(usize::from(id.slot())).is_some_and(|meta| {
            meta.ready() && meta.generation == id.generation() && meta.tenant == tenant
        })
    }

    /// Adds a backend. `purge` is called with the new id before it is published: a slot's
    /// generation wraps after 65,536 re-adds, and keys an old generation left behind must be
    /// gone before the same id names a new backend.
    pub(crate) fn add(
        &self,
        backend: NewBackend,
        purge: impl FnOnce(BackendId),
    ) -> Result<BackendId, FleetError> {
        let mut state = self.state.write();
        let name = backend.name_or_label().clone();
        let owner = crate::backend::fnv1a(name.as_bytes());
        let tenant = backend.tenant;
        if let Some(&slot) = state.names.get(&(tenant, owner)) {
            let generation = state.slots[usize::from(slot)].generation;
            return Err(FleetError::DuplicateName(BackendId::new(slot, generation)));
        }
        let fresh = |generation, term| Meta {
            term,
            tenant,
            label: backend.label,
            name,
            owner,
            incarnation: backend.incarnation,
            lost: backend.lost,
            weight: backend.weight,
            generation,
            occupied: true,
            draining: false,
            deadline: None,
            revoked: false,
            health: Health::Healthy,
            streak: 0,
            streak_of: None,
            purge_pending: false,
            down_since: None,
        };
        let slot = match state.free.pop() {
            Some(slot) => {
                // The slot's next generation: a new owner that inherits nothing.
                let meta = &mut state.slots[usize::from(slot)];
                *meta = fresh(meta.generation.wrapping_add(1), meta.term.wrapping_add(1));
                slot
            }
            None => {
                if state.slots.len() >= self.hot.len() {
                    return Err(FleetError::Full(state.slots.len()));
                }
                state.slots.push(fresh(0, 0));
                (state.slots.len() - 1) as u16
            }
        };
        let id = BackendId::new(slot, state.slots[usize::from(slot)].generation);
        purge(id);
        state.tenants.entry(tenant).or_default().slots.push(slot);
        state.names.insert((tenant, owner), slot);
        state.removed.remove(&(tenant, owner));
        self.pending[usize::from(slot)].store(u64::from(id.generation()) << 48, Ordering::Relaxed);
        self.publish(slot, &state.slots[usize::from(slot)]);
        Ok(id)
    }

    /// Applies `change` to a live backend and publishes its new state.
    fn update<R>(
        &self,
        id: BackendId,
        change: impl FnOnce(&mut Meta) -> R,
    ) -> Result<R, FleetError> {
        let mut state = self.state.write();
        let meta = state.live_mut(id)?;
        let out = change(meta);
        self.publish(id.slot(), meta);
        Ok(out)
    }

    /// A live backend as it was added (for a restart).
    pub(crate) fn describe(&self, id: BackendId) -> Result<NewBackend, FleetError> {
        let state = self.state.read();
        state
            .live(id)
            .map(|m| NewBackend {
                tenant: m.tenant,
                label: m.label.clone(),
                name: Some(m.name.clone()),
                weight: m.weight,
                incarnation: m.incarnation,
                lost: m.lost,
            })
            .ok_or(FleetError::NotFound(id))
    }

    /// The backend a sealed token names.
    #[cfg_attr(not(feature = "seal"), allow(dead_code))]
    pub(crate) fn named(&self, tenant: TenantId, owner: u64) -> Named {
        let state = self.state.read();
        match state.names.get(&(tenant, owner)) {
            Some(&slot) => {
                let meta = &state.slots[usize::from(slot)];
                Named::Backend {
                    id: BackendId::new(slot, meta.generation),
                    incarnation: meta.incarnation,
                    lost: meta.lost,
                    down_since: meta.down_since,
                }
            }
            None => match state.removed.get(&(tenant, owner)) {
                Some(&(at, incarnation, _)) => Named::Removed { at, incarnation },
                None => Named::Unknown,
            },
        }
    }

    /// The tenant and name fingerprint of every backend.
    pub(crate) fn identities(&self) -> Vec<Identity> {
        let state = self.state.read();
        state
            .names
            .values()
            .map(|&slot| state.slots[usize::from(slot)].identity())
            .collect()
    }

    /// The tenant and name fingerprint of a live backend.
    pub(crate) fn identity(&self, id: BackendId) -> Option<Identity> {
        self.state.read().live(id).map(Meta::identity)
    }

    /// Another router recorded that the backend `lost` names lost its process of that
    /// incarnation: tokens and bindings of it from before `before` (Unix seconds) are refused
    /// here too, unless this router knows a newer incarnation (whose sessions the record
    /// does not speak of). Returns the backend if that raised what this router knew.
    pub(crate) fn raise_lost_before(&self, lost: Identity, before: u32) -> Option<BackendId> {
        let mut state = self.state.write();
        let slot = *state.names.get(&(lost.tenant, lost.owner))?;
        let meta = &mut state.slots[usize::from(slot)];
        if meta.incarnation > lost.incarnation || !meta.lost.raise(before, lost.incarnation) {
            return None;
        }
        Some(BackendId::new(slot, meta.generation))
    }

    /// Every loss of every backend (see [`Loss`]), named with the newest incarnation it
    /// covers, and the Unix second before which its lost processes' tokens and bindings are
    /// refused.
    ///
    /// A reader takes a record for a loss of the incarnation it is keyed by, so the key must
    /// not name a newer incarnation than the loss covers: a loss of incarnation 0 keyed by
    /// the current 1 would condemn the running process's bindings made before it (the
    /// eighth review, R8-1). Routers that run a newer incarnation judge older bindings by
    /// number and need no record. Only a count that started over (`upto` above the current
    /// number) is keyed by the current incarnation, as routers poll it (R7-2): that loss
    /// covers the current number already.
    pub(crate) fn lost_records(&self) -> Vec<(Identity, u32)> {
        let state = self.state.read();
        state
            .slots
            .iter()
            .filter(|m| m.occupied)
            .flat_map(Meta::lost_records)
            .collect()
    }

    /// The losses of `id` that cover its current incarnation, keyed by it (as
    /// [`lost_records`](Fleet::lost_records) keys them): what a router running that number
    /// polls.
    pub(crate) fn current_lost_records(&self, id: BackendId) -> Vec<(Identity, u32)> {
        let state = self.state.read();
        state.live(id).map_or_else(Vec::new, |m| {
            m.lost_records()
                .filter(|(identity, _)| identity.incarnation == m.incarnation)
                .collect()
        })
    }

    /// Whether this router's losses condemn a token or binding of `id`'s current incarnation
    /// made at `made` (Unix seconds): a key learned then is of a lost process.
    pub(crate) fn condemns(&self, id: BackendId, made: u32) -> bool {
        let state = self.state.read();
        state
            .live(id)
            .is_some_and(|m| m.lost.condemns(m.incarnation, made))
    }

    /// The name fingerprint and incarnation a backend seals its tokens with.
    #[cfg_attr(not(feature = "seal"), allow(dead_code))]
    pub(crate) fn sealing_identity(&self, id: BackendId) -> Option<(u64, u32)> {
        let state = self.state.read();
        state.live(id).map(|m| (m.owner, m.incarnation))
    }

    /// The backend runs as `incarnation` now (whether that changed it). A higher one refuses
    /// the older incarnations'
    /// tokens by their number; a lower one (a replica whose count started over) also refuses
    /// those sealed before `lost_before` (Unix seconds), whatever their number.
    pub(crate) fn set_incarnation(
        &self,
        id: BackendId,
        incarnation: u32,
        lost_before: u32,
    ) -> Result<bool, FleetError> {
        self.update(id, |meta| {
            if incarnation < meta.incarnation {
                meta.lost.raise(lost_before, meta.incarnation);
            }
            std::mem::replace(&mut meta.incarnation, incarnation) != incarnation
        })
    }

    /// When a backend of `backend`'s tenant and name was removed, if lately (see
    /// [`REMOVED_NAMES`]), its incarnation, and the losses it knew.
    pub(crate) fn removed(&self, backend: &NewBackend) -> Option<(Instant, u32, Loss)> {
        let owner = crate::backend::fnv1a(backend.name_or_label().as_bytes());
        self.state
            .read()
            .removed
            .get(&(backend.tenant, owner))
            .copied()
    }

    pub(crate) fn remove(&self, id: BackendId, now: Instant) -> Result<(), FleetError> {
        let mut state = self.state.write();
        let meta = state.live_mut(id)?;
        meta.occupied = false;
        meta.term = meta.term.wrapping_add(1);
        let (tenant, owner, incarnation, lost) =
            (meta.tenant, meta.owner, meta.incarnation, meta.lost);
        self.publish(id.slot(), meta);
        state.free.push(id.slot());
        if let Some(fleet) = state.tenants.get_mut(&tenant) {
            fleet.slots.retain(|&s| s != id.slot());
        }
        state.names.remove(&(tenant, owner));
        if state.removed.len() >= REMOVED_NAMES {
            let oldest = state
                .removed
                .iter()
                .min_by_key(|(_, (at, _, _))| *at)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                state.removed.remove(&oldest);
            }
        }
        state
            .removed
            .insert((tenant, owner), (now, incarnation, lost));
        Ok(())
    }

    pub(crate) fn drain(
        &self,
        id: BackendId,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), FleetError> {
        // Deadlines are kept relative to an epoch that must be a "now", never a deadline.
        self.epoch.get_or_init(|| now);
        self.update(id, |meta| {
            meta.draining = true;
            meta.deadline = deadline;
        })
    }

    pub(crate) fn undrain(&self, id: BackendId) -> Result<(), FleetError> {
        self.update(id, |meta| {
            meta.draining = false;
            meta.deadline = None;
            meta.revoked = false;
        })
    }

    pub(crate) fn set_weight(&self, id: BackendId, weight: u32) -> Result<(), FleetError> {
        self.update(id, |meta| meta.weight = weight)
    }

    /// Records one health check result. Health changes after enough consecutive results of
    /// one kind: `unhealthy_after` failed checks make a healthy backend unhealthy,
    /// `unhealthy_after` refused connections make any backend down, `healthy_after` good
    /// checks make it healthy again. A down backend that comes back is a new incarnation: it
    /// stays down here and [`Reported::comes_back`] says so; the caller purges whatever keys
    /// its lost incarnation left, outside the fleet lock, then calls
    /// [`finish_comeback`](Fleet::finish_comeback).
    pub(crate) fn report(
        &self,
        id: BackendId,
        probe: Probe,
        lost_before: u32,
        now: Instant,
    ) -> Result<Reported, FleetError> {
        let (unhealthy_after, healthy_after) = (self.unhealthy_after, self.healthy_after);
        self.update(id, |meta| {
            let next = match (meta.health, probe) {
                (Health::Healthy, Probe::Up) => None,
                (Health::Down, Probe::Refused) => None,
                (_, Probe::Up) => Some((Health::Healthy, healthy_after)),
                (_, Probe::Refused) => Some((Health::Down, unhealthy_after)),
                (Health::Healthy, Probe::Failed) => Some((Health::Unhealthy, unhealthy_after)),
                // A failed check changes nothing for an unhealthy or down backend, and breaks
                // a down backend's run of good checks.
                (_, Probe::Failed) => None,
            };
            let before = meta.health;
            let mut comes_back = false;
            match next {
                None => {
                    meta.streak = 0;
                    meta.streak_of = None;
                }
                Some((health, needed)) => {
                    if meta.streak_of != Some(probe) {
                        meta.streak = 0;
                        meta.streak_of = Some(probe);
                    }
                    meta.streak = meta.streak.saturating_add(1);
                    if meta.streak >= needed {
                        if before == Health::Down {
                            // Healthy once the lost incarnation's keys are gone.
                            comes_back = true;
                        } else {
                            if health == Health::Down {
                                meta.term = meta.term.wrapping_add(1);
                                meta.purge_pending = true;
                                meta.lost.raise(lost_before, meta.incarnation);
                                meta.down_since = Some((now, meta.incarnation));
                            }
                            meta.health = health;
                            meta.streak = 0;
                            meta.streak_of = None;
                        }
                    }
                }
            }
            Reported {
                was: before,
                health: meta.health,
                went_down: before != Health::Down && meta.health == Health::Down,
                comes_back,
                term: meta.term,
            }
        })
    }

    /// A down backend whose lost incarnation's keys were purged comes back healthy, if it is
    /// still down in `term`.
    pub(crate) fn finish_comeback(&self, id: BackendId, term: u32) -> Result<Health, FleetError> {
        self.update(id, |meta| {
            if meta.health == Health::Down && meta.term == term {
                meta.health = Health::Healthy;
                meta.purge_pending = false;
                meta.down_since = None;
                meta.streak = 0;
                meta.streak_of = None;
            }
            meta.health
        })
    }

    /// Declares a backend down at once (a request's connection was refused); tokens sealed
    /// before `lost_before` (Unix seconds) belong to its lost incarnation. Returns whether it
    /// was up until now.
    pub(crate) fn mark_down(
        &self,
        id: BackendId,
        term: u32,
        lost_before: u32,
        now: Instant,
    ) -> Result<bool, FleetError> {
        self.update(id, |meta| {
            // A report from an exchange of an older term speaks for a process long gone.
            if meta.term != term {
                return false;
            }
            let was_up = meta.health != Health::Down;
            if was_up {
                meta.down_since = Some((now, meta.incarnation));
            }
            meta.term = meta.term.wrapping_add(1);
            meta.lost.raise(lost_before, meta.incarnation);
            meta.health = Health::Down;
            meta.streak = 0;
            meta.streak_of = None;
            meta.purge_pending = true;
            was_up
        })
    }

    /// The down backends whose lost incarnation's keys are yet to be purged (marked done).
    /// The caller purges them outside the fleet lock; while down, no key can be learned for
    /// them, and the router's purge lock keeps a comeback from interleaving.
    pub(crate) fn take_down_purges(&self) -> Vec<BackendId> {
        let mut state = self.state.write();
        let mut due = Vec::new();
        for (slot, meta) in state.slots.iter_mut().enumerate() {
            if meta.occupied && meta.health == Health::Down && meta.purge_pending {
                meta.purge_pending = false;
                due.push(BackendId::new(slot as u16, meta.generation));
            }
        }
        due
    }

    /// Draining backends whose deadline passed and whose keys are not yet revoked; marks them
    /// revoked.
    pub(crate) fn take_due_revocations(&self, now: Instant) -> Vec<BackendId> {
        let mut due = Vec::new();
        let mut state = self.state.write();
        for (slot, meta) in state.slots.iter_mut().enumerate() {
            let passed = meta.deadline.is_some_and(|d| now >= d);
            if meta.occupied && meta.draining && passed && !meta.revoked {
                meta.revoked = true;
                meta.term = meta.term.wrapping_add(1);
                self.publish(slot as u16, meta);
                due.push(BackendId::new(slot as u16, meta.generation));
            }
        }
        due
    }

    /// The label of `id`, if it is the current generation of its slot.
    pub(crate) fn label(&self, id: BackendId) -> Option<Arc<str>> {
        let state = self.state.read();
        let meta = state.slots.get(usize::from(id.slot()))?;
        (meta.occupied && meta.generation == id.generation()).then(|| meta.label.clone())
    }

    pub(crate) fn infos(&self, table: &dyn SessionTable) -> Vec<BackendInfo> {
        let state = self.state.read();
        state
            .slots
            .iter()
            .enumerate()
            .filter(|(_, meta)| meta.occupied)
            .map(|(slot, meta)| {
                let id = BackendId::new(slot as u16, meta.generation);
                BackendInfo {
                    id,
                    tenant: meta.tenant,
                    label: meta.label.clone(),
                    name: meta.name.clone(),
                    incarnation: meta.incarnation,
                    weight: meta.weight,
                    draining: meta.draining,
                    drain_deadline: meta.deadline,
                    revoked: meta.revoked,
                    health: meta.health,
                    healthy: meta.health == Health::Healthy,
                    sessions: table.count_owner(id),
                }
            })
            .collect()
    }

    /// Counts a conversation placed on `id` and not answered yet, until the returned guard is
    /// dropped.
    pub(crate) fn start_pending(&self, id: BackendId) -> Option<PendingStart> {
        let counter = self.pending.get(usize::from(id.slot()))?;
        let tag = u64::from(id.generation()) << 48;
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                (word >> 48 << 48 == tag).then(|| word + 1)
            })
            .ok()?;
        Some(PendingStart {
            counters: self.pending.clone(),
            id,
        })
    }

    /// Live keys plus conversations placed and not answered yet: the load balancing looks at.
    fn load(&self, table: &dyn SessionTable, id: BackendId) -> usize {
        let word = self.pending[usize::from(id.slot())].load(Ordering::Relaxed);
        let pending = if word >> 48 == u64::from(id.generation()) {
            word & COUNT_MASK
        } else {
            0
        };
        table.count_owner(id) + pending as usize
    }

    /// The policy's choice among `tenant`'s ready backends; `None` if none is ready. Takes the
    /// fleet lock only for the choice, and allocates nothing (but for two choices).
    pub(crate) fn pick(
        &self,
        tenant: TenantId,
        policy: Placement,
        table: &dyn SessionTable,
    ) -> Option<BackendId> {
        let state = self.state.read();
        let (candidates, turn) = state.ready_in(tenant)?;
        let load = |id| self.load(table, id);
        match policy {
            Placement::WeightedRoundRobin => weighted_turn(candidates, turn),
            Placement::LeastSessions => least_loaded(candidates, load),
            Placement::PowerOfTwoChoices => two_choices(candidates, turn, load),
        }
    }

    /// Every ready backend of `tenant`, in the order the policy prefers them: for a caller
    /// whose first choice was vetoed. One pass and one sort: O(n log n) in the fleet's size.
    pub(crate) fn ranked(
        &self,
        tenant: TenantId,
        policy: Placement,
        table: &dyn SessionTable,
    ) -> Vec<BackendId> {
        let state = self.state.read();
        let Some((candidates, turn)) = state.ready_in(tenant) else {
            return Vec::new();
        };
        let mut all: Vec<Candidate> = candidates.collect();
        drop(state);
        match policy {
            Placement::WeightedRoundRobin => {
                // From this turn's weighted choice on, in the tenant's order.
                let first = weighted_turn(all.iter().copied(), turn);
                let at = all.iter().position(|c| Some(c.id) == first).unwrap_or(0);
                all.rotate_left(at);
                all.into_iter().map(|c| c.id).collect()
            }
            Placement::LeastSessions | Placement::PowerOfTwoChoices => {
                let mut loaded: Vec<_> = all
                    .iter()
                    .map(|c| (self.load(table, c.id), c.rank, c.id))
                    .collect();
                loaded.sort_unstable();
                loaded.into_iter().map(|(_, _, id)| id).collect()
            }
        }
    }
}

/// A ready backend offered to a placement policy.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// Its position in the tenant's list, counted from this turn's start (for ties).
    rank: usize,
    id: BackendId,
    weight: u32,
}

/// Weighted round robin: turn `turn` lands in the weight range of one candidate.
fn weighted_turn(
    candidates: impl Iterator<Item = Candidate> + Clone,
    turn: u64,
) -> Option<BackendId> {
    let total: u64 = candidates.clone().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = turn % total;
    for c in candidates {
        let weight = u64::from(c.weight);
        if at < weight {
            return Some(c.id);
        }
        at -= weight;
    }
    None
}

/// The least loaded candidate; among equals, the first from this turn's start.
fn least_loaded(
    candidates: impl Iterator<Item = Candidate>,
    load: impl Fn(BackendId) -> usize,
) -> Option<BackendId> {
    candidates
        .map(|c| (load(c.id), c.rank, c.id))
        .min()
        .map(|(_, _, id)| id)
}

/// Two pseudo-random candidates; the less loaded one. (Walks the candidates instead of
/// collecting them: a placement allocates nothing.)
fn two_choices(
    candidates: impl Iterator<Item = Candidate> + Clone,
    turn: u64,
    load: impl Fn(BackendId) -> usize,
) -> Option<BackendId> {
    let nth = |i: usize| candidates.clone().nth(i).map(|c| c.id);
    match candidates.clone().count() {
        0 => None,
        1 => nth(0),
        n => {
            let mix = splitmix(turn);
            let a = (mix % n as u64) as usize;
            let b = (a + 1 + ((mix >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::{LOSSES, Loss};

    fn points(loss: &Loss) -> Vec<(u32, u32)> {
        loss.points().copied().collect()
    }

    #[test]
    fn a_loss_another_contains_is_not_kept() {
        let mut loss = Loss::default();
        assert!(loss.raise(100, 2));
        assert!(!loss.raise(90, 1), "contained: nothing new");
        assert!(!loss.raise(0, 5), "no time: no loss");
        assert!(
            loss.raise(200, 1),
            "a later time of a lower incarnation is kept apart"
        );
        assert_eq!(points(&loss), [(1, 200), (2, 100)]);
        assert!(loss.raise(300, 3), "contains both");
        assert_eq!(points(&loss), [(3, 300)]);
        assert!(loss.condemns(3, 299) && !loss.condemns(3, 300) && !loss.condemns(4, 0));
    }

    #[test]
    fn past_the_bound_the_highest_incarnation_s_loss_is_kept_and_the_closest_in_time_forgotten() {
        let mut loss = Loss::default();
        // A count stepping down: 9 lost before 8, 4 before 18, 3 before 28, 2 before 38 …
        for (upto, before) in [(9, 8), (4, 18), (3, 28), (2, 38)] {
            assert!(loss.raise(before, upto));
        }
        assert_eq!(points(&loss).len(), LOSSES);
        // … and 1 before 60: the loss of 2 (38, ten seconds from 3's) says the least.
        assert!(loss.raise(60, 1));
        assert_eq!(points(&loss), [(1, 60), (3, 28), (4, 18), (9, 8)]);
        // What was forgotten is only ever taken for live, never the reverse.
        assert!(!loss.condemns(2, 38) && loss.condemns(2, 27));
        assert!(
            loss.condemns(9, 7),
            "the highest incarnation's loss is kept"
        );
        // A new loss that says the least is itself forgotten: nothing changed.
        assert!(!loss.raise(29, 2));
        assert_eq!(points(&loss), [(1, 60), (3, 28), (4, 18), (9, 8)]);
    }
}
