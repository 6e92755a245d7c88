//! Sealed session ids (issue #9): a fleet of routers that share keys, and nothing else, routes
//! every session. Round trips for both session eras, every way a token can be bad, rotation,
//! expiry, owners that are removed, down, restarted or of another incarnation, tenants,
//! principals, and two routers agreeing on every decision.
#![cfg(feature = "seal")]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use mcp_affinity::router::{
    Data, End, Exchange, HeadOutcome, How, NewBackend, Probe, Reason, Routed, Router, Sealing,
    Undelivered,
};
use mcp_affinity::seal::{Keyring, SealKey};
use mcp_affinity::table::{KeyKind, SessionTable};
use mcp_affinity::{BackendId, TenantId};
use proptest::prelude::*;

const UUID: &str = "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97";
/// The Unix second the tests' clocks start at.
const T0: u64 = 1_795_000_000;

fn ring(keys: &[u8]) -> Keyring {
    Keyring::new(keys.iter().map(|&b| SealKey::new([b; 32]))).unwrap()
}

/// A sealing router over backends named `names` (labels `http://<name>`), its clock at `at`.
fn router_with(keys: &[u8], names: &[&str], at: Instant) -> (Router, Vec<BackendId>) {
    router_built(Router::builder(), keys, names, at)
}

fn router_built(
    builder: mcp_affinity::router::RouterBuilder,
    keys: &[u8],
    names: &[&str],
    at: Instant,
) -> (Router, Vec<BackendId>) {
    let sealing = Sealing::new(ring(keys), [9; 12], at, T0);
    let router = builder.sealing(sealing).build();
    let ids = names
        .iter()
        .map(|n| {
            let backend = NewBackend::new(TenantId::DEFAULT, &format!("http://{n}")).name(n);
            router.add(backend).unwrap()
        })
        .collect();
    (router, ids)
}

/// An initialize answered by its backend with `id`: the token the client gets, and the owner.
fn initialize_sealed(router: &Router, id: &str, now: Instant) -> (String, BackendId) {
    initialize_as(router, &[], id, now)
}

fn initialize_as(
    router: &Router,
    headers: &[(&str, &str)],
    id: &str,
    now: Instant,
) -> (String, BackendId) {
    let mut ex = forward(router.route(&post("/mcp", headers), now));
    let mut head = resp(200, &[("mcp-session-id", id), SSE]);
    assert!(matches!(
        router.on_response_head(&mut ex, &mut head, now),
        HeadOutcome::Forward
    ));
    let owner = ex.backend();
    router.on_exchange_end(ex, End::Completed, now);
    let token = head.headers["mcp-session-id"].to_str().unwrap().to_string();
    (token, owner)
}

fn call(token: &str) -> http::request::Parts {
    post("/mcp", &[("mcp-session-id", token), LEGACY])
}

/// Routes a request that must be pinned by its token, ends it, and returns its backend.
fn routes(router: &Router, request: &http::request::Parts, now: Instant) -> BackendId {
    let ex = pinned(router, request, now);
    let backend = ex.backend();
    router.on_exchange_end(ex, End::Completed, now);
    backend
}

fn pinned(router: &Router, request: &http::request::Parts, now: Instant) -> Exchange {
    let ex = forward(router.route(request, now));
    assert_eq!(ex.how(), How::Pinned);
    assert!(ex.is_sealed());
    ex
}

#[test]
fn a_streamable_session_is_sealed_opened_and_restored() {
    let now = Clock::new().now();
    let (router, ids) = router_with(&[1], &["a", "b"], now);
    let (token, owner) = initialize_sealed(&router, UUID, now);
    assert_ne!(token, UUID);
    assert!(!token.contains(UUID));
    assert!(token.len() < 120, "{} characters", token.len());
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(ids.contains(&owner));
    // Nothing is stored: the token carries everything.
    assert_eq!(router.table().occupancy().len, 0);

    let mut request = call(&token);
    let mut ex = pinned(&router, &request, now);
    assert_eq!(ex.backend(), owner);
    assert_eq!(ex.key(), Some((KeyKind::Session, UUID)));
    ex.rewrite_request(&mut request);
    assert_eq!(request.headers["mcp-session-id"], UUID);
    // The backend echoes its id: the client gets its token back, never the backend's id.
    let mut head = resp(200, &[("mcp-session-id", UUID), SSE]);
    let _ = router.on_response_head(&mut ex, &mut head, now);
    assert_eq!(head.headers["mcp-session-id"], token.as_str());
    router.on_exchange_end(ex, End::Completed, now);

    // GET streams, Last-Event-ID resumption and DELETE are routed and restored alike.
    for request in [
        get("/mcp", &[("mcp-session-id", &token)]),
        get(
            "/mcp",
            &[("mcp-session-id", &token), ("last-event-id", "0")],
        ),
        delete("/mcp", &[("mcp-session-id", &token)]),
    ] {
        let mut request = request;
        let ex = pinned(&router, &request, now);
        assert_eq!(ex.backend(), owner);
        ex.rewrite_request(&mut request);
        assert_eq!(request.headers["mcp-session-id"], UUID);
        router.on_exchange_end(ex, End::Completed, now);
    }
    let m = router.metrics();
    assert_eq!((m.tokens_sealed, m.tokens_opened), (1, 4));
}

