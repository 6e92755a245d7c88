//! The contract every [`SessionTable`] must keep, as a test suite any implementation can run.
//!
//! ```
//! use mcp_affinity::table::{MemoryTable, contract};
//!
//! contract::check(MemoryTable::new);
//! ```
//!
//! [`check`] builds a fresh table for each check and panics with the check's name on the first
//! broken rule. It drives time through `now` arguments only, so a table's idle expiry is tested
//! without waiting; it reads the clock once, for a starting `Instant`.
//!
//! What it checks: lookups of unknown keys; learned keys found with their owner and principal;
//! `insert` never replacing an owner; tenant and kind namespacing; conditional removal;
//! compare-and-set of owners; stream counting; use times; idle expiry (with and without open
//! streams, and the work budget); removal and listing by owner; counts; ids from 1 to 256
//! bytes; and, for tables with a capacity of at most 10,000 entries, that the capacity is never
//! exceeded. A table that refuses to store ([`InsertError::Disabled`]) passes when it never
//! reports a key it refused.

use std::time::{Duration, Instant};

use super::{Insert, InsertError, Key, KeyKind, Principal, SessionTable, SetOwnerError};
use crate::{BackendId, TenantId};

/// Times a table reports may be rounded down by up to this much.
const RESOLUTION: Duration = Duration::from_secs(1);

const A: BackendId = BackendId::new(1, 0);
const B: BackendId = BackendId::new(2, 0);
const C: BackendId = BackendId::new(1, 1);

type Check = fn(&dyn SessionTable, Instant);

/// Every check, by name.
const CHECKS: &[(&str, Check)] = &[
    ("unknown keys are absent", unknown_keys_are_absent),
    ("learned keys are found", learned_keys_are_found),
    (
        "insert never replaces an owner",
        insert_never_replaces_an_owner,
    ),
    (
        "keys are namespaced by tenant and kind",
        keys_are_namespaced,
    ),
    ("principals are kept", principals_are_kept),
    (
        "remove respects the expected owner",
        remove_respects_the_owner,
    ),
    (
        "set_owner is a compare-and-set",
        set_owner_is_compare_and_set,
    ),
    ("streams are counted, never below zero", streams_are_counted),
    (
        "insert_streaming counts a stream from the start",
        insert_streaming_counts_a_stream,
    ),
    ("get marks the entry used", get_marks_use),
    (
        "idle entries expire, open streams keep them",
        idle_entries_expire,
    ),
    (
        "evict_idle keeps to its budget",
        evict_idle_keeps_to_its_budget,
    ),
    (
        "remove_owner removes exactly its keys",
        remove_owner_removes_its_keys,
    ),
    (
        "ids of 1 to 256 bytes are stored whole",
        ids_are_stored_whole,
    ),
    ("capacity is never exceeded", capacity_is_never_exceeded),
];

/// Runs every check of the contract, each on a fresh table from `make`.
///
/// # Panics
///
/// On the first broken rule, naming the check.
pub fn check<T: SessionTable, F: Fn() -> T>(make: F) {
    #[allow(
        clippy::disallowed_methods,
        reason = "a test utility needs one real Instant"
    )]
    let start = Instant::now();
    for (name, check) in CHECKS {
        let table = make();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&table, start)));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("session table contract broken: {name}: {why}");
        }
    }
}

fn key(tenant: u16, kind: KeyKind, id: &str) -> Key<'_> {
    Key::new(TenantId::new(tenant), kind, id.as_bytes()).expect("valid test key")
}

/// Inserts, and returns whether the table stored the key. A refusal (`Disabled`) must leave no
/// trace; a `Full` table with room to spare breaks the contract.
fn learn(
    table: &dyn SessionTable,
    key: &Key<'_>,
    owner: BackendId,
    principal: Option<Principal>,
    now: Instant,
) -> bool {
    match table.insert(key, owner, principal, now) {
        Ok(Insert::Added { evicted: false }) => true,
        Ok(other) => panic!("insert of a new key {key:?} answered {other:?}"),
        Err(InsertError::Disabled) => {
            assert!(table.get(key, now).is_none(), "a refused key is found");
            assert_eq!(table.occupancy().len, 0, "a refusing table holds entries");
            false
        }
        Err(err) => panic!("insert of {key:?} into a table with room failed: {err}"),
    }
}

fn within(got: Instant, expected: Instant) -> bool {
    got <= expected && expected.duration_since(got) <= RESOLUTION
}

