//! The table that stores nothing.

use std::time::{Duration, Instant};

use super::{
    Entry, Eviction, Insert, InsertError, Key, Occupancy, OwnedKey, Principal, SessionTable,
    SetOwnerError,
};
use crate::{BackendId, TenantId};

/// A [`SessionTable`] that stores nothing: affinity off.
///
/// Every lookup misses and every insert is refused with [`InsertError::Disabled`], so a router
/// on this table places every request statelessly and rejects every keyed one as unknown. It is
/// honest about it: it never claims to have stored a key. Useful for purely stateless fleets
/// (2026-07-28 era without tasks) and to measure the router without a table.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullTable;

impl SessionTable for NullTable {
    fn get(&self, _key: &Key<'_>, _now: Instant) -> Option<Entry> {
        None
    }

    fn insert(
        &self,
        _key: &Key<'_>,
        _owner: BackendId,
        _principal: Option<Principal>,
        _now: Instant,
    ) -> Result<Insert, InsertError> {
        Err(InsertError::Disabled)
    }

    fn set_owner(
        &self,
        _key: &Key<'_>,
        _expected: BackendId,
        _new: BackendId,
        _now: Instant,
    ) -> Result<Entry, SetOwnerError> {
        Err(SetOwnerError::NotFound)
    }

    fn remove(&self, _key: &Key<'_>, _owner: Option<BackendId>) -> Option<Entry> {
        None
    }

    fn open_stream(&self, _key: &Key<'_>, _now: Instant) -> Option<Entry> {
        None
    }

    fn close_stream(&self, _key: &Key<'_>, _now: Instant) -> Option<Entry> {
        None
    }

    fn remove_owner(&self, _owner: BackendId) -> usize {
        0
    }

    fn keys_of(&self, _owner: BackendId, _max: usize) -> Vec<OwnedKey> {
        Vec::new()
    }

    fn evict_idle(&self, _now: Instant, _max_work: usize) -> Eviction {
        Eviction::default()
    }

    fn count_owner(&self, _owner: BackendId) -> usize {
        0
    }

    fn count_tenant(&self, _tenant: TenantId) -> usize {
        0
    }

    fn occupancy(&self) -> Occupancy {
        Occupancy {
            len: 0,
            capacity: Some(0),
        }
    }

    fn idle_ttl(&self) -> Option<Duration> {
        None
    }
}
