//! Sixth review: attacks on `c2992f1` (the order of `lost` and `UnknownOwner`, lost records
//! by incarnation, `down_grace`). Each test states what should happen; each failed on
//! `c2992f1` (R6-6's, since rewritten to the documented contract). Run with
//! `cargo test --all-features --test attack_round6`.
#![cfg(feature = "seal")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_affinity::router::key_fn;
use mcp_affinity::router::store::MAX_LOOKUPS;
use mcp_affinity::router::{
    End, HeadOutcome, NewBackend, Probe, Routed, Router, RouterBuilder, Sealing, SharedStore,
};
use mcp_affinity::seal::{Keyring, SealKey};
use mcp_affinity::{BackendId, TenantId};

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;
use common::sim_store::{flush, poll_lost, route_via};

fn ring() -> Keyring {
    Keyring::new([SealKey::new([1; 32])]).unwrap()
}

fn sealing_router(at: Instant) -> Router {
    Router::builder()
        .sealing(Sealing::new(ring(), [9; 12], at, T0))
        .build()
}

fn store_router(at: Instant) -> Router {
    store_builder(Router::builder(), at)
}

fn store_builder(builder: RouterBuilder, at: Instant) -> Router {
    builder
        .shared_store(SharedStore::new("mcp", at, T0))
        .build()
}

fn x(incarnation: u32) -> NewBackend {
    NewBackend::new(TenantId::DEFAULT, "http://x")
        .name("x")
        .incarnation(incarnation)
}

/// An initialize through `router`, answered 200 with `id`: the id the client gets.
fn initialize_at(router: &Router, id: &str, now: Instant) -> String {
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let mut head = resp(200, &[("mcp-session-id", id), SSE]);
    assert!(matches!(
        router.on_response_head(&mut ex, &mut head, now),
        HeadOutcome::Forward
    ));
    router.on_exchange_end(ex, End::Completed, now);
    head.headers["mcp-session-id"].to_str().unwrap().to_string()
}

fn call(token: &str) -> http::request::Parts {
    post("/mcp", &[("mcp-session-id", token), LEGACY])
}

fn expect_503(routed: Routed, what: &str) {
    match routed {
        Routed::Reject(r) => assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: got {} ({})",
            r.status(),
            r.reason().as_str()
        ),
        Routed::Forward(_) => {}
        Routed::Lookup(_) => unreachable!(),
    }
}

fn expect_forward(router: &Router, routed: Routed, now: Instant, what: &str) {
    match routed {
        Routed::Forward(ex) => router.on_exchange_end(ex, End::Completed, now),
        Routed::Reject(r) => panic!("{what}: got {} ({})", r.status(), r.reason().as_str()),
        Routed::Lookup(_) => unreachable!(),
    }
}

// --- R6-1. A router behind on the re-add 404s the new incarnation's sessions -----------------

/// x's process 1 dies; the orchestrator brings it back as incarnation 2 at a new address.
/// Router A is told first: it removes x (incarnation 1) and re-adds it as incarnation 2, and
/// starts a session on the new process a second later. Router B is told 20 s later; meanwhile
/// its health checks, still aimed at process 1's address, find x refusing 15 s after the
/// restart and mark it down. The client's next request reaches B: the token names
/// incarnation 2, which B has never seen (B is behind), and is dated 14 s before B's own
/// `lost_before`. `c2992f1` puts `lost` ("sealed before a known loss, whatever its number")
/// before `UnknownOwner`, so B answers `OwnerDown` (404) and ends a live session on a
/// process B knows nothing of. Its own `unsure` rule even says a newer incarnation than the
/// one that went down is "surely the new process's". Expected: 503, as before `c2992f1`.
#[test]
fn a_router_behind_on_a_re_add_does_not_404_the_new_incarnation_s_token() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let a = sealing_router(t0);
    let b = sealing_router(t0);
    let ax1 = a.add(x(1)).unwrap();
    let bx1 = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    a.remove_backend(ax1, t1).unwrap();
    a.add(x(2)).unwrap();
    let t2 = clock.advance(Duration::from_secs(1));
    let token = initialize_at(&a, "new-process", t2);
    let t3 = clock.advance(Duration::from_secs(14));
    for _ in 0..3 {
        b.report_health(bx1, Probe::Refused, t3).unwrap();
    }
    expect_503(
        b.route(&call(&token), t3),
        "B (behind, x1 down here) refuses a token of incarnation 2",
    );
    // Once B catches up, the session routes.
    let t4 = clock.advance(Duration::from_secs(5));
    b.remove_backend(bx1, t4).unwrap();
    b.add(x(2)).unwrap();
    expect_forward(&b, b.route(&call(&token), t4), t4, "B, caught up");
}

