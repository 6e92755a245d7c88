//! Out of band: backends come, go, drain, fail their checks and come back; upkeep; metrics.

use std::time::Instant;

use super::Router;
use super::fleet::{BackendInfo, FleetError, Health, NewBackend, Probe};
use super::metrics::Metrics;
use crate::table::{Entry, Key, KeyKind, OwnedKey, SessionTable};
use crate::{BackendId, TenantId};

/// What one [`Router::maintain`] call did.
#[must_use]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Maintenance {
    /// Table entries looked at for idle expiry.
    pub examined: usize,
    /// Keys expired after the idle TTL.
    pub expired: usize,
    /// Keys revoked because their draining owner's deadline passed.
    pub revoked: usize,
    /// Keys purged because their owner was removed (past the removal grace) or is down.
    pub purged: usize,
}

impl<T: SessionTable> Router<T> {
    /// Adds a backend to `tenant`'s fleet, ready for new conversations. `label` is yours (for
    /// example its base URL) and is its name too; `weight` counts for weighted round robin.
    /// [`add`](Router::add) sets a name and an incarnation as well. Errors as `add` does.
    pub fn add_backend(
        &self,
        tenant: TenantId,
        label: &str,
        weight: u32,
    ) -> Result<BackendId, FleetError> {
        self.add(NewBackend::new(tenant, label).weight(weight))
    }

    /// Adds a backend, ready for new conversations. Its name must be unique in its tenant
    /// ([`FleetError::DuplicateName`]), and a slot must be free
    /// ([`FleetError::Full`] past [`max_backends`](super::RouterBuilder::max_backends); a
    /// removed backend's slot is free again at once, for a new generation that inherits
    /// nothing).
    ///
    /// A backend added under the name of one removed lately (of the last 4,096 removals),
    /// and with no higher [`incarnation`](NewBackend::incarnation), inherits none of its
    /// sessions, sealed ones included: tokens sealed before that removal (less the clock
    /// skew) are answered as gone (404), as the removed backend's table keys were purged.
    /// With a higher incarnation the old process's tokens are refused by their incarnation,
    /// and the new one's, which another router may already have sealed, route. (A replica
    /// that restarts should come back with a higher incarnation: every router of a fleet
    /// agrees on it, whenever each sees the restart.) Either way it keeps what this router
    /// knew was lost of that name's processes (as [`restart_backend`](Router::restart_backend)
    /// does): a count that started over before the removal still condemns the bindings of
    /// the numbers it covers.
    pub fn add(&self, mut backend: NewBackend) -> Result<BackendId, FleetError> {
        if let Some((removed_at, incarnation, lost)) = self.fleet.removed(&backend) {
            // What this router knew was lost of the name's processes stays true of them:
            // re-added under a higher number than the one removed, it forgot a loss that
            // covers that number (a count that started over before the removal), took the
            // lost process's bindings of that number for the new one's and kept an operator
            // key there, while routers that restarted or renumbered the backend (which keeps
            // its losses) bound it afresh: a split (the tenth review, R10-1).
            for &(upto, before) in lost.points() {
                backend.lost.raise(before, upto);
            }
            if backend.incarnation <= incarnation {
                backend
                    .lost
                    .raise(self.lost_cutoff(removed_at), incarnation);
            }
        }
        let added = self.fleet.add(backend, |id| {
            // Only after 65,536 generations of one slot can an id come back: whatever keys
            // or scheduled purge its last holder left go first.
            self.purges.lock().remove(&id);
            if self.table.count_owner(id) > 0 {
                self.purge(id);
            }
        });
        #[cfg(feature = "tracing")]
        if let Ok(id) = added {
            event!(info, backend = %id, label = self.backend_label(id).as_deref(), "backend added");
        }
        added
    }

    /// Stops placing new conversations on a backend; it keeps serving its keys. With a
    /// deadline, keys still on it at that time are revoked (requests for them get 404, and
    /// [`maintain`](Router::maintain) purges them). A deadline too far to count in
    /// milliseconds is never reached.
    ///
    /// A deadline that has passed stays passed: draining again with a later deadline, or
    /// undraining, does not bring back keys that were due for revocation.
    pub fn drain_backend(
        &self,
        id: BackendId,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), FleetError> {
        self.revoke_due(now);
        self.fleet.drain(id, deadline, now)?;
        event!(info, backend = %id, deadline = ?deadline.map(|d| d.saturating_duration_since(now)), "backend draining");
        Ok(())
    }

    /// Makes a draining backend ready again (keys whose drain deadline has passed stay
    /// revoked).
    pub fn undrain_backend(&self, id: BackendId, now: Instant) -> Result<(), FleetError> {
        self.revoke_due(now);
        self.fleet.undrain(id)?;
        event!(info, backend = %id, "backend ready again (undrained)");
        Ok(())
    }

