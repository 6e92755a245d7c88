//! A randomised concurrent driver for `MemoryTable`'s counts and bounds: threads run random
//! inserts (plain, streaming, operator keys, long ids), owner moves, removals, stream opens
//! and releases, owner removals and idle sweeps on small tables (1, 2 or 4 shards, bounds
//! that keep them full); once they are done, every count (`occupancy`, `count_owner`,
//! `count_tenant`, `keys_of`) is checked against a full scan, and every bound against what
//! the table holds. Written by the adversarial review of the shards' handles on the counts.
//!
//! Each test stops after `DRIVER_ITERS` runs or `DRIVER_SECS` seconds (20 and 5 by default);
//! `DRIVER_THREADS`, `DRIVER_OPS`, `DRIVER_SEED`, `DRIVER_KEYS`, `DRIVER_ROUNDS` and
//! `DRIVER_VERBOSE=1` tune it for a longer hunt. The default runs (about half a second in a
//! release build) are a broad check, not a hunt: the review found an owner's count retired
//! without its atomic check only in 30-second hunts (`DRIVER_ITERS=1000000 DRIVER_SECS=30`);
//! that interleaving is played deterministically by a unit test in `src/table/memory.rs`.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mcp_affinity::table::{
    Insert, InsertError, Key, KeyKind, MemoryTable, MemoryTableConfig, SessionTable,
};
use mcp_affinity::{BackendId, TenantId};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `run(iteration, threads)` up to `DRIVER_ITERS` times or for `DRIVER_SECS` seconds (20
/// and 5 by default), on `DRIVER_THREADS` threads, and says how many runs it made.
fn repeat(name: &str, default_threads: u64, mut run: impl FnMut(u64, usize)) {
    let iters = env("DRIVER_ITERS", 20);
    let threads = env("DRIVER_THREADS", default_threads) as usize;
    let deadline = Instant::now() + Duration::from_secs(env("DRIVER_SECS", 5));
    let mut runs = 0;
    while runs < iters && Instant::now() <= deadline {
        run(runs, threads);
        runs += 1;
    }
    eprintln!("{name}: {runs} runs of {threads} threads");
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OWNERS: u16 = 4;
const GENS: u16 = 2;
const TENANTS: u16 = 3;

fn owner(n: u64) -> BackendId {
    let n = n % (OWNERS as u64 * GENS as u64);
    BackendId::new((n % OWNERS as u64) as u16, (n / OWNERS as u64) as u16)
}

fn all_owners() -> Vec<BackendId> {
    (0..OWNERS as u64 * GENS as u64).map(owner).collect()
}

#[derive(Default, Debug)]
struct Truth {
    total: usize,
    owners: HashMap<BackendId, usize>,
    tenants: HashMap<u16, usize>,
    operators: usize,
}

fn truth(table: &MemoryTable) -> Truth {
    let mut t = Truth::default();
    let mut cursor = 0;
    loop {
        let done = table.scan(&mut cursor, usize::MAX, &mut |key, entry| {
            t.total += 1;
            *t.owners.entry(entry.owner).or_default() += 1;
            *t.tenants.entry(key.tenant().get()).or_default() += 1;
            if key.kind() == KeyKind::Operator {
                t.operators += 1;
            }
        });
        if done {
            break;
        }
    }
    t
}

fn check(table: &MemoryTable, cfg: &MemoryTableConfig, what: &str) -> Truth {
    let t = truth(table);
    let mut errs = Vec::new();
    if table.occupancy().len != t.total {
        errs.push(format!(
            "len {} != entries {}",
            table.occupancy().len,
            t.total
        ));
    }
    for o in all_owners() {
        let want = t.owners.get(&o).copied().unwrap_or(0);
        let got = table.count_owner(o);
        let listed = table.keys_of(o, usize::MAX).len();
        if got != want || listed != want {
            errs.push(format!(
                "owner {o:?}: count {got} (0x{got:x}), listed {listed}, entries {want}"
            ));
        }
    }
    for tn in 0..TENANTS {
        let want = t.tenants.get(&tn).copied().unwrap_or(0);
        let got = table.count_tenant(TenantId::new(tn));
        if got != want {
            errs.push(format!(
                "tenant {tn}: count {got} (0x{got:x}), entries {want}"
            ));
        }
        if want > cfg.tenant_capacity() {
            errs.push(format!(
                "tenant {tn}: {want} entries > bound {}",
                cfg.tenant_capacity()
            ));
        }
    }
    if t.total > cfg.capacity() {
        errs.push(format!("{} entries > capacity {}", t.total, cfg.capacity()));
    }
    if t.operators > cfg.operator_capacity() {
        errs.push(format!(
            "{} operator entries > bound {}",
            t.operators,
            cfg.operator_capacity()
        ));
    }
    assert!(errs.is_empty(), "{what}: {errs:#?}\ntruth {t:?}");
    t
}

fn key_of(n: u64, buf: &mut String) -> Key<'_> {
    use std::fmt::Write;
    buf.clear();
    // Operator keys: about 1 in 8.
    let kind = if n % 8 == 7 {
        KeyKind::Operator
    } else {
        KeyKind::Session
    };
    let tenant = TenantId::new(((n / 8) % TENANTS as u64) as u16);
    // Some long ids (out of line), most inline.
    if n % 5 == 0 {
        write!(buf, "long-{n:060}").unwrap();
    } else {
        write!(buf, "k{n}").unwrap();
    }
    Key::new(tenant, kind, buf.as_bytes()).unwrap()
}

/// After the churn: the counts must keep counting. Empties the table owner by owner, then
/// refills it and checks the bounds are exactly where they were (no count leaked).
fn afterwards(table: &MemoryTable, cfg: &MemoryTableConfig, start: Instant, what: &str) {
    let t = check(table, cfg, what);
    let mut removed = 0;
    for o in all_owners() {
        removed += table.remove_owner(o);
        assert_eq!(table.count_owner(o), 0, "{what}: after remove_owner {o:?}");
    }
    assert_eq!(removed, t.total, "{what}: remove_owner took all");
    check(table, cfg, &format!("{what} (emptied)"));
    // Refill: tenant by tenant, streaming (not evictable), until full: exactly the bounds
    // (a leaked count would refuse early, a lost one let more in).
    let far = start + Duration::from_secs(1_000_000);
    let limit = cfg.capacity().min(2048);
    let mut added = 0;
    for tn in 0..TENANTS {
        for i in 0..limit + 1 {
            let id = format!("refill-{tn}-{i}");
            let k = Key::new(TenantId::new(tn), KeyKind::Session, id.as_bytes()).unwrap();
            match table.insert_streaming(&k, owner(i as u64), None, far) {
                Ok(Insert::Added { evicted: false }) => added += 1,
                Ok(other) => panic!("{what}: refill {other:?}"),
                Err(_) => break,
            }
        }
    }
    let t = check(table, cfg, &format!("{what} (refilled)"));
    assert_eq!(t.total, added);
    let want = cfg
        .capacity()
        .min(cfg.tenant_capacity().min(limit + 1) * TENANTS as usize);
    assert_eq!(
        t.total, want,
        "{what}: refill got {} of {want} ({t:?})",
        t.total
    );
    for o in all_owners() {
        table.remove_owner(o);
    }
    check(table, cfg, &format!("{what} (emptied again)"));
    assert_eq!(table.occupancy().len, 0);
}

fn one_run(seed: u64, threads: usize, ops: usize, shards: usize, cfg: MemoryTableConfig) {
    let cfg = cfg.with_shards(shards);
    let table = MemoryTable::with_config(cfg.clone());
    let start = Instant::now();
    let clock = AtomicU64::new(0);
    let keyspace = env("DRIVER_KEYS", 96);
    let barrier = Barrier::new(threads);
    let counts: Vec<AtomicUsize> = (0..12).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (table, clock, barrier, counts) = (&table, &clock, &barrier, &counts);
            s.spawn(move || {
                let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
                    | 1);
                let mut buf = String::new();
                barrier.wait();
                for _ in 0..ops {
                    let now = start + Duration::from_millis(clock.load(Ordering::Relaxed));
                    let k = key_of(rng.below(keyspace), &mut buf);
                    let op = rng.below(100);
                    let which = match op {
                        0..=24 => {
                            let _ = table.insert(&k, owner(rng.next()), None, now);
                            0
                        }
                        25..=34 => {
                            let _ = table.insert_streaming(&k, owner(rng.next()), None, now);
                            1
                        }
                        35..=54 => {
                            // Move between owners, often the expected one right.
                            let expected = match table.get(&k, now) {
                                Some(e) if rng.below(4) != 0 => e.owner,
                                _ => owner(rng.next()),
                            };
                            let _ = table.set_owner(&k, expected, owner(rng.next()), now);
                            2
                        }
                        55..=64 => {
                            let o = if rng.below(2) == 0 {
                                None
                            } else {
                                Some(owner(rng.next()))
                            };
                            table.remove(&k, o);
                            3
                        }
                        65..=71 => {
                            let o = match table.get(&k, now) {
                                Some(e) => e.owner,
                                None => owner(rng.next()),
                            };
                            table.release_stream(&k, o, now);
                            4
                        }
                        72..=75 => {
                            table.open_stream(&k, now);
                            5
                        }
                        76..=79 => {
                            table.close_stream(&k, now);
                            6
                        }
                        80..=87 => {
                            table.remove_owner(owner(rng.next()));
                            7
                        }
                        88..=93 => {
                            clock.fetch_add(rng.below(60), Ordering::Relaxed);
                            let _ = table.evict_idle(now, 1 + rng.below(40) as usize);
                            8
                        }
                        94..=97 => {
                            table.get(&k, now);
                            9
                        }
                        _ => {
                            let o = owner(rng.next());
                            table.count_owner(o);
                            table.keys_of(o, 3);
                            10
                        }
                    };
                    counts[which].fetch_add(1, Ordering::Relaxed);
                    if rng.below(64) == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        }
    });
    if env("DRIVER_VERBOSE", 0) == 1 {
        let t = truth(&table);
        let c: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        eprintln!(
            "seed {seed} shards {shards} cap {}: entries {} owners {:?} tenants {:?} ops {c:?}",
            cfg.capacity(),
            t.total,
            t.owners.len(),
            t.tenants
        );
    }
    afterwards(
        &table,
        &cfg,
        start,
        &format!("seed {seed} threads {threads} ops {ops} shards {shards} {cfg:?}"),
    );
}

