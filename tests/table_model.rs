//! Model test: random operation sequences applied to `MemoryTable` and to a plain `HashMap`
//! model of the contract give the same answers, counts included.
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mcp_affinity::table::{
    Insert, Key, KeyKind, MemoryTable, MemoryTableConfig, Principal, SessionTable, SetOwnerError,
};
use mcp_affinity::{BackendId, TenantId};
use proptest::prelude::*;

const TTL: u64 = 100;

/// A small pool of keys so that operations collide: two tenants, two kinds, short and long ids
/// (longer than the 37 bytes kept inline), and ids that are prefixes of others.
fn pool() -> Vec<(u16, KeyKind, String)> {
    let ids = [
        "a".to_owned(),
        "ab".to_owned(),
        "4f2a9c1e-77b0-4c1a-9d3e-2b8f6a0c5d11".to_owned(),
        "x".repeat(38),
        "y".repeat(200),
    ];
    let mut keys = Vec::new();
    for tenant in 0..2 {
        for kind in [KeyKind::Session, KeyKind::Task] {
            for id in &ids {
                keys.push((tenant, kind, id.clone()));
            }
        }
    }
    keys
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        key: usize,
        owner: u16,
        principal: Option<u64>,
    },
    Get {
        key: usize,
    },
    Remove {
        key: usize,
        owner: Option<u16>,
    },
    SetOwner {
        key: usize,
        expected: u16,
        new: u16,
    },
    Open {
        key: usize,
    },
    Close {
        key: usize,
    },
    RemoveOwner {
        owner: u16,
    },
    Advance {
        secs: u64,
    },
    Evict,
    EvictSome {
        budget: usize,
    },
}

fn op(keys: usize) -> impl Strategy<Value = Op> {
    let key = 0..keys;
    let owner = 0u16..4;
    prop_oneof![
        4 => (key.clone(), owner.clone(), prop::option::of(0u64..3))
            .prop_map(|(key, owner, principal)| Op::Insert { key, owner, principal }),
        4 => key.clone().prop_map(|key| Op::Get { key }),
        2 => (key.clone(), prop::option::of(owner.clone()))
            .prop_map(|(key, owner)| Op::Remove { key, owner }),
        1 => (key.clone(), owner.clone(), owner.clone())
            .prop_map(|(key, expected, new)| Op::SetOwner { key, expected, new }),
        1 => key.clone().prop_map(|key| Op::Open { key }),
        1 => key.prop_map(|key| Op::Close { key }),
        1 => owner.prop_map(|owner| Op::RemoveOwner { owner }),
        2 => (0u64..80).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Evict),
        1 => (1usize..6).prop_map(|budget| Op::EvictSome { budget }),
    ]
}

#[derive(Clone, Debug)]
struct Model {
    owner: u16,
    principal: Option<u64>,
    streams: u32,
    used: u64,
}

