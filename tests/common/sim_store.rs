//! A shared store simulated in memory for the store-protocol tests: the semantics the Redis
//! adapter gives each write (set-if-absent binds, refresh or re-set, fenced forget,
//! keep-greatest lost records), TTLs on the manual clock.

use std::collections::HashMap;
use std::time::Instant;

use mcp_affinity::router::store::StoreWrite;

/// The store: each key's value and expiry; `down` for the tests that take it away.
#[derive(Default)]
pub struct SimStore {
    pub values: HashMap<String, (String, Instant)>,
    pub down: bool,
}

impl SimStore {
    pub fn get(&self, key: &str, now: Instant) -> Option<&str> {
        self.values
            .get(key)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(v, _)| v.as_str())
    }

    /// Applies one write; a refused bind returns the value found.
    pub fn apply(&mut self, write: StoreWrite, now: Instant) -> Option<(String, String)> {
        match write {
            StoreWrite::Bind { key, value, ttl } => {
                if let Some(found) = self.get(&key, now) {
                    return Some((key, found.to_string()));
                }
                self.values.insert(key, (value, now + ttl));
            }
            StoreWrite::Refresh { key, value, ttl } => {
                // PEXPIRE; a key that is gone (expired keys are gone) is set if absent.
                match self.values.get_mut(&key).filter(|(_, e)| *e > now) {
                    Some((_, expiry)) => *expiry = now + ttl,
                    None => {
                        self.values.insert(key, (value, now + ttl));
                    }
                }
            }
            StoreWrite::Forget { key, owner } => {
                if self.get(&key, now).is_some_and(|v| v.starts_with(&owner)) {
                    self.values.remove(&key);
                }
            }
            StoreWrite::Lost { key, before, ttl } => {
                let old = self.get(&key, now).and_then(|v| v.parse::<u32>().ok());
                if old.is_none_or(|old| old < before) {
                    self.values.insert(key, (before.to_string(), now + ttl));
                }
            }
            other => panic!("unknown write {other:?}"),
        }
        None
    }
}
