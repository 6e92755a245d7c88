//! Backends: draining, deadlines, removal, restarts, health, placement policies and vetoes.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use mcp_affinity::router::{End, FleetError, Health, Placement, Reason, Routed, Router};
use mcp_affinity::table::KeyKind;
use mcp_affinity::{BackendId, TenantId};

fn fleet(n: usize) -> (Router, Vec<BackendId>) {
    let router = Router::builder().build();
    let ids = (0..n)
        .map(|i| {
            router
                .add_backend(TenantId::DEFAULT, &format!("b{i}"), 1)
                .unwrap()
        })
        .collect();
    (router, ids)
}

/// Opens sessions until one lands on `target`; returns its id.
fn session_on(router: &Router, target: BackendId, prefix: &str, now: std::time::Instant) -> String {
    for i in 0..64 {
        let id = format!("{prefix}-{i}");
        if initialize(router, &id, now) == target {
            return id;
        }
    }
    panic!("no session placed on {target}");
}

#[test]
fn a_drained_backend_keeps_its_sessions_and_gets_no_new_ones() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let kept = session_on(&router, ids[0], "kept", now);
    router.drain_backend(ids[0], None, now).unwrap();
    for i in 0..10 {
        assert_eq!(initialize(&router, &format!("new-{i}"), now), ids[1]);
    }
    assert_eq!(route_session(&router, &kept, now).unwrap(), ids[0]);
    assert!(
        router
            .backends()
            .iter()
            .any(|b| b.id == ids[0] && b.draining && !b.ready())
    );
    // Undrained, it takes new conversations again.
    router.undrain_backend(ids[0], now).unwrap();
    assert!((0..4).any(|i| initialize(&router, &format!("back-{i}"), now) == ids[0]));
}

#[test]
fn a_drain_deadline_revokes_the_remaining_sessions() {
    let (router, ids) = fleet(2);
    let mut clock = Clock::new();
    let kept = session_on(&router, ids[0], "kept", clock.now());
    let idle = session_on(&router, ids[0], "idle", clock.now());
    let deadline = clock.now() + Duration::from_secs(30);
    router
        .drain_backend(ids[0], Some(deadline), clock.now())
        .unwrap();

    // Before the deadline: still served.
    let before = clock.advance(Duration::from_secs(29));
    assert_eq!(route_session(&router, &kept, before).unwrap(), ids[0]);
    // After: revoked, with the signal to start over.
    let after = clock.advance(Duration::from_secs(2));
    let rejection = route_session(&router, &kept, after).unwrap_err();
    assert_eq!(rejection.reason(), Reason::OwnerRevoked(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);

    // Keys nobody asked for are revoked by maintenance; all are counted.
    let maintenance = router.maintain(clock.now(), 100);
    assert!(maintenance.revoked >= 1, "{maintenance:?}");
    assert!(route_session(&router, &idle, clock.now()).is_err());
    assert_eq!(
        router.metrics().keys_revoked,
        1 + maintenance.revoked as u64
    );
    assert_eq!(router.backends()[0].sessions, 0);
}

#[test]
fn a_removed_backend_s_sessions_get_404_and_the_others_are_untouched() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let doomed: Vec<_> = (0..3)
        .map(|i| session_on(&router, ids[0], &format!("d{i}"), now))
        .collect();
    let safe: Vec<_> = (0..3)
        .map(|i| session_on(&router, ids[1], &format!("s{i}"), now))
        .collect();
    let owned = router.remove_backend(ids[0], now).unwrap();
    assert!(owned >= 3);
    // Its clients are told the owner is gone (not "unknown"), each key purged as it is seen.
    for id in &doomed {
        let rejection = route_session(&router, id, now).unwrap_err();
        assert_eq!(rejection.reason(), Reason::OwnerGone(KeyKind::Session));
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    }
    for id in &safe {
        assert_eq!(route_session(&router, id, now).unwrap(), ids[1]);
    }
    assert_eq!(
        router.remove_backend(ids[0], now),
        Err(FleetError::NotFound(ids[0]))
    );
    assert_eq!(router.metrics().keys_purged, 3);
    // The rest are purged by maintenance once the removal grace has passed.
    let _ = router.maintain(now + Duration::from_secs(59), 0);
    assert_eq!(router.metrics().keys_purged, 3);
    let _ = router.maintain(now + Duration::from_secs(61), 0);
    assert_eq!(router.metrics().keys_purged, owned as u64);
    assert!(router.keys_of(ids[0], 100).is_empty());
}

