//! A real `redis-server` per test, on a free loopback port, that the test can pause, kill and
//! start again; fleet routers with named backends; and one-line drivers for the router's call
//! protocol.
#![allow(dead_code)] // each test file uses its own subset
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests own clocks and sockets

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode, request};
use mcp_affinity::router::{
    End, Exchange, HeadOutcome, NewBackend, Rejection, Routed, Router, RouterBuilder, SharedStore,
};
use mcp_affinity::{BackendId, TenantId};
use mcp_affinity_redis::{RedisStore, RedisStoreConfig, SyncHandle};

/// The key prefix of every test fleet.
pub const PREFIX: &str = "t";

/// A `redis-server` this test started (killed, and waited for, on drop).
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    paused: bool,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// Fails the test, loudly, when there is no `redis-server` to run.
fn require_redis_server() {
    match Command::new(binary()).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{} --version` failed ({}): these tests need a working redis-server 7.0+",
            binary(),
            out.status
        ),
        Err(e) => panic!(
            "cannot run `{}` ({e}): these tests need redis-server 7.0 or later. Install it \
             (Debian/Ubuntu: `sudo apt-get install -y redis-server`; macOS: `brew install redis`) \
             or point REDIS_SERVER at the binary",
            binary()
        ),
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server with no persistence on a free port of 127.0.0.1, and waits until it
    /// answers.
    pub fn start() -> RedisServer {
        require_redis_server();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                child: None,
                paused: false,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Spawns the server on `self.port`; whether it answers within 10 s.
    fn spawn(&mut self) -> bool {
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                // Exited: the port was taken meanwhile.
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut con) = self.try_admin() else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut con).is_ok()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_admin(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let con = client.get_connection_with_timeout(Duration::from_secs(1))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        con.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(con)
    }

    /// A plain connection of the test's own, to read and fault the server.
    pub fn admin(&self) -> redis::Connection {
        self.try_admin().expect("admin connection")
    }

    /// `GET key` through the admin connection.
    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.admin()).unwrap()
    }

    /// The keys matching `pattern` (small test stores only).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.admin())
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
                self.paused = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; retry briefly in case the kernel holds it.
        for _ in 0..10 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lookup timeout of [`fast_config`].
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(150);

/// What a loaded machine may add to a bound before the test calls it broken.
pub const SLACK: Duration = Duration::from_millis(250);

/// Settings small enough that every fault shows within a second.
pub fn fast_config() -> RedisStoreConfig {
    RedisStoreConfig::new()
        .connect_timeout(Duration::from_millis(300))
        .lookup_timeout(LOOKUP_TIMEOUT)
        .command_timeout(Duration::from_millis(300))
        .breaker_threshold(3)
        .breaker_cool_down(Duration::from_millis(300))
        .flush_every(Duration::from_millis(5))
        .lost_poll(Duration::from_millis(100))
        .shutdown_grace(Duration::from_millis(500))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fleet router sharing through the store, with backends named `names` (URLs
/// `http://<name>`), from `builder`.
pub fn fleet_router(builder: RouterBuilder, names: &[&str]) -> (Arc<Router>, Vec<BackendId>) {
    let router = builder
        .shared_store(SharedStore::new(PREFIX, Instant::now(), unix_now()))
        .build();
    let ids = names
        .iter()
        .map(|n| {
            router
                .add(NewBackend::new(TenantId::DEFAULT, &format!("http://{n}")).name(n))
                .unwrap()
        })
        .collect();
    (Arc::new(router), ids)
}

/// One router of a fleet on the server: its store and its running sync task.
pub struct Member {
    pub router: Arc<Router>,
    pub ids: Vec<BackendId>,
    pub store: RedisStore,
    pub sync: Option<SyncHandle>,
}

impl Member {
    pub async fn join(server: &RedisServer, builder: RouterBuilder, names: &[&str]) -> Member {
        Self::join_with(server, builder, names, fast_config()).await
    }

    pub async fn join_with(
        server: &RedisServer,
        builder: RouterBuilder,
        names: &[&str],
        config: RedisStoreConfig,
    ) -> Member {
        Self::join_url(&server.url(), builder, names, config).await
    }

    /// [`join_with`](Member::join_with) a server of another kind, by URL.
    pub async fn join_url(
        url: &str,
        builder: RouterBuilder,
        names: &[&str],
        config: RedisStoreConfig,
    ) -> Member {
        let (router, ids) = fleet_router(builder, names);
        let store = RedisStore::connect(url, config).await.unwrap();
        let sync = Some(store.spawn_sync(router.clone()));
        Member {
            router,
            ids,
            store,
            sync,
        }
    }

    /// Routes `request`, answering a lookup from Redis.
    pub async fn route(&self, request: &request::Parts) -> Routed {
        let routed = self.router.route(request, Instant::now());
        self.store.resolve(&self.router, routed).await
    }

    /// Waits (at most 5 s) until everything the router queued is in the store.
    pub async fn synced(&self) {
        let sync = self.sync.as_ref().expect("sync running");
        tokio::time::timeout(Duration::from_secs(5), sync.synced())
            .await
            .expect("the sync task wrote the router's queue within 5 s");
    }

    /// The fleet-wide name of one of this router's backends.
    pub fn name_of(&self, id: BackendId) -> String {
        name_of(&self.router, id)
    }

    pub async fn leave(mut self) {
        if let Some(sync) = self.sync.take() {
            sync.shutdown().await;
        }
    }
}

pub fn name_of(router: &Router, id: BackendId) -> String {
    router
        .backends()
        .into_iter()
        .find(|b| b.id == id)
        .expect("a backend of this router")
        .name
        .to_string()
}

pub fn post(headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = Request::post("/mcp");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

pub const LEGACY: (&str, &str) = ("mcp-protocol-version", "2025-11-25");
pub const MODERN: (&str, &str) = ("mcp-protocol-version", "2026-07-28");

/// The store key of the binding of Streamable HTTP session `id` (default tenant).
pub fn binding_key(id: &str) -> String {
    let kind = mcp_affinity::table::KeyKind::Session.to_u8();
    format!("{PREFIX}:b:0:{kind}:{id}")
}

/// A request of the Streamable HTTP session `id`.
pub fn session(id: &str) -> request::Parts {
    post(&[("mcp-session-id", id), LEGACY])
}

/// Answers a forwarded exchange with `status` and `headers`, and ends it.
pub fn answer(router: &Router, mut exchange: Exchange, status: u16, headers: &[(&str, &str)]) {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (mut head, _) = builder.body(()).unwrap().into_parts();
    let now = Instant::now();
    let outcome = router.on_response_head(&mut exchange, &mut head, now);
    assert!(matches!(outcome, HeadOutcome::Forward), "{outcome:?}");
    router.on_exchange_end(exchange, End::Completed, now);
}

/// Opens a session through `router`, on whichever backend it places it, minting `id`; the
/// owner.
pub fn initialize(router: &Router, id: &str) -> BackendId {
    let exchange = forward(router.route(&post(&[]), Instant::now()));
    let owner = exchange.backend();
    answer(router, exchange, 200, &[("mcp-session-id", id)]);
    owner
}

/// Opens sessions `{prefix}0`, `{prefix}1`… until one lands on `owner`; its id.
pub fn initialize_on(router: &Router, owner: BackendId, prefix: &str) -> String {
    for i in 0..64 {
        let id = format!("{prefix}{i}");
        if initialize(router, &id) == owner {
            return id;
        }
    }
    panic!("no session of 64 landed on {owner}");
}

#[track_caller]
pub fn forward(routed: Routed) -> Exchange {
    match routed {
        Routed::Forward(exchange) => exchange,
        Routed::Reject(rejection) => panic!("expected Forward, got {rejection}"),
        Routed::Lookup(lookup) => panic!("expected Forward, got {lookup:?}"),
    }
}

#[track_caller]
pub fn rejected(routed: Routed) -> Rejection {
    match routed {
        Routed::Forward(exchange) => panic!("expected Reject, got {exchange:?}"),
        Routed::Reject(rejection) => rejection,
        Routed::Lookup(lookup) => panic!("expected Reject, got {lookup:?}"),
    }
}

/// Polls `condition` every 10 ms until it holds; fails the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
