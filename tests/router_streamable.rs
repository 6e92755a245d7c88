//! Streamable HTTP (2025-03-26 … 2025-11-25): sessions learned from `Mcp-Session-Id`.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use mcp_affinity::TenantId;
use mcp_affinity::router::{End, HeadOutcome, Reason, Router};
use mcp_affinity::table::{KeyKind, MemoryTableConfig};

fn two_backends() -> (Router, [mcp_affinity::BackendId; 2]) {
    let router = Router::builder().build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let b = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    (router, [a, b])
}

#[test]
fn every_request_of_a_session_reaches_the_backend_that_minted_it() {
    let (router, _) = two_backends();
    let clock = Clock::new();
    let sessions: Vec<_> = (0..20)
        .map(|i| {
            let id = format!("session-{i:02}");
            let owner = initialize(&router, &id, clock.now());
            (id, owner)
        })
        .collect();
    // Placement spread them over both backends…
    let on_first = sessions.iter().filter(|(_, o)| *o == sessions[0].1).count();
    assert!(
        (5..=15).contains(&on_first),
        "{on_first} of 20 on one backend"
    );
    // …and each one's requests go to its minter, every time.
    for round in 0..3 {
        for (id, owner) in &sessions {
            assert_eq!(route_session(&router, id, clock.at(round)).unwrap(), *owner);
        }
    }
    let metrics = router.metrics();
    assert_eq!(metrics.keys_learned, 20);
    assert_eq!(metrics.pinned, 60);
    assert_eq!(metrics.placed, 20);
}

#[test]
fn unknown_session_is_rejected_with_404_and_a_jsonrpc_body() {
    let (router, _) = two_backends();
    let rejection = route_session(&router, "never-minted", Clock::new().now()).unwrap_err();
    assert_eq!(rejection.reason(), Reason::UnknownKey(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        rejection.body(),
        r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}"#
    );
    let response = rejection.to_response();
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(router.metrics().rejected("unknown_key"), 1);
}

#[test]
fn delete_answered_2xx_forgets_the_session() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    for (i, status) in [200, 202, 204].into_iter().enumerate() {
        let id = format!("s{i}");
        let owner = initialize(&router, &id, now);
        let (to, _) = exchange(
            &router,
            &delete("/mcp", &[("mcp-session-id", &id)]),
            status,
            &[],
            &[],
            now,
        );
        assert_eq!(to, owner, "DELETE goes to the owner");
        let rejection = route_session(&router, &id, now).unwrap_err();
        assert_eq!(
            rejection.status(),
            StatusCode::NOT_FOUND,
            "after DELETE {status}"
        );
    }
    assert_eq!(router.metrics().keys_forgotten, 3);
}

#[test]
fn delete_answered_otherwise_keeps_the_session() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    let owner = initialize(&router, "s1", now);
    let _ = exchange(
        &router,
        &delete("/mcp", &[("mcp-session-id", "s1")]),
        405,
        &[],
        &[],
        now,
    );
    assert_eq!(route_session(&router, "s1", now).unwrap(), owner);
}

fn bearer(req: &http::request::Parts) -> Option<mcp_affinity::table::Principal> {
    let token = req.headers.get("authorization")?.as_bytes();
    Some(mcp_affinity::table::Principal::new(
        token.iter().map(|b| u64::from(*b)).sum(),
    ))
}

#[test]
fn a_404_forgets_the_session_only_when_the_router_vouches_for_the_principal() {
    // With principal binding, the 404 was the rightful principal's: the session is over.
    let router = Router::builder().principal(bearer).build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let alice = ("authorization", "Bearer alice");
    let _ = exchange(
        &router,
        &post("/mcp", &[alice]),
        200,
        &[("mcp-session-id", "s1")],
        &[],
        now,
    );
    for request in [
        post("/mcp", &[alice, ("mcp-session-id", "s1"), LEGACY]),
        delete("/mcp", &[alice, ("mcp-session-id", "s1")]),
    ] {
        let _ = exchange(
            &router,
            &post("/mcp", &[alice]),
            200,
            &[("mcp-session-id", "s1")],
            &[],
            now,
        );
        let _ = exchange(&router, &request, 404, &[JSON], &[], now);
        let again = post("/mcp", &[alice, ("mcp-session-id", "s1"), LEGACY]);
        assert_eq!(
            rejected(router.route(&again, now)).reason(),
            Reason::UnknownKey(KeyKind::Session)
        );
    }
    // Without it, the 404 may be the backend refusing a stranger who knows the id (the Python
    // SDK answers a principal mismatch so): the rightful client keeps its session, and the
    // backend stays the final arbiter.
    let (router, _) = two_backends();
    let owner = initialize(&router, "s2", now);
    for request in [
        post("/mcp", &[("mcp-session-id", "s2"), LEGACY]),
        delete("/mcp", &[("mcp-session-id", "s2")]),
    ] {
        let _ = exchange(&router, &request, 404, &[JSON], &[], now);
        assert_eq!(route_session(&router, "s2", now).unwrap(), owner);
    }
}