/// Python servers put the session id on their error answers too, and the TypeScript client
/// adopts the id of any answer, failed or not: an error must give the client its token back
/// (or nothing), never the backend's own id, which the router would refuse from then on.
#[test]
fn no_answer_hands_the_client_the_backend_s_own_id_whatever_its_status() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let (token, _) = initialize_sealed(&router, UUID, now);
    for status in [200, 202, 400, 404, 406, 500] {
        for echo in [UUID, "another-id"] {
            let mut ex = pinned(&router, &call(&token), now);
            let mut head = resp(status, &[("mcp-session-id", echo), JSON]);
            let _ = router.on_response_head(&mut ex, &mut head, now);
            router.on_exchange_end(ex, End::Completed, now);
            let seen = head
                .headers
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap());
            assert_ne!(seen, Some(echo), "{status} echoing {echo}");
            match (status, echo) {
                (_, UUID) => assert_eq!(seen, Some(token.as_str()), "{status}"),
                // A 2xx naming another id: sealed for the same owner.
                (200 | 202, _) => assert!(seen.is_some(), "{status}"),
                // A failed answer naming another id: nothing to seal it for.
                _ => assert_eq!(seen, None, "{status}"),
            }
            // What a TypeScript client presents next still routes (a 404 ends the session,
            // so the router forgets nothing here without principal binding either way).
            if let Some(next) = seen {
                routes(&router, &call(next), now);
            }
        }
    }
    // A failed conversation start that names an id: removed, since nothing sealed it.
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let mut head = resp(500, &[("mcp-session-id", "minted-then-failed"), JSON]);
    let _ = router.on_response_head(&mut ex, &mut head, now);
    router.on_exchange_end(ex, End::Completed, now);
    assert!(!head.headers.contains_key("mcp-session-id"));
}

/// Nor does any other answer under sealing (fourth and fifth reviews): a conversation start
/// answered 2xx after its backend was removed or found down (nothing to seal for: refused,
/// 502), an answer to a request routed without a session (the header removed), and a legacy
/// SSE stream compressed so that its endpoint cannot be sealed (refused: 502).
#[test]
fn no_unsealed_id_reaches_a_client_of_a_sealing_router() {
    let now = Clock::new().now();
    for gone in ["removed", "down"] {
        let (router, ids) = router_with(&[1], &["a"], now);
        let mut ex = forward(router.route(&post("/mcp", &[]), now));
        if gone == "removed" {
            router.remove_backend(ids[0], now).unwrap();
        } else {
            for _ in 0..3 {
                router.report_health(ids[0], Probe::Refused, now).unwrap();
            }
        }
        // Not forwarded: without an id the client would go on without a session; it retries.
        let mut head = resp(200, &[("mcp-session-id", UUID), SSE]);
        let outcome = router.on_response_head(&mut ex, &mut head, now);
        router.on_exchange_end(ex, End::Aborted, now);
        let HeadOutcome::Replace(rejection) = outcome else {
            panic!("{gone}: {outcome:?}");
        };
        assert_eq!(rejection.status(), StatusCode::BAD_GATEWAY, "{gone}");
    }
    let (router, _) = router_with(&[1], &["a"], now);
    for request in [
        post("/mcp", &[MODERN, ("mcp-method", "tools/list")]),
        get("/.well-known/oauth-protected-resource", &[]),
    ] {
        let mut ex = forward(router.route(&request, now));
        let mut head = resp(200, &[("mcp-session-id", UUID), JSON]);
        let _ = router.on_response_head(&mut ex, &mut head, now);
        router.on_exchange_end(ex, End::Completed, now);
        assert!(
            !head.headers.contains_key("mcp-session-id"),
            "{}",
            request.uri
        );
    }
    let mut ex = forward(router.route(&get("/sse", &[]), now));
    let mut head = resp(200, &[SSE, ("content-encoding", "gzip")]);
    let outcome = router.on_response_head(&mut ex, &mut head, now);
    router.on_exchange_end(ex, End::Aborted, now);
    let HeadOutcome::Replace(rejection) = outcome else {
        panic!("a compressed stream whose endpoint cannot be sealed is forwarded");
    };
    assert_eq!(rejection.status(), StatusCode::BAD_GATEWAY);
}

/// Feeds `chunks` of a legacy SSE stream through the router as `ObservedBody` would; returns
/// what the client gets.
fn through(router: &Router, ex: &mut Exchange, chunks: &[&[u8]], now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks {
        if let Data::Send(bytes) = router.on_response_data(ex, Bytes::copy_from_slice(chunk), now) {
            out.extend_from_slice(&bytes);
        }
    }
    if let Some(rest) = router.on_response_data_end(ex) {
        out.extend_from_slice(&rest);
    }
    out
}

