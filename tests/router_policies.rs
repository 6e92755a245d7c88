//! Tenants, principals, operator keys, the cookie fallback, full tables, conflicting ids and
//! custom rejection bodies.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use mcp_affinity::router::{End, HeadOutcome, How, Reason, Router, key_fn};
use mcp_affinity::table::{KeyKind, MemoryTableConfig, Scope};
use mcp_affinity::{BackendId, TenantId};

fn by_header(req: &http::request::Parts) -> Option<TenantId> {
    let n = req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?;
    Some(TenantId::new(n))
}

#[test]
fn a_session_id_presented_under_another_tenant_is_unknown() {
    let router = Router::builder().tenant(by_header).build();
    router.add_backend(TenantId::new(1), "t1", 1).unwrap();
    router.add_backend(TenantId::new(2), "t2", 1).unwrap();
    let now = Clock::new().now();
    let (owner, _) = exchange(
        &router,
        &post("/mcp", &[("x-tenant", "1")]),
        200,
        &[("mcp-session-id", "shared-id")],
        &[],
        now,
    );
    let same = forward(router.route(
        &post(
            "/mcp",
            &[("x-tenant", "1"), ("mcp-session-id", "shared-id")],
        ),
        now,
    ));
    assert_eq!(same.backend(), owner);
    let other = rejected(router.route(
        &post(
            "/mcp",
            &[("x-tenant", "2"), ("mcp-session-id", "shared-id")],
        ),
        now,
    ));
    assert_eq!(other.reason(), Reason::UnknownKey(KeyKind::Session));
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[test]
fn a_session_presented_by_another_principal_is_rejected_exactly_as_unknown() {
    let router = Router::builder().principal(bearer).build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let _ = exchange(
        &router,
        &post("/mcp", &[("authorization", "Bearer alice")]),
        200,
        &[("mcp-session-id", "s1")],
        &[],
        now,
    );
    let alice = router.route(
        &post(
            "/mcp",
            &[("authorization", "Bearer alice"), ("mcp-session-id", "s1")],
        ),
        now,
    );
    assert!(matches!(alice, mcp_affinity::router::Routed::Forward(_)));

    let unknown = rejected(router.route(&post("/mcp", &[("mcp-session-id", "nobody")]), now));
    for headers in [
        &[
            ("authorization", "Bearer mallory"),
            ("mcp-session-id", "s1"),
        ][..],
        &[("mcp-session-id", "s1")][..],
    ] {
        let hijack = rejected(router.route(&post("/mcp", headers), now));
        assert_eq!(hijack.reason(), Reason::WrongPrincipal(KeyKind::Session));
        assert_eq!(hijack.status(), unknown.status());
        assert_eq!(
            hijack.body(),
            unknown.body(),
            "indistinguishable from an unknown session"
        );
    }
    assert_eq!(router.metrics().rejected("wrong_principal"), 2);
}

#[test]
fn an_operator_key_binds_on_the_first_2xx_then_pins() {
    let router = Router::builder()
        .operator_key(key_fn(|req| {
            req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())
        }))
        .build();
    let ids: Vec<BackendId> = (0..3)
        .map(|i| {
            router
                .add_backend(TenantId::DEFAULT, &format!("b{i}"), 1)
                .unwrap()
        })
        .collect();
    let now = Clock::new().now();
    let request = post(
        "/mcp",
        &[
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-param-workspace", "ws-7"),
        ],
    );

    // A failed first answer binds nothing.
    let (first, _) = exchange(&router, &request, 500, &[], &[], now);
    let (bound, _) = exchange(&router, &request, 200, &[JSON], &[], now);
    assert_eq!(router.metrics().keys_learned, 1);
    let _ = first;
    for _ in 0..5 {
        let ex = forward(router.route(&request, now));
        assert_eq!(ex.backend(), bound);
        assert_eq!(ex.how(), How::Pinned);
        router.on_exchange_end(ex, End::Completed, now);
    }
    // Its owner removed, the key is purged with the owner's other keys: the next request is a
    // first request again, placed on a live backend and bound there.
    router.remove_backend(bound, now).unwrap();
    let (rebound, _) = exchange(&router, &request, 200, &[JSON], &[], now);
    assert_ne!(rebound, bound);
    assert!(ids.contains(&rebound));
    let ex = forward(router.route(&request, now));
    assert_eq!(ex.backend(), rebound);
    // A binding that fails does not turn the (already executed) call into an error.
    let full = Router::builder()
        .table_config(MemoryTableConfig::new().with_shards(1).with_capacity(1))
        .operator_key(key_fn(|req| {
            req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())
        }))
        .build();
    full.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    initialize(&full, "occupant", now);
    let mut hold = forward(full.route(&get("/mcp", &[("mcp-session-id", "occupant")]), now));
    let _ = respond(&full, &mut hold, 200, &[SSE], &[], now);
    let (_, outcome) = exchange(&full, &request, 200, &[JSON], &[], now);
    assert!(!matches!(outcome, HeadOutcome::Replace(_)), "{outcome:?}");
    assert_eq!(full.metrics().keys_unlearned, 1);
    full.on_exchange_end(hold, End::Completed, now);
    // An invalid operator key is a bad request.
    let bad = post("/mcp", &[("mcp-param-workspace", "has space")]);
    assert!(matches!(
        rejected(router.route(&bad, now)).reason(),
        Reason::InvalidKey(KeyKind::Operator, _)
    ));
}

