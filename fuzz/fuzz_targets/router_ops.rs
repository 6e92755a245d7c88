//! Drives the router with an arbitrary configuration and arbitrary operation sequences:
//! fleet changes (add, remove, restart, drain with any deadline, health probes of every
//! kind), clock steps, maintenance, key listings, and exchanges with arbitrary methods,
//! tricky paths, query strings, repeated headers, principals, cookies, operator keys,
//! vetoes, failed deliveries, dropped exchanges, and arbitrary response headers and bodies.
//!
//! Invariants:
//! - no panic, whatever the input and configuration;
//! - a request pinned by a protocol key goes to a backend whose own responses, in its current
//!   incarnation (since it last came back from down), contained that key: the router learns
//!   only from backends, and a backend that comes back inherits nothing;
//! - with principal binding on, no request that carries a session key (on any path, in any
//!   era) is forwarded while that key is bound to another principal; with operator keys
//!   per principal (the default scope, left unsaid), none is refused as another's;
//! - nothing goes to a removed or down backend, nor to the contested owner; placement (and
//!   placing again after a failed delivery) picks only ready backends it has not tried;
//! - the table never holds keys of removed backends past their grace, nor more keys than its
//!   capacity.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mcp_affinity::router::{
    End, Health, How, OperatorScope, Probe, Reason, Routed, Router, Undelivered, key_fn,
};
use mcp_affinity::table::{Key, KeyKind, MemoryTableConfig, Principal, SessionTable};
use mcp_affinity::{BackendId, TenantId};

#[derive(Arbitrary, Debug)]
struct Setup {
    long_keys: bool,
    principals: bool,
    cookie: bool,
    operator: Option<bool>,
    mcp_paths: bool,
    no_grace: bool,
    attempts: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Add,
    Remove(u8),
    Restart(u8),
    Drain(u8, Deadline),
    Undrain(u8),
    /// A probe result, reported one to three times in a row.
    Health(u8, u8, u8),
    Advance(u8),
    Maintain(u16),
    KeysOf(u8),
    Exchange(Exchange),
}

#[derive(Arbitrary, Debug)]
enum Meanwhile {
    Remove,
    Restart,
    Crash,
}

#[derive(Arbitrary, Debug)]
enum Deadline {
    None,
    In(u8),
    Never,
}

#[derive(Arbitrary, Debug)]
struct Exchange {
    method: u8,
    path: u8,
    query: Query,
    /// `Mcp-Session-Id`, `MCP-Protocol-Version` and the principal, given their own fields so
    /// that the fuzzer reaches the session paths quickly; `headers` adds any others.
    session: Option<Value>,
    version: Option<u8>,
    who: u8,
    headers: Vec<(u8, Value)>,
    veto: u8,
    undelivered: Vec<u8>,
    /// A fleet change to the exchange's backend while its answer is on the way.
    meanwhile: Option<Meanwhile>,
    status: u16,
    /// The response's `Mcp-Session-Id`.
    mint: Option<Value>,
    response_headers: Vec<(u8, Value)>,
    body: Vec<Chunk>,
    end: u8,
}

/// A header value: one of a few tokens (so that ids minted in one exchange come back in
/// another), or any bytes.
#[derive(Arbitrary, Debug)]
enum Value {
    Token(u8),
    /// A long id (1 to 1,200 bytes), around the key-length bounds.
    Long(u16),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Query {
    None,
    Param(u8, Value),
    Raw(Vec<u8>),
}

/// A body chunk: an endpoint event, a task result (as JSON or as an SSE message), or any bytes.
#[derive(Arbitrary, Debug)]
enum Chunk {
    Endpoint { param: u8, id: Value, crlf: bool },
    Task { id: Value, sse: bool },
    Raw(Vec<u8>),
}

const TOKENS: [&str; 14] = [
    "s1",
    "s2",
    "t1",
    "2026-07-28",
    "2025-11-25",
    "9999-99-99",
    "tasks/get",
    "tools/call",
    "text/event-stream",
    "application/json",
    "Bearer alice",
    "Bearer mallory",
    "aff=0.0",
    "gzip",
];

const LONG: [u8; 1200] = [b'L'; 1200];

impl Value {
    fn bytes(&self) -> &[u8] {
        match self {
            Value::Token(i) => pick(&TOKENS, *i).as_bytes(),
            Value::Long(n) => &LONG[..usize::from(*n) % LONG.len() + 1],
            Value::Raw(bytes) => bytes,
        }
    }
}

impl Chunk {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Chunk::Endpoint { param, id, crlf } => {
                let nl = if *crlf { "\r\n" } else { "\n" };
                let mut out = format!("event: endpoint{nl}data: /messages/?{}=", pick(&SSE_PARAMS, *param)).into_bytes();
                out.extend_from_slice(id.bytes());
                out.extend_from_slice(format!("{nl}{nl}").as_bytes());
                out
            }
            Chunk::Task { id, sse } => {
                let mut json = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":""#.to_vec();
                json.extend_from_slice(id.bytes());
                json.extend_from_slice(br#""}}"#);
                if *sse {
                    let mut out = b"event: message\ndata: ".to_vec();
                    out.extend_from_slice(&json);
                    out.extend_from_slice(b"\n\n");
                    out
                } else {
                    json
                }
            }
            Chunk::Raw(bytes) => bytes.clone(),
        }
    }
}

