//! A fleet of proxies on a shared Redis, end to end (issue #10): three replicas of a real MCP SDK
//! server, three instances of the proxy of `examples/proxy.rs` with `--redis` on one
//! `redis-server` of the test's own (no sealing: session ids stay the backends' own), and
//! before them the round-robin front of `tests/e2e/front.rs`, which sends each request to the
//! next proxy in turn. Consecutive requests of one session reach different proxies; only the
//! bindings in Redis route them. Per SDK (rmcp; Python `mcp` Streamable HTTP and legacy SSE;
//! TypeScript Streamable HTTP and legacy SSE):
//!
//! 1. **Affinity through the fleet.** The SDK's clients make several calls per session through
//!    the front: no affinity violation, no failed session; every proxy served requests, sessions
//!    learned by one proxy were presented to another, and proxies found owners in Redis.
//! 2. **Redis restarted under load.** With the SDK's soak clients running through the front,
//!    the `redis-server` is killed, stays down for a second, and starts again, empty, on its
//!    port. The outage policy, asserted on what the clients got: the front saw no answer but
//!    2xx and 503 (never a 404, which makes a client drop a live session, nor a 502; the
//!    404s and 502s allowed answer requests of a session its client had just ended with
//!    `DELETE`, which the Python server fails as the session goes), no
//!    client was told its session is gone, no proxy rejected a request for any reason but the
//!    store's (503); and once every worker session has been served again and the store
//!    answers, nothing fails: every worker session goes on, new sessions start and cross
//!    proxies again (re-seeded bindings and new ones). The 503s of the outage are counted.
//!
//! And the 2026-07-28 era: Python tasks created through one proxy (which learns the task id
//! from the `CreateTaskResult` body and writes it to Redis) and polled with `tasks/get`
//! through the others stay on the replica that created them.
//!
//! Needs `tests/e2e/setup.sh` for the Python and TypeScript peers and `redis-server` 7.0+;
//! fails, never skips, without them.

#![allow(clippy::disallowed_methods)]

mod e2e;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/front.rs"]
mod front;
#[path = "../mcp-affinity-redis/tests/common/mod.rs"]
mod redis_harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::proxy::{Config, Running};
use e2e::{PyMode, python_clients, python_replicas};
use fleet::{
    Lines, ONE_AT_A_TIME, Replicas, Sdk, Soak, affinity_through_the_fleet, crossed, parse, stats,
    text, told_gone, until,
};
use front::{Event, Front};
use redis_harness::RedisServer;
use serde_json::Value;

/// Three proxies sharing `server`, before `backends` (named alike on every proxy).
async fn proxies(server: &RedisServer, backends: Vec<String>) -> Vec<Running> {
    let config = Config {
        backends,
        redis: Some(server.url()),
        redis_prefix: "e2e".into(),
        health_interval: Some(Duration::from_millis(200)),
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Running::start(&config).await.expect("proxy starts"));
    }
    proxies
}

/// The sum over the proxies of one of the shared store's counters.
fn store_sum(
    proxies: &[Running],
    counter: impl Fn(&mcp_affinity_redis::StoreMetrics) -> u64,
) -> u64 {
    let store = |p: &Running| p.proxy.store().expect("a shared store").metrics();
    proxies.iter().map(|p| counter(&store(p))).sum()
}

/// The errors the clients printed after line `at`, in full.
fn errors_after(lines: &[String], at: usize) -> Vec<String> {
    let error = |line: &String| parse(line).get("error").map(text);
    lines[at..].iter().filter_map(error).collect()
}

/// Errors counted by their gist (rmcp's texts say what went wrong at their end).
fn gists(errors: &[String]) -> BTreeMap<String, usize> {
    let mut counted = BTreeMap::new();
    for error in errors {
        let chars: Vec<char> = error.chars().collect();
        let gist = if chars.len() <= 160 {
            error.clone()
        } else {
            let head: String = chars[..60].iter().collect();
            let tail: String = chars[chars.len() - 90..].iter().collect();
            format!("{head} … {tail}")
        };
        *counted.entry(gist).or_default() += 1;
    }
    counted
}

/// Whether every one of the 9 soak workers has been served after line `at`, and how many new
/// sessions numbered `mark` and up were served.
fn served_after(lines: &[String], at: usize, mark: u64) -> (bool, usize) {
    let mut workers = BTreeSet::new();
    let mut starts = 0;
    for line in &lines[at..] {
        let v = parse(line);
        if v.get("replica").is_none() {
            continue;
        }
        if let Some(w) = v.get("worker").and_then(Value::as_u64) {
            workers.insert(w);
        }
        if v.get("starter").and_then(Value::as_u64) >= Some(mark) {
            starts += 1;
        }
    }
    (workers.len() == 9, starts)
}

/// The mark the soak printed last, and the line it is on.
fn last_mark(lines: &[String]) -> Option<(usize, u64)> {
    let at = lines.iter().rposition(|l| parse(l).get("mark").is_some())?;
    Some((at, parse(&lines[at])["mark"].as_u64().expect("mark")))
}

