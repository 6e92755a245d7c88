//! Regressions of the adversarial review (issue #12): inputs that made the router panic,
//! misroute, or let one principal ride another's session. Each test names what it guards.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use mcp_affinity::router::{
    BadEra, End, HeadOutcome, How, OperatorScope, Reason, Routed, Router, key_fn,
};
use mcp_affinity::table::{KeyKind, MemoryTableConfig, SessionTable};
use mcp_affinity::{BackendId, TenantId};

const ALICE: (&str, &str) = ("authorization", "Bearer alice");
const MALLORY: (&str, &str) = ("authorization", "Bearer mallory");

// --- 1. Panics ---------------------------------------------------------------------------

#[test]
fn keys_of_lists_ids_longer_than_the_default_bound_when_the_bound_was_raised() {
    let router = Router::builder()
        .max_key_len(1024)
        .operator_key(key_fn(workspace))
        .build();
    let b = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    let now = Clock::new().now();
    let long = "w".repeat(600);
    let (owner, _) = exchange(
        &router,
        &post("/mcp", &[("mcp-param-workspace", &long)]),
        200,
        &[],
        &[],
        now,
    );
    assert_eq!(owner, b);
    let keys = router.keys_of(b, 10);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id(), long);
}

// --- 2. Drain deadlines beyond any clock --------------------------------------------------

#[test]
fn a_drain_deadline_too_far_to_count_is_never_reached_and_never_panics() {
    let router = Router::builder().build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let mut clock = Clock::new();
    let now = clock.now();
    initialize(&router, "s1", now);
    let far = now + Duration::from_secs(u64::MAX / 1000 + 1);
    router.drain_backend(a, Some(far), now).unwrap();
    let info = router.backends().into_iter().find(|b| b.id == a).unwrap();
    assert!(info.draining, "the update is whole: {info:?}");
    let later = clock.advance(Duration::from_secs(600));
    let _ = router.maintain(later, 1000);
    assert_eq!(route_session(&router, "s1", later).unwrap(), a);
    assert_eq!(router.metrics().keys_revoked, 0);
}

// --- 3. Ids that two backends mint --------------------------------------------------------

fn endpoint(id: &str) -> String {
    format!("event: endpoint\ndata: /messages/?session_id={id}\n\n")
}

#[test]
fn an_sse_session_id_minted_by_two_live_backends_reaches_neither() {
    let router = Router::builder().build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let mut first = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(
        &router,
        &mut first,
        200,
        &[SSE],
        &[endpoint("7").as_bytes()],
        now,
    );
    let mut second = forward(router.route(&get("/sse", &[]), now));
    assert_ne!(first.backend(), second.backend());
    let _ = respond(
        &router,
        &mut second,
        200,
        &[SSE],
        &[endpoint("7").as_bytes()],
        now,
    );
    assert_eq!(router.metrics().key_conflicts, 1);

    // Both clients hold "7"; neither message may reach a backend by guesswork.
    let message = post("/messages/?session_id=7", &[]);
    let rejection = rejected(router.route(&message, now));
    assert_eq!(rejection.reason(), Reason::UnknownKey(KeyKind::SseSession));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);

    // The claim holds while either stream lives, even when the first one's backend mints
    // "7" again for a third stream.
    router.on_exchange_end(first, End::Completed, now);
    let mut third = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(
        &router,
        &mut third,
        200,
        &[SSE],
        &[endpoint("7").as_bytes()],
        now,
    );
    assert!(matches!(router.route(&message, now), Routed::Reject(_)));
    router.on_exchange_end(second, End::Completed, now);
    router.on_exchange_end(third, End::Completed, now);
    // Every stream that carried "7" ended; the contested id stays refused until it idles
    // out, so that a late message cannot reach whichever backend mints "7" next.
    assert!(matches!(router.route(&message, now), Routed::Reject(_)));
    let later = now + Duration::from_secs(3601);
    let _ = router.maintain(later, 1000);
    assert_eq!(router.table().occupancy().len, 0);
}

