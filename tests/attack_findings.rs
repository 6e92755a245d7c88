//! Findings of the second adversarial review (after #12 and #8). Every test here FAILS on
//! the commit it was written against: each one states what the router should do, what it
//! does, and how bad it is. Run with `cargo test --all-features --test attack_findings`.
#![allow(clippy::disallowed_methods)] // one test measures a purge and probes from a thread

mod common;

use std::time::Duration;

use common::*;
use mcp_affinity::router::{End, Reason, Routed, Router, Undelivered, key_fn};
use mcp_affinity::table::{KeyKind, MemoryTableConfig, Principal, SessionTable};
use mcp_affinity::{BackendId, TenantId};

const ALICE: (&str, &str) = ("authorization", "Bearer alice");
const MALLORY: (&str, &str) = ("authorization", "Bearer mallory");

fn endpoint(id: &str) -> String {
    format!("event: endpoint\ndata: /messages/?session_id={id}\n\n")
}

/// Opens a legacy SSE stream (left open) on whichever backend placement gives, answered with
/// an endpoint event minting `id`.
fn open_sse(
    router: &Router,
    id: &str,
    headers: &[(&str, &str)],
    now: std::time::Instant,
) -> mcp_affinity::router::Exchange {
    let mut stream = forward(router.route(&get("/sse", headers), now));
    let _ = respond(
        router,
        &mut stream,
        200,
        &[SSE],
        &[endpoint(id).as_bytes()],
        now,
    );
    stream
}

/// Opens legacy SSE streams (minting `id`) until one lands on `target`; ends the others.
fn open_sse_on(
    router: &Router,
    target: BackendId,
    id: &str,
    now: std::time::Instant,
) -> mcp_affinity::router::Exchange {
    for _ in 0..64 {
        let mut stream = forward(router.route(&get("/sse", &[]), now));
        if stream.backend() == target {
            let _ = respond(
                router,
                &mut stream,
                200,
                &[SSE],
                &[endpoint(id).as_bytes()],
                now,
            );
            return stream;
        }
        router.on_exchange_end(stream, End::Aborted, now);
    }
    panic!("no stream placed on {target}");
}

// --- 1. Principal bypass: query parameters read raw (percent-encoded names and values) -------
/// Severity: PRINCIPAL BYPASS (Python and Go SDK backends).
///
/// The router finds the legacy SSE session parameter by comparing raw query parameter names
/// with `sessionId` / `session_id` / `sessionid`. Every backend decodes names first: Starlette
/// (Python SDK) reads `session%5Fid` as `session_id` and keeps the *last* value of a repeated
/// name; Go's `url.Query().Get("sessionid")` decodes `session%69d` and returns the *first*.
///
/// - `/messages/?session_id=<mine>&session%5Fid=<alice's>`: the router sees one session
///   (Mallory's own) and pins the request, principal check passed, to its owner; Starlette
///   serves it as Alice's session (both sessions on one replica: always so with one replica,
///   and Mallory can open sessions until one lands there).
/// - Go POSTs messages to the SSE path: `POST /sse?session%69d=<alice's>` carries no session
///   the router can see, so it is placed as a Streamable `initialize`: with the affinity
///   cookie, on the backend Mallory names; Go serves it as Alice's session.
///
/// - Values are read raw too: `sessionId=alice%2Dsse` is looked up as `alice%2Dsse`, found
///   nowhere, and passes the carried-key check; on a path the router does not route by but a
///   backend reads as the message path (see the last case) the backend decodes it to
///   Alice's id. (On the message path itself the raw id is unknown: a 404, which is safe.)
///
/// Expected: a request whose query names a session parameter in any spelling a backend
/// decodes is checked against it, and one naming two sessions is refused as ambiguous
/// (`Reason::AmbiguousKey`), as `sse_session_param` documents. Actual: forwarded.
#[test]
fn a_percent_encoded_session_parameter_name_is_checked_against_the_principal() {
    let router = Router::builder()
        .principal(bearer)
        .affinity_cookie("aff")
        .build();
    let owner = router.add_backend(TenantId::DEFAULT, "only", 1).unwrap();
    let now = Clock::new().now();
    let alice = open_sse(&router, "alice-sse", &[ALICE], now);
    let mallory = open_sse(&router, "mallory-sse", &[MALLORY], now);
    assert_eq!((alice.backend(), mallory.backend()), (owner, owner));
    let cookie = format!("aff={}.{}", owner.slot(), owner.generation());

    let mut forwarded = Vec::new();
    for (method, uri) in [
        (
            "POST",
            "/messages/?session_id=mallory-sse&session%5Fid=alice-sse",
        ),
        (
            "POST",
            "/messages/?session_id=mallory-sse&session%5fid=alice-sse",
        ),
        (
            "POST",
            "/messages/?sessionId=mallory-sse&session%49d=alice-sse",
        ),
        ("POST", "/sse?session%69d=alice-sse"),
        ("POST", "/sse?%73essionid=alice-sse"),
        // WHATWG URL parsing (`new URL(req.url, base)`, as this project's own TypeScript e2e
        // replica routes; Deno, Bun, Workers) reads `\` as `/` and resolves the dot segment:
        // `/messages`, session `alice-sse`. The router sees neither the path nor the id.
        ("POST", "/x\\..\\messages?sessionId=alice%2Dsse"),
    ] {
        let request = req(
            method.parse().unwrap(),
            uri,
            &[MALLORY, ("cookie", &cookie)],
        );
        if let Routed::Forward(ex) = router.route(&request, now) {
            forwarded.push(format!(
                "{method} {uri} -> {} ({:?})",
                ex.backend(),
                ex.how()
            ));
            router.on_exchange_end(ex, End::Completed, now);
        }
    }
    router.on_exchange_end(alice, End::Completed, now);
    router.on_exchange_end(mallory, End::Completed, now);
    assert!(
        forwarded.is_empty(),
        "requests carrying Alice's session reached its owner for Mallory:\n{}",
        forwarded.join("\n")
    );
}