const PATHS: [&str; 16] = [
    "/mcp",
    "/sse",
    "/messages",
    "/messages/",
    "/.well-known/oauth",
    "/MCP",
    "/mcp/",
    "//mcp",
    "/.well-known/../mcp",
    "/.well-known/%2e%2e/mcp",
    "/mcp;x",
    "/Messages/",
    "/x/../messages/",
    "/m%65ssages/",
    "/./sse",
    "/other",
];
const HEADERS: [&str; 10] = [
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
    "content-type",
    "authorization",
    "cookie",
    "mcp-param-workspace",
    "content-encoding",
];
const SSE_PARAMS: [&str; 3] = ["sessionId", "session_id", "sessionid"];
const VERSIONS: [&str; 6] = [
    "2025-11-25",
    "2026-07-28",
    "2025-03-26",
    "9999-99-99",
    "2099-01-01",
    "draft",
];
const PRINCIPALS: [Option<&str>; 3] = [None, Some("Bearer alice"), Some("Bearer mallory")];

fn pick<T: Copy>(all: &[T], i: u8) -> T {
    all[usize::from(i) % all.len()]
}

fn principal(req: &http::request::Parts) -> Option<Principal> {
    let token = req.headers.get("authorization")?.as_bytes();
    Some(Principal::new(token.iter().fold(7u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(*b))
    })))
}

