//! Drives the router with arbitrary operation sequences and arbitrary header and body bytes.
//! Invariants: no panic; a request pinned by a key goes to a backend that minted the key (whose
//! own responses contained it: the router learns only from backends); nothing goes to a
//! removed backend; placement picks only ready backends; the table never holds keys of removed
//! backends once the removal returned, nor more keys than its capacity.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mcp_affinity::router::{End, How, Routed, Router};
use mcp_affinity::table::{MemoryTableConfig, SessionTable};
use mcp_affinity::{BackendId, TenantId};

#[derive(Arbitrary, Debug)]
enum Op {
    Add,
    Remove(u8),
    Restart(u8),
    Drain(u8, Option<u8>),
    Health(u8, bool),
    Advance(u8),
    Maintain(u16),
    Exchange(Exchange),
}

#[derive(Arbitrary, Debug)]
struct Exchange {
    method: u8,
    path: u8,
    query: Vec<u8>,
    headers: Vec<(u8, Vec<u8>)>,
    status: u16,
    response_headers: Vec<(u8, Vec<u8>)>,
    body: Vec<Vec<u8>>,
    abort: bool,
}

const PATHS: [&str; 5] = ["/mcp", "/sse", "/messages", "/messages/", "/.well-known/oauth"];
const HEADERS: [&str; 7] = [
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
    "content-type",
    "content-length",
];

/// The router's default removal grace.
const GRACE: Duration = Duration::from_secs(60);

fn pick<T: Copy>(all: &[T], i: u8) -> T {
    all[usize::from(i) % all.len()]
}

fuzz_target!(|ops: Vec<Op>| {
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_capacity(64).with_shards(2))
        .max_observed_bytes(512)
        .build();
    // The harness's own record: which backends live, which were removed, and every byte each
    // backend ever answered with (headers and bodies): the only place keys can come from.
    let mut live: Vec<BackendId> = Vec::new();
    let mut removed: Vec<BackendId> = Vec::new();
    let mut said: HashMap<BackendId, Vec<u8>> = HashMap::new();
    // Removed backends and when their keys are due to be purged.
    let mut purge_due: Vec<(BackendId, Instant)> = Vec::new();
    let start = Instant::now();
    let mut now = start;

    for op in ops.into_iter().take(64) {
        match op {
            Op::Add => {
                if let Ok(id) = router.add_backend(TenantId::DEFAULT, "b", 1) {
                    live.push(id);
                }
            }
            Op::Remove(i) | Op::Restart(i) if !live.is_empty() => {
                let id = pick(&live, i);
                let restart = matches!(op, Op::Restart(_));
                if restart {
                    let reborn = router.restart_backend(id, now).expect("live backend restarts");
                    live.push(reborn);
                } else {
                    router.remove_backend(id, now).expect("live backend removes");
                }
                live.retain(|b| *b != id);
                removed.push(id);
                purge_due.push((id, now + GRACE));
            }
            Op::Drain(i, deadline) if !live.is_empty() => {
                let deadline = deadline.map(|s| now + Duration::from_secs(u64::from(s)));
                router.drain_backend(pick(&live, i), deadline, now).expect("live");
            }
            Op::Health(i, ok) if !live.is_empty() => {
                router.report_health(pick(&live, i), ok).expect("live");
            }
            Op::Advance(s) => now += Duration::from_secs(u64::from(s)),
            Op::Maintain(budget) => {
                let _ = router.maintain(now, usize::from(budget));
                for (id, due) in &purge_due {
                    if *due <= now {
                        assert_eq!(router.table().count_owner(*id), 0, "keys kept past the grace");
                    }
                }
            }
            Op::Exchange(x) => {
                let method = pick(&["GET", "POST", "DELETE", "PUT"], x.method);
                let mut uri = pick(&PATHS, x.path).to_owned();
                if let Ok(q) = std::str::from_utf8(&x.query) {
                    if !q.is_empty() && q.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
                        uri.push('?');
                        uri.push_str(q);
                    }
                }
                let mut builder = http::Request::builder().method(method).uri(&uri);
                for (name, value) in &x.headers {
                    if let Ok(value) = http::HeaderValue::from_bytes(value) {
                        builder = builder.header(pick(&HEADERS, *name), value);
                    }
                }
                let Ok(request) = builder.body(()) else { continue };
                let (request, _) = request.into_parts();
                let routed = router.route(&request, now);
                let Routed::Forward(mut exchange) = routed else { continue };
                let backend = exchange.backend();
                assert!(!removed.contains(&backend), "routed to a removed backend");
                match exchange.how() {
                    How::Pinned => {
                        let (_, id) = exchange.key().expect("no cookie or operator keys here");
                        let minted = said.get(&backend).is_some_and(|bytes| {
                            bytes.windows(id.len()).any(|w| w == id.as_bytes())
                        });
                        assert!(minted, "pinned {id:?} to {backend}, which never minted it");
                    }
                    How::Placed => {
                        let info = router.backends().into_iter().find(|b| b.id == backend);
                        assert!(info.is_some_and(|b| b.ready()), "placed on a backend not ready");
                    }
                }
                let status = http::StatusCode::from_u16(100 + x.status % 500).unwrap_or_default();
                let mut response = http::Response::builder().status(status);
                let record = said.entry(backend).or_default();
                for (name, value) in &x.response_headers {
                    if let Ok(value) = http::HeaderValue::from_bytes(value) {
                        record.extend_from_slice(value.as_bytes());
                        record.push(b'\n');
                        response = response.header(pick(&HEADERS, *name), value);
                    }
                }
                for chunk in &x.body {
                    record.extend_from_slice(chunk);
                }
                let Ok(response) = response.body(()) else {
                    router.on_exchange_end(exchange, End::Aborted, now);
                    continue;
                };
                let (mut head, _) = response.into_parts();
                let _ = router.on_response_head(&mut exchange, &mut head, now);
                for chunk in &x.body {
                    let _ = router.on_response_chunk(&mut exchange, &Bytes::copy_from_slice(chunk), now);
                }
                let end = if x.abort { End::Aborted } else { End::Completed };
                router.on_exchange_end(exchange, end, now);
            }
            _ => {}
        }
        let metrics = router.metrics();
        assert!(metrics.table.len <= 64, "table over its capacity");
    }
});