// --- 2. Principal bypass: the Python SDK's spellings of a legacy SSE session -----------------
/// Severity: PRINCIPAL BYPASS against the Python SDK's legacy SSE transport, when
/// authentication happens at the proxy (the deployment the router's principal binding is
/// for: the SDK's own owner check compares Starlette's `scope["user"]`, which is then unset
/// for everyone).
///
/// Two readings the router does not share with the Python SDK:
/// - the SDK mounts its message handler with `Mount("/messages/", app=...)`
///   (`mcp/server/sse.py`), a *prefix*: `/messages/anything` is the message endpoint; the
///   router only takes `/messages` and `/messages/` for it;
/// - the SDK parses the id with `UUID(hex=...)`, which accepts upper case, hyphens anywhere,
///   braces and a `urn:uuid:` prefix: `FD15FF9F…` is the session `fd15ff9f…`.
///
/// On such a path the router only *checks* a carried key, and only if it knows the exact
/// spelling: an unknown spelling passes as "no key", and the request is placed (the cookie
/// sends it to the owner; in a one-replica fleet it always lands there).
///
/// Expected: a session parameter on any path a backend may serve as the message endpoint is
/// routed by (unknown: 404) or refused; more generally, a carried key the router does not
/// know is not proof of "no key". Actual: forwarded to the owner for Mallory.
#[test]
fn a_python_spelling_of_another_principal_s_sse_session_is_not_forwarded() {
    let router = Router::builder()
        .principal(bearer)
        .affinity_cookie("aff")
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let id = "fd15ff9f769d4acd9a944aa18b923c61";
    let alice = open_sse(&router, id, &[ALICE], now);
    let owner = alice.backend();
    let cookie = format!("aff={}.{}", owner.slot(), owner.generation());
    let mut forwarded = Vec::new();
    for uri in [
        "/messages/x?session_id=FD15FF9F769D4ACD9A944AA18B923C61",
        "/messages/x?session_id={fd15ff9f-769d-4acd-9a94-4aa18b923c61}",
        "/messages/x?session_id=urn:uuid:fd15ff9f769d4acd9a944aa18b923c61",
        "/messages/x?session_id=fd15ff9f769d4acd9a944aa18b923c61",
    ] {
        match router.route(&post(uri, &[MALLORY, ("cookie", &cookie)]), now) {
            Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
            Routed::Forward(ex) => {
                forwarded.push(format!("{uri} -> {} ({:?})", ex.backend(), ex.how()));
                router.on_exchange_end(ex, End::Completed, now);
            }
            Routed::Reject(_) => {}
        }
    }
    router.on_exchange_end(alice, End::Completed, now);
    assert!(
        forwarded.is_empty(),
        "spellings of Alice's session (owner {owner}) forwarded for Mallory:\n{}",
        forwarded.join("\n")
    );
}

// --- 3. Principal bypass: a task key the router does not route by is not checked -------------
/// Severity: PRINCIPAL BYPASS, backend-dependent (the same class as #12 item 5, for task keys).
///
/// #12 made every *legacy session* key a request carries checked against the principal
/// whatever its path or version, "since the backend may read the request as one of that
/// session's". A 2026-07-28 task key (`Mcp-Method: tasks/get|update|cancel` + `Mcp-Name`) got
/// no such treatment: it is read only on a path the router takes for an endpoint and under a
/// version it reads as modern. So a `tasks/get` for Alice's task is forwarded for Mallory,
/// unchecked, to the task's owner (via the affinity cookie, or by placement in a small fleet):
///
/// - with no `MCP-Protocol-Version`, or a legacy one (a backend serving both eras, as the
///   Python SDK does, may still serve `tasks/get`; absent means "assume 2025-03-26" only for
///   backends that do not look at the method);
/// - on `/x\..\mcp`, which
///   the router, with `mcp_paths(["/mcp"])`, takes for a non-endpoint path: backslashes are
///   not normalized at all, while WHATWG URL parsing (`new URL(req.url, base)`, which this
///   project's own TypeScript e2e replica routes by; Deno, Bun, Workers) reads `/x\..\mcp`
///   as `/mcp`.
///
/// Expected: `Reason::WrongPrincipal(KeyKind::Task)` (404 "Task not found"), as for the
/// same request on `/mcp` with a modern version. Actual: forwarded.
#[cfg(feature = "tasks")]
#[test]
fn a_task_key_is_checked_against_the_principal_on_every_path_and_version() {
    let router = Router::builder()
        .principal(bearer)
        .affinity_cookie("aff")
        .mcp_paths(["/mcp"])
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let call = post(
        "/mcp",
        &[
            ALICE,
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-name", "job"),
        ],
    );
    let task = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"alice-task"}}"#;
    let (owner, _) = exchange(&router, &call, 200, &[JSON], &[task], now);
    let cookie = format!("aff={}.{}", owner.slot(), owner.generation());
    let poll = |path: &str, version: Option<&str>| {
        let mut headers = vec![
            MALLORY,
            ("mcp-method", "tasks/get"),
            ("mcp-name", "alice-task"),
            ("cookie", cookie.as_str()),
        ];
        if let Some(v) = version {
            headers.push(("mcp-protocol-version", v));
        }
        post(path, &headers)
    };
    // The router does check it in the canonical spelling.
    assert_eq!(
        rejected(router.route(&poll("/mcp", Some("2026-07-28")), now)).reason(),
        Reason::WrongPrincipal(KeyKind::Task)
    );
    let mut forwarded = Vec::new();
    for (path, version) in [
        ("/mcp", None),
        ("/mcp", Some("2025-11-25")),
        ("/x\\..\\mcp", Some("2026-07-28")),
    ] {
        if let Routed::Forward(ex) = router.route(&poll(path, version), now) {
            forwarded.push(format!(
                "{path} {version:?} -> {} ({:?})",
                ex.backend(),
                ex.how()
            ));
            router.on_exchange_end(ex, End::Completed, now);
        }
    }
    assert!(
        forwarded.is_empty(),
        "tasks/get for Alice's task reached its owner for Mallory:\n{}",
        forwarded.join("\n")
    );
}