    /// Revokes the keys of draining backends past their deadline; returns how many.
    fn revoke_due(&self, now: Instant) -> usize {
        let mut revoked = 0;
        for id in self.fleet.take_due_revocations(now) {
            let gone = self.table.remove_owner(id);
            event!(info, backend = %id, keys = gone, "drain deadline passed: keys revoked");
            revoked += gone;
        }
        self.counters.add(|s| &s.revoked, revoked as u64);
        revoked
    }

    /// Removes a backend: nothing is routed to it any more, and its slot may be reused by a
    /// later backend, with a new generation. Its keys are rejected as
    /// [`OwnerGone`](super::Reason::OwnerGone) (404, the signal to start over) and purged:
    /// one by one as they are presented, the rest by [`maintain`](Router::maintain) once the
    /// removal grace has passed (see
    /// [`RouterBuilder::removal_grace`](super::RouterBuilder::removal_grace); with no grace, at
    /// once). Keys learned from answers that arrive after the removal are not kept. Returns
    /// how many keys it owned.
    pub fn remove_backend(&self, id: BackendId, now: Instant) -> Result<usize, FleetError> {
        let identity = self.fleet.identity(id);
        self.fleet.remove(id, now)?;
        event!(info, backend = %id, "backend removed");
        self.store_lost(identity, now);
        let owned = self.table.count_owner(id);
        match now.checked_add(self.config.removal_grace) {
            _ if self.config.removal_grace.is_zero() => {
                self.purge(id);
            }
            Some(due) => {
                self.purges.lock().insert(id, due);
            }
            // A grace too long to count: the keys go as they are presented or expire.
            None => {}
        }
        Ok(owned)
    }

    fn purge(&self, id: BackendId) -> usize {
        let purged = self.table.remove_owner(id);
        self.counters.add(|s| &s.purged, purged as u64);
        if purged > 0 {
            event!(debug, backend = %id, keys = purged, "keys of a gone backend purged");
        }
        purged
    }

    /// A backend restarted: removes it (see [`remove_backend`](Router::remove_backend)) and
    /// adds it again with the same tenant, label, name, incarnation and weight, as a new
    /// generation that inherits nothing (sealed ids issued before the restart, less the clock
    /// skew of [`Sealing`](super::Sealing), are refused as well).
    pub fn restart_backend(&self, id: BackendId, now: Instant) -> Result<BackendId, FleetError> {
        let mut backend = self.fleet.describe(id)?;
        let incarnation = backend.incarnation;
        backend.lost.raise(self.lost_cutoff(now), incarnation);
        self.remove_backend(id, now)?;
        self.add(backend)
    }

    /// The backend now runs as `incarnation` (a new process of the replica, as the
    /// orchestrator numbers them; see [`NewBackend::incarnation`]). Sealed ids naming another
    /// incarnation are refused from now on: older ones as gone (404), newer ones as a router
    /// that is behind (503). Session and task keys in the table are untouched: a new process
    /// that does not know them answers 404 itself. Its operator keys are purged: a client
    /// cannot start one over, so each is bound afresh on its next request, as when its owner
    /// is gone (with a shared store, every router finds the old binding lost by its number
    /// and binds it the same way).
    pub fn set_incarnation(
        &self,
        id: BackendId,
        incarnation: u32,
        now: Instant,
    ) -> Result<(), FleetError> {
        if self
            .fleet
            .set_incarnation(id, incarnation, self.lost_cutoff(now))?
        {
            for owned in self.table.keys_of(id, usize::MAX) {
                let key = owned.as_key();
                if key.kind() == KeyKind::Operator {
                    self.purge_key(&key, id);
                }
            }
            // The losses that cover the new number are published under it (what routers at
            // that number poll), as a removal or a backend found down is: a count that
            // started over lost the running process, and one that climbs back up to a number
            // a loss covers runs again where old bindings of that number lie. Kept here
            // only (or under another number), they reached a router started later, which
            // knows only the new number, at best at the next reseed, and that router took
            // the lost process's bindings of the number for live (a split: the thirteenth
            // and fourteenth reviews, R13-1 and R14-1).
            self.store_lost_records(id);
        }
        Ok(())
    }

    /// Sets a backend's weight for weighted round robin; 0 takes it out of every placement
    /// (it keeps serving its keys).
    pub fn set_weight(&self, id: BackendId, weight: u32) -> Result<(), FleetError> {
        self.fleet.set_weight(id, weight)
    }