#[test]
fn random_concurrent_ops_keep_exact_counts() {
    let ops = env("DRIVER_OPS", 20_000) as usize;
    let seed0 = env("DRIVER_SEED", 1);
    repeat(
        "random_concurrent_ops_keep_exact_counts",
        4,
        |i, threads| {
            let seed = seed0 + i;
            let shards = [1, 2, 4][(seed % 3) as usize];
            let cfg = match seed % 4 {
                // Small: full all the time, evicting.
                0 => MemoryTableConfig::new()
                    .with_capacity(24)
                    .with_tenant_capacity(12)
                    .with_operator_capacity(4),
                1 => MemoryTableConfig::new()
                    .with_capacity(48)
                    .with_tenant_capacity(40)
                    .with_operator_capacity(8),
                2 => MemoryTableConfig::new(),
                _ => MemoryTableConfig::new()
                    .with_capacity(8)
                    .with_tenant_capacity(3)
                    .with_operator_capacity(2),
            }
            .with_idle_ttl(Some(Duration::from_millis(100)));
            one_run(seed, threads, ops, shards, cfg);
        },
    );
}

/// Many tenants in the table; threads insert keys of one tenant at once: never more than the
/// tenant's bound, and exactly the bound once it has filled (nothing evictable: streaming).
#[test]
fn tenant_bound_under_concurrent_inserts() {
    repeat("tenant_bound", 4, |it, threads| {
        let bound = 50 + it as usize % 7;
        let cfg = MemoryTableConfig::new()
            .with_shards([1, 2, 8, 64][it as usize % 4])
            .with_capacity(100_000)
            .with_tenant_capacity(bound);
        let table = MemoryTable::with_config(cfg.clone());
        let now = Instant::now();
        // 500 other tenants, 3 keys each.
        for t in 1..=500u16 {
            for i in 0..3 {
                let id = format!("pre-{t}-{i}");
                let k = Key::new(TenantId::new(t), KeyKind::Session, id.as_bytes()).unwrap();
                let added = table.insert(&k, owner(i), None, now);
                assert!(matches!(added, Ok(Insert::Added { .. })), "{added:?}");
            }
        }
        let target = TenantId::new(250); // already has 3
        let barrier = Barrier::new(threads);
        std::thread::scope(|s| {
            for th in 0..threads {
                let (table, barrier) = (&table, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..100 {
                        let id = format!("t{th}-{i}");
                        let k = Key::new(target, KeyKind::Session, id.as_bytes()).unwrap();
                        // Half streaming (never evicted), half idle-evictable, by thread.
                        let r = if th % 2 == 0 {
                            table.insert_streaming(&k, owner(th as u64), None, now)
                        } else {
                            table.insert(&k, owner(th as u64), None, now)
                        };
                        match r {
                            Ok(Insert::Added { .. }) | Err(InsertError::Full { .. }) => {}
                            Ok(other) => panic!("fresh key: {other:?}"),
                            Err(e) => panic!("{e:?}"),
                        }
                        // A short peek at the bound, racing the others.
                        let c = table.count_tenant(target);
                        assert!(c <= bound + threads, "tenant count {c} way over {bound}");
                    }
                });
            }
        });
        let t = truth(&table);
        let have = t.tenants.get(&250).copied().unwrap_or(0);
        assert!(have <= bound, "iter {it}: {have} entries > bound {bound}");
        assert_eq!(have, bound, "iter {it}: the tenant filled up to its bound");
        assert_eq!(table.count_tenant(target), have);
        assert_eq!(table.occupancy().len, t.total);
        check(&table, &cfg, "tenant bound");
        for tn in 1..=500u16 {
            let want = t.tenants.get(&tn).copied().unwrap_or(0);
            assert_eq!(table.count_tenant(TenantId::new(tn)), want, "tenant {tn}");
        }
    });
}

