//! The backend connections the proxy dedicates to keep-alive client connections
//! (`examples/common/dedicated.rs`, issue #13): when they open and serve, their bound, their
//! idle timeout, backends that close them or die under them, pipelining clients. Most were
//! written by an adversarial review; three of them failed before its findings were fixed.

#![allow(clippy::disallowed_methods)]

mod e2e;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// The proxy in front of the one backend at `addr`, with no health checks.
async fn proxy_in_front_of(addr: SocketAddr) -> Running {
    let config = Config {
        backends: vec![format!("http://{addr}")],
        health_interval: None,
        ..Config::default()
    };
    Running::start(&config).await.expect("the proxy starts")
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
    // Its own connection serves from its third request, or (a connect slower than the
    // client) from its fourth.
    let busy_got_one = busy_peers[3..].iter().all(|p| p == &busy_peers[3])
        && !busy_peers[..2].contains(&busy_peers[3]);
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.proxy.dedicated_connections() != n {
        assert!(
            Instant::now() < deadline,
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

/// A backend written by hand, to shape its answers' writes: on every connection it answers
/// each request (headers, then a `content-length` body) by its path. `/split`: an event
/// stream's head and first chunk, 30 ms later its last chunk and the end of the body in one
/// write. `/cut`: the same, but the connection closes after the last chunk, with no end of
/// body. `/length`: a `content-length` body in two writes, 30 ms apart.
async fn shaping_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            connections.spawn(async move {
                let mut buffer = Vec::new();
                while let Some(path) = read_request(&mut stream, &mut buffer).await {
                    let pause = || tokio::time::sleep(Duration::from_millis(30));
                    let events = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                  transfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n";
                    let written = match path.as_str() {
                        "/split" => {
                            let _ = stream.write_all(events.as_bytes()).await;
                            pause().await;
                            stream.write_all(b"b\r\ndata: two\n\n\r\n0\r\n\r\n").await
                        }
                        "/cut" => {
                            let _ = stream.write_all(events.as_bytes()).await;
                            pause().await;
                            let _ = stream.write_all(b"b\r\ndata: two\n\n\r\n").await;
                            return;
                        }
                        _ => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nhalf";
                            let _ = stream.write_all(head.as_bytes()).await;
                            pause().await;
                            stream.write_all(b"half").await
                        }
                    };
                    if written.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, server)
}

/// Reads one request (its head, and a `content-length` body) off `stream`, after what
/// `buffer` holds already: its path (`None`: the connection closed first).
async fn read_request(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut read = async |buffer: &mut Vec<u8>| {
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
        Some(())
    };
    let end = loop {
        match buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => break end,
            None => read(buffer).await?,
        }
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buffer.len() < end + 4 + length {
        read(buffer).await?;
    }
    buffer.drain(..end + 4 + length);
    Some(head.split(' ').nth(1).unwrap_or("").to_owned())
}

/// Reads one answer off `stream` (up to the end of a chunked body, or `length` bytes of
/// body), as the reads that brought it.
async fn read_answer(stream: &mut tokio::net::TcpStream, length: Option<usize>) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut reads = Vec::new();
    let mut all = String::new();
    let complete = |all: &str| match (all.find("\r\n\r\n"), length) {
        (Some(end), Some(length)) => all.len() >= end + 4 + length,
        (Some(_), None) => all.ends_with("\r\n0\r\n\r\n"),
        (None, _) => false,
    };
    while !complete(&all) {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the answer comes")
            .unwrap();
        assert!(n > 0, "closed mid-answer after {reads:?}");
        let read = String::from_utf8_lossy(&chunk[..n]).into_owned();
        all.push_str(&read);
        reads.push(read);
    }
    reads
}

/// The write system calls this thread has made (Linux's `/proc/thread-self/io`; `None`
/// elsewhere). Not the process's: the other tests of this file run on other threads at the
/// same time, and their writes counted too.
fn writes_so_far() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:")?.trim().parse().ok())
}

/// When a backend writes an answer's last chunk and the end of its body together, the proxy
/// passes them on together: one write, so one read and one wake-up at the client. Before
/// the look ahead (`LookAhead` in `examples/common/dedicated.rs`), the end of the body went
/// in a write of its own once the client connection had been polled again.
///
/// A client cannot tell TCP segments apart, so the test counts the write system calls of its
/// thread (the client, the proxy and the backend all run on it, in one runtime): an
/// event stream answer (`/split`) takes as many as a `content-length` one written in the same
/// two pieces (`/length`), where it took one more before. Each answer arrives whole and
/// unchanged.
#[tokio::test(flavor = "current_thread")]
async fn an_answers_last_chunk_reaches_the_client_with_the_end_of_its_body() {
    use tokio::io::AsyncWriteExt;
    let (addr, server) = shaping_backend().await;
    let running = proxy_in_front_of(addr).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let request = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 2\r\n\r\n{{}}")
    };
    let (mut split, mut length) = (Vec::new(), Vec::new());
    for i in 0..16 {
        // The second request opens the dedicated connection; from the fourth on, it serves
        // (the writes are counted from the seventh: the first ones also open connections).
        let path = if i % 2 == 0 { "/split" } else { "/length" };
        let before = writes_so_far();
        stream.write_all(request(path).as_bytes()).await.unwrap();
        let reads = read_answer(&mut stream, (path == "/length").then_some(8)).await;
        let writes = before.zip(writes_so_far()).map(|(b, a)| a - b);
        let all = reads.concat();
        let body = &all[all.find("\r\n\r\n").unwrap() + 4..];
        if path == "/length" {
            assert_eq!(body, "halfhalf", "{reads:?}");
            length.extend(writes.filter(|_| i >= 6));
        } else {
            // Chunk sizes in hex, of either case.
            assert_eq!(
                body.to_ascii_lowercase(),
                "b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n",
                "{reads:?}"
            );
            split.extend(writes.filter(|_| i >= 6));
        }
    }
    assert_eq!(running.proxy.dedicated_connections(), 1);
    server.abort();
    running.shutdown().await;
    if cfg!(target_os = "linux") {
        assert_eq!(split.len(), 5);
        assert_eq!(split, length, "write system calls per answer");
    }
}