fn initialize_with_cookie(router: &Router, cookie: Option<&str>) -> (BackendId, Option<String>) {
    let now = Clock::new().now();
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", *c)).collect();
    let mut ex = forward(router.route(&post("/mcp", &headers), now));
    let mut head = resp(200, &[]);
    let _ = router.on_response_head(&mut ex, &mut head, now);
    let backend = ex.backend();
    router.on_exchange_end(ex, End::Completed, now);
    let set = head.headers.get("set-cookie").map(|v| {
        let v = v.to_str().unwrap();
        v.split(';').next().unwrap().to_owned()
    });
    (backend, set)
}

#[test]
fn the_affinity_cookie_routes_keyless_requests_to_its_ready_backend() {
    let router = Router::builder().affinity_cookie("mcp-affinity").build();
    let _ = ["a", "b", "c"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let (placed, cookie) = initialize_with_cookie(&router, None);
    let cookie = cookie.expect("a placed conversation start sets the cookie");
    assert!(cookie.starts_with("mcp-affinity="), "{cookie}");
    // Keyless requests with the cookie follow it, whatever placement would say. A hint, not
    // an owner: the exchange says it was placed, and counts so.
    let before = router.metrics();
    for _ in 0..6 {
        let headers = [("cookie", format!("theme=dark; {cookie}"))];
        let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let ex = forward(router.route(&get("/mcp", &headers), now));
        assert_eq!(ex.backend(), placed);
        assert_eq!(ex.how(), How::Placed);
        router.on_exchange_end(ex, End::Completed, now);
    }
    let after = router.metrics();
    assert_eq!(
        (after.placed - before.placed, after.pinned - before.pinned),
        (6, 0)
    );
}

#[test]
fn a_conversation_start_the_cookie_hints_counts_on_its_backend_until_answered() {
    let router = Router::builder().affinity_cookie("mcp-affinity").build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    // A cookie for one backend (its start learned no session: both backends stay at zero).
    let (hinted, cookie) = initialize_with_cookie(&router, None);
    let cookie = cookie.unwrap();
    // Four starts that follow the cookie, not answered yet.
    let in_flight: Vec<_> = (0..4)
        .map(|_| forward(router.route(&post("/mcp", &[("cookie", cookie.as_str())]), now)))
        .collect();
    assert!(in_flight.iter().all(|ex| ex.backend() == hinted));
    // The least-sessions policy sees them: the next two starts without a cookie go to the
    // other backend (with the hinted starts uncounted, the two backends tie, and round robin
    // sends one of the two to the hinted one).
    let others: Vec<_> = (0..2)
        .map(|_| forward(router.route(&post("/mcp", &[]), now)))
        .collect();
    assert!(
        others.iter().all(|ex| ex.backend() != hinted),
        "a start went to the backend four hinted starts are waiting on"
    );
    for ex in in_flight.into_iter().chain(others) {
        router.on_exchange_end(ex, End::Completed, now);
    }
}

#[test]
fn a_cookie_naming_a_draining_unhealthy_or_removed_backend_is_no_hint() {
    let router = Router::builder()
        .affinity_cookie("mcp-affinity")
        .health_thresholds(1, 1)
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    type Spoil = fn(&Router, BackendId, std::time::Instant);
    let spoilers: [(&str, Spoil); 3] = [
        ("draining", |r, b, now| {
            r.drain_backend(b, None, now).unwrap()
        }),
        ("unhealthy", |r, b, now| {
            assert_ne!(
                r.report_health(b, false, now).unwrap(),
                mcp_affinity::router::Health::Healthy
            )
        }),
        ("removed", |r, b, now| {
            r.remove_backend(b, now).unwrap();
            r.add_backend(TenantId::DEFAULT, "again", 1).unwrap();
        }),
    ];
    for (what, spoil) in spoilers {
        let (first, cookie) = initialize_with_cookie(&router, None);
        let cookie = cookie.unwrap();
        spoil(&router, first, now);
        // A new conversation with the stale cookie is placed on a ready backend, and told so.
        let (second, fresh) = initialize_with_cookie(&router, Some(&cookie));
        assert_ne!(
            second, first,
            "{what}: a new conversation went to a {what} backend"
        );
        assert!(
            fresh.is_some_and(|f| f != cookie),
            "{what}: no fresh cookie"
        );
        // Reset for the next case.
        for b in router.backends() {
            let _ = router.undrain_backend(b.id, now);
            let _ = router.report_health(b.id, true, now);
        }
    }
    // A malformed cookie is no hint either.
    let (_, _) = initialize_with_cookie(&router, Some("mcp-affinity=not.a.backend"));
    assert_eq!(router.metrics().rejected_total(), 0);
}

#[test]
fn a_full_table_turns_an_initialize_answer_into_503() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_shards(1).with_capacity(1))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    initialize(&router, "s1", now);
    // Keep s1 busy so that it cannot be evicted.
    let mut stream = forward(router.route(&get("/mcp", &[("mcp-session-id", "s1")]), now));
    let _ = respond(&router, &mut stream, 200, &[SSE], &[], now);
    let (_, outcome) = exchange(
        &router,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", "s2")],
        &[],
        now,
    );
    let HeadOutcome::Replace(rejection) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rejection.reason(), Reason::TableFull(Scope::Global));
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(rejection.headers().contains_key("retry-after"));
    assert_eq!(router.metrics().keys_unlearned, 1);
    router.on_exchange_end(stream, End::Completed, now);
}

