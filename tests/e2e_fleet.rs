//! A fleet of proxies without shared state, end to end (issue #9): three replicas of a real MCP
//! SDK server, three instances of the proxy of `examples/proxy.rs` sharing one key file and
//! the same backend names (`r1=URL`…), and before them a round-robin front
//! (`tests/e2e/front.rs`) that sends each request to the next proxy in turn: consecutive
//! requests of one session reach different proxies, and only the sealed session ids route them.
//! Per SDK (rmcp; Python `mcp` Streamable HTTP and legacy SSE; TypeScript Streamable HTTP and
//! legacy SSE):
//!
//! 1. **Affinity through the fleet.** The SDK's clients make several calls per session through
//!    the front: no affinity violation, no failed session; every proxy served requests, tokens
//!    were opened on at least two proxies, and sessions sealed by one proxy were opened by
//!    another.
//! 2. **Key rotation under load.** With the SDK's soak clients running through the front, the
//!    key file becomes `k2, k1` (`k2` seals, both open) and every proxy reloads it: no request
//!    fails in that window; a session sealed by any proxy afterwards carries `k2` and opens on
//!    every proxy, and one sealed under `k1` before still opens on every proxy.
//! 3. **A proxy killed.** One proxy instance is dropped while the load runs: its listener,
//!    tasks and open connections go at once (what a crashed process does to its sockets); the
//!    front skips it from then on. Streamable HTTP sessions go on through the other proxies: a
//!    request in flight through the killed proxy may fail once (the soak clients run with
//!    `--keep` and call again in the same session), every session succeeds again after that,
//!    none is told its session is gone, no new session fails. A legacy SSE session lives on its
//!    GET stream: one whose stream went through the killed proxy ends with it (its backend
//!    forgets the session; the Python SDK then starts over, the TypeScript SDK's EventSource
//!    connects again and takes the new stream's session, which its soak script reports as a
//!    new session). No session whose stream lives elsewhere sees an error unless one of its
//!    messages was in flight through the killed proxy (the front says which: the TypeScript
//!    SDK then goes on in the session, the Python SDK's SSE transport gives the session up),
//!    and no new session fails.
//! 4. Once the load stopped, `k1` is dropped from the file: its tokens answer 404 everywhere,
//!    `k2`'s still open.
//!
//! Needs `tests/e2e/setup.sh` for the Python and TypeScript peers; fails, never skips,
//! without it.

#![allow(clippy::disallowed_methods)]

mod e2e;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/front.rs"]
mod front;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::proxy::{Config, Proxy, Running};
use e2e::{PyMode, RawClient, raw_client, raw_session, raw_whoami};
use fleet::{
    ONE_AT_A_TIME, Replicas, Sdk, Soak, affinity_through_the_fleet, brief, crossed, is_error,
    parse, stats, text, texts, told_gone, until,
};
use front::{Event, Front};
use http_body_util::{BodyExt, Full};
use mcp_affinity::seal::SealKey;
use serde_json::Value;

/// The fleet's keys: `k1` first, then `k2` rotated in before it.
const K1: &str = "1f0e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
const K2: &str = "c0ffee00deadbeef0123456789abcdef0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The proxy instance that is killed.
const VICTIM: usize = 1;

/// Writes the key file at once (a new file renamed over the old one).
fn write_keys(path: &Path, keys: &[&str]) {
    let temp = path.with_extension("new");
    std::fs::write(
        &temp,
        format!("# the fleet's sealing keys\n{}\n", keys.join("\n")),
    )
    .expect("write the key file");
    std::fs::rename(&temp, path).expect("move the key file");
}

/// The key hint of a token: the low 6 bits of its first byte (base64url).
fn key_hint(token: &str) -> u8 {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not a sealed token: {token:?}"),
    };
    let bytes = token.as_bytes();
    ((value(bytes[0]) << 2) | (value(bytes[1]) >> 4)) & 0x3f
}

fn hint(key: &str) -> u8 {
    SealKey::from_hex(key).expect("a key").hint()
}

