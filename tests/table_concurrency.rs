//! Readers look keys up while writers insert, remove and expire others: nothing stable is lost,
//! nothing deadlocks, and the counts add up once every thread is done.
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mcp_affinity::table::{Insert, Key, KeyKind, MemoryTable, MemoryTableConfig, SessionTable};
use mcp_affinity::{BackendId, TenantId};

const STABLE: usize = 2_000;
const READ_ROUNDS: u64 = 20;
const MAX_CHURN_ROUNDS: usize = 1_000_000;
const OWNERS: u16 = 4;

fn id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:08x}-7b1d-4c6f-9e7a-0123456789ab")
}

fn key(id: &str) -> Key<'_> {
    Key::new(
        TenantId::new((id.len() % 3) as u16),
        KeyKind::Session,
        id.as_bytes(),
    )
    .unwrap()
}

fn owner_of(i: usize) -> BackendId {
    BackendId::new((i % OWNERS as usize) as u16, 0)
}

#[test]
fn readers_never_lose_stable_keys_while_writers_churn() {
    let table = MemoryTable::with_config(
        MemoryTableConfig::new()
            .with_shards(8)
            .with_idle_ttl(Some(Duration::from_secs(60))),
    );
    let start = Instant::now();
    let stable: Vec<String> = (0..STABLE).map(|i| id("stable", i)).collect();
    for (i, id) in stable.iter().enumerate() {
        assert!(matches!(
            table.insert(&key(id), owner_of(i), None, start),
            Ok(Insert::Added { .. })
        ));
        // An open stream: the sweeper must never take these.
        table.open_stream(&key(id), start).unwrap();
    }

    // The writers go on until both readers are done (bounded by MAX_CHURN_ROUNDS), so every
    // read overlaps with writes; the readers go on past READ_ROUNDS until the writer has
    // written and the sweeper evicted (bounded in time: on two busy cores a reader can finish
    // its rounds before the others are first scheduled).
    let readers_done = AtomicUsize::new(0);
    let (wrote, swept) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        for reader in 0..2 {
            let (table, stable, readers_done, barrier) = (&table, &stable, &readers_done, &barrier);
            let (wrote, swept) = (&wrote, &swept);
            s.spawn(move || {
                barrier.wait();
                let churned =
                    || wrote.load(Ordering::Relaxed) > 0 && swept.load(Ordering::Relaxed) > 0;
                let mut round = 0;
                while round < READ_ROUNDS || (!churned() && Instant::now() < deadline) {
                    for (i, id) in stable.iter().enumerate().skip(reader).step_by(2) {
                        let now = start + Duration::from_secs(round);
                        let entry = table.get(&key(id), now).expect("a stable key vanished");
                        assert_eq!(entry.owner, owner_of(i));
                    }
                    round += 1;
                }
                readers_done.fetch_add(1, Ordering::Relaxed);
            });
        }
        let (table, barrier, readers_done) = (&table, &barrier, &readers_done);
        let (wrote, swept) = (&wrote, &swept);
        let writer = s.spawn(move || {
            barrier.wait();
            let mut live = Vec::new();
            let mut round = 0;
            while readers_done.load(Ordering::Relaxed) < 2 && round < MAX_CHURN_ROUNDS {
                let now = start + Duration::from_millis(round as u64 * 10);
                let churn = id("churn", round);
                assert!(matches!(
                    table.insert(&key(&churn), owner_of(round), None, now),
                    Ok(Insert::Added { .. })
                ));
                live.push(churn);
                if round % 3 == 0 {
                    let gone = live.swap_remove(round % live.len());
                    table.remove(&key(&gone), None);
                }
                round += 1;
                wrote.store(round, Ordering::Relaxed);
            }
            round
        });
        let sweeper = s.spawn(move || {
            barrier.wait();
            let mut evicted = 0;
            let mut round = 0;
            while readers_done.load(Ordering::Relaxed) < 2 && round < MAX_CHURN_ROUNDS {
                // Time runs faster here: churn keys expire while stable ones are streaming.
                let now = start + Duration::from_secs(round as u64);
                evicted += table.evict_idle(now, 64).evicted;
                swept.store(evicted, Ordering::Relaxed);
                round += 1;
            }
            evicted
        });
        let rounds = writer.join().unwrap();
        let evicted = sweeper.join().unwrap();
        assert!(
            rounds > 0 && evicted > 0,
            "the writers did run ({rounds} rounds, {evicted} evicted)"
        );
    });

    // Every stable key is there, with its owner.
    for (i, id) in stable.iter().enumerate() {
        assert_eq!(
            table.get(&key(id), start).map(|e| e.owner),
            Some(owner_of(i))
        );
    }
    // The counts add up: per owner, per tenant, and in total, and they match what is listed.
    let len = table.occupancy().len;
    let by_owner: usize = (0..OWNERS)
        .map(|o| table.count_owner(BackendId::new(o, 0)))
        .sum();
    let by_tenant: usize = (0..3).map(|t| table.count_tenant(TenantId::new(t))).sum();
    let listed: usize = (0..OWNERS)
        .map(|o| table.keys_of(BackendId::new(o, 0), usize::MAX).len())
        .sum();
    assert_eq!(by_owner, len);
    assert_eq!(by_tenant, len);
    assert_eq!(listed, len);
    assert!(len >= STABLE);
}

/// An owner removed over and over while other threads add and remove its keys in every
/// shard (the table-wide count is retired at zero and made afresh; each shard keeps a handle
/// on it): once every thread is done, the owner's count is exactly the keys it still has.
#[test]
fn an_owner_removed_while_its_keys_come_and_go_keeps_an_exact_count() {
    const WRITERS: usize = 3;
    const ROUNDS: usize = 20_000;
    let table = MemoryTable::with_config(MemoryTableConfig::new().with_shards(4));
    let owner = BackendId::new(1, 0);
    let now = Instant::now();
    let barrier = Barrier::new(WRITERS + 1);
    let (removals, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let kept: Vec<Vec<String>> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (table, barrier, done) = (&table, &barrier, &done);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for round in 0..ROUNDS {
                        let id = id(&format!("w{w}"), round);
                        if table.insert(&key(&id), owner, None, now).is_ok() {
                            mine.push(id);
                        }
                        // Remove one of the writer's keys about every other round.
                        if round % 2 == 1 {
                            if let Some(old) = mine.pop() {
                                table.remove(&key(&old), None);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    mine
                })
            })
            .collect();
        let (table, barrier, removals, done) = (&table, &barrier, &removals, &done);
        s.spawn(move || {
            barrier.wait();
            let deadline = Instant::now() + Duration::from_secs(20);
            while done.load(Ordering::Relaxed) < WRITERS && Instant::now() < deadline {
                table.remove_owner(owner);
                removals.fetch_add(1, Ordering::Relaxed);
            }
        });
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    // What the owner's removals did not take is still there.
    let left = kept
        .iter()
        .flatten()
        .filter(|id| table.get(&key(id), now).is_some())
        .count();
    assert!(
        removals.load(Ordering::Relaxed) > 10,
        "the owner was removed during the churn"
    );
    assert_eq!(table.count_owner(owner), left, "the count is the keys left");
    assert_eq!(table.occupancy().len, left);
    // And the count goes on counting: one more key, then none.
    let extra = id("extra", 0);
    let added = table.insert(&key(&extra), owner, None, now);
    assert!(matches!(added, Ok(Insert::Added { .. })), "{added:?}");
    assert_eq!(table.count_owner(owner), left + 1);
    assert_eq!(table.remove_owner(owner), left + 1);
    assert_eq!(table.count_owner(owner), 0);
}
