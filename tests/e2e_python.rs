//! End to end with the Python SDK (`mcp` 2.3.0, the eras rmcp no longer speaks): Python
//! servers as several stateful Streamable HTTP replicas and as several legacy HTTP+SSE
//! replicas, Python clients, all through the proxy of `examples/proxy.rs`.
//!
//! Needs `tests/e2e/setup.sh` (or `MCP_AFFINITY_PYTHON`); fails, never skips, without it.

#![allow(clippy::disallowed_methods)]

mod e2e;

use e2e::proxy::{Config, Running};
use e2e::{PyMode, PyReplica, check_affinity, distinct, python_clients, python_replicas};

async fn proxy_for(replicas: &[PyReplica]) -> Running {
    let config = Config {
        backends: replicas.iter().map(PyReplica::url).collect(),
        shutdown_grace: std::time::Duration::from_millis(100),
        ..Config::default()
    };
    e2e::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streamable_sessions_stay_on_the_replica_that_minted_them() {
    let replicas = python_replicas("p", 3, PyMode::Streamable).await;
    let proxy = proxy_for(&replicas).await;
    let (sessions, calls) = (12, 4);

    let lines = python_clients(&proxy.url("/mcp"), "streamable", sessions, calls).await;
    let owners = check_affinity(&lines, sessions, calls);
    assert!(
        distinct(&owners) >= 2,
        "sessions spread over replicas: {owners:?}"
    );

    let m = proxy.proxy.metrics();
    assert_eq!(m.keys_learned, sessions as u64, "{m:?}");
    // The Python client DELETEs its session on exit: every key is released.
    assert_eq!(m.keys_forgotten, sessions as u64, "{m:?}");
    assert_eq!(m.table.len, 0, "{m:?}");
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_legacy_sse_sessions_are_learned_from_crlf_endpoint_events_and_stay_pinned() {
    let replicas = python_replicas("s", 3, PyMode::Sse).await;
    let proxy = proxy_for(&replicas).await;
    let (sessions, calls) = (12, 4);

    let lines = python_clients(&proxy.url("/sse"), "sse", sessions, calls).await;
    let owners = check_affinity(&lines, sessions, calls);
    assert!(
        distinct(&owners) >= 2,
        "sessions spread over replicas: {owners:?}"
    );

    // Each session id came from the `endpoint` event of a CRLF stream; each binding lives as
    // long as its GET stream, which the clients closed on exit.
    let mut m = proxy.proxy.metrics();
    // (Released once the proxy sees the client's stream closed: up to 10 s on a loaded box.)
    for _ in 0..500 {
        if m.keys_released == sessions as u64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        m = proxy.proxy.metrics();
    }
    assert_eq!(m.keys_learned, sessions as u64, "{m:?}");
    assert_eq!(m.bodies_observed, sessions as u64, "{m:?}");
    assert_eq!(m.keys_released, sessions as u64, "{m:?}");
    assert_eq!(m.placed, sessions as u64, "only the GETs are placed: {m:?}");
    assert_eq!(
        m.pinned,
        (sessions * (calls + 2)) as u64,
        "initialize, initialized and the calls are pinned: {m:?}"
    );
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    assert_eq!(m.table.len, 0, "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_modern_era_calls_are_placed_freely_and_nothing_is_learned() {
    let replicas = python_replicas("m", 3, PyMode::Streamable).await;
    let proxy = proxy_for(&replicas).await;
    // Stateless calls take turns over the replicas, all four clients' calls in one rotation:
    // with 6 calls a client once found all of its own on one replica by chance (CI,
    // 2026-12-03); with 12 that takes about 11 coincidences in a row.
    let (clients, calls) = (4, 12);

    let lines = python_clients(&proxy.url("/mcp"), "modern", clients, calls).await;
    let mut replies = 0;
    let mut per_client: Vec<Vec<String>> = vec![Vec::new(); clients];
    for line in &lines {
        if line.get("summary").is_some() {
            continue;
        }
        assert!(line.get("error").is_none(), "a modern call failed: {line}");
        assert_eq!(
            line["session"], "none",
            "2026-07-28 calls carry no session: {line}"
        );
        let client = line["client"].as_u64().unwrap() as usize;
        per_client[client].push(line["replica"].as_str().unwrap().to_string());
        replies += 1;
    }
    assert_eq!(replies, clients * calls);
    for (client, replicas) in per_client.iter().enumerate() {
        assert!(
            distinct(replicas) >= 2,
            "client {client}'s stateless calls were spread: {replicas:?}"
        );
    }

    let m = proxy.proxy.metrics();
    assert_eq!(m.keys_learned, 0, "{m:?}");
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    assert_eq!(m.pinned, 0, "{m:?}");
    assert_eq!(m.table.len, 0, "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tasks_get_is_pinned_to_the_replica_that_created_the_task() {
    let replicas = python_replicas("t", 3, PyMode::Streamable).await;
    let proxy = proxy_for(&replicas).await;
    let clients = 6;

    let lines = python_clients(&proxy.url("/mcp"), "tasks", clients, 1).await;
    let mut creators = Vec::new();
    let mut polls_total = 0;
    for line in &lines {
        if let Some(summary) = line.get("summary") {
            assert_eq!(summary["errors"], 0, "{lines:?}");
            continue;
        }
        assert!(line.get("error").is_none(), "a task failed: {line}");
        let task = line["task"].as_str().expect("task line");
        let creator = task.split('-').next().unwrap().to_string();
        let polls: Vec<&str> = line["polls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(polls.len() >= 2, "the task was polled: {line}");
        assert!(
            polls.iter().all(|p| *p == creator),
            "tasks/get left {creator}: {line}"
        );
        assert_eq!(line["done"], true, "{line}");
        polls_total += polls.len();
        creators.push(creator);
    }
    assert_eq!(creators.len(), clients, "{lines:?}");
    eprintln!("{clients} tasks, polled {polls_total} times in all");
    assert!(
        distinct(&creators) >= 2,
        "tasks spread over replicas: {creators:?}"
    );

    let m = proxy.proxy.metrics();
    assert_eq!(
        m.keys_learned, clients as u64,
        "one task key per CreateTaskResult: {m:?}"
    );
    assert_eq!(
        m.pinned, polls_total as u64,
        "every tasks/get pinned by Mcp-Name: {m:?}"
    );
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    proxy.shutdown().await;
}
