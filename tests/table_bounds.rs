//! The bounds of a `MemoryTable` that protect backend-minted keys from client-chosen ones.
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::time::{Duration, Instant};

use mcp_affinity::table::{
    Insert, InsertError, Key, KeyKind, MemoryTable, MemoryTableConfig, Scope, SessionTable,
};
use mcp_affinity::{BackendId, TenantId};

fn key(kind: KeyKind, id: &str) -> Key<'_> {
    Key::new(TenantId::DEFAULT, kind, id.as_bytes()).unwrap()
}

#[test]
fn the_operator_capacity_defaults_to_an_eighth_and_never_exceeds_the_capacity() {
    let config = MemoryTableConfig::new().with_capacity(64);
    assert_eq!(config.operator_capacity(), 8);
    assert_eq!(config.with_operator_capacity(1000).operator_capacity(), 64);
}

#[test]
fn operator_keys_evict_only_operator_keys() {
    let table = MemoryTable::with_config(
        MemoryTableConfig::new()
            .with_capacity(32)
            .with_operator_capacity(4)
            .with_shards(1),
    );
    let owner = BackendId::from_bits(1);
    let start = Instant::now();
    // Sessions fill most of the table, long idle.
    for i in 0..28 {
        let id = format!("s{i}");
        let added = table.insert(&key(KeyKind::Session, &id), owner, None, start);
        assert_eq!(added, Ok(Insert::Added { evicted: false }));
    }
    // Fresh operator values, each newer than every session: past their bound of four, they
    // evict each other, never a session.
    let mut evictions = 0;
    for i in 0..200 {
        let id = format!("w{i}");
        let now = start + Duration::from_secs(10 + i);
        match table.insert(&key(KeyKind::Operator, &id), owner, None, now) {
            Ok(Insert::Added { evicted }) => evictions += usize::from(evicted),
            other => panic!("w{i}: {other:?}"),
        }
    }
    assert_eq!(evictions, 196);
    assert_eq!(table.occupancy().len, 32);
    let later = start + Duration::from_secs(300);
    for i in 0..28 {
        let id = format!("s{i}");
        assert!(
            table.get(&key(KeyKind::Session, &id), later).is_some(),
            "s{i} evicted"
        );
    }
    // Sessions still evict the oldest entries, whatever their kind (here: sessions).
    let added = table.insert(&key(KeyKind::Session, "late"), owner, None, later);
    assert_eq!(added, Ok(Insert::Added { evicted: true }));
}

#[test]
fn an_operator_key_that_finds_only_sessions_to_evict_is_refused() {
    let table = MemoryTable::with_config(
        MemoryTableConfig::new()
            .with_capacity(16)
            .with_operator_capacity(8)
            .with_shards(1),
    );
    let owner = BackendId::from_bits(1);
    let now = Instant::now();
    for i in 0..16 {
        let id = format!("s{i}");
        let added = table.insert(&key(KeyKind::Session, &id), owner, None, now);
        assert_eq!(added, Ok(Insert::Added { evicted: false }));
    }
    let refused = table.insert(&key(KeyKind::Operator, "w"), owner, None, now);
    assert_eq!(
        refused,
        Err(InsertError::Full {
            scope: Scope::Operator
        })
    );
    assert_eq!(table.occupancy().len, 16);
    // The refusal gave its reservation back: with room again, an operator key goes in.
    assert!(table.remove(&key(KeyKind::Session, "s0"), None).is_some());
    let added = table.insert(&key(KeyKind::Operator, "w"), owner, None, now);
    assert_eq!(added, Ok(Insert::Added { evicted: false }));
}

/// A table of `shards` shards holding the sessions `k0` to `k999`, all of one owner.
fn scanned_table(shards: usize) -> (MemoryTable, Vec<String>, BackendId) {
    let table = MemoryTable::with_config(MemoryTableConfig::new().with_shards(shards));
    let now = Instant::now();
    let owner = BackendId::from_bits(1);
    let ids: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    for id in &ids {
        let added = table.insert(&key(KeyKind::Session, id), owner, None, now);
        assert_eq!(added, Ok(Insert::Added { evicted: false }));
    }
    (table, ids, owner)
}

#[test]
fn a_scan_in_small_steps_visits_every_entry_once() {
    let (table, ids, owner) = scanned_table(8);
    let (mut cursor, mut seen, mut calls) = (0, Vec::new(), 0);
    loop {
        calls += 1;
        let done = table.scan(&mut cursor, 7, &mut |key, entry| {
            assert_eq!(entry.owner, owner);
            seen.push(key.id().to_string());
        });
        if done {
            break;
        }
        assert!(calls < 1000, "the pass never ends");
    }
    assert_eq!(cursor, 0);
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(
        calls >= 1000 / 7,
        "{calls} calls for 1000 entries, 7 at a time"
    );
}

/// The router reseeds a shared store with a pass of `scan` calls, between which keys are
/// removed (sessions ended, idle ones evicted, a backend's keys dropped). A removal moves the
/// table's last slot into the hole; a pass must still show every entry that stayed.
#[test]
fn a_scan_shows_every_entry_that_stays_whatever_is_removed_between_calls() {
    for shards in [1, 8] {
        let (table, ids, _) = scanned_table(shards);
        let mut removed = std::collections::HashSet::new();
        let (mut cursor, mut seen, mut calls) = (0, std::collections::HashSet::new(), 0);
        loop {
            calls += 1;
            let done = table.scan(&mut cursor, 7, &mut |key, _| {
                seen.insert(key.id().to_string());
            });
            if done {
                break;
            }
            // Two removals a call, spread over the keys (shown already or not).
            for id in [&ids[calls * 7 % 1000], &ids[calls * 13 % 1000]] {
                if table.remove(&key(KeyKind::Session, id), None).is_some() {
                    removed.insert(id.clone());
                }
            }
            assert!(calls < 1000, "the pass never ends");
        }
        let missed: Vec<&String> = ids
            .iter()
            .filter(|id| !removed.contains(*id) && !seen.contains(*id))
            .collect();
        assert!(!removed.is_empty());
        assert!(
            missed.is_empty(),
            "{shards} shards: never shown: {missed:?}"
        );
    }
}