/// A start answered with two session ids (the second another client's): a client may adopt
/// either, or both joined, so neither is learned and the start is answered 502, as a request
/// naming two is refused. The other client's session stays where it was.
#[test]
fn a_start_answered_with_two_session_ids_learns_neither() {
    let router = Router::builder().build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let (victim_owner, _) = exchange(
        &router,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", "victim")],
        &[],
        now,
    );
    let mut start = forward(router.route(&post("/mcp", &[]), now));
    assert_ne!(start.backend(), victim_owner);
    let mut head = resp(200, &[]);
    for id in ["own", "victim"] {
        head.headers.append("mcp-session-id", id.parse().unwrap());
    }
    let outcome = router.on_response_head(&mut start, &mut head, now);
    router.on_exchange_end(start, End::Completed, now);
    let HeadOutcome::Replace(rejection) = outcome else {
        panic!("two ids forwarded: {outcome:?}");
    };
    assert_eq!(rejection.reason(), Reason::UnroutableKey(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::BAD_GATEWAY);
    let call = |id: &str| post("/mcp", &[("mcp-session-id", id), LEGACY]);
    assert_eq!(
        rejected(router.route(&call("own"), now)).reason(),
        Reason::UnknownKey(KeyKind::Session)
    );
    let ex = forward(router.route(&call("victim"), now));
    assert_eq!(ex.backend(), victim_owner);
    router.on_exchange_end(ex, End::Completed, now);
    assert_eq!(router.metrics().keys_learned, 1);
}

#[test]
fn a_task_id_minted_by_two_live_backends_reaches_neither() {
    let router = Router::builder().build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let call = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tools/call"), ("mcp-name", "job")],
    );
    let task = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"task-1"}}"#;
    let (one, _) = exchange(&router, &call, 200, &[JSON], &[task], now);
    let (two, _) = exchange(&router, &call, 200, &[JSON], &[task], now);
    assert_ne!(one, two, "round robin");
    let poll = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", "task-1")],
    );
    let rejection = rejected(router.route(&poll, now));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert_eq!(rejection.message(), "Task not found");
    assert_eq!(router.metrics().key_conflicts, 1);
    // The claim is not lifted by a third mint either.
    let _ = exchange(&router, &call, 200, &[JSON], &[task], now);
    assert!(matches!(router.route(&poll, now), Routed::Reject(_)));
}

#[test]
fn one_backend_minting_one_sse_id_for_two_streams_keeps_it_until_both_end() {
    let router = Router::builder().build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let mut first = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(
        &router,
        &mut first,
        200,
        &[SSE],
        &[endpoint("s").as_bytes()],
        now,
    );
    let mut second = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(
        &router,
        &mut second,
        200,
        &[SSE],
        &[endpoint("s").as_bytes()],
        now,
    );
    router.on_exchange_end(first, End::Completed, now);
    let message = post("/messages/?session_id=s", &[]);
    let ex = forward(router.route(&message, now));
    assert_eq!(ex.backend(), a, "the second stream still uses it");
    router.on_exchange_end(ex, End::Completed, now);
    router.on_exchange_end(second, End::Completed, now);
    assert!(matches!(router.route(&message, now), Routed::Reject(_)));
    assert_eq!(router.metrics().keys_released, 1);
}

// --- 4. Generations -----------------------------------------------------------------------

#[test]
fn a_slot_reused_until_its_generation_wraps_inherits_no_key() {
    let router = Router::builder()
        .tenant(|req: &http::request::Parts| {
            let n = req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?;
            Some(TenantId::new(n))
        })
        .build();
    let now = Clock::new().now();
    let victim = router.add_backend(TenantId::new(1), "t1", 1).unwrap();
    let (owner, _) = exchange(
        &router,
        &post("/mcp", &[("x-tenant", "1")]),
        200,
        &[("mcp-session-id", "secret")],
        &[],
        now,
    );
    assert_eq!(owner, victim);
    // Removed (its keys wait out the 60 s grace), then its slot cycles through every
    // generation for tenant 2 within the grace.
    router.remove_backend(victim, now).unwrap();
    let mut id = router.add_backend(TenantId::new(2), "t2", 1).unwrap();
    assert_eq!(id.slot(), victim.slot());
    while id.generation() != victim.generation() {
        router.remove_backend(id, now).unwrap();
        id = router.add_backend(TenantId::new(2), "t2", 1).unwrap();
        assert_eq!(id.slot(), victim.slot());
    }
    assert_eq!(id, victim, "the generation wrapped");
    // Tenant 1's key must not reach tenant 2's backend now holding the same id.
    let request = post(
        "/mcp",
        &[("x-tenant", "1"), ("mcp-session-id", "secret"), LEGACY],
    );
    let rejection = rejected(router.route(&request, now));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert_eq!(router.table().count_owner(id), 0);
}