#[test]
fn a_legacy_sse_endpoint_is_rewritten_and_its_messages_restored() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let mut head = resp(200, &[SSE, ("content-length", "999")]);
    assert!(matches!(
        router.on_response_head(&mut stream, &mut head, now),
        HeadOutcome::Rewrite
    ));
    assert!(
        head.headers.get("content-length").is_none(),
        "the length changes"
    );
    // Python's CRLF endpoint event, split mid-line and mid-id, after a comment.
    let hex = "fd15ff9f769d4acd9a944aa18b923c61";
    let chunks: [&[u8]; 4] = [
        b": ping\r\n\r\nevent: endpo",
        b"int\r\ndata: /messages/?session_id=fd15ff9f",
        b"769d4acd9a944aa18b923c61\r\n\r\nevent: message\r\n",
        b"data: {}\r\n\r\n",
    ];
    let out = String::from_utf8(through(&router, &mut stream, &chunks, now)).unwrap();
    assert!(!out.contains(hex), "{out}");
    let (before, rest) = out.split_once("session_id=").unwrap();
    assert_eq!(before, ": ping\r\n\r\nevent: endpoint\r\ndata: /messages/?");
    let (token, after) = rest.split_once("\r\n").unwrap();
    assert_eq!(after, "\r\nevent: message\r\ndata: {}\r\n\r\n");
    assert!(!stream.is_rewriting());

    let mut message = post(&format!("/messages/?session_id={token}"), &[]);
    let ex = pinned(&router, &message, now);
    assert_eq!(ex.backend(), stream.backend());
    ex.rewrite_request(&mut message);
    assert_eq!(message.uri, format!("/messages/?session_id={hex}").as_str());
    router.on_exchange_end(ex, End::Completed, now);
    router.on_exchange_end(stream, End::Completed, now);

    // The TypeScript spelling, LF and an absolute URL with other parameters.
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = router.on_response_head(&mut stream, &mut resp(200, &[SSE]), now);
    let event = format!("event: endpoint\ndata: http://h/messages?x=1&sessionId={UUID}&y=2\n\n");
    let out = String::from_utf8(through(&router, &mut stream, &[event.as_bytes()], now)).unwrap();
    let token = out
        .split("sessionId=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(out.starts_with("event: endpoint\ndata: http://h/messages?x=1&sessionId="));
    assert!(out.ends_with("&y=2\n\n"));
    let mut message = post(&format!("/messages?x=1&sessionId={token}&y=2"), &[]);
    pinned(&router, &message, now).rewrite_request(&mut message);
    assert_eq!(
        message.uri,
        format!("/messages?x=1&sessionId={UUID}&y=2").as_str()
    );
}

/// The endpoint URL repeated after the endpoint event, in the same chunk (a message quoting
/// it, or a second endpoint event): the endpoint event's own URL is the one sealed, and the
/// bytes after it pass unchanged.
#[test]
fn only_the_endpoint_event_s_url_is_rewritten_when_the_chunk_repeats_it() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = router.on_response_head(&mut stream, &mut resp(200, &[SSE]), now);
    let url = format!("/messages/?session_id={UUID}");
    let chunk = format!("event: endpoint\ndata: {url}\n\nevent: endpoint\ndata: {url}\n\n");
    let out = String::from_utf8(through(&router, &mut stream, &[chunk.as_bytes()], now)).unwrap();
    let (first, second) = out.split_once("\n\n").unwrap();
    assert!(!first.contains(UUID), "{out}");
    assert_eq!(second, format!("event: endpoint\ndata: {url}\n\n"));
    let token = first.split_once("session_id=").unwrap().1;
    let message = post(&format!("/messages/?session_id={token}"), &[]);
    assert_eq!(routes(&router, &message, now), stream.backend());
    router.on_exchange_end(stream, End::Completed, now);

    // Within the endpoint event, after its data line: a comment and an `id:` with the URL.
    for repeat in [format!(": {url}"), format!("id: {url}")] {
        let mut stream = forward(router.route(&get("/sse", &[]), now));
        let _ = router.on_response_head(&mut stream, &mut resp(200, &[SSE]), now);
        let chunk = format!("event: endpoint\r\ndata: {url}\r\n{repeat}\r\n\r\n");
        let out =
            String::from_utf8(through(&router, &mut stream, &[chunk.as_bytes()], now)).unwrap();
        let (data, rest) = out
            .split_once("\r\n")
            .unwrap()
            .1
            .split_once("\r\n")
            .unwrap();
        assert!(
            data.starts_with("data: /messages/?session_id=") && !data.contains(UUID),
            "{out}"
        );
        assert_eq!(
            rest,
            format!("{repeat}\r\n\r\n"),
            "the repeat passes unchanged"
        );
        router.on_exchange_end(stream, End::Completed, now);
    }
}

#[test]
fn a_stream_without_an_endpoint_is_passed_on_whole_when_it_ends_or_the_bound_is_hit() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = router.on_response_head(&mut stream, &mut resp(200, &[SSE]), now);
    let chunks: [&[u8]; 2] = [b"event: message\ndata: 1\n\n", b": keep-alive\n"];
    assert_eq!(
        through(&router, &mut stream, &chunks, now),
        chunks.concat(),
        "unchanged"
    );

    let router = Router::builder()
        .max_observed_bytes(64)
        .sealing(Sealing::new(ring(&[1]), [1; 12], now, T0))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let _ = router.on_response_head(&mut stream, &mut resp(200, &[SSE]), now);
    let filler = [b':'; 40];
    assert_eq!(
        router.on_response_data(&mut stream, Bytes::copy_from_slice(&filler), now),
        Data::Hold
    );
    let Data::Send(out) =
        router.on_response_data(&mut stream, Bytes::copy_from_slice(&filler), now)
    else {
        panic!("past the bound, the held bytes go")
    };
    assert_eq!(out.len(), 80);
    assert_eq!(router.metrics().observe_limit_hits, 1);
}

fn refused(router: &Router, value: &str, now: Instant) -> mcp_affinity::router::Rejection {
    rejected(router.route(&call(value), now))
}