fn backend(owner: u16) -> BackendId {
    // Owners 0 and 2 are two generations of one slot: different owners all the same.
    BackendId::new(owner % 2, owner / 2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn memory_table_behaves_like_the_model(ops in prop::collection::vec(op(20), 1..120), shards in 0usize..3) {
        let keys = pool();
        let table = MemoryTable::with_config(
            MemoryTableConfig::new()
                .with_shards(1 << (shards * 2))
                .with_idle_ttl(Some(Duration::from_secs(TTL))),
        );
        let mut model: HashMap<usize, Model> = HashMap::new();
        let start = Instant::now();
        let mut secs = 0u64;

        for op in ops {
            let now = start + Duration::from_secs(secs);
            let k = |i: usize| {
                let (tenant, kind, id) = &keys[i];
                Key::new(TenantId::new(*tenant), *kind, id.as_bytes()).unwrap()
            };
            match op {
                Op::Insert { key, owner, principal } => {
                    let got = table.insert(&k(key), backend(owner), principal.map(Principal::new), now);
                    match model.get(&key) {
                        Some(m) => match got {
                            Ok(Insert::Exists(e)) => prop_assert_eq!(e.owner, backend(m.owner)),
                            other => prop_assert!(false, "expected Exists, got {:?}", other),
                        },
                        None => {
                            prop_assert_eq!(got, Ok(Insert::Added { evicted: false }));
                            model.insert(key, Model { owner, principal, streams: 0, used: secs });
                        }
                    }
                }
                Op::Get { key } => {
                    let got = table.get(&k(key), now);
                    let expected = model.get_mut(&key).map(|m| {
                        m.used = secs;
                        (backend(m.owner), m.principal.map(Principal::new), m.streams)
                    });
                    prop_assert_eq!(got.map(|e| (e.owner, e.principal, e.streams)), expected);
                }
                Op::Remove { key, owner } => {
                    let got = table.remove(&k(key), owner.map(backend));
                    let matches = model
                        .get(&key)
                        .is_some_and(|m| owner.is_none_or(|o| backend(o) == backend(m.owner)));
                    let expected = if matches { model.remove(&key).map(|m| backend(m.owner)) } else { None };
                    prop_assert_eq!(got.map(|e| e.owner), expected);
                }
                Op::SetOwner { key, expected, new } => {
                    let got = table.set_owner(&k(key), backend(expected), backend(new), now);
                    match model.get_mut(&key) {
                        None => prop_assert_eq!(got, Err(SetOwnerError::NotFound)),
                        Some(m) if backend(m.owner) != backend(expected) => match got {
                            Err(SetOwnerError::OwnerChanged(e)) => prop_assert_eq!(e.owner, backend(m.owner)),
                            other => prop_assert!(false, "expected OwnerChanged, got {:?}", other),
                        },
                        Some(m) => {
                            m.owner = new;
                            m.used = secs;
                            prop_assert_eq!(got.map(|e| e.owner), Ok(backend(new)));
                        }
                    }
                }
                Op::Open { key } | Op::Close { key } => {
                    let open = matches!(op, Op::Open { .. });
                    let got = if open { table.open_stream(&k(key), now) } else { table.close_stream(&k(key), now) };
                    let expected = model.get_mut(&key).map(|m| {
                        m.streams = if open { m.streams + 1 } else { m.streams.saturating_sub(1) };
                        m.used = secs;
                        m.streams
                    });
                    prop_assert_eq!(got.map(|e| e.streams), expected);
                }
                Op::RemoveOwner { owner } => {
                    let got = table.remove_owner(backend(owner));
                    let before = model.len();
                    model.retain(|_, m| backend(m.owner) != backend(owner));
                    prop_assert_eq!(got, before - model.len());
                }
                Op::Advance { secs: step } => secs += step,
                Op::Evict => {
                    let got = table.evict_idle(now, usize::MAX);
                    let before = model.len();
                    model.retain(|_, m| m.streams > 0 || secs - m.used < TTL);
                    prop_assert_eq!(got.evicted, before - model.len());
                }
                Op::EvictSome { budget } => {
                    // Which entries a small budget reaches is the table's business; what it
                    // removes must have been expired, and it must keep to the budget.
                    let got = table.evict_idle(now, budget);
                    prop_assert!(got.evicted <= got.examined && got.examined <= budget);
                    let mut gone = 0;
                    let mut stale = Vec::new();
                    for (i, m) in &model {
                        let (tenant, kind, id) = &keys[*i];
                        let key = Key::new(TenantId::new(*tenant), *kind, id.as_bytes()).unwrap();
                        if table.count_tenant(TenantId::new(*tenant)) == 0 || table.keys_of(backend(m.owner), usize::MAX).iter().all(|k| k.as_key() != key) {
                            prop_assert!(m.streams == 0 && secs - m.used >= TTL, "evicted a live entry");
                            stale.push(*i);
                            gone += 1;
                        }
                    }
                    for i in stale {
                        model.remove(&i);
                    }
                    prop_assert_eq!(got.evicted, gone);
                }
            }
            // Counts agree with the model after every step.
            prop_assert_eq!(table.occupancy().len, model.len());
            for owner in 0..4 {
                let expected = model.values().filter(|m| backend(m.owner) == backend(owner)).count();
                prop_assert_eq!(table.count_owner(backend(owner)), expected);
                let mut listed: Vec<_> = table.keys_of(backend(owner), usize::MAX).iter().map(|k| k.id().to_owned()).collect();
                listed.sort();
                let mut expected: Vec<_> = model.iter().filter(|(_, m)| backend(m.owner) == backend(owner)).map(|(i, _)| keys[*i].2.clone()).collect();
                expected.sort();
                prop_assert_eq!(listed, expected);
            }
            for tenant in 0..2 {
                let expected = model.keys().filter(|i| keys[**i].0 == tenant).count();
                prop_assert_eq!(table.count_tenant(TenantId::new(tenant)), expected);
            }
        }
    }
}