#[test]
fn an_id_minted_by_two_backends_is_refused() {
    let router = Router::builder().build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    let now = Clock::new().now();
    let first = initialize(&router, "dup", now);
    // Least sessions sends the next conversation to the other backend, which mints "dup" too.
    let (second, outcome) = exchange(
        &router,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", "dup")],
        &[],
        now,
    );
    assert_ne!(first, second);
    let HeadOutcome::Replace(rejection) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rejection.reason(), Reason::KeyConflict(KeyKind::Session));
    assert_eq!(route_session(&router, "dup", now).unwrap(), first);
    assert_eq!(router.metrics().key_conflicts, 1);
}

#[test]
fn the_embedder_can_replace_rejection_bodies() {
    let router = Router::builder()
        .rejection_body(|r| {
            let html = http::HeaderValue::from_static("text/html");
            (r.status() == StatusCode::NOT_FOUND).then(|| (html, Bytes::from_static(b"<p>gone")))
        })
        .build();
    let now = Clock::new().now();
    // A lost session, whose default body is JSON-RPC: the embedder's body and content type.
    let not_found = rejected(router.route(&post("/mcp", &[("mcp-session-id", "x")]), now));
    let response = not_found.to_response();
    assert_eq!(response.body(), "<p>gone");
    assert_eq!(response.headers()["content-type"], "text/html");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let unavailable = rejected(router.route(&post("/mcp", &[]), now));
    let response = unavailable.to_response();
    assert_eq!(
        response.body(),
        "No backend available; retry later",
        "default kept"
    );
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.headers()["retry-after"], "1");
}