    /// Records a health check result from the embedder (`true`/`false` are
    /// [`Probe::Up`]/[`Probe::Failed`]) and returns the backend's health now. Health changes
    /// after consecutive results of one kind (see
    /// [`RouterBuilder::health_thresholds`](super::RouterBuilder::health_thresholds)):
    ///
    /// - failed checks make a healthy backend [unhealthy](Health::Unhealthy): no new
    ///   conversations, but its keys still route to it, since it still holds them;
    /// - refused connections make it [down](Health::Down): its keys are answered as
    ///   [`OwnerDown`](super::Reason::OwnerDown) (404) at once and purged by
    ///   [`maintain`](Router::maintain);
    /// - good checks make it healthy again; a down backend comes back as a new process of
    ///   the replica, keeping its [`BackendId`] and its
    ///   [`incarnation`](super::BackendInfo::incarnation) number but none of its keys (sealed
    ///   ids issued before it went down are refused).
    ///
    /// `now` dates a change of health: sealed ids issued before a backend went down (less the
    /// clock skew) are refused once it is back.
    pub fn report_health(
        &self,
        id: BackendId,
        probe: impl Into<Probe>,
        now: Instant,
    ) -> Result<Health, FleetError> {
        let reported = self
            .fleet
            .report(id, probe.into(), self.lost_cutoff(now), now)?;
        if reported.health != reported.was {
            match reported.health {
                Health::Healthy => event!(info, backend = %id, "backend healthy"),
                Health::Unhealthy => {
                    event!(warn, backend = %id, "backend unhealthy: no new conversations");
                }
                Health::Down => {
                    event!(warn, backend = %id, "backend down: its sessions are gone");
                }
            }
        }
        if reported.went_down {
            self.count_down(id);
            self.store_lost(self.fleet.identity(id), now);
        }
        if reported.comes_back {
            // Its lost incarnation's keys go first, outside the fleet lock (placement goes on
            // meanwhile); it is still down, so nothing new can be bound to it.
            let _purging = self.purge_lock.lock();
            self.purge(id);
            event!(info, backend = %id, "backend back as a new incarnation");
            return self.fleet.finish_comeback(id, reported.term);
        }
        Ok(reported.health)
    }

    /// A request's connection to `id`, routed in `term`, was refused: it is down from now on
    /// (unless it is in another term already).
    pub(super) fn declare_down(&self, id: BackendId, term: u32, now: Instant) {
        if self.fleet.mark_down(id, term, self.lost_cutoff(now), now) == Ok(true) {
            event!(warn, backend = %id, "backend down (connection refused): its sessions are gone");
            self.count_down(id);
            self.store_lost(self.fleet.identity(id), now);
        }
    }

    fn count_down(&self, id: BackendId) {
        self.counters.incr(|s| &s.down);
        let lost = self.table.count_owner(id) as u64;
        self.counters.add(|s| &s.lost, lost);
    }

    /// Periodic upkeep (call it every second or so): expires idle keys, looking at no more
    /// than `budget` table entries (and, with a shared store, at up to `budget` more for the
    /// store's refresh pass); revokes the keys of draining backends past their deadline;
    /// purges the keys of removed backends past the removal grace, and of down backends.
    pub fn maintain(&self, now: Instant, budget: usize) -> Maintenance {
        let eviction = self.table.evict_idle(now, budget);
        self.store_upkeep(now, budget);
        self.counters.add(|s| &s.expired, eviction.evicted as u64);
        if eviction.evicted > 0 {
            event!(debug, keys = eviction.evicted, "idle keys expired");
        }
        let revoked = self.revoke_due(now);
        let due: Vec<BackendId> = {
            let mut purges = self.purges.lock();
            let due = purges
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(id, _)| *id)
                .collect();
            purges.retain(|_, at| *at > now);
            due
        };
        let mut purged: usize = due.into_iter().map(|id| self.purge(id)).sum();
        {
            let _purging = self.purge_lock.lock();
            for id in self.fleet.take_down_purges() {
                purged += self.purge(id);
            }
        }
        Maintenance {
            examined: eviction.examined,
            expired: eviction.evicted,
            revoked,
            purged,
        }
    }

    /// The label `id` was added with (for example its base URL), while it is present.
    pub fn backend_label(&self, id: BackendId) -> Option<std::sync::Arc<str>> {
        self.fleet.label(id)
    }

    /// Every backend, with its state and live keys.
    pub fn backends(&self) -> Vec<BackendInfo> {
        self.fleet.infos(&self.table)
    }

    /// A snapshot of the counters and state.
    pub fn metrics(&self) -> Metrics {
        self.counters.snapshot(
            self.fleet.infos(&self.table),
            self.table.occupancy(),
            self.store_queue_len(),
        )
    }

    /// Up to `max` keys that `backend` owns.
    pub fn keys_of(&self, backend: BackendId, max: usize) -> Vec<OwnedKey> {
        self.table.keys_of(backend, max)
    }

    /// Forgets one key (an operator's eviction), in the shared store too if its kind is
    /// shared there; its next request is rejected as unknown (an operator key's is placed
    /// and bound afresh). Counted in `keys_forgotten`.
    pub fn evict_key(&self, key: &Key<'_>) -> Option<Entry> {
        let removed = self.table.remove(key, None);
        if let Some(entry) = &removed {
            self.counters.incr(|s| &s.forgotten);
            if entry.owner != BackendId::CONTESTED {
                self.store_forgotten(key, entry.owner);
            }
        }
        removed
    }

    /// The session table.
    pub fn table(&self) -> &T {
        &self.table
    }
}