#[test]
fn only_a_2xx_answer_to_an_initialize_teaches_a_session() {
    // Python answers a sessionless non-initialize POST with 400, and a fresh id on it.
    let (router, _) = two_backends();
    let now = Clock::new().now();
    let _ = exchange(
        &router,
        &post("/mcp", &[]),
        400,
        &[("mcp-session-id", "minted-on-400")],
        &[],
        now,
    );
    assert!(route_session(&router, "minted-on-400", now).is_err());
    // A 2xx without the header teaches nothing either.
    let _ = exchange(&router, &post("/mcp", &[]), 200, &[JSON], &[], now);
    assert_eq!(router.metrics().keys_learned, 0);
}

#[test]
fn a_response_presenting_another_id_for_a_session_is_not_learned_and_is_counted() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    initialize(&router, "s1", now);
    let request = post("/mcp", &[("mcp-session-id", "s1"), LEGACY]);
    let _ = exchange(
        &router,
        &request,
        200,
        &[("mcp-session-id", "s2"), SSE],
        &[],
        now,
    );
    assert!(
        route_session(&router, "s2", now).is_err(),
        "s2 was not learned"
    );
    assert!(route_session(&router, "s1", now).is_ok());
    assert_eq!(router.metrics().id_mismatches, 1);
}

#[test]
fn get_and_last_event_id_resumption_are_routed_by_session() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    let owner = initialize(&router, "s1", now);
    for headers in [
        &[("mcp-session-id", "s1")][..],
        &[("mcp-session-id", "s1"), ("last-event-id", "0/7")][..],
    ] {
        let ex = forward(router.route(&get("/mcp", headers), now));
        assert_eq!(ex.backend(), owner);
        router.on_exchange_end(ex, End::Aborted, now);
    }
}

#[test]
fn idle_sessions_expire_after_the_ttl() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_secs(60))))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let mut clock = Clock::new();
    initialize(&router, "idle", clock.now());
    initialize(&router, "busy", clock.now());
    for _ in 0..4 {
        let now = clock.advance(Duration::from_secs(20));
        route_session(&router, "busy", now).unwrap();
        let _ = router.maintain(now, 1000);
    }
    // 80 s without use: expired; used every 20 s: alive.
    assert!(route_session(&router, "idle", clock.now()).is_err());
    assert!(route_session(&router, "busy", clock.now()).is_ok());
    assert_eq!(router.metrics().keys_expired, 1);
}

#[test]
fn an_open_get_stream_keeps_its_session_alive_past_the_ttl() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_secs(60))))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let mut clock = Clock::new();
    initialize(&router, "s1", clock.now());
    let mut stream = forward(router.route(&get("/mcp", &[("mcp-session-id", "s1")]), clock.now()));
    let outcome = respond(&router, &mut stream, 200, &[SSE], &[], clock.now());
    assert!(matches!(outcome, HeadOutcome::Forward));

    let later = clock.advance(Duration::from_secs(600));
    let _ = router.maintain(later, 1000);
    assert!(
        route_session(&router, "s1", later).is_ok(),
        "the stream kept it"
    );

    // Once the stream ends, the session is idle from then on.
    router.on_exchange_end(stream, End::Aborted, later);
    let _ = router.maintain(clock.advance(Duration::from_secs(61)), 1000);
    assert!(route_session(&router, "s1", clock.now()).is_err());
}

