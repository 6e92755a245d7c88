//! Fourteenth review: `Router::set_incarnation` publishing the loss of a count that started
//! over (R13-1's fix), and the fleet driver's clocks mode pushed to the edge of the skew.
//! Each test states what should happen and fails on `d4e3657`; run with
//! `cargo test --all-features --test attack_round14 -- --ignored`.

mod common;

use std::time::Duration;

use common::sim_store::{SimStore, backend, binding, call_ws, flush, poll_lost, router_at};
use common::*;

const T0: u64 = 1_795_000_000;

// --- R14-1. The count climbs back past the number the loss was published under ----------

/// R13-1's fix publishes the loss of a count that started over under the new, lower number
/// only (`store_lost(self.fleet.identity(id))` in `Router::set_incarnation`, right after the
/// step down). A router polls the lost record of the number it runs now
/// (`Router::lost_keys`), and `Fleet::lost_records` keys a loss by `min(upto, current)`: once
/// the count climbs again (up-steps publish nothing), the loss that covers the new current
/// number is in the store under a number no router polls any more. A router process started
/// then knows only the current number, as in R13-1: a binding of that number made by the
/// *old* process (before the count started over) is taken for live by it, for lost by the
/// routers that saw the step down.
///
/// x runs as 1 when A binds `acme` on it (`x:1:T0+11`); x goes to 2 (no request for `acme`
/// since, so the binding stays in the store), then its count starts over at 0 (A and B
/// publish `lost:x:0`, before `T0+18`), then climbs to 1. C starts at `T0+30` with x at 1:
/// it polls `lost:x:1` (absent) and takes `x:1:T0+11` for live; A and B know the loss
/// `(upto 2, before T0+18)` and re-place `acme`. A split of an operator key for as long as
/// the binding lives (C refreshes it while it routes by it).
///
/// The fleet driver found it in the clocks mode: seed 15980 of 20,000
/// (400 steps, events on, `ATTACK_STORE_CLOCKS=1`, the first sweep): y's count went
/// 2 -> 0 -> 2 (the orchestrator's two events 4 s apart); two routers restarted after both
/// and knew y only as 2; the third applied both late, in one go, published `lost:y:0`
/// (polled by no one: every router runs y as 2) and re-placed `acme`, bound on y's old
/// process 2, on z, while the other two kept it on y.
///
/// Expected: every router sends `acme` to the same backend; e.g. `set_incarnation` (every
/// step, up or down, while a loss covers the new number) queues the lost records of the
/// backend as `lost_records` keys them now (or `Fleet::raise`'s callers publish each loss
/// keyed by every number up to `upto` a reader may poll, i.e. republish on up-steps).
/// Category: router bug (R13-1's fix is partial). Severity: medium-low (a count that started
/// over and climbed back to a number a binding still in the store names, with a router that
/// restarted after it or applied the steps in one go; operator keys split, sessions are
/// forwarded to a process that answers 404). Code: `Router::set_incarnation`
/// (src/router/control.rs: the `incarnation < was.incarnation` branch only) and
/// `Fleet::lost_records` (keys a loss by `min(upto, current)`, written only at a reseed).
#[test]
fn a_router_started_after_the_count_climbed_back_learns_the_old_process_was_lost() {
    let clock = Clock::new();
    let t0 = clock.now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let (a, b) = (router_at(t0, T0), router_at(t0, T0));
    let mut store = SimStore::default();
    for r in [&a, &b] {
        r.add(backend("x", 0)).unwrap();
        r.add(backend("y", 0)).unwrap();
        r.set_incarnation(id_of(r, "x"), 1, at(10)).unwrap();
        flush(r, &mut store, at(10));
    }
    assert_eq!(
        call_ws(&a, &mut store, "acme", Some("x"), at(11)),
        Ok("x".into())
    );
    assert_eq!(
        store.get("mcp:b:0:4:acme", at(11)),
        Some(binding("x", 1, T0 + 11).as_str())
    );
    // x restarts as 2, then its count starts over: 0, then 1 again. A and B hear of each.
    for (s, incarnation) in [(15, 2), (20, 0), (25, 1)] {
        for r in [&a, &b] {
            r.set_incarnation(id_of(r, "x"), incarnation, at(s))
                .unwrap();
            flush(r, &mut store, at(s));
        }
    }
    // C starts now (a rolling update): x runs as 1, as the orchestrator says.
    let c = router_at(at(30), T0 + 30);
    c.add(backend("x", 1)).unwrap();
    c.add(backend("y", 0)).unwrap();
    assert_eq!(
        call_ws(&c, &mut store, "acme", None, at(30)),
        Ok("x".into()),
        "C takes x:1:T0+11 for live"
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
        "acme goes to {on:?} through A, B, C (x:1:T0+11 is of the process x's count started \
         over from; C started after the count climbed back to 1)"
    );
}