/// A backend that closes its connection after an answer's last chunk, without the end of
/// the body: looking ahead finds the failure, and the client never gets an answer that looks
/// complete (the proxy closes the client connection instead of ending the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_on_a_dedicated_connection_never_looks_complete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, server) = shaping_backend().await;
    let running = proxy_in_front_of(addr).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let request = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 2\r\n\r\n{{}}")
    };
    for _ in 0..4 {
        stream
            .write_all(request("/length").as_bytes())
            .await
            .unwrap();
        read_answer(&mut stream, Some(8)).await;
    }
    assert_eq!(running.proxy.dedicated_connections(), 1);
    stream.write_all(request("/cut").as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: one"), "{rest:?}");
    assert!(
        !rest.contains("\r\n0\r\n"),
        "a cut answer ended cleanly: {rest:?}"
    );
    server.abort();
    running.shutdown().await;
}

/// A backend written by hand whose event stream the test writes: each answer says the number
/// of the backend connection it came on (`x-conn`); `/events` is an event stream's head,
/// then what is sent on the returned channel, each message in one write, until one that ends
/// the body; anything else, a `content-length` body.
async fn stepping_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (writes, to_write) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let to_write = Arc::new(tokio::sync::Mutex::new(to_write));
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        let mut conn = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            conn += 1;
            let to_write = to_write.clone();
            connections.spawn(async move {
                let mut buffer = Vec::new();
                while let Some(path) = read_request(&mut stream, &mut buffer).await {
                    let head = if path == "/events" {
                        "content-type: text/event-stream\r\ntransfer-encoding: chunked"
                    } else {
                        "content-length: 2"
                    };
                    let head = format!("HTTP/1.1 200 OK\r\nx-conn: {conn}\r\n{head}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if path != "/events" {
                        if stream.write_all(b"{}").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let mut to_write = to_write.lock().await;
                    while let Some(write) = to_write.recv().await {
                        if stream.write_all(&write).await.is_err() {
                            return;
                        }
                        if write.ends_with(b"\r\n0\r\n\r\n") {
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, writes, server)
}

/// Reads off `stream` into `all` until `what` is in it after `from`.
async fn read_until(stream: &mut tokio::net::TcpStream, all: &mut String, from: usize, what: &str) {
    use tokio::io::AsyncReadExt;
    while !all[from..].contains(what) {
        let mut chunk = [0; 4096];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk));
        let n = read
            .await
            .unwrap_or_else(|_| panic!("{what:?} did not come: {all:?}"))
            .unwrap();
        assert!(n > 0, "closed: {all:?}");
        all.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

/// An event stream on a dedicated connection: each event reaches the client before the
/// backend writes the next (looking ahead never waits for what comes next), and twenty
/// chunks written with the end of the body in one write arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_on_a_dedicated_connection_passes_each_event_as_it_comes() {
    use tokio::io::AsyncWriteExt;
    let (addr, writes, server) = stepping_backend().await;
    let running = proxy_in_front_of(addr).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let mut all = String::new();
    let request = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 2\r\n\r\n{{}}")
    };
    // The second request opens the dedicated connection; the fourth goes on it.
    for _ in 0..4 {
        let from = all.len();
        stream.write_all(request("/mcp").as_bytes()).await.unwrap();
        read_until(&mut stream, &mut all, from, "\r\n\r\n{}").await;
    }
    assert_eq!(running.proxy.dedicated_connections(), 1);
    let dedicated = all[all.rfind("x-conn: ").unwrap()..]
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let from = all.len();
    stream
        .write_all(request("/events").as_bytes())
        .await
        .unwrap();
    // Twelve bytes of event each.
    let chunk = |i: usize| format!("c\r\ndata: {i:04}\n\n\r\n");
    for i in 0..20 {
        writes.send(chunk(i).into_bytes()).unwrap();
        read_until(&mut stream, &mut all, from, &format!("data: {i:04}")).await;
    }
    let last: String = (20..40).map(chunk).collect();
    writes
        .send(format!("{last}0\r\n\r\n").into_bytes())
        .unwrap();
    read_until(&mut stream, &mut all, from, "\r\n0\r\n\r\n").await;
    let answer = &all[from..];
    assert!(
        answer.contains(&dedicated),
        "not on the dedicated connection: {answer:?}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let expected: String = (0..40).map(chunk).collect();
    assert_eq!(body.to_ascii_lowercase(), format!("{expected}0\r\n\r\n"));
    server.abort();
    running.shutdown().await;
}

/// Steers which of the threads of [`Proxy::serve_on_threads`] accepts, through the shutdown
/// future it makes for each: a thread that polls its own while [`hold`](Steering::hold)
/// names it blocks there (it accepts nothing, and drives none of its connections) until
/// `hold` names another.
///
/// [`Proxy::serve_on_threads`]: e2e::proxy::Proxy::serve_on_threads
#[derive(Default)]
struct Steering {
    state: std::sync::Mutex<Steered>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct Steered {
    /// The thread to block.
    held: Option<usize>,
    /// The thread blocked now.
    blocked: Option<usize>,
    stop: bool,
    /// Each thread's waker, by the order its shutdown future was made in.
    wakers: Vec<Option<std::task::Waker>>,
}

impl Steering {
    /// The next thread's shutdown future: it completes on [`stop`](Steering::stop).
    fn shutdown(self: &Arc<Self>) -> impl Future<Output = ()> + Send + use<> {
        let steering = self.clone();
        let thread = {
            let mut state = steering.state.lock().unwrap();
            state.wakers.push(None);
            state.wakers.len() - 1
        };
        std::future::poll_fn(move |cx| {
            let mut state = steering.state.lock().unwrap();
            while state.held == Some(thread) {
                state.blocked = Some(thread);
                steering.changed.notify_all();
                state = steering.changed.wait(state).unwrap();
            }
            if state.blocked == Some(thread) {
                state.blocked = None;
            }
            if state.stop {
                return std::task::Poll::Ready(());
            }
            state.wakers[thread] = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
    }

    /// Blocks `thread` (`None`: none; the one held goes on), and waits until it is blocked.
    async fn hold(&self, thread: Option<usize>) {
        let waker = {
            let mut state = self.state.lock().unwrap();
            state.held = thread;
            self.changed.notify_all();
            thread.and_then(|t| state.wakers[t].clone())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        let blocked = async {
            while self.state.lock().unwrap().blocked != thread {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "thread {thread:?} not blocked: {:?}",
                    self.state.lock().unwrap().blocked
                )
            });
    }

    /// Completes every thread's shutdown future.
    fn stop(&self) {
        let mut state = self.state.lock().unwrap();
        state.stop = true;
        for waker in state.wakers.iter().flatten() {
            waker.wake_by_ref();
        }
    }
}

/// `config`'s proxy served on two threads of its own (`Proxy::serve_on_threads`), each of
/// whose shutdown futures the returned [`Steering`] can hold or complete.
/// How many connections wait in the accept queue of the IPv4 listener on `addr` (Linux:
/// `/proc/net/tcp`, whose receive queue of a listening socket is its accept backlog).
fn accept_queue(addr: SocketAddr) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A");
        if !listening || !fields.get(1)?.ends_with(&local) {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        usize::from_str_radix(rx, 16).ok()
    })
}

async fn on_two_steered_threads(config: &Config) -> (Running, Arc<Steering>) {
    let steering = Arc::new(Steering::default());
    let steer = steering.clone();
    let running = Running::start_serving(config, move |proxy, listener, _| {
        let listener = listener.into_std().unwrap();
        let two = std::num::NonZeroUsize::new(2).unwrap();
        proxy
            .serve_on_threads(listener, two, move || steer.shutdown())
            .unwrap()
    })
    .await
    .expect("the proxy starts");
    (running, steering)
}

/// With `--threads`, each thread has a pool of backend connections of its own (a pooled
/// connection is driven by the runtime that opened it, and a request of another thread on
/// it would cross threads twice), and a request in flight when the proxy stops is answered.
/// Before each thread had its own pool, a thread with nothing in flight could also drop its
/// runtime at once, and with it a pooled connection carrying another thread's request: the
/// client got a 400 "request body failed" (an adversarial review's finding; every thread
/// now keeps its runtime until all have drained).
///
/// Deterministic: thread 0 is held while the first client connection comes, so thread 1
/// accepts it and opens a pooled connection; then thread 1 is held while the second comes,
/// so thread 0 accepts it, and sends its slow request on a pooled connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_thread_has_its_own_pool_and_answers_what_is_in_flight_on_shutdown() {
    let backend = backend().await;
    let config = config_for(&[&backend]);
    let (running, steering) = on_two_steered_threads(&config).await;
    steering.hold(Some(0)).await;
    let mut first = KeepAlive::open(running.addr).await;
    let pooled = first.call("/fast").await;
    steering.hold(Some(1)).await;
    let mut second = KeepAlive::open(running.addr).await;
    let slow = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let response = second.post("/slow", None).await.expect("an answer");
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), second)
    });
    // Thread 0 accepts the connection and sends the request on a pooled connection of its own
    // (the backend's second; with one pool for both threads, it never comes, and the check
    // below fails); the backend answers 300 ms later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.accepted.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    steering.hold(None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    steering.stop();
    let (status, body, second) = slow.await.unwrap();
    first.close();
    second.close();
    backend.server.abort();
    running.shutdown().await;
    assert_eq!(status, 200, "{body}");
    // Not on the pooled connection thread 1 opened, though it was idle.
    assert_ne!(body.split(' ').next(), Some(pooled.as_str()), "{body}");
}