/// A session opened by hand directly on one proxy, which seals its id.
struct RawSession {
    token: String,
    /// Legacy SSE: the message path and query of the `endpoint` event, and the stream (the
    /// session lives as long as it is open).
    sse: Option<(String, hyper::body::Incoming)>,
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

async fn post_json(raw: &RawClient, url: &str, body: &str) -> (u16, String) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), raw.request(request))
        .await
        .expect("an answer within 10 s")
        .expect("POST");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The data of a complete `endpoint` event in `held`, if one came.
fn endpoint(held: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(held);
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    lines.find(|l| *l == "event: endpoint")?;
    let data = lines.next()?.strip_prefix("data:")?.trim().to_string();
    // The line has ended (a blank line follows).
    lines.next()?;
    Some(data)
}

/// Opens a session directly on the proxy at `base` (Streamable HTTP: initialize; legacy SSE:
/// the stream, then initialize on its message URL).
async fn raw_open(sdk: Sdk, raw: &RawClient, base: &str) -> RawSession {
    if !sdk.sse() {
        let url = format!("{base}/mcp");
        let open = raw_session(raw, &url);
        let token = tokio::time::timeout(Duration::from_secs(10), open)
            .await
            .expect("a session within 10 s");
        return RawSession { token, sse: None };
    }
    let request = http::Request::get(format!("{base}/sse"))
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), raw.request(request))
        .await
        .expect("a stream within 10 s")
        .expect("GET /sse");
    assert_eq!(response.status(), 200, "GET /sse on {base}");
    let mut body = response.into_body();
    let mut held = Vec::new();
    let path = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the endpoint event within 10 s")
            .expect("the stream is open")
            .expect("a frame");
        if let Some(data) = frame.data_ref() {
            held.extend_from_slice(data);
        }
        if let Some(path) = endpoint(&held) {
            break path;
        }
    };
    let token = path
        .split(['?', '&'])
        .find_map(|p| {
            p.strip_prefix("session_id=")
                .or_else(|| p.strip_prefix("sessionId="))
        })
        .unwrap_or_else(|| panic!("no session in {path:?}"))
        .to_string();
    for message in [INITIALIZE, INITIALIZED] {
        let (status, body) = post_json(raw, &format!("{base}{path}"), message).await;
        assert_eq!(status, 202, "{message} on {base}: {body}");
    }
    RawSession {
        token,
        sse: Some((path, body)),
    }
}

/// Presents a raw session on the proxy at `base`: a `whoami` call (Streamable HTTP) or a ping
/// message (legacy SSE). Returns the status and the body.
async fn raw_present(raw: &RawClient, session: &RawSession, base: &str) -> (u16, String) {
    match &session.sse {
        Some((path, _)) => {
            let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
            post_json(raw, &format!("{base}{path}"), ping).await
        }
        None => {
            let url = format!("{base}/mcp");
            let call = raw_whoami(raw, &url, &session.token);
            let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("an answer within 10 s");
            (status, body)
        }
    }
}

/// The status a raw session is answered with when presented on each proxy.
async fn presented_everywhere(raw: &RawClient, session: &RawSession, bases: &[String]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for base in bases {
        statuses.push(raw_present(raw, session, base).await.0);
    }
    statuses
}

/// The answer a session that is still open gets.
fn open_status(sdk: Sdk) -> u16 {
    if sdk.sse() { 202 } else { 200 }
}

/// What the soak showed.
#[derive(Debug, Default)]
struct Outcome {
    /// Worker sessions, short sessions started, replies.
    sessions: usize,
    starts: usize,
    replies: usize,
    /// Worker sessions that saw a failed call at the kill (Streamable HTTP: each recovered).
    failed_once: usize,
    /// Legacy SSE: sessions whose stream went through the killed proxy, ended with it.
    ended_with_stream: usize,
    /// Legacy SSE (Python): sessions whose message was cut, ended by the SDK's transport.
    ended_by_sdk: usize,
    /// Short sessions in flight through the killed proxy that failed.
    starts_cut: usize,
    /// The failures tolerated above, as the clients told them.
    tolerated: Vec<String>,
    /// Anything wrong.
    faults: Vec<String>,
}

