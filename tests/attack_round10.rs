//! Tenth review: the two splits a 12,000-seed sweep of the store driver found with the
//! orchestrator events on (`ATTACK_STORE_INCARNATIONS=1` in tests/attack_store_driver.rs,
//! seeds 5105 and 7824, on `bdb92ec`), reduced. Each test states what should happen; each
//! failed on `bdb92ec`. Run with `cargo test --all-features --test attack_round10`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mcp_affinity::router::key_fn;
use mcp_affinity::router::store::MAX_LOOKUPS;
use mcp_affinity::router::{End, NewBackend, Routed, Router, SharedStore};
use mcp_affinity::{BackendId, TenantId};

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;
use common::sim_store::flush;

fn backend(name: &str, incarnation: u32) -> NewBackend {
    NewBackend::new(TenantId::DEFAULT, &format!("http://{name}"))
        .name(name)
        .incarnation(incarnation)
}

fn router(at: Instant) -> Router {
    Router::builder()
        .operator_key(key_fn(workspace))
        .health_thresholds(2, 2)
        .shared_store(SharedStore::new("mcp", at, T0))
        .build()
}

/// A workspace call through `router` (placements only on `choose`, if given), answered 200
/// by whichever backend gets it: that backend's name, or the rejection's status. The router's
/// writes are performed after it.
fn call_ws(
    router: &Router,
    store: &mut Store,
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
    let out = match routed {
        Routed::Forward(mut ex) => {
            let name = name_of(router, ex.backend());
            let _ = respond(router, &mut ex, 200, &[JSON], &[b"{}"], now);
            router.on_exchange_end(ex, End::Completed, now);
            Ok(name)
        }
        Routed::Reject(r) => Err(r.status().as_u16()),
        Routed::Lookup(_) => unreachable!(),
    };
    flush(router, store, now);
    out
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
