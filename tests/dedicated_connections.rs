//! The backend connections the proxy dedicates to keep-alive client connections
//! (`examples/common/dedicated.rs`, issue #13): when they open and serve, their bound, their
//! idle timeout, backends that close them or die under them, pipelining clients. Most were
//! written by an adversarial review; three of them failed before its findings were fixed.

#![allow(clippy::disallowed_methods)]

mod e2e;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::proxy::{Config, Running};

/// A backend with no keep-alive timeout of its own (like hyper's, axum's, rmcp's): `/slow`
/// answers after 300 ms, `/close` with `Connection: close`, anything else at once; every
/// answer is the address of the backend connection it came on. Counts accepted and open
/// connections.
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

async fn backend() -> Backend {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (a, o) = (accepted.clone(), open.clone());
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, peer)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let slow = req.uri().path() == "/slow";
                let close = req.uri().path() == "/close";
                let path = req.uri().to_string();
                let fresh = !req.headers().contains_key("mcp-session-id");
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let body =
                        http_body_util::Full::new(bytes::Bytes::from(format!("{peer} {path}")));
                    let mut response = http::Response::new(body);
                    if close {
                        let close = http::HeaderValue::from_static("close");
                        response.headers_mut().insert("connection", close);
                    }
                    if fresh {
                        let id = format!("s-{}-{}", addr.port(), peer.port());
                        response
                            .headers_mut()
                            .insert("mcp-session-id", id.parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            /// Counts the connection open until its task ends or is aborted.
            struct Open(Arc<AtomicUsize>);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let open = Open(o.clone());
            connections.spawn(async move {
                let _open = open;
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend {
        addr,
        accepted,
        open,
        server,
    }
}

/// The proxy's configuration in front of `backends`, with no health checks (the tests decide
/// when a backend is down).
fn config_for(backends: &[&Backend]) -> Config {
    Config {
        backends: backends
            .iter()
            .map(|b| format!("http://{}", b.addr))
            .collect(),
        health_interval: None,
        ..Config::default()
    }
}

struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    connection: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        KeepAlive { sender, connection }
    }

    /// The backend connection the answer came on.
    async fn call(&mut self, path: &str) -> String {
        self.call_in(path, None).await.0
    }

    /// POSTs `{}` to `path`, in `session` if any: the answer, whatever its status.
    async fn post(
        &mut self,
        path: &str,
        session: Option<&str>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        self.sender.ready().await.expect("open");
        let mut request = http::Request::post(path).header("host", "proxy.test");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        self.sender.send_request(request).await
    }

    /// The backend connection the answer came on, and the session id it gave.
    async fn call_in(&mut self, path: &str, session: Option<&str>) -> (String, Option<String>) {
        use http_body_util::BodyExt;
        let response = self.post(path, session).await.expect("an answer");
        assert_eq!(response.status(), 200, "{path}");
        let id = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        (body.split(' ').next().unwrap().to_owned(), id)
    }

    async fn calls(&mut self, n: usize, path: &str) -> Vec<String> {
        let mut peers = Vec::new();
        for _ in 0..n {
            peers.push(self.call(path).await);
        }
        peers
    }

    fn close(self) {
        drop(self.sender);
        self.connection.abort();
    }
}

/// A dedicated connection idle for the timeout is closed, and gives its place in the bound
/// back, while its client connection stays open (before the review's fix it stayed open,
/// and other clients were refused one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_dedicated_connection_closes_and_gives_its_place_back() {
    let backend = backend().await;
    let config = Config {
        pool_idle_timeout: Duration::from_millis(200),
        dedicated_connections: 1,
        ..config_for(&[&backend])
    };
    let running = Running::start(&config).await.expect("the proxy starts");
    let mut idle = KeepAlive::open(running.addr).await;
    let peers = idle.calls(5, "/done").await;
    eprintln!("idle client: {peers:?}");
    assert_eq!(running.proxy.dedicated_connections(), 1);
    // Idle for 10x the timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (dedicated, open) = (
        running.proxy.dedicated_connections(),
        backend.open.load(Ordering::SeqCst),
    );
    eprintln!("after 2 s idle: dedicated {dedicated}, backend connections open {open}");
    // A busy client now finds the bound taken by the idle one.
    let mut busy = KeepAlive::open(running.addr).await;
    let busy_peers = busy.calls(6, "/done").await;
    eprintln!("busy client: {busy_peers:?}");
    let busy_got_one = busy_peers[2..].iter().all(|p| p == &busy_peers[2])
        && !busy_peers[..2].contains(&busy_peers[2]);
    idle.close();
    busy.close();
    backend.server.abort();
    running.shutdown().await;
    assert_eq!(
        dedicated, 0,
        "an idle dedicated connection is still open after 2 s"
    );
    assert!(busy_got_one, "{busy_peers:?}");
}

