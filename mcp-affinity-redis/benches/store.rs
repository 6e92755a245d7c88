//! What sharing through Redis costs, side by side in one run against a `redis-server` the
//! bench starts on 127.0.0.1 (no persistence):
//!
//! - `route/local-hit`: a request of a session this router knows (`Router::route`, no I/O);
//! - `route/store-hit`: a request of a session only the store knows: `route` answers
//!   `Lookup`, `RedisStore::resolve` reads it (one `GET` round trip on loopback) and hands it
//!   to `on_lookup`, which forwards; the key is evicted again outside the timing;
//! - `route/bare-get`: the ceiling of a store hit: one bare `GET` of that key through the
//!   `redis` crate's multiplexed connection on the same runtime (no router, no adapter);
//! - `perform/512-binds`: one pipeline of 512 `SET NX PX GET` binds (`RedisStore::perform`).
//!
//! Criterion reports means; a sampler after the groups times 20,000 of each route case one by
//! one and prints their p50, p99 and p99.9, and the sync task's rate: 50,000 sessions learned
//! by a router (within its default write queue of 65,536), written by `spawn_sync` in batches
//! of 512 until `synced`.
//!
//! Run with `cargo bench -p mcp-affinity-redis --bench store` (needs `redis-server` 7.0+).
//!
//! Measured 2026-11-30 on the project's 2-core VM, redis-server 7.0.15 on loopback, the
//! client on a 2-worker Tokio runtime, nothing else running. Criterion means, sampler
//! percentiles:
//!
//! | case | criterion mean | p50 | p99 | p99.9 |
//! |---|---|---|---|---|
//! | route/local-hit | 0.20 µs | 0.20 µs | 0.27 µs | 0.43 µs |
//! | route/store-hit | 77 µs | 81 µs | 159 µs | 270 µs |
//! | route/bare-get (ceiling) | 64 µs | 81 µs | 143 µs | 210 µs |
//! | perform/512-binds | 0.75 ms (680k binds/s) | | | |
//!
//! A store hit costs what its round trip costs: 1.20× the bare `GET` on criterion's mean,
//! 1.00× at the sampler's median, 1.11× at p99. It reads the restart marker with its key (a
//! sync task runs, as in a fleet), in the same round trip; what the router and the adapter add
//! (classifying, `on_lookup`, the breaker, the timeout) barely shows next to the round trip.
//! The round trip is this VM's: `redis-benchmark -c 1 -t get` (C, one connection) read a p50
//! of 63 µs the same hour, and an earlier run the same day, under load, read store hits of
//! 21 – 65 µs at the median: loopback latency on this VM moves with its scheduling, so read the
//! rows against each other. Store hit ÷ local hit at the median: about 400× here (one round
//! trip against a table lookup). A router pays it once per key it has not seen: the answer is
//! cached, and the key's next request is a local hit. The sync task wrote 50,000 bindings in
//! 0.11 – 0.17 s: 300,000 – 460,000 per second.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // benches own clocks and sockets

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{LEGACY, RedisServer, fleet_router, initialize, post};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_affinity::TenantId;
use mcp_affinity::router::store::StoreWrite;
use mcp_affinity::router::{Routed, Router};
use mcp_affinity::table::{Key, KeyKind};
use mcp_affinity_redis::{RedisStore, RedisStoreConfig};

/// Whether criterion runs for real (`cargo bench`), not as a smoke test (`cargo test`).
fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

struct Setup {
    server: RedisServer,
    runtime: tokio::runtime::Runtime,
    store: RedisStore,
    /// Knows session `s`.
    near: Router,
    /// Knows no session: it looks them up.
    far: Router,
    /// A plain connection of the `redis` crate on the same runtime, for the ceiling.
    raw: redis::aio::MultiplexedConnection,
    /// A sync task on the store, as a router runs one: it has read the restart marker, so
    /// lookups read the marker with their key, as they do in a fleet.
    _sync: mcp_affinity_redis::SyncHandle,
}

fn setup() -> Setup {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = runtime
        .block_on(RedisStore::connect(&server.url(), RedisStoreConfig::new()))
        .unwrap();
    let (near, _) = fleet_router(Router::builder(), &["x", "y", "z"]);
    let near = std::sync::Arc::into_inner(near).unwrap();
    initialize(&near, "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97");
    let writes = near.take_store_writes(usize::MAX);
    runtime.block_on(store.perform(&writes)).unwrap();
    let (far, _) = fleet_router(Router::builder(), &["z", "y", "x"]);
    let far = std::sync::Arc::into_inner(far).unwrap();
    let raw = runtime
        .block_on(async {
            let client = redis::Client::open(server.url())?;
            client.get_multiplexed_async_connection().await
        })
        .unwrap();
    let (watcher, _) = fleet_router(Router::builder(), &["x", "y", "z"]);
    let sync = runtime.block_on(async {
        let sync = store.spawn_sync(watcher);
        while store.metrics().lost_polls == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sync
    });
    Setup {
        server,
        runtime,
        store,
        near,
        far,
        raw,
        _sync: sync,
    }
}

