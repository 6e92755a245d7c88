//! Legacy HTTP+SSE (2024-11-05): sessions learned from the stream's `endpoint` event and bound
//! for as long as the stream lives.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use mcp_affinity::TenantId;
use mcp_affinity::router::{ChunkOutcome, End, HeadOutcome, Reason, Router};
use mcp_affinity::table::{KeyKind, MemoryTableConfig};

fn router() -> (Router, [mcp_affinity::BackendId; 2]) {
    let router = Router::builder().build();
    let a = router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let b = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
    (router, [a, b])
}

#[test]
fn python_style_endpoint_split_across_chunks_with_crlf_is_learned_until_the_stream_ends() {
    let (router, _) = router();
    let now = Clock::new().now();
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let owner = stream.backend();
    assert!(matches!(
        respond(&router, &mut stream, 200, &[SSE], &[], now),
        HeadOutcome::Observe
    ));

    // Python writes CRLF; the event arrives in pieces, the CRLF itself split.
    for chunk in [
        &b"event: endpoint\r\ndata: /messages/?session_id=fd15ff9f"[..],
        b"769d4acd9a944aa18b923c61\r",
        b"\n\r",
    ] {
        let _ = router.on_response_chunk(&mut stream, &bytes::Bytes::copy_from_slice(chunk), now);
    }
    assert!(!stream.is_observing(), "learned, done observing");

    let message = post(
        "/messages/?session_id=fd15ff9f769d4acd9a944aa18b923c61",
        &[],
    );
    for _ in 0..3 {
        let ex = forward(router.route(&message, now));
        assert_eq!(ex.backend(), owner);
        router.on_exchange_end(ex, End::Completed, now);
    }

    // The stream ends: the session ends with it.
    router.on_exchange_end(stream, End::Aborted, now);
    let rejection = rejected(router.route(&message, now));
    assert_eq!(rejection.reason(), Reason::UnknownKey(KeyKind::SseSession));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert_eq!(router.metrics().keys_released, 1);
}

#[test]
fn typescript_and_go_endpoint_urls_are_learned_too() {
    let (router, _) = router();
    let now = Clock::new().now();
    for (endpoint, message) in [
        // TypeScript: camelCase parameter, no trailing slash.
        (
            "/messages?sessionId=80f95dd5-32bf-446a-a8e1-8933ba08ae27",
            "/messages?sessionId=80f95dd5-32bf-446a-a8e1-8933ba08ae27",
        ),
        // Go: POSTs to the SSE path itself, an absolute URL.
        (
            "http://127.0.0.1:9001/sse?sessionid=01HZX3QK",
            "/sse?sessionid=01HZX3QK",
        ),
    ] {
        let mut stream = forward(router.route(&get("/sse", &[]), now));
        let owner = stream.backend();
        let event = format!("event: endpoint\ndata: {endpoint}\n\n");
        let _ = respond(&router, &mut stream, 200, &[SSE], &[event.as_bytes()], now);
        let ex = forward(router.route(&post(message, &[]), now));
        assert_eq!(ex.backend(), owner, "{endpoint}");
        router.on_exchange_end(ex, End::Completed, now);
        router.on_exchange_end(stream, End::Completed, now);
    }
}

#[test]
fn the_binding_outlives_the_idle_ttl_while_its_stream_is_open() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_secs(30))))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let mut clock = Clock::new();
    let mut stream = forward(router.route(&get("/sse", &[]), clock.now()));
    let _ = respond(
        &router,
        &mut stream,
        200,
        &[SSE],
        &[b"event: endpoint\ndata: /messages?sessionId=s1\n\n"],
        clock.now(),
    );
    let later = clock.advance(Duration::from_secs(3600));
    let _ = router.maintain(later, 1000);
    assert!(matches!(
        router.route(&post("/messages?sessionId=s1", &[]), later),
        mcp_affinity::router::Routed::Forward(_)
    ));
    router.on_exchange_end(stream, End::Completed, later);
}

#[test]
fn events_before_the_endpoint_and_keep_alives_are_skipped() {
    let (router, _) = router();
    let now = Clock::new().now();
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    assert!(matches!(
        respond(&router, &mut stream, 200, &[SSE], &[], now),
        HeadOutcome::Observe
    ));
    let outcome = router.on_response_chunk(
        &mut stream,
        &bytes::Bytes::from_static(b": ping\n\nevent: prime\ndata:\n\n"),
        now,
    );
    assert_eq!(outcome, ChunkOutcome::More);
    let outcome = router.on_response_chunk(
        &mut stream,
        &bytes::Bytes::from_static(b"event: endpoint\ndata: /messages?sessionId=s9\n\n"),
        now,
    );
    assert_eq!(outcome, ChunkOutcome::Done);
    router.on_exchange_end(stream, End::Completed, now);
}

