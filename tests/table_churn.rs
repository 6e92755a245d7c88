//! `MemoryTable` under sustained churn with thousands of keys: every shard grows, moves its
//! entries and reuses the room of removed ones many times over, with principals, long ids,
//! owner changes and whole-owner removals, and the table still agrees with a plain map on
//! every key, owner, principal, count and listing.
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mcp_affinity::table::{
    Insert, Key, KeyKind, MemoryTable, MemoryTableConfig, Principal, SessionTable,
};
use mcp_affinity::{BackendId, TenantId};

const OWNERS: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Model {
    owner: u32,
    principal: Option<u64>,
    streams: u32,
}

/// Deterministic ids: UUID-like (inline), short, and longer than the 37 bytes kept inline.
fn id(i: u64) -> String {
    match i % 7 {
        0 => format!("long-{i:040x}"),
        1 => format!("s{i}"),
        _ => format!("{:08x}-77b0-4c1a-9d3e-{:012x}", i as u32, i),
    }
}

fn key(id: &str, i: u64) -> Key<'_> {
    let kind = if i % 5 == 0 {
        KeyKind::Task
    } else {
        KeyKind::Session
    };
    Key::new(TenantId::new((i % 3) as u16), kind, id.as_bytes()).unwrap()
}

fn owner(bits: u32) -> BackendId {
    BackendId::from_bits(bits)
}

fn check_all(table: &MemoryTable, model: &HashMap<u64, Model>, now: Instant) {
    for (&i, m) in model {
        let id = id(i);
        let entry = table
            .get(&key(&id, i), now)
            .unwrap_or_else(|| panic!("key {i} lost"));
        assert_eq!(entry.owner, owner(m.owner), "owner of {i}");
        assert_eq!(
            entry.principal,
            m.principal.map(Principal::new),
            "principal of {i}"
        );
        assert_eq!(entry.streams, m.streams, "streams of {i}");
    }
    assert_eq!(table.occupancy().len, model.len());
    for o in 0..OWNERS {
        let mut listed: Vec<String> = table
            .keys_of(owner(o), usize::MAX)
            .iter()
            .map(|k| {
                format!(
                    "{}/{}/{}",
                    k.as_key().tenant().get(),
                    k.as_key().kind(),
                    k.id()
                )
            })
            .collect();
        listed.sort();
        let mut expected: Vec<String> = model
            .iter()
            .filter(|(_, m)| m.owner == o)
            .map(|(&i, _)| {
                let id = id(i);
                let k = key(&id, i);
                format!("{}/{}/{}", k.tenant().get(), k.kind(), k.id())
            })
            .collect();
        expected.sort();
        assert_eq!(listed, expected, "keys of owner {o}");
        assert_eq!(
            table.count_owner(owner(o)),
            expected.len(),
            "count of owner {o}"
        );
    }
    for t in 0..3u16 {
        let expected = model.keys().filter(|&&i| i % 3 == u64::from(t)).count();
        assert_eq!(
            table.count_tenant(TenantId::new(t)),
            expected,
            "count of tenant {t}"
        );
    }
}

fn churn(shards: usize) {
    let table = MemoryTable::with_config(
        MemoryTableConfig::new()
            .with_shards(shards)
            .with_idle_ttl(Some(Duration::from_secs(60))),
    );
    let start = Instant::now();
    let mut model: HashMap<u64, Model> = HashMap::new();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut next = 0u64;
    for step in 0..40_000u64 {
        let now = start + Duration::from_millis(step);
        let r = random();
        // Grow to about 6,000 keys, then hold the size while keys come and go.
        let grow = model.len() < 6_000;
        match r % 10 {
            0..=3 if grow || r % 20 < 9 => {
                let i = next;
                next += 1;
                let (o, p) = ((r >> 8) as u32 % OWNERS, (r >> 16) % 4);
                let principal = (p > 0).then_some(p);
                let id = id(i);
                let got = table.insert(&key(&id, i), owner(o), principal.map(Principal::new), now);
                assert_eq!(got, Ok(Insert::Added { evicted: false }));
                model.insert(
                    i,
                    Model {
                        owner: o,
                        principal,
                        streams: 0,
                    },
                );
            }
            0..=5 if !model.is_empty() => {
                // Remove a key inserted a while ago (the oldest-ish still there).
                let i = next.saturating_sub(1 + (r >> 8) % 8_000);
                let id = id(i);
                let got = table.remove(&key(&id, i), None).map(|e| e.owner);
                assert_eq!(got, model.remove(&i).map(|m| owner(m.owner)), "remove {i}");
            }
            6 if next > 0 => {
                let i = (r >> 8) % next;
                let id = id(i);
                let got = table.open_stream(&key(&id, i), now).map(|e| e.streams);
                let expected = model.get_mut(&i).map(|m| {
                    m.streams += 1;
                    m.streams
                });
                assert_eq!(got, expected, "open {i}");
            }
            7 if next > 0 => {
                let i = (r >> 8) % next;
                let id = id(i);
                let (from, to) = ((r >> 16) as u32 % OWNERS, (r >> 24) as u32 % OWNERS);
                let got = table.set_owner(&key(&id, i), owner(from), owner(to), now);
                match model.get_mut(&i) {
                    Some(m) if m.owner == from => {
                        m.owner = to;
                        assert_eq!(got.map(|e| e.owner), Ok(owner(to)));
                    }
                    Some(_) => assert!(got.is_err(), "set_owner {i} with the wrong owner"),
                    None => assert!(got.is_err(), "set_owner {i} unknown"),
                }
            }
            8 if step % 997 == 0 => {
                let o = (r >> 8) as u32 % OWNERS;
                let before = model.len();
                model.retain(|_, m| m.owner != o);
                assert_eq!(table.remove_owner(owner(o)), before - model.len());
            }
            _ => {
                if next > 0 {
                    let i = (r >> 8) % next;
                    let id = id(i);
                    let got = table.get(&key(&id, i), now).map(|e| e.owner);
                    assert_eq!(got, model.get(&i).map(|m| owner(m.owner)), "get {i}");
                }
            }
        }
        if step % 8_000 == 7_999 {
            check_all(&table, &model, now);
        }
    }
    let end = start + Duration::from_millis(40_000);
    check_all(&table, &model, end);
    // Everything without an open stream expires; a budgeted sweep gets there.
    let later = end + Duration::from_secs(3600);
    let mut evicted = 0;
    for _ in 0..1_000 {
        evicted += table.evict_idle(later, 97).evicted;
    }
    let streaming = model.values().filter(|m| m.streams > 0).count();
    assert_eq!(evicted, model.len() - streaming);
    model.retain(|_, m| m.streams > 0);
    check_all(&table, &model, later);
}

#[test]
fn one_shard_keeps_every_key_through_rebuilds_and_churn() {
    churn(1);
}

#[test]
fn eight_shards_keep_every_key_through_rebuilds_and_churn() {
    churn(8);
}