#[test]
fn invalid_session_ids_are_answered_as_unknown_sessions() {
    // No backend can have minted such an id for this router: the client is told to start
    // over (404, the JSON-RPC "Session not found"), which every SDK acts on; a 400 would
    // leave it stuck.
    let (router, _) = two_backends();
    let now = Clock::new().now();
    let unknown = rejected(router.route(&post("/mcp", &[("mcp-session-id", "nobody")]), now));
    let long = "x".repeat(257);
    for (id, reason) in [
        ("has space", "invalid byte"),
        (long.as_str(), "too long"),
        ("", "empty"),
    ] {
        let routed = router.route(&post("/mcp", &[("mcp-session-id", id)]), now);
        let rejection = rejected(routed);
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND, "{reason}");
        assert!(matches!(
            rejection.reason(),
            Reason::InvalidKey(KeyKind::Session, _)
        ));
        assert_eq!(rejection.body(), unknown.body(), "{reason}");
        assert_eq!(rejection.headers(), unknown.headers(), "{reason}");
    }
    assert_eq!(router.metrics().rejected("invalid_key"), 3);
}

#[test]
fn a_session_id_the_router_cannot_route_is_refused_with_502_at_once() {
    // Forwarding it would leave the client with 400s on every later request, which do not
    // tell it to start over; refusing the initialize says what is wrong.
    let (router, _) = two_backends();
    let now = Clock::new().now();
    let long = "y".repeat(300);
    let (_, outcome) = exchange(
        &router,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", &long)],
        &[],
        now,
    );
    let HeadOutcome::Replace(rejection) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rejection.reason(), Reason::UnroutableKey(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(router.metrics().keys_unlearned, 1);
    // With a higher bound it is learned.
    let router = Router::builder().max_key_len(512).build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    initialize(&router, &long, now);
    let ok = router.route(&post("/mcp", &[("mcp-session-id", &long)]), now);
    assert!(matches!(ok, mcp_affinity::router::Routed::Forward(_)));
}

#[test]
fn a_request_naming_two_sessions_is_refused() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    initialize(&router, "mine", now);
    let request = post(
        "/mcp",
        &[("mcp-session-id", "mine"), ("mcp-session-id", "victim")],
    );
    let rejection = rejected(router.route(&request, now));
    assert_eq!(rejection.reason(), Reason::AmbiguousKey(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
}

/// CGI, WSGI and Rack servers read `Mcp_Session_Id` as `Mcp-Session-Id`: a request that
/// names its session that way must not be placed as a conversation start (reaching, perhaps,
/// the session's owner without the owner's principal check) or routed by another id.
#[test]
fn a_session_named_in_a_header_a_backend_may_read_as_mcp_session_id_is_refused() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    initialize(&router, "mine", now);
    for headers in [
        &[("mcp_session_id", "victim")][..],
        &[("mcp-session-id", "mine"), ("mcp_session-id", "victim")],
    ] {
        let rejection = rejected(router.route(&post("/mcp", headers), now));
        assert_eq!(rejection.reason(), Reason::AmbiguousKey(KeyKind::Session));
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn non_mcp_paths_neither_pin_nor_forget_sessions() {
    let (router, _) = two_backends();
    let now = Clock::new().now();
    let owner = initialize(&router, "s1", now);
    // OAuth discovery with the session header: placed, and its 404 forgets nothing.
    let discovery = get(
        "/.well-known/oauth-authorization-server",
        &[("mcp-session-id", "s1")],
    );
    let mut ex = forward(router.route(&discovery, now));
    assert_eq!(ex.how(), mcp_affinity::router::How::Placed);
    assert_eq!(ex.era(), None);
    let _ = respond(&router, &mut ex, 404, &[], &[], now);
    router.on_exchange_end(ex, End::Completed, now);
    assert_eq!(route_session(&router, "s1", now).unwrap(), owner);

    // With explicit MCP paths, only those are endpoints.
    let router = Router::builder().mcp_paths(["/mcp"]).build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    initialize(&router, "s2", now);
    let elsewhere = post("/api/other", &[("mcp-session-id", "s2")]);
    let (_, _) = exchange(&router, &elsewhere, 404, &[], &[], now);
    assert!(route_session(&router, "s2", now).is_ok());
}