/// The same with a shared store, where it does lasting harm: B answers 404 and also queues a
/// `Forget` of the live binding (compare-and-delete on its exact value), so the store loses
/// it. Once B catches up, B (and every router that does not cache the key) finds nothing in
/// the store and answers 404 `UnknownKey`, while A still forwards the session from its own
/// table: the fleet is split on a live session. Expected: 503 on B while it is behind,
/// nothing deleted, and B forwards once it caught up.
#[test]
fn a_router_behind_on_a_re_add_does_not_delete_the_new_incarnation_s_binding() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = store_router(t0);
    let b = store_router(t0);
    let ax1 = a.add(x(1)).unwrap();
    let bx1 = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    a.remove_backend(ax1, t1).unwrap();
    a.add(x(2)).unwrap();
    flush(&a, &mut store, t1);
    let t2 = clock.advance(Duration::from_secs(1));
    let id = initialize_at(&a, "s2", t2);
    flush(&a, &mut store, t2);
    let t3 = clock.advance(Duration::from_secs(14));
    for _ in 0..3 {
        b.report_health(bx1, Probe::Refused, t3).unwrap();
    }
    flush(&b, &mut store, t3);
    poll_lost(&a, &store, t3);
    poll_lost(&b, &store, t3);
    expect_503(
        route_via(&b, &store, &call(&id), t3),
        "B (behind, x1 down here) on a binding of incarnation 2",
    );
    flush(&b, &mut store, t3);
    let t4 = clock.advance(Duration::from_secs(5));
    b.remove_backend(bx1, t4).unwrap();
    b.add(x(2)).unwrap();
    flush(&b, &mut store, t4);
    poll_lost(&a, &store, t4);
    poll_lost(&b, &store, t4);
    expect_forward(&a, route_via(&a, &store, &call(&id), t4), t4, "A");
    expect_forward(
        &b,
        route_via(&b, &store, &call(&id), t4),
        t4,
        "B, caught up",
    );
}

/// R6-1's lasting harm on its own: whatever B answers while behind, once it caught up the
/// live session must still route on every router (B's 404 deleted the binding from the
/// store: A forwards from its table, B answers `UnknownKey` 404).
#[test]
fn a_live_binding_survives_a_router_that_was_behind_on_a_re_add() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = store_router(t0);
    let b = store_router(t0);
    let ax1 = a.add(x(1)).unwrap();
    let bx1 = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    a.remove_backend(ax1, t1).unwrap();
    a.add(x(2)).unwrap();
    flush(&a, &mut store, t1);
    let t2 = clock.advance(Duration::from_secs(1));
    let id = initialize_at(&a, "s2", t2);
    flush(&a, &mut store, t2);
    let t3 = clock.advance(Duration::from_secs(14));
    for _ in 0..3 {
        b.report_health(bx1, Probe::Refused, t3).unwrap();
    }
    flush(&b, &mut store, t3);
    let _ = route_via(&b, &store, &call(&id), t3);
    flush(&b, &mut store, t3);
    let t4 = clock.advance(Duration::from_secs(5));
    b.remove_backend(bx1, t4).unwrap();
    b.add(x(2)).unwrap();
    flush(&b, &mut store, t4);
    poll_lost(&a, &store, t4);
    poll_lost(&b, &store, t4);
    expect_forward(&a, route_via(&a, &store, &call(&id), t4), t4, "A");
    expect_forward(
        &b,
        route_via(&b, &store, &call(&id), t4),
        t4,
        "B, caught up",
    );
}

// --- R6-2. The same for an operator key: the router behind re-places it (two owners) ------

/// A workspace call through `router` (placements only on `choose`, if given), answered 200
/// by whichever backend gets it: that backend's name, or the rejection's status.
fn call_ws(
    router: &Router,
    store: &Store,
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
    match routed {
        Routed::Forward(mut ex) => {
            let name = name_of(router, ex.backend());
            let _ = respond(router, &mut ex, 200, &[JSON], &[b"{}"], now);
            router.on_exchange_end(ex, End::Completed, now);
            Ok(name)
        }
        Routed::Reject(r) => Err(r.status().as_u16()),
        Routed::Lookup(_) => unreachable!(),
    }
}

fn op_router(at: Instant) -> Router {
    let router = store_builder(Router::builder().operator_key(key_fn(workspace)), at);
    router
        .add(NewBackend::new(TenantId::DEFAULT, "http://y").name("y"))
        .unwrap();
    router
}

