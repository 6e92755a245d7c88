//! What sharing through Redis costs, side by side in one run against a `redis-server` the
//! bench starts on 127.0.0.1 (no persistence):
//!
//! - `route/local-hit`: a request of a session this router knows (`Router::route`, no I/O);
//! - `route/store-hit`: a request of a session only the store knows: `route` answers
//!   `Lookup`, `RedisStore::resolve` reads it (one `GET` round trip on loopback) and hands it
//!   to `on_lookup`, which forwards; the key is evicted again outside the timing;
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
//! client on a 2-worker Tokio runtime, three runs, while other work kept the load average
//! near 6: the store case moves a lot with the load. Criterion means, sampler percentiles:
//!
//! | case | criterion mean | p50 | p99 | p99.9 |
//! |---|---|---|---|---|
//! | route/local-hit | 0.35 – 0.50 µs | 0.24 µs | 0.29 – 0.37 µs | 0.41 – 0.53 µs |
//! | route/store-hit | 24 – 113 µs | 21 – 65 µs | 41 µs – 3.1 ms | 0.3 – 8.1 ms |
//! | perform/512-binds | 0.92 – 1.19 ms (420k – 560k binds/s) | | | |
//!
//! Store hit ÷ local hit at the median: about 90x when the machine was quiet (21 µs against
//! 0.24 µs: one loopback round trip against a table lookup), about 270x under load; the tail
//! of the store case follows the machine's load (the bench, redis-server and the other work
//! share two cores). A router pays it once per key it has not seen: the answer is cached, and the key's next request is a local hit. The sync task wrote
//! 50,000 bindings in 0.16 – 0.21 s: 243,000 – 305,000 per second.
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
    Setup {
        server,
        runtime,
        store,
        near,
        far,
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
