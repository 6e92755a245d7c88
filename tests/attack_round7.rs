//! Seventh review: attacks on `0fa44ca` (`Loss { before, upto }`, lost records keyed by the
//! newest incarnation lost, `set_incarnation` and re-adds judged by number), found by the
//! orchestrator events added to `tests/attack_store_driver.rs` (restarts numbered higher, the
//! same or lower, removals and re-adds, each router's watch lagging) and reduced here. Each
//! test states what should happen; each fails on `0fa44ca`. Run with
//! `cargo test --all-features --test attack_round7`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_affinity::router::key_fn;
use mcp_affinity::router::{End, HeadOutcome, Probe, Routed, Router, SharedStore};

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;
use common::sim_store::{backend, call_ws, flush, poll_lost, reseed, route_via};

fn router(at: Instant) -> Router {
    Router::builder()
        .operator_key(key_fn(workspace))
        .health_thresholds(2, 2)
        .shared_store(SharedStore::new("mcp", at, T0))
        .build()
}

// --- R7-1. A router behind on a re-add 404s the new incarnation's sessions ----------------

/// Driver seed 415 (and most of its `live404`s), reduced. x runs as incarnation 3 on routers
/// A and B. The orchestrator takes x out and puts it back as a new process, incarnation 5.
/// B's watch is ahead: it removes x, adds it back as incarnation 5, and starts a session on
/// the new process (its binding names incarnation 5, bound after the re-add). A's watch lags:
/// it has removed x and not yet re-added it. The client's next request reaches A: the
/// binding names a removed backend, and `looked_up` answers `Named::Removed =>
/// OwnerGone` (404), whatever the binding says; the client drops a session that is live on
/// x's new process. A knows the removed backend ran incarnation 3, and the binding names
/// incarnation 5, bound a minute after the removal: it cannot be the removed process's, so A
/// is behind (as `unsure` says of `binding.incarnation > down` for a down owner), and the
/// answer should be 503 (`UnknownOwner`), as for `Named::Unknown`. Once A re-adds x as 5 the
/// session routes (nothing was deleted). Code: `src/router/store.rs`, `looked_up`, the
/// `Named::Removed` arm (and `Fleet::named`, which does not say what was removed).
#[test]
fn a_router_behind_on_a_re_add_does_not_404_a_session_of_the_newer_incarnation() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, b) = (router(t0), router(t0));
    let mut store = Store::default();
    let xa = a.add(backend("x", 3)).unwrap();
    let xb = b.add(backend("x", 3)).unwrap();
    // Both routers hear of the removal.
    a.remove_backend(xa, t0).unwrap();
    b.remove_backend(xb, t0).unwrap();
    flush(&a, &mut store, t0);
    flush(&b, &mut store, t0);
    // A minute later, B (only) hears that x is back as incarnation 5, and starts a session.
    clock.advance(Duration::from_secs(60));
    let t1 = clock.now();
    b.add(backend("x", 5)).unwrap();
    let mut ex = forward(b.route(&post("/mcp", &[]), t1));
    let mut head = resp(200, &[("mcp-session-id", "s-new"), SSE]);
    assert!(matches!(
        b.on_response_head(&mut ex, &mut head, t1),
        HeadOutcome::Forward
    ));
    b.on_exchange_end(ex, End::Completed, t1);
    flush(&b, &mut store, t1);
    let call = post("/mcp", &[("mcp-session-id", "s-new"), LEGACY]);
    // B forwards it.
    assert!(matches!(
        route_via(&b, &store, &call, t1),
        Routed::Forward(_)
    ));
    // A, behind on the re-add.
    clock.advance(Duration::from_secs(1));
    let t2 = clock.now();
    match route_via(&a, &store, &call, t2) {
        Routed::Reject(r) => assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "A, behind on x's re-add as incarnation 5, answered {} ({}) for a live session of \
             incarnation 5 bound a minute after it removed incarnation 3",
            r.status(),
            r.reason().as_str()
        ),
        other => panic!("A, without x: {other:?}"),
    }
    // Caught up, A forwards it.
    a.add(backend("x", 5)).unwrap();
    flush(&a, &mut store, t2);
    assert!(matches!(
        route_via(&a, &store, &call, t2),
        Routed::Forward(_)
    ));
}