/// R6-1 with a workspace (operator key): A, told first of x's restart as incarnation 2,
/// binds workspace `acme` to x (incarnation 2). B, behind on the re-add, sees x's old process
/// refuse 15 s after the restart. B's next call in `acme` finds the binding of incarnation 2
/// "lost" (dated before B's own cut-off, whatever its number), clears it from the store and
/// binds `acme` afresh on y, while A goes on sending `acme` to x from its table: one
/// workspace, two backends (a misroute no backend 404 corrects). Expected: B answers 503
/// while behind (as `c2992f1` does for operator keys it is unsure of), and both routers
/// send `acme` to one backend.
#[test]
fn a_router_behind_on_a_re_add_does_not_re_place_the_new_incarnation_s_workspace() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = op_router(t0);
    let b = op_router(t0);
    let ax1 = a.add(x(1)).unwrap();
    let bx1 = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    a.remove_backend(ax1, t1).unwrap();
    a.add(x(2)).unwrap();
    flush(&a, &mut store, t1);
    let t2 = clock.advance(Duration::from_secs(1));
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t2), Ok("x".into()));
    flush(&a, &mut store, t2);
    let t3 = clock.advance(Duration::from_secs(14));
    for _ in 0..3 {
        b.report_health(bx1, Probe::Refused, t3).unwrap();
    }
    flush(&b, &mut store, t3);
    poll_lost(&a, &store, t3);
    poll_lost(&b, &store, t3);
    let via_b = call_ws(&b, &store, "acme", None, t3);
    flush(&b, &mut store, t3);
    let via_a = call_ws(&a, &store, "acme", None, t3);
    assert!(
        via_b == Err(503) || via_b == via_a,
        "one workspace, two owners: A sends it to {via_a:?}, B to {via_b:?}"
    );
    let _ = id_of(&a, "x");
}

// --- R6-3. A workspace whose backend was removed is 404 for the binding's life ------------------

/// Scale-down: the operator removes x from every router. Workspace `acme` was bound to x.
/// A client cannot start an operator key over (the router docs: "when its owner is gone, the
/// key is bound afresh"), and in the 2026-07-28 era a 404 means "method not found". A router
/// that holds `acme` in its table re-places it; but one that must look it up finds the
/// store's binding naming a removed backend and answers `OwnerGone` (404), before the
/// operator-key branch that would bind it afresh (`looked_up`: `Named::Removed => reject`).
/// Nothing clears that binding (no router refreshes a removed owner's key, and the 404 path
/// queues no `Forget`), so the workspace is 404 on every such router until the binding
/// expires (1 h by default). Expected: placed afresh, as for a lost or down owner.
#[test]
fn a_workspace_whose_backend_was_removed_is_placed_afresh_not_404() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = op_router(t0);
    let b = op_router(t0);
    a.add(x(0)).unwrap();
    b.add(x(0)).unwrap();
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t0), Ok("x".into()));
    flush(&a, &mut store, t0);
    let t1 = clock.advance(Duration::from_secs(60));
    for router in [&a, &b] {
        router.remove_backend(id_of(router, "x"), t1).unwrap();
        flush(router, &mut store, t1);
    }
    for later in [0, 120, 1800] {
        let now = t1 + Duration::from_secs(later);
        let via_b = call_ws(&b, &store, "acme", None, now);
        flush(&b, &mut store, now);
        assert_eq!(
            via_b,
            Ok("y".into()),
            "{later} s after x's removal, B answers the workspace {via_b:?}"
        );
    }
}

// --- R6-4. A new incarnation: a cached workspace stays on it, a looked-up one moves -----------

/// x restarts quickly as incarnation 2 (its checks never see it down) and both routers are
/// told at once (`set_incarnation`). Workspace `acme` was bound to x's process 1 by A, which
/// keeps it in its table. `set_incarnation` leaves table keys alone ("a new process that
/// does not know them answers 404 itself"), but nothing answers 404 for an operator key: A
/// goes on sending `acme` to x (incarnation 2). B, which must look it up, finds a binding of
/// incarnation 1 < 2, takes it for lost, clears it and binds `acme` afresh on y. One
/// workspace, two backends. No lost record is written for a `set_incarnation`, so A never
/// hears of it. Expected: both routers send `acme` to one backend.
#[test]
fn a_new_incarnation_moves_a_workspace_on_every_router_or_on_none() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = op_router(t0);
    let b = op_router(t0);
    let ax = a.add(x(1)).unwrap();
    let bx = b.add(x(1)).unwrap();
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t0), Ok("x".into()));
    flush(&a, &mut store, t0);
    let t1 = clock.advance(Duration::from_secs(60));
    a.set_incarnation(ax, 2, t1).unwrap();
    b.set_incarnation(bx, 2, t1).unwrap();
    let t2 = clock.advance(Duration::from_secs(1));
    let via_b = call_ws(&b, &store, "acme", Some("y"), t2);
    flush(&b, &mut store, t2);
    for r in [&a, &b] {
        poll_lost(r, &store, t2);
    }
    let via_a = call_ws(&a, &store, "acme", None, t2);
    assert_eq!(
        via_a, via_b,
        "one workspace, two owners: A sends it to {via_a:?}, B to {via_b:?}"
    );
}