const SESSION: &str = "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97";

fn request() -> http::request::Parts {
    post(&[("mcp-session-id", SESSION), LEGACY])
}

fn local_hit(s: &Setup, request: &http::request::Parts) -> Duration {
    let start = Instant::now();
    let routed = s.near.route(request, Instant::now());
    let elapsed = start.elapsed();
    assert!(matches!(black_box(routed), Routed::Forward(_)));
    elapsed
}

fn store_hit(s: &Setup, request: &http::request::Parts) -> Duration {
    let key = Key::new(TenantId::DEFAULT, KeyKind::Session, SESSION.as_bytes()).unwrap();
    let _ = s.far.evict_key(&key);
    let start = Instant::now();
    let routed = s.runtime.block_on(async {
        let routed = s.far.route(request, Instant::now());
        s.store.resolve(&s.far, routed).await
    });
    let elapsed = start.elapsed();
    assert!(matches!(black_box(routed), Routed::Forward(_)));
    elapsed
}

/// The ceiling of a store hit: one bare `GET` of the session's binding, the same round trip
/// through the `redis` crate on the same runtime, without the router or the adapter.
fn bare_get(s: &Setup, _: &http::request::Parts) -> Duration {
    let mut raw = s.raw.clone();
    let start = Instant::now();
    let value: Option<String> = s.runtime.block_on(async {
        redis::cmd("GET")
            .arg(common::binding_key(SESSION))
            .query_async(&mut raw)
            .await
            .unwrap()
    });
    let elapsed = start.elapsed();
    assert!(black_box(value).is_some());
    elapsed
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let request = request();
    let mut group = c.benchmark_group("route");
    group.bench_function("local-hit", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| local_hit(&s, &request)).sum())
    });
    group.bench_function("store-hit", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| store_hit(&s, &request)).sum())
    });
    group.bench_function("bare-get", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| bare_get(&s, &request)).sum())
    });
    group.finish();

    let binds: Vec<StoreWrite> = (0..512)
        .map(|i| StoreWrite::Bind {
            key: format!("t:b:0:2:bench-{i}"),
            value: "1:00000000000000aa:0:1795000000:-".into(),
            ttl: Duration::from_secs(3600),
        })
        .collect();
    let mut group = c.benchmark_group("perform");
    group.throughput(Throughput::Elements(binds.len() as u64));
    group.bench_function("512-binds", |b| {
        b.iter(|| s.runtime.block_on(s.store.perform(&binds)).unwrap())
    });
    group.finish();

    percentiles(&s, &request);
    sync_rate(&s);
}

/// p50, p99 and p99.9 of each route case, timed one by one.
fn percentiles(s: &Setup, request: &http::request::Parts) {
    let n = if benching() { 20_000 } else { 100 };
    for (name, case) in [
        (
            "local-hit",
            local_hit as fn(&Setup, &http::request::Parts) -> Duration,
        ),
        ("store-hit", store_hit),
        ("bare-get", bare_get),
    ] {
        let mut samples: Vec<Duration> = (0..n).map(|_| case(s, request)).collect();
        samples.sort();
        let at = |q: f64| samples[((q * n as f64) as usize).min(n - 1)];
        println!(
            "route/{name}: {n} samples: p50 {:?}, p99 {:?}, p99.9 {:?}",
            at(0.5),
            at(0.99),
            at(0.999)
        );
    }
}

/// Bindings per second through the sync task: a router learns `n` sessions, then the task
/// writes them in batches until it is synced.
fn sync_rate(s: &Setup) {
    let n = if benching() { 50_000 } else { 1_000 };
    let _: () = redis::cmd("FLUSHALL").query(&mut s.server.admin()).unwrap();
    // A store the task finds running (not new): it writes the queue, and reseeds nothing.
    let _: () = redis::cmd("SET")
        .arg(format!("{}:epoch", common::PREFIX))
        .arg("bench")
        .query(&mut s.server.admin())
        .unwrap();
    let (router, _) = fleet_router(Router::builder(), &["x", "y", "z"]);
    for i in 0..n {
        initialize(&router, &format!("sync-{i}"));
    }
    assert_eq!(router.store_queue_len(), n);
    let (elapsed, writes) = s.runtime.block_on(async {
        let start = Instant::now();
        let sync = s.store.spawn_sync(router.clone());
        tokio::time::timeout(Duration::from_secs(60), sync.synced())
            .await
            .expect("synced within a minute");
        let elapsed = start.elapsed();
        sync.shutdown().await;
        (elapsed, s.store.metrics().writes)
    });
    assert!(writes >= n as u64);
    println!(
        "sync task: {n} bindings in {elapsed:?}: {:.0} per second",
        n as f64 / elapsed.as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
