//! Findings of the third adversarial review: the shared-store protocol (`router::store`) for
//! fleets of routers. Every test here failed on the commit it was written against
//! and passes since its fix: each one
//! states what the fleet should do, what it does, and how bad it is. Run with
//! `cargo test --all-features --test attack_store`.
//!
//! The store is simulated as Redis behaves for the protocol (values with expiry, `SET NX`,
//! `PEXPIRE`, compare-and-delete on a prefix, keep-the-greatest records), as in
//! `router_store.rs`; several routers share it, each with its own clock reading. One
//! difference: here `PEXPIRE` of an expired key does nothing, as in Redis; the simulated
//! store of `router_store.rs` revives it, which hides finding 11 from its property test.
//!
//! Most findings are about *operator keys* (client-chosen workspace keys, `Mcp-Param-*`):
//! unlike a session id, which only one backend ever mints, any backend accepts an operator
//! key, so a fleet where two routers send one key to two backends silently splits the
//! workspace's state, and no backend 404 ever corrects it. The invariant the module docs
//! promise is "a binding made before its owner was lost is refused by every router" and
//! "the router that lost the race adopts the winner": one owner per key across routers.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_affinity::router::store::{Looked, MAX_LOOKUPS, ReseedCursor, StoreWrite};
use mcp_affinity::router::{
    End, Exchange, HeadOutcome, How, NewBackend, Probe, Reason, Routed, Router, RouterBuilder,
    SharedStore, Undelivered, key_fn,
};
use mcp_affinity::table::KeyKind;
use mcp_affinity::{BackendId, TenantId};

const T0: u64 = 1_795_000_000;
const DAY: u64 = 86_400;

// --- The simulated store and fleet helpers ----------------------------------------------------

type Store = common::sim_store::SimStore;

/// A router sharing through the store with backends named `names`, its wall clock reading
/// `unix` at `now` (every router of a fleet reads its own).
fn fleet_router(builder: RouterBuilder, names: &[&str], now: Instant, unix: u64) -> Router {
    fleet_router_with(builder, SharedStore::new("mcp", now, unix), names)
}

fn fleet_router_with(builder: RouterBuilder, store: SharedStore, names: &[&str]) -> Router {
    let router = builder.shared_store(store).build();
    for name in names {
        router
            .add(NewBackend::new(TenantId::DEFAULT, &format!("http://{name}")).name(name))
            .unwrap();
    }
    router
}

/// A router routing operator keys (`Mcp-Param-Workspace`) through the store.
fn op_router(names: &[&str], now: Instant) -> Router {
    fleet_router(
        Router::builder().operator_key(key_fn(workspace)),
        names,
        now,
        T0,
    )
}

/// A whole reseed pass, `max` writes a call (each batch checked against it), `between` run
/// after every call: every write, in order.
fn reseed_pass(
    router: &Router,
    max: usize,
    now: Instant,
    mut between: impl FnMut(),
) -> Vec<StoreWrite> {
    let mut cursor = ReseedCursor::default();
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let writes = router.reseed_store(&mut cursor, max, now);
        if writes.is_empty() {
            return all;
        }
        assert!(writes.len() <= max, "{} writes for max {max}", writes.len());
        all.extend(writes);
        between();
    }
    panic!("the reseed pass never ends");
}

/// The session ids that `writes` bind.
fn bound_ids(writes: &[StoreWrite]) -> Vec<String> {
    writes
        .iter()
        .filter_map(|write| match write {
            StoreWrite::Bind { key, .. } => key.rsplit(':').next().map(str::to_string),
            _ => None,
        })
        .collect()
}

/// A placement veto that only takes the backend named `name` (`None`: any): stands for
/// "this router's placement policy chose that one" (its own load, its own turn).
fn only<'a>(router: &'a Router, name: Option<&'a str>) -> impl FnMut(BackendId) -> bool + 'a {
    move |id| name.is_none_or(|name| name_of(router, id) == name)
}

/// Routes `request` through `router`, answering a lookup from `store`; placements go where
/// `choose` says.
fn route_via(
    router: &Router,
    store: &Store,
    request: &http::request::Parts,
    choose: Option<&str>,
    now: Instant,
) -> Routed {
    let mut routed = router.route_with(request, now, only(router, choose));
    // Once for each key the request names.
    for _ in 0..MAX_LOOKUPS {
        let Routed::Lookup(lookup) = routed else {
            return routed;
        };
        let answer = store.answer(lookup.key(), now);
        routed = router.on_lookup_with(lookup, answer, now, only(router, choose));
    }
    assert!(
        !matches!(routed, Routed::Lookup(_)),
        "more lookups than keys"
    );
    routed
}

/// Performs every queued write of `router` on `store`, reporting refused binds back, until
/// the queue is empty (a refused bind may queue a repair), as an embedder's drain does.
fn flush(router: &Router, store: &mut Store, now: Instant) {
    flush_some(router, store, now, |_| true);
}

/// Performs the queued writes of `router` for which `keep` says so (the others are lost on
/// the way: a connection killed mid-pipeline).
fn flush_some(
    router: &Router,
    store: &mut Store,
    now: Instant,
    mut keep: impl FnMut(&StoreWrite) -> bool,
) {
    for _ in 0..8 {
        let writes = router.take_store_writes(usize::MAX);
        if writes.is_empty() {
            return;
        }
        for write in writes {
            if !keep(&write) {
                continue;
            }
            if let Some((key, found)) = store.apply(write, now) {
                router.on_bind_taken(&key, &found, now);
            }
        }
    }
    panic!(
        "the write queue never empties: {:?}",
        router.take_store_writes(8)
    );
}

/// Reads the lost records of every backend `router` knows, as the protocol asks.
fn poll_lost(router: &Router, store: &Store, now: Instant) {
    for key in router.lost_keys() {
        if let Some(before) = store.get(&key, now).and_then(|v| v.parse().ok()) {
            router.on_lost(&key, before, now);
        }
    }
}

/// Answers a forwarded exchange 200 and ends it; returns the backend's name.
fn serve(router: &Router, mut ex: Exchange, now: Instant) -> String {
    let name = name_of(router, ex.backend());
    let _ = respond(router, &mut ex, 200, &[JSON], &[b"{}"], now);
    router.on_exchange_end(ex, End::Completed, now);
    name
}

/// A call in workspace `ws` through `router`, answered 200 by whichever backend gets it;
/// returns that backend's name.
fn call_ws(router: &Router, store: &Store, ws: &str, choose: Option<&str>, now: Instant) -> String {
    serve(
        router,
        forward(route_via(router, store, &ws_call(ws), choose, now)),
        now,
    )
}

/// The backend is refusing connections, as `router`'s health checks see it.
fn sees_down(router: &Router, name: &str, now: Instant) {
    for _ in 0..3 {
        router
            .report_health(id_of(router, name), Probe::Refused, now)
            .unwrap();
    }
}

/// The backend answers again, as `router`'s health checks see it.
fn sees_up(router: &Router, name: &str, now: Instant) {
    for _ in 0..2 {
        router
            .report_health(id_of(router, name), Probe::Up, now)
            .unwrap();
    }
}

