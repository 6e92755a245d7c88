//! Fifth review: attacks on the carried-key lookup continuation, `down_since`, re-adds by
//! incarnation, and the sealing router's header removal. Each test states what should happen;
//! each failed on the commit it was written against (`f33ad7c`). Run with
//! `cargo test --all-features --test attack_round5`.
#![cfg(feature = "seal")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

use mcp_affinity::TenantId;
use mcp_affinity::router::{
    End, HeadOutcome, NewBackend, Probe, Routed, Router, RouterBuilder, Sealing, SharedStore,
};
use mcp_affinity::seal::{Keyring, SealKey};

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;
use common::sim_store::{flush, poll_lost, route_via};

fn fleet_router(builder: RouterBuilder, names: &[&str], now: Instant) -> Router {
    let router = builder
        .shared_store(SharedStore::new("mcp", now, T0))
        .build();
    for name in names {
        router
            .add(NewBackend::new(TenantId::DEFAULT, &format!("http://{name}")).name(name))
            .unwrap();
    }
    router
}

fn ring() -> Keyring {
    Keyring::new([SealKey::new([1; 32])]).unwrap()
}

fn sealing_router(at: Instant) -> Router {
    Router::builder()
        .sealing(Sealing::new(ring(), [9; 12], at, T0))
        .build()
}

fn x(incarnation: u32) -> NewBackend {
    NewBackend::new(TenantId::DEFAULT, "http://x")
        .name("x")
        .incarnation(incarnation)
}

/// An initialize through `router`, answered 200 with `id`: the token the client gets.
fn initialize_sealed(router: &Router, id: &str, now: Instant) -> String {
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

// --- R5-1. The carried-key continuation forwards to a cookie hint judged before the lookup ---

/// A session start (or any placed request) that carries a key this router does not hold and
/// an affinity cookie: `route` judges the cookie (a ready backend of the tenant) and stores
/// the backend in the lookup; while the store is asked, the backend is removed (or found
/// down, or starts draining). `on_lookup` then forwards to it without asking again whether it
/// is ready: a request sent to a removed backend. `route` at that moment would have placed
/// it on a ready one.
#[test]
fn a_cookie_hint_is_judged_again_after_the_store_answers() {
    let mut misrouted = Vec::new();
    for change in ["removed", "down", "draining"] {
        let now = Clock::new().now();
        let mut store = Store::default();
        let builder = || Router::builder().principal(bearer).affinity_cookie("aff");
        let a = fleet_router(builder(), &["x", "y"], now);
        let b = fleet_router(builder(), &["x", "y"], now);
        // Alice's session, bound by A.
        let (_, start) = exchange(
            &a,
            &post("/mcp", &[("authorization", "Bearer alice")]),
            200,
            &[("mcp-session-id", "alice-s")],
            &[],
            now,
        );
        assert!(matches!(start, HeadOutcome::Forward));
        flush(&a, &mut store, now);
        // A 2026-07-28 call carrying it, with a cookie naming x, reaches B.
        let bx = id_of(&b, "x");
        let cookie = format!("aff={}.{}", bx.slot(), bx.generation());
        let request = post(
            "/mcp",
            &[
                ("authorization", "Bearer alice"),
                MODERN,
                ("mcp-method", "tools/list"),
                ("mcp-session-id", "alice-s"),
                ("cookie", &cookie),
            ],
        );
        let Routed::Lookup(lookup) = b.route(&request, now) else {
            panic!("the carried key is looked up");
        };
        // Meanwhile x goes away (or stops taking new work) on B.
        match change {
            "removed" => {
                b.remove_backend(bx, now).unwrap();
            }
            "down" => {
                for _ in 0..3 {
                    b.report_health(bx, Probe::Refused, now).unwrap();
                }
            }
            _ => b.drain_backend(bx, None, now).unwrap(),
        }
        let found = store.answer(lookup.key(), now);
        let routed = b.on_lookup(lookup, found, now);
        let ex = forward(routed);
        let to = ex.backend();
        b.on_exchange_end(ex, End::Completed, now);
        if to == bx {
            misrouted.push(change);
        }
    }
    assert!(
        misrouted.is_empty(),
        "the continuation forwarded to x, {misrouted:?} since route judged the cookie; \
         route would now place it on y"
    );
}

// --- R5-2. A backend told of its new incarnation while down: that incarnation's sessions 404 --

/// Router B saw x refuse connections (down). The orchestrator restarted x as incarnation 2
/// and both routers were told at once (`set_incarnation`). Router A, whose checks already
/// see x, starts a session on incarnation 2 a second later. B gets the session's next
/// request before its own checks see x answer: the token names incarnation 2, which B
/// itself knows is the process after the loss, yet it is dated within the clock skew of B's
/// `down_since`, so B answers `OwnerDown` (404) and ends a live session. Expected: 503
/// (`UnknownOwner`, the router is behind on x's health), as before the `down_since` change.
#[test]
fn a_token_of_the_incarnation_after_the_loss_is_not_404_while_the_router_is_behind() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let a = sealing_router(t0);
    let b = sealing_router(t0);
    let ax = a.add(x(1)).unwrap();
    let bx = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    for _ in 0..3 {
        b.report_health(bx, Probe::Refused, t1).unwrap();
    }
    a.set_incarnation(ax, 2, t1).unwrap();
    b.set_incarnation(bx, 2, t1).unwrap();
    let t2 = clock.advance(Duration::from_secs(1));
    let token = initialize_sealed(&a, "new-process", t2);
    let refused = rejected(b.route(&call(&token), t2));
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a session of incarnation 2, which B knows came after the loss, got {} ({})",
        refused.status(),
        refused.reason().as_str()
    );
}