#[test]
fn without_removal_grace_a_removed_backend_s_keys_are_purged_at_once() {
    let router = Router::builder().removal_grace(Duration::ZERO).build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    initialize(&router, "s1", now);
    assert_eq!(router.remove_backend(a, now).unwrap(), 1);
    assert_eq!(router.metrics().keys_purged, 1);
    assert_eq!(
        route_session(&router, "s1", now).unwrap_err().reason(),
        Reason::UnknownKey(KeyKind::Session)
    );
}

#[test]
fn a_burst_of_conversation_starts_spreads_before_any_answer() {
    // Pending starts count with live keys: nine initializes routed before any answer used to
    // all go to the emptiest backend.
    let (router, ids) = fleet(3);
    let now = Clock::new().now();
    session_on(&router, ids[0], "x", now);
    session_on(&router, ids[1], "y", now);
    let exchanges: Vec<_> = (0..9)
        .map(|_| forward(router.route(&post("/mcp", &[]), now)))
        .collect();
    let mut per_backend = std::collections::HashMap::new();
    for ex in &exchanges {
        *per_backend.entry(ex.backend()).or_insert(0) += 1;
    }
    assert!(per_backend.values().all(|n| *n <= 5), "{per_backend:?}");
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for ex in exchanges {
        router.on_exchange_end(ex, End::Aborted, now);
    }
    // Unanswered starts stop counting once they end: the emptiest backend is first again.
    assert_eq!(initialize(&router, "n0", now), ids[2]);
}

#[test]
fn a_key_left_behind_by_a_removed_owner_is_rejected_as_owner_gone() {
    // A key a shared store still holds for an owner this router no longer has.
    let (router, ids) = fleet(1);
    let now = Clock::new().now();
    initialize(&router, "s1", now);
    // Remove the backend without purging, as another router sharing the store would see it.
    use mcp_affinity::table::{Key, SessionTable};
    let key = Key::new(TenantId::DEFAULT, KeyKind::Session, b"s1").unwrap();
    let entry = router.table().remove(&key, None).unwrap();
    router.remove_backend(ids[0], now).unwrap();
    let _ = router.table().insert(&key, entry.owner, None, now);
    let rejection = route_session(&router, "s1", now).unwrap_err();
    assert_eq!(rejection.reason(), Reason::OwnerGone(KeyKind::Session));
    assert_eq!(router.table().occupancy().len, 0, "purged on sight");
}

#[test]
fn a_restarted_backend_inherits_nothing() {
    let (router, ids) = fleet(1);
    let now = Clock::new().now();
    initialize(&router, "before", now);
    let reborn = router.restart_backend(ids[0], now).unwrap();
    assert_eq!(reborn.slot(), ids[0].slot());
    assert_ne!(reborn.generation(), ids[0].generation());
    assert!(route_session(&router, "before", now).is_err());
    assert_eq!(initialize(&router, "after", now), reborn);
    assert_eq!(route_session(&router, "after", now).unwrap(), reborn);
    // The old identity is gone for every fleet operation.
    assert_eq!(
        router.drain_backend(ids[0], None, now),
        Err(FleetError::NotFound(ids[0]))
    );
}

#[test]
fn health_flips_after_consecutive_results() {
    let router = Router::builder().health_thresholds(3, 2).build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let b = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    let now = Clock::new().now();
    let kept = session_on(&router, a, "kept", now);
    let healthy = |h: Health| h == Health::Healthy;
    assert!(healthy(router.report_health(a, false, now).unwrap()));
    assert!(healthy(router.report_health(a, false, now).unwrap()));
    assert!(
        healthy(router.report_health(a, true, now).unwrap()),
        "a success resets the streak"
    );
    for _ in 0..2 {
        router.report_health(a, false, now).unwrap();
    }
    assert_eq!(
        router.report_health(a, false, now).unwrap(),
        Health::Unhealthy,
        "third failure in a row"
    );
    // Unhealthy: no new conversations, but its sessions still go to it.
    for i in 0..6 {
        assert_eq!(initialize(&router, &format!("n{i}"), now), b);
    }
    assert_eq!(route_session(&router, &kept, now).unwrap(), a);
    assert!(!healthy(router.report_health(a, true, now).unwrap()));
    assert!(
        healthy(router.report_health(a, true, now).unwrap()),
        "second success in a row"
    );
}