/// Global capacity with inserts of fresh keys from many threads, none evictable: never more
/// than the capacity, exactly the capacity at the end.
#[test]
fn global_bound_under_concurrent_streaming_inserts() {
    repeat("global_bound", 4, |it, threads| {
        let cap = 40 + it as usize % 9;
        let cfg = MemoryTableConfig::new()
            .with_shards([1, 2, 4][it as usize % 3])
            .with_capacity(cap)
            .with_operator_capacity(cap / 3);
        let table = MemoryTable::with_config(cfg.clone());
        let now = Instant::now();
        let barrier = Barrier::new(threads);
        std::thread::scope(|s| {
            for th in 0..threads {
                let (table, barrier) = (&table, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..60u64 {
                        let id = format!("t{th}-{i}");
                        let kind = if i % 3 == 0 {
                            KeyKind::Operator
                        } else {
                            KeyKind::Session
                        };
                        let k =
                            Key::new(TenantId::new((i % 3) as u16), kind, id.as_bytes()).unwrap();
                        let _ = table.insert_streaming(&k, owner(i), None, now);
                        if i % 7 == 0 {
                            table.release_stream(&k, owner(i), now);
                        }
                    }
                });
            }
        });
        let t = check(&table, &cfg, "global bound");
        assert!(t.total <= cap);
        assert!(t.operators <= cap / 3);
    });
}

