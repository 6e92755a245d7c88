//! Two proxies of `examples/proxy.rs` sharing a real `redis-server` (`--redis`), in front of
//! the same `rmcp` replicas: a session opened through one is served through the other; while
//! Redis is paused, a session the second proxy does not know gets 503 + `Retry-After` (never
//! 404), and it is served once Redis is back. With `--seal-key-file` too, sessions need no
//! Redis at all.
//!
//! Needs `redis-server` 7.0+ (the test fails, saying how to install it, when it is missing).

#![allow(clippy::disallowed_methods)]

mod e2e;
#[path = "../mcp-affinity-redis/tests/common/mod.rs"]
mod redis_harness;

use std::time::Duration;

use e2e::proxy::{Config, Running};
use e2e::rmcp_peers::Replica;
use e2e::{admin, raw_client, raw_post, raw_session, raw_whoami};
use redis_harness::{RedisServer, eventually};

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;

/// Two proxies on `server` for `replicas`, naming them alike but listing them in opposite
/// orders.
async fn two_proxies(
    server: &RedisServer,
    replicas: &[Replica],
    seal_key_file: Option<std::path::PathBuf>,
) -> (Running, Running) {
    let named: Vec<String> = replicas
        .iter()
        .map(|r| format!("{}={}", r.name, r.url()))
        .collect();
    let config = |backends: Vec<String>| Config {
        backends,
        redis: Some(server.url()),
        redis_prefix: "e2e".into(),
        seal_key_file: seal_key_file.clone(),
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let first = Running::start(&config(named.clone())).await.unwrap();
    let second = Running::start(&config(named.into_iter().rev().collect()))
        .await
        .unwrap();
    (first, second)
}

fn binding_of(session: &str) -> String {
    format!("e2e:b:0:2:{session}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_sharing_redis_serve_each_others_sessions_and_answer_503_while_it_is_paused() {
    let mut server = RedisServer::start();
    let replicas = vec![
        Replica::start("r1").await.unwrap(),
        Replica::start("r2").await.unwrap(),
    ];
    let (p1, p2) = two_proxies(&server, &replicas, None).await;
    let client = raw_client();

    let s1 = raw_session(&client, &p1.url("/mcp")).await;
    let (status, reply, body) = raw_whoami(&client, &p1.url("/mcp"), &s1).await;
    assert_eq!(status, 200, "{body}");
    let owner = reply.unwrap().replica;
    eventually("p1 writes the binding", Duration::from_secs(5), || {
        server.get(&binding_of(&s1)).is_some()
    })
    .await;
    // The other proxy finds the owner in Redis: the session's calls go on there.
    let (status, reply, body) = raw_whoami(&client, &p2.url("/mcp"), &s1).await;
    assert_eq!(status, 200, "{body}");
    let reply = reply.unwrap();
    assert_eq!((reply.replica.as_str(), reply.count), (owner.as_str(), 2));

    server.pause();
    // New sessions start; p2, which has never seen this one, answers 503 + Retry-After.
    let s2 = raw_session(&client, &p1.url("/mcp")).await;
    let (status, headers, body) = raw_post(&client, &p2.url("/mcp"), Some(&s2), CALL).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // What p2 knows keeps routing.
    let (status, _, body) = raw_whoami(&client, &p2.url("/mcp"), &s1).await;
    assert_eq!(status, 200, "{body}");

    server.resume();
    eventually(
        "p1's queued bind reaches Redis",
        Duration::from_secs(10),
        || server.get(&binding_of(&s2)).is_some(),
    )
    .await;
    let (status, reply, body) = raw_whoami(&client, &p1.url("/mcp"), &s2).await;
    assert_eq!(status, 200, "{body}");
    let owner2 = reply.unwrap().replica;
    let (status, reply, body) = raw_whoami(&client, &p2.url("/mcp"), &s2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reply.unwrap().replica, owner2);

    let (status, metrics) = admin(&p2.admin_url("/metrics.json"), "GET").await;
    assert_eq!(status, 200);
    let store = &metrics["store"];
    assert_eq!(store["found"], 2, "{store}");
    assert!(store["unavailable"].as_u64() >= Some(1), "{store}");
    assert_eq!(store["circuit"], "Closed", "{store}");
    p1.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sealing_too_sessions_need_no_redis() {
    let mut server = RedisServer::start();
    let replicas = vec![
        Replica::start("r1").await.unwrap(),
        Replica::start("r2").await.unwrap(),
    ];
    let keys = std::env::temp_dir().join(format!("mcpa-proxy-redis-{}.keys", std::process::id()));
    std::fs::write(&keys, format!("{}\n", "5e".repeat(32))).unwrap();
    let (p1, p2) = two_proxies(&server, &replicas, Some(keys.clone())).await;
    let client = raw_client();
    let s1 = raw_session(&client, &p1.url("/mcp")).await;
    // Redis is not asked: the sealed id carries its owner to p2 while Redis is paused.
    server.pause();
    let (status, reply, body) = raw_whoami(&client, &p2.url("/mcp"), &s1).await;
    assert_eq!(status, 200, "{body}");
    let (status, again, body) = raw_whoami(&client, &p1.url("/mcp"), &s1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reply.unwrap().replica, again.unwrap().replica);
    server.resume();
    assert!(
        server.keys("e2e:b:*").is_empty(),
        "no session binding in Redis"
    );
    let (_, metrics) = admin(&p2.admin_url("/metrics.json"), "GET").await;
    assert_eq!(metrics["store"]["lookups"], 0, "{}", metrics["store"]);
    p1.shutdown().await;
    p2.shutdown().await;
    let _ = std::fs::remove_file(keys);
}