// --- 1. Split: a lost record does not condemn the bindings a router has cached ----------------
/// Severity: MISROUTE / STORE INCONSISTENCY (two owners for one operator key across routers;
/// for sessions and tasks, a request of a lost incarnation sent to the new process).
///
/// `on_lost` only raises the owner's `lost_before` in the fleet, and only
/// [`on_lookup`](Router::on_lookup) compares a binding's time with it. A key a router already
/// holds in its table (it looked it up earlier: the table is a cache) is a local hit, and
/// `forward_owned` checks nothing but the owner's local status, which is live: that router
/// never saw the owner die. So the module docs' promise, "a binding made before its owner was
/// lost is refused by every router as gone, whichever router saw the loss", holds only for
/// routers that had not cached it.
///
/// For an operator key the router that saw the loss binds the key afresh elsewhere, and the
/// routers that had it cached keep sending it to the old owner's name for as long as the key
/// is used (each use even refreshes the store key that now names the new owner). For a
/// session, the new process answers 404 itself; for a task, "task not found".
///
/// Expected: after `on_lost`, a cached binding learned before the cut-off is treated as a
/// lookup would treat it (here: looked up again, and routed where the store says now).
/// Actual: B sends `acme` to `x` while A and the store send it to `y`.
#[test]
fn a_lost_record_condemns_the_bindings_other_routers_have_cached() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let (a, b) = (op_router(&["x", "y"], t0), op_router(&["x", "y"], t0));
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t0), "x");
    flush(&a, &mut store, t0);
    // B serves the workspace too: looked up once, cached.
    assert_eq!(call_ws(&b, &store, "acme", None, t0), "x");
    // x's process dies; A's health checks see it refuse, and it records the loss.
    let t1 = clock.advance(Duration::from_secs(30));
    sees_down(&a, "x", t1);
    flush(&a, &mut store, t1);
    // x comes back as a new process; A's next call binds the workspace afresh (on y).
    let t2 = clock.advance(Duration::from_secs(10));
    sees_up(&a, "x", t2);
    assert_eq!(call_ws(&a, &store, "acme", Some("y"), t2), "y");
    flush(&a, &mut store, t2);
    // B reads the lost records, as the protocol asks, then serves the workspace.
    poll_lost(&b, &store, t2);
    let via_b = call_ws(&b, &store, "acme", None, t2);
    let via_a = call_ws(&a, &store, "acme", None, t2);
    assert_eq!(
        via_b, via_a,
        "one workspace, two owners: B (cached, bound before x was lost) sends it to {via_b}, \
         A and the store to {via_a}"
    );
}

// --- 2. Split: a key re-placed by the router that saw its owner die is never stored ----------
/// Severity: MISROUTE / STORE INCONSISTENCY (two owners for one operator key across routers).
///
/// When a router finds an operator key's owner gone locally (a refused delivery, a down or
/// removed owner, a revoked drain) it removes its own entry and places the key afresh
/// (`route_operator`, `on_undelivered`), but it enqueues no `Forget` for the store binding
/// that names the dead owner. The fresh `Bind` is set-if-absent, so the store refuses it
/// with the dead owner's value, and `on_bind_taken` "keeps its own" because that owner is
/// not live here. Nothing ever repairs the store: every other router finds the dead owner's
/// binding, condemns it (lost record) or learns it is down the hard way, and places the key
/// on its own. The same happens when a router's `Forget` of a lost binding is lost on the way
/// (second case below): its `Bind` is refused with a binding that `on_lookup` refuses as
/// lost, and `on_bind_taken` adopts it or keeps its own, but never writes its owner.
///
/// Expected: a `Bind` refused by a binding that is lost or whose owner is not live here is
/// repaired (compare-and-delete the dead value, bind again), or the key is not served until
/// the store names one owner. Actual: A sends `acme` to `y`, B to `z`, for good.
#[test]
fn an_operator_key_re_placed_after_its_owner_died_is_written_to_the_store() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let (a, b) = (
        op_router(&["x", "y", "z"], t0),
        op_router(&["x", "y", "z"], t0),
    );
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t0), "x");
    flush(&a, &mut store, t0);
    // x dies; A's next delivery of the workspace is refused, and A places it again, on y.
    let t1 = clock.advance(Duration::from_secs(30));
    let ex = forward(route_via(&a, &store, &ws_call("acme"), None, t1));
    assert_eq!(name_of(&a, ex.backend()), "x");
    let again = a.on_undelivered_with(ex, Undelivered::Refused, t1, only(&a, Some("y")));
    assert_eq!(serve(&a, forward(again), t1), "y");
    flush(&a, &mut store, t1);
    // B reads the lost record and serves the workspace: it would place it on z, were the
    // store still naming the dead binding.
    poll_lost(&b, &store, t1);
    let _ = call_ws(&b, &store, "acme", Some("z"), t1);
    flush(&b, &mut store, t1);
    let (via_a, via_b) = (
        call_ws(&a, &store, "acme", None, t1),
        call_ws(&b, &store, "acme", None, t1),
    );
    assert_eq!(
        via_a, via_b,
        "one workspace, two owners: A sends it to {via_a}, B to {via_b}"
    );
}

/// Finding 2, second trigger: a `Forget` lost on the way (the fault model of
/// `router_store.rs`) leaves a lost binding in the store; the `Bind` that follows it is
/// refused with that binding, and the router adopts an owner `on_lookup` itself refuses.
#[test]
fn a_bind_refused_by_a_lost_binding_is_repaired_not_adopted() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let routers: Vec<Router> = (0..3).map(|_| op_router(&["x", "y", "z"], now)).collect();
    let (a, b, c) = (&routers[0], &routers[1], &routers[2]);
    assert_eq!(call_ws(a, &store, "acme", Some("x"), now), "x");
    flush(a, &mut store, now);
    // x restarts as a new process (incarnation 1), and every router is told.
    for router in &routers {
        router.set_incarnation(id_of(router, "x"), 1, now).unwrap();
    }
    // B finds the binding of incarnation 0, places the workspace on y; its Forget is lost
    // (the first one: the connection was killed mid-pipeline).
    assert_eq!(call_ws(b, &store, "acme", Some("y"), now), "y");
    let mut lost_one = false;
    flush_some(b, &mut store, now, |w| {
        let lose = !lost_one && matches!(w, StoreWrite::Forget { .. });
        lost_one |= lose;
        !lose
    });
    assert!(lost_one);
    // C serves the workspace: it would place it on z, were the store still naming the dead
    // binding.
    let _ = call_ws(c, &store, "acme", Some("z"), now);
    flush(c, &mut store, now);
    let (via_b, via_c) = (
        call_ws(b, &store, "acme", None, now),
        call_ws(c, &store, "acme", None, now),
    );
    assert_eq!(
        via_b, via_c,
        "one workspace, two owners: B sends it to {via_b}, C to {via_c}"
    );
}

// --- 3. Split: a Forget deletes a newer binding of the same owner ----------------------------
/// Severity: STORE INCONSISTENCY → MISROUTE (two owners for one operator key across routers).
///
/// `StoreWrite::Forget` compares only the value's prefix `1:{owner}:{incarnation}:`, not the
/// binding it meant to delete. Backends added with `add_backend` all run as incarnation 0
/// for life (losses are told by lost records and `bound at`, not by incarnations), so every
/// binding a backend ever gets has the same prefix: a `Forget` that a router enqueued for
/// the binding it read (lost: made before its owner died) deletes whatever binding of that
/// backend the key holds when the write lands — including the fresh one another router made
/// meanwhile, after the backend came back. The classic ABA of a compare-and-delete on part
/// of the value. The write queue makes the window as wide as the embedder's drain delay (or
/// a whole store outage: queued writes are replayed).
///
/// Expected: a `Forget` deletes only the binding it was enqueued for (compare on the whole
/// value, `bound at` included); B's `Bind` is then refused and B adopts A's fresh owner.
/// Actual: A's fresh binding is deleted, B's is written, A sends `acme` to `x`, B to `y`.
#[test]
fn a_late_forget_does_not_delete_a_newer_binding_of_the_same_owner() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let (a, b) = (op_router(&["x", "y"], t0), op_router(&["x", "y"], t0));
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t0), "x");
    flush(&a, &mut store, t0);
    // x dies: A records it, B reads the record.
    let t1 = clock.advance(Duration::from_secs(30));
    sees_down(&a, "x", t1);
    flush(&a, &mut store, t1);
    poll_lost(&b, &store, t1);
    // B serves the workspace: the binding is lost, so B forgets it and places it on y; B's
    // writes wait in its queue (its drain runs later).
    assert_eq!(call_ws(&b, &store, "acme", Some("y"), t1), "y");
    // x is back; A serves the workspace, forgets the dead binding, binds it to x afresh.
    let t2 = clock.advance(Duration::from_secs(10));
    sees_up(&a, "x", t2);
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t2), "x");
    flush(&a, &mut store, t2);
    let fresh = store
        .values
        .values()
        .find(|(v, _)| v.starts_with("1:"))
        .cloned();
    // B's drain runs now.
    flush(&b, &mut store, t2);
    let (via_a, via_b) = (
        call_ws(&a, &store, "acme", None, t2),
        call_ws(&b, &store, "acme", None, t2),
    );
    assert_eq!(
        via_a,
        via_b,
        "one workspace, two owners: A sends it to {via_a}, B to {via_b}; \
         A's fresh binding {:?} was deleted by B's late Forget",
        fresh.map(|(v, _)| v)
    );
}