/// One worker session: its token, its replies (replica, count, line index), its errors (text,
/// line index).
#[derive(Debug, Default)]
struct Session {
    token: Option<String>,
    replies: Vec<(String, u64, usize)>,
    errors: Vec<(String, usize)>,
}

/// Judges the soak's lines: `killed_at` is the number of lines when the proxy was killed.
fn analyze(sdk: Sdk, lines: &[String], killed_at: usize, front: &Front) -> Outcome {
    let mut outcome = Outcome::default();
    let stats = stats(front);
    let seen = stats.seen;
    let mut sessions: BTreeMap<(u64, u64), Session> = BTreeMap::new();
    // Short sessions numbered from `mark` on started after the kill.
    let mark = lines
        .iter()
        .find_map(|l| parse(l).get("mark").and_then(Value::as_u64))
        .expect("a mark");
    for (at, line) in lines.iter().enumerate() {
        let value = parse(line);
        if let Some(starter) = value.get("starter").and_then(Value::as_u64) {
            outcome.starts += 1;
            let Some(error) = value.get("error").map(text) else {
                continue;
            };
            if at < killed_at {
                outcome.faults.push(format!(
                    "new session {starter} failed before the kill: {}",
                    brief(&error)
                ));
            } else if starter >= mark {
                outcome.faults.push(format!(
                    "new session {starter} failed after the kill: {}",
                    brief(&error)
                ));
            } else if !sdk.sse() && told_gone(&error) {
                // (A legacy SSE session whose stream went through the killed proxy is gone.)
                outcome.faults.push(format!(
                    "new session {starter} was told it is gone: {}",
                    brief(&error)
                ));
            } else {
                // Started before the kill, in flight through the killed proxy.
                outcome.starts_cut += 1;
                outcome
                    .tolerated
                    .push(format!("new session {starter}: {}", brief(&error)));
            }
            continue;
        }
        let Some(worker) = value.get("worker").and_then(Value::as_u64) else {
            continue;
        };
        let entry = sessions
            .entry((worker, value["session"].as_u64().expect("session")))
            .or_default();
        if let Some(token) = value.get("token").and_then(Value::as_str) {
            entry.token = Some(token.to_string());
        } else if let Some(error) = value.get("error") {
            entry.errors.push((text(error), at));
        } else {
            outcome.replies += 1;
            entry.replies.push((
                value["replica"].as_str().expect("replica").to_string(),
                value["count"].as_u64().expect("count"),
                at,
            ));
        }
    }
    let cut = stats.cut;
    for ((worker, no), session) in &sessions {
        outcome.sessions += 1;
        let name = format!("worker {worker} session {no}");
        // Affinity: one replica, counts rising by one (by two at most across a failed call,
        // which may have reached the replica before it was cut).
        let mut last: Option<&(String, u64, usize)> = None;
        for reply in &session.replies {
            let step_ok = match last {
                None => reply.1 == 1,
                Some(prev) => {
                    let failures = session
                        .errors
                        .iter()
                        .filter(|(_, at)| (prev.2..reply.2).contains(at))
                        .count() as u64;
                    prev.0 == reply.0 && reply.1 > prev.1 && reply.1 <= prev.1 + 1 + failures
                }
            };
            if !step_ok {
                outcome.faults.push(format!(
                    "affinity violation in {name}: {:?}",
                    session.replies
                ));
                break;
            }
            last = Some(reply);
        }
        if session.errors.is_empty() {
            continue;
        }
        if let Some((error, _)) = session.errors.iter().find(|(_, at)| *at < killed_at) {
            outcome
                .faults
                .push(format!("{name} failed before the kill: {}", brief(error)));
            continue;
        }
        if sdk.sse() {
            let token = session.token.as_deref();
            let front_saw = token.and_then(|t| seen.get(t));
            if front_saw.is_some_and(|s| s.minted == Some(VICTIM)) {
                // Its stream went through the killed proxy and ended with it.
                outcome.ended_with_stream += 1;
                outcome
                    .tolerated
                    .push(format!("{name}, stream ended: {}", texts(&session.errors)));
            } else if front_saw.is_some_and(|s| s.cut.contains(&VICTIM)) {
                // A message of it was in flight through the killed proxy: the call failed.
                // The TypeScript SDK goes on in the session; the Python SDK's SSE transport
                // stops sending once a POST failed (its `post_writer` exits), so the session
                // ends there.
                let first = session.errors[0].1;
                let went_on = session.replies.iter().any(|r| r.2 > first);
                if went_on || matches!(sdk, Sdk::Python(_)) {
                    outcome.failed_once += usize::from(went_on);
                    outcome.ended_by_sdk += usize::from(!went_on);
                    outcome
                        .tolerated
                        .push(format!("{name}, a message cut: {}", texts(&session.errors)));
                } else {
                    outcome.faults.push(format!(
                        "{name} did not go on after a message was cut: {}",
                        texts(&session.errors)
                    ));
                }
            } else {
                outcome.faults.push(format!(
                    "{name} (token {token:?}, stream through {:?}) failed: {}",
                    front_saw.and_then(|s| s.minted),
                    texts(&session.errors)
                ));
            }
            continue;
        }
        // Streamable HTTP: one failed call at the kill, never "gone", and the session goes on.
        let (error, at) = &session.errors[0];
        if session.errors.len() > 1 || told_gone(error) {
            outcome
                .faults
                .push(format!("{name} failed: {}", texts(&session.errors)));
        } else if !session.replies.iter().any(|r| r.2 > *at) {
            outcome.faults.push(format!(
                "{name} did not succeed again after {}",
                brief(error)
            ));
        } else {
            outcome.failed_once += 1;
            outcome
                .tolerated
                .push(format!("{name}, once: {}", brief(error)));
        }
    }
    let failures = (outcome.failed_once + outcome.starts_cut) as u64;
    if !sdk.sse() && failures > cut[VICTIM] {
        outcome.faults.push(format!(
            "{failures} failures, but only {} requests cut at the killed proxy",
            cut[VICTIM]
        ));
    }
    // Requests cut at the live proxies are not faults by themselves (seen once in many runs,
    // with the Python replicas and no client seeing an error: a backend may end a response
    // abruptly); one that a client saw is judged above.
    outcome
}