/// Requests slower than the idle timeout: the dedicated connection opened for them idles out
/// before it can serve, and the client connection opens no other (before the fix, every
/// request opened one that was never used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_idle_timeout_open_no_connection_per_request() {
    let backend = backend().await;
    let config = Config {
        pool_idle_timeout: Duration::from_millis(200),
        ..config_for(&[&backend])
    };
    let running = Running::start(&config).await.expect("the proxy starts");
    let mut client = KeepAlive::open(running.addr).await;
    let peers = client.calls(8, "/slow").await;
    let accepted = backend.accepted.load(Ordering::SeqCst);
    let distinct: std::collections::BTreeSet<_> = peers.iter().collect();
    eprintln!(
        "8 slow calls: {} backend connection(s) used, {accepted} accepted",
        distinct.len()
    );
    client.close();
    backend.server.abort();
    running.shutdown().await;
    assert!(
        accepted <= distinct.len() + 1,
        "{accepted} backend connections accepted for 8 sequential requests on {} connection(s)",
        distinct.len()
    );
}

/// A client that pipelines requests on a connection whose dedicated backend connection is
/// open: every answer comes back, in order, each from the backend it asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = backend().await;
    let config = config_for(&[&backend]);
    let running = Running::start(&config).await.expect("the proxy starts");
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let request = |i: usize, last: bool| {
        format!(
            "POST /p?i={i} HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 2\r\n{}\r\n{{}}",
            if last { "connection: close\r\n" } else { "" }
        )
    };
    // Two alone (the second opens the dedicated connection), then twelve in one write.
    let mut all = String::new();
    for i in 0..2 {
        stream
            .write_all(request(i, false).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 2..14 {
        all.push_str(&request(i, i == 13));
    }
    stream.write_all(all.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
        .await
        .expect("all answered")
        .unwrap();
    let order: Vec<_> = out
        .match_indices("/p?i=")
        .map(|(at, _)| {
            out[at + 5..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .collect();
    let peers: std::collections::BTreeSet<_> = out
        .match_indices("127.0.0.1:")
        .map(|(at, _)| out[at..at + 15].to_owned())
        .collect();
    eprintln!("order {order:?}, backend connections {peers:?}");
    backend.server.abort();
    running.shutdown().await;
    assert_eq!(order, (0..14).collect::<Vec<_>>());
}

/// A client connection that carries two sessions on two backends (a gateway multiplexing
/// sessions over a few keep-alive connections) in the order A A B B A A ...: switching opens
/// no connection per switch (before the fix, every second request opened one and closed the
/// last, unused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_in_pairs_open_no_connection_per_switch() {
    let (a, b) = (backend().await, backend().await);
    let config = config_for(&[&a, &b]);
    let running = Running::start(&config).await.expect("the proxy starts");
    let mut client = KeepAlive::open(running.addr).await;
    // One session on each backend (the id names the backend's port).
    let mut sessions = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let (_, id) = client.call_in("/mcp", None).await;
        let id = id.expect("a session");
        sessions.insert(id.split('-').nth(1).unwrap().to_owned(), id);
        if sessions.len() == 2 {
            break;
        }
    }
    let ids: Vec<String> = sessions.values().cloned().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let before = a.accepted.load(Ordering::SeqCst) + b.accepted.load(Ordering::SeqCst);
    let mut used = std::collections::BTreeSet::new();
    for round in 0..10 {
        let id = &ids[round % 2];
        for _ in 0..2 {
            used.insert(client.call_in("/mcp", Some(id)).await.0);
        }
    }
    let after = a.accepted.load(Ordering::SeqCst) + b.accepted.load(Ordering::SeqCst);
    eprintln!(
        "20 requests: {} backend connections used, {} accepted during them, dedicated open {}",
        used.len(),
        after - before,
        running.proxy.dedicated_connections()
    );
    client.close();
    a.server.abort();
    b.server.abort();
    running.shutdown().await;
    assert!(
        after - before <= 2,
        "{} connections opened for 20 requests",
        after - before
    );
}

/// Two backends behind the proxy, and a keep-alive client with a session on one of them (its
/// `owner`) that has a dedicated connection.
struct PinnedSession {
    backends: [Backend; 2],
    owner: usize,
    running: Running,
    client: KeepAlive,
    id: String,
}

impl PinnedSession {
    async fn start() -> PinnedSession {
        let backends = [backend().await, backend().await];
        let config = config_for(&[&backends[0], &backends[1]]);
        let running = Running::start(&config).await.expect("the proxy starts");
        let mut client = KeepAlive::open(running.addr).await;
        let (_, id) = client.call_in("/mcp", None).await;
        let id = id.expect("a session");
        for _ in 0..4 {
            client.call_in("/mcp", Some(&id)).await;
        }
        assert_eq!(running.proxy.dedicated_connections(), 1);
        // The id names its backend's port.
        let port = id.split('-').nth(1).unwrap();
        let owner = backends
            .iter()
            .position(|b| b.addr.port().to_string() == port)
            .expect("an owner");
        PinnedSession {
            backends,
            owner,
            running,
            client,
            id,
        }
    }

    async fn stop(self) {
        self.client.close();
        for backend in &self.backends {
            backend.server.abort();
        }
        self.running.shutdown().await;
    }
}

/// A backend killed while a client's dedicated connection to it is idle (and the client sends
/// at once): its pinned session gets a prompt 404, never a 502 or a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_gives_404_on_a_dedicated_connection() {
    let mut statuses = Vec::new();
    for round in 0..10 {
        let mut pinned = PinnedSession::start().await;
        let owner = &mut pinned.backends[pinned.owner];
        owner.server.abort();
        // Dead: its listener and every connection closed.
        let _ = (&mut owner.server).await;
        while owner.open.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = pinned.id.clone();
        let response = pinned.client.post("/mcp", Some(&id)).await.unwrap();
        statuses.push(response.status().as_u16());
        pinned.stop().await;
    }
    eprintln!("{statuses:?}");
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
}

/// The same, killed while the request runs on the dedicated connection: 404 (the layer's
/// refusal check), as through the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_request_on_a_dedicated_connection_gives_404() {
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut pinned = PinnedSession::start().await;
        let id = pinned.id.clone();
        let owner = &pinned.backends[pinned.owner].server;
        let answer = pinned.client.post("/slow", Some(&id));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            owner.abort();
        };
        let (response, ()) = tokio::join!(answer, kill);
        statuses.push(response.unwrap().status().as_u16());
        pinned.stop().await;
    }
    eprintln!("{statuses:?}");
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
}