// --- 4. Wrong status, fleet-wide: a lost record from a clock ahead condemns new bindings -----
/// Severity: WRONG STATUS (404 for live sessions, fleet-wide, for as long as the bad clock is
/// ahead) from one operator mistake (a router whose wall clock is off by a day: a VM with a
/// wrong RTC, a container without NTP); the same from anyone who can write one lost record.
///
/// A lost record says "bindings of this owner made before `before` are dead". The router
/// that writes it takes `before` from its own wall clock; every router raises its
/// `lost_before` to whatever it reads (`on_lost` takes no `now`, compares with nothing) and
/// never lowers it, and the store keeps the greatest. A router whose clock is a day ahead
/// condemns, on every router, every binding of that backend for the next day: each new
/// session or task bound there is answered 404 (`OwnerGone`) by every router that did not
/// learn it itself; operator keys are re-placed on every lookup, and `u32::MAX` condemns the
/// backend for good. With sealing on as well, the same `lost_before` refuses every sealed
/// session id of that backend on every router that polled the record (`on_lost`: "bindings
/// and sealed ids of that owner made before then"): one bad clock ends all its sessions.
///
/// Expected: a lost record from beyond this router's clock plus the skew is not believed as
/// is (clamped to now, or ignored and counted). Actual: a session minted after the backend
/// came back is 404 on every other router.
#[test]
fn a_lost_record_from_a_clock_ahead_does_not_condemn_bindings_made_after_it() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let names = ["x", "y"];
    let a = fleet_router(Router::builder(), &names, t0, T0);
    let b = fleet_router(Router::builder(), &names, t0, T0);
    // C's wall clock is a day ahead.
    let c = fleet_router(Router::builder(), &names, t0, T0 + DAY);
    // x dies; C sees it refuse and records the loss, by its clock.
    let t1 = clock.advance(Duration::from_secs(10));
    sees_down(&c, "x", t1);
    flush(&c, &mut store, t1);
    // x is back; a client starts a session on it through A.
    let t2 = clock.advance(Duration::from_secs(20));
    let mut start = forward(a.route_with(&post("/mcp", &[]), t2, only(&a, Some("x"))));
    let _ = respond(&a, &mut start, 200, &[("mcp-session-id", "s1")], &[], t2);
    a.on_exchange_end(start, End::Completed, t2);
    flush(&a, &mut store, t2);
    // B reads the lost records, then the session's next request comes through B.
    poll_lost(&b, &store, t2);
    let next = post("/mcp", &[("mcp-session-id", "s1"), LEGACY]);
    match route_via(&b, &store, &next, None, t2) {
        Routed::Forward(ex) => {
            assert_eq!(name_of(&b, ex.backend()), "x");
            b.on_exchange_end(ex, End::Completed, t2);
        }
        Routed::Reject(rejection) => panic!(
            "a session minted 20 s after the loss is answered {} ({}) by B",
            rejection.status(),
            rejection.reason().as_str()
        ),
        Routed::Lookup(_) => unreachable!(),
    }
}

// --- 5. Wrong status: with sealing on, lost records ignore the store's clock skew ------------
/// Severity: WRONG STATUS (404 "task not found" / operator keys re-placed, for bindings made
/// by a router whose clock is behind within the skew the operator configured).
///
/// `Router::lost_cutoff` takes the sealing's cut-off when sealing is on, so the lost records
/// a router writes for the store (`StoreWrite::Lost`) use `Sealing::clock_skew` (default 2 s)
/// and ignore `SharedStore::clock_skew`. A fleet that set the store's skew to a minute,
/// because its routers' clocks are that far apart, still condemns task and operator-key
/// bindings made by a router 30 s behind, right after the backend came back.
///
/// Expected: a lost record for the store is cut at now less the store's skew. Actual: now
/// less the sealing's; a task created after the backend came back is answered 404.
#[cfg(all(feature = "seal", feature = "tasks"))]
#[test]
fn with_sealing_on_lost_records_use_the_store_s_clock_skew() {
    use mcp_affinity::router::Sealing;
    use mcp_affinity::seal::{Keyring, SealKey};
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let names = ["x", "y"];
    let make = |unix: u64| {
        let keyring = Keyring::new([SealKey::new([7; 32])]).unwrap();
        let builder = Router::builder().sealing(Sealing::new(keyring, [1; 12], t0, unix));
        let shared = SharedStore::new("mcp", t0, unix).clock_skew(Duration::from_secs(60));
        fleet_router_with(builder, shared, &names)
    };
    // B's clock is 30 s behind A's: within the 60 s the operator allowed for the store.
    let (a, b) = (make(T0), make(T0 - 30));
    // x dies at 100 s; A records it.
    let t1 = clock.advance(Duration::from_secs(100));
    sees_down(&a, "x", t1);
    flush(&a, &mut store, t1);
    // x is back at 105 s, and A's checks see it; a client creates a task on x through B.
    let t2 = clock.advance(Duration::from_secs(5));
    sees_up(&a, "x", t2);
    let call = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tools/call"), ("mcp-name", "job")],
    );
    let mut ex = forward(b.route_with(&call, t2, only(&b, Some("x"))));
    let task = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"t-1"}}"#;
    let _ = respond(&b, &mut ex, 200, &[JSON], &[task], t2);
    b.on_exchange_end(ex, End::Completed, t2);
    flush(&b, &mut store, t2);
    // The client polls the task through A.
    let poll = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", "t-1")],
    );
    match route_via(&a, &store, &poll, None, t2) {
        Routed::Forward(ex) => a.on_exchange_end(ex, End::Completed, t2),
        Routed::Reject(rejection) => panic!(
            "a task created after its backend came back is answered {} ({}): the lost record \
             was cut with the sealing's 2 s skew, not the store's 60 s",
            rejection.status(),
            rejection.reason().as_str()
        ),
        Routed::Lookup(_) => unreachable!(),
    }
}

// --- 6. Unbounded batch: reseed_store returns every key of a backend, whatever `max` ---------
/// Severity: MEMORY (one call materialises the keys of a whole backend: up to the table's
/// capacity, a million keys by default, as `String` pairs) and a broken contract (the
/// embedder sizes its pipeline by `max`).
///
/// `reseed_store` checks `max` only between backends: the keys of one backend are collected
/// with `keys_of(id, usize::MAX)` and all turned into writes.
///
/// Expected: at most `max` writes per call, as documented ("Bind writes for up to `max`
/// shared keys"). Actual: 10 writes for `max` 3.
#[test]
fn reseed_store_returns_at_most_max_writes() {
    let now = Clock::new().now();
    let router = fleet_router(Router::builder(), &["x"], now, T0);
    for i in 0..10 {
        initialize(&router, &format!("s{i}"), now);
    }
    let _ = router.take_store_writes(usize::MAX);
    let writes = router.reseed_store(&mut ReseedCursor::default(), 3, now);
    assert!(writes.len() <= 3, "{} writes for max 3", writes.len());
}