/// Two owners whose counts hover at zero: writers add a key, move it between the owners,
/// remove it; a remover removes both owners over and over. Every count exact at the end, and
/// counting on afterwards.
#[test]
fn owners_at_zero_retired_while_keys_come_and_go() {
    let rounds = env("DRIVER_ROUNDS", 5_000) as usize;
    let (x, y) = (owner(1), owner(6));
    repeat("owners_at_zero", 3, |it, threads| {
        let cfg = MemoryTableConfig::new()
            .with_shards([2, 1, 4][it as usize % 3])
            .with_idle_ttl(Some(Duration::from_millis(100)));
        let table = MemoryTable::with_config(cfg.clone());
        let start = Instant::now();
        let done = AtomicUsize::new(0);
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|s| {
            for th in 0..threads {
                let (table, barrier, done) = (&table, &barrier, &done);
                s.spawn(move || {
                    let mut rng = Rng(((it + 1) * 7919 + th as u64 * 104_729) | 1);
                    barrier.wait();
                    for r in 0..rounds {
                        let id = format!("w{th}-{}", r % 5);
                        let k =
                            Key::new(TenantId::DEFAULT, KeyKind::Session, id.as_bytes()).unwrap();
                        let (a, b) = if rng.below(2) == 0 { (x, y) } else { (y, x) };
                        let now = start;
                        match rng.below(6) {
                            0 | 1 => {
                                let _ = table.insert(&k, a, None, now);
                            }
                            2 => {
                                let _ = table.set_owner(&k, a, b, now);
                            }
                            3 => {
                                table.remove(&k, None);
                            }
                            4 => {
                                let _ = table.insert_streaming(&k, a, None, now);
                                table.release_stream(&k, a, now);
                            }
                            _ => {
                                let _ = table.evict_idle(now + Duration::from_secs(1), 4);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            let (table, barrier, done) = (&table, &barrier, &done);
            s.spawn(move || {
                barrier.wait();
                // Bounded: a writer that panics never counts itself done.
                let stop = Instant::now() + Duration::from_secs(60);
                let mut n = 0u64;
                while done.load(Ordering::Relaxed) < threads && Instant::now() < stop {
                    table.remove_owner(if n % 2 == 0 { x } else { y });
                    n += 1;
                }
            });
        });
        afterwards(&table, &cfg, start, &format!("owners at zero, iter {it}"));
    });
}