fn unknown_keys_are_absent(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "nobody");
    assert!(t.get(&k, now).is_none());
    assert!(t.remove(&k, None).is_none());
    assert!(t.open_stream(&k, now).is_none());
    assert!(t.close_stream(&k, now).is_none());
    assert_eq!(t.set_owner(&k, A, B, now), Err(SetOwnerError::NotFound));
    assert_eq!(t.count_owner(A), 0);
    assert_eq!(t.count_tenant(TenantId::DEFAULT), 0);
    assert!(t.keys_of(A, 10).is_empty());
    assert_eq!(t.remove_owner(A), 0);
    assert_eq!(t.occupancy().len, 0);
}

fn learned_keys_are_found(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "4f2a9c1e-77b0-4c1a-9d3e-2b8f6a0c5d11");
    if !learn(t, &k, A, None, now) {
        return;
    }
    let entry = t.get(&k, now).expect("a learned key is found");
    assert_eq!(entry.owner, A);
    assert_eq!(entry.principal, None);
    assert_eq!(entry.streams, 0);
    assert!(
        within(entry.learned_at(), now),
        "learned_at {:?}",
        entry.learned_at()
    );
    assert_eq!(t.count_owner(A), 1);
    assert_eq!(t.count_tenant(TenantId::DEFAULT), 1);
    assert_eq!(t.occupancy().len, 1);
    assert_eq!(t.keys_of(A, 10), vec![k.to_owned()]);
}

fn insert_never_replaces_an_owner(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "s1");
    if !learn(t, &k, A, None, now) {
        return;
    }
    match t.insert(&k, B, None, now) {
        Ok(Insert::Exists(entry)) => assert_eq!(entry.owner, A),
        other => panic!("second insert answered {other:?}"),
    }
    assert_eq!(t.get(&k, now).map(|e| e.owner), Some(A));
    assert_eq!(t.count_owner(B), 0);
    assert_eq!(t.occupancy().len, 1);
}

fn keys_are_namespaced(t: &dyn SessionTable, now: Instant) {
    let same_id = [
        (key(1, KeyKind::Session, "x-1"), A),
        (key(2, KeyKind::Session, "x-1"), B),
        (key(1, KeyKind::Task, "x-1"), C),
    ];
    for (k, owner) in &same_id {
        if !learn(t, k, *owner, None, now) {
            return;
        }
    }
    for (k, owner) in &same_id {
        assert_eq!(t.get(k, now).map(|e| e.owner), Some(*owner), "{k:?}");
    }
    assert!(t.get(&key(3, KeyKind::Session, "x-1"), now).is_none());
    assert!(t.get(&key(1, KeyKind::SseSession, "x-1"), now).is_none());
    assert!(t.get(&key(1, KeyKind::Session, "x-"), now).is_none());
    assert!(t.get(&key(1, KeyKind::Session, "x-11"), now).is_none());
    assert_eq!(t.count_tenant(TenantId::new(1)), 2);
    assert_eq!(t.count_tenant(TenantId::new(2)), 1);
    assert!(t.remove(&same_id[0].0, None).is_some());
    assert_eq!(t.get(&same_id[1].0, now).map(|e| e.owner), Some(B));
    assert_eq!(t.get(&same_id[2].0, now).map(|e| e.owner), Some(C));
}

fn principals_are_kept(t: &dyn SessionTable, now: Instant) {
    let with = key(0, KeyKind::Session, "with");
    let without = key(0, KeyKind::Session, "without");
    let p = Principal::new(0xDEAD_BEEF);
    if !learn(t, &without, A, None, now) || !learn(t, &with, A, Some(p), now) {
        return;
    }
    assert_eq!(t.get(&with, now).and_then(|e| e.principal), Some(p));
    assert_eq!(t.get(&without, now).map(|e| e.principal), Some(None));
    assert_eq!(t.remove(&with, None).and_then(|e| e.principal), Some(p));
    assert_eq!(t.get(&without, now).map(|e| e.principal), Some(None));
}

fn remove_respects_the_owner(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "s1");
    if !learn(t, &k, A, None, now) {
        return;
    }
    assert!(
        t.remove(&k, Some(B)).is_none(),
        "removed although owned by another"
    );
    assert!(t.get(&k, now).is_some());
    assert_eq!(t.remove(&k, Some(A)).map(|e| e.owner), Some(A));
    assert!(t.get(&k, now).is_none());
    assert!(t.remove(&k, None).is_none());
    assert_eq!(t.count_owner(A), 0);
    assert_eq!(t.count_tenant(TenantId::DEFAULT), 0);
    assert_eq!(t.occupancy().len, 0);
}

fn set_owner_is_compare_and_set(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "s1");
    if !learn(t, &k, A, None, now) {
        return;
    }
    match t.set_owner(&k, B, C, now) {
        Err(SetOwnerError::OwnerChanged(entry)) => assert_eq!(entry.owner, A),
        other => panic!("set_owner with a wrong expectation answered {other:?}"),
    }
    assert_eq!(t.set_owner(&k, A, B, now).map(|e| e.owner), Ok(B));
    assert_eq!(t.get(&k, now).map(|e| e.owner), Some(B));
    assert_eq!(t.count_owner(A), 0);
    assert_eq!(t.count_owner(B), 1);
    assert_eq!(t.keys_of(B, 10), vec![k.to_owned()]);
    assert!(t.keys_of(A, 10).is_empty());
}

