//! An MCP gateway on axum: `/healthz` is answered here; everything else goes through
//! [`AffinityLayer`] to a pooled hyper-util client, so each conversation stays on the backend that
//! owns it. What no backend should be sent (`CONNECT`, a target that is not a path, a dot-segment
//! in the path, a missing, repeated or invalid `Host`, a transfer coding other than `chunked`) is
//! answered here, as the proxy answers it (the checks are shared: `examples/common/hop.rs`).
//! Hop-by-hop headers are not passed on (removed before the router reads the request); every
//! backend's port is probed once a second (a backend marked down by a refused connection comes back
//! when it listens again); on SIGTERM or Ctrl-C, requests in flight get two seconds (an open event
//! stream has no end of its own).
//!
//! `axum::serve` bounds no client's time, neither to send a request head nor its body: in
//! front of untrusted clients, serve the app with hyper's `header_read_timeout` and a bound on
//! bodies, as `examples/proxy.rs` does (`--header-timeout`, `--body-timeout`).
//!
//! ```text
//! cargo run --example axum_gateway -- --listen 127.0.0.1:8080 \
//!     --backend http://127.0.0.1:9001 --backend http://127.0.0.1:9002
//! ```
#![allow(clippy::disallowed_methods)] // the gateway owns the clock

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::error_handling::HandleError;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error};
use hyper_util::rt::TokioExecutor;
use mcp_affinity::router::{Probe, Router, Undelivered};
use mcp_affinity::tower::{AffinityLayer, ReplayBody, Upstream};
use mcp_affinity::{BackendId, TenantId};
use tokio::net::TcpStream;
use tower_layer::Layer;

// (The end-to-end tests include this file beside the proxy, which has it too.)
#[allow(clippy::duplicate_mod)]
#[path = "common/hop.rs"]
mod hop;

/// How long requests in flight get once the gateway is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The gateway: `/healthz`, and every other request routed by `router` to its backends.
pub fn app(router: Arc<Router>) -> axum::Router {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<_, ReplayBody<Body>> = Client::builder(TokioExecutor::new())
        // Below uvicorn's 5 s keep-alive, so a connection the backend is closing is not reused.
        .pool_idle_timeout(Duration::from_secs(4))
        .build(connector);
    let forward = tower::service_fn(move |mut request: Request<ReplayBody<Body>>| {
        let client = client.clone();
        // The layer says where to: the backend's base URL joined with the request's path.
        let upstream = request.body().upstream().cloned();
        async move {
            let upstream = upstream.expect("set by the layer");
            // (Every backend's URL was checked at startup.)
            *request.uri_mut() = upstream.uri_for(request.uri()).expect("http:// backends");
            let response = client.request(request).await?;
            if hop::other_transfer_coding(response.headers()) {
                // Decoded from `chunked` only, its body would reach the client still encoded.
                let refused = "the backend used a transfer coding other than chunked\n";
                return Ok((StatusCode::BAD_GATEWAY, refused).into_response());
            }
            let mut response = response.map(Body::new);
            let status = response.status();
            hop::strip_response_head(status, response.headers_mut());
            if response
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"))
            {
                // An event stream must not wait in a buffering proxy in front (nginx).
                response
                    .headers_mut()
                    .insert("x-accel-buffering", HeaderValue::from_static("no"));
            }
            Ok::<_, Error>(response)
        }
    });
    let gateway = AffinityLayer::new(router, Instant::now)
        .undelivered(undelivered)
        .refusal_check(refuses)
        .layer(forward);
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback_service(HandleError::new(gateway, bad_gateway))
        .layer(middleware::from_fn(checked))
}

/// Answers what no backend is sent ([`hop::check_target`]), and removes the hop-by-hop
/// headers, before the router classifies the request: it routes by what the backend will see
/// (`Connection: Mcp-Session-Id` makes the session header this hop's alone).
async fn checked(mut request: Request<Body>, next: Next) -> Response {
    match hop::check_target(&mut request) {
        Ok(()) => {
            hop::strip_hop_by_hop(request.headers_mut());
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// A connection that failed before a byte was written: the router may place the request
/// elsewhere (or, if nothing listens, knows the backend is down and its sessions gone).
fn undelivered(error: &Error) -> Option<Undelivered> {
    let mut causes = std::iter::successors(std::error::Error::source(error), |e| e.source());
    let io = causes.find_map(|cause| cause.downcast_ref::<std::io::Error>());
    error
        .is_connect()
        .then(|| io.map_or(Undelivered::Failed, Undelivered::from_io))
}

/// Whether nothing listens at the backend's address any more: asked after a request failed
/// on a pooled connection (a backend killed mid-request).
fn refuses(upstream: &Upstream) -> impl Future<Output = bool> + use<> {
    let address = upstream.host_port();
    async move {
        let Some(address) = address else { return false };
        let connect = tokio::time::timeout(Duration::from_millis(250), TcpStream::connect(address));
        matches!(connect.await, Ok(Err(e)) if Undelivered::from_io(&e) == Undelivered::Refused)
    }
}

/// Any other failure: the request may have run, so it is not retried.
async fn bad_gateway(error: Error) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("Bad gateway: {error}\n"))
}

#[allow(dead_code)] // the end-to-end tests include this file for `app`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut listen, mut backends) = ("127.0.0.1:8080".to_string(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            ("--backend", Some(url)) => backends.push(url),
            _ => return Err(format!("usage: --listen ADDR --backend URL... ({flag}?)").into()),
        }
    }
    let router = Arc::new(Router::builder().build());
    // Each backend and the address its port is probed at.
    let mut probed = Vec::new();
    for url in &backends {
        // The forwarder joins paths to `http://host:port[/prefix]` URLs, and nothing else.
        let uri: http::Uri = url.parse()?;
        let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(format!("--backend {url}: not an http://host:port URL").into());
        };
        let address = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        probed.push((router.add_backend(TenantId::DEFAULT, url, 1)?, address));
    }
    // Idle keys expire, drain deadlines pass, and every backend's port is probed: the router's
    // clock work, once a second.
    let maintained = router.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = maintained.maintain(Instant::now(), 4096);
            probe(&maintained, &probed).await;
        }
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("axum gateway on {} → {backends:?}", listener.local_addr()?);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, app(router)).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let mut serve = std::pin::pin!(serve.into_future());
    tokio::select! {
        served = &mut serve => served?,
        _ = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        } => {
            // Stop accepting; what is still open after the grace (an event stream) is cut.
            let _ = stop.send(());
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, serve).await;
        }
    }
    Ok(())
}

/// One round of TCP connect checks of every backend at its address (250 ms each at most): a
/// refused connection is [`Probe::Refused`] (nothing listens: down after a few), a timeout
/// [`Probe::Failed`], a connection [`Probe::Up`] (a backend marked down comes back).
async fn probe(router: &Router, backends: &[(BackendId, String)]) {
    for (id, address) in backends {
        let connect = tokio::time::timeout(Duration::from_millis(250), TcpStream::connect(address));
        let probe = match connect.await {
            Ok(Ok(_)) => Probe::Up,
            Ok(Err(e)) if Undelivered::from_io(&e) == Undelivered::Refused => Probe::Refused,
            _ => Probe::Failed,
        };
        let _ = router.report_health(*id, probe, Instant::now());
    }
}