/// The legacy session keys a request carries, wherever they are.
fn carried(req: &http::request::Parts) -> Vec<(KeyKind, Vec<u8>)> {
    let mut keys: Vec<(KeyKind, Vec<u8>)> = req
        .headers
        .get_all("mcp-session-id")
        .iter()
        .map(|v| (KeyKind::Session, v.as_bytes().to_vec()))
        .collect();
    if let Some(query) = req.uri.query() {
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            if SSE_PARAMS.contains(&name) {
                keys.push((KeyKind::SseSession, value.as_bytes().to_vec()));
            }
        }
    }
    keys
}

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, ops) = input;
    let max_key_len = if setup.long_keys { 1024 } else { 256 };
    let grace = if setup.no_grace { Duration::ZERO } else { Duration::from_secs(60) };
    let mut builder = Router::builder()
        .table_config(MemoryTableConfig::new().with_capacity(64).with_shards(2))
        .max_observed_bytes(512)
        .max_key_len(max_key_len)
        .removal_grace(grace)
        .health_thresholds(2, 2)
        .placement_attempts(usize::from(setup.attempts % 4) + 1);
    if setup.principals {
        builder = builder.principal(principal);
    }
    if setup.cookie {
        builder = builder.affinity_cookie("aff");
    }
    if let Some(shared) = setup.operator {
        builder = builder
            .operator_key(key_fn(|req| {
                req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())
            }));
        // Per principal is the default: leave it unsaid, so that the default is what runs.
        if shared {
            builder = builder.operator_scope(OperatorScope::Shared);
        }
    }
    if setup.mcp_paths {
        builder = builder.mcp_paths(["/mcp"]);
    }
    let router = builder.build();

    // The harness's own record: which backends live, which were removed, and every byte each
    // backend answered with in its current incarnation (headers and bodies): the only place
    // keys can come from.
    let mut live: Vec<BackendId> = Vec::new();
    let mut removed: Vec<BackendId> = Vec::new();
    let mut said: HashMap<BackendId, Vec<u8>> = HashMap::new();
    let mut purge_due: Vec<(BackendId, Instant)> = Vec::new();
    let start = Instant::now();
    let mut now = start;
    let health = |id: BackendId| router.backends().into_iter().find(|b| b.id == id).map(|b| b.health);

    for op in ops.into_iter().take(64) {
        match op {
            Op::Add => {
                let name = format!("b{}", live.len() + removed.len());
                if let Ok(id) = router.add_backend(TenantId::DEFAULT, &name, 1) {
                    said.remove(&id);
                    live.push(id);
                }
            }
            Op::Remove(i) | Op::Restart(i) if !live.is_empty() => {
                let id = pick(&live, i);
                if matches!(op, Op::Restart(_)) {
                    let reborn = router.restart_backend(id, now).expect("live backend restarts");
                    said.remove(&reborn);
                    live.push(reborn);
                } else {
                    router.remove_backend(id, now).expect("live backend removes");
                }
                live.retain(|b| *b != id);
                removed.push(id);
                purge_due.push((id, now + grace));
            }
            Op::Drain(i, deadline) if !live.is_empty() => {
                let deadline = match deadline {
                    Deadline::None => None,
                    Deadline::In(s) => Some(now + Duration::from_secs(u64::from(s))),
                    Deadline::Never => Some(now + Duration::from_secs(u64::MAX / 1000 + 1)),
                };
                router.drain_backend(pick(&live, i), deadline, now).expect("live");
            }
            Op::Undrain(i) if !live.is_empty() => {
                router.undrain_backend(pick(&live, i), now).expect("live");
            }
            Op::Health(i, probe, times) if !live.is_empty() => {
                let id = pick(&live, i);
                let probe = pick(&[Probe::Up, Probe::Failed, Probe::Refused], probe);
                for _ in 0..times % 3 + 1 {
                    let before = health(id);
                    let after = router.report_health(id, probe, now).expect("live");
                    if before == Some(Health::Down) && after != Health::Down {
                        // A new incarnation: it said nothing yet.
                        said.remove(&id);
                        assert_eq!(router.table().count_owner(id), 0, "came back with keys");
                    }
                }
            }
            Op::Advance(s) => now += Duration::from_secs(u64::from(s)),
            Op::Maintain(budget) => {
                let _ = router.maintain(now, usize::from(budget));
                for (id, due) in &purge_due {
                    if *due <= now && !live.contains(id) {
                        assert_eq!(router.table().count_owner(*id), 0, "keys kept past the grace");
                    }
                }
            }
            Op::KeysOf(i) => {
                for id in live.iter().chain(&removed).skip(usize::from(i) % 4).take(2) {
                    let _ = router.keys_of(*id, 8);
                }
            }
            Op::Exchange(x) => {
                let method = pick(&["GET", "POST", "DELETE", "PUT"], x.method);
                let mut uri = pick(&PATHS, x.path).to_owned();
                let query = match &x.query {
                    Query::None => Vec::new(),
                    Query::Param(name, value) => {
                        let mut q = format!("{}=", pick(&SSE_PARAMS, *name)).into_bytes();
                        q.extend_from_slice(value.bytes());
                        q
                    }
                    Query::Raw(bytes) => bytes.clone(),
                };
                if let Ok(q) = std::str::from_utf8(&query) {
                    if !q.is_empty() && q.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
                        uri.push('?');
                        uri.push_str(q);
                    }
                }
                let mut builder = http::Request::builder().method(method).uri(&uri);
                if let Some(session) = &x.session {
                    if let Ok(value) = http::HeaderValue::from_bytes(session.bytes()) {
                        builder = builder.header("mcp-session-id", value);
                    }
                }
                if let Some(version) = x.version {
                    builder = builder.header("mcp-protocol-version", pick(&VERSIONS, version));
                }
                if let Some(token) = pick(&PRINCIPALS, x.who) {
                    builder = builder.header("authorization", token);
                }
                for (name, value) in &x.headers {
                    if let Ok(value) = http::HeaderValue::from_bytes(value.bytes()) {
                        builder = builder.header(pick(&HEADERS, *name), value);
                    }
                }
                let Ok(request) = builder.body(()) else { continue };
                let (request, _) = request.into_parts();
                let who = principal(&request);
                // What the table binds the request's carried keys to, before routing.
                let foreign: Vec<BackendId> = carried(&request)
                    .into_iter()
                    .filter_map(|(kind, id)| {
                        let key = Key::with_max_len(TenantId::DEFAULT, kind, &id, max_key_len).ok()?;
                        let entry = router.table().get(&key, now)?;
                        (entry.principal != who).then_some(entry.owner)
                    })
                    .collect();
                let vetoes = x.veto;
                let accept = |b: BackendId| vetoes & (1 << (b.slot() % 8)) == 0;
                let mut routed = router.route_with(&request, now, accept);
                if let Routed::Reject(rejection) = &routed {
                    // Operator keys per principal: nobody can squat on a key another presents.
                    let squatted = rejection.reason() == Reason::WrongPrincipal(KeyKind::Operator);
                    assert!(!(setup.operator == Some(false) && squatted), "{uri}: an operator key held by another principal");
                }
                let mut tried = Vec::new();
                for why in &x.undelivered {
                    let Routed::Forward(exchange) = routed else { break };
                    let why = pick(&[Undelivered::Refused, Undelivered::TimedOut, Undelivered::Failed], *why);
                    tried.push(exchange.backend());
                    if why == Undelivered::Refused {
                        said.remove(&exchange.backend());
                    }
                    routed = router.on_undelivered_with(exchange, why, now, accept);
                    if let Routed::Forward(again) = &routed {
                        assert!(!tried.contains(&again.backend()), "placed again on a tried backend");
                        assert_eq!(again.how(), How::Placed, "a pinned request moved");
                    }
                }
                let Routed::Forward(mut exchange) = routed else { continue };
                let backend = exchange.backend();
                assert!(!removed.contains(&backend), "routed to a removed backend");
                assert_ne!(backend, BackendId::CONTESTED, "routed to the contested owner");
                assert_ne!(health(backend), Some(Health::Down), "routed to a down backend");
                if setup.principals {
                    assert!(foreign.is_empty(), "{uri}: forwarded with another principal's key");
                }
                match exchange.how() {
                    How::Pinned => {
                        if let Some((kind, id)) = exchange.key() {
                            if kind != KeyKind::Operator {
                                let minted = said.get(&backend).is_some_and(|bytes| {
                                    bytes.windows(id.len()).any(|w| w == id.as_bytes())
                                });
                                assert!(minted, "pinned {id:?} to {backend}, which never minted it");
                            }
                        }
                    }
                    How::Placed => {
                        let info = router.backends().into_iter().find(|b| b.id == backend);
                        assert!(info.is_some_and(|b| b.ready()), "placed on a backend not ready");
                    }
                }
                if x.end == 255 {
                    // An embedder that forgets the exchange.
                    drop(exchange);
                    continue;
                }
                match x.meanwhile {
                    None => {}
                    Some(Meanwhile::Remove | Meanwhile::Restart) if live.contains(&backend) => {
                        if matches!(x.meanwhile, Some(Meanwhile::Restart)) {
                            let reborn = router.restart_backend(backend, now).expect("live");
                            said.remove(&reborn);
                            live.push(reborn);
                        } else {
                            router.remove_backend(backend, now).expect("live");
                        }
                        live.retain(|b| *b != backend);
                        removed.push(backend);
                        purge_due.push((backend, now + grace));
                    }
                    Some(Meanwhile::Crash) if live.contains(&backend) => {
                        while router.report_health(backend, Probe::Refused, now).expect("live") != Health::Down {}
                        said.remove(&backend);
                    }
                    Some(_) => {}
                }
                let status = http::StatusCode::from_u16(100 + x.status % 500).unwrap_or_default();
                let mut response = http::Response::builder().status(status);
                let record = said.entry(backend).or_default();
                if let Some(mint) = &x.mint {
                    if let Ok(value) = http::HeaderValue::from_bytes(mint.bytes()) {
                        record.extend_from_slice(value.as_bytes());
                        record.push(b'\n');
                        response = response.header("mcp-session-id", value);
                    }
                }
                for (name, value) in &x.response_headers {
                    if let Ok(value) = http::HeaderValue::from_bytes(value.bytes()) {
                        record.extend_from_slice(value.as_bytes());
                        record.push(b'\n');
                        response = response.header(pick(&HEADERS, *name), value);
                    }
                }
                let chunks: Vec<Bytes> = x.body.iter().map(|c| Bytes::from(c.bytes())).collect();
                for chunk in &chunks {
                    record.extend_from_slice(chunk);
                }
                let Ok(response) = response.body(()) else {
                    router.on_exchange_end(exchange, End::Aborted, now);
                    continue;
                };
                let (mut head, _) = response.into_parts();
                let _ = router.on_response_head(&mut exchange, &mut head, now);
                for chunk in &chunks {
                    let _ = router.on_response_chunk(&mut exchange, chunk, now);
                }
                let end = if x.end % 2 == 0 { End::Completed } else { End::Aborted };
                router.on_exchange_end(exchange, end, now);
            }
            _ => {}
        }
        let metrics = router.metrics();
        assert!(metrics.table.len <= 64, "table over its capacity");
    }
});