fn streams_are_counted(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "s1");
    if !learn(t, &k, A, None, now) {
        return;
    }
    assert_eq!(t.open_stream(&k, now).map(|e| e.streams), Some(1));
    assert_eq!(t.open_stream(&k, now).map(|e| e.streams), Some(2));
    assert_eq!(t.get(&k, now).map(|e| e.streams), Some(2));
    assert_eq!(t.close_stream(&k, now).map(|e| e.streams), Some(1));
    assert_eq!(t.close_stream(&k, now).map(|e| e.streams), Some(0));
    assert_eq!(t.close_stream(&k, now).map(|e| e.streams), Some(0));
}

fn insert_streaming_counts_a_stream(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::SseSession, "s1");
    match t.insert_streaming(&k, A, None, now) {
        Ok(Insert::Added { .. }) => {}
        Err(InsertError::Disabled) => {
            assert!(t.get(&k, now).is_none());
            return;
        }
        other => panic!("insert_streaming of a new key answered {other:?}"),
    }
    assert_eq!(t.get(&k, now).map(|e| e.streams), Some(1));
    // Again by the same owner: one more stream; by another: nothing changes.
    assert!(matches!(
        t.insert_streaming(&k, A, None, now),
        Ok(Insert::Exists(_))
    ));
    assert_eq!(t.get(&k, now).map(|e| e.streams), Some(2));
    assert!(matches!(t.insert_streaming(&k, B, None, now), Ok(Insert::Exists(e)) if e.owner == A));
    assert_eq!(t.get(&k, now).map(|e| (e.owner, e.streams)), Some((A, 2)));
    // It does not expire while its streams are open.
    if let Some(ttl) = t.idle_ttl() {
        let later = now + 3 * ttl + 2 * RESOLUTION;
        let _ = t.evict_idle(later, 1000);
        assert!(
            t.get(&k, later).is_some(),
            "an entry with open streams expired"
        );
    }
}

fn get_marks_use(t: &dyn SessionTable, now: Instant) {
    let k = key(0, KeyKind::Session, "s1");
    if !learn(t, &k, A, None, now) {
        return;
    }
    let later = now + Duration::from_secs(10);
    let entry = t.get(&k, later).expect("found");
    assert!(
        within(entry.last_used(), later),
        "last_used {:?}",
        entry.last_used()
    );
    assert!(within(entry.learned_at(), now), "learned_at moved");
    let entry = t.get(&k, later).expect("found");
    assert!(within(entry.last_used(), later));
}

fn idle_entries_expire(t: &dyn SessionTable, now: Instant) {
    let idle = key(0, KeyKind::Session, "idle");
    let streaming = key(0, KeyKind::Session, "streaming");
    let used = key(0, KeyKind::Session, "used");
    for k in [&idle, &streaming, &used] {
        if !learn(t, k, A, None, now) {
            return;
        }
    }
    let Some(ttl) = t.idle_ttl() else {
        let eviction = t.evict_idle(now + Duration::from_secs(100 * 365 * 86_400), 1000);
        assert_eq!(eviction.evicted, 0, "a table without TTL expired entries");
        assert_eq!(t.occupancy().len, 3);
        return;
    };
    t.open_stream(&streaming, now).expect("found");
    let check_used = ttl > 4 * RESOLUTION;
    if check_used {
        t.get(&used, now + ttl * 3 / 4).expect("found");
    }
    let past = now + ttl + 2 * RESOLUTION;
    let eviction = t.evict_idle(past, 1000);
    assert!(
        t.get(&idle, past).is_none(),
        "an idle entry outlived its TTL"
    );
    assert!(
        t.get(&streaming, past).is_some(),
        "an entry with an open stream expired"
    );
    if check_used {
        assert!(
            t.get(&used, past).is_some(),
            "a recently used entry expired"
        );
    }
    assert!(eviction.evicted >= 1);
    // Once its stream closes, the entry is idle from then on.
    t.close_stream(&streaming, past).expect("found");
    let _ = t.evict_idle(past + ttl / 2, 1000);
    if ttl / 2 > 2 * RESOLUTION {
        assert!(
            t.get(&streaming, past + ttl / 2).is_some(),
            "expired too early"
        );
    }
    let gone = past + 2 * ttl + 4 * RESOLUTION;
    let _ = t.evict_idle(gone, 1000);
    assert!(
        t.get(&streaming, gone).is_none(),
        "a closed stream kept its entry"
    );
}