#[test]
fn every_bad_token_is_answered_exactly_like_an_unknown_session() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let (token, _) = initialize_sealed(&router, UUID, now);
    let (other_fleet, _) = router_with(&[2], &["a"], now);
    let (foreign, _) = initialize_sealed(&other_fleet, UUID, now);
    let unknown = Router::builder().build();
    unknown.add_backend(TenantId::DEFAULT, "x", 1).unwrap();
    let reference = rejected(unknown.route(&call("nobody"), now));

    let mut flipped = token.clone().into_bytes();
    flipped[40] = if flipped[40] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let truncated = &token[..token.len() - 3];
    let extended = format!("{token}AAAA");
    let long = "A".repeat(300);
    let count = |cause: &str| {
        let m = router.metrics();
        m.tokens_refused
            .iter()
            .find(|(n, _)| *n == cause)
            .unwrap()
            .1
    };
    // Each value, and the causes it may be counted under (a truncated token may still be
    // well-formed base64url of a plausible length: then it fails authentication).
    for (value, causes) in [
        ("garbage", &["malformed"][..]),
        (truncated, &["malformed", "rejected"][..]),
        (extended.as_str(), &["malformed", "rejected"][..]),
        (long.as_str(), &["malformed"][..]),
        (flipped.as_str(), &["rejected"][..]),
        (foreign.as_str(), &["unknown_key"][..]),
        (UUID, &["malformed"][..]),
    ] {
        let before: Vec<u64> = causes.iter().map(|c| count(c)).collect();
        let rejection = refused(&router, value, now);
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND, "{value}");
        assert_eq!(rejection.body(), reference.body(), "{value}");
        assert_eq!(rejection.headers(), reference.headers(), "{value}");
        let after: Vec<u64> = causes.iter().map(|c| count(c)).collect();
        let counted: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
        assert_eq!(counted, 1, "{value}: counted under {causes:?}");
    }
    let m = router.metrics();
    assert_eq!(m.tokens_refused.iter().map(|(_, n)| n).sum::<u64>(), 7);
    assert_eq!(m.rejected("invalid_token"), 7);
}

/// A plain id the table holds is routed by the table even when it is shaped like a token
/// (valid base64url of a token's length): one that fails to open is looked up before it is
/// refused, as a malformed one is.
#[test]
fn a_plain_id_the_table_holds_is_routed_even_when_shaped_like_a_token() {
    let now = Clock::new().now();
    let (router, ids) = router_with(&[1], &["a", "b"], now);
    // A token of another fleet: it fails to open here (its key is unknown), and one with a
    // flipped byte (it fails authentication).
    let (other_fleet, _) = router_with(&[2], &["a"], now);
    let (foreign, _) = initialize_sealed(&other_fleet, UUID, now);
    let mut flipped = foreign.clone().into_bytes();
    flipped[40] = if flipped[40] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for (value, owner) in [(foreign.as_str(), ids[1]), (flipped.as_str(), ids[0])] {
        assert_eq!(refused(&router, value, now).status(), StatusCode::NOT_FOUND);
        // The same value learned as a plain id (a table that outlived a router without
        // sealing).
        let key =
            mcp_affinity::table::Key::new(TenantId::DEFAULT, KeyKind::Session, value.as_bytes())
                .unwrap();
        assert!(matches!(
            router.table().insert(&key, owner, None, now),
            Ok(mcp_affinity::table::Insert::Added { .. })
        ));
        let ex = forward(router.route(&call(value), now));
        assert_eq!(
            (ex.backend(), ex.how(), ex.is_sealed()),
            (owner, How::Pinned, false)
        );
        router.on_exchange_end(ex, End::Completed, now);
    }
}

#[test]
fn a_token_opens_only_in_its_tenant_and_for_its_principal() {
    fn by_header(req: &http::request::Parts) -> Option<TenantId> {
        let n = req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?;
        Some(TenantId::new(n))
    }
    let now = Clock::new().now();
    let sealing = Sealing::new(ring(&[1]), [3; 12], now, T0);
    let router = Router::builder()
        .tenant(by_header)
        .principal(bearer)
        .sealing(sealing)
        .build();
    for t in [1, 2] {
        router
            .add(NewBackend::new(TenantId::new(t), "http://same-name"))
            .unwrap();
    }
    let alice = [("x-tenant", "1"), ("authorization", "Bearer alice")];
    let (token, _) = initialize_as(&router, &alice, UUID, now);
    let ok = post("/mcp", &[alice[0], alice[1], ("mcp-session-id", &token)]);
    assert!(matches!(router.route(&ok, now), Routed::Forward(_)));
    for headers in [
        [("x-tenant", "2"), ("authorization", "Bearer alice")],
        [("x-tenant", "1"), ("authorization", "Bearer mallory")],
    ] {
        let bad = post(
            "/mcp",
            &[headers[0], headers[1], ("mcp-session-id", &token)],
        );
        let rejection = rejected(router.route(&bad, now));
        assert_eq!(rejection.reason(), Reason::InvalidToken(KeyKind::Session));
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    }
    let anonymous = post("/mcp", &[("x-tenant", "1"), ("mcp-session-id", &token)]);
    assert!(matches!(router.route(&anonymous, now), Routed::Reject(_)));
}

const ALICE: (&str, &str) = ("authorization", "Bearer alice");

/// A sealing router that binds principals ([`bearer`]), and the token of a session alice
/// started on it.
fn alice_session(now: std::time::Instant) -> (Router, String) {
    let (router, _) = router_built(Router::builder().principal(bearer), &[1], &["a"], now);
    let (token, _) = initialize_as(&router, &[ALICE], UUID, now);
    (router, token)
}

/// With principal binding, a request that carries its own token without being routed by it
/// (a discovery path, a 2026-07-28 version) passes the carried-key check: the token opens
/// for its principal. Before, the check looked the token up in the table, which holds the
/// backend's id, and refused the client's own session as unknown (404).
#[test]
fn a_token_carried_without_routing_passes_only_for_its_principal() {
    let now = Clock::new().now();
    let (router, token) = alice_session(now);
    let modern = ("mcp-protocol-version", "2026-07-28");
    let carried = |who: (&'static str, &'static str)| {
        [
            get(
                "/.well-known/oauth-protected-resource",
                &[who, ("mcp-session-id", &token)],
            ),
            post(
                "/mcp",
                &[
                    who,
                    modern,
                    ("mcp-method", "tools/list"),
                    ("mcp-session-id", &token),
                ],
            ),
        ]
    };
    for request in carried(ALICE) {
        let ex = forward(router.route(&request, now));
        assert_eq!(ex.how(), How::Placed, "{:?}", request.uri);
        router.on_exchange_end(ex, End::Completed, now);
    }
    for request in carried(("authorization", "Bearer mallory")) {
        let rejection = rejected(router.route(&request, now));
        assert_eq!(
            rejection.status(),
            StatusCode::NOT_FOUND,
            "{:?}",
            request.uri
        );
    }
}