async fn fleet_on_redis(sdk: Sdk) {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut server = RedisServer::start();
    let replicas = Replicas::start(sdk).await;
    let proxies = proxies(&server, replicas.backends()).await;
    let front = Front::start(proxies.iter().map(|r| r.addr).collect()).await;
    let url = format!("http://{}{}", front.addr, sdk.path());

    // 1. Affinity through the fleet.
    let (sessions, calls) = affinity_through_the_fleet(sdk, &url).await;
    let served = stats(&front).served;
    let crossed_sessions = crossed(&front);
    let found = store_sum(&proxies, |s| s.found);
    eprintln!(
        "{sdk:?} affinity: {sessions} sessions, {calls} calls, 0 violations, 0 failures; \
         requests per proxy {served:?}, sessions learned by one proxy and presented to another \
         {crossed_sessions}, owners found in Redis {found}"
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "every proxy served: {served:?}"
    );
    assert!(crossed_sessions > 0, "no session crossed proxies");
    assert!(found > 0, "no proxy found an owner in Redis");

    // 2. Redis restarted, empty, under load.
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
    let killed_at = lines.lock().unwrap().len();
    let statuses_before = stats(&front).statuses;
    let killed = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart();
    let restarted_at = lines.lock().unwrap().len();
    // Recovered: every worker served again since the restart, and the store answers (the
    // circuit closed on every proxy).
    until(
        &lines,
        Duration::from_secs(30),
        "every worker served after the restart",
        |l| served_after(l, restarted_at, u64::MAX).0,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxies.iter().any(|p| {
        let m = p.proxy.store().expect("store").metrics();
        !matches!(m.circuit, mcp_affinity_redis::Circuit::Closed)
    }) {
        assert!(Instant::now() < deadline, "a proxy's circuit stays open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = killed.elapsed();
    let front_at_mark = front.log().len();
    soak.mark(&lines);
    until(
        &lines,
        Duration::from_secs(30),
        "every worker's reply and 20 new sessions after recovery",
        |l| {
            let Some((at, mark)) = last_mark(l) else {
                return false;
            };
            let (workers, starts) = served_after(l, at, mark);
            workers && starts >= 20
        },
    )
    .await;
    soak.stop().await;
    let lines: Lines = lines;
    let lines = lines.lock().unwrap().clone();
    // The outage: from the kill to the mark, the new sessions started before the mark that
    // finished after it, and the worker sessions whose run of failures began before the mark
    // (each soak says when, in `marks`: Python's legacy SSE client gives a session up after
    // one failed POST, so a 503 before the mark shows as a timeout after it; a TypeScript
    // client reads a 503's body after its head, and the mark can come in between). After
    // that, nothing may fail.
    let (recovered_at, mark) = last_mark(&lines).expect("the mark");
    let marks_before = lines[..recovered_at]
        .iter()
        .filter(|l| parse(l).get("mark").is_some())
        .count() as u64;
    let (mut outage, mut after) = (Vec::new(), Vec::new());
    for (at, line) in lines.iter().enumerate().skip(killed_at) {
        let v = parse(line);
        let Some(error) = v.get("error") else {
            continue;
        };
        let early_starter =
            v.get("starter").and_then(Value::as_u64) < Some(mark) && v.get("starter").is_some();
        let failing_before_mark = v
            .get("marks")
            .and_then(Value::as_u64)
            .is_some_and(|m| m <= marks_before);
        if at < recovered_at || early_starter || failing_before_mark {
            outage.push(text(error));
        } else {
            after.push(line.clone());
        }
    }
    let statuses = stats(&front).statuses;
    let during: BTreeMap<u16, u64> = statuses
        .iter()
        .map(|(&s, &n)| (s, n - statuses_before.get(&s).copied().unwrap_or(0)))
        .filter(|&(_, n)| n > 0)
        .collect();
    let started_in_outage = lines[killed_at..recovered_at]
        .iter()
        .filter(|l| parse(l).get("starter").is_some())
        .count();
    let late_503s = front.log()[front_at_mark..]
        .iter()
        .filter(|e| matches!(e, Event::Answered(_, 503, ..)))
        .count();
    let restarts = store_sum(&proxies, |s| s.store_restarts);
    let reseeded = store_sum(&proxies, |s| s.reseed_writes);
    eprintln!(
        "{sdk:?} redis restart: recovered {recovered_in:.1?} after the kill (down 1 s), {} \
         lines meanwhile ({started_in_outage} new sessions), answers by status {during:?} ({late_503s} 503s answered after the mark), client errors {:#?}; store restarts seen \
         {restarts}, bindings re-seeded {reseeded}; {:.1} s",
        recovered_at - killed_at,
        gists(&outage),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(
        errors_after(&lines[..killed_at], 0),
        Vec::<String>::new(),
        "{sdk:?}: errors before the restart"
    );
    let mut rejected: BTreeMap<&str, u64> = BTreeMap::new();
    for proxy in &proxies {
        for (reason, n) in proxy.proxy.metrics().rejected {
            *rejected.entry(reason).or_default() += n;
        }
    }
    rejected.retain(|_, n| *n > 0);
    eprintln!("{sdk:?}: the proxies' rejections by reason: {rejected:?}");
    assert!(
        rejected.keys().all(|&r| r == "store_unavailable"),
        "{sdk:?}: rejections other than the store's 503: {rejected:?}"
    );
    // A 404 is allowed only to a session its client ended itself (the Python SDK may send a
    // last POST as it closes the session with DELETE): the backend no longer knows it. So is
    // a 502 to such a session: the Python server (`mcp` 2.3.0) fails a POST that races its
    // session's DELETE (`ClosedResourceError`, then "Exception in ASGI application"), and
    // uvicorn resets the connection under it; the proxy can only say the backend failed.
    let log = front.log();
    let deleted: BTreeSet<&String> = log
        .iter()
        .filter_map(|e| match e {
            Event::Answered(_, 200..=299, Some(token), true) => Some(token),
            _ => None,
        })
        .collect();
    let odd: Vec<(u16, Option<&String>)> = log
        .iter()
        .filter_map(|e| match e {
            Event::Answered(_, status, token, _) => Some((*status, token.as_ref())),
            _ => None,
        })
        .filter(|&(status, token)| {
            let excused = matches!(status, 404 | 502) && token.is_some_and(|t| deleted.contains(t));
            !(200..300).contains(&status) && status != 503 && !excused
        })
        .collect();
    assert!(
        odd.is_empty(),
        "{sdk:?}: answers other than 2xx and 503 (or 404 or 502 after the client's DELETE): {odd:?}"
    );
    let gone: Vec<_> = outage.iter().filter(|e| told_gone(e)).collect();
    assert!(
        gone.is_empty(),
        "{sdk:?}: clients told their session is gone: {gone:?}"
    );
    assert!(
        after.is_empty(),
        "{sdk:?}: failures once the store was back: {after:#?}"
    );
    assert!(restarts >= 1, "no proxy saw the store restart");

    drop(front);
    for running in proxies {
        running.shutdown().await;
    }
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_sessions_cross_a_fleet_on_redis_and_survive_its_restart() {
    fleet_on_redis(Sdk::Rmcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streamable_sessions_cross_a_fleet_on_redis_and_survive_its_restart() {
    fleet_on_redis(Sdk::Python(PyMode::Streamable)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_legacy_sse_sessions_cross_a_fleet_on_redis_and_survive_its_restart() {
    fleet_on_redis(Sdk::Python(PyMode::Sse)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_streamable_sessions_cross_a_fleet_on_redis_and_survive_its_restart() {
    fleet_on_redis(Sdk::Node { sse: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_legacy_sse_sessions_cross_a_fleet_on_redis_and_survive_its_restart() {
    fleet_on_redis(Sdk::Node { sse: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tasks_created_through_one_proxy_are_polled_through_the_others() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let replicas = python_replicas("r", 3, PyMode::Streamable).await;
    let backends = replicas
        .iter()
        .map(|r| format!("{}={}", r.name, r.url()))
        .collect();
    let proxies = proxies(&server, backends).await;
    let front = Front::start(proxies.iter().map(|r| r.addr).collect()).await;
    let clients = 8;
    let lines = python_clients(&format!("http://{}/mcp", front.addr), "tasks", clients, 1).await;

    let mut tasks = 0;
    for line in lines.iter().filter(|l| l.get("summary").is_none()) {
        assert!(line.get("error").is_none(), "a task failed: {line}");
        let task = line["task"].as_str().expect("task line");
        let creator = task.split('-').next().unwrap();
        let polls: Vec<&str> = line["polls"]
            .as_array()
            .expect("polls")
            .iter()
            .map(|p| p.as_str().expect("replica"))
            .collect();
        assert!(polls.len() >= 2, "the task was polled: {line}");
        assert!(
            polls.iter().all(|p| *p == creator),
            "tasks/get left {creator}: {line}"
        );
        tasks += 1;
    }
    assert_eq!(tasks, clients);
    // Which proxies each task was polled through: the front saw its `Mcp-Name`.
    let seen = stats(&front).seen;
    // Sessionless: the only ids presented are the task ids.
    let polled_through: Vec<usize> = seen.values().map(|s| s.presented.len()).collect();
    let found = store_sum(&proxies, |s| s.found);
    eprintln!(
        "python tasks on redis: {tasks} tasks, proxies each was polled through \
         {polled_through:?}, owners found in Redis {found}"
    );
    assert_eq!(polled_through.len(), clients, "{seen:?}");
    assert!(
        polled_through.iter().any(|&n| n >= 2),
        "no task was polled through two proxies: {polled_through:?}"
    );
    assert!(found > 0, "no proxy found a task's owner in Redis");

    drop(front);
    for running in proxies {
        running.shutdown().await;
    }
    drop(replicas);
}