/// The same through `set_incarnation` alone: a router told of incarnation 2 later than
/// another (its orchestrator watch is a few seconds slow) refuses every token the other
/// sealed for incarnation 2 before then as a lost process's (404): `set_incarnation` raises
/// `lost_before` to now less the skew whatever the incarnation. (`add` was fixed for exactly
/// this by "a backend re-added by name with a higher incarnation keeps the sessions sealed
/// on the new process"; `set_incarnation` was not.)
#[test]
fn a_router_told_of_a_new_incarnation_late_keeps_that_incarnation_s_sessions() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let a = sealing_router(t0);
    let b = sealing_router(t0);
    let ax = a.add(x(1)).unwrap();
    let bx = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    a.set_incarnation(ax, 2, t1).unwrap();
    let t2 = clock.advance(Duration::from_secs(1));
    let token = initialize_sealed(&a, "new-process", t2);
    // B's watch catches up ten seconds later.
    let t3 = clock.advance(Duration::from_secs(10));
    b.set_incarnation(bx, 2, t3).unwrap();
    match b.route(&call(&token), t3) {
        Routed::Forward(ex) => b.on_exchange_end(ex, End::Completed, t3),
        Routed::Reject(r) => panic!(
            "a live session of incarnation 2 is refused by a router told of it late: {} ({})",
            r.status(),
            r.reason().as_str()
        ),
        Routed::Lookup(_) => unreachable!(),
    }
}

// --- R5-3. Re-added with a higher incarnation: the removal's store record condemns it anyway --

