//! Backends, their tenants and states, and placement.
//!
//! Each backend slot publishes a packed atomic word (generation and state flags) and its drain
//! deadline, so that routing a pinned request checks its owner without a lock. Everything else
//! sits behind a read-mostly lock taken by placement and by out-of-band fleet changes; no
//! caller code ever runs under that lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hashbrown::HashMap;
use parking_lot::RwLock;

use crate::table::SessionTable;
use crate::{BackendId, TenantId};

const OCCUPIED: u64 = 1 << 16;
const DRAINING: u64 = 1 << 17;
const UNHEALTHY: u64 = 1 << 18;
/// A draining backend whose deadline passed and whose keys were revoked.
const REVOKED: u64 = 1 << 19;

/// How the router chooses a backend for a request without a known owner.
///
/// Conversation starts (a legacy `initialize`, a legacy SSE connect) use this policy; keyless
/// stateless calls (2026-07-28 era, non-MCP paths) always use weighted round robin, since they
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
    /// Its weight for weighted round robin; 0 takes it out of every placement.
    pub weight: u32,
    /// Draining: keeps its keys, gets nothing new.
    pub draining: bool,
    /// When a draining backend's remaining keys are revoked, if set.
    pub drain_deadline: Option<Instant>,
    /// Its keys were revoked at the drain deadline.
    pub revoked: bool,
    /// As last reported by the embedder's health checks (after the flip thresholds).
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
}

#[derive(Debug)]
struct Meta {
    tenant: TenantId,
    label: Arc<str>,
    weight: u32,
    generation: u16,
    occupied: bool,
    draining: bool,
    deadline: Option<Instant>,
    revoked: bool,
    healthy: bool,
    /// Consecutive health results contrary to `healthy`.
    streak: u32,
}

impl Meta {
    /// Ready for new conversations: present, healthy, not draining, weighted above zero.
    fn ready(&self) -> bool {
        self.occupied && !self.draining && self.healthy && self.weight > 0
    }
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Meta>,
    free: Vec<u16>,
    tenants: HashMap<TenantId, Tenant>,
}

impl State {
    /// The metadata of `id` if it is the current generation of its slot.
    fn live_mut(&mut self, id: BackendId) -> Result<&mut Meta, FleetError> {
        self.slots
            .get_mut(usize::from(id.slot()))
            .filter(|m| m.occupied && m.generation == id.generation())
            .ok_or(FleetError::NotFound(id))
    }
}

/// The backends of every tenant.
#[derive(Debug)]
pub(crate) struct Fleet {
    /// Per slot: generation (low 16 bits) and state flags.
    hot: Box<[AtomicU64]>,
    /// Per slot: the drain deadline in milliseconds since `epoch`, plus one (0: none).
    deadlines: Box<[AtomicU64]>,
    /// Per slot: conversations placed there whose answer has not come yet. Counted with the
    /// live keys when balancing, so that a burst of starts does not herd onto one backend.
    pending: Box<[AtomicU32]>,
    state: RwLock<State>,
    epoch: OnceLock<Instant>,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl Fleet {
    pub(crate) fn new(max_backends: usize, unhealthy_after: u32, healthy_after: u32) -> Self {
        let max = max_backends.clamp(1, 1 << 16);
        Fleet {
            hot: (0..max).map(|_| AtomicU64::new(0)).collect(),
            deadlines: (0..max).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..max).map(|_| AtomicU32::new(0)).collect(),
            state: RwLock::new(State::default()),
            epoch: OnceLock::new(),
            unhealthy_after: unhealthy_after.max(1),
            healthy_after: healthy_after.max(1),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| at);
        let since = at.saturating_duration_since(epoch);
        since.as_secs() * 1000 + u64::from(since.subsec_millis())
    }

    fn publish(&self, slot: u16, meta: &Meta) {
        let mut word = u64::from(meta.generation);
        if meta.occupied {
            word |= OCCUPIED;
        }
        if meta.draining {
            word |= DRAINING;
        }
        if !meta.healthy {
            word |= UNHEALTHY;
        }
        if meta.revoked {
            word |= REVOKED;
        }
        // Milliseconds since the epoch (a u64: no wrap in any uptime), plus one so that zero
        // means "no deadline". Stored before the flags, which readers load first.
        let deadline = meta
            .deadline
            .map_or(0, |d| self.millis(d).saturating_add(1));
        self.deadlines[usize::from(slot)].store(deadline, Ordering::Release);
        self.hot[usize::from(slot)].store(word, Ordering::Release);
    }

    /// Whether `owner` can still serve its keys at `now`. Lock-free.
    pub(crate) fn owner_status(&self, owner: BackendId, now: Instant) -> OwnerStatus {
        let Some(hot) = self.hot.get(usize::from(owner.slot())) else {
            return OwnerStatus::Gone;
        };
        let word = hot.load(Ordering::Acquire);
        if word & OCCUPIED == 0 || word as u16 != owner.generation() {
            return OwnerStatus::Gone;
        }
        if word & REVOKED != 0 {
            return OwnerStatus::Revoked;
        }
        if word & DRAINING != 0 {
            let deadline = self.deadlines[usize::from(owner.slot())].load(Ordering::Acquire);
            if deadline != 0 && self.millis(now) + 1 >= deadline {
                return OwnerStatus::Revoked;
            }
        }
        OwnerStatus::Live
    }

    /// Whether `id` is a ready backend (as placement means it) of `tenant`'s fleet.
    pub(crate) fn is_ready_in(&self, id: BackendId, tenant: TenantId) -> bool {
        let state = self.state.read();
        state.slots.get(usize::from(id.slot())).is_some_and(|meta| {
            meta.ready() && meta.generation == id.generation() && meta.tenant == tenant
        })
    }