/// The same bound with lost records (the first writes of a reseed): three backends down, one
/// write a call, and each lost record is handed out once.
#[test]
fn reseed_store_hands_out_lost_records_at_most_max_a_call() {
    let now = Clock::new().now();
    let router = fleet_router(Router::builder(), &["a", "b", "c"], now, T0);
    for name in ["a", "b", "c"] {
        for _ in 0..3 {
            router
                .report_health(id_of(&router, name), Probe::Refused, now)
                .unwrap();
        }
    }
    let mut lost: Vec<String> = reseed_pass(&router, 1, now, || {})
        .into_iter()
        .filter_map(|write| match write {
            StoreWrite::Lost { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    lost.sort();
    lost.dedup();
    assert_eq!(lost.len(), 3, "{lost:?}");
}

// --- 7. Wrong status: a reseed skips a backend when the fleet changes between calls ----------
/// Severity: WRONG STATUS (404 for live sessions after a store restart) on a routine
/// operation (a backend removed or added while the router reseeds).
///
/// `ReseedCursor` is an index into `backends()`, re-read on every call. Removing a backend
/// between two calls shifts every later backend one place down: the one that slides under
/// the cursor is skipped, and its keys are never bound again. After a store that came back
/// empty, those sessions are 404 on every other router (their lookups find nothing).
///
/// Expected: every live backend's keys are reseeded, whatever changes in the fleet between
/// calls (a cursor by slot, or by key). Actual: y's sessions are never reseeded.
#[test]
fn a_reseed_binds_every_live_key_even_if_the_fleet_changes_meanwhile() {
    let now = Clock::new().now();
    let router = fleet_router(Router::builder(), &["x", "y", "z"], now, T0);
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..6 {
        let id = format!("s{i}");
        let owner = initialize(&router, &id, now);
        on.entry(name_of(&router, owner)).or_default().push(id);
    }
    assert!(on.values().all(|ids| ids.len() == 2), "{on:?}");
    let _ = router.take_store_writes(usize::MAX);
    // The store came back empty: reseed, two writes a call. x is removed between calls.
    let mut first = true;
    let bound = bound_ids(&reseed_pass(&router, 2, now, || {
        if first {
            first = false;
            router.remove_backend(id_of(&router, "x"), now).unwrap();
        }
    }));
    let missed: Vec<&String> = on["y"]
        .iter()
        .chain(&on["z"])
        .filter(|id| !bound.contains(id))
        .collect();
    assert!(
        missed.is_empty(),
        "live sessions never reseeded: {missed:?}"
    );
}

/// The same loss without a fleet change between calls: an empty answer from `reseed_store`
/// is the embedder's signal that the pass is over, but a call once answered nothing after a
/// stretch of keys that need no write (here, those of a removed backend, which the table still
/// holds), and the live keys after them were never written back. 400 removed keys and one
/// live one, one write a call: the live key is reached.
#[test]
fn a_reseed_passes_over_any_stretch_of_keys_that_need_no_write() {
    let now = Clock::new().now();
    let router = fleet_router(Router::builder(), &["x"], now, T0);
    for i in 0..400 {
        initialize(&router, &format!("x{i}"), now);
    }
    router
        .add(NewBackend::new(TenantId::DEFAULT, "http://y").name("y"))
        .unwrap();
    let owner = initialize(&router, "live", now);
    assert_eq!(name_of(&router, owner), "y");
    router.remove_backend(id_of(&router, "x"), now).unwrap();
    let _ = router.take_store_writes(usize::MAX);
    let bound = bound_ids(&reseed_pass(&router, 1, now, || {}));
    assert_eq!(
        bound,
        ["live"],
        "the live session is written back, and only it"
    );
}

// --- 8. A loss the store never heard of is never told again ----------------------------------
/// Severity: STORE INCONSISTENCY (a lost owner's bindings keep routing on every other router;
/// for operator keys, a split as in finding 1).
///
/// A `Lost` write is produced once, when the router sees the loss. The queue drops writes
/// past its bound (newest first, so a lost record during a long outage is the one dropped,
/// while old refreshes stay), and `reseed_store`, which the embedder calls after an outage
/// or an empty restart, re-binds keys but re-records no loss, though the router keeps every
/// `lost_before` in its fleet. A store that came back empty likewise forgets every loss.
///
/// Expected: the losses a router knows are part of what it reseeds (or kept aside from the
/// bounded queue). Actual: after the drop, nothing ever writes x's lost record.
#[test]
fn a_lost_record_dropped_from_a_full_queue_is_written_by_the_reseed() {
    let now = Clock::new().now();
    let router = fleet_router_with(
        Router::builder(),
        SharedStore::new("mcp", now, T0).write_queue(2),
        &["x", "y"],
    );
    let x = id_of(&router, "x");
    // A store outage: the queue fills with the binds of two new sessions.
    let mut ids = 0;
    while router.store_queue_len() < 2 {
        ids += 1;
        initialize(&router, &format!("s{ids}"), now);
    }
    // x dies meanwhile: its lost record has no room.
    let dropped = router.metrics().store_writes_dropped;
    sees_down(&router, "x", now);
    assert_eq!(router.metrics().store_writes_dropped, dropped + 1);
    // The store answers again: the embedder drains the queue and reseeds.
    let mut writes = router.take_store_writes(usize::MAX);
    writes.extend(reseed_pass(&router, 100, now, || {}));
    let lost_key = router.lost_keys().into_iter().next();
    assert!(
        writes.iter().any(|w| matches!(w, StoreWrite::Lost { .. })),
        "x ({x}) was lost, but no write will ever say so (lost keys: {lost_key:?}); writes: \
         {writes:?}"
    );
}

// --- 9. Wrong status: a value the router cannot read ends the session ------------------------
/// Severity: WRONG STATUS (404 for live sessions during a rolling upgrade that changes the
/// value format, or after any corruption of a value).
///
/// Binding values start with a format version (`1:`), which says the format may change. A
/// value that does not decode (`2:…` written by a newer router, or garbage) is answered
/// `UnknownKey`: 404, the signal that makes a client drop a live session. For the same
/// situation with sealed ids ("a newer incarnation", a router behind the fleet) the router
/// answers `UnknownOwner`: 503 + `Retry-After`, "must not decide for the session". An
/// operator key with such a value is refused (404) until the value expires, never re-bound.
///
/// Expected: a value this router cannot read is 503 (`UnknownOwner`), not 404. Actual: 404.
#[test]
fn a_binding_value_this_router_cannot_read_is_503_not_404() {
    let now = Clock::new().now();
    let router = fleet_router(Router::builder(), &["x"], now, T0);
    let request = post("/mcp", &[("mcp-session-id", "s1"), LEGACY]);
    let Routed::Lookup(lookup) = router.route(&request, now) else {
        panic!("expected a lookup")
    };
    // What a router of the next version wrote (one more field), for a live session.
    let value = "2:3f0c2a8c4e2b7d11:0:1795000000:-:ext";
    let rejection = rejected(router.on_lookup(lookup, Looked::Found(value), now));
    assert_eq!(
        rejection.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        rejection.reason().as_str()
    );
    assert_ne!(rejection.reason(), Reason::UnknownKey(KeyKind::Session));
}

// --- 10. A reseed binds again the keys of an owner this router knows is down -----------------
/// Severity: STORE INCONSISTENCY (a dead process's sessions and operator keys written back
/// to the store as live, in its current incarnation; with finding 8, nothing condemns them).
///
/// `reseed_store` walks every occupied backend (`backends()`), down ones included: the keys
/// of a backend that refused connections stay in the table until `maintain` purges them (or
/// it comes back), and the reseed writes each one as a fresh `Bind` naming that owner, with
/// the incarnation it runs now. Every router that reads such a binding before it expires, and
/// did not read a lost record (a fresh router, a store that came back empty), routes to the
/// dead owner's name: 404 from its next process for sessions, a split for operator keys.
///
/// Expected: only keys of owners live here are reseeded. Actual: x's session is.
#[test]
fn a_reseed_does_not_bind_keys_of_an_owner_known_down() {
    let now = Clock::new().now();
    let router = fleet_router(Router::builder(), &["x", "y"], now, T0);
    let mut start = forward(router.route_with(&post("/mcp", &[]), now, only(&router, Some("x"))));
    let _ = respond(
        &router,
        &mut start,
        200,
        &[("mcp-session-id", "s1")],
        &[],
        now,
    );
    router.on_exchange_end(start, End::Completed, now);
    sees_down(&router, "x", now);
    let _ = router.take_store_writes(usize::MAX);
    // The store came back empty; the embedder reseeds before the next upkeep. (The lost
    // record it writes back is right: x was lost.)
    let writes = router.reseed_store(&mut ReseedCursor::default(), 100, now);
    let binds: Vec<&StoreWrite> = writes
        .iter()
        .filter(|w| !matches!(w, StoreWrite::Lost { .. }))
        .collect();
    assert!(
        binds.is_empty(),
        "the session of a backend known down is bound again: {binds:?}"
    );
}

// --- 11. Wrong status: a live session's binding expires in the store, and nothing restores it
/// Severity: WRONG STATUS (404 for live sessions on every router but the one that learned
/// them), with the default settings.
///
/// A binding lives `binding_ttl` (1 hour) in the store unless refreshed, and a router
/// refreshes a key only from `forward_owned` (a request of it, at most once per refresh
/// period, periods aligned to the wall clock). Two things keep a key alive locally without
/// refreshing it:
///
/// - an open stream: a legacy SSE session "lives exactly as long as its stream", and a
///   client may hold the stream for hours while it posts nothing (its user is away); the
///   stream keeps the entry from idling out, the binding expires after an hour;
/// - the last requests of a refresh period: the default idle TTL of the table is 1 hour too,
///   counted from the last use, while the store's hour runs from the period's first use, so a
///   session idle for 46 to 60 minutes is live here and gone from the store.
///
/// And a `Refresh` (`PEXPIRE`) of a binding that expired does nothing: the router that still
/// routes the key never writes it again. Every other router answers its next request 404.
///
/// Expected: a key this router still routes stays in the store (a refresh that finds the
/// binding gone binds it again, and open streams refresh their key), or the defaults keep
/// the store's life longer than the table's. Actual: 404 on the other router.
#[test]
fn a_legacy_sse_session_whose_stream_is_open_stays_in_the_store() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = fleet_router(Router::builder(), &["x", "y"], t0, T0);
    let b = fleet_router(Router::builder(), &["x", "y"], t0, T0);
    let mut stream = forward(a.route(&get("/sse", &[]), t0));
    let endpoint = b"event: endpoint\ndata: /messages?sessionId=sse-1\n\n";
    let _ = respond(&a, &mut stream, 200, &[SSE], &[endpoint], t0);
    flush(&a, &mut store, t0);
    // The stream stays open; the user is away for two hours. A keeps up with its upkeep and
    // drains its writes.
    for _ in 0..120 {
        let now = clock.advance(Duration::from_secs(60));
        let _ = a.maintain(now, 1024);
        flush(&a, &mut store, now);
    }
    let now = clock.now();
    let message = post("/messages?sessionId=sse-1", &[]);
    // A still routes it (the stream holds it)…
    let ex = forward(route_via(&a, &store, &message, None, now));
    a.on_exchange_end(ex, End::Completed, now);
    flush(&a, &mut store, now);
    // …and the next message reaches B.
    let routed = route_via(&b, &store, &message, None, now);
    a.on_exchange_end(stream, End::Completed, now);
    let rejection = match routed {
        Routed::Forward(ex) => {
            b.on_exchange_end(ex, End::Completed, now);
            return;
        }
        Routed::Reject(rejection) => rejection,
        Routed::Lookup(_) => unreachable!(),
    };
    panic!(
        "a session whose stream is open on A is answered {} ({}) by B",
        rejection.status(),
        rejection.reason().as_str()
    );
}

/// Finding 11, second trigger, with no stream at all: the default idle TTL (1 hour from the
/// last use) outlives the store's hour (from the period's first use, when it was refreshed).
#[test]
fn a_streamable_session_live_on_one_router_is_not_404_on_another() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    // A wall clock on a 15-minute boundary, so that the test's periods are the router's.
    let unix = 1_795_500_000;
    assert_eq!(unix % 900, 0);
    let mut store = Store::default();
    let a = fleet_router(Router::builder(), &["x"], t0, unix);
    let b = fleet_router(Router::builder(), &["x"], t0, unix);
    initialize(&a, "s1", t0);
    flush(&a, &mut store, t0);
    let session = post("/mcp", &[("mcp-session-id", "s1"), LEGACY]);
    // The client works through A for 14 minutes (one refresh, at the first request).
    for _ in 0..14 {
        let now = clock.advance(Duration::from_secs(60));
        let ex = forward(route_via(&a, &store, &session, None, now));
        a.on_exchange_end(ex, End::Completed, now);
        flush(&a, &mut store, now);
    }
    // Then it pauses 55 minutes: idle less than the table's hour.
    let now = clock.advance(Duration::from_secs(55 * 60));
    let _ = a.maintain(now, 1024);
    let ex = forward(route_via(&a, &store, &session, None, now));
    a.on_exchange_end(ex, End::Completed, now);
    flush(&a, &mut store, now);
    match route_via(&b, &store, &session, None, now) {
        Routed::Forward(ex) => b.on_exchange_end(ex, End::Completed, now),
        Routed::Reject(rejection) => panic!(
            "a session A routes is answered {} ({}) by B: its binding expired in the store, \
             and A's refresh cannot bring it back",
            rejection.status(),
            rejection.reason().as_str()
        ),
        Routed::Lookup(_) => unreachable!(),
    }
}

// --- 12. Wrong status: a router behind on a comeback ends the new process's sessions ---------
/// Severity: WRONG STATUS (404 for live sessions) and STORE INCONSISTENCY (the live binding
/// is deleted from the store, so every other router answers 404 too), for seconds to minutes
/// on every backend restart in a fleet.
///
/// A router that saw a backend refuse connections keeps it down until its own checks see it
/// answer again (`healthy_after` good checks). Meanwhile the replica's new process is up, and
/// the routers that saw it first (or never saw it die) bind new sessions to it. When such a
/// session's request reaches the router that is behind, `on_lookup` finds a binding made
/// *after* the loss this router recorded (`bound at` ≥ `lost_before`: not a lost binding)
/// and still answers it from its stale local state: `OwnerDown`, 404, and it enqueues a
/// `Forget` that deletes the live binding from the store. (For an operator key: the binding
/// is forgotten and the key placed elsewhere: a split.)
///
/// Expected: a binding newer than this router's knowledge of its owner's loss is not judged
/// by that knowledge: 503 + `Retry-After` (`UnknownOwner`: "the router is behind"), and
/// nothing forgotten. Actual: 404, and the binding is deleted for every router.
#[test]
fn a_router_that_has_not_seen_a_comeback_does_not_end_the_new_process_s_sessions() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = fleet_router(Router::builder(), &["x", "y"], t0, T0);
    let b = fleet_router(Router::builder(), &["x", "y"], t0, T0);
    // x's process dies; B's checks see it refuse.
    let t1 = clock.advance(Duration::from_secs(30));
    sees_down(&b, "x", t1);
    flush(&b, &mut store, t1);
    // A few seconds later x's new process is up; A places a new session on it.
    let t2 = clock.advance(Duration::from_secs(5));
    let mut start = forward(a.route_with(&post("/mcp", &[]), t2, only(&a, Some("x"))));
    let _ = respond(&a, &mut start, 200, &[("mcp-session-id", "s1")], &[], t2);
    a.on_exchange_end(start, End::Completed, t2);
    flush(&a, &mut store, t2);
    // The session's next request reaches B, whose checks have not seen x answer yet.
    let next = post("/mcp", &[("mcp-session-id", "s1"), LEGACY]);
    let answer = match route_via(&b, &store, &next, None, t2) {
        Routed::Forward(ex) => {
            b.on_exchange_end(ex, End::Completed, t2);
            None
        }
        Routed::Reject(rejection) => Some(rejection),
        Routed::Lookup(_) => unreachable!(),
    };
    flush(&b, &mut store, t2);
    let still_bound = store.values.keys().any(|k| k.ends_with(":s1"));
    if let Some(rejection) = answer {
        assert_ne!(
            rejection.status(),
            StatusCode::NOT_FOUND,
            "a session of x's new process is answered 404 ({}) by a router behind on x's \
             comeback; still in the store afterwards: {still_bound}",
            rejection.reason().as_str()
        );
    }
    assert!(still_bound, "the live binding was deleted from the store");
}

