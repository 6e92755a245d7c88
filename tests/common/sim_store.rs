//! A shared store simulated in memory for the store-protocol tests: the semantics the Redis
//! adapter gives each write (set-if-absent binds, refresh or re-set, fenced forget,
//! keep-greatest lost records), TTLs on the manual clock.

use std::collections::HashMap;
use std::time::Instant;

use mcp_affinity::router::store::{Looked, MAX_LOOKUPS, ReseedCursor, StoreWrite};
use mcp_affinity::router::{End, HeadOutcome, NewBackend, Routed, Router, SharedStore, key_fn};
use mcp_affinity::table::SessionTable;
use mcp_affinity::{BackendId, TenantId};

use super::{JSON, SSE, forward, name_of, post, resp, respond, workspace, ws_call};

/// The store: each key's value and expiry; `down` for the tests that take it away.
#[derive(Default)]
pub struct SimStore {
    pub values: HashMap<String, (String, Instant)>,
    pub down: bool,
}

impl SimStore {
    /// What the store says of `key`, as [`Router::on_lookup`] takes it.
    pub fn answer(&self, key: &str, now: Instant) -> Looked<'_> {
        match self.get(key, now) {
            Some(value) => Looked::Found(value),
            None => Looked::Missing,
        }
    }

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

/// Performs every write `router` queued, reporting refused binds back, until its queue is
/// empty (a refused bind may queue a repair), as an embedder's drain does.
pub fn flush<T: SessionTable>(router: &Router<T>, store: &mut SimStore, now: Instant) {
    for _ in 0..8 {
        let writes = router.take_store_writes(usize::MAX);
        if writes.is_empty() {
            return;
        }
        for write in writes {
            if let Some((key, found)) = store.apply(write, now) {
                router.on_bind_taken(&key, &found, now);
            }
        }
    }
    panic!("the write queue never empties");
}

/// Hands `router` the lost records of the backends it knows, as an embedder's poll does.
pub fn poll_lost<T: SessionTable>(router: &Router<T>, store: &SimStore, now: Instant) {
    for key in router.lost_keys() {
        if let Some(before) = store.get(&key, now).and_then(|v| v.parse().ok()) {
            router.on_lost(&key, before, now);
        }
    }
}

/// Routes `request` through `router`, answering every lookup from `store`.
pub fn route_via<T: SessionTable>(
    router: &Router<T>,
    store: &SimStore,
    request: &http::request::Parts,
    now: Instant,
) -> Routed {
    let mut routed = router.route(request, now);
    for _ in 0..MAX_LOOKUPS {
        let Routed::Lookup(lookup) = routed else {
            return routed;
        };
        let found = store.answer(lookup.key(), now);
        routed = router.on_lookup(lookup, found, now);
    }
    routed
}

/// A whole reseed pass of `router` performed on `store` (a refused bind answered with
/// `on_bind_taken`); the writes it made.
pub fn reseed<T: SessionTable>(
    router: &Router<T>,
    store: &mut SimStore,
    now: Instant,
) -> Vec<StoreWrite> {
    let mut cursor = ReseedCursor::default();
    let mut all = Vec::new();
    loop {
        let writes = router.reseed_store(&mut cursor, 64, now);
        if writes.is_empty() {
            return all;
        }
        for write in writes {
            all.push(write.clone());
            if let Some((key, found)) = store.apply(write, now) {
                router.on_bind_taken(&key, &found, now);
            }
        }
    }
}

/// A backend of the default tenant named `name`, at `http://name`, running as `incarnation`.
pub fn backend(name: &str, incarnation: u32) -> NewBackend {
    NewBackend::new(TenantId::DEFAULT, &format!("http://{name}"))
        .name(name)
        .incarnation(incarnation)
}

