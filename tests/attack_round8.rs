//! Eighth review: the violations the store driver's orchestrator events
//! (`ATTACK_STORE_INCARNATIONS=1` in tests/attack_store_driver.rs) still found on `c0c589a`,
//! reduced. Each test states what should happen; each failed on `c0c589a`. Run with
//! `cargo test --all-features --test attack_round8`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mcp_affinity::router::{Routed, Router, SharedStore, key_fn};

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;
use common::sim_store::{backend, flush, poll_lost, reseed, route_via, start};

fn router(at: Instant) -> Router {
    Router::builder()
        .operator_key(key_fn(workspace))
        .health_thresholds(2, 2)
        .shared_store(SharedStore::new("mcp", at, T0))
        .build()
}

#[track_caller]
fn assert_forwarded(routed: Routed, what: &str) {
    match routed {
        Routed::Forward(_) => {}
        Routed::Reject(r) => panic!("{what}: answered {} ({})", r.status(), r.reason().as_str()),
        Routed::Lookup(l) => panic!("{what}: {l:?}"),
    }
}

// --- R8-1. A reseeded lost record condemns the current process ------------------------------

/// Driver seeds 763 and 612 (and most of its `live404`s), reduced. x restarts as
/// incarnation 1. Router A hears it at once (`set_incarnation(1)`) and starts session `s` on the new
/// process. Router B's watch lags 33 s; it then applies the restart as `restart_backend` +
/// `set_incarnation(1)`: the restart records the loss of incarnation 0 (`{ before: t33 - skew,
/// upto: 0 }`, written as `mcp:lost:0:{x}:0`), which is true. Then B reseeds (after a store
/// blip, as the store docs ask): `Fleet::lost_records` names the record by the incarnation x
/// runs now, `mcp:lost:0:{x}:1 = t31` (the R7-2 fix, for a count that started over). That
/// says incarnation 1's process was lost at t31, which nobody saw. A polls `x:1`, raises its
/// loss to `{ t31, upto 1 }`, drops `s` from its table, and its next request finds the
/// binding (incarnation 1, bound at t19) condemned: 404 to a live session. (In seed 612 the
/// same record, merged with a router's own loss of an older incarnation dated later, gives a
/// loss neither router saw: `{ 112, 0 }` and `x:4 = 51` make `{ 112, 4 }`.)
/// Expected: a reseeded record speaks only of the incarnations its loss covers: keyed by the
/// loss's `upto` when that is not above the current number (routers that run a newer one
/// judge older bindings by number and need no record); by the current one only for a count
/// that started over (R7-2).
#[test]
fn a_reseeded_lost_record_of_an_older_incarnation_does_not_condemn_the_current_one() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, b) = (router(t0), router(t0));
    let mut store = Store::default();
    let xa = a.add(backend("x", 0)).unwrap();
    let xb = b.add(backend("x", 0)).unwrap();
    // A hears of the restart at once, and starts a session on the new process.
    a.set_incarnation(xa, 1, t0).unwrap();
    flush(&a, &mut store, t0);
    let t19 = clock.advance(Duration::from_secs(19));
    start(&a, &mut store, "s", t19);
    let call = post("/mcp", &[("mcp-session-id", "s"), LEGACY]);
    assert_forwarded(route_via(&a, &store, &call, t19), "A, before B caught up");
    // B catches up 33 s after the restart, and reseeds.
    let t33 = clock.advance(Duration::from_secs(14));
    let xb = b.restart_backend(xb, t33).unwrap();
    b.set_incarnation(xb, 1, t33).unwrap();
    flush(&b, &mut store, t33);
    reseed(&b, &mut store, t33);
    // Every router polls its lost records.
    poll_lost(&a, &store, t33);
    poll_lost(&b, &store, t33);
    for (name, r) in [("A", &a), ("B", &b)] {
        match route_via(r, &store, &call, t33) {
            Routed::Forward(_) => {}
            Routed::Reject(rej) => panic!(
                "{name} answered {} ({}) for a live session of x's incarnation 1, bound at t19; \
                 the store holds {:?}",
                rej.status(),
                rej.reason().as_str(),
                store
                    .values
                    .iter()
                    .filter(|(k, _)| k.contains(":lost:"))
                    .map(|(k, (v, _))| (k, v))
                    .collect::<Vec<_>>()
            ),
            Routed::Lookup(l) => panic!("{l:?}"),
        }
    }
}

// --- R8-2. Two losses merged into one condemn a process neither saw die ---------------------

