//! Tenth review: the two splits a 12,000-seed sweep of the store driver found with the
//! orchestrator events on (`ATTACK_STORE_INCARNATIONS=1` in tests/attack_store_driver.rs,
//! seeds 5105 and 7824, on `bdb92ec`), reduced. Each test states what should happen; each
//! failed on `bdb92ec`. Run with `cargo test --all-features --test attack_round10`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mcp_affinity::router::key_fn;
use mcp_affinity::router::store::StoreWrite;
use mcp_affinity::router::{Probe, Router, SharedStore};

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;
use common::sim_store::{backend, call_ws, fingerprint, flush, poll_lost, reseed};

fn router(at: Instant) -> Router {
    Router::builder()
        .operator_key(key_fn(workspace))
        .health_thresholds(2, 2)
        .shared_store(SharedStore::new("mcp", at, T0))
        .build()
}

// --- R10-1. A re-add forgets what the router knew was lost of the name ----------------------

/// Driver seeds 5105 and 7824 (events on), reduced. Workspace `acme` is bound on x, which
/// runs as incarnation 1 (`x:1:t0`). x's count starts over: a new process numbered 0. Both
/// routers hear it at t10 and record the loss of incarnations up to 1 before t8 (router A by
/// `set_incarnation(0)` or by remove + `add` as 0: seed 5105 had the first, 7824 the
/// second). Then x restarts again, numbered 1. B applies it as `set_incarnation(1)` (or
/// `restart_backend`, which carries its losses): `acme`'s binding, of incarnation 1 made at
/// t0 < t8, is lost. A applies it as `remove_backend` + `add` as 1: a re-add inherits only
/// "removed at t10 as incarnation 0" (which says nothing of a higher number), and forgets
/// the loss of incarnation 1 before t8. Polling cannot bring it back: its record is keyed
/// `x:0` (the number x ran when the loss was learned, R7-2/R8-1), and a router at 1 ignores
/// it. So A takes `x:1:t0` for the running process and keeps `acme` on x, while B clears it
/// and binds it afresh elsewhere: a split at a settle point, all watches caught up.
/// Expected: a re-add under a removed name keeps the losses the router knew of that name
/// (facts about processes that ended, as `restart_backend` keeps them), so both routers
/// condemn `x:1:t0` and agree. Code: `Fleet::remove` / `Router::add` (`State::removed`).
#[test]
fn a_re_add_under_a_removed_name_keeps_the_losses_known_of_that_name() {
    for count_over_by_readd in [false, true] {
        let mut clock = Clock::new();
        let t0 = clock.now();
        let (a, b) = (router(t0), router(t0));
        let mut store = Store::default();
        for r in [&a, &b] {
            r.add(backend("x", 1)).unwrap();
            r.add(backend("y", 0)).unwrap();
        }
        assert_eq!(
            call_ws(&a, &mut store, "acme", Some("x"), t0),
            Ok("x".into())
        );
        assert_eq!(call_ws(&b, &mut store, "acme", None, t0), Ok("x".into()));
        // x's count starts over (a new process numbered 0), heard by both at t10.
        let t10 = clock.advance(Duration::from_secs(10));
        let xa = id_of(&a, "x");
        if count_over_by_readd {
            a.remove_backend(xa, t10).unwrap();
            a.add(backend("x", 0)).unwrap();
        } else {
            a.set_incarnation(xa, 0, t10).unwrap();
        }
        b.set_incarnation(id_of(&b, "x"), 0, t10).unwrap();
        flush(&a, &mut store, t10);
        flush(&b, &mut store, t10);
        // x restarts again, numbered 1: A re-adds it, B sets the number.
        let t12 = clock.advance(Duration::from_secs(2));
        a.remove_backend(id_of(&a, "x"), t12).unwrap();
        a.add(backend("x", 1)).unwrap();
        b.set_incarnation(id_of(&b, "x"), 1, t12).unwrap();
        flush(&a, &mut store, t12);
        flush(&b, &mut store, t12);
        // `acme`'s binding (x:1:t0) is of a lost process: A binds it afresh (on y, the only
        // backend offered), and B follows the store.
        let on_a = call_ws(&a, &mut store, "acme", Some("y"), t12);
        let on_b = call_ws(&b, &mut store, "acme", Some("y"), t12);
        assert_eq!(
            (on_a.clone(), on_b.clone()),
            (Ok("y".into()), Ok("y".into())),
            "count started over by {}: A sends acme to {on_a:?}, B to {on_b:?} (the store \
             holds {:?})",
            if count_over_by_readd {
                "a re-add"
            } else {
                "set_incarnation"
            },
            store
                .values
                .iter()
                .filter(|(k, _)| k.contains("acme"))
                .collect::<Vec<_>>()
        );
    }
}

// --- R10-2. An adopted binding keeps the date of the one it replaced --------------------------

