//! The fourth adversarial review, of the lookup's guards against a 404 for a live session
//! (the restart marker read with the key, the recovery grace): a restart from a snapshot that
//! kept the marker, a lone timeout now and then, and a store whose sync task stopped. (Its
//! fourth finding, a router whose first look finds a store that came back empty just before,
//! is a documented residual: see the crate's "Store layout".)
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests own clocks and sockets

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_affinity::router::{Routed, Router};
use mcp_affinity_redis::{Answer, RedisStore, Unavailable};

fn status_of(routed: Routed) -> StatusCode {
    match routed {
        Routed::Forward(_) => StatusCode::OK,
        Routed::Reject(r) => r.status(),
        Routed::Lookup(l) => panic!("unresolved {l:?}"),
    }
}

/// A `redis-server` with a data directory, restarted from its snapshot.
struct Persisted {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Persisted {
    fn start() -> Persisted {
        let dir = std::env::temp_dir().join(format!(
            "mcpa-attack-rdb-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Persisted {
            port: free_port(),
            dir,
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--dir",
                self.dir.to_str().unwrap(),
                "--dbfilename",
                "dump.rdb",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn admin(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Persisted {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_snapshot_that_kept_the_marker_is_seen_and_the_session_written_again() {
    let mut server = Persisted::start();
    let config = || {
        fast_config()
            .lost_poll(Duration::from_millis(200))
            .breaker_threshold(5)
            .recovery_grace(Duration::from_millis(300))
    };
    let b = Member::join_url(&server.url(), Router::builder(), &["x"], config()).await;
    let a = Member::join_url(&server.url(), Router::builder(), &["x"], config()).await;
    eventually("both polled", Duration::from_secs(3), || {
        a.store.metrics().lost_polls >= 1 && b.store.metrics().lost_polls >= 1
    })
    .await;
    let _: () = redis::cmd("SAVE").query(&mut server.admin()).unwrap(); // the marker, saved
    initialize(&b.router, "s");
    b.synced().await;

    server.kill();
    server.spawn(); // from dump.rdb: the marker, not the binding
    let key = binding_key("s");
    let written = || {
        redis::cmd("GET")
            .arg(&key)
            .query::<Option<String>>(&mut server.admin())
            .unwrap()
            .is_some()
    };
    eventually(
        "B writes the session again",
        Duration::from_secs(5),
        written,
    )
    .await;
    assert!(b.store.metrics().store_restarts >= 1);
    let status = status_of(a.route(&session("s")).await);
    assert_eq!(
        status,
        StatusCode::OK,
        "B's live session at A after the restart"
    );
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_timeout_now_and_then_does_not_keep_a_dead_key_at_503() {
    let mut server = RedisServer::start();
    let config = fast_config().recovery_grace(Duration::from_secs(1));
    let store = RedisStore::connect(&server.url(), config).await.unwrap();
    let dead = "t:b:0:2:dead";
    assert_eq!(store.lookup(dead).await, Answer::Missing);
    let mut answers = Vec::new();
    for _ in 0..4 {
        // A slow moment: one lookup times out.
        server.pause();
        assert_eq!(
            store.lookup("t:b:0:2:other").await,
            Answer::Unavailable(Unavailable::Timeout)
        );
        server.resume();
        tokio::time::sleep(Duration::from_millis(300)).await;
        answers.push(store.lookup(dead).await);
    }
    assert!(
        answers.iter().all(|a| *a == Answer::Missing),
        "a dead key is 404 between slow moments: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_sync_task_stopped_stops_comparing_the_marker() {
    let server = RedisServer::start();
    let config = fast_config().recovery_grace(Duration::from_millis(300));
    let b = Member::join_with(&server, Router::builder(), &["x"], config).await;
    eventually("b polled", Duration::from_secs(3), || {
        b.store.metrics().lost_polls >= 1
    })
    .await;
    let store = b.store.clone();
    b.leave().await;
    let _: () = redis::cmd("FLUSHALL").query(&mut server.admin()).unwrap();
    let c = Member::join(&server, Router::builder(), &["y"]).await; // sets a new marker
    eventually("c polled", Duration::from_secs(3), || {
        c.store.metrics().lost_polls >= 1
    })
    .await;
    assert_eq!(store.lookup("t:b:0:2:dead").await, Answer::Missing);
    c.leave().await;
}
