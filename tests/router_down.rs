//! A crashed replica (issue #8): down is not unhealthy. A backend that refuses connections has
//! lost its sessions (404 at once, never a 502 loop); one that answers but fails its checks
//! still holds them; a request that was never delivered is placed again if it was a
//! placement, and never moved if it was pinned.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use mcp_affinity::router::{End, Health, How, Probe, Reason, Router, Undelivered, key_fn};
use mcp_affinity::table::{KeyKind, SessionTable};
use mcp_affinity::{BackendId, TenantId};

fn fleet(n: usize) -> (Router, Vec<BackendId>) {
    let router = Router::builder().health_thresholds(3, 2).build();
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

fn session_request(id: &str) -> http::request::Parts {
    post("/mcp", &[("mcp-session-id", id), LEGACY])
}

fn health_of(router: &Router, id: BackendId) -> Health {
    router
        .backends()
        .into_iter()
        .find(|b| b.id == id)
        .unwrap()
        .health
}

#[test]
fn a_refused_connection_to_a_pinned_owner_is_answered_404_not_502() {
    let (router, ids) = fleet(3);
    let now = Clock::new().now();
    let victim = session_on(&router, ids[0], "v", now);
    let ex = forward(router.route(&session_request(&victim), now));
    assert_eq!(ex.how(), How::Pinned);
    assert!(
        !ex.is_placeable(),
        "its owner is the only backend that can serve it"
    );
    let rejection = rejected(router.on_undelivered(ex, Undelivered::Refused, now));
    assert_eq!(rejection.reason(), Reason::OwnerDown(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert!(
        rejection.is_jsonrpc(),
        "the body every SDK reads as session gone"
    );
    assert_eq!(health_of(&router, ids[0]), Health::Down);
    // The next request of that session does not even try the dead address.
    let again = rejected(router.route(&session_request(&victim), now));
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

#[test]
fn every_key_of_a_down_backend_is_answered_owner_down_at_once() {
    let (router, ids) = fleet(3);
    let now = Clock::new().now();
    let victims: Vec<String> = (0..4)
        .map(|i| session_on(&router, ids[1], &format!("v{i}"), now))
        .collect();
    let bystander = session_on(&router, ids[2], "ok", now);
    let first = forward(router.route(&session_request(&victims[0]), now));
    let _ = rejected(router.on_undelivered(first, Undelivered::Refused, now));
    for victim in &victims[1..] {
        let rejection = rejected(router.route(&session_request(victim), now));
        assert_eq!(rejection.reason(), Reason::OwnerDown(KeyKind::Session));
    }
    // Sessions of live replicas are untouched.
    assert_eq!(route_session(&router, &bystander, now).unwrap(), ids[2]);
    let m = router.metrics();
    assert_eq!(m.owners_down, 1);
    assert_eq!(m.keys_lost, 4);
    assert_eq!(m.rejected("owner_down"), 4);
}

#[test]
fn legacy_sse_messages_and_tasks_of_a_down_backend_get_their_era_s_not_found() {
    let (router, ids) = fleet(1);
    let now = Clock::new().now();
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let event = b"event: endpoint\ndata: /messages/?session_id=abc\n\n";
    let _ = respond(&router, &mut stream, 200, &[SSE], &[event], now);
    let call = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tools/call"), ("mcp-name", "job")],
    );
    let task = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"t1"}}"#;
    let _ = exchange(&router, &call, 200, &[JSON], &[task], now);
    assert_eq!(
        router.report_health(ids[0], Probe::Refused, now).unwrap(),
        Health::Healthy
    );
    router.report_health(ids[0], Probe::Refused, now).unwrap();
    assert_eq!(
        router.report_health(ids[0], Probe::Refused, now).unwrap(),
        Health::Down
    );

    let message = rejected(router.route(&post("/messages/?session_id=abc", &[]), now));
    assert_eq!(message.reason(), Reason::OwnerDown(KeyKind::SseSession));
    assert!(message.is_jsonrpc());
    let poll = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", "t1")],
    );
    let lost = rejected(router.route(&poll, now));
    assert_eq!(lost.status(), StatusCode::NOT_FOUND);
    assert_eq!(lost.message(), "Task not found");
    router.on_exchange_end(stream, End::Aborted, now);
}

#[test]
fn a_refused_placement_is_placed_again_never_on_the_same_backend() {
    let (router, ids) = fleet(3);
    let now = Clock::new().now();
    let ex = forward(router.route(&post("/mcp", &[]), now));
    assert!(ex.is_placeable());
    let first = ex.backend();
    let ex = forward(router.on_undelivered(ex, Undelivered::Refused, now));
    assert_ne!(ex.backend(), first);
    assert_eq!(ex.how(), How::Placed);
    // The new backend answers and the session is learned there.
    let mut ex = ex;
    let _ = respond(
        &router,
        &mut ex,
        200,
        &[("mcp-session-id", "fresh")],
        &[],
        now,
    );
    let owner = ex.backend();
    router.on_exchange_end(ex, End::Completed, now);
    assert_eq!(route_session(&router, "fresh", now).unwrap(), owner);
    assert_eq!(health_of(&router, first), Health::Down);
    // Nothing new lands on the down backend.
    for i in 0..6 {
        assert_ne!(initialize(&router, &format!("n{i}"), now), first);
    }
    assert_eq!(router.metrics().placements_retried, 1);
    let _ = ids;
}