/// Driver seed 2844, reduced. y runs as incarnation 2 on routers A and B; its count starts
/// over at 1 (both apply `set_incarnation(1)` at t0: each one's loss of y is
/// `{ before: t0 - skew, upto: 2 }`). Then y restarts as a new process numbered 2. A hears it
/// at t15 (`set_incarnation(2)`) and starts session `s` on it (bound as incarnation 2 at
/// t15). B hears it at t20, as `restart_backend` + `set_incarnation(2)`: the restart records
/// the loss of incarnation 1 at t20 - skew, which is true. But `Loss` is one time and one
/// incarnation: `raise` keeps the later time and the higher incarnation, `{ t18, upto 2 }`,
/// a loss of incarnation 2 at t18 that nobody saw (what B knows is "up to 2 before t-2" and
/// "up to 1 before t18"). B condemns `s` (incarnation 2, bound at t15 < t18): 404 to a live
/// session, and its binding is forgotten in the store. Expected: B forwards `s`. Code:
/// `Loss::raise` (src/router/fleet.rs), the bounding box of two losses that neither
/// contains.
#[test]
fn a_loss_of_an_older_incarnation_does_not_extend_an_earlier_loss_of_a_newer_one() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, b) = (router(t0), router(t0));
    let mut store = Store::default();
    let ya = a.add(backend("y", 2)).unwrap();
    let yb = b.add(backend("y", 2)).unwrap();
    // y's count started over.
    a.set_incarnation(ya, 1, t0).unwrap();
    b.set_incarnation(yb, 1, t0).unwrap();
    flush(&a, &mut store, t0);
    flush(&b, &mut store, t0);
    // y restarts as a new process numbered 2: A hears it first and starts a session on it.
    let t15 = clock.advance(Duration::from_secs(15));
    a.set_incarnation(ya, 2, t15).unwrap();
    start(&a, &mut store, "s", t15);
    let call = post("/mcp", &[("mcp-session-id", "s"), LEGACY]);
    assert_forwarded(route_via(&a, &store, &call, t15), "A");
    // B hears it five seconds later, as a restart and the new number.
    let t20 = clock.advance(Duration::from_secs(5));
    let yb = b.restart_backend(yb, t20).unwrap();
    b.set_incarnation(yb, 2, t20).unwrap();
    flush(&b, &mut store, t20);
    poll_lost(&a, &store, t20);
    poll_lost(&b, &store, t20);
    assert_forwarded(
        route_via(&b, &store, &call, t20),
        "B, for a live session of y's incarnation 2 bound at t15 (B knows incarnations up to 2 \
         lost before t-2, and up to 1 before t18)",
    );
    assert_forwarded(route_via(&a, &store, &call, t20), "A, after B");
}

// --- R8-3. A key of a lost process is written back under the current incarnation -----------

/// Driver seed 482 (its `split`), reduced. Router A learns session `s` on x (incarnation 2,
/// bound at t0). x's count starts over: `set_incarnation(0)` at t60 records the loss of
/// incarnations up to 2 before t58. `s` stays in A's table (the table keeps no incarnation
/// per key), and a reseed writes it back under x's current incarnation and the time it was
/// learned, `x:0:t0`: a binding A's own loss condemns. The bind is refused (the store holds
/// `x:2:t0`), `on_bind_taken` finds that lost, clears it and binds A's `x:0:t0`; the next
/// reseed or refresh pass finds `x:0:t0` lost in turn, clears it and binds it again: two
/// writes per such key on every pass, for as long as the key stays in the table. In the
/// driver they filled the write queue (8) and crowded out the repair of an operator key
/// whose owner was removed: the other routers bound it afresh elsewhere, a split. Expected:
/// a key this router's own losses condemn is not written back (and so not repaired either).
#[test]
fn a_key_of_a_lost_process_is_not_written_back_under_the_current_incarnation() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let a = router(t0);
    let mut store = Store::default();
    let x = a.add(backend("x", 2)).unwrap();
    start(&a, &mut store, "s", t0);
    let t60 = clock.advance(Duration::from_secs(60));
    a.set_incarnation(x, 0, t60).unwrap();
    flush(&a, &mut store, t60);
    for pass in 0..3 {
        reseed(&a, &mut store, t60);
        let writes = a.take_store_writes(usize::MAX);
        assert!(
            writes.is_empty(),
            "reseed {pass}: A queued {writes:?} for a session of x's lost incarnation 2"
        );
    }
    let value = store.get("mcp:b:0:2:s", t60);
    assert!(
        value.is_none_or(|v| !v.contains(":0:")),
        "the store names x's new process (incarnation 0) as s's owner: {value:?}"
    );
}