/// Waits up to 5 s for the proxy to hold `n` dedicated backend connections.
async fn dedicated_become(running: &Running, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running.proxy.dedicated_connections() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "dedicated connections: {} (expected {n})",
            running.proxy.dedicated_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_client_gets_a_backend_connection_of_its_own_within_the_bound() {
    let backend = backend().await;
    let config = Config {
        backends: vec![format!("http://{}", backend.addr)],
        dedicated_connections: 1,
        ..Config::default()
    };
    let running = Running::start(&config).await.expect("the proxy starts");
    let mut first = KeepAlive::open(running.addr).await;
    let peers = first.calls(7, "/done").await;
    // The first two go through the pool; the second opens a connection of the client
    // connection's own, which serves the rest from the next (or, if the connect was slower
    // than the client, the one after).
    let own = &peers[3];
    assert!(
        peers[3..].iter().all(|p| p == own) && !peers[..2].contains(own),
        "{peers:?}"
    );
    assert_eq!(running.proxy.dedicated_connections(), 1);
    // The bound is 1: a second client connection goes through the pool, never past it.
    let mut second = KeepAlive::open(running.addr).await;
    let others = second.calls(5, "/done").await;
    assert!(!others.contains(own), "{others:?} share {own}");
    assert_eq!(running.proxy.dedicated_connections(), 1);
    // The first client goes, and its backend connection with it; then the second one's
    // next requests get theirs.
    first.close();
    dedicated_become(&running, 0).await;
    let later = second.calls(4, "/done").await;
    assert!(
        later[2..].iter().all(|p| p == &later[2]) && *own != later[2],
        "{later:?}"
    );
    assert_eq!(running.proxy.dedicated_connections(), 1);
    second.close();
    dedicated_become(&running, 0).await;
    backend.server.abort();
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_or_idles_out_dedicated_connections_loses_no_request() {
    let backend = backend().await;
    let config = Config {
        backends: vec![format!("http://{}", backend.addr)],
        pool_idle_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let running = Running::start(&config).await.expect("the proxy starts");
    let mut client = KeepAlive::open(running.addr).await;
    // A backend that closes the connection after every answer: each request finds the
    // dedicated connection closed (or closing: hyper gives an unsent request back, and it
    // goes through the pool). None fails, and each came on a connection of its own.
    let peers = client.calls(12, "/close").await;
    let distinct: std::collections::BTreeSet<_> = peers.iter().collect();
    assert_eq!(distinct.len(), peers.len(), "{peers:?}");
    // Idle past the pool's timeout, a dedicated connection is replaced, never used: the
    // backend may be closing it.
    let peers = client.calls(4, "/done").await;
    let own = peers[3].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = client.calls(4, "/done").await;
    assert!(
        !after.contains(&own),
        "{own} reused after idling: {after:?}"
    );
    client.close();
    dedicated_become(&running, 0).await;
    backend.server.abort();
    running.shutdown().await;
}