/// The other side of 12 (fourth review): a session bound a second before its owner was found
/// refusing connections may be the dead process's. With a down grace (30 s here), past it
/// the session gets the 404 that makes its client start over, for as long as the backend
/// stays down here; not 503 until it expires. (Without one, 503 while down: unsure.)
#[test]
fn a_session_bound_just_before_its_owner_died_is_404_past_the_down_grace() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = fleet_router(Router::builder(), &["x"], t0, T0);
    let graced = Router::builder().down_grace(Duration::from_secs(30));
    let b = fleet_router(graced, &["x"], t0, T0);
    let _ = exchange(
        &a,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", "s0")],
        &[],
        t0,
    );
    flush(&a, &mut store, t0);
    let t1 = clock.advance(Duration::from_secs(1));
    sees_down(&b, "x", t1);
    for (later, status) in [
        (5, StatusCode::SERVICE_UNAVAILABLE),
        (30, StatusCode::NOT_FOUND),
        (3000, StatusCode::NOT_FOUND),
    ] {
        let now = t1 + Duration::from_secs(later);
        let next = post("/mcp", &[("mcp-session-id", "s0"), LEGACY]);
        let rejection = rejected(route_via(&b, &store, &next, None, now));
        assert_eq!(rejection.status(), status, "{later} s after the loss");
    }
}