#[test]
fn no_ready_backend_is_a_503_with_retry_after() {
    let router = Router::builder().retry_after(5).build();
    let now = Clock::new().now();
    let rejection = rejected(router.route(&post("/mcp", &[]), now));
    assert_eq!(rejection.reason(), Reason::NoReadyBackend);
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejection.headers()["retry-after"], "5");
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    router.drain_backend(a, None, now).unwrap();
    assert_eq!(
        rejected(router.route(&post("/mcp", &[]), now)).reason(),
        Reason::NoReadyBackend
    );
}

#[test]
fn a_vetoed_choice_falls_to_the_next_candidate_then_to_503() {
    let (router, ids) = fleet(3);
    let now = Clock::new().now();
    let mut offered = Vec::new();
    let routed = router.route_with(&post("/mcp", &[]), now, |b| {
        offered.push(b);
        b == ids[2]
    });
    let ex = forward(routed);
    assert_eq!(ex.backend(), ids[2]);
    assert!(offered.len() <= 3 && offered.last() == Some(&ids[2]));
    let mut count = 0;
    let routed = router.route_with(&post("/mcp", &[]), now, |_| {
        count += 1;
        false
    });
    assert_eq!(rejected(routed).reason(), Reason::NoReadyBackend);
    assert_eq!(count, 3, "each ready backend offered once");
    // A pinned request is never offered: its owner is the only one that can serve it.
    let owner = initialize(&router, "s1", now);
    let routed = router.route_with(&post("/mcp", &[("mcp-session-id", "s1")]), now, |_| false);
    assert_eq!(forward(routed).backend(), owner);
}

fn spread(router: &Router, n: usize, now: std::time::Instant) -> Vec<BackendId> {
    (0..n)
        .map(|i| initialize(router, &format!("p{i}"), now))
        .collect()
}

#[test]
fn least_sessions_fills_the_emptiest_backend_first() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    spread(&router, 6, now);
    let c = router.add_backend(TenantId::DEFAULT, "c", 1).unwrap();
    // The newcomer has none: it gets the next three.
    let next: Vec<_> = (0..3)
        .map(|i| initialize(&router, &format!("q{i}"), now))
        .collect();
    assert_eq!(next, vec![c, c, c]);
    let counts: Vec<_> = router.backends().iter().map(|b| b.sessions).collect();
    assert_eq!(counts, vec![3, 3, 3]);
    let _ = ids;
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let router = Router::builder()
        .placement(Placement::WeightedRoundRobin)
        .build();
    let heavy = router.add_backend(TenantId::DEFAULT, "heavy", 3).unwrap();
    let light = router.add_backend(TenantId::DEFAULT, "light", 1).unwrap();
    let now = Clock::new().now();
    let placed = spread(&router, 40, now);
    assert_eq!(placed.iter().filter(|b| **b == heavy).count(), 30);
    assert_eq!(placed.iter().filter(|b| **b == light).count(), 10);
    router.set_weight(light, 3).unwrap();
    let placed: Vec<_> = (0..60)
        .map(|i| initialize(&router, &format!("w{i}"), now))
        .collect();
    assert_eq!(placed.iter().filter(|b| **b == light).count(), 30);
}

#[test]
fn power_of_two_choices_avoids_the_fuller_backend() {
    let router = Router::builder()
        .placement(Placement::PowerOfTwoChoices)
        .build();
    let full = router.add_backend(TenantId::DEFAULT, "full", 1).unwrap();
    let now = Clock::new().now();
    spread(&router, 10, now);
    let empty = router.add_backend(TenantId::DEFAULT, "empty", 1).unwrap();
    // With two backends, both are always the two choices: the emptier one wins until even.
    let next: Vec<_> = (0..10)
        .map(|i| initialize(&router, &format!("x{i}"), now))
        .collect();
    assert!(next.iter().all(|b| *b == empty), "{next:?}");
    let _ = full;
}

