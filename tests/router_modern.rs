//! The 2026-07-28 era: stateless calls, and tasks learned from `CreateTaskResult`s.
#![cfg(feature = "tasks")]

mod common;

use common::*;
use http::StatusCode;
use mcp_affinity::TenantId;
use mcp_affinity::router::{End, HeadOutcome, How, Reason, Router};
use mcp_affinity::table::KeyKind;

fn router() -> (Router, [mcp_affinity::BackendId; 3]) {
    let router = Router::builder().build();
    let ids = ["a", "b", "c"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    (router, ids)
}

fn call(method: &str, name: &str) -> http::request::Parts {
    post(
        "/mcp",
        &[MODERN, ("mcp-method", method), ("mcp-name", name)],
    )
}

const TASK: &[u8] = br#"{"jsonrpc":"2.0","id":2,"result":{"resultType":"task","taskId":"p1-25db68eb","status":"working","ttlMs":60000,"pollIntervalMs":300}}"#;

#[test]
fn modern_calls_are_placed_in_turn_learn_nothing_and_ignore_session_headers() {
    let (router, backends) = router();
    let now = Clock::new().now();
    let mut seen = Vec::new();
    for _ in 0..9 {
        // A stale session header must not pin a modern call.
        let request = post(
            "/mcp",
            &[
                MODERN,
                ("mcp-method", "tools/list"),
                ("mcp-session-id", "stale"),
            ],
        );
        let ex = forward(router.route(&request, now));
        assert_eq!(ex.how(), How::Placed);
        assert_eq!(ex.era(), Some(mcp_affinity::router::Era::Modern));
        seen.push(ex.backend());
        router.on_exchange_end(ex, End::Completed, now);
    }
    for b in backends {
        assert_eq!(seen.iter().filter(|s| **s == b).count(), 3, "round robin");
    }
    let metrics = router.metrics();
    assert_eq!(metrics.rejected_total(), 0);
    assert_eq!(metrics.keys_learned, 0);
}

#[test]
fn a_task_created_in_a_json_response_pins_its_tasks_get_calls() {
    let (router, _) = router();
    let now = Clock::new().now();
    let length = TASK.len().to_string();
    let (creator, outcome) = exchange(
        &router,
        &call("tools/call", "slow_job"),
        200,
        &[JSON, ("content-length", &length)],
        // The JSON arrives in two pieces.
        &[&TASK[..40], &TASK[40..]],
        now,
    );
    assert!(matches!(outcome, HeadOutcome::Observe));
    for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
        for _ in 0..3 {
            let ex = forward(router.route(&call(method, "p1-25db68eb"), now));
            assert_eq!(ex.backend(), creator, "{method}");
            assert_eq!(ex.how(), How::Pinned);
            router.on_exchange_end(ex, End::Completed, now);
        }
    }
    assert_eq!(router.metrics().keys_learned, 1);
}

#[test]
fn a_task_created_in_an_sse_response_is_learned_after_notifications() {
    let (router, _) = router();
    let now = Clock::new().now();
    let progress =
        br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
    let mut events = Vec::new();
    events.extend_from_slice(b"event: message\r\ndata: ");
    events.extend_from_slice(progress);
    events.extend_from_slice(b"\r\n\r\nevent: message\r\ndata: ");
    events.extend_from_slice(TASK);
    events.extend_from_slice(b"\r\n\r\n");
    let (creator, _) = exchange(
        &router,
        &call("tools/call", "slow_job"),
        200,
        &[SSE],
        &[&events[..30], &events[30..]],
        now,
    );
    let ex = forward(router.route(&call("tasks/get", "p1-25db68eb"), now));
    assert_eq!(ex.backend(), creator);
}

#[test]
fn a_plain_result_ends_observation_without_learning() {
    let (router, _) = router();
    let now = Clock::new().now();
    let plain = br#"{"jsonrpc":"2.0","id":2,"result":{"content":[],"resultType":"complete"}}"#;
    let _ = exchange(
        &router,
        &call("tools/call", "whoami"),
        200,
        &[JSON],
        &[plain],
        now,
    );
    assert_eq!(router.metrics().keys_learned, 0);
    // Methods that cannot create tasks are not observed at all.
    let (_, outcome) = exchange(&router, &call("tools/list", ""), 200, &[JSON], &[], now);
    assert!(matches!(outcome, HeadOutcome::Forward));
}

#[test]
fn a_404_in_the_modern_era_means_method_not_found_and_forgets_nothing() {
    let (router, _) = router();
    let now = Clock::new().now();
    let (creator, _) = exchange(
        &router,
        &call("tools/call", "job"),
        200,
        &[JSON],
        &[TASK],
        now,
    );
    let _ = exchange(
        &router,
        &call("tasks/get", "p1-25db68eb"),
        404,
        &[JSON],
        &[],
        now,
    );
    let ex = forward(router.route(&call("tasks/get", "p1-25db68eb"), now));
    assert_eq!(ex.backend(), creator, "still pinned after a 404");
}

