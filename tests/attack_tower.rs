//! Findings of the third adversarial review: the tower layer (`tower::AffinityLayer`). Every
//! test here failed on the commit it was written against
//! and passes since its fix: each one states what the layer
//! should do, what it does, and how bad it is. Run with
//! `cargo test --all-features --test attack_tower`.
#![cfg(feature = "tower")]
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_executor::block_on;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::TenantId;
use mcp_affinity::router::store::SharedStore;
use mcp_affinity::router::{NewBackend, Router};
use mcp_affinity::tower::{AffinityLayer, ReplayBody, StoreAnswer, Upstream};
use tower_layer::Layer;
use tower_service::Service;

type In = Full<Bytes>;

/// How a backend answers a request it ran.
type Answer = Arc<dyn Fn(&Request<()>) -> Response<Full<Bytes>> + Send + Sync>;

#[derive(Debug)]
struct Broken;

/// Backends that run every request they receive (recorded), answer with `answer`, except
/// that the first request fails after it ran (its backend died with the response unsent).
#[derive(Clone)]
struct Runs {
    ran: Arc<Mutex<Vec<(String, Bytes)>>>,
    answer: Answer,
    break_first: bool,
}

impl Service<Request<ReplayBody<In>>> for Runs {
    type Response = Response<Full<Bytes>>;
    type Error = Broken;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Broken>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Broken>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<In>>) -> Self::Future {
        let (ran, answer, break_first) = (self.ran.clone(), self.answer.clone(), self.break_first);
        Box::pin(async move {
            let label = request.body().upstream().unwrap().label().to_owned();
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let first = {
                let mut ran = ran.lock().unwrap();
                ran.push((label, body));
                ran.len() == 1
            };
            if break_first && first {
                // It ran; then the process died before its answer was written.
                return Err(Broken);
            }
            Ok(answer(&Request::from_parts(parts, ())))
        })
    }
}

fn post(headers: &[(&str, &str)], body: &'static str) -> Request<In> {
    let mut request = Request::post("/mcp");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

fn ok(_: &Request<()>) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"{}")))
}

// --- 1. Non-idempotent repeat: a stateless server's tool call is sent again ------------------
/// Severity: NON-IDEMPOTENT REPEAT (a tool call run twice: two payments, two deploys) in the
/// documented setup of the example proxy (a refusal check), against any Streamable HTTP
/// server that runs without sessions (Python `stateless_http=True`, TypeScript
/// `sessionIdGenerator: undefined`, rmcp's stateless mode: all allowed by the 2025 specs).
///
/// The router reads only the request head: every Streamable `POST` without `Mcp-Session-Id`
/// is `Intent::SessionStart`, and `starts_conversation()` is true for it. To a stateless
/// server, every request is such a `POST`, `tools/call` included. When the backend dies
/// with the request (a pooled connection reset, then connections refused), the layer's
/// `died_with` reports it as `Refused` because "a conversation start left nothing behind",
/// and the router places it again: the kept body is sent to another backend, which runs the
/// call a second time. The request even says it is not an `initialize`: clients send
/// `MCP-Protocol-Version` only after initializing (2025-06-18 and later), and the layer holds
/// the whole body it is about to resend.
///
/// Expected: a request that may have run is resent only if it is an `initialize` (no
/// `MCP-Protocol-Version`, or a body whose method is `initialize`); this one's error is
/// returned and it ran once. Actual: it ran on both backends.
#[test]
fn a_stateless_tool_call_that_may_have_run_is_not_sent_again() {
    let router = Arc::new(Router::builder().build());
    for label in ["http://a.test", "http://b.test"] {
        router.add_backend(TenantId::DEFAULT, label, 1).unwrap();
    }
    let backends = Runs {
        ran: Arc::default(),
        answer: Arc::new(ok),
        break_first: true,
    };
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(|_: &Broken| None)
        .refusal_check(|_: &Upstream| std::future::ready(true))
        .layer(backends.clone());
    let call = post(
        &[
            ("mcp-protocol-version", "2025-06-18"),
            ("content-type", "application/json"),
        ],
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"pay","arguments":{"cents":500}}}"#,
    );
    let result = block_on(async {
        match service.call(call).await {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                Ok(status)
            }
            Err(error) => Err(error),
        }
    });
    let ran = backends.ran.lock().unwrap().clone();
    assert_eq!(
        ran.len(),
        1,
        "the tool call ran {} times ({:?}), answered {result:?}",
        ran.len(),
        ran.iter().map(|(label, _)| label).collect::<Vec<_>>()
    );
}