#[test]
fn placement_never_crosses_tenants() {
    let router = Router::builder()
        .tenant(|req: &http::request::Parts| {
            Some(TenantId::new(
                req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?,
            ))
        })
        .build();
    let t1 = router.add_backend(TenantId::new(1), "t1", 1).unwrap();
    let t2 = router.add_backend(TenantId::new(2), "t2", 1).unwrap();
    let now = Clock::new().now();
    for _ in 0..5 {
        for (tenant, backend) in [("1", t1), ("2", t2)] {
            let ex = forward(router.route(&post("/mcp", &[("x-tenant", tenant)]), now));
            assert_eq!(ex.backend(), backend);
            router.on_exchange_end(ex, End::Completed, now);
        }
    }
    // A tenant with no fleet has no ready backend.
    let routed = router.route(&post("/mcp", &[("x-tenant", "3")]), now);
    assert_eq!(rejected(routed).reason(), Reason::NoReadyBackend);
    // No tenant at all: refused.
    let routed = router.route(&post("/mcp", &[]), now);
    assert!(matches!(routed, Routed::Reject(r) if r.reason() == Reason::UnknownTenant));
}

#[test]
fn a_drain_deadline_holds_after_months_of_uptime() {
    // Deadlines used to be kept in 32 bits of milliseconds: after 49.7 days every deadline
    // looked past and revoked at once.
    let (router, ids) = fleet(2);
    let mut clock = Clock::new();
    // The fleet's epoch is set by the first time it is given.
    router.drain_backend(ids[1], None, clock.now()).unwrap();
    router.undrain_backend(ids[1], clock.now()).unwrap();
    let later = clock.advance(Duration::from_secs(120 * 86_400));
    let kept = session_on(&router, ids[0], "kept", later);
    router
        .drain_backend(ids[0], Some(later + Duration::from_secs(3600)), later)
        .unwrap();
    let before = clock.advance(Duration::from_secs(3000));
    assert_eq!(route_session(&router, &kept, before).unwrap(), ids[0]);
    let _ = router.maintain(before, 100);
    assert_eq!(route_session(&router, &kept, before).unwrap(), ids[0]);
    let after = clock.advance(Duration::from_secs(601));
    assert_eq!(
        route_session(&router, &kept, after).unwrap_err().reason(),
        Reason::OwnerRevoked(KeyKind::Session)
    );
}

#[test]
fn the_veto_closure_may_call_back_into_the_router() {
    // The fleet lock is not held while the caller's closure runs: calls that take it for
    // writing (health reports, drains) must not deadlock.
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let routed = router.route_with(&post("/mcp", &[]), now, |b| {
        let _ = router.backends();
        router.report_health(b, true, now).unwrap();
        router.drain_backend(b, None, now).unwrap();
        false
    });
    assert_eq!(rejected(routed).reason(), Reason::NoReadyBackend);
    assert!(router.backends().iter().all(|b| b.draining));
    let _ = ids;
}

#[test]
fn tenants_take_round_robin_turns_of_their_own() {
    // One turn counter shared by all tenants let strictly alternating tenants always land on
    // the same backend.
    let router = Router::builder()
        .tenant(|req: &http::request::Parts| {
            Some(TenantId::new(
                req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?,
            ))
        })
        .build();
    let a: Vec<_> = (0..2)
        .map(|i| {
            router
                .add_backend(TenantId::new(1), &format!("a{i}"), 1)
                .unwrap()
        })
        .collect();
    let _b: Vec<_> = (0..2)
        .map(|i| {
            router
                .add_backend(TenantId::new(2), &format!("b{i}"), 1)
                .unwrap()
        })
        .collect();
    let now = Clock::new().now();
    let mut on_a = std::collections::HashMap::new();
    for _ in 0..100 {
        for tenant in ["1", "2"] {
            let request = post(
                "/mcp",
                &[("x-tenant", tenant), MODERN, ("mcp-method", "tools/list")],
            );
            let ex = forward(router.route(&request, now));
            if tenant == "1" {
                *on_a.entry(ex.backend()).or_insert(0) += 1;
            }
            router.on_exchange_end(ex, End::Completed, now);
        }
    }
    assert_eq!(on_a.get(&a[0]), Some(&50));
    assert_eq!(on_a.get(&a[1]), Some(&50));
}

#[test]
fn weight_zero_takes_a_backend_out_of_placement_but_not_off_its_keys() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let kept = session_on(&router, ids[0], "kept", now);
    router.set_weight(ids[0], 0).unwrap();
    for i in 0..6 {
        assert_eq!(initialize(&router, &format!("w{i}"), now), ids[1]);
        let ex = forward(router.route(&post("/mcp", &[MODERN, ("mcp-method", "tools/list")]), now));
        assert_eq!(ex.backend(), ids[1]);
        router.on_exchange_end(ex, End::Completed, now);
    }
    assert_eq!(route_session(&router, &kept, now).unwrap(), ids[0]);
    assert!(!router.backends()[0].ready());
}