// --- 13. Wrong status: a store that came back empty is believed before it is reseeded --------
/// Severity: WRONG STATUS (404 for every live session known only elsewhere, fleet-wide, for
/// as long as the reseed takes: a million keys per router at pipeline speed is seconds to
/// minutes), on every store restart or failover to an empty replica.
///
/// The outage policy is "a presented key unknown locally gets 503, never 404" while the
/// store is down; once it answers again, empty, each router is to call `reseed_store` and
/// bind its keys again. But a lookup is answered from whatever the store holds now, and
/// `Looked::Missing` is 404: until *every* router holding a session has finished its reseed,
/// that session is 404 on every other router. An embedder cannot answer `Unavailable`
/// instead: it cannot know when the other routers are done. (The same window follows any
/// `Bind` lost on the way, until that router reseeds.)
///
/// Expected: the protocol tells a store that is being reseeded from one that does not have
/// the key (for example a store epoch each router checks and bumps when its reseed is done,
/// or a `Looked` answer for it), and answers 503 meanwhile. Actual: 404.
#[test]
fn a_store_that_came_back_empty_is_not_believed_before_the_fleet_reseeded_it() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let a = fleet_router(Router::builder(), &["x", "y"], now, T0);
    let b = fleet_router(Router::builder(), &["x", "y"], now, T0);
    initialize(&a, "s1", now);
    flush(&a, &mut store, now);
    // The store restarts empty (or fails over to an empty replica); A starts reseeding, and
    // B serves a request of A's session before A is done. (Each router's embedder sees the
    // restart, for example by a marker key that is gone, and tells its router.)
    store.values.clear();
    a.on_store_restart(now);
    b.on_store_restart(now);
    let next = post("/mcp", &[("mcp-session-id", "s1"), LEGACY]);
    match route_via(&b, &store, &next, None, now) {
        Routed::Forward(ex) => b.on_exchange_end(ex, End::Completed, now),
        Routed::Reject(rejection) => assert_ne!(
            rejection.status(),
            StatusCode::NOT_FOUND,
            "a live session is 404 while the store is being reseeded ({})",
            rejection.reason().as_str()
        ),
        Routed::Lookup(_) => unreachable!(),
    }
}

// --- 14. Resource exhaustion: a client writes as many bindings to the store as it likes -------
/// Severity: RESOURCE EXHAUSTION of the shared store (memory, and a read plus a write per
/// request), by any client that can get a 2xx answer.
///
/// An operator key is client-chosen: a fresh value costs the router a store lookup, and once
/// any backend answers the request 2xx, a `Bind` that lives an hour. The table bounds what
/// clients make it hold (`operator_capacity`: a fresh key evicts an idle one), but an
/// eviction writes nothing to the store, so the store keeps every binding for its TTL: its
/// size grows with the client's request rate (1,000 requests a second is 3.6 million keys an
/// hour), bounded by no setting of the router. A store that fills up either fails writes
/// (every new conversation's bind is lost: 404 elsewhere) or, with an eviction policy,
/// evicts live bindings (404 for live sessions). Principle 3 ("everything is bounded") has no
/// clause for the store.
///
/// Expected: what one router writes to the store for client-chosen keys is bounded like
/// what its table holds (a budget per tenant or principal, counted and refused past it).
/// Actual: 61 bindings after 1,000 requests (a fresh key is learned whenever its table shard
/// holds an operator key to evict), growing linearly with the requests, for a table that
/// holds 4 operator keys.
#[test]
fn the_store_bindings_a_client_can_create_are_bounded() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let router = fleet_router(
        Router::builder()
            .operator_key(key_fn(workspace))
            .table_config(mcp_affinity::table::MemoryTableConfig::new().with_operator_capacity(4)),
        &["x"],
        now,
        T0,
    );
    // (Since the fix: the budget is a setting of the store, bounded by default.)
    let router = {
        let _ = router;
        fleet_router_with(
            Router::builder()
                .operator_key(key_fn(workspace))
                .table_config(
                    mcp_affinity::table::MemoryTableConfig::new().with_operator_capacity(4),
                ),
            SharedStore::new("mcp", now, T0).operator_binds(4),
            &["x"],
        )
    };
    for i in 0..1_000 {
        let _ = call_ws(&router, &store, &format!("junk-{i}"), None, now);
        flush(&router, &mut store, now);
    }
    let bound = store
        .values
        .keys()
        .filter(|k| k.starts_with("mcp:b:0:4:"))
        .count();
    assert!(
        bound <= 4,
        "one client made the router write {bound} bindings; its table holds {}",
        router.metrics().table.len
    );
    // Refused by the budget, not dropped: nothing the store should have is missing, so the
    // sync task has nothing to write back (a dropped write starts a reseed).
    let m = router.metrics();
    assert!(m.keys_learned > 4, "{m:?}");
    assert_eq!(
        m.store_operator_binds_refused,
        m.keys_learned - 4,
        "past the budget of 4"
    );
    assert_eq!(m.store_writes_dropped, 0);
}

// --- 15. Panic: a binding TTL of "forever" panics when a backend is lost ---------------------
/// Severity: PANIC (the proxy task that removes a backend, reports a health check or a
/// refused delivery dies; with a refused delivery, on the request path) from a setting.
///
/// `SharedStore::binding_ttl` takes any `Duration` (it only raises zero to 1 ms), and
/// `Duration::MAX` is the natural way to say "bindings never expire unless forgotten". The
/// lost record's life is computed as `ttl * 2`, which overflows and panics
/// ("overflow when multiplying duration by scalar") the first time a backend is lost.
///
/// Expected: the life saturates (or the setting is clamped). Actual: panic.
#[test]
fn a_binding_ttl_of_forever_does_not_panic_when_a_backend_is_lost() {
    let now = Clock::new().now();
    let router = fleet_router_with(
        Router::builder(),
        SharedStore::new("mcp", now, T0).binding_ttl(Duration::MAX),
        &["x", "y"],
    );
    let lost = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        router.remove_backend(id_of(&router, "x"), now).unwrap();
    }));
    assert!(lost.is_ok(), "remove_backend panicked");
}