// --- R6-5. A loss recorded under the recorder's stale incarnation is lost on the others ------

/// The orchestrator numbers x's process 2; C is told at once, A's watch is slow. C binds
/// workspace `acme` to x (incarnation 2) and caches it. Process 2 then crashes and is
/// restarted in place within seconds (its supervisor keeps the number): A sees it refuse and
/// come back, C's checks miss it. A records the loss under the incarnation it knows,
/// `lost:…:1`; C polls only `lost:…:2` (`lost_keys` names the current incarnation), so C
/// never hears of it and keeps `acme` on x. Once A is told of incarnation 2, the binding
/// (incarnation 2, bound before A's cut-off) is lost to A, which clears it and binds `acme`
/// afresh elsewhere: one workspace, two backends, for as long as C caches it. Before
/// `c2992f1` the record named no incarnation and C dropped its cached key on reading it.
/// Expected: both routers send `acme` to one backend once they agree on x.
#[test]
fn a_loss_seen_by_a_router_behind_on_the_incarnation_reaches_the_others() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = op_router(t0);
    let c = op_router(t0);
    let ax = a.add(x(1)).unwrap();
    let cx = c.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    c.set_incarnation(cx, 2, t1).unwrap();
    let t2 = clock.advance(Duration::from_secs(5));
    assert_eq!(call_ws(&c, &store, "acme", Some("x"), t2), Ok("x".into()));
    flush(&c, &mut store, t2);
    // Process 2 crashes; A sees it refuse, then answer again.
    let t3 = clock.advance(Duration::from_secs(60));
    for _ in 0..3 {
        a.report_health(ax, Probe::Refused, t3).unwrap();
    }
    flush(&a, &mut store, t3);
    let t4 = clock.advance(Duration::from_secs(5));
    for _ in 0..3 {
        a.report_health(ax, Probe::Up, t4).unwrap();
    }
    // A's watch catches up.
    let t5 = clock.advance(Duration::from_secs(5));
    a.set_incarnation(ax, 2, t5).unwrap();
    for r in [&a, &c] {
        flush(r, &mut store, t5);
        poll_lost(r, &store, t5);
    }
    let via_a = call_ws(&a, &store, "acme", Some("y"), t5);
    flush(&a, &mut store, t5);
    for r in [&a, &c] {
        poll_lost(r, &store, t5);
    }
    let via_c = call_ws(&c, &store, "acme", None, t5);
    assert!(
        via_a == via_c || via_a == Err(503),
        "one workspace, two owners: A sends it to {via_a:?}, C to {via_c:?}"
    );
}

// --- R6-6. `down_grace` does not bound an operator key's 503 --------------------------------

/// One router with a store and `down_grace(10 s)`: workspace `acme` is bound to x one second
/// before x dies (within the clock skew of the loss) and x never answers again. The review
/// found the grace did not bound the workspace's 503 while the docs did not say so; the
/// exemption is deliberate (binding it afresh on an unsure reading splits it between routers:
/// the store driver, seed 43), and the docs of `down_grace` now say so. This holds the router
/// to them: still 503 past the grace, never bound elsewhere, and bound afresh once x is
/// removed.
#[test]
fn down_grace_does_not_re_bind_an_operator_key_on_an_unsure_reading() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = store_builder(
        Router::builder()
            .operator_key(key_fn(workspace))
            .down_grace(Duration::from_secs(10)),
        t0,
    );
    a.add(NewBackend::new(TenantId::DEFAULT, "http://y").name("y"))
        .unwrap();
    let ax = a.add(x(0)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    assert_eq!(call_ws(&a, &store, "acme", Some("x"), t1), Ok("x".into()));
    flush(&a, &mut store, t1);
    let t2 = clock.advance(Duration::from_secs(1));
    for _ in 0..3 {
        a.report_health(ax, Probe::Refused, t2).unwrap();
    }
    let _ = a.maintain(t2, 1024);
    flush(&a, &mut store, t2);
    let t3 = clock.advance(Duration::from_secs(600));
    let _ = a.maintain(t3, 1024);
    let via = call_ws(&a, &store, "acme", None, t3);
    assert_eq!(via, Err(503), "10 min after x died, `acme` gets {via:?}");
    a.remove_backend(ax, t3).unwrap();
    flush(&a, &mut store, t3);
    let via = call_ws(&a, &store, "acme", None, t3);
    assert_eq!(via, Ok("y".into()), "x removed, `acme` gets {via:?}");
}
