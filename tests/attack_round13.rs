//! Thirteenth review: the fleet driver (`tests/attack_store_driver.rs`) with each router
//! reading its wall clock at its own instant, a little off the true time (within the skew),
//! and router processes restarting mid-run with empty tables (`ATTACK_STORE_CLOCKS=1`).
//! Each test states what should happen; the findings (R13-n) fail on `f06d528` and pass
//! since their fixes. Run with `cargo test --all-features --test attack_round13`.

mod common;

use std::time::Duration;

use common::sim_store::{SimStore, backend, binding, call_ws, flush, poll_lost, router_at};
use common::*;

const T0: u64 = 1_795_000_000;

// --- R13-1. A count that started over is never written to the store ----------------------

/// `Router::set_incarnation` with a lower number (a replica whose count started over)
/// records the loss of the old process in this router's fleet only (`Fleet::set_incarnation`
/// raises `meta.lost`); it queues no `StoreWrite::Lost`, unlike `remove_backend` and a
/// backend found down (`store_lost`). The loss reaches the store only through this router's
/// next `reseed_store` (`lost_records`), which an embedder runs after an outage or an empty
/// store, not after an orchestrator event. A higher number needs no record among routers
/// that hear of it (they judge by number), but a router process that starts after the count
/// went back (a rolling update: an empty table, the fleet as the orchestrator has it now)
/// knows only the current number, and the store tells it nothing of the process of that
/// number that ended.
///
/// Here routers A and B bound workspace `acme` on x (incarnation 0) at `T0 + 1`; x restarts
/// as 1, then as 0 again (A and B hear of both); router C starts at `T0 + 30` with x at 0.
/// C's first request for `acme` finds `x:0:T0+1` in the store and caches it (x runs as 0,
/// and no lost record of `x:0` says otherwise). At a settle point (every queued write
/// performed, lost records read), A and B find `x:0:T0+1` of a lost process (made before
/// the step back) and bind `acme` afresh; C reads the lost record of `x:0` (none: nothing
/// wrote one) and keeps `acme` on x. A split of an operator key for as long as C keeps the
/// binding (with a session: a dead process's session forwarded to the new one, which
/// answers 404 itself). The driver found it as seed 2012 of 3,000 (400 steps, events on):
/// z stepped 0 -> 1 -> 0, two routers restarted after the step back, the third heard of it
/// late and re-placed the workspace.
///
/// Expected: every router sends `acme` to the same backend, e.g. `set_incarnation` queues a
/// lost record (of the old number, as `lost_records` keys it) when the number goes down, as
/// the other losses are written when they happen. Severity: medium-low (a count that started
/// over, back to a number a binding still in the store names, and a router process started
/// after it).
/// Code: `Router::set_incarnation` (src/router/control.rs), `Fleet::set_incarnation`,
/// `Router::store_lost` (never called for it). Fixed: `set_incarnation` to a lower number
/// queues the lost record.
#[test]
fn a_router_started_after_a_count_started_over_learns_the_old_process_was_lost() {
    let clock = Clock::new();
    let t0 = clock.now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let (a, b) = (router_at(t0, T0), router_at(t0, T0));
    let mut store = SimStore::default();
    for r in [&a, &b] {
        r.add(backend("x", 0)).unwrap();
        r.add(backend("y", 0)).unwrap();
    }
    assert_eq!(
        call_ws(&a, &mut store, "acme", Some("x"), at(1)),
        Ok("x".into())
    );
    assert_eq!(call_ws(&b, &mut store, "acme", None, at(2)), Ok("x".into()));
    assert_eq!(
        store.get("mcp:b:0:4:acme", at(2)),
        Some(binding("x", 0, T0 + 1).as_str())
    );
    // x restarts as 1, then its count starts over: 0 again. A and B hear of both.
    for (s, incarnation) in [(10, 1), (20, 0)] {
        for r in [&a, &b] {
            r.set_incarnation(id_of(r, "x"), incarnation, at(s))
                .unwrap();
            flush(r, &mut store, at(s));
        }
    }
    // C starts now (a rolling update): x runs as 0, as the orchestrator says.
    let c = router_at(at(30), T0 + 30);
    c.add(backend("x", 0)).unwrap();
    c.add(backend("y", 0)).unwrap();
    // Its first request for acme finds x:0:T0+1 in the store: x is running as 0.
    assert_eq!(
        call_ws(&c, &mut store, "acme", None, at(30)),
        Ok("x".into())
    );
    // A settle point: every write performed, every lost record read.
    for r in [&a, &b, &c] {
        flush(r, &mut store, at(31));
        poll_lost(r, &store, at(31));
    }
    let on: Vec<_> = [&a, &b, &c]
        .into_iter()
        .map(|r| call_ws(r, &mut store, "acme", Some("y"), at(32)))
        .collect();
    assert!(
        on.iter().all(|n| *n == on[0]),
        "acme goes to {on:?} through A, B, C (x:0:T0+1 is of the process x's count started \
         over from; C started after it)"
    );
}