#[test]
fn a_key_learned_after_its_backend_was_removed_is_not_kept() {
    for grace in [Duration::ZERO, Duration::from_secs(60)] {
        let router = Router::builder().removal_grace(grace).build();
        let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
        let mut clock = Clock::new();
        let now = clock.now();
        let mut ex = forward(router.route(&post("/mcp", &[]), now));
        router.remove_backend(a, now).unwrap();
        // The answer arrives after the removal.
        let outcome = respond(
            &router,
            &mut ex,
            200,
            &[("mcp-session-id", "late")],
            &[],
            now,
        );
        assert!(matches!(outcome, HeadOutcome::Forward));
        router.on_exchange_end(ex, End::Completed, now);
        assert_eq!(router.table().count_owner(a), 0, "grace {grace:?}");
        let _ = router.maintain(clock.advance(Duration::from_secs(61)), 1000);
        assert_eq!(router.table().occupancy().len, 0);
    }
}

// --- 5. The principal check, wherever a key is carried ------------------------------------

/// A router that binds principals and has the cookie fallback on, with Alice's Streamable
/// session "alice-s" and legacy SSE session "alice-sse" learned; returns the owners.
fn alice_sessions(router: &Router) -> (BackendId, BackendId) {
    let _ = ["a", "b", "c"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let (session_owner, _) = exchange(
        router,
        &post("/mcp", &[ALICE]),
        200,
        &[("mcp-session-id", "alice-s")],
        &[],
        now,
    );
    let mut stream = forward(router.route(&get("/sse", &[ALICE]), now));
    let _ = respond(
        router,
        &mut stream,
        200,
        &[SSE],
        &[endpoint("alice-sse").as_bytes()],
        now,
    );
    let sse_owner = stream.backend();
    std::mem::forget(stream); // the stream stays open for the test
    (session_owner, sse_owner)
}

fn principal_router(mcp_paths: bool) -> Router {
    let builder = Router::builder().principal(bearer).affinity_cookie("aff");
    if mcp_paths {
        builder.mcp_paths(["/mcp"]).build()
    } else {
        builder.build()
    }
}

#[test]
fn a_session_header_on_any_spelling_of_a_path_is_checked_against_the_principal() {
    for mcp_paths in [false, true] {
        let router = principal_router(mcp_paths);
        let (owner, _) = alice_sessions(&router);
        let now = Clock::new().now();
        let cookie = format!("aff={}.{}", owner.slot(), owner.generation());
        for path in [
            "/mcp",
            "/.well-known/../mcp",
            "/.well-known/%2e%2e/mcp",
            "/mcp/",
            "//mcp",
            "/MCP",
            "/mcp;x",
            "/./mcp",
            "/.well-known/oauth-authorization-server",
            "/anything/else",
        ] {
            let request = post(
                path,
                &[MALLORY, ("mcp-session-id", "alice-s"), ("cookie", &cookie)],
            );
            let rejection = rejected(router.route(&request, now));
            assert_eq!(
                rejection.reason(),
                Reason::WrongPrincipal(KeyKind::Session),
                "{path} (mcp_paths: {mcp_paths})"
            );
            assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
        }
        // Alice herself is pinned on every spelling of the endpoint.
        for path in ["/mcp", "/MCP", "//mcp", "/.well-known/../mcp"] {
            let request = post(path, &[ALICE, ("mcp-session-id", "alice-s")]);
            let ex = forward(router.route(&request, now));
            assert_eq!((ex.how(), ex.backend()), (How::Pinned, owner), "{path}");
            router.on_exchange_end(ex, End::Completed, now);
        }
    }
}

#[test]
fn a_legacy_sse_session_on_any_spelling_of_the_message_path_is_checked() {
    let router = principal_router(false);
    let (_, owner) = alice_sessions(&router);
    let now = Clock::new().now();
    let cookie = format!("aff={}.{}", owner.slot(), owner.generation());
    for path in [
        "/messages/",
        "/Messages/",
        "//messages/",
        "/messages;x/",
        "/x/../messages/",
        "/m%65ssages/",
        "/mcp",
        "/.well-known/x",
    ] {
        let uri = format!("{path}?session_id=alice-sse");
        let request = post(&uri, &[MALLORY, ("cookie", &cookie)]);
        let rejection = rejected(router.route(&request, now));
        assert_eq!(
            rejection.reason(),
            Reason::WrongPrincipal(KeyKind::SseSession),
            "{path}"
        );
    }
    for path in ["/messages/", "/Messages", "//messages/"] {
        let uri = format!("{path}?session_id=alice-sse");
        let ex = forward(router.route(&post(&uri, &[ALICE]), now));
        assert_eq!((ex.how(), ex.backend()), (How::Pinned, owner), "{path}");
        router.on_exchange_end(ex, End::Completed, now);
    }
}

#[test]
fn a_session_header_under_a_modern_version_is_checked_and_odd_versions_are_refused() {
    let router = principal_router(false);
    let (_, _) = alice_sessions(&router);
    let now = Clock::new().now();
    let hijack = post(
        "/mcp",
        &[
            MALLORY,
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-session-id", "alice-s"),
        ],
    );
    assert_eq!(
        rejected(router.route(&hijack, now)).reason(),
        Reason::WrongPrincipal(KeyKind::Session)
    );
    // Versions the router cannot place in an era are refused, not guessed at.
    for (versions, why) in [
        (&["9999-99-99"][..], BadEra::InvalidProtocolVersion),
        (
            &["2026-07-28, 2025-11-25"][..],
            BadEra::InvalidProtocolVersion,
        ),
        (
            &["2026-07-28", "2025-11-25"][..],
            BadEra::AmbiguousProtocolVersion,
        ),
    ] {
        let mut request = post("/mcp", &[MALLORY, ("mcp-session-id", "alice-s")]);
        for v in versions {
            request
                .headers
                .append("mcp-protocol-version", v.parse().unwrap());
        }
        let rejection = rejected(router.route(&request, now));
        assert_eq!(rejection.reason(), Reason::BadEra(why), "{versions:?}");
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    }
    let mut twice = post("/mcp", &[MODERN]);
    twice
        .headers
        .append("mcp-method", "tools/list".parse().unwrap());
    twice
        .headers
        .append("mcp-method", "tasks/get".parse().unwrap());
    assert_eq!(
        rejected(router.route(&twice, now)).reason(),
        Reason::BadEra(BadEra::AmbiguousMethod)
    );
}

#[test]
fn a_modern_call_of_the_right_principal_with_a_session_header_is_still_placed() {
    let router = principal_router(false);
    let _ = alice_sessions(&router);
    let now = Clock::new().now();
    let call = post(
        "/mcp",
        &[
            ALICE,
            MODERN,
            ("mcp-method", "tools/list"),
            ("mcp-session-id", "alice-s"),
        ],
    );
    let ex = forward(router.route(&call, now));
    assert_eq!(ex.how(), How::Placed);
    router.on_exchange_end(ex, End::Completed, now);
}

// --- 6. Operator keys cannot be squatted --------------------------------------------------

#[test]
fn operator_keys_are_each_principal_s_own_so_none_can_be_squatted() {
    let router = Router::builder()
        .principal(bearer)
        .operator_key(key_fn(workspace))
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    // Mallory binds "acme" first.
    let ws = ("mcp-param-workspace", "acme");
    let (mallory_owner, _) = exchange(&router, &post("/mcp", &[MALLORY, ws]), 200, &[], &[], now);
    // Alice presenting "acme" is not refused: hers is another key, bound on her first 2xx.
    let (alice_owner, _) = exchange(&router, &post("/mcp", &[ALICE, ws]), 200, &[], &[], now);
    let ex = forward(router.route(&post("/mcp", &[ALICE, ws]), now));
    assert_eq!((ex.how(), ex.backend()), (How::Pinned, alice_owner));
    router.on_exchange_end(ex, End::Completed, now);
    let ex = forward(router.route(&post("/mcp", &[MALLORY, ws]), now));
    assert_eq!((ex.how(), ex.backend()), (How::Pinned, mallory_owner));
    router.on_exchange_end(ex, End::Completed, now);
    // Anonymous requests have a namespace of their own too: no id spelled like a
    // principal's prefix reaches that principal's binding.
    let keys: Vec<_> = router
        .backends()
        .iter()
        .flat_map(|b| router.keys_of(b.id, 10))
        .collect();
    let spoof = keys[0].id().to_string();
    let ex = forward(router.route(&post("/mcp", &[("mcp-param-workspace", &spoof)]), now));
    assert_eq!(ex.how(), How::Placed);
    router.on_exchange_end(ex, End::Completed, now);
    assert_eq!(router.metrics().rejected_total(), 0);
}

#[test]
fn shared_operator_keys_reach_their_backend_whoever_presents_them() {
    let router = Router::builder()
        .principal(bearer)
        .operator_key(key_fn(workspace))
        .operator_scope(OperatorScope::Shared)
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let ws = ("mcp-param-workspace", "team");
    let (owner, _) = exchange(&router, &post("/mcp", &[ALICE, ws]), 200, &[], &[], now);
    for who in [ALICE, MALLORY] {
        let ex = forward(router.route(&post("/mcp", &[who, ws]), now));
        assert_eq!((ex.how(), ex.backend()), (How::Pinned, owner));
        router.on_exchange_end(ex, End::Completed, now);
    }
}

// --- 7. Vetoes ----------------------------------------------------------------------------

#[test]
fn a_veto_of_every_backend_offers_each_once_even_in_a_fleet_of_4096() {
    let router = Router::builder().max_backends(4096).build();
    for i in 0..4096 {
        router
            .add_backend(TenantId::DEFAULT, &format!("b{i}"), 1)
            .unwrap();
    }
    let now = Clock::new().now();
    let mut offered = Vec::new();
    let routed = router.route_with(&post("/mcp", &[]), now, |b| {
        offered.push(b);
        false
    });
    assert_eq!(rejected(routed).reason(), Reason::NoReadyBackend);
    offered.sort();
    offered.dedup();
    assert_eq!(offered.len(), 4096);
    assert_eq!(router.metrics().vetoes, 4096);
}

// --- 8. Exchanges an embedder forgot ------------------------------------------------------

#[test]
fn dropped_exchanges_release_the_placements_they_counted() {
    let router = Router::builder().build();
    let ids: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap())
        .collect();
    let now = Clock::new().now();
    // Fifty conversation starts routed and dropped without an end.
    for _ in 0..50 {
        drop(forward(router.route(&post("/mcp", &[]), now)));
    }
    let mut per_backend = std::collections::HashMap::new();
    for i in 0..42 {
        let owner = initialize(&router, &format!("s{i}"), now);
        *per_backend.entry(owner).or_insert(0) += 1;
    }
    for id in ids {
        assert_eq!(per_backend.get(&id), Some(&14), "{per_backend:?}");
    }
}

