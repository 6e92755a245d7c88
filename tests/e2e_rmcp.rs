//! End to end with `rmcp` (the official Rust SDK) servers and clients through the proxy of
//! `examples/proxy.rs`: affinity under concurrency (proved by per-session counters), DELETE,
//! removed, killed, drained and restarted backends, the admin API, and the proxy's streaming
//! (no buffering, client disconnects reach the backend).

#![allow(clippy::disallowed_methods)]

mod e2e;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::proxy::{Config, Running};
use e2e::rmcp_peers::{self, Replica, Session, Track};
use e2e::{admin, raw_client, raw_session, raw_whoami};

async fn fleet(n: usize) -> (Vec<Replica>, Running) {
    let mut replicas = Vec::new();
    for i in 1..=n {
        replicas.push(
            Replica::start(&format!("r{i}"))
                .await
                .expect("replica starts"),
        );
    }
    let config = Config {
        backends: replicas.iter().map(Replica::url).collect(),
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let running = e2e::start(&config).await;
    (replicas, running)
}

/// The admin slot of the backend named `name`.
fn slot_of(running: &Running, replicas: &[Replica], name: &str) -> u16 {
    let url = replicas
        .iter()
        .find(|r| r.name == name)
        .expect("replica")
        .url();
    running
        .proxy
        .router()
        .backends()
        .iter()
        .find(|b| *b.label == url)
        .expect("backend")
        .id
        .slot()
}

struct Client {
    session: Session,
    track: Track,
}

/// Opens `n` sessions at once and calls `whoami` `calls` times in each.
async fn clients(url: &str, n: usize, calls: usize, reinit: bool) -> Vec<Client> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = url.to_string();
        set.spawn(async move {
            let session = rmcp_peers::connect(&url, reinit).await?;
            let mut track = Track::default();
            for _ in 0..calls {
                track.record(&rmcp_peers::whoami(&session).await?);
            }
            Ok::<_, String>(Client { session, track })
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        out.push(joined.expect("client task").expect("client"));
    }
    out
}

fn owner(client: &Client) -> &str {
    client.track.replica.as_deref().expect("a first reply")
}

fn per_replica(clients: &[Client]) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for c in clients {
        *map.entry(owner(c).to_string()).or_default() += 1;
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_stay_on_the_replica_that_minted_them_and_delete_releases_them() {
    let (replicas, running) = fleet(3).await;
    let (n, calls) = (30, 6);
    let clients = clients(&running.url("/mcp"), n, calls, false).await;

    for c in &clients {
        assert_eq!(c.track.violations, 0, "affinity violation: {:?}", c.track);
        assert_eq!(c.track.count, calls as u64);
    }
    let spread = per_replica(&clients);
    assert!(
        spread.len() >= 2,
        "sessions on several replicas: {spread:?}"
    );
    // Each replica created exactly the sessions whose replies it gave: no request of a
    // session ever reached another replica (rmcp would have answered 404 there).
    for r in &replicas {
        let created = r.sessions.load(std::sync::atomic::Ordering::SeqCst) as usize;
        assert_eq!(
            created,
            spread.get(&r.name).copied().unwrap_or(0),
            "{}",
            r.name
        );
    }
    let m = running.proxy.metrics();
    assert_eq!(m.keys_learned, n as u64, "{m:?}");
    assert_eq!(m.rejected_total(), 0, "{m:?}");
    assert_eq!(m.table.len, n, "{m:?}");

    // rmcp's cancel sends DELETE: the router forgets each session.
    for c in clients {
        c.session.cancel().await.expect("cancel");
    }
    let m = running.proxy.metrics();
    assert_eq!(m.keys_forgotten, n as u64, "{m:?}");
    assert_eq!(m.table.len, 0, "{m:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_sessions_get_404_while_the_others_are_untouched() {
    let (replicas, running) = fleet(3).await;
    let url = running.url("/mcp");
    let clients = clients(&url, 9, 2, false).await;
    let raw = raw_client();
    let raw_sessions = {
        let mut s = Vec::new();
        for _ in 0..6 {
            let session = raw_session(&raw, &url).await;
            let (status, reply, body) = raw_whoami(&raw, &url, &session).await;
            assert_eq!(status, 200, "{body}");
            s.push((session, reply.expect("reply").replica));
        }
        s
    };

    let victim = owner(&clients[0]).to_string();
    let slot = slot_of(&running, &replicas, &victim);
    let (status, answer) = admin(
        &running.admin_url(&format!("/backends/{slot}/remove")),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let victims = clients.iter().filter(|c| owner(c) == victim).count()
        + raw_sessions.iter().filter(|(_, r)| *r == victim).count();
    assert_eq!(answer["purged"], victims, "{answer}");

    for c in &clients {
        let result = rmcp_peers::whoami(&c.session).await;
        if owner(c) == victim {
            let e = result.expect_err("the removed backend's session is gone");
            assert!(e.contains("404"), "rmcp sees a 404: {e}");
        } else {
            let reply = result.expect("the others are untouched");
            assert_eq!((reply.replica.as_str(), reply.count), (owner(c), 3));
        }
    }
    for (session, replica) in &raw_sessions {
        let (status, reply, body) = raw_whoami(&raw, &url, session).await;
        if *replica == victim {
            assert_eq!(status, 404, "{body}");
            assert!(
                body.contains("-32001") && body.contains("Session not found"),
                "{body}"
            );
        } else {
            assert_eq!(status, 200, "{body}");
            assert_eq!(reply.expect("reply").count, 2);
        }
    }
    let m = running.proxy.metrics();
    assert!(
        m.backends
            .iter()
            .all(|b| b.label.as_ref() != replicas.iter().find(|r| r.name == victim).unwrap().url())
    );
    assert_eq!(m.keys_purged, victims as u64, "{m:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_never_rehashed_and_its_rmcp_clients_start_over_at_once() {
    let (mut replicas, running) = fleet(3).await;
    let url = running.url("/mcp");
    let clients = clients(&url, 9, 2, true).await;
    let victim = owner(&clients[0]).to_string();

    // Kill it: its sessions' next requests meet a closed port, the router declares it down and
    // answers 404, and rmcp re-initializes on a live replica (count from 1): no operator
    // needed, never a 502, never a re-hash of the old session.
    let index = replicas.iter().position(|r| r.name == victim).unwrap();
    replicas.remove(index).kill().await;
    for c in &clients {
        let reply = tokio::time::timeout(Duration::from_secs(10), rmcp_peers::whoami(&c.session))
            .await
            .expect("the client is answered")
            .expect("the call succeeds");
        if owner(c) == victim {
            assert_ne!(reply.replica, victim);
            assert_eq!(reply.count, 1, "a new session: {reply:?}");
        } else {
            assert_eq!((reply.replica.as_str(), reply.count), (owner(c), 3));
        }
    }
    let m = running.proxy.metrics();
    assert_eq!(m.owners_down, 1, "{m:?}");
    assert_eq!(m.rejected("owner_unreachable"), 0, "{m:?}");
    assert_eq!(running.proxy.bad_gateways(), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_backend_keeps_its_sessions_and_gets_no_new_ones() {
    let (replicas, running) = fleet(3).await;
    let url = running.url("/mcp");
    let before = clients(&url, 9, 2, false).await;
    let drained = owner(&before[0]).to_string();
    let slot = slot_of(&running, &replicas, &drained);
    let (status, answer) = admin(
        &running.admin_url(&format!("/backends/{slot}/drain")),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let drained_replica = replicas.iter().find(|r| r.name == drained).unwrap();
    let created = drained_replica
        .sessions
        .load(std::sync::atomic::Ordering::SeqCst);

    // Its sessions carry on.
    for c in &before {
        let reply = rmcp_peers::whoami(&c.session).await.expect("call");
        assert_eq!((reply.replica.as_str(), reply.count), (owner(c), 3));
    }
    // New sessions go elsewhere.
    let after = clients(&url, 12, 1, false).await;
    let spread = per_replica(&after);
    assert!(
        !spread.contains_key(&drained),
        "{drained} is draining: {spread:?}"
    );
    // (How they spread over the two others is the placement policy's business: least-sessions
    // sends a burst to whichever has fewest at that moment.)
    assert_eq!(
        drained_replica
            .sessions
            .load(std::sync::atomic::Ordering::SeqCst),
        created
    );

    let (_, backends) = admin(&running.admin_url("/backends"), "GET").await;
    let entry = backends
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["slot"] == slot)
        .unwrap()
        .clone();
    assert_eq!(entry["draining"], true, "{entry}");
    assert_eq!(entry["ready"], false, "{entry}");
    let theirs = before.iter().filter(|c| owner(c) == drained).count();
    assert_eq!(entry["sessions"], theirs, "{entry}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_backend_inherits_nothing() {
    let (mut replicas, running) = fleet(2).await;
    let url = running.url("/mcp");
    let raw = raw_client();
    let mut old = Vec::new();
    for _ in 0..6 {
        let session = raw_session(&raw, &url).await;
        let (_, reply, _) = raw_whoami(&raw, &url, &session).await;
        old.push((session, reply.expect("reply").replica));
    }
    let victim = old[0].1.clone();
    let slot = slot_of(&running, &replicas, &victim);

    // The replica restarts on the same address (a new process would mint new sessions)…
    let index = replicas.iter().position(|r| r.name == victim).unwrap();
    let dead = replicas.remove(index);
    let addr = dead.addr;
    dead.kill().await;
    let reborn = Replica::start_on(&victim, addr)
        .await
        .expect("restart on the same port");
    replicas.push(reborn);
    // …and the operator tells the router: a new generation in the same slot.
    let (status, answer) = admin(
        &running.admin_url(&format!("/backends/{slot}/restart")),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["slot"], slot);
    assert_eq!(answer["generation"], 1, "{answer}");

    for (session, replica) in &old {
        let (status, reply, body) = raw_whoami(&raw, &url, session).await;
        if *replica == victim {
            assert_eq!(
                status, 404,
                "the old generation's session is not inherited: {body}"
            );
        } else {
            assert_eq!((status, reply.map(|r| r.count)), (200, Some(2)), "{body}");
        }
    }
    let reborn = replicas.iter().find(|r| r.name == victim).unwrap();
    assert_eq!(
        reborn.sessions.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no old session reached the new process"
    );
    // New sessions are placed on the new generation as on any ready backend.
    let fresh = clients(&url, 6, 2, false).await;
    assert!(
        fresh.iter().any(|c| owner(c) == victim),
        "{:?}",
        per_replica(&fresh)
    );
    assert!(fresh.iter().all(|c| c.track.violations == 0));
    let m = running.proxy.metrics();
    let theirs = old.iter().filter(|(_, r)| *r == victim).count() as u64;
    assert_eq!(m.keys_purged, theirs, "{m:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_serves_metrics_and_adds_backends() {
    let (mut replicas, running) = fleet(1).await;
    let url = running.url("/mcp");
    let (status, metrics) = admin(&running.admin_url("/metrics.json"), "GET").await;
    assert_eq!(status, 200);
    assert_eq!(
        metrics["backends"].as_array().unwrap().len(),
        1,
        "{metrics}"
    );
    assert_eq!(metrics["rejected"]["unknown_key"], 0, "{metrics}");

    let extra = Replica::start("r2").await.expect("replica");
    let (status, added) = admin(
        &running.admin_url(&format!("/backends?url={}", extra.url())),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["slot"], 1, "{added}");
    replicas.push(extra);
    let fresh = clients(&url, 6, 2, false).await;
    assert_eq!(
        per_replica(&fresh).len(),
        2,
        "the added backend takes sessions"
    );

    let (status, _) = admin(&running.admin_url("/backends/7/drain"), "POST").await;
    assert_eq!(status, 404);
    let (status, _) = admin(&running.admin_url("/nothing"), "GET").await;
    assert_eq!(status, 404);
    let (status, _) = admin(&running.admin_url("/metrics?format=json"), "GET").await;
    assert_eq!(status, 200);
    let text = text_of(&running.admin_url("/metrics")).await;
    assert!(
        text.contains("\nmcp_affinity_keys_learned_total 6\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    running.shutdown().await;
}

async fn text_of(url: &str) -> String {
    use http_body_util::BodyExt;
    let client = raw_client();
    let response = client.get(url.parse().unwrap()).await.expect("GET");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// A backend whose `/stream` answers an SSE stream that sends one event and then stays open;
/// `dropped` fires when the backend's response body is dropped (its client went away).
mod endless {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::{Body, Frame};
    use tokio::sync::oneshot;

    pub struct Endless {
        pub sent: bool,
        pub dropped: Option<oneshot::Sender<()>>,
    }

    impl Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"event: message\ndata: one\n\n",
            )))))
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            if let Some(tx) = self.dropped.take() {
                let _ = tx.send(());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_streamed_unbuffered_and_a_client_disconnect_reaches_the_backend_at_once() {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |_req| {
            let tx = tx.clone();
            async move {
                let body = endless::Endless {
                    sent: false,
                    dropped: tx.lock().unwrap().take(),
                };
                let response = http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let config = Config {
        backends: vec![format!("http://{backend}")],
        ..Config::default()
    };
    let running = e2e::start(&config).await;

    let client = raw_client();
    let request = http::Request::get(running.url("/stream"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut body = response.into_body();
    // The first event arrives while the backend's body is still open: nothing is buffered.
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event is not held back")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "event: message\ndata: one\n\n");

    // The client goes away: the backend's body is dropped at once.
    drop(body);
    drop(client);
    tokio::time::timeout(Duration::from_secs(2), dropped)
        .await
        .expect("the backend saw the disconnect within 2 s")
        .unwrap();
    server.abort();
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_revokes_the_sessions_left_and_rmcp_clients_move() {
    let (replicas, running) = fleet(3).await;
    let url = running.url("/mcp");
    let clients = clients(&url, 9, 2, true).await;
    let drained = owner(&clients[0]).to_string();
    let slot = slot_of(&running, &replicas, &drained);
    let victims = clients.iter().filter(|c| owner(c) == drained).count();

    let drain = format!("/backends/{slot}/drain?deadline=0.3");
    let (status, answer) = admin(&running.admin_url(&drain), "POST").await;
    assert_eq!(status, 200, "{answer}");
    // Past the deadline (and a maintenance tick), the sessions left on it are revoked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for c in &clients {
        let reply = rmcp_peers::whoami(&c.session).await.expect("call succeeds");
        if owner(c) == drained {
            assert_ne!(
                reply.replica, drained,
                "revoked, then re-initialized elsewhere"
            );
            assert_eq!(reply.count, 1, "{reply:?}");
        } else {
            assert_eq!((reply.replica.as_str(), reply.count), (owner(c), 3));
        }
    }
    let m = running.proxy.metrics();
    assert_eq!(m.keys_revoked, victims as u64, "{m:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_after_the_idle_ttl() {
    // Long against the 200 ms between the busy session's calls, so that a stall of a loaded
    // machine does not expire it too.
    const IDLE_TTL: Duration = Duration::from_secs(3);
    let replica = Replica::start("r1").await.expect("replica");
    let config = Config {
        backends: vec![replica.url()],
        idle_ttl: Some(IDLE_TTL),
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let running = e2e::start(&config).await;
    let url = running.url("/mcp");
    let raw = raw_client();
    let idle = raw_session(&raw, &url).await;
    let idle_since = Instant::now();
    let busy = raw_session(&raw, &url).await;
    // `busy` is used every 200 ms, `idle` not at all, until maintenance (every second) has
    // expired a key; a stall of the machine can delay that, not make it come early.
    let deadline = idle_since + Duration::from_secs(15);
    while running.proxy.metrics().keys_expired == 0 {
        assert!(Instant::now() < deadline, "no key expired within 15 s");
        let (status, _, body) = raw_whoami(&raw, &url, &busy).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Use times count in ticks of 100 ms, so a key may go up to one tick before its TTL is
    // whole (and `idle_since` is a little after its last use).
    let expired_after = idle_since.elapsed();
    assert!(
        expired_after >= IDLE_TTL - Duration::from_millis(200),
        "expired after {expired_after:?}, before its idle TTL"
    );
    let (status, _, body) = raw_whoami(&raw, &url, &idle).await;
    assert_eq!(status, 404, "the idle session expired: {body}");
    let (status, _, body) = raw_whoami(&raw, &url, &busy).await;
    assert_eq!(status, 200, "the busy one did not: {body}");
    let m = running.proxy.metrics();
    assert_eq!(m.keys_expired, 1, "{m:?}");
    running.shutdown().await;
    drop(replica);
}

#[test]
fn the_proxy_strips_hop_by_hop_headers_and_those_connection_names_and_keeps_the_rest() {
    use http::HeaderMap;
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    };
    let end_to_end = [
        ("content-type", "application/json"),
        ("mcp-session-id", "abc"),
    ];
    let mut plain = headers(&end_to_end);
    e2e::proxy::strip_hop_by_hop(&mut plain);
    assert_eq!(plain, headers(&end_to_end));

    let mut hop = headers(&[
        ("content-type", "application/json"),
        ("connection", "keep-alive, x-private"),
        ("x-private", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("proxy-connection", "close"),
        ("mcp-session-id", "abc"),
    ]);
    e2e::proxy::strip_hop_by_hop(&mut hop);
    assert_eq!(hop, headers(&end_to_end));

    // The common case, a chunked answer: only its `Transfer-Encoding` goes.
    let mut chunked = headers(&[
        ("content-type", "text/event-stream"),
        ("transfer-encoding", "chunked"),
        ("mcp-session-id", "abc"),
    ]);
    e2e::proxy::strip_hop_by_hop(&mut chunked);
    assert_eq!(
        chunked,
        headers(&[
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "abc")
        ])
    );

    // A `Content-Length` beside a `Transfer-Encoding` (a backend that sends both) goes with
    // it: the body was decoded, and is sent on in the next hop's framing.
    let mut both = headers(&[
        ("content-length", "5"),
        ("transfer-encoding", "chunked"),
        ("mcp-session-id", "abc"),
    ]);
    e2e::proxy::strip_hop_by_hop(&mut both);
    assert_eq!(both, headers(&[("mcp-session-id", "abc")]));

    // Many hop-by-hop names, and no `Connection`: all go.
    let mut many = headers(&[
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("content-type", "application/json"),
        ("upgrade", "h2c"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "close"),
        ("proxy-authorization", "Basic eDp5"),
        ("mcp-session-id", "abc"),
    ]);
    e2e::proxy::strip_hop_by_hop(&mut many);
    assert_eq!(many, headers(&end_to_end));

    // Only a header a `Connection` names is personal: without one, a lone `x-private` stays.
    let mut lone = headers(&[("x-private", "1"), ("keep-alive", "timeout=5")]);
    e2e::proxy::strip_hop_by_hop(&mut lone);
    assert_eq!(lone, headers(&[("x-private", "1")]));
}

/// A backend that answers `/slow` with `done` after 300 ms and every other request with an
/// endless event stream, and reports each request's method and headers.
async fn endless_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(http::Method, http::HeaderMap)>,
    tokio::task::JoinHandle<()>,
) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let _ = seen.send((req.method().clone(), req.headers().clone()));
                let slow = req.uri().path() == "/slow";
                async move {
                    let response = http::Response::builder();
                    let response = if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let done = http_body_util::Full::new(bytes::Bytes::from_static(b"done"));
                        response.body(http_body_util::Either::Left(done))
                    } else {
                        let endless = endless::Endless {
                            sent: false,
                            dropped: None,
                        };
                        response
                            .header("content-type", "text/event-stream")
                            .body(http_body_util::Either::Right(endless))
                    };
                    Ok::<_, std::convert::Infallible>(response.unwrap())
                }
            });
            connections.spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, requests, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_the_clients_address_once_and_no_hop_by_hop_header() {
    let (backend, mut requests, server) = endless_backend().await;
    let config = Config {
        backends: vec![format!("http://{backend}")],
        ..Config::default()
    };
    // The hyper proxy's own forwarding (not the axum front's, which CI also runs).
    let running = Running::start(&config).await.expect("the proxy starts");
    let client = raw_client();
    // A client that forges the header and names it in `Connection`, hoping the proxy strips
    // the address it adds.
    let request = http::Request::get(running.url("/stream"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-forwarded-for")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let (method, headers) = requests.recv().await.expect("the backend got the request");
    assert_eq!(method, http::Method::GET);
    let forwarded: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded, ["127.0.0.1"], "{headers:?}");
    assert!(headers.get("te").is_none(), "{headers:?}");
    assert_ne!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"x-forwarded-for"[..]),
        "{headers:?}"
    );
    drop(response);
    server.abort();
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_backend_ends_its_get_streams_and_lets_post_answers_run() {
    use http_body_util::BodyExt;
    let (backend, _requests, server) = endless_backend().await;
    let config = Config {
        backends: vec![format!("http://{backend}")],
        ..Config::default()
    };
    // The hyper proxy's own forwarding (not the axum front's, which CI also runs).
    let running = Running::start(&config).await.expect("the proxy starts");
    let client = raw_client();
    let open = |method: http::Method| {
        let request = http::Request::builder()
            .method(method)
            .uri(running.url("/stream"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        client.request(request)
    };
    let mut get = open(http::Method::GET).await.unwrap().into_body();
    let mut post = open(http::Method::POST).await.unwrap().into_body();
    for body in [&mut get, &mut post] {
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first event")
            .expect("a frame")
            .expect("data");
        assert_eq!(first.into_data().unwrap(), "event: message\ndata: one\n\n");
    }

    let (status, answer) = admin(&running.admin_url("/backends/0/remove"), "POST").await;
    assert_eq!(status, 200, "{answer}");
    // The standalone stream has no end of its own: the proxy ends it, cleanly.
    let end = tokio::time::timeout(Duration::from_secs(2), get.frame())
        .await
        .expect("the GET stream ends within 2 s of the removal");
    assert!(end.is_none(), "a clean end, not an error: {end:?}");
    // A POST's answer is the call's own: it runs on, as it would through a draining proxy.
    let pending = tokio::time::timeout(Duration::from_millis(300), post.frame()).await;
    assert!(
        pending.is_err(),
        "the POST answer is still open: {pending:?}"
    );
    drop(post);
    server.abort();
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_answer_in_flight_finish_and_stops_at_the_grace() {
    use http_body_util::BodyExt;
    let (backend, _requests, server) = endless_backend().await;
    let config = Config {
        backends: vec![format!("http://{backend}")],
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    let running = Running::start(&config).await.expect("the proxy starts");
    let (slow_url, stream_url, addr) = (running.url("/slow"), running.url("/stream"), running.addr);
    let client = raw_client();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let request = http::Request::get(url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client.request(request).await
        }
    };
    let mut endless = get(stream_url).await.unwrap().into_body();
    endless.frame().await.expect("the first event").unwrap();
    let slow = tokio::spawn(get(slow_url));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    running.shutdown().await;
    let took = started.elapsed();
    // The endless stream holds its connection open until the grace ends it, and no longer.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The call that was in flight got its whole answer.
    let answer = slow.await.unwrap().expect("the slow call was answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.into_body().collect().await.unwrap().to_bytes(),
        "done"
    );
    // The stream was cut at the grace, and nothing listens any more.
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = endless.frame().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    server.abort();
}