/// A table whose `scan` breaks its contract (shows nothing, never completes): `reseed_store`
/// answers nothing rather than spin (its loop looks on only past entries it was shown).
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "a thread, so that a spinning reseed fails the test instead of hanging it"
)]
fn a_reseed_over_a_scan_that_makes_no_progress_returns() {
    use mcp_affinity::table::{
        Entry, Eviction, Insert, InsertError, Key, MemoryTable, Occupancy, OwnedKey, Principal,
        SessionTable, SetOwnerError,
    };

    struct Stuck(MemoryTable);
    impl SessionTable for Stuck {
        fn get(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
            self.0.get(key, now)
        }
        fn insert(
            &self,
            key: &Key<'_>,
            owner: BackendId,
            principal: Option<Principal>,
            now: Instant,
        ) -> Result<Insert, InsertError> {
            self.0.insert(key, owner, principal, now)
        }
        fn set_owner(
            &self,
            key: &Key<'_>,
            expected: BackendId,
            new: BackendId,
            now: Instant,
        ) -> Result<Entry, SetOwnerError> {
            self.0.set_owner(key, expected, new, now)
        }
        fn remove(&self, key: &Key<'_>, owner: Option<BackendId>) -> Option<Entry> {
            self.0.remove(key, owner)
        }
        fn open_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
            self.0.open_stream(key, now)
        }
        fn close_stream(&self, key: &Key<'_>, now: Instant) -> Option<Entry> {
            self.0.close_stream(key, now)
        }
        fn remove_owner(&self, owner: BackendId) -> usize {
            self.0.remove_owner(owner)
        }
        fn keys_of(&self, owner: BackendId, max: usize) -> Vec<OwnedKey> {
            self.0.keys_of(owner, max)
        }
        fn evict_idle(&self, now: Instant, max_work: usize) -> Eviction {
            self.0.evict_idle(now, max_work)
        }
        fn count_owner(&self, owner: BackendId) -> usize {
            self.0.count_owner(owner)
        }
        fn count_tenant(&self, tenant: TenantId) -> usize {
            self.0.count_tenant(tenant)
        }
        fn occupancy(&self) -> Occupancy {
            self.0.occupancy()
        }
        fn idle_ttl(&self) -> Option<Duration> {
            self.0.idle_ttl()
        }
        fn scan(&self, cursor: &mut u64, _: usize, _: &mut dyn FnMut(&Key<'_>, &Entry)) -> bool {
            *cursor = 1;
            false
        }
    }

    let now = Clock::new().now();
    let router = Router::builder()
        .table(Stuck(MemoryTable::new()))
        .shared_store(SharedStore::new("mcp", now, T0))
        .build();
    router
        .add(NewBackend::new(TenantId::DEFAULT, "http://x").name("x"))
        .unwrap();
    initialize(&router, "s1", now);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let writes = router.reseed_store(&mut ReseedCursor::default(), 10, now);
        let _ = done.send(writes.len());
    });
    assert_eq!(
        finished.recv_timeout(Duration::from_secs(10)),
        Ok(0),
        "reseed_store returns, with nothing"
    );
}

/// A binding another router made long ago, looked up and cached here, is cached as used now:
/// the next idle sweep does not take it (its next request would be another lookup).
#[test]
fn a_binding_cached_from_the_store_is_not_idle_at_once() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = op_router(&["x", "y"], t0);
    let b = fleet_router(
        Router::builder()
            .operator_key(key_fn(workspace))
            .table_config(
                mcp_affinity::table::MemoryTableConfig::new()
                    .with_idle_ttl(Some(Duration::from_secs(60))),
            ),
        &["x", "y"],
        t0,
        T0,
    );
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t0), "x");
    flush(&a, &mut store, t0);
    // Five minutes later (the binding is older than B's idle timeout), B serves it.
    let t1 = clock.advance(Duration::from_secs(300));
    assert_eq!(call_ws(&b, &store, "acme", None, t1), "x");
    assert_eq!(b.metrics().store_lookups, 1);
    let _ = b.maintain(t1 + Duration::from_secs(1), 1 << 20);
    assert!(
        matches!(
            b.route(&ws_call("acme"), t1 + Duration::from_secs(2)),
            Routed::Forward(_)
        ),
        "cached: a local hit, not another lookup"
    );
    assert_eq!(b.metrics().keys_expired, 0);
}

/// An operator's eviction of a key is fleet-wide: the store forgets it too, so that another
/// router does not look it up and route it.
#[test]
fn an_evicted_key_is_forgotten_in_the_store_too() {
    let clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let (a, b) = (
        fleet_router(Router::builder(), &["x", "y"], t0, T0),
        fleet_router(Router::builder(), &["x", "y"], t0, T0),
    );
    initialize(&a, "s-evicted", t0);
    flush(&a, &mut store, t0);
    let request = post("/mcp", &[("mcp-session-id", "s-evicted"), LEGACY]);
    let key =
        mcp_affinity::table::Key::new(TenantId::DEFAULT, KeyKind::Session, b"s-evicted").unwrap();
    assert!(a.evict_key(&key).is_some());
    flush(&a, &mut store, t0);
    assert!(rejected(route_via(&a, &store, &request, None, t0)).status() == StatusCode::NOT_FOUND);
    assert_eq!(
        rejected(route_via(&b, &store, &request, None, t0)).status(),
        StatusCode::NOT_FOUND,
        "another router finds it in the store no more"
    );
}

// --- 16. The operator budget paces binds; it must not lose a key a router routes by --------
// A change that made the budget also cover reseeds, and made an operator key's refresh a
// bare `PEXPIRE`, was attacked by a helper and reverted: each of these failed on it, with
// one workspace sent to two backends by two routers.

/// Whether the store holds a live binding for the operator key `ws`.
fn ws_bound(store: &Store, ws: &str, now: Instant) -> bool {
    store
        .values
        .keys()
        .any(|k| k.starts_with("mcp:b:0:4:") && k.ends_with(ws) && store.get(k, now).is_some())
}

/// A legitimate workspace is bound within r1's budget; a client spends the rest of the
/// window's budget on junk workspaces; the store restarts empty in the same window. The
/// reseed must write the workspace back (a reseed charged to the spent budget did not, and a
/// bare-`PEXPIRE` refresh never did either): else r1 keeps routing it to x while r2, after the
/// warm-up, finds it missing and places it on y.
#[test]
fn a_legit_operator_key_is_written_back_after_a_restart_in_a_spent_window() {
    let clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let r1 = fleet_router_with(
        Router::builder().operator_key(key_fn(workspace)),
        SharedStore::new("mcp", t0, T0).operator_binds(2),
        &["x", "y"],
    );
    let r2 = op_router(&["x", "y"], t0);

    assert_eq!(call_ws(&r1, &store, "legit", Some("x"), t0), "x");
    flush(&r1, &mut store, t0);
    assert!(ws_bound(&store, "legit", t0), "bound within the budget");
    // A client spends the rest of r1's budget for this window.
    for i in 0..3 {
        let _ = call_ws(&r1, &store, &format!("junk-{i}"), None, t0);
        flush(&r1, &mut store, t0);
    }

    // The store comes back empty, same budget window: r1 reseeds.
    let t1 = t0 + Duration::from_secs(60);
    store.values.clear();
    r1.on_store_restart(t1);
    for write in reseed_pass(&r1, 16, t1, || {}) {
        let _ = store.apply(write, t1);
    }

    // A refresh period later (past the warm-up, a new budget window), the workspace in use.
    let t2 = t1 + Duration::from_secs(16 * 60);
    assert_eq!(call_ws(&r1, &store, "legit", None, t2), "x");
    let _ = r1.maintain(t2, 1_000);
    flush(&r1, &mut store, t2);
    assert!(
        ws_bound(&store, "legit", t2),
        "a key bound within the budget is back in the store (reseed or refresh)"
    );
    assert_eq!(
        call_ws(&r2, &store, "legit", Some("y"), t2),
        "x",
        "one workspace, one backend across routers"
    );
}