/// The restart the `add` change is about, with a shared store: router A sees x's new process
/// first (removes incarnation 1, adds 2) and binds a session to it. Router B sees the restart
/// ten seconds later and does the same; its `remove_backend` writes a lost record for the
/// name x dated then. Every router polls it (`on_lost`): the session bound to incarnation 2
/// before it is now "lost", A drops it from its table and both answer 404 (and delete the live
/// binding). The lost record carries no incarnation, so the local fix does not reach it.
#[test]
fn a_late_router_s_removal_record_does_not_condemn_the_new_incarnation_s_sessions() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut store = Store::default();
    let a = Router::builder()
        .shared_store(SharedStore::new("mcp", t0, T0))
        .build();
    let b = Router::builder()
        .shared_store(SharedStore::new("mcp", t0, T0))
        .build();
    let ax1 = a.add(x(1)).unwrap();
    let bx1 = b.add(x(1)).unwrap();
    let t1 = clock.advance(Duration::from_secs(30));
    a.remove_backend(ax1, t1).unwrap();
    a.add(x(2)).unwrap();
    flush(&a, &mut store, t1);
    let t2 = clock.advance(Duration::from_secs(1));
    let _ = exchange(
        &a,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", "s2")],
        &[],
        t2,
    );
    flush(&a, &mut store, t2);
    let t3 = clock.advance(Duration::from_secs(10));
    b.remove_backend(bx1, t3).unwrap();
    b.add(x(2)).unwrap();
    flush(&b, &mut store, t3);
    poll_lost(&a, &store, t3);
    poll_lost(&b, &store, t3);
    let next = post("/mcp", &[("mcp-session-id", "s2"), LEGACY]);
    for (name, router) in [("A", &a), ("B", &b)] {
        match route_via(router, &store, &next, t3) {
            Routed::Forward(ex) => router.on_exchange_end(ex, End::Completed, t3),
            Routed::Reject(r) => panic!(
                "{name}: a live session of incarnation 2 is refused after B's removal record: \
                 {} ({})",
                r.status(),
                r.reason().as_str()
            ),
            Routed::Lookup(_) => unreachable!(),
        }
        flush(router, &mut store, t3);
    }
}

// --- R5-4. Re-added with a lower incarnation: the removed process's tokens are 503 for a day --

/// A StatefulSet pod recreated under the same name starts its restart count at 0 again: the
/// backend is removed at incarnation 3 and re-added at 0. A token sealed by the removed
/// process (before the removal) belongs to a dead session: 404. The router answers
/// `UnknownOwner` (503, "another router knows a newer process") until the token's max age,
/// 24 hours: the client retries a dead session all day.
#[test]
fn a_removed_process_s_token_is_404_after_a_re_add_with_a_lower_incarnation() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let router = sealing_router(t0);
    let x3 = router.add(x(3)).unwrap();
    let token = initialize_sealed(&router, "old-process", t0);
    let t1 = clock.advance(Duration::from_secs(60));
    router.remove_backend(x3, t1).unwrap();
    router.add(x(0)).unwrap();
    for later in [0, 600, 3600] {
        let now = t1 + Duration::from_secs(later);
        let refused = rejected(router.route(&call(&token), now));
        assert_eq!(
            refused.status(),
            StatusCode::NOT_FOUND,
            "{later} s after the removal, the removed process's session gets {} ({})",
            refused.status(),
            refused.reason().as_str()
        );
    }
}

// --- R5-5. A 2xx start whose backend went away: a session-less success, never a 404 ----------

/// The sealing fix removes the `Mcp-Session-Id` of a 2xx initialize whose backend was removed
/// (or found down) while the answer was on its way, and forwards the 2xx. By the spec a client
/// that gets no session id runs without one: each later POST is a new "session start" to the
/// router, placed anywhere, and a stateful backend answers 400 to each; the client never gets
/// the 404 that makes it initialize again. Expected: the start is refused (`Replace`, 5xx, so
/// the client retries the initialize), as an unroutable id already is.
#[test]
fn a_2xx_start_whose_backend_went_away_is_not_a_session_less_success() {
    let now = Clock::new().now();
    let router = sealing_router(now);
    let id = router.add(x(1)).unwrap();
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    router.remove_backend(id, now).unwrap();
    let mut head = resp(200, &[("mcp-session-id", "minted"), SSE]);
    let outcome = router.on_response_head(&mut ex, &mut head, now);
    router.on_exchange_end(ex, End::Aborted, now);
    assert!(
        matches!(outcome, HeadOutcome::Replace(_)),
        "a 2xx initialize reaches the client without any session id: {outcome:?}, headers {:?}",
        head.headers
    );
}