fn evict_idle_keeps_to_its_budget(t: &dyn SessionTable, now: Instant) {
    let Some(ttl) = t.idle_ttl() else {
        return;
    };
    let ids: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for id in &ids {
        if !learn(t, &key(0, KeyKind::Session, id), A, None, now) {
            return;
        }
    }
    let past = now + ttl + 2 * RESOLUTION;
    let mut evicted = 0;
    for _ in 0..20 {
        let eviction = t.evict_idle(past, 3);
        assert!(
            eviction.examined <= 3,
            "examined {} with a budget of 3",
            eviction.examined
        );
        assert!(eviction.evicted <= eviction.examined);
        evicted += eviction.evicted;
    }
    assert_eq!(
        evicted, 10,
        "repeated budgeted sweeps evict every idle entry"
    );
    assert_eq!(t.occupancy().len, 0);
}

fn remove_owner_removes_its_keys(t: &dyn SessionTable, now: Instant) {
    let a_ids: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    let b_ids: Vec<String> = (0..3).map(|i| format!("b{i}")).collect();
    for id in &a_ids {
        if !learn(t, &key(0, KeyKind::Session, id), A, None, now) {
            return;
        }
    }
    for id in &b_ids {
        assert!(learn(t, &key(1, KeyKind::Task, id), B, None, now));
    }
    // Another incarnation of A's slot is another owner.
    assert!(learn(t, &key(0, KeyKind::Session, "c0"), C, None, now));
    assert_eq!(t.count_owner(A), 5);
    let mut listed = t.keys_of(A, 100);
    listed.sort();
    let mut expected: Vec<_> = a_ids
        .iter()
        .map(|id| key(0, KeyKind::Session, id).to_owned())
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(t.keys_of(A, 2).len(), 2);
    assert_eq!(t.remove_owner(A), 5);
    assert_eq!(t.count_owner(A), 0);
    assert!(t.keys_of(A, 100).is_empty());
    for id in &a_ids {
        assert!(t.get(&key(0, KeyKind::Session, id), now).is_none());
    }
    for id in &b_ids {
        assert_eq!(
            t.get(&key(1, KeyKind::Task, id), now).map(|e| e.owner),
            Some(B)
        );
    }
    assert_eq!(
        t.get(&key(0, KeyKind::Session, "c0"), now).map(|e| e.owner),
        Some(C)
    );
    assert_eq!(t.count_owner(B), 3);
    assert_eq!(t.count_tenant(TenantId::new(0)), 1);
    assert_eq!(t.count_tenant(TenantId::new(1)), 3);
    assert_eq!(t.occupancy().len, 4);
}

fn ids_are_stored_whole(t: &dyn SessionTable, now: Instant) {
    let ids: Vec<String> = [1, 26, 32, 36, 37, 38, 64, 255, 256]
        .iter()
        // Each length starts at another character, so no id is a prefix of another.
        .map(|&n: &usize| {
            (0..n)
                .map(|i| char::from(b'!' + ((i + n) % 94) as u8))
                .collect()
        })
        .collect();
    for (n, id) in ids.iter().enumerate() {
        let owner = BackendId::new(n as u16, 0);
        if !learn(t, &key(0, KeyKind::Session, id), owner, None, now) {
            return;
        }
    }
    for (n, id) in ids.iter().enumerate() {
        let k = key(0, KeyKind::Session, id);
        assert_eq!(
            t.get(&k, now).map(|e| e.owner),
            Some(BackendId::new(n as u16, 0))
        );
        // A prefix is another key.
        if id.len() > 1 {
            assert!(
                t.get(&key(0, KeyKind::Session, &id[..id.len() - 1]), now)
                    .is_none()
            );
        }
    }
    for (n, id) in ids.iter().enumerate() {
        let listed = t.keys_of(BackendId::new(n as u16, 0), 10);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id(), id);
        assert!(t.remove(&key(0, KeyKind::Session, id), None).is_some());
    }
    assert_eq!(t.occupancy().len, 0);
}

fn capacity_is_never_exceeded(t: &dyn SessionTable, now: Instant) {
    let Some(capacity) = t.occupancy().capacity else {
        return;
    };
    if capacity > 10_000 {
        return;
    }
    for i in 0..capacity + 10 {
        let id = format!("k{i}");
        match t.insert(&key(0, KeyKind::Session, &id), A, None, now) {
            Ok(Insert::Added { .. }) | Err(InsertError::Full { .. } | InsertError::Disabled) => {}
            Ok(other) => panic!("insert of a new key answered {other:?}"),
        }
        assert!(
            t.occupancy().len <= capacity,
            "{} entries over a capacity of {capacity}",
            t.occupancy().len
        );
    }
}
