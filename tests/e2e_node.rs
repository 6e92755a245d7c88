//! End to end with the TypeScript SDK (`@modelcontextprotocol/sdk` 1.32.2): its clients against
//! rmcp servers and against its own servers (Streamable HTTP and legacy HTTP+SSE with the
//! camelCase `sessionId`), through the proxy of `examples/proxy.rs`.
//!
//! Needs `tests/e2e/setup.sh` (or `MCP_AFFINITY_NODE_DIR`) and `node`; fails, never skips,
//! without them.

#![allow(clippy::disallowed_methods)]

mod e2e;

use std::time::Duration;

use e2e::proxy::{Config, Running};
use e2e::rmcp_peers::Replica;
use e2e::{TsReplica, check_affinity, distinct, node_clients, node_replicas};

async fn proxy_for(backends: Vec<String>) -> Running {
    let config = Config {
        backends,
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    e2e::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_clients_stay_on_the_rmcp_replica_that_minted_their_session() {
    let mut replicas = Vec::new();
    for i in 1..=3 {
        replicas.push(Replica::start(&format!("r{i}")).await.expect("replica"));
    }
    let proxy = proxy_for(replicas.iter().map(Replica::url).collect()).await;
    let (sessions, calls) = (12, 4);

    let lines = node_clients(&proxy.url("/mcp"), "streamable", sessions, calls).await;
    let owners = check_affinity(&lines, sessions, calls);
    assert!(distinct(&owners) >= 2, "{owners:?}");

    let m = proxy.proxy.metrics();
    assert_eq!(m.keys_learned, sessions as u64, "{m:?}");
    // terminateSession sends DELETE (rmcp answers 202): every session is forgotten.
    assert_eq!(m.keys_forgotten, sessions as u64, "{m:?}");
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_streamable_and_legacy_sse_sessions_stay_on_typescript_replicas() {
    let replicas = node_replicas("t", 3).await;
    let proxy = proxy_for(replicas.iter().map(TsReplica::url).collect()).await;
    let (sessions, calls) = (9, 4);

    let lines = node_clients(&proxy.url("/mcp"), "streamable", sessions, calls).await;
    let owners = check_affinity(&lines, sessions, calls);
    assert!(distinct(&owners) >= 2, "{owners:?}");

    // Legacy HTTP+SSE: `endpoint` is `/messages?sessionId=<uuid>` with LF line endings.
    let lines = node_clients(&proxy.url("/sse"), "sse", sessions, calls).await;
    let owners = check_affinity(&lines, sessions, calls);
    assert!(distinct(&owners) >= 2, "{owners:?}");

    let mut m = proxy.proxy.metrics();
    // (Released once the proxy sees the client's stream closed: up to 10 s on a loaded box.)
    for _ in 0..500 {
        if m.keys_released == sessions as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = proxy.proxy.metrics();
    }
    assert_eq!(m.keys_learned, 2 * sessions as u64, "{m:?}");
    assert_eq!(
        m.keys_forgotten, sessions as u64,
        "streamable sessions DELETEd: {m:?}"
    );
    assert_eq!(
        m.keys_released, sessions as u64,
        "SSE sessions end with their stream: {m:?}"
    );
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    assert_eq!(m.table.len, 0, "{m:?}");
    proxy.shutdown().await;
}