#[test]
fn observation_stops_at_the_byte_bound() {
    let router = Router::builder().max_observed_bytes(100).build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = respond(&router, &mut stream, 200, &[SSE], &[], now);
    let noise = bytes::Bytes::from(format!(": {}\n\n", "z".repeat(60)));
    assert_eq!(
        router.on_response_chunk(&mut stream, &noise, now),
        ChunkOutcome::More
    );
    assert_eq!(
        router.on_response_chunk(&mut stream, &noise, now),
        ChunkOutcome::Done
    );
    assert_eq!(router.metrics().observe_limit_hits, 1);
    router.on_exchange_end(stream, End::Completed, now);
}

#[test]
fn a_failed_or_non_sse_connect_is_not_observed() {
    let (router, _) = router();
    let now = Clock::new().now();
    for (status, headers) in [(500, &[SSE][..]), (200, &[JSON][..])] {
        let mut stream = forward(router.route(&get("/sse", &[]), now));
        let outcome = respond(&router, &mut stream, status, headers, &[], now);
        assert!(matches!(outcome, HeadOutcome::Forward), "{status}");
        router.on_exchange_end(stream, End::Completed, now);
    }
}

#[test]
fn a_message_without_its_session_parameter_is_a_bad_request() {
    let (router, _) = router();
    let now = Clock::new().now();
    for request in [
        post("/messages", &[]),
        post("/messages/?other=1", &[]),
        get("/messages/", &[]),
    ] {
        let rejection = rejected(router.route(&request, now));
        assert!(matches!(rejection.reason(), Reason::BadEra(_)));
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn legacy_sse_paths_are_configurable_and_can_be_turned_off() {
    let router = Router::builder()
        .sse_path(Some("/events"))
        .message_paths(["/rpc"])
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let mut stream = forward(router.route(&get("/events", &[]), now));
    assert!(matches!(
        respond(&router, &mut stream, 200, &[SSE], &[], now),
        HeadOutcome::Observe
    ));
    router.on_exchange_end(stream, End::Completed, now);
    // `/messages` is an ordinary path now.
    assert!(matches!(
        router.route(&post("/messages", &[]), now),
        mcp_affinity::router::Routed::Forward(_)
    ));

    let off = Router::builder().sse_path(None).build();
    off.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let mut plain = forward(off.route(&get("/sse", &[]), now));
    assert!(matches!(
        respond(&off, &mut plain, 200, &[SSE], &[], now),
        HeadOutcome::Forward
    ));
}

#[test]
fn an_endpoint_event_with_an_unroutable_session_is_counted_not_a_panic() {
    // A backend's empty or non-ASCII session id used to panic inside the body observer.
    let (router, _) = router();
    let now = Clock::new().now();
    for url in [
        "/messages?sessionId=",
        "/messages?sessionId=caf\u{e9}",
        "/messages?sessionId=a b",
    ] {
        let mut stream = forward(router.route(&get("/sse", &[]), now));
        let event = format!("event: endpoint\ndata: {url}\n\n");
        let _ = respond(&router, &mut stream, 200, &[SSE], &[event.as_bytes()], now);
        assert!(!stream.is_observing());
        router.on_exchange_end(stream, End::Completed, now);
    }
    assert_eq!(router.metrics().keys_learned, 0);
}

#[test]
fn a_message_naming_two_sessions_is_refused() {
    // Starlette reads the last `session_id`, the router the first: a request naming two
    // sessions could pass the router's checks for one and reach the other.
    let (router, _) = router();
    let now = Clock::new().now();
    for uri in [
        "/messages/?session_id=mine&session_id=victim",
        "/messages?sessionId=mine&session_id=victim",
    ] {
        let rejection = rejected(router.route(&post(uri, &[]), now));
        assert_eq!(
            rejection.reason(),
            Reason::AmbiguousKey(KeyKind::SseSession)
        );
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn a_compressed_stream_is_not_observed() {
    let (router, _) = router();
    let now = Clock::new().now();
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let outcome = respond(
        &router,
        &mut stream,
        200,
        &[SSE, ("content-encoding", "gzip")],
        &[],
        now,
    );
    assert!(matches!(outcome, HeadOutcome::Forward));
    assert_eq!(router.metrics().bodies_encoded, 1);
    router.on_exchange_end(stream, End::Completed, now);
}