#[test]
fn rotation_opens_old_tokens_until_their_key_is_dropped() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let (old, _) = initialize_sealed(&router, UUID, now);
    router.set_keyring(ring(&[2, 1])).unwrap();
    let (new, _) = initialize_sealed(&router, "second-session", now);
    routes(&router, &call(&old), now);
    routes(&router, &call(&new), now);
    router.set_keyring(ring(&[2])).unwrap();
    routes(&router, &call(&new), now);
    let rejection = refused(&router, &old, now);
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    assert_eq!(router.metrics().tokens_refused[1], ("unknown_key", 1));
    // A router without sealing says so.
    assert!(Router::builder().build().set_keyring(ring(&[3])).is_err());
}

#[test]
fn a_token_past_its_max_age_or_from_the_future_is_refused() {
    let mut clock = Clock::new();
    let start = clock.now();
    let sealing = Sealing::new(ring(&[1]), [4; 12], start, T0)
        .max_age(Duration::from_secs(3600))
        .clock_skew(Duration::from_secs(2));
    let router = Router::builder().sealing(sealing).build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let (token, _) = initialize_sealed(&router, UUID, start);
    routes(
        &router,
        &call(&token),
        clock.advance(Duration::from_secs(3600)),
    );
    let rejection = refused(&router, &token, clock.advance(Duration::from_secs(1)));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    // A router whose clock is behind accepts tokens up to the skew from the future only.
    for (behind, ok) in [(2, true), (3, false)] {
        let sealing = Sealing::new(ring(&[1]), [5; 12], start, T0 - behind);
        let late = Router::builder().sealing(sealing).build();
        late.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
        let routed = late.route(&call(&token), start);
        assert_eq!(
            matches!(routed, Routed::Forward(_)),
            ok,
            "{behind} s behind"
        );
    }
    let expired = router.metrics().tokens_refused[3];
    assert_eq!(expired, ("expired", 1));
}