/// A binding the store loses while r1 uses the key (Redis eviction under `maxmemory-policy
/// volatile-lru`/`allkeys-lru`: every binding has a TTL, the restart marker has none, so no
/// restart is seen and no reseed runs) is re-created by r1's next refresh (`Refresh`:
/// `PEXPIRE`, or `SET NX` if gone). A bare `PEXPIRE` left it missing while r1 routed it, and
/// r2 placed it anew.
#[test]
fn an_operator_binding_the_store_lost_is_written_back_by_the_refresh_pass() {
    let clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let r1 = op_router(&["x", "y"], t0);
    let r2 = op_router(&["x", "y"], t0);

    assert_eq!(call_ws(&r1, &store, "legit", Some("x"), t0), "x");
    flush(&r1, &mut store, t0);
    assert!(ws_bound(&store, "legit", t0));
    // Evicted.
    store.values.retain(|k, _| !k.ends_with("legit"));

    let t1 = t0 + Duration::from_secs(16 * 60);
    assert_eq!(call_ws(&r1, &store, "legit", None, t1), "x");
    let _ = r1.maintain(t1, 1_000);
    flush(&r1, &mut store, t1);
    assert!(
        ws_bound(&store, "legit", t1),
        "r1's refresh writes back the binding of a key it routes (it did before Extend)"
    );
    assert_eq!(call_ws(&r2, &store, "legit", Some("y"), t1), "x");
}

/// A reseed after a short outage (the Redis adapter reseeds when an outage ends and whenever
/// the router dropped a write) re-binds every operator key the router holds, most of which
/// the store still has. Charged to the window's budget, that housekeeping spent the budget
/// meant for new client keys: the next new workspace (r1's 3rd, budget 3) was kept local and
/// r2 placed it elsewhere, and the skipped re-binds were counted as refused client binds.
#[test]
fn a_reseed_of_keys_the_store_has_spends_no_budget_of_new_keys() {
    let clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let r1 = fleet_router_with(
        Router::builder().operator_key(key_fn(workspace)),
        SharedStore::new("mcp", t0, T0).operator_binds(3),
        &["x", "y"],
    );
    let r2 = op_router(&["x", "y"], t0);
    for ws in ["ws-0", "ws-1"] {
        assert_eq!(call_ws(&r1, &store, ws, Some("x"), t0), "x");
        flush(&r1, &mut store, t0);
    }
    // An outage ends (the store lost nothing): r1 reseeds.
    for write in reseed_pass(&r1, 16, t0, || {}) {
        if let Some((key, found)) = store.apply(write, t0) {
            r1.on_bind_taken(&key, &found, t0);
        }
    }
    // A new workspace, the 3rd r1 ever bound: within the budget of 3.
    assert_eq!(call_ws(&r1, &store, "fresh", Some("x"), t0), "x");
    flush(&r1, &mut store, t0);
    assert!(
        ws_bound(&store, "fresh", t0),
        "the 3rd new key of a budget of 3 is shared"
    );
    assert_eq!(call_ws(&r2, &store, "fresh", Some("y"), t0), "x");
    assert_eq!(
        r1.metrics().store_operator_binds_refused,
        0,
        "no client bind was refused"
    );
}

// --- 17. A carried key known only to the store -------------------------------------------
// (Third review.) With principal binding, a request that carries a session key without being
// routed by it (a 2026-07-28 call with an `Mcp-Session-Id`) was checked against the local
// table only: the router that held the session placed it, and any other router refused it as
// unknown (404), ending the client's session. Now the key is looked up in the store first.

fn alice(headers: &[(&'static str, &'static str)]) -> http::request::Parts {
    let mut all = vec![("authorization", "Bearer alice")];
    all.extend_from_slice(headers);
    post("/mcp", &all)
}

/// Alice's session, bound by router A, carried on a 2026-07-28 call that reaches router B:
/// B asks the store and places the call as A does. Mallory carrying it is refused as a hijack
/// (the 404 of another principal's session), an id nobody bound as unknown, and a
/// store that does not answer makes it 503, never 404.
#[test]
fn a_carried_key_only_the_store_knows_is_looked_up_before_the_request_is_placed() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let a = fleet_router(Router::builder().principal(bearer), &["x", "y"], now, T0);
    let b = fleet_router(Router::builder().principal(bearer), &["x", "y"], now, T0);
    let (_, start) = exchange(
        &a,
        &alice(&[]),
        200,
        &[("mcp-session-id", "alice-s")],
        &[],
        now,
    );
    assert!(matches!(start, HeadOutcome::Forward));
    flush(&a, &mut store, now);
    let carried = |who: &'static str, id: &'static str| {
        post(
            "/mcp",
            &[
                ("authorization", who),
                MODERN,
                ("mcp-method", "tools/list"),
                ("mcp-session-id", id),
            ],
        )
    };
    for router in [&a, &b] {
        let ex = forward(route_via(
            router,
            &store,
            &carried("Bearer alice", "alice-s"),
            None,
            now,
        ));
        assert_eq!(ex.how(), How::Placed);
        router.on_exchange_end(ex, End::Completed, now);
    }
    let lookups = b.metrics().store_lookups;
    assert!(lookups >= 1, "B asked the store");
    // Another principal carrying it: the hijack refusal, from the store's word as from A's table.
    for router in [&a, &b] {
        let refused = rejected(route_via(
            router,
            &store,
            &carried("Bearer mallory", "alice-s"),
            None,
            now,
        ));
        assert_eq!(refused.reason(), Reason::WrongPrincipal(KeyKind::Session));
    }
    // Bound nowhere: unknown, as before.
    let refused = rejected(route_via(
        &b,
        &store,
        &carried("Bearer alice", "nobody-s"),
        None,
        now,
    ));
    assert_eq!(refused.reason(), Reason::UnknownKey(KeyKind::Session));
    // The store does not answer: 503, never the 404 that ends a session.
    let Routed::Lookup(lookup) = b.route(&carried("Bearer alice", "alice-s"), now) else {
        panic!("a lookup");
    };
    let refused = rejected(b.on_lookup(lookup, Looked::Unavailable, now));
    assert_eq!(refused.reason(), Reason::StoreUnavailable(KeyKind::Session));
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A request routed by one key and carrying another, neither held by this router: the carried
/// key is looked up first, then the routing key; the request reaches the routing key's owner.
#[test]
fn a_request_may_ask_the_store_once_for_each_key_it_names() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let a = fleet_router(Router::builder().principal(bearer), &["x", "y"], now, T0);
    let b = fleet_router(Router::builder().principal(bearer), &["x", "y"], now, T0);
    // Two of Alice's sessions, bound by A: one legacy SSE, one Streamable HTTP.
    let mut connect = forward(a.route(&get("/sse", &[("authorization", "Bearer alice")]), now));
    let mut head = resp(200, &[SSE]);
    assert!(matches!(
        a.on_response_head(&mut connect, &mut head, now),
        HeadOutcome::Observe
    ));
    let event =
        bytes::Bytes::from_static(b"event: endpoint\ndata: /messages/?session_id=sse-1\n\n");
    let _ = a.on_response_chunk(&mut connect, &event, now);
    let sse_owner = connect.backend();
    let _ = exchange(
        &a,
        &alice(&[]),
        200,
        &[("mcp-session-id", "alice-s")],
        &[],
        now,
    );
    flush(&a, &mut store, now);
    // A legacy message routed by its session parameter, carrying the other session's header.
    let message = post(
        "/messages/?session_id=sse-1",
        &[
            ("authorization", "Bearer alice"),
            ("mcp-session-id", "alice-s"),
        ],
    );
    let mut asked = Vec::new();
    let mut routed = b.route(&message, now);
    while let Routed::Lookup(lookup) = routed {
        asked.push(lookup.kind());
        let answer = store.answer(lookup.key(), now);
        routed = b.on_lookup(lookup, answer, now);
    }
    assert_eq!(asked, [KeyKind::Session, KeyKind::SseSession]);
    let ex = forward(routed);
    assert_eq!(name_of(&b, ex.backend()), name_of(&a, sse_owner));
    assert_eq!(ex.how(), How::Pinned);
    b.on_exchange_end(ex, End::Completed, now);
    a.on_exchange_end(connect, End::Completed, now);
}