#[test]
fn an_unknown_task_is_rejected_with_404_task_not_found() {
    let (router, _) = router();
    let rejection = rejected(router.route(&call("tasks/get", "no-such-task"), Clock::new().now()));
    assert_eq!(rejection.reason(), Reason::UnknownKey(KeyKind::Task));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    // Not a JSON-RPC body: the router cannot echo the request id, and an error with
    // `id: null` on a request outside a session can leave a client waiting forever.
    assert_eq!(rejection.body(), "Task not found");
    assert_eq!(
        rejection.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        rejection.jsonrpc_body(),
        r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"Task not found"},"id":null}"#
    );
}

#[test]
fn tasks_get_without_mcp_name_is_answered_task_not_found() {
    let (router, _) = router();
    let request = post("/mcp", &[MODERN, ("mcp-method", "tasks/get")]);
    let rejection = rejected(router.route(&request, Clock::new().now()));
    assert!(matches!(
        rejection.reason(),
        Reason::InvalidKey(KeyKind::Task, _)
    ));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert_eq!(rejection.code(), -32602);
    assert_eq!(rejection.message(), "Task not found");
}

#[test]
fn a_task_id_no_backend_could_have_minted_here_is_answered_task_not_found() {
    // A backend that minted a task id the router cannot route by (a space, 10 KB) got its
    // CreateTaskResult through; its client must hear "not found", which it can act on, never
    // a 400 it cannot.
    let (router, _) = router();
    let now = Clock::new().now();
    let long = "t".repeat(10_000);
    for id in ["has space", long.as_str()] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":2,"result":{{"resultType":"task","taskId":"{id}"}}}}"#
        );
        let (_, outcome) = exchange(
            &router,
            &call("tools/call", "job"),
            200,
            &[JSON],
            &[body.as_bytes()],
            now,
        );
        assert!(matches!(outcome, HeadOutcome::Observe));
        let poll = post(
            "/mcp",
            &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", "x")],
        );
        let mut poll = poll;
        poll.headers.insert(
            "mcp-name",
            http::HeaderValue::from_bytes(id.as_bytes()).unwrap(),
        );
        let rejection = rejected(router.route(&poll, now));
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND, "{}", &id[..9]);
        assert_eq!(rejection.message(), "Task not found");
    }
    assert_eq!(router.metrics().keys_unlearned, 2);
}

#[test]
fn legacy_protocol_versions_keep_their_sessions() {
    let (router, _) = router();
    let now = Clock::new().now();
    let owner = initialize(&router, "s1", now);
    for version in ["2025-03-26", "2025-06-18", "2025-11-25"] {
        let request = post(
            "/mcp",
            &[("mcp-session-id", "s1"), ("mcp-protocol-version", version)],
        );
        let ex = forward(router.route(&request, now));
        assert_eq!(ex.backend(), owner, "{version}");
        router.on_exchange_end(ex, End::Completed, now);
    }
}

#[test]
fn a_task_json_body_in_tiny_chunks_without_length_is_learned() {
    // The JSON observer used to re-parse the whole body on every chunk.
    let (router, _) = router();
    let now = Clock::new().now();
    let chunks: Vec<&[u8]> = TASK.chunks(3).collect();
    let (creator, _) = exchange(
        &router,
        &call("tools/call", "job"),
        200,
        &[JSON],
        &chunks,
        now,
    );
    let ex = forward(router.route(&call("tasks/get", "p1-25db68eb"), now));
    assert_eq!(ex.backend(), creator);
}

#[test]
fn a_request_naming_two_tasks_is_refused() {
    let (router, _) = router();
    let request = post(
        "/mcp",
        &[
            MODERN,
            ("mcp-method", "tasks/get"),
            ("mcp-name", "t1"),
            ("mcp-name", "t2"),
        ],
    );
    let rejection = rejected(router.route(&request, Clock::new().now()));
    assert_eq!(rejection.reason(), Reason::AmbiguousKey(KeyKind::Task));
}

#[test]
fn a_compressed_response_is_not_observed() {
    let (router, _) = router();
    let now = Clock::new().now();
    // Counted once: a call that creates no task would not have been read at all.
    for (method, name) in [("tools/call", "job"), ("tools/list", "")] {
        let (_, outcome) = exchange(
            &router,
            &call(method, name),
            200,
            &[JSON, ("content-encoding", "br")],
            &[TASK],
            now,
        );
        assert!(matches!(outcome, HeadOutcome::Forward), "{method}");
        assert_eq!(router.metrics().bodies_encoded, 1, "{method}");
    }
    assert_eq!(router.metrics().keys_learned, 0);
}

#[test]
fn a_task_answer_is_read_by_its_media_type_not_a_prefix_of_it() {
    let (router, _) = router();
    let now = Clock::new().now();
    for (content_type, read) in [
        ("Application/JSON; charset=utf-8", true),
        (" application/json ", true),
        ("TEXT/EVENT-STREAM;charset=utf-8", true),
        ("application/jsonl", false),
        ("application/json-seq", false),
        ("text/event-streams", false),
        ("application/jsonx; charset=utf-8", false),
    ] {
        let (_, outcome) = exchange(
            &router,
            &call("tools/call", "job"),
            200,
            &[("content-type", content_type)],
            &[],
            now,
        );
        assert_eq!(
            matches!(outcome, HeadOutcome::Observe),
            read,
            "{content_type}: {outcome:?}"
        );
    }
}