// --- R7-2. A reseeded lost record is keyed by a number nobody polls ------------------------

/// Driver seed 4 (its `split`), reduced. x's count started over: routers A and B knew it as
/// incarnation 2 and were told it runs as 0 now (`set_incarnation(0)`: each one's loss of x
/// is `{ before: t0 - skew, upto: 2 }`). A minute later B binds workspace `acme` to x
/// (incarnation 0); A looks it up and routes it there too. Then x's process dies and comes
/// back quickly (no new number: the orchestrator did not count it). A's checks see it down
/// (its loss becomes `{ before: t2 - skew, upto: 2 }`) and back; B's never do. A's lost
/// record write fails (the store blipped), so A's embedder reseeds, as the store docs ask:
/// `reseed_store` writes the record from `lost_records()`, keyed by the loss's `upto`,
/// `mcp:lost:0:{x}:2`. But B polls `lost_keys()`, keyed by the incarnation it runs,
/// `mcp:lost:0:{x}:0`, which nobody writes: B never hears that x's process 0 died, and keeps
/// `acme` on x. A's next call in `acme` finds the binding lost (bound before its cut-off),
/// clears it and binds `acme` afresh on y. One workspace, two backends, for good (the
/// same happens when the store restarts empty: every reseed writes under `upto`).
/// Expected: B learns of the loss and both routers send `acme` to one backend. Code:
/// `Fleet::lost_records` (names the record by `lost.upto`) against `Router::lost_keys`
/// (polls by the current incarnation) and `store_lost` (writes by the current incarnation):
/// once `upto` is above the current number (a count that started over), a reseeded record
/// lands where no router looks. (`raise_lost_before` would accept it: `0 <= 2`.)
#[test]
fn a_reseeded_lost_record_reaches_the_routers_of_a_count_that_started_over() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, b) = (router(t0), router(t0));
    let mut store = Store::default();
    for r in [&a, &b] {
        let x = r.add(backend("x", 2)).unwrap();
        r.add(backend("y", 0)).unwrap();
        // x's count started over.
        r.set_incarnation(x, 0, t0).unwrap();
        flush(r, &mut store, t0);
    }
    clock.advance(Duration::from_secs(60));
    let t1 = clock.now();
    assert_eq!(
        call_ws(&b, &mut store, "acme", Some("x"), t1),
        Ok("x".into())
    );
    assert_eq!(call_ws(&a, &mut store, "acme", None, t1), Ok("x".into()));
    // x's process dies and comes back (the same number); only A's checks see it.
    clock.advance(Duration::from_secs(60));
    let t2 = clock.now();
    let xa = id_of(&a, "x");
    for _ in 0..2 {
        let _ = a.report_health(xa, Probe::Refused, t2);
    }
    // A's lost record write fails; A's embedder reseeds once the store answers.
    let dropped = a.take_store_writes(usize::MAX);
    assert!(
        dropped.iter().any(|w| format!("{w:?}").contains("Lost")),
        "A wrote no lost record: {dropped:?}"
    );
    let _ = a.maintain(t2, 256);
    clock.advance(Duration::from_secs(5));
    let t3 = clock.now();
    for _ in 0..2 {
        let _ = a.report_health(xa, Probe::Up, t3);
    }
    reseed(&a, &mut store, t3);
    flush(&a, &mut store, t3);
    // Every router polls its lost records.
    poll_lost(&a, &store, t3);
    poll_lost(&b, &store, t3);
    let on_a = call_ws(&a, &mut store, "acme", Some("y"), t3);
    let on_b = call_ws(&b, &mut store, "acme", Some("y"), t3);
    // And once more, everything settled.
    poll_lost(&b, &store, t3);
    let again_b = call_ws(&b, &mut store, "acme", Some("y"), t3);
    assert_eq!(
        on_a,
        again_b,
        "acme goes to {on_a:?} through A and {on_b:?}, then {again_b:?} through B; B polls \
         {:?}, the store holds {:?}",
        b.lost_keys(),
        store
            .values
            .keys()
            .filter(|k| k.contains(":lost:"))
            .collect::<Vec<_>>()
    );
}