#[test]
fn starts_dropped_on_one_backend_do_not_steer_the_next_sessions_away_from_it() {
    // An even leak over the fleet would hide behind least-sessions' tie-breaks: drop the
    // starts while there is one backend, then add a second.
    let router = Router::builder().build();
    let first = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    for _ in 0..5 {
        drop(forward(router.route(&post("/mcp", &[]), now)));
    }
    let second = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    let mut per_backend = std::collections::HashMap::new();
    for i in 0..6 {
        let owner = initialize(&router, &format!("s{i}"), now);
        *per_backend.entry(owner).or_insert(0) += 1;
    }
    assert_eq!(per_backend.get(&first), Some(&3), "{per_backend:?}");
    assert_eq!(per_backend.get(&second), Some(&3), "{per_backend:?}");
}

// --- 9. Ids minted that cannot be routed ---------------------------------------------------

#[test]
fn an_sse_session_id_that_cannot_be_routed_is_answered_as_unknown() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new())
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let long = "s".repeat(10_000);
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(
        &router,
        &mut stream,
        200,
        &[SSE],
        &[endpoint(&long).as_bytes()],
        now,
    );
    let uri = format!("/messages/?session_id={long}");
    let rejection = rejected(router.route(&post(&uri, &[]), now));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert!(rejection.is_jsonrpc());
    router.on_exchange_end(stream, End::Completed, now);
}