// --- 4. Misroute: a contested legacy SSE id is released by a stream that never counted on it ---
/// Severity: MISROUTE (cross-client), needs backends that mint colliding ids (sequential ids,
/// the case #12 item 3 was about).
///
/// A legacy SSE id "7" is minted by A, whose backend is then removed (graceful removal: A's
/// process and its stream live on). B mints "7" (the router hands A's dead binding to B), C
/// mints "7" too: the id is contested, and counts the streams of B and C. When A's old stream
/// ends, `on_exchange_end` finds the binding no longer A's and releases a stream of the
/// *contest* instead, although A's stream was never counted there. When B's stream ends, the
/// contest is lifted while C's stream, which carries "7", still lives; the next backend to
/// mint "7" gets it outright, and C's client's messages go to that backend's session.
///
/// Expected: while C's stream lives, "7" reaches no backend. Actual: C's client is pinned to
/// B's new session.
#[test]
fn a_contested_sse_id_is_not_released_by_a_stream_of_a_removed_owner() {
    let router = Router::builder().removal_grace(Duration::ZERO).build();
    let [a, b, c] = ["a", "b", "c"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let stream_a = open_sse_on(&router, a, "7", now);
    router.remove_backend(a, now).unwrap();
    let stream_b = open_sse_on(&router, b, "7", now);
    let stream_c = open_sse_on(&router, c, "7", now);
    assert_eq!(router.metrics().key_conflicts, 1, "B and C both claim 7");
    let message = post("/messages/?session_id=7", &[]);
    assert!(matches!(router.route(&message, now), Routed::Reject(_)));

    router.on_exchange_end(stream_a, End::Completed, now); // A's process ends its stream late
    router.on_exchange_end(stream_b, End::Completed, now);
    // C's stream still carries "7". B mints "7" again for a new client.
    let stream_b2 = open_sse_on(&router, b, "7", now);
    match router.route(&message, now) {
        Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
        Routed::Reject(_) => {}
        Routed::Forward(ex) => panic!(
            "C's client (stream still open) was pinned to {} ({:?}): a contested id reached a backend",
            ex.backend(),
            ex.how()
        ),
    }
    router.on_exchange_end(stream_b2, End::Completed, now);
    router.on_exchange_end(stream_c, End::Completed, now);
}

// --- 5. Wrong status: a crashed incarnation's stream releases the next incarnation's session ---
/// Severity: WRONG STATUS (a live session answered 404), and the door to the misroute above;
/// same root cause as the test above (a stream's release is not tied to the binding it was
/// counted on). Needs a backend whose ids restart after a crash (sequential ids) and a
/// stream whose end the embedder learns late (a half-open connection after a host crash
/// lasts until keepalive gives up: minutes).
///
/// A down backend that answers again keeps its `BackendId` (a "new incarnation" with the same
/// id). The old incarnation's SSE stream, still held by the embedder, ends after the new
/// incarnation minted the same id for a new client: `release_stream(key, A)` matches the
/// owner and takes the new client's stream count to zero, removing its binding while its
/// stream lives.
///
/// Expected: the new client's messages reach A. Actual: 404 (unknown session), and the id
/// is free for any other backend to take.
#[test]
fn a_stream_of_a_crashed_incarnation_does_not_release_the_next_incarnation_s_session() {
    let router = Router::builder().health_thresholds(1, 1).build();
    let [a, _b] = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let old = open_sse_on(&router, a, "1", now);
    router
        .report_health(a, mcp_affinity::router::Probe::Refused, now)
        .unwrap();
    router
        .report_health(a, mcp_affinity::router::Probe::Up, now)
        .unwrap();
    // The restarted process counts from 1 again.
    let new = open_sse_on(&router, a, "1", now);
    // The embedder learns only now that the old connection is dead.
    router.on_exchange_end(old, End::Aborted, now);
    let message = post("/messages/?session_id=1", &[]);
    match router.route(&message, now) {
        Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
        Routed::Forward(ex) => {
            assert_eq!(ex.backend(), a);
            router.on_exchange_end(ex, End::Completed, now);
        }
        Routed::Reject(r) => panic!("the new incarnation's live session was released: {r}"),
    }
    router.on_exchange_end(new, End::Completed, now);
}

// --- 6. A drain deadline that passed is undone by a later drain or undrain -------------------
/// Severity: DOC MISMATCH, and a MISROUTE with colliding ids (operator sequence).
///
/// `drain_backend` says keys still on the backend at the deadline are revoked. Revocation is
/// computed from the *current* deadline until `maintain` happens to run and set `revoked`:
/// a second `drain_backend` with a later deadline (an operator extending the drain), or an
/// `undrain_backend`, made before that, brings the backend and its unpresented keys back to
/// life, while clients that presented theirs in between were told 404 and lost them. What a
/// client gets depends on the timing of upkeep.
///
/// Worse, while the backend counted as revoked, another backend minting one of its legacy SSE
/// ids took it over (`learn` hands a dead owner's id to the new minter). After the revival,
/// the first backend's stream still carries the id and its client's messages are pinned to
/// the other backend's session.
///
/// Expected: once a deadline passed, its revocation stands (`revoked` set by `owner_status`
/// or by the drain update itself), whatever the operator or upkeep does next. Actual: keys
/// come back, and a stream's id routes elsewhere.
#[test]
fn a_drain_deadline_that_passed_stays_passed_whatever_comes_next() {
    let router = Router::builder().build();
    let [a, b] = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let mut clock = Clock::new();
    let now = clock.now();
    let stream = open_sse_on(&router, a, "9", now);
    let alice = (0..64)
        .map(|i| format!("alice-{i}"))
        .find(|id| initialize(&router, id, now) == a)
        .unwrap();
    let bob = (0..64)
        .map(|i| format!("bob-{i}"))
        .find(|id| initialize(&router, id, now) == a)
        .unwrap();
    router
        .drain_backend(a, Some(now + Duration::from_secs(1)), now)
        .unwrap();
    let now = clock.advance(Duration::from_secs(2));
    // The deadline passed: Alice is told her session is gone.
    assert_eq!(
        route_session(&router, &alice, now).unwrap_err().reason(),
        Reason::OwnerRevoked(KeyKind::Session)
    );
    // Meanwhile B mints the same legacy SSE id as A's live stream.
    let other = open_sse_on(&router, b, "9", now);
    // The operator extends the drain before any `maintain` ran.
    router
        .drain_backend(a, Some(now + Duration::from_secs(600)), now)
        .unwrap();
    let mut failures = Vec::new();
    if let Ok(owner) = route_session(&router, &bob, now) {
        failures.push(format!(
            "Bob's revoked session routes again to {owner} (Alice's got 404)"
        ));
    }
    if let Routed::Forward(ex) = router.route(&post("/messages/?session_id=9", &[]), now) {
        failures.push(format!(
            "the id of A's live stream is pinned to {}",
            ex.backend()
        ));
        router.on_exchange_end(ex, End::Completed, now);
    }
    router.on_exchange_end(stream, End::Completed, now);
    router.on_exchange_end(other, End::Completed, now);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- 7. Cross-tenant misroute: an exchange in flight across a generation wrap ----------------
/// Severity: MISROUTE across tenants (contrived: 65,536 removals and re-adds of one slot while
/// one answer is in flight; an autoscaler thrashing one slot, or an operator API a tenant can
/// drive, gets there in minutes).
///
/// #12's fix purges the keys an old generation left before its id is reused, but an exchange
/// routed to the old generation still carries that `BackendId`. When its answer arrives after
/// the wrap, `learn` asks only whether the id is live (it is: it now names tenant 2's
/// backend) and binds tenant 1's new session to it. Tenant 1's client is then pinned to
/// tenant 2's backend. The same stale exchange reporting a refused connect declares tenant
/// 2's backend down and throws away its sessions.
///
/// Expected: a key is only bound to a backend of its own tenant, and an exchange only speaks
/// for the incarnation it was routed to. Actual: both happen.
#[test]
fn an_answer_in_flight_across_a_generation_wrap_binds_nothing_in_another_tenant() {
    let router = Router::builder()
        .tenant(|req: &http::request::Parts| {
            let n = req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?;
            Some(TenantId::new(n))
        })
        .build();
    let now = Clock::new().now();
    let victim = router.add_backend(TenantId::new(1), "t1", 1).unwrap();
    let init = forward(router.route(&post("/mcp", &[("x-tenant", "1")]), now));
    let late_failure = forward(router.route(&post("/mcp", &[("x-tenant", "1")]), now));
    let mut init = init;
    assert_eq!(init.backend(), victim);
    router.remove_backend(victim, now).unwrap();
    let mut id = router.add_backend(TenantId::new(2), "t2", 1).unwrap();
    while id != victim {
        router.remove_backend(id, now).unwrap();
        id = router.add_backend(TenantId::new(2), "t2", 1).unwrap();
    }
    // Tenant 2's backend holds a session of its own.
    let (t2_owner, _) = exchange(
        &router,
        &post("/mcp", &[("x-tenant", "2")]),
        200,
        &[("mcp-session-id", "t2-session")],
        &[],
        now,
    );
    assert_eq!(t2_owner, victim);

    let mut failures = Vec::new();
    // The old answer arrives.
    let _ = respond(
        &router,
        &mut init,
        200,
        &[("mcp-session-id", "t1-session")],
        &[],
        now,
    );
    router.on_exchange_end(init, End::Completed, now);
    let t1 = post(
        "/mcp",
        &[("x-tenant", "1"), ("mcp-session-id", "t1-session"), LEGACY],
    );
    if let Routed::Forward(ex) = router.route(&t1, now) {
        failures.push(format!(
            "tenant 1's session pinned to {} (tenant 2's backend)",
            ex.backend()
        ));
        router.on_exchange_end(ex, End::Completed, now);
    }
    // The other old exchange reports a refused connect.
    let _ = router.on_undelivered(late_failure, Undelivered::Refused, now);
    let t2 = post(
        "/mcp",
        &[("x-tenant", "2"), ("mcp-session-id", "t2-session"), LEGACY],
    );
    if let Routed::Reject(r) = router.route(&t2, now) {
        failures.push(format!(
            "tenant 2's live session rejected after tenant 1's stale report: {r}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- 8. Denial of service: a 404 the owner gives a stranger ends the owner's session ---------
/// Severity: WRONG STATUS / DENIAL OF SERVICE, in deployments that leave principal binding to
/// the backend (the router's `principal` extractor off), which DESIGN.md §2 describes as the
/// Python SDK's own behaviour: "Python binds a session to its principal (404 on mismatch)".
///
/// The router forgets a session when its owner answers a keyed request 404 (or a `DELETE`
/// 404), and, for a legacy SSE session, even while its stream lives. A backend that binds
/// sessions to their principal answers a stranger's request for a session 404 *without
/// ending the session*. So anyone who learns a session id (a log line, a shared trace) but
/// cannot use it, because the backend checks credentials, can still make the router forget
/// it with one request: the rightful client's next request is answered 404 by the router
/// (start over), though its session is alive on its backend. The backend's protection turns
/// into a kill switch.
///
/// Expected: a 404 to a request from a principal other than the one the key was learned
/// under (or, with no principal known to the router, any 404 that the rightful client did
/// not get) does not end the binding; the cost of keeping a binding the backend really
/// dropped is one more 404 from the backend, per principle 10. Actual: Alice's live sessions
/// are forgotten.
#[test]
fn a_404_the_owner_gives_another_client_does_not_end_the_session() {
    let router = Router::builder().build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let owner = initialize(&router, "alice-s", now);
    let alice_sse = open_sse(&router, "alice-sse", &[ALICE], now);
    // Mallory, who read both ids somewhere, tries them; the backend checks her credential and
    // answers 404 "Could not find session", as the Python SDK does.
    for request in [
        post("/mcp", &[MALLORY, ("mcp-session-id", "alice-s"), LEGACY]),
        post("/messages/?session_id=alice-sse", &[MALLORY]),
    ] {
        let _ = exchange(&router, &request, 404, &[], &[], now);
    }
    let mut lost = Vec::new();
    for request in [
        post("/mcp", &[ALICE, ("mcp-session-id", "alice-s"), LEGACY]),
        post("/messages/?session_id=alice-sse", &[ALICE]),
    ] {
        match router.route(&request, now) {
            Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
            Routed::Forward(ex) => router.on_exchange_end(ex, End::Completed, now),
            Routed::Reject(r) => lost.push(format!("{}: {r}", request.uri)),
        }
    }
    let _ = owner;
    router.on_exchange_end(alice_sse, End::Completed, now);
    assert!(
        lost.is_empty(),
        "Alice's live sessions were forgotten:\n{}",
        lost.join("\n")
    );
}

// --- 9. Resource exhaustion: client-chosen operator keys evict backend-minted sessions -------
/// Severity: RESOURCE EXHAUSTION (denial of service against other principals' sessions).
///
/// An operator key is chosen by the client and bound on any 2xx answer; each distinct value
/// is a new table entry, and a cheap one (a stateless 2026-07-28 call leaves nothing on the
/// backend, unlike an `initialize`). Nothing bounds how many one principal holds: once the
/// table (or the tenant) is full, each new key evicts the least recently used idle entry of a
/// small sample, which is whichever real session has been quiet the longest. One client
/// sending requests with fresh `Mcp-Param-*` values thus turns other clients' live sessions
/// into 404s ("start over"), at the price of one request each. Principle 1 says learning
/// only from backends "blocks table poisoning"; operator keys reopen it for capacity.
///
/// Expected: client-chosen keys cannot displace backend-minted session keys (a quota per
/// principal, a separate bound for operator keys, or evicting operator keys first).
/// Actual: Alice's session, used five seconds ago, is evicted.
#[test]
fn operator_keys_of_one_client_do_not_evict_another_client_s_session() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_capacity(64).with_shards(1))
        .principal(bearer)
        .operator_key(key_fn(workspace))
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let mut clock = Clock::new();
    let (owner, _) = exchange(
        &router,
        &post("/mcp", &[ALICE]),
        200,
        &[("mcp-session-id", "alice-s")],
        &[],
        clock.now(),
    );
    let now = clock.advance(Duration::from_secs(5));
    for i in 0..200 {
        let ws = format!("w{i}");
        let call = post(
            "/mcp",
            &[
                MALLORY,
                MODERN,
                ("mcp-method", "tools/list"),
                ("mcp-param-workspace", &ws),
            ],
        );
        let _ = exchange(&router, &call, 200, &[JSON], &[], now);
    }
    let request = post("/mcp", &[ALICE, ("mcp-session-id", "alice-s"), LEGACY]);
    match router.route(&request, now) {
        Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
        Routed::Forward(ex) => {
            assert_eq!(ex.backend(), owner);
            router.on_exchange_end(ex, End::Completed, now);
        }
        Routed::Reject(r) => panic!(
            "Alice's live session evicted by Mallory's operator keys: {r} (evicted: {})",
            router.metrics().keys_evicted
        ),
    }
}

// --- 10. Lock contention: a crashed backend's keys are purged under the fleet's write lock ---
/// A table that, when asked to drop a backend's keys, first checks whether a placement can
/// go on meanwhile (from another thread, within a second).
struct Gate {
    inner: mcp_affinity::table::MemoryTable,
    probe: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    blocked: std::sync::atomic::AtomicUsize,
}

impl SessionTable for Gate {
    fn get(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        now: std::time::Instant,
    ) -> Option<mcp_affinity::table::Entry> {
        self.inner.get(key, now)
    }
    fn insert(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: std::time::Instant,
    ) -> Result<mcp_affinity::table::Insert, mcp_affinity::table::InsertError> {
        self.inner.insert(key, owner, principal, now)
    }
    fn insert_streaming(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        owner: BackendId,
        principal: Option<Principal>,
        now: std::time::Instant,
    ) -> Result<mcp_affinity::table::Insert, mcp_affinity::table::InsertError> {
        self.inner.insert_streaming(key, owner, principal, now)
    }
    fn set_owner(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        expected: BackendId,
        new: BackendId,
        now: std::time::Instant,
    ) -> Result<mcp_affinity::table::Entry, mcp_affinity::table::SetOwnerError> {
        self.inner.set_owner(key, expected, new, now)
    }
    fn remove(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        owner: Option<BackendId>,
    ) -> Option<mcp_affinity::table::Entry> {
        self.inner.remove(key, owner)
    }
    fn open_stream(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        now: std::time::Instant,
    ) -> Option<mcp_affinity::table::Entry> {
        self.inner.open_stream(key, now)
    }
    fn close_stream(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        now: std::time::Instant,
    ) -> Option<mcp_affinity::table::Entry> {
        self.inner.close_stream(key, now)
    }
    fn release_stream(
        &self,
        key: &mcp_affinity::table::Key<'_>,
        owner: BackendId,
        now: std::time::Instant,
    ) -> Option<mcp_affinity::table::Entry> {
        self.inner.release_stream(key, owner, now)
    }
    fn remove_owner(&self, owner: BackendId) -> usize {
        if let Some(probe) = self.probe.get() {
            if !probe() {
                self.blocked
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.inner.remove_owner(owner)
    }
    fn keys_of(&self, owner: BackendId, max: usize) -> Vec<mcp_affinity::table::OwnedKey> {
        self.inner.keys_of(owner, max)
    }
    fn evict_idle(
        &self,
        now: std::time::Instant,
        max_work: usize,
    ) -> mcp_affinity::table::Eviction {
        self.inner.evict_idle(now, max_work)
    }
    fn count_owner(&self, owner: BackendId) -> usize {
        self.inner.count_owner(owner)
    }
    fn count_tenant(&self, tenant: TenantId) -> usize {
        self.inner.count_tenant(tenant)
    }
    fn occupancy(&self) -> mcp_affinity::table::Occupancy {
        self.inner.occupancy()
    }
    fn idle_ttl(&self) -> Option<Duration> {
        self.inner.idle_ttl()
    }
}

/// Severity: RESOURCE EXHAUSTION / LATENCY (lock contention at the worst moment).
///
/// When a backend goes down, `maintain` (via `Fleet::purge_down`) and the health report that
/// brings it back (`Fleet::report`'s purge) drop every key it owned *while holding the fleet's
/// write lock*, so that it cannot learn keys meanwhile. `SessionTable` is a public trait, so
/// that is the embedder's code running under the lock (a shared-store table would do I/O
/// there), against the module's "no caller code ever runs under that lock". The purge is
/// O(keys of the backend)
/// (each removal takes a shard lock and two counter maps): a replica with a few hundred
/// thousand sessions holds it for a long time (release build: 16 ms for 200,000 keys, 90 ms
/// for 1,000,000; this test prints the debug figure), and every placement
/// (each `initialize`, each legacy SSE connect, every 2026-07-28 call, every retry
/// `on_undelivered` makes after the crash) waits for it. The module docs promise that the
/// lock is "read-mostly" and that nothing slow runs under it.
///
/// Expected: placement goes on while a crashed backend's keys are purged (purge outside the
/// lock: the `DOWN` flag already keeps `learn` from binding keys to it, and the generation or
/// an incarnation counter can tell a new incarnation's keys from the old ones). Actual: no
/// placement completes during the purge.
#[test]
fn placement_goes_on_while_a_crashed_backend_s_keys_are_purged() {
    use std::sync::Arc;
    let gate = Gate {
        inner: mcp_affinity::table::MemoryTable::new(),
        probe: std::sync::OnceLock::new(),
        blocked: std::sync::atomic::AtomicUsize::new(0),
    };
    let router = Arc::new(
        Router::builder()
            .table(gate)
            .health_thresholds(1, 1)
            .build(),
    );
    let crashed = router.add_backend(TenantId::DEFAULT, "crashed", 1).unwrap();
    let _healthy = router.add_backend(TenantId::DEFAULT, "healthy", 1).unwrap();
    let now = Clock::new().now();
    // Its sessions, straight into the table (as if learned).
    let n = 200_000;
    for i in 0..n {
        let id = format!("{i:032x}");
        let key = mcp_affinity::table::Key::new(TenantId::DEFAULT, KeyKind::Session, id.as_bytes())
            .unwrap();
        let _ = router.table().insert(&key, crashed, None, now);
    }
    let started = std::time::Instant::now();
    let removed = router.table().inner.remove_owner(BackendId::new(40, 0)); // warm, no-op
    assert_eq!(removed, 0);
    {
        // Measure what one purge costs, on a copy of the same size.
        let table = mcp_affinity::table::MemoryTable::new();
        for i in 0..n {
            let id = format!("{i:032x}");
            let key =
                mcp_affinity::table::Key::new(TenantId::DEFAULT, KeyKind::Session, id.as_bytes())
                    .unwrap();
            let _ = table.insert(&key, crashed, None, now);
        }
        let t = std::time::Instant::now();
        assert_eq!(table.remove_owner(crashed), n);
        eprintln!("purging {n} keys took {:?} (this build)", t.elapsed());
    }
    let _ = started;
    let weak = Arc::downgrade(&router);
    let _ = router.table().probe.set(Box::new(move || {
        let router = weak.upgrade().expect("router");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let now = Clock::new().now();
            if let Routed::Forward(ex) = router.route(&post("/mcp", &[]), now) {
                router.on_exchange_end(ex, End::Completed, now);
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(2)).is_ok()
    }));
    // The backend crashes; upkeep purges its keys.
    router
        .report_health(crashed, mcp_affinity::router::Probe::Refused, now)
        .unwrap();
    let done = router.maintain(now, 0);
    assert_eq!(done.purged, n);
    assert_eq!(
        router
            .table()
            .blocked
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "placements wait for the whole purge of a crashed backend's keys (fleet write lock held)"
    );
}

// --- 11. The affinity cookie overrides the embedder's veto -----------------------------------
/// Severity: DOC MISMATCH / RESOURCE (overload protection bypassed by a client).
///
/// `cookie_backend`'s docs: "A client can name any ready backend of its tenant this way,
/// which is no more than placement could have given it." But a cookie-hinted request is
/// forwarded as `Pinned` *before* placement, so it is never offered to `route_with`'s
/// `accept`, the hook an embedder uses to keep requests off a backend whose connection pool
/// is exhausted. Placement could not have given that backend; the cookie does. Any client
/// can aim every keyless request (each 2026-07-28 call, each `initialize`) at the backend
/// the proxy is shielding, by setting `aff=<slot>.<generation>` (both are small integers, and
/// the `Set-Cookie` of any placed conversation shows the format).
///
/// Expected: a cookie hint is offered to `accept` like any placement choice (a vetoed hint is
/// ignored). Actual: the vetoed backend gets the request.
#[test]
fn a_cookie_hint_is_offered_to_the_veto_like_any_placement() {
    let router = Router::builder().affinity_cookie("aff").build();
    let [shielded, _other] =
        ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let cookie = format!("aff={}.{}", shielded.slot(), shielded.generation());
    let mut offered = Vec::new();
    for request in [
        post("/mcp", &[("cookie", &cookie)]),
        post(
            "/mcp",
            &[("cookie", &cookie), MODERN, ("mcp-method", "tools/list")],
        ),
    ] {
        let routed = router.route_with(&request, now, |b| {
            offered.push(b);
            b != shielded
        });
        let ex = forward(routed);
        assert_ne!(
            ex.backend(),
            shielded,
            "the cookie sent {:?} to the backend the embedder vetoes (offered: {offered:?})",
            request.headers.get("mcp-method")
        );
        router.on_exchange_end(ex, End::Completed, now);
    }
}

/// (Third review.) A vetoed cookie hint was offered again by the placement that followed, and
/// its veto counted twice: the veto may count or reserve, so each backend is offered once.
#[test]
fn a_vetoed_cookie_hint_is_offered_once() {
    let router = Router::builder().affinity_cookie("aff").build();
    let backends = ["a", "b", "c"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    for hinted in backends {
        let cookie = format!("aff={}.{}", hinted.slot(), hinted.generation());
        let mut offered = Vec::new();
        let vetoes = router.metrics().vetoes;
        let routed = router.route_with(&post("/mcp", &[("cookie", &cookie)]), now, |b| {
            offered.push(b);
            false
        });
        assert_eq!(rejected(routed).reason(), Reason::NoReadyBackend);
        assert_eq!(offered[0], hinted, "the hint is offered first");
        let mut once = offered.clone();
        once.sort();
        once.dedup();
        assert_eq!(once.len(), offered.len(), "offered {offered:?}");
        assert_eq!(
            offered.len(),
            3,
            "every ready backend is offered: {offered:?}"
        );
        assert_eq!(router.metrics().vetoes - vetoes, 3);
    }
}

// --- 12. A pinned operator key moves on a connect timeout ------------------------------------
/// Severity: DOC MISMATCH / MISROUTE (state split for operator keys).
///
/// `KeyExtractor`'s docs: later requests with an operator key "are pinned there ... When the
/// owner is removed, revoked or down, the next request with the key binds it afresh".
/// Principle 9: "a pinned one never moves". `on_undelivered` treats every operator-keyed
/// exchange as a placement, whatever the reason: a connect that merely *timed out* (the
/// owner may be alive, overloaded, holding the workspace's state) drops the binding and
/// places the request on another backend, where the key is bound from then on. Half the
/// workspace's conversation now lives on each backend.
///
/// Expected: a timed-out pinned operator request is answered `OwnerUnreachable` (503 +
/// `Retry-After`) and keeps its binding, as a pinned session request does; only a refused
/// connect (down) rebinds. Actual: moved and rebound.
#[test]
fn a_pinned_operator_key_does_not_move_when_its_owner_is_only_slow() {
    let router = Router::builder().operator_key(key_fn(workspace)).build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let now = Clock::new().now();
    let call = post(
        "/mcp",
        &[
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-param-workspace", "acme"),
        ],
    );
    let (owner, _) = exchange(&router, &call, 200, &[JSON], &[], now);
    let ex = forward(router.route(&call, now));
    assert_eq!(
        (ex.how(), ex.backend()),
        (mcp_affinity::router::How::Pinned, owner)
    );
    match router.on_undelivered(ex, Undelivered::TimedOut, now) {
        Routed::Lookup(lookup) => panic!("no store: {lookup:?}"),
        Routed::Reject(r) => assert_eq!(r.status(), http::StatusCode::SERVICE_UNAVAILABLE),
        Routed::Forward(mut moved) => {
            let _ = respond(&router, &mut moved, 200, &[JSON], &[], now);
            let elsewhere = moved.backend();
            router.on_exchange_end(moved, End::Completed, now);
            let next = forward(router.route(&call, now));
            let rebound = next.backend();
            router.on_exchange_end(next, End::Completed, now);
            panic!(
                "a timeout moved the pinned operator key from {owner} to {elsewhere}; it is now bound to {rebound}"
            );
        }
    }
}

// --- 13. Leak (embedder misuse): on_undelivered after the response head ----------------------
/// Severity: RESOURCE LEAK, only under embedder misuse (calling `on_undelivered` for an
/// exchange whose response head was already seen, e.g. an embedder that treats a failed body
/// as "not delivered"). The API allows it and gives no way back.
///
/// `on_undelivered` takes the exchange by value and re-places it (or rejects it) carrying
/// whatever the response made it hold: a legacy SSE binding counted on the first backend, or
/// an open `GET` stream of a session. Re-placed, the exchange later releases the binding
/// against the *new* backend (a no-op); rejected, it is dropped, and the embedder has no
/// exchange left to end. Either way the entry keeps an open stream forever: it never
/// expires, and stays bound (and routed) while its backend lives.
///
/// Expected: `on_undelivered` releases what the exchange holds (or refuses an exchange that
/// was answered). Actual: entries with a stream count that can never reach zero.
#[test]
fn on_undelivered_after_the_response_head_leaves_no_stream_open_forever() {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_secs(60))))
        .build();
    let _ = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let mut clock = Clock::new();
    let now = clock.now();
    // A legacy SSE stream, answered, then reported undelivered: re-placed.
    let stream = open_sse(&router, "leaked-sse", &[], now);
    let again = forward(router.on_undelivered(stream, Undelivered::Failed, now));
    router.on_exchange_end(again, End::Completed, now);
    // A Streamable session's GET stream, answered, then reported undelivered: rejected.
    initialize(&router, "leaked-session", now);
    let mut get_stream =
        forward(router.route(&get("/mcp", &[("mcp-session-id", "leaked-session")]), now));
    let _ = respond(&router, &mut get_stream, 200, &[SSE], &[], now);
    let _ = rejected(router.on_undelivered(get_stream, Undelivered::TimedOut, now));

    let later = clock.advance(Duration::from_secs(3600));
    let _ = router.maintain(later, 1_000_000);
    let left: Vec<_> = router
        .backends()
        .iter()
        .flat_map(|b| router.keys_of(b.id, 10))
        .map(|k| format!("{k:?}"))
        .collect();
    assert!(left.is_empty(), "entries that can never expire: {left:?}");
}

// --- 14. Allocation on the pinned hot path: ids longer than 46 bytes, operator keys ----------
struct Counting;

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-locals are
// const-initialised `Cell`s, so touching them never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.with(std::cell::Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(std::cell::Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(std::cell::Cell::get)
}

/// Severity: DOC MISMATCH / performance (principle 6: "the hot path does not allocate").
///
/// `tests/router_alloc.rs` proves a pinned round trip allocation-free for 36-byte session
/// ids only. The exchange keeps ids of up to 46 bytes inline (`IdBuf`), "every SDK's ids
/// fit"; DESIGN.md §2 lists session ids "some platforms up to 256" and `max_key_len`
/// defaults to 256. A 64-byte id (a hex SHA-256, a common opaque token) allocates on every
/// pinned request; an operator key under the default `OperatorScope::Principal` carries an
/// 18-byte prefix, so any key over 28 bytes (a UUID workspace id is 36) allocates twice per
/// pinned request (the scoped id, then its copy in the exchange).
///
/// Expected: 0 allocations, or the bound documented (and `max_key_len`'s default aligned).
/// Actual: 10 and 20 allocations in 10 pinned round trips.
#[test]
fn a_pinned_round_trip_allocates_nothing_for_long_ids_and_operator_keys() {
    let router = Router::builder()
        .principal(bearer)
        .operator_key(key_fn(workspace))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let clock = Clock::new();
    let now = clock.now();
    let long = "f".repeat(64);
    let ws = "3f2b8c1e-77b0-4c1a-9d3e-2b8f6a0c5d11";
    let _ = exchange(
        &router,
        &post("/mcp", &[ALICE]),
        200,
        &[("mcp-session-id", &long)],
        &[],
        now,
    );
    let call = post(
        "/mcp",
        &[
            ALICE,
            MODERN,
            ("mcp-method", "tools/list"),
            ("mcp-param-workspace", ws),
        ],
    );
    let _ = exchange(&router, &call, 200, &[], &[], now);
    let cases = [
        (
            "64-byte session id",
            post("/mcp", &[ALICE, ("mcp-session-id", &long), LEGACY]),
        ),
        ("UUID operator key", call),
    ];
    let _ = route_session(&router, "warm-up", clock.at(1));
    let mut report = Vec::new();
    for (name, request) in &cases {
        let mut head = resp(200, &[JSON]);
        let n = allocations_in(|| {
            for i in 0..10 {
                let now = clock.at(2 + i);
                let Routed::Forward(mut ex) = router.route(request, now) else {
                    panic!("{name} rejected")
                };
                assert_eq!(ex.how(), mcp_affinity::router::How::Pinned, "{name}");
                let _ = router.on_response_head(&mut ex, &mut head, now);
                router.on_exchange_end(ex, End::Completed, now);
            }
        });
        if n > 0 {
            report.push(format!("{name}: {n} allocations in 10 pinned round trips"));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

// --- 15. Metrics: a contested binding leaves the table uncounted -----------------------------
/// Severity: METRICS (counters inconsistent; low).
///
/// Every key the table holds is counted in `keys_learned` when it enters and in one fate
/// (`keys_forgotten`, `keys_expired`, `keys_revoked`, `keys_purged`, `keys_evicted`,
/// `keys_released`) when it leaves, so `learned - fates == table.len` holds, except for
/// contested legacy SSE ids: when the last stream of a contested id ends, `on_exchange_end`
/// releases it through the `CONTESTED` fallback and ignores the result, so the key leaves
/// the table without a fate (`keys_released` says "bindings released when their stream
/// ended"). Dashboards built on the counters then show keys that exist nowhere.
///
/// Expected: `keys_released` counts the contested binding when its last stream ends.
/// Actual: it leaves uncounted.
#[test]
fn a_contested_binding_released_with_its_last_stream_is_counted() {
    // (Since the fix, a contested id outlives its last stream by the idle timeout: the ledger
    // must balance at every point, and the id must be gone once it idled out.)
    let router = Router::builder().build();
    let [a, b] = ["a", "b"].map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap());
    let mut clock = Clock::new();
    let now = clock.now();
    let first = open_sse_on(&router, a, "7", now);
    let second = open_sse_on(&router, b, "7", now);
    router.on_exchange_end(first, End::Completed, now);
    router.on_exchange_end(second, End::Completed, now);
    let balanced = |router: &Router| {
        let m = router.metrics();
        let fates = m.keys_forgotten
            + m.keys_expired
            + m.keys_revoked
            + m.keys_purged
            + m.keys_evicted
            + m.keys_released;
        assert_eq!(
            m.keys_learned - fates,
            m.table.len as u64,
            "learned {} keys, {} met a fate, {} held",
            m.keys_learned,
            fates,
            m.table.len
        );
        m.table.len
    };
    assert_eq!(balanced(&router), 1, "the contested id is still refused");
    let later = clock.advance(Duration::from_secs(3601));
    let _ = router.maintain(later, 1000);
    assert_eq!(balanced(&router), 0, "and idles out");
}