#[test]
fn a_token_of_a_removed_down_or_unknown_owner_is_never_forwarded() {
    let mut clock = Clock::new();
    let now = clock.now();
    let (router, ids) = router_with(&[1], &["a", "b", "c"], now);
    let tokens: Vec<(String, BackendId)> = (0..9)
        .map(|i| initialize_sealed(&router, &format!("id-{i}"), now))
        .collect();
    let of = |b: BackendId| tokens.iter().find(|(_, o)| *o == b).unwrap().0.clone();

    router.remove_backend(ids[0], now).unwrap();
    assert_eq!(
        refused(&router, &of(ids[0]), now).reason(),
        Reason::OwnerGone(KeyKind::Session)
    );
    // Down: 404 at once; after it comes back, its old tokens are gone (those sealed more
    // than the clock skew before it went down), new ones route.
    let now = clock.advance(Duration::from_secs(5));
    let ex = pinned(&router, &call(&of(ids[1])), now);
    let _ = router.on_undelivered(ex, Undelivered::Refused, now);
    assert_eq!(
        refused(&router, &of(ids[1]), now).reason(),
        Reason::OwnerDown(KeyKind::Session)
    );
    let later = clock.advance(Duration::from_secs(10));
    router.report_health(ids[1], Probe::Up, later).unwrap();
    router.report_health(ids[1], Probe::Up, later).unwrap();
    assert_eq!(
        refused(&router, &of(ids[1]), later).reason(),
        Reason::OwnerGone(KeyKind::Session)
    );
    let (fresh, owner) = initialize_sealed(&router, "after-comeback", later);
    if owner == ids[1] {
        routes(&router, &call(&fresh), later);
    }
    // A router that never heard of a backend is behind the fleet: 503, not 404.
    let (behind, _) = router_with(&[1], &["z"], now);
    let rejection = refused(&behind, &of(ids[2]), now);
    assert_eq!(rejection.reason(), Reason::UnknownOwner(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(rejection.headers().contains_key("retry-after"));
}

/// A router that saw a backend refuse connections keeps it down until its own checks see it
/// answer again; meanwhile another router, which saw the new process first, seals sessions on
/// it. Those tokens are not this router's to end: 503 (behind the fleet), not the 404 of a
/// lost session; tokens sealed before the loss are still 404 at once.
#[test]
fn a_router_that_has_not_seen_a_comeback_answers_the_new_process_s_tokens_503() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let (a, _) = router_with(&[1], &["x"], t0);
    let (b, ids) = router_with(&[1], &["x"], t0);
    let (old, _) = initialize_sealed(&b, "old", t0);
    // x's process dies; B's request to it is refused.
    let t1 = clock.advance(Duration::from_secs(30));
    let ex = pinned(&b, &call(&old), t1);
    let _ = b.on_undelivered(ex, Undelivered::Refused, t1);
    // Seconds later the new process is up; A, which never saw it die, seals a session on it.
    let t2 = clock.advance(Duration::from_secs(5));
    let (new, _) = initialize_sealed(&a, "new", t2);
    let rejection = refused(&b, &new, t2);
    assert_eq!(rejection.reason(), Reason::UnknownOwner(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(rejection.headers().contains_key("retry-after"));
    let rejection = refused(&b, &old, t2);
    assert_eq!(rejection.reason(), Reason::OwnerDown(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    // Once B's checks see x answer, the new session routes there and the old one is gone.
    b.report_health(ids[0], Probe::Up, t2).unwrap();
    b.report_health(ids[0], Probe::Up, t2).unwrap();
    assert_eq!(routes(&b, &call(&new), t2), ids[0]);
    assert_eq!(
        refused(&b, &old, t2).reason(),
        Reason::OwnerGone(KeyKind::Session)
    );
}

/// The other side of the 503 above: a session sealed a second before its backend was found
/// refusing connections may be the dead process's, or (after a quick restart another router
/// saw) the new one's. Unsure, the router answers 503 for as long as the backend is down here
/// by default (principle: never a 404 for a session that may be live); with a down grace,
/// 503 only that long after the loss, then the 404 that makes a dead session's client start
/// over, not 503 until its token's max age (fourth review). A grace of zero: 404 at once.
#[test]
fn a_session_sealed_within_the_skew_of_a_loss_is_503_while_unsure() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let grace = |secs| Router::builder().down_grace(Duration::from_secs(secs));
    let (unsure, _) = router_with(&[1], &["x"], t0);
    let (graced, _) = router_built(grace(30), &[1], &["x"], t0);
    let (graceless, _) = router_built(grace(0), &[1], &["x"], t0);
    let routers = [&unsure, &graced, &graceless];
    let tokens = routers.map(|router| initialize_sealed(router, UUID, t0).0);
    let t1 = clock.advance(Duration::from_secs(1));
    for router in routers {
        let x = router.backends()[0].id;
        for _ in 0..3 {
            router.report_health(x, Probe::Refused, t1).unwrap();
        }
    }
    let (gone, unsure_) = (StatusCode::NOT_FOUND, StatusCode::SERVICE_UNAVAILABLE);
    for (after, expected) in [
        (0, [unsure_, unsure_, gone]),
        (29, [unsure_, unsure_, gone]),
        (30, [unsure_, gone, gone]),
        (23 * 3600, [unsure_, gone, gone]),
    ] {
        let now = t1 + Duration::from_secs(after);
        for ((router, token), expected) in routers.iter().zip(&tokens).zip(expected) {
            let _ = router.maintain(now, 1000);
            assert_eq!(
                refused(router, token, now).status(),
                expected,
                "{after} s after"
            );
        }
    }

    // With no clock skew, a token of the loss's own second is as unsure: the request whose
    // refusal found the backend down is 404 (`on_undelivered`), the next ones 503 within the
    // grace.
    let mut clock = Clock::new();
    let t0 = clock.now();
    let sealing = Sealing::new(ring(&[1]), [9; 12], t0, T0).clock_skew(Duration::ZERO);
    let router = grace(30).sealing(sealing).build();
    router
        .add(NewBackend::new(TenantId::DEFAULT, "http://x").name("x"))
        .unwrap();
    let (token, _) = initialize_sealed(&router, UUID, t0);
    let t1 = clock.advance(Duration::from_millis(300));
    let ex = pinned(&router, &call(&token), t1);
    let first = rejected(router.on_undelivered(ex, Undelivered::Refused, t1));
    assert_eq!(first.reason(), Reason::OwnerDown(KeyKind::Session));
    assert_eq!(refused(&router, &token, t1).status(), unsure_);
    assert_eq!(
        refused(&router, &token, t1 + Duration::from_secs(31)).reason(),
        Reason::OwnerDown(KeyKind::Session)
    );
}

/// A backend removed and added again under its name (a service-discovery loop that saw a pod
/// go and come back) is a new owner, as its table keys say without sealing: the tokens sealed
/// before the removal are gone (404), never forwarded to the new generation; tokens sealed
/// for the new one route.
#[test]
fn a_backend_removed_and_added_again_by_name_inherits_no_sealed_session() {
    let mut clock = Clock::new();
    let now = clock.now();
    let (router, ids) = router_with(&[1], &["a"], now);
    let (old, _) = initialize_sealed(&router, "old-process", now);
    let removed = clock.advance(Duration::from_secs(30));
    router.remove_backend(ids[0], removed).unwrap();
    let again = clock.advance(Duration::from_secs(30));
    let reborn = router
        .add(NewBackend::new(TenantId::DEFAULT, "http://a").name("a"))
        .unwrap();
    assert_ne!(reborn, ids[0]);
    let rejection = refused(&router, &old, again);
    assert_eq!(rejection.reason(), Reason::OwnerGone(KeyKind::Session));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    let (new, owner) = initialize_sealed(&router, "new-process", again);
    assert_eq!(owner, reborn);
    assert_eq!(routes(&router, &call(&new), again), reborn);
}

/// Removed and added again with a higher incarnation (the replica restarted, as the docs ask
/// it be numbered), by two routers whose discovery sees it ten seconds apart: the router that
/// lags forwards the sessions the other one sealed on the new process meanwhile (fourth
/// review), and still refuses the old process's by their incarnation.
#[test]
fn a_re_add_with_a_higher_incarnation_keeps_the_new_process_s_sessions() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let x = |incarnation| {
        NewBackend::new(TenantId::DEFAULT, "http://x")
            .name("x")
            .incarnation(incarnation)
    };
    let (a, _) = router_with(&[1], &[], t0);
    let (b, _) = router_with(&[1], &[], t0);
    let a1 = a.add(x(1)).unwrap();
    let b1 = b.add(x(1)).unwrap();
    let (old, _) = initialize_sealed(&a, "old-process", t0);
    let t = clock.advance(Duration::from_secs(60));
    b.remove_backend(b1, t).unwrap();
    let b2 = b.add(x(2)).unwrap();
    let t1 = clock.advance(Duration::from_secs(1));
    let (new, owner) = initialize_sealed(&b, "new-process", t1);
    assert_eq!(owner, b2);
    let t10 = clock.advance(Duration::from_secs(9));
    a.remove_backend(a1, t10).unwrap();
    let a2 = a.add(x(2)).unwrap();
    assert_eq!(routes(&a, &call(&new), t10), a2);
    assert_eq!(
        refused(&a, &old, t10).reason(),
        Reason::OwnerGone(KeyKind::Session)
    );
}

#[test]
fn restarts_and_incarnations_refuse_the_tokens_of_a_lost_process() {
    let mut clock = Clock::new();
    let now = clock.now();
    let (router, ids) = router_with(&[1], &["a"], now);
    let (before, _) = initialize_sealed(&router, UUID, now);
    let later = clock.advance(Duration::from_secs(10));
    let reborn = router.restart_backend(ids[0], later).unwrap();
    assert_eq!(
        refused(&router, &before, later).reason(),
        Reason::OwnerGone(KeyKind::Session)
    );
    let (after, owner) = initialize_sealed(&router, UUID, later);
    assert_eq!(owner, reborn);
    routes(&router, &call(&after), later);

    // The orchestrator numbers processes: a router told of incarnation 2 refuses 1's tokens
    // (404); one still at 1 refuses 2's as a router behind the fleet (503).
    let (at_two, ids2) = router_with(&[1], &["a"], now);
    at_two.set_incarnation(ids2[0], 2, now).unwrap();
    let (new_token, _) = initialize_sealed(&at_two, "new", now);
    assert_eq!(
        refused(&at_two, &after, later).reason(),
        Reason::OwnerGone(KeyKind::Session)
    );
    let (behind, _) = router_with(&[1], &["a"], now);
    assert_eq!(
        refused(&behind, &new_token, later).reason(),
        Reason::UnknownOwner(KeyKind::Session)
    );
    // So does `router`, which restarted `a` after that token was sealed: the loss it knows of
    // is incarnation 0's, and says nothing of 2's process.
    assert_eq!(
        refused(&router, &new_token, later).reason(),
        Reason::UnknownOwner(KeyKind::Session)
    );
}

#[test]
fn sealing_composes_with_drain_deadlines_and_the_cookie_fallback() {
    let mut clock = Clock::new();
    let now = clock.now();
    let builder = Router::builder().affinity_cookie("aff");
    let (router, ids) = router_built(builder, &[1], &["a", "b"], now);
    let (token, owner) = initialize_sealed(&router, UUID, now);
    router
        .drain_backend(owner, Some(now + Duration::from_secs(5)), now)
        .unwrap();
    routes(&router, &call(&token), now);
    assert_eq!(
        refused(&router, &token, clock.advance(Duration::from_secs(6))).reason(),
        Reason::OwnerRevoked(KeyKind::Session)
    );
    let other = if owner == ids[0] { ids[1] } else { ids[0] };
    let cookie = format!("aff={}.{}", other.slot(), other.generation());
    let ex = forward(router.route(&get("/mcp", &[("cookie", &cookie)]), clock.now()));
    assert_eq!(ex.backend(), other);
}

#[test]
fn an_id_that_cannot_be_sealed_is_refused_at_once() {
    let now = Clock::new().now();
    let (router, _) = router_with(&[1], &["a"], now);
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let long = "x".repeat(300);
    let mut head = resp(200, &[("mcp-session-id", &long)]);
    let HeadOutcome::Replace(rejection) = router.on_response_head(&mut ex, &mut head, now) else {
        panic!("an id over 256 bytes cannot be sealed");
    };
    assert_eq!(rejection.reason(), Reason::UnroutableKey(KeyKind::Session));
}

#[test]
fn two_routers_with_the_same_keys_route_each_other_s_tokens() {
    let now = Clock::new().now();
    // Backends added in another order: their slots differ, their names do not.
    let (a, ids_a) = router_with(&[1], &["x", "y", "z"], now);
    let (b, ids_b) = router_with(&[1], &["z", "y", "x"], now);
    let name = |router: &Router, id: BackendId| {
        router
            .backends()
            .into_iter()
            .find(|i| i.id == id)
            .unwrap()
            .name
            .to_string()
    };
    for i in 0..12 {
        let (token, owner_a) = initialize_sealed(&a, &format!("s{i}"), now);
        let ex = pinned(&b, &call(&token), now);
        assert_eq!(name(&b, ex.backend()), name(&a, owner_a));
        assert_eq!(ex.key(), Some((KeyKind::Session, format!("s{i}").as_str())));
    }
    let _ = (ids_a, ids_b);
}

/// One step of the two-router property: a request through one router or the other.
#[derive(Clone, Debug)]
enum Step {
    Initialize { via: bool, id: u8 },
    Call { via: bool, session: u8 },
    Crash { backend: u8 },
    Comeback { backend: u8 },
    Tamper { via: bool, session: u8, at: u8 },
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<bool>(), any::<u8>()).prop_map(|(via, id)| Step::Initialize { via, id }),
        6 => (any::<bool>(), any::<u8>()).prop_map(|(via, session)| Step::Call { via, session }),
        1 => any::<u8>().prop_map(|backend| Step::Crash { backend }),
        1 => any::<u8>().prop_map(|backend| Step::Comeback { backend }),
        1 => (any::<bool>(), any::<u8>(), any::<u8>())
            .prop_map(|(via, session, at)| Step::Tamper { via, session, at }),
        1 => (0u16..4000).prop_map(Step::Advance),
    ]
}

/// A decision, by backend name, so that two routers' decisions compare.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    To(String),
    No(u16),
}