/// FNV-1a 64 of a backend's name: how the store names its owner.
pub fn fingerprint(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A workspace call through `router` (placements only on `choose`, if given), its lookups
/// answered by `store`, answered 200 by whichever backend gets it: that backend's name, or
/// the rejection's status. The router's writes are performed after it.
pub fn call_ws<T: SessionTable>(
    router: &Router<T>,
    store: &mut SimStore,
    ws: &str,
    choose: Option<&str>,
    now: Instant,
) -> Result<String, u16> {
    let ok = |id: BackendId| choose.is_none_or(|name| name_of(router, id) == name);
    let mut routed = router.route_with(&ws_call(ws), now, ok);
    for _ in 0..MAX_LOOKUPS {
        let Routed::Lookup(lookup) = routed else {
            break;
        };
        let found = store.answer(lookup.key(), now);
        routed = router.on_lookup_with(lookup, found, now, ok);
    }
    let out = match routed {
        Routed::Forward(mut ex) => {
            let name = name_of(router, ex.backend());
            let _ = respond(router, &mut ex, 200, &[JSON], &[b"{}"], now);
            router.on_exchange_end(ex, End::Completed, now);
            Ok(name)
        }
        Routed::Reject(r) => Err(r.status().as_u16()),
        Routed::Lookup(_) => unreachable!(),
    };
    flush(router, store, now);
    out
}

/// A router whose wall clock reads `unix` at `at` (`SharedStore` prefix `mcp`), routing by
/// workspace, a backend down after two failed checks and up after two good ones.
pub fn router_at(at: Instant, unix: u64) -> Router {
    Router::builder()
        .operator_key(key_fn(workspace))
        .health_thresholds(2, 2)
        .shared_store(SharedStore::new("mcp", at, unix))
        .build()
}

/// A store binding's value: `name`'s process `incarnation`, bound at Unix second `at`, no
/// principal.
pub fn binding(name: &str, incarnation: u32, at: u64) -> String {
    format!("1:{:016x}:{incarnation}:{at}:-", fingerprint(name))
}

/// Starts a Streamable session `id` through `router` (placed on whatever it picks) and
/// writes its binding through.
pub fn start(router: &Router, store: &mut SimStore, id: &str, now: Instant) {
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let mut head = resp(200, &[("mcp-session-id", id), SSE]);
    assert!(matches!(
        router.on_response_head(&mut ex, &mut head, now),
        HeadOutcome::Forward
    ));
    router.on_exchange_end(ex, End::Completed, now);
    flush(router, store, now);
}

/// Every loss a router was told of, kept apart and never forgotten: what the router's
/// bounded `Loss` may forget, never contradict.
#[derive(Default)]
pub struct Oracle {
    pub current: u32,
    pub losses: Vec<(u32, u32)>,
}

impl Oracle {
    /// Whether a binding of `incarnation` made at `made` is of a lost process.
    pub fn lost(&self, incarnation: u32, made: u32) -> bool {
        incarnation < self.current
            || self
                .losses
                .iter()
                .any(|&(upto, before)| incarnation <= upto && made < before)
    }

    /// Asserts that each lost record among `writes` (a reseed's) is one a loss told: its
    /// incarnation lost before its second.
    pub fn check_reseed(&self, seed: u64, writes: Vec<StoreWrite>) {
        for write in writes {
            if let StoreWrite::Lost { key, before, .. } = write {
                let incarnation: u32 = key.rsplit(':').next().unwrap().parse().unwrap();
                assert!(
                    self.lost(incarnation, before - 1),
                    "seed {seed}: reseeded {key} = {before}, which no loss told \
                     ({:?}, current {})",
                    self.losses,
                    self.current
                );
            }
        }
    }
}

/// Another router's record that `name`'s process `incarnation` was lost before Unix second
/// `before` (default tenant, prefix `mcp`).
pub fn lost_record(name: &str, incarnation: u32, before: u32) -> StoreWrite {
    StoreWrite::Lost {
        key: format!("mcp:lost:0:{:016x}:{incarnation}", fingerprint(name)),
        before,
        ttl: std::time::Duration::from_secs(7200),
    }
}