    pub(crate) fn add(
        &self,
        tenant: TenantId,
        label: Arc<str>,
        weight: u32,
    ) -> Result<BackendId, FleetError> {
        let mut state = self.state.write();
        let fresh = |generation| Meta {
            tenant,
            label,
            weight,
            generation,
            occupied: true,
            draining: false,
            deadline: None,
            revoked: false,
            healthy: true,
            streak: 0,
        };
        let slot = match state.free.pop() {
            Some(slot) => {
                // The slot's next generation: a new owner that inherits nothing.
                let meta = &mut state.slots[usize::from(slot)];
                *meta = fresh(meta.generation.wrapping_add(1));
                slot
            }
            None => {
                if state.slots.len() >= self.hot.len() {
                    return Err(FleetError::Full(state.slots.len()));
                }
                state.slots.push(fresh(0));
                (state.slots.len() - 1) as u16
            }
        };
        state.tenants.entry(tenant).or_default().slots.push(slot);
        self.pending[usize::from(slot)].store(0, Ordering::Relaxed);
        let meta = &state.slots[usize::from(slot)];
        self.publish(slot, meta);
        Ok(BackendId::new(slot, meta.generation))
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

    pub(crate) fn remove(&self, id: BackendId) -> Result<(), FleetError> {
        let mut state = self.state.write();
        let meta = state.live_mut(id)?;
        meta.occupied = false;
        let tenant = meta.tenant;
        self.publish(id.slot(), meta);
        state.free.push(id.slot());
        if let Some(fleet) = state.tenants.get_mut(&tenant) {
            fleet.slots.retain(|&s| s != id.slot());
        }
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

    /// Records one health check result; the backend's health flips after enough consecutive
    /// contrary results. Returns the health after this result.
    pub(crate) fn report_health(&self, id: BackendId, ok: bool) -> Result<bool, FleetError> {
        let (unhealthy_after, healthy_after) = (self.unhealthy_after, self.healthy_after);
        self.update(id, |meta| {
            if ok == meta.healthy {
                meta.streak = 0;
            } else {
                meta.streak += 1;
                let needed = if ok { healthy_after } else { unhealthy_after };
                if meta.streak >= needed {
                    meta.healthy = ok;
                    meta.streak = 0;
                }
            }
            meta.healthy
        })
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
                self.publish(slot as u16, meta);
                due.push(BackendId::new(slot as u16, meta.generation));
            }
        }
        due
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
                    weight: meta.weight,
                    draining: meta.draining,
                    drain_deadline: meta.deadline,
                    revoked: meta.revoked,
                    healthy: meta.healthy,
                    sessions: table.count_owner(id),
                }
            })
            .collect()
    }

    /// Counts a conversation placed on `id` and not answered yet.
    pub(crate) fn start_pending(&self, id: BackendId) {
        if let Some(pending) = self.pending.get(usize::from(id.slot())) {
            pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The answer to a conversation placed on `id` came (or never will).
    pub(crate) fn end_pending(&self, id: BackendId) {
        if let Some(pending) = self.pending.get(usize::from(id.slot())) {
            // Never below zero: a slot reused since the placement starts again at zero.
            let _ =
                pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Live keys plus conversations placed and not answered yet: the load balancing looks at.
    fn load(&self, table: &dyn SessionTable, id: BackendId) -> usize {
        let pending = self.pending[usize::from(id.slot())].load(Ordering::Relaxed);
        table.count_owner(id) + pending as usize
    }

    /// The policy's choice among `tenant`'s ready backends, skipping `refused`; `None` if
    /// none is left. Takes the fleet lock only for the choice: the caller's veto runs outside.
    ///
    /// Ready means healthy, not draining, and a weight above zero (weight 0 takes a backend
    /// out of every placement while it keeps serving its keys).
    pub(crate) fn pick(
        &self,
        tenant: TenantId,
        policy: Placement,
        table: &dyn SessionTable,
        refused: &[BackendId],
    ) -> Option<BackendId> {
        let state = self.state.read();
        let fleet = state.tenants.get(&tenant).filter(|f| !f.slots.is_empty())?;
        let slots = &fleet.slots;
        let turn = fleet.turn.fetch_add(1, Ordering::Relaxed);
        let n = slots.len();
        // Where ties start this turn: the tenant's backends take turns at being preferred.
        let start = (turn % n as u64) as usize;
        // Ready candidates; the list is short, the walk allocation-free.
        let candidates = (0..n).filter_map(|i| {
            // Under the lock the metadata is current: the hot words are for lock-free readers.
            let slot = slots[i];
            let meta = &state.slots[usize::from(slot)];
            let id = BackendId::new(slot, meta.generation);
            (meta.ready() && !refused.contains(&id)).then_some(Candidate {
                rank: (i + n - start) % n,
                id,
                weight: meta.weight,
            })
        });
        let load = |id| self.load(table, id);
        match policy {
            Placement::WeightedRoundRobin => weighted_turn(candidates, turn),
            Placement::LeastSessions => least_loaded(candidates, load),
            Placement::PowerOfTwoChoices => {
                let all: Vec<_> = candidates.collect();
                two_choices(&all, turn, load)
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

/// Two pseudo-random candidates; the less loaded one.
fn two_choices(
    all: &[Candidate],
    turn: u64,
    load: impl Fn(BackendId) -> usize,
) -> Option<BackendId> {
    match all.len() {
        0 => None,
        1 => Some(all[0].id),
        n => {
            let mix = splitmix(turn);
            let a = (mix % n as u64) as usize;
            let b = (a + 1 + ((mix >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (all[a].id, all[b].id);
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