fn decide(router: &Router, request: &http::request::Parts, now: Instant) -> Decision {
    match router.route(request, now) {
        Routed::Forward(ex) => {
            let name = router
                .backends()
                .into_iter()
                .find(|b| b.id == ex.backend())
                .unwrap()
                .name
                .to_string();
            router.on_exchange_end(ex, End::Completed, now);
            Decision::To(name)
        }
        Routed::Reject(r) => Decision::No(r.status().as_u16()),
        Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Two routers built from the same keys and names, seeing the same fleet events, make the
    /// same decision for every request, whichever of them sealed its token, and a token only
    /// ever reaches the backend that minted its id.
    #[test]
    fn two_routers_agree_on_every_decision(steps in prop::collection::vec(step(), 1..60)) {
        let mut clock = Clock::new();
        let names = ["x", "y", "z"];
        let (a, ids_a) = router_with(&[1, 2], &names, clock.now());
        let (b, ids_b) = router_with(&[1, 2], &["z", "x", "y"], clock.now());
        let id_of = |router: &Router, ids: &[BackendId], name: &str| {
            *ids.iter().find(|id| router.backends().iter().any(|i| i.id == **id && &*i.name == name)).unwrap()
        };
        // token → (backend name that minted it, the backend's id)
        let mut sessions: Vec<(String, String, String)> = Vec::new();
        for step in steps {
            let now = clock.now();
            match step {
                Step::Initialize { via, id } => {
                    let router = if via { &a } else { &b };
                    let id = format!("sess-{id}");
                    let Routed::Forward(mut ex) = router.route(&post("/mcp", &[]), now) else {
                        continue; // every backend is down
                    };
                    let mut head = resp(200, &[("mcp-session-id", &id)]);
                    let _ = router.on_response_head(&mut ex, &mut head, now);
                    let owner = router.backends().into_iter().find(|i| i.id == ex.backend()).unwrap().name.to_string();
                    router.on_exchange_end(ex, End::Completed, now);
                    let token = head.headers["mcp-session-id"].to_str().unwrap().to_string();
                    sessions.push((token, owner, id));
                }
                Step::Call { via, session } if !sessions.is_empty() => {
                    let (token, owner, id) = &sessions[usize::from(session) % sessions.len()];
                    let request = call(token);
                    let (da, db) = (decide(&a, &request, now), decide(&b, &request, now));
                    prop_assert_eq!(&da, &db);
                    if let Decision::To(name) = &da {
                        prop_assert_eq!(name, owner);
                        let router = if via { &a } else { &b };
                        let mut restored = request.clone();
                        let ex = forward(router.route(&request, now));
                        ex.rewrite_request(&mut restored);
                        prop_assert_eq!(restored.headers["mcp-session-id"].to_str().unwrap(), id.as_str());
                        router.on_exchange_end(ex, End::Completed, now);
                    }
                }
                Step::Crash { backend } | Step::Comeback { backend } => {
                    let name = names[usize::from(backend) % 3];
                    let probe = if matches!(step, Step::Crash { .. }) { Probe::Refused } else { Probe::Up };
                    for _ in 0..3 {
                        a.report_health(id_of(&a, &ids_a, name), probe, now).unwrap();
                        b.report_health(id_of(&b, &ids_b, name), probe, now).unwrap();
                    }
                }
                Step::Tamper { via, session, at } if !sessions.is_empty() => {
                    let (token, _, _) = &sessions[usize::from(session) % sessions.len()];
                    let mut bytes = token.clone().into_bytes();
                    let at = usize::from(at) % bytes.len();
                    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                    let router = if via { &a } else { &b };
                    let routed = router.route(&call(std::str::from_utf8(&bytes).unwrap()), now);
                    prop_assert!(matches!(routed, Routed::Reject(_)), "a changed token was routed");
                }
                Step::Advance(secs) => { clock.advance(Duration::from_secs(u64::from(secs))); }
                _ => {}
            }
        }
    }
}

/// The carried-token check lets through only a token that opens for the request's own kind,
/// tenant and principal: none of these may pass.
#[test]
fn carried_tokens_of_another_kind_tenant_principal_or_tampered_are_refused() {
    let now = Clock::new().now();
    let (router, token) = alice_session(now);
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let long = format!("{token}{}", "A".repeat(4096));
    let cases: Vec<(String, http::request::Parts)> = vec![
        // A Session token carried as a legacy SSE session (another kind).
        (
            "kind".into(),
            get(&format!("/.well-known/x?sessionId={token}"), &[ALICE]),
        ),
        (
            "kind-mcp".into(),
            get(&format!("/mcp?sessionId={token}"), &[ALICE]),
        ),
        (
            "tampered".into(),
            get("/.well-known/x", &[ALICE, ("mcp-session-id", &tampered)]),
        ),
        (
            "long".into(),
            get("/.well-known/x", &[ALICE, ("mcp-session-id", &long)]),
        ),
        (
            "anonymous".into(),
            get("/.well-known/x", &[("mcp-session-id", &token)]),
        ),
        (
            "mallory-modern".into(),
            post(
                "/mcp",
                &[
                    ("authorization", "Bearer mallory"),
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-session-id", &token),
                ],
            ),
        ),
    ];
    for (name, request) in cases {
        match router.route(&request, now) {
            Routed::Reject(_) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    // Another tenant.
    let request = get("/.well-known/x", &[ALICE, ("mcp-session-id", &token)]);
    assert!(matches!(
        router.route_in(TenantId::new(2), &request, now, |_| true),
        Routed::Reject(_)
    ));
}