/// The whole scenario for one SDK.
async fn fleet(sdk: Sdk) {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    assert_ne!(hint(K1), hint(K2), "the test's keys need distinct hints");
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/e2e/fleet")
        .join(format!("{}-{}", sdk.label(), std::process::id()));
    std::fs::create_dir_all(&dir).expect("the key directory");
    let key_file = dir.join("keys");
    write_keys(&key_file, &[K1]);

    let replicas = Replicas::start(sdk).await;
    let config = Config {
        backends: replicas.backends(),
        seal_key_file: Some(key_file.clone()),
        health_interval: Some(Duration::from_millis(200)),
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let mut proxies: Vec<Option<Running>> = Vec::new();
    for _ in 0..3 {
        proxies.push(Some(Running::start(&config).await.expect("proxy starts")));
    }
    let handles: Vec<Arc<Proxy>> = proxies.iter().flatten().map(|r| r.proxy.clone()).collect();
    let bases: Vec<String> = proxies.iter().flatten().map(|r| r.url("")).collect();
    let front = Front::start(proxies.iter().flatten().map(|r| r.addr).collect()).await;
    let url = format!("http://{}{}", front.addr, sdk.path());

    // 1. Affinity through the fleet.
    let (sessions, calls) = affinity_through_the_fleet(sdk, &url).await;
    let served = stats(&front).served;
    let opened: Vec<u64> = handles.iter().map(|p| p.metrics().tokens_opened).collect();
    let crossed_sessions = crossed(&front);
    eprintln!(
        "{sdk:?} affinity: {sessions} sessions, {calls} calls, 0 violations, 0 failures; \
         requests per proxy {served:?}, tokens opened per proxy {opened:?}, \
         sessions sealed by one proxy and opened by another {crossed_sessions}"
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "every proxy served: {served:?}"
    );
    assert!(
        opened.iter().filter(|&&n| n > 0).count() >= 2,
        "tokens opened on two proxies at least: {opened:?}"
    );
    assert!(crossed_sessions > 0, "no session crossed proxies");

    // A session sealed under k1 by proxy 0, to present again after the rotation.
    let raw = raw_client();
    let old = raw_open(sdk, &raw, &bases[0]).await;
    assert_eq!(key_hint(&old.token), hint(K1));

    // 2. The load, then the key rotation.
    let (mut soak, lines) = Soak::start(sdk, &url).await;
    until(
        &lines,
        Duration::from_secs(30),
        "every worker's first reply",
        |l| l.iter().any(|l| parse(l)["ready"] == true),
    )
    .await;
    let before = lines.lock().unwrap().len();
    until(&lines, Duration::from_secs(10), "some load", |l| {
        l.len() > before + 30
    })
    .await;
    let rotation_started = lines.lock().unwrap().len();
    write_keys(&key_file, &[K2, K1]);
    for proxy in &handles {
        assert_eq!(proxy.reload_keys(true), Ok(true), "reload");
    }
    let mut fresh = Vec::new();
    for base in &bases {
        let session = raw_open(sdk, &raw, base).await;
        assert_eq!(
            key_hint(&session.token),
            hint(K2),
            "sealed by {base} under k2"
        );
        fresh.push(session);
    }
    for session in fresh.iter().chain([&old]) {
        let statuses = presented_everywhere(&raw, session, &bases).await;
        assert_eq!(
            statuses,
            [open_status(sdk); 3],
            "{} on every proxy",
            session.token
        );
    }
    let mid = lines.lock().unwrap().len();
    until(
        &lines,
        Duration::from_secs(10),
        "load after the rotation",
        |l| l.len() > mid + 30,
    )
    .await;
    let rotation_ended = lines.lock().unwrap().len();
    let rotation_errors: Vec<String> = lines.lock().unwrap()[rotation_started..rotation_ended]
        .iter()
        .filter(|l| is_error(l))
        .cloned()
        .collect();
    assert!(
        rotation_errors.is_empty(),
        "{sdk:?}: errors during the rotation: {rotation_errors:#?}"
    );

    // 3. Kill a proxy instance: its tasks and connections are dropped at once.
    let killed_at = lines.lock().unwrap().len();
    let victim_addr = proxies[VICTIM].as_ref().expect("running").addr;
    drop(proxies[VICTIM].take());
    // Its tasks are aborted at their next poll: wait until its port is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(victim_addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the killed proxy still accepts");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A request whose connection was made just before the port closed is still logged as sent
    // to it: count from a moment later, once the front sent 10 more requests.
    let sent = |front: &Front| {
        let log = front.log();
        log.iter().filter(|e| matches!(e, Event::Sent(..))).count()
    };
    let (sent_at_close, deadline) = (sent(&front), Instant::now() + Duration::from_secs(10));
    while sent(&front) < sent_at_close + 10 {
        assert!(Instant::now() < deadline, "no load after the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let served_before = stats(&front).served;
    soak.mark(&lines);
    if let Some((_, stream)) = fresh[VICTIM].sse.as_mut() {
        // A legacy SSE stream opened directly on the killed proxy ends with it.
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame())
                .await
                .expect("the killed proxy's stream ends within 5 s");
            if !matches!(frame, Some(Ok(_))) {
                break;
            }
        }
    }
    until(
        &lines,
        Duration::from_secs(30),
        "every worker's reply and 20 new sessions after the kill",
        |l| {
            let Some(at) = l.iter().position(|l| parse(l).get("mark").is_some()) else {
                return false;
            };
            let mark = parse(&l[at])["mark"].as_u64().expect("mark");
            let mut workers = BTreeSet::new();
            let mut starts = 0;
            for line in &l[at..] {
                let v = parse(line);
                if v.get("replica").is_some() {
                    if let Some(w) = v.get("worker").and_then(Value::as_u64) {
                        workers.insert(w);
                    }
                }
                if v.get("starter")
                    .and_then(Value::as_u64)
                    .is_some_and(|s| s >= mark)
                {
                    starts += 1;
                }
            }
            workers.len() == 9 && starts >= 20
        },
    )
    .await;
    soak.stop().await;
    let lines = lines.lock().unwrap().clone();
    let outcome = analyze(sdk, &lines, killed_at, &front);
    let served_after: Vec<u64> = stats(&front)
        .served
        .iter()
        .zip(&served_before)
        .map(|(a, b)| a - b)
        .collect();

    // 4. k1 retired: its tokens are refused everywhere, k2's still open.
    let live: Vec<String> = (0..3)
        .filter(|&i| i != VICTIM)
        .map(|i| bases[i].clone())
        .collect();
    write_keys(&key_file, &[K2]);
    for (i, proxy) in handles.iter().enumerate() {
        if i != VICTIM {
            assert_eq!(proxy.reload_keys(true), Ok(true));
        }
    }
    assert_eq!(presented_everywhere(&raw, &old, &live).await, [404, 404]);
    let k2_session = &fresh[0];
    assert_eq!(
        presented_everywhere(&raw, k2_session, &live).await,
        [open_status(sdk); 2]
    );

    let metrics: Vec<_> = handles.iter().map(|p| p.metrics()).collect();
    let sealed: Vec<u64> = metrics.iter().map(|m| m.tokens_sealed).collect();
    let opened: Vec<u64> = metrics.iter().map(|m| m.tokens_opened).collect();
    let rejected: Vec<u64> = metrics.iter().map(|m| m.rejected_total()).collect();
    let bad_gateways: Vec<u64> = handles.iter().map(|p| p.bad_gateways()).collect();
    eprintln!(
        "{sdk:?} soak: {} worker sessions, {} replies, {} new sessions; rotation window {} lines, \
         0 errors; kill of proxy {VICTIM}: requests cut {:?}, sessions that failed once and went \
         on {}, SSE sessions ended with their stream {} (by the SDK after a cut message {}), \
         new sessions in flight that failed {}, \
         requests per proxy after the kill {served_after:?}; faults {}; per proxy: requests \
         {:?}, tokens sealed {sealed:?}, opened {opened:?}, rejected {rejected:?}, 502s \
         {bad_gateways:?}; {:.1} s",
        outcome.sessions,
        outcome.replies,
        outcome.starts,
        rotation_ended - rotation_started,
        stats(&front).cut,
        outcome.failed_once,
        outcome.ended_with_stream,
        outcome.ended_by_sdk,
        outcome.starts_cut,
        outcome.faults.len(),
        stats(&front).served,
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{sdk:?} tolerated failures: {:#?}", outcome.tolerated);
    assert!(outcome.faults.is_empty(), "{sdk:?}: {:#?}", outcome.faults);
    assert_eq!(served_after[VICTIM], 0, "the front skips the killed proxy");
    assert!(
        served_after.iter().filter(|&&n| n > 0).count() == 2,
        "{served_after:?}"
    );
    assert!(
        sealed.iter().all(|&n| n > 0),
        "every proxy sealed: {sealed:?}"
    );
    assert!(
        opened.iter().all(|&n| n > 0),
        "every proxy opened: {opened:?}"
    );
    // The only rejections: the retired key's token, presented once on each live proxy.
    assert_eq!(rejected, [1, 0, 1], "{metrics:#?}");
    // 502s of the proxies are reported, not asserted: one that reached a client is a failure
    // the analysis above judges. (Once in many runs a Python replica reset a connection of a
    // live proxy mid-request, with no client seeing an error: a request of a client already
    // gone, presumably.)

    drop(old);
    drop(fresh);
    drop(front);
    for running in proxies.into_iter().flatten() {
        running.shutdown().await;
    }
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_sessions_cross_a_fleet_of_proxies_survive_a_killed_proxy_and_a_key_rotation() {
    fleet(Sdk::Rmcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streamable_sessions_cross_a_fleet_survive_a_killed_proxy_and_a_key_rotation() {
    fleet(Sdk::Python(PyMode::Streamable)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_legacy_sse_sessions_cross_a_fleet_and_end_only_with_their_stream() {
    fleet(Sdk::Python(PyMode::Sse)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_streamable_sessions_cross_a_fleet_survive_a_killed_proxy_and_a_key_rotation() {
    fleet(Sdk::Node { sse: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_legacy_sse_sessions_cross_a_fleet_and_end_only_with_their_stream() {
    fleet(Sdk::Node { sse: true }).await;
}