// --- 2. Wrong status: the client hears of its session before the fleet does ------------------
/// Severity: WRONG STATUS (404 for a live session, or "task not found" for a live task) on
/// the happy path of every fleet behind a round-robin balancer: a large share of new
/// sessions die on their second request.
///
/// What a router learns becomes a `StoreWrite::Bind` in a queue that "the embedder drains"
/// (`take_store_writes`); nothing ties the write to the response that revealed the key. The
/// layer reads the store (`store_lookup`) but has no way to write it: it hands the
/// `initialize` answer (and its `Mcp-Session-Id`) to the client at once, while the binding
/// sits in the queue until some background task drains it. The client's next request
/// (`notifications/initialized`, sent within milliseconds) reaches another router, whose
/// lookup finds nothing: `Missing` is answered 404, and TypeScript, Python and Go clients
/// surface an error instead of re-initializing. For 2026-07-28 tasks the same race answers
/// the first `tasks/get` with "task not found". No embedder of the layer can close the
/// window; an embedder of the bare router can, only by performing the writes between
/// `on_response_head` and forwarding the head, which the store docs never ask for.
///
/// Expected: a key the client is told is in the store before the client can present it (the
/// layer performs the bind, through a store writer the embedder gives, before it returns the
/// head, or before it passes the chunk that revealed a task), or a lookup that finds nothing
/// for a key that may still be on its way is not a 404. Actual: 404.
#[test]
fn a_session_minted_through_one_router_is_not_404_on_the_next_router() {
    let now = Instant::now();
    let fleet = || {
        let router = Arc::new(
            Router::builder()
                .shared_store(SharedStore::new("t", now, 1_700_000_000))
                .build(),
        );
        router
            .add(NewBackend::new(TenantId::DEFAULT, "http://x.test").name("x"))
            .unwrap();
        router
    };
    let (one, two) = (fleet(), fleet());
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let lookup = |store: Arc<Mutex<HashMap<String, String>>>| {
        move |key: String| {
            let answer = match store.lock().unwrap().get(&key) {
                Some(value) => StoreAnswer::Found(value.clone()),
                None => StoreAnswer::Missing,
            };
            std::future::ready(answer)
        }
    };
    let backend = Runs {
        ran: Arc::default(),
        answer: Arc::new(|_: &Request<()>| {
            Response::builder()
                .header("mcp-session-id", "s1")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        }),
        break_first: false,
    };
    // (Since the fix: the layer writes what a response reveals before the client sees it,
    // through the embedder's store writer; here the writes land in the shared map.)
    let sync = |router: Arc<Router>, store: Arc<Mutex<HashMap<String, String>>>| {
        move || {
            for write in router.take_store_writes(usize::MAX) {
                if let mcp_affinity::router::store::StoreWrite::Bind { key, value, .. } = write {
                    store.lock().unwrap().entry(key).or_insert(value);
                }
            }
            std::future::ready(())
        }
    };
    let mut first = AffinityLayer::new(one.clone(), Instant::now)
        .store_lookup(lookup(store.clone()))
        .store_sync(sync(one.clone(), store.clone()))
        .layer(backend.clone());
    let mut second = AffinityLayer::new(two.clone(), Instant::now)
        .store_lookup(lookup(store.clone()))
        .layer(backend);
    let status = block_on(async {
        let response = first.call(post(&[], "{}")).await.unwrap();
        let id = response.headers()["mcp-session-id"].clone();
        let _ = response.into_body().collect().await.unwrap();
        // The client's next request reaches the other router.
        let next = post(
            &[
                ("mcp-session-id", id.to_str().unwrap()),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            "{}",
        );
        second.call(next).await.unwrap().status()
    });
    assert_ne!(
        status,
        StatusCode::NOT_FOUND,
        "a session the client was just given is 404 on the next router; its binding still \
         waits in the first router's queue ({} writes)",
        one.store_queue_len()
    );
}