/// With `--threads`, connections are shared evenly however they arrive: a thread that
/// accepts one while it has more open than another hands it to the one with fewest. Every
/// thread is woken by a new connection and the first to accept it gets it, so without the
/// hand-over a burst often lands mostly on one thread (in one run of the hop benchmark's load,
/// the two threads' CPU times were 210 and 405 ticks).
///
/// Deterministic: thread 1 is held while four connections come, so thread 0 accepts them
/// all and hands two over; then thread 0 is held, and exactly two of the four are answered
/// until it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_shared_evenly_between_the_threads() {
    let backend = backend().await;
    let config = config_for(&[&backend]);
    let (running, steering) = on_two_steered_threads(&config).await;
    steering.hold(Some(1)).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(KeepAlive::open(running.addr).await);
    }
    // Thread 0 accepts them all (the listener's accept queue empties), and hands two over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accept_queue(running.addr) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "thread 0 did not accept within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    steering.hold(Some(0)).await;
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let peer = client.call("/fast").await;
                client.close();
                peer
            })
        })
        .collect();
    // Two are answered (however slow the machine); the other two wait for thread 0.
    let finished = || calls.iter().filter(|call| call.is_finished()).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while finished() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered = finished();
    steering.hold(None).await;
    for call in calls {
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("answered once thread 0 goes on")
            .unwrap();
    }
    steering.stop();
    backend.server.abort();
    running.shutdown().await;
    assert_eq!(answered, 2, "answered while thread 0 was held");
}

/// A client whose request body fails on the way (it promises 100,000 bytes, more than the
/// layer keeps to place a request again, so the body streams to the backend; it sends 10 and
/// shuts its side) gets 400 "request body failed", on a dedicated connection as through the
/// pool: the failure is the client's, not the backend's (a 502 would blame the backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_cut_by_its_client_gets_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, server) = shaping_backend().await;
    let running = proxy_in_front_of(addr).await;
    for dedicated in [false, true] {
        let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        if dedicated {
            for _ in 0..4 {
                let request =
                    "POST /length HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 2\r\n\r\n{}";
                stream.write_all(request.as_bytes()).await.unwrap();
                read_answer(&mut stream, Some(8)).await;
            }
            assert_eq!(running.proxy.dedicated_connections(), 1);
        }
        let head = "POST /length HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 100000\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"0123456789").await.unwrap();
        // Let the head and the first bytes reach the backend before the body fails.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("an answer, then the end of the connection")
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "dedicated {dedicated}: {answer:?}"
        );
    }
    server.abort();
    running.shutdown().await;
}