#[test]
fn every_kind_of_placed_request_is_placed_again_after_a_failed_connect() {
    let (router, _) = fleet(3);
    let now = Clock::new().now();
    for request in [
        post("/mcp", &[]),
        get("/sse", &[]),
        post("/mcp", &[MODERN, ("mcp-method", "tools/list")]),
        get("/.well-known/oauth-authorization-server", &[]),
    ] {
        for why in [
            Undelivered::Refused,
            Undelivered::TimedOut,
            Undelivered::Failed,
        ] {
            let ex = forward(router.route(&request, now));
            let first = ex.backend();
            let again = forward(router.on_undelivered(ex, why, now));
            assert_ne!(again.backend(), first, "{why:?} {}", request.uri);
            router.on_exchange_end(again, End::Completed, now);
            // Bring the backend back for the next round.
            for _ in 0..2 {
                router.report_health(first, Probe::Up, now).unwrap();
            }
        }
    }
}

#[test]
fn placement_gives_up_with_503_after_its_bounded_attempts() {
    let router = Router::builder().placement_attempts(2).build();
    let _ = ["a", "b", "c"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let ex = forward(router.route(&post("/mcp", &[]), now));
    let ex = forward(router.on_undelivered(ex, Undelivered::TimedOut, now));
    let rejection = rejected(router.on_undelivered(ex, Undelivered::TimedOut, now));
    assert_eq!(rejection.reason(), Reason::NoReadyBackend);
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(rejection.headers().contains_key("retry-after"));

    // With every backend refusing, the attempts end when none is left to try.
    let (router, _) = fleet(2);
    let ex = forward(router.route(&post("/mcp", &[]), now));
    let ex = forward(router.on_undelivered(ex, Undelivered::Refused, now));
    let rejection = rejected(router.on_undelivered(ex, Undelivered::Refused, now));
    assert_eq!(rejection.reason(), Reason::NoReadyBackend);
}

#[test]
fn a_timed_out_connect_to_a_pinned_owner_asks_the_client_to_retry_and_keeps_its_session() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let session = session_on(&router, ids[0], "s", now);
    let ex = forward(router.route(&session_request(&session), now));
    let rejection = rejected(router.on_undelivered(ex, Undelivered::TimedOut, now));
    assert_eq!(
        rejection.reason(),
        Reason::OwnerUnreachable(KeyKind::Session)
    );
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejection.headers()["retry-after"], "1");
    // One failed check, not down: the session still routes to its owner.
    assert_eq!(health_of(&router, ids[0]), Health::Healthy);
    assert_eq!(route_session(&router, &session, now).unwrap(), ids[0]);
    // Enough timeouts make it unhealthy, never down: its sessions still go to it.
    for _ in 0..3 {
        let ex = forward(router.route(&session_request(&session), now));
        let _ = rejected(router.on_undelivered(ex, Undelivered::TimedOut, now));
    }
    assert_eq!(health_of(&router, ids[0]), Health::Unhealthy);
    assert_eq!(route_session(&router, &session, now).unwrap(), ids[0]);
}

#[test]
fn refused_checks_make_a_backend_down_and_failed_checks_make_it_unhealthy() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let slow = session_on(&router, ids[0], "slow", now);
    let dead = session_on(&router, ids[1], "dead", now);
    for _ in 0..3 {
        router.report_health(ids[0], Probe::Failed, now).unwrap();
        router.report_health(ids[1], Probe::Refused, now).unwrap();
    }
    assert_eq!(health_of(&router, ids[0]), Health::Unhealthy);
    assert_eq!(health_of(&router, ids[1]), Health::Down);
    // Unhealthy keeps its sessions; down has lost them.
    assert_eq!(route_session(&router, &slow, now).unwrap(), ids[0]);
    assert_eq!(
        route_session(&router, &dead, now).unwrap_err().reason(),
        Reason::OwnerDown(KeyKind::Session)
    );
    // Mixed results do not add up: the streak is of one kind.
    let (router, ids) = fleet(1);
    for probe in [Probe::Refused, Probe::Failed, Probe::Refused, Probe::Failed] {
        router.report_health(ids[0], probe, now).unwrap();
    }
    assert_ne!(health_of(&router, ids[0]), Health::Down);
}

#[test]
fn a_down_backend_that_answers_again_inherits_no_key_and_takes_new_conversations() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    let old = session_on(&router, ids[0], "old", now);
    let ex = forward(router.route(&session_request(&old), now));
    let _ = rejected(router.on_undelivered(ex, Undelivered::Refused, now));
    // It comes back (a restarted process on the same port): two good checks.
    assert_eq!(
        router.report_health(ids[0], Probe::Up, now).unwrap(),
        Health::Down
    );
    assert_eq!(
        router.report_health(ids[0], Probe::Up, now).unwrap(),
        Health::Healthy
    );
    // The same id, a new incarnation: the old session is unknown, never routed to it.
    assert_eq!(router.table().count_owner(ids[0]), 0);
    let rejection = rejected(router.route(&session_request(&old), now));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    // New conversations land on it again.
    let fresh = session_on(&router, ids[0], "fresh", now);
    assert_eq!(route_session(&router, &fresh, now).unwrap(), ids[0]);
}

