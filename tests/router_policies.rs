//! Tenants, principals, operator keys, the cookie fallback, full tables, conflicting ids and
//! custom rejection bodies.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use mcp_affinity::router::{End, HeadOutcome, How, Reason, Router, key_fn};
use mcp_affinity::table::{KeyKind, MemoryTableConfig, Principal, Scope};
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

fn bearer(req: &http::request::Parts) -> Option<Principal> {
    let token = req.headers.get("authorization")?.as_bytes();
    // A stand-in fingerprint (FNV-1a); embedders would use a keyed hash.
    let hash = token.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x1000_0000_01b3)
    });
    Some(Principal::new(hash))
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
    router.remove_backend(bound).unwrap();
    let (rebound, _) = exchange(&router, &request, 200, &[JSON], &[], now);
    assert_ne!(rebound, bound);
    assert!(ids.contains(&rebound));
    let ex = forward(router.route(&request, now));
    assert_eq!(ex.backend(), rebound);
    // An invalid operator key is a bad request.
    let bad = post("/mcp", &[("mcp-param-workspace", "has space")]);
    assert!(matches!(
        rejected(router.route(&bad, now)).reason(),
        Reason::InvalidKey(KeyKind::Operator, _)
    ));
}

#[test]
fn the_affinity_cookie_routes_keyless_requests_and_is_cleared_when_its_backend_is_gone() {
    let router = Router::builder().affinity_cookie("mcp-affinity").build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let b = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    let now = Clock::new().now();
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let mut head = resp(200, &[("mcp-session-id", "s1")]);
    let _ = router.on_response_head(&mut ex, &mut head, now);
    let placed = ex.backend();
    router.on_exchange_end(ex, End::Completed, now);
    let set_cookie = head.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("mcp-affinity="), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // Keyless requests with the cookie follow it, whatever the placement would say.
    for _ in 0..4 {
        let ex = forward(router.route(
            &get("/mcp", &[("cookie", &format!("theme=dark; {cookie}"))]),
            now,
        ));
        assert_eq!(ex.backend(), placed);
        router.on_exchange_end(ex, End::Completed, now);
    }
    // Its backend removed: 404, and the cookie is cleared so the retry is placed afresh.
    router.remove_backend(placed).unwrap();
    let rejection = rejected(router.route(&get("/mcp", &[("cookie", &cookie)]), now));
    assert_eq!(rejection.reason(), Reason::OwnerGone(KeyKind::Cookie));
    assert!(
        rejection.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let _ = (a, b);
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
            (r.status() == StatusCode::NOT_FOUND).then(|| Bytes::from_static(b"gone"))
        })
        .build();
    let now = Clock::new().now();
    let not_found = rejected(router.route(&post("/mcp", &[("mcp-session-id", "x")]), now));
    assert_eq!(not_found.body(), "gone");
    let unavailable = rejected(router.route(&post("/mcp", &[]), now));
    assert!(
        unavailable.body().starts_with(b"{\"jsonrpc\""),
        "default kept"
    );
}