/// Driver seed 2609 (events off; known since the third review), reduced. Workspace `acme` is
/// bound on y at t0 by router A. At t20 y's process dies: B sees it (two refused checks),
/// finds `y:0:t0` lost, clears it and binds `acme` afresh on x (`x:0:t20`). A has not seen
/// y die; its reseed binds `y:0:t0` again, is refused, finds `x:0:t20` live, and adopts x
/// (`on_bind_taken`): `set_owner` moves the entry to x but keeps the time A learned it, t0.
/// A now holds "x since t0", a binding nobody made. x's process ends right after serving
/// (within the clock skew of t20): another router records its loss before t19. The store
/// comes back empty; A's reseed writes back `x:0:t0` first (B's `x:0:t20` is refused: the
/// same owner, nothing to do). Every router polls `x:0 = t19`: A drops its entry (t0 < t19)
/// and its lookup finds `x:0:t0` condemned, so it binds `acme` afresh (on y); B keeps its
/// own entry (t20 is after the cut-off) and sends `acme` to x: a split.
/// Expected: a router that adopts the owner a refused bind found takes that binding as a
/// lookup would cache it, dated when it was made: A holds "x since t20", writes back
/// `x:0:t20`, and both routers keep `acme` on x. Code: `Router::on_bind_taken`
/// (src/router/store.rs).
#[test]
fn an_adopted_binding_is_dated_when_the_binding_found_was_made() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, b) = (router(t0), router(t0));
    let mut store = Store::default();
    for r in [&a, &b] {
        r.add(backend("x", 0)).unwrap();
        r.add(backend("y", 0)).unwrap();
    }
    assert_eq!(
        call_ws(&a, &mut store, "acme", Some("y"), t0),
        Ok("y".into())
    );
    // y's process dies at t20: B sees it and binds acme afresh on x.
    let t20 = clock.advance(Duration::from_secs(20));
    for _ in 0..2 {
        b.report_health(id_of(&b, "y"), Probe::Refused, t20)
            .unwrap();
    }
    assert_eq!(
        call_ws(&b, &mut store, "acme", Some("x"), t20),
        Ok("x".into())
    );
    // A, which has not seen y die, reseeds: its y:0:t0 is refused, and it adopts x.
    reseed(&a, &mut store, t20);
    flush(&a, &mut store, t20);
    // x's process ends right after (another router records it lost before t19), and the
    // store comes back empty: A writes back first.
    let t21 = clock.advance(Duration::from_secs(1));
    store.values.clear();
    for r in [&a, &b] {
        r.on_store_restart(t21);
        reseed(r, &mut store, t21);
        flush(r, &mut store, t21);
    }
    let lost = StoreWrite::Lost {
        key: format!("mcp:lost:0:{:016x}:0", fingerprint("x")),
        before: 1_795_000_019,
        ttl: Duration::from_secs(7200),
    };
    assert!(store.apply(lost, t21).is_none());
    poll_lost(&a, &store, t21);
    poll_lost(&b, &store, t21);
    let on_a = call_ws(&a, &mut store, "acme", Some("y"), t21);
    let on_b = call_ws(&b, &mut store, "acme", Some("y"), t21);
    assert_eq!(
        (on_a.clone(), on_b.clone()),
        (Ok("x".into()), Ok("x".into())),
        "A sends acme to {on_a:?}, B to {on_b:?}: x's binding of t20 is after the loss's \
         cut-off (t19)"
    );
}

// --- R10-3. A binding cached from the store is dated no earlier than the table's epoch -

/// Driver seed 20460 (events on; found by a 24,000-seed sweep after R10-1 and R10-2),
/// reduced. Router B places `acme` on x at t0 (`x:0:t0`). Router A's table is first given a
/// time at t50 (it places another workspace): the memory table counts time in ticks from
/// the first instant it is given (`MemoryTable::tick`, saturating), so it cannot hold an
/// earlier one. A then looks `acme` up and caches `x:0:t0` "bound at t0": the entry reads
/// learned at t50. Another router records x's process lost before t18. B drops its entry
/// (t0 < t18), looks up `x:0:t0`, finds it condemned and binds `acme` afresh (on y); A's
/// `on_lost` keeps its entry (t50 is after the cut-off) and sends `acme` to x: a split (and
/// A's reseeds would write back `x:0:t50`, a binding made later than it was).
/// Expected: both condemn `x:0:t0`. Failed on `20c7861`; fixed: the table's clock starts
/// about 6.8 years before the first instant it is given (`MemoryTable`'s `REACH_BACK`).
#[test]
fn a_binding_cached_from_the_store_keeps_a_date_before_the_tables_first_use() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, b) = (router(t0), router(t0));
    let mut store = Store::default();
    for r in [&a, &b] {
        r.add(backend("x", 0)).unwrap();
        r.add(backend("y", 0)).unwrap();
    }
    assert_eq!(
        call_ws(&b, &mut store, "acme", Some("x"), t0),
        Ok("x".into())
    );
    let t50 = clock.advance(Duration::from_secs(50));
    assert_eq!(
        call_ws(&a, &mut store, "globex", Some("y"), t50),
        Ok("y".into())
    );
    assert_eq!(call_ws(&a, &mut store, "acme", None, t50), Ok("x".into()));
    // Another router saw x's process end at t20.
    let lost = StoreWrite::Lost {
        key: format!("mcp:lost:0:{:016x}:0", fingerprint("x")),
        before: 1_795_000_018,
        ttl: Duration::from_secs(7200),
    };
    assert!(store.apply(lost, t50).is_none());
    poll_lost(&a, &store, t50);
    poll_lost(&b, &store, t50);
    let on_a = call_ws(&a, &mut store, "acme", Some("y"), t50);
    let on_b = call_ws(&b, &mut store, "acme", Some("y"), t50);
    assert_eq!(
        (on_a.clone(), on_b.clone()),
        (Ok("y".into()), Ok("y".into())),
        "A sends acme to {on_a:?}, B to {on_b:?}: x:0:t0 is of a process lost before t18"
    );
}