#[test]
fn maintain_purges_the_keys_of_a_down_backend() {
    let (router, ids) = fleet(2);
    let now = Clock::new().now();
    for i in 0..3 {
        session_on(&router, ids[0], &format!("k{i}"), now);
    }
    for _ in 0..3 {
        router.report_health(ids[0], Probe::Refused, now).unwrap();
    }
    assert_eq!(router.table().count_owner(ids[0]), 3);
    let done = router.maintain(now, 100);
    assert_eq!(done.purged, 3);
    assert_eq!(router.table().count_owner(ids[0]), 0);
}

#[test]
fn a_key_learned_from_an_answer_that_outlived_its_backend_is_not_kept() {
    let (router, ids) = fleet(1);
    let now = Clock::new().now();
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    for _ in 0..3 {
        router.report_health(ids[0], Probe::Refused, now).unwrap();
    }
    let _ = respond(
        &router,
        &mut ex,
        200,
        &[("mcp-session-id", "late")],
        &[],
        now,
    );
    router.on_exchange_end(ex, End::Completed, now);
    assert_eq!(router.table().count_owner(ids[0]), 0);
}

#[test]
fn an_operator_key_whose_owner_refused_is_bound_afresh_elsewhere() {
    let router = Router::builder()
        .operator_key(key_fn(|req| {
            req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())
        }))
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let request = post("/mcp", &[MODERN, ("mcp-param-workspace", "acme")]);
    let (owner, _) = exchange(&router, &request, 200, &[], &[], now);
    let ex = forward(router.route(&request, now));
    assert_eq!((ex.how(), ex.backend()), (How::Pinned, owner));
    let mut ex = forward(router.on_undelivered(ex, Undelivered::Refused, now));
    assert_ne!(ex.backend(), owner);
    let _ = respond(&router, &mut ex, 200, &[], &[], now);
    let new_owner = ex.backend();
    router.on_exchange_end(ex, End::Completed, now);
    let ex = forward(router.route(&request, now));
    assert_eq!((ex.how(), ex.backend()), (How::Pinned, new_owner));
    router.on_exchange_end(ex, End::Completed, now);
}

#[test]
fn a_cookie_hint_to_a_refusing_backend_is_placed_elsewhere() {
    let router = Router::builder().affinity_cookie("aff").build();
    let ids = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let cookie = format!("aff={}.{}", ids[0].slot(), ids[0].generation());
    let ex = forward(router.route(&get("/mcp", &[("cookie", &cookie)]), now));
    assert_eq!(ex.backend(), ids[0]);
    let ex = forward(router.on_undelivered(ex, Undelivered::Refused, now));
    assert_eq!(ex.backend(), ids[1]);
    router.on_exchange_end(ex, End::Completed, now);
}

#[test]
fn a_stream_cut_by_a_dying_backend_then_a_refused_connect_gives_404() {
    let (router, ids) = fleet(2);
    let mut clock = Clock::new();
    let now = clock.now();
    // A legacy SSE session: the cut stream releases it, so the next message is unknown.
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(
        &router,
        &mut stream,
        200,
        &[SSE],
        &[b"event: endpoint\ndata: /messages/?sessionId=x1\n\n"],
        now,
    );
    router.on_exchange_end(stream, End::Aborted, now);
    let message = rejected(router.route(&post("/messages?sessionId=x1", &[]), now));
    assert_eq!(message.status(), StatusCode::NOT_FOUND);
    // A Streamable session whose GET stream was cut: the next POST meets the closed port.
    let session = session_on(&router, ids[0], "st", now);
    let mut get_stream = forward(router.route(&get("/mcp", &[("mcp-session-id", &session)]), now));
    let _ = respond(&router, &mut get_stream, 200, &[SSE], &[], now);
    router.on_exchange_end(
        get_stream,
        End::Aborted,
        clock.advance(Duration::from_secs(1)),
    );
    let ex = forward(router.route(&session_request(&session), clock.now()));
    let rejection = rejected(router.on_undelivered(ex, Undelivered::Refused, clock.now()));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
}

#[test]
fn a_down_backend_is_reported_down_and_not_ready() {
    let (router, ids) = fleet(1);
    let now = Clock::new().now();
    router.report_health(ids[0], Probe::Refused, now).unwrap();
    router.report_health(ids[0], Probe::Refused, now).unwrap();
    router.report_health(ids[0], Probe::Refused, now).unwrap();
    let info = router.backends().into_iter().next().unwrap();
    assert_eq!(info.health, Health::Down);
    assert!(!info.ready() && !info.healthy);
    assert_eq!(
        rejected(router.route(&post("/mcp", &[]), now)).reason(),
        Reason::NoReadyBackend
    );
}
