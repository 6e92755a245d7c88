//! The tower layer drives the call protocol around a forwarding service: rejections without a
//! backend, the backend named by the request's body, failed deliveries placed again or rejected,
//! response heads that replace the answer, store lookups, and exchanges ended however the
//! request ends.
#![cfg(feature = "tower")]
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_executor::block_on;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, StreamBody};
use mcp_affinity::router::store::{SharedStore, StoreWrite};
use mcp_affinity::router::{NewBackend, Reason, Router, Undelivered};
use mcp_affinity::tower::{AffinityLayer, ReplayBody, StoreAnswer, Upstream};
use mcp_affinity::{BackendId, TenantId};
use tower_layer::Layer;
use tower_service::Service;

type In = Full<Bytes>;

/// What a backend does with a request.
#[derive(Clone)]
enum Act {
    /// Answers 200 with these headers and body.
    Answer(Vec<(&'static str, String)>, &'static str),
    /// Fails before sending anything: the connection was refused.
    Refuse,
    /// Fails after the request may have been written.
    Break,
    /// Never answers.
    Hang,
    /// Answers 200 with the session `s-a` and an event stream of these chunks, then fails
    /// (`true`) or ends.
    Stream(Vec<&'static str>, bool),
}

/// A response body: `chunks`, then an error (`fails`, a connection cut) or the end.
struct Chunks {
    chunks: std::collections::VecDeque<&'static str>,
    fails: bool,
}

impl Chunks {
    fn new(chunks: Vec<&'static str>, fails: bool) -> Self {
        Chunks {
            chunks: chunks.into(),
            fails,
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Failure>>> {
        let next = match self.chunks.pop_front() {
            Some(chunk) => Some(Ok(http_body::Frame::data(Bytes::from(chunk)))),
            None => std::mem::take(&mut self.fails).then_some(Err(Failure(false))),
        };
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.fails
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let len = self.chunks.iter().map(|c| c.len() as u64).sum();
        match self.fails {
            false => http_body::SizeHint::with_exact(len),
            true => http_body::SizeHint::default(),
        }
    }
}

#[derive(Debug)]
struct Failure(bool);

/// A forwarding service that plays backends by label, and records what each received.
#[derive(Clone)]
struct Backends {
    acts: Arc<Mutex<HashMap<String, Act>>>,
    seen: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    ready: Arc<Mutex<bool>>,
}

impl Backends {
    fn new(acts: &[(&str, Act)]) -> Self {
        Backends {
            acts: Arc::new(Mutex::new(
                acts.iter()
                    .map(|(l, a)| (l.to_string(), a.clone()))
                    .collect(),
            )),
            seen: Arc::default(),
            ready: Arc::new(Mutex::new(true)),
        }
    }

    fn seen(&self) -> Vec<(String, String, Bytes)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Service<Request<ReplayBody<In>>> for Backends {
    type Response = Response<Chunks>;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Failure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        if *self.ready.lock().unwrap() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: Request<ReplayBody<In>>) -> Self::Future {
        let upstream = request.body().upstream().unwrap().clone();
        let uri = upstream.uri_for(request.uri()).unwrap().to_string();
        let act = self.acts.lock().unwrap()[upstream.label()].clone();
        let seen = self.seen.clone();
        Box::pin(async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen.lock()
                .unwrap()
                .push((upstream.label().to_string(), uri, body));
            match act {
                Act::Answer(headers, body) => {
                    let mut response = Response::builder();
                    for (name, value) in headers {
                        response = response.header(name, value);
                    }
                    // (An empty body has no frame.)
                    let chunks = Some(body).filter(|b| !b.is_empty()).into_iter().collect();
                    Ok(response.body(Chunks::new(chunks, false)).unwrap())
                }
                Act::Stream(chunks, fails) => {
                    let response = Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("mcp-session-id", "s-a");
                    Ok(response.body(Chunks::new(chunks, fails)).unwrap())
                }
                Act::Refuse => Err(Failure(true)),
                Act::Break => Err(Failure(false)),
                Act::Hang => std::future::pending().await,
            }
        })
    }
}

fn classify(failure: &Failure) -> Option<Undelivered> {
    failure.0.then_some(Undelivered::Refused)
}

fn router(labels: &[&str]) -> (Arc<Router>, Vec<BackendId>) {
    let router = Arc::new(Router::builder().build());
    let ids = labels
        .iter()
        .map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap())
        .collect();
    (router, ids)
}

fn post(headers: &[(&str, &str)], body: &'static str) -> Request<In> {
    let mut request = Request::post("/mcp");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

fn mints(id: &str) -> Act {
    Act::Answer(vec![("mcp-session-id", id.to_string())], "{}")
}

const A: &str = "http://a.test:1";
const B: &str = "http://b.test:2/base";

#[test]
fn the_inner_service_gets_the_chosen_backend_and_a_rejection_never_reaches_it() {
    let (router, _) = router(&[A]);
    let backends = Backends::new(&[(A, mints("s1"))]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now).layer(backends.clone());
    block_on(async {
        let response = service.call(post(&[], "{\"init\":1}")).await.unwrap();
        assert_eq!(response.headers()["mcp-session-id"], "s1");
        assert!(!response.body().is_local());
        let _ = response.into_body().collect().await.unwrap();
        let response = service
            .call(post(&[("mcp-session-id", "forged")], "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.body().is_local());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            body.starts_with(br#"{"jsonrpc":"2.0","error":"#),
            "{body:?}"
        );
    });
    let seen = backends.seen();
    assert_eq!(seen.len(), 1, "only the initialize reached a backend");
    assert_eq!(seen[0].1, "http://a.test:1/mcp");
    assert_eq!(&seen[0].2[..], b"{\"init\":1}");
    let m = router.metrics();
    assert_eq!((m.keys_learned, m.rejected_total()), (1, 1));
}

#[test]
fn a_refused_conversation_start_is_placed_again_with_its_body_and_the_backend_goes_down() {
    let (router, [a, b]) = router(&[A, B]).map_ids();
    let backends = Backends::new(&[(A, Act::Refuse), (B, mints("s1"))]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .layer(backends.clone());
    block_on(async {
        for _ in 0..2 {
            let response = service.call(post(&[], "{\"init\":1}")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let _ = response.into_body().collect().await.unwrap();
        }
    });
    let seen = backends.seen();
    // The first start tried A (refused), then B with the same body; A is down after that,
    // so the second start went to B at once.
    let labels: Vec<&str> = seen.iter().map(|(l, _, _)| l.as_str()).collect();
    assert_eq!(labels, [A, B, B]);
    assert!(seen.iter().all(|(_, _, body)| &body[..] == b"{\"init\":1}"));
    assert_eq!(seen[1].1, "http://b.test:2/base/mcp");
    let m = router.metrics();
    assert_eq!(m.placements_retried, 1);
    assert_eq!(m.owners_down, 1);
    assert!(!router.backends().iter().any(|i| i.id == a && i.ready()));
    assert_eq!(
        router
            .metrics()
            .backends
            .iter()
            .find(|i| i.id == b)
            .unwrap()
            .sessions,
        1
    );
}

#[test]
fn a_pinned_request_whose_owner_refuses_gets_404_and_is_not_moved() {
    let (router, _) = router(&[A, B]);
    let backends = Backends::new(&[(A, mints("s1")), (B, mints("s2"))]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .layer(backends.clone());
    block_on(async {
        let response = service.call(post(&[], "{}")).await.unwrap();
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = response.into_body().collect().await.unwrap();
        let owner = backends.seen()[0].0.clone();
        backends
            .acts
            .lock()
            .unwrap()
            .insert(owner.clone(), Act::Refuse);
        let call = post(
            &[
                ("mcp-session-id", &id),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            "{}",
        );
        let response = service.call(call).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let seen = backends.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].0, owner, "tried on its owner only");
    });
    assert_eq!(
        router.metrics().rejected_total(),
        1,
        "{:?}",
        router.metrics().rejected
    );
}

#[test]
fn an_error_after_the_request_may_have_run_is_returned_and_nothing_is_retried() {
    let (router, _) = router(&[A, B]);
    let backends = Backends::new(&[(A, Act::Break), (B, Act::Break)]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .layer(backends.clone());
    let result = block_on(service.call(post(&[], "{}")));
    assert!(matches!(result, Err(Failure(false))));
    assert_eq!(backends.seen().len(), 1);
    assert_eq!(router.metrics().placements_retried, 0);
}

#[test]
fn a_backend_that_died_with_a_request_is_down_when_nothing_the_request_did_survived() {
    let (router, _) = router(&[A, B]);
    let backends = Backends::new(&[(A, mints("s1")), (B, mints("s2"))]);
    let probed = Arc::new(Mutex::new(Vec::new()));
    let refuses = {
        let probed = probed.clone();
        move |upstream: &Upstream| {
            probed.lock().unwrap().push(upstream.label().to_string());
            std::future::ready(true)
        }
    };
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .refusal_check(refuses)
        .layer(backends.clone());
    block_on(async {
        let response = service.call(post(&[], "{}")).await.unwrap();
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = response.into_body().collect().await.unwrap();
        let owner = backends.seen()[0].0.clone();
        let other = if owner == A { B } else { A };
        // The owner resets a pooled connection mid-request, and refuses connections since.
        backends
            .acts
            .lock()
            .unwrap()
            .insert(owner.clone(), Act::Break);
        let call = post(
            &[
                ("mcp-session-id", &id),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            "{}",
        );
        let response = service.call(call).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "its session died with it"
        );
        assert_eq!(router.metrics().owners_down, 1);
        // A stateless 2026-07-28 call that breaks the same way may have run: not retried,
        // not even probed.
        backends
            .acts
            .lock()
            .unwrap()
            .insert(other.to_string(), Act::Break);
        let stateless = post(
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            "{}",
        );
        assert!(matches!(service.call(stateless).await, Err(Failure(false))));
        assert_eq!(*probed.lock().unwrap(), [owner]);
    });
}

#[test]
fn without_a_classifier_every_error_passes_through() {
    let (router, _) = router(&[A, B]);
    let backends = Backends::new(&[(A, Act::Refuse), (B, Act::Refuse)]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now).layer(backends.clone());
    let result = block_on(service.call(post(&[], "{}")));
    assert!(matches!(result, Err(Failure(true))));
    assert_eq!(backends.seen().len(), 1);
    assert_eq!(router.metrics().owners_down, 0);
}

#[test]
fn a_body_too_large_to_keep_is_streamed_once() {
    let (router, _) = router(&[A, B]);
    let backends = Backends::new(&[(A, Act::Refuse), (B, Act::Refuse)]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .replay_limit(4)
        .layer(backends.clone());
    let result = block_on(service.call(post(&[], "{\"more than four\":1}")));
    // Refused, but its body is gone with the attempt: the error is returned.
    assert!(matches!(result, Err(Failure(true))));
    assert_eq!(backends.seen().len(), 1);
    assert_eq!(router.metrics().owners_down, 1);
}

#[test]
fn a_body_that_outgrows_its_announced_length_is_a_bad_request() {
    // A stream of two chunks that claims (by its size hint) one byte at most.
    struct Liar(StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Frame>>>);
    type Frame = Result<http_body::Frame<Bytes>, Infallible>;
    impl http_body::Body for Liar {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(1)
        }
    }
    #[derive(Clone)]
    struct Never;
    impl Service<Request<ReplayBody<Liar>>> for Never {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<ReplayBody<Liar>>) -> Self::Future {
            panic!("a bad body never reaches a backend")
        }
    }
    let (router, _) = router(&[A]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now).layer(Never);
    let frames: Vec<Frame> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"a"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"bc"))),
    ];
    let body = Liar(StreamBody::new(futures_util::stream::iter(frames)));
    let response = block_on(service.call(Request::post("/mcp").body(body).unwrap())).unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn a_conversation_the_router_cannot_record_is_answered_with_a_rejection() {
    let (router, _) = router(&[A, B]);
    // Both backends mint the same id: the second one conflicts.
    let backends = Backends::new(&[(A, mints("dup")), (B, mints("dup"))]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now).layer(backends.clone());
    let statuses: Vec<StatusCode> = block_on(async {
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let response = service.call(post(&[], "{}")).await.unwrap();
            statuses.push(response.status());
            let _ = response.into_body().collect().await.unwrap();
        }
        statuses
    });
    assert_eq!(statuses[0], StatusCode::OK);
    assert_ne!(
        statuses[1],
        StatusCode::OK,
        "the conflicting answer is replaced"
    );
    assert_eq!(router.metrics().key_conflicts, 1);
}

#[test]
fn readiness_is_the_inner_service_s_and_a_dropped_request_ends_its_exchange() {
    let (router, [a, b]) = router(&[A, B]).map_ids();
    let backends = Backends::new(&[(A, Act::Hang), (B, Act::Hang)]);
    let mut service = AffinityLayer::new(router.clone(), Instant::now).layer(backends.clone());
    *backends.ready.lock().unwrap() = false;
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(service.poll_ready(&mut cx).is_pending());
    *backends.ready.lock().unwrap() = true;
    assert!(service.poll_ready(&mut cx).is_ready());
    // A session, then a request of it that its backend never answers.
    let minting = Backends::new(&[(A, mints("s1")), (B, mints("s1"))]);
    let mut starts = AffinityLayer::new(router.clone(), Instant::now).layer(minting.clone());
    block_on(async {
        let response = starts.call(post(&[], "{}")).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    });
    let owner = if minting.seen()[0].0 == A { a } else { b };
    let mut future = service.call(post(
        &[
            ("mcp-session-id", "s1"),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        "{}",
    ));
    assert!(future.as_mut().poll(&mut cx).is_pending());
    drop(future);
    // The request reached the owner, which never answered; dropping it ended the exchange.
    assert_eq!(backends.seen().len(), 1);
    let m = router.metrics();
    assert_eq!((m.pinned, m.placed, m.rejected_total()), (1, 1, 0));
    assert_eq!(router.remove_backend(owner, Instant::now()).unwrap(), 1);
}

#[test]
fn keys_the_table_does_not_know_are_looked_up_through_the_store() {
    let now = Instant::now();
    let fleet = |names: &[&str]| {
        let router = Arc::new(
            Router::builder()
                .shared_store(SharedStore::new("t", now, 1_700_000_000))
                .build(),
        );
        for name in names {
            router
                .add(NewBackend::new(TenantId::DEFAULT, &format!("http://{name}.test")).name(name))
                .unwrap();
        }
        router
    };
    let (one, two) = (fleet(&["x", "y"]), fleet(&["x", "y"]));
    let minting = Backends::new(&[
        ("http://x.test", mints("s1")),
        ("http://y.test", mints("s1")),
    ]);
    let mut first = AffinityLayer::new(one.clone(), Instant::now).layer(minting.clone());
    block_on(async {
        let response = first.call(post(&[], "{}")).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    });
    let store: HashMap<String, String> = one
        .take_store_writes(16)
        .into_iter()
        .filter_map(|w| match w {
            StoreWrite::Bind { key, value, .. } => Some((key, value)),
            _ => None,
        })
        .collect();
    assert_eq!(store.len(), 1);
    let store = Arc::new(store);
    let lookup = {
        let store = store.clone();
        move |key: String| {
            let answer = match store.get(&key) {
                Some(value) => StoreAnswer::Found(value.clone()),
                None => StoreAnswer::Missing,
            };
            std::future::ready(answer)
        }
    };
    let serving = Backends::new(&[
        ("http://x.test", Act::Answer(vec![], "{}")),
        ("http://y.test", Act::Answer(vec![], "{}")),
    ]);
    let mut second = AffinityLayer::new(two.clone(), Instant::now)
        .store_lookup(lookup)
        .layer(serving.clone());
    let mut blind = AffinityLayer::new(two.clone(), Instant::now).layer(serving.clone());
    let call = || {
        post(
            &[
                ("mcp-session-id", "s1"),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            "{}",
        )
    };
    block_on(async {
        // Without a way to read the store the key is unknown here: 503, retry.
        let response = blind.call(call()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = second.call(call()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = response.into_body().collect().await.unwrap();
    });
    let owner = &minting.seen()[0].0;
    assert_eq!(
        &serving.seen()[0].0,
        owner,
        "routed to the router-wide owner"
    );
    let m = two.metrics();
    assert_eq!((m.store_lookups, m.store_found), (2, 1));
    let unavailable = m
        .rejected
        .iter()
        .find(|(name, _)| {
            *name == Reason::StoreUnavailable(mcp_affinity::table::KeyKind::Session).as_str()
        })
        .unwrap()
        .1;
    assert_eq!(unavailable, 1);
}

/// `[BackendId; 2]` from the router helper.
trait MapIds {
    fn map_ids(self) -> (Arc<Router>, [BackendId; 2]);
}

impl MapIds for (Arc<Router>, Vec<BackendId>) {
    fn map_ids(self) -> (Arc<Router>, [BackendId; 2]) {
        (self.0, [self.1[0], self.1[1]])
    }
}

/// A 2026-07-28 call that creates a task: the task id is in the body, and the store must have
/// it before the client does (its `tasks/get` may reach another router at once).
#[cfg(feature = "tasks")]
#[test]
fn a_task_revealed_in_a_body_is_written_to_the_store_before_the_body_reaches_the_client() {
    let now = Instant::now();
    let router = Arc::new(
        Router::builder()
            .shared_store(SharedStore::new("t", now, 1_700_000_000))
            .build(),
    );
    router
        .add(NewBackend::new(TenantId::DEFAULT, "http://x.test").name("x"))
        .unwrap();
    let task = r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"t-1"}}"#;
    let backends = Backends::new(&[(
        "http://x.test",
        Act::Answer(vec![("content-type", "application/json".into())], task),
    )]);
    // The store writer: the first call completes only when polled again (a real round trip).
    let written: Arc<Mutex<Vec<String>>> = Arc::default();
    let sync = {
        let (router, written) = (router.clone(), written.clone());
        move || {
            let (router, written) = (router.clone(), written.clone());
            let mut polled = false;
            std::future::poll_fn(move |cx| {
                if !polled {
                    polled = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                for write in router.take_store_writes(usize::MAX) {
                    if let StoreWrite::Bind { key, .. } = write {
                        written.lock().unwrap().push(key);
                    }
                }
                Poll::Ready(())
            })
        }
    };
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .store_sync(sync)
        .layer(backends);
    let call = post(
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "job"),
        ],
        "{}",
    );
    let body = block_on(async {
        let response = service.call(call).await.unwrap();
        // Nothing was revealed by the head.
        assert!(written.lock().unwrap().is_empty());
        let mut body = std::pin::pin!(response.into_body());
        // The chunk naming the task waits for its write: the body is not over yet, and the
        // chunk still counts in its length.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        assert!(written.lock().unwrap().is_empty());
        assert!(!body.is_end_stream(), "the chunk is still to come");
        assert_eq!(body.size_hint().exact(), Some(task.len() as u64));
        body.collect().await.unwrap().to_bytes()
    });
    assert_eq!(&body[..], task.as_bytes(), "the body goes on unchanged");
    assert_eq!(*written.lock().unwrap(), ["t:b:0:3:t-1"]);
    assert_eq!(router.store_queue_len(), 0);
}

#[test]
fn a_request_not_delivered_for_no_telling_reason_asks_whether_its_backend_refuses() {
    // Not delivered, and the classifier cannot tell why (a connection a dying process reset
    // before the request was written): the refusal check decides between a dead owner (404)
    // and "retry later" (503).
    fn reset(failure: &Failure) -> Option<Undelivered> {
        failure.0.then_some(Undelivered::Failed)
    }
    for refuses in [true, false] {
        let (router, _) = router(&[A]);
        let backends = Backends::new(&[(A, mints("s1"))]);
        let mut service = AffinityLayer::new(router.clone(), Instant::now)
            .undelivered(reset)
            .refusal_check(move |_: &Upstream| std::future::ready(refuses))
            .layer(backends.clone());
        block_on(async {
            let response = service.call(post(&[], "{}")).await.unwrap();
            let _ = response.into_body().collect().await.unwrap();
            backends
                .acts
                .lock()
                .unwrap()
                .insert(A.to_string(), Act::Refuse);
            let call = post(
                &[
                    ("mcp-session-id", "s1"),
                    ("mcp-protocol-version", "2025-11-25"),
                ],
                "{}",
            );
            let response = service.call(call).await.unwrap();
            let expected = if refuses {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            assert_eq!(response.status(), expected, "refuses: {refuses}");
            assert_eq!(router.metrics().owners_down, u64::from(refuses));
        });
    }
}

/// A start placed on A (which does `a`) with B (which mints `s-b`) to fall back on, through a
/// layer with a refusal check that says whether A refuses connections now (`a_died`), or
/// without one (`None`): its status, session and body (or the body's error).
fn start_on_a(a: Act, a_died: Option<bool>) -> (Arc<Router>, Backends, Answered) {
    let (router, _) = router(&[A, B]);
    let backends = Backends::new(&[(A, a), (B, mints("s-b"))]);
    let mut layer = AffinityLayer::new(router.clone(), Instant::now).undelivered(classify);
    if let Some(died) = a_died {
        layer = layer.refusal_check(move |u: &Upstream| std::future::ready(died && u.label() == A));
    }
    let mut service = layer.layer(backends.clone());
    let answered = block_on(async {
        let response = service.call(post(&[], "{\"init\":1}")).await.unwrap();
        let session = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_string());
        let status = response.status();
        let body = response.into_body().collect().await.map(|c| c.to_bytes());
        (status, session, body)
    });
    (router, backends, answered)
}

type Answered = (StatusCode, Option<String>, Result<Bytes, Failure>);

fn labels(backends: &Backends) -> Vec<String> {
    backends.seen().into_iter().map(|(l, _, _)| l).collect()
}

#[test]
fn a_start_whose_backend_dies_between_the_head_and_the_first_frame_is_placed_again() {
    // The head came (200, an event stream, a session), then the connection was cut before
    // any event, and A refuses connections now: the client is shown nothing of A's answer.
    let (router, backends, (status, session, body)) =
        start_on_a(Act::Stream(vec![], true), Some(true));
    assert_eq!(labels(&backends), [A, B]);
    assert_eq!((status, session.as_deref()), (StatusCode::OK, Some("s-b")));
    assert_eq!(&body.unwrap()[..], b"{}");
    assert!(
        backends
            .seen()
            .iter()
            .all(|(_, _, b)| &b[..] == b"{\"init\":1}")
    );
    let m = router.metrics();
    assert_eq!((m.placements_retried, m.owners_down), (1, 1));
    // Only B's session is known: A's head was never shown to the router.
    assert_eq!(m.keys_learned, 1);
    assert_eq!(m.rejected_total(), 0);
}

#[test]
fn a_start_cut_by_a_backend_that_still_listens_gets_the_cut_as_it_came() {
    // A listens still: what the start did there may survive, so it is not sent again.
    let (router, backends, (status, session, body)) =
        start_on_a(Act::Stream(vec![], true), Some(false));
    assert_eq!(labels(&backends), [A]);
    assert_eq!((status, session.as_deref()), (StatusCode::OK, Some("s-a")));
    assert!(matches!(body, Err(Failure(false))));
    assert_eq!(router.metrics().placements_retried, 0);
}

#[test]
fn a_body_read_ahead_that_failed_does_not_look_empty() {
    // An exact size of 0 would have hyper write an empty answer that looks whole, and never
    // poll for the error.
    let (router, _) = router(&[A]);
    let backends = Backends::new(&[(A, Act::Stream(vec![], true))]);
    let mut service = AffinityLayer::new(router, Instant::now)
        .refusal_check(|_: &Upstream| std::future::ready(false))
        .layer(backends);
    let response = block_on(service.call(post(&[], "{}"))).unwrap();
    let body = response.into_body();
    assert!(!body.is_end_stream());
    assert_eq!(body.size_hint().exact(), None);
    assert!(matches!(block_on(body.collect()), Err(Failure(false))));
}

#[test]
fn a_start_that_dies_with_no_frame_or_only_empty_ones_is_placed_again() {
    // A close-delimited body ends cleanly when its backend dies; empty data frames tell
    // nothing of whether it lives.
    for (chunks, cut) in [(vec![], false), (vec!["", ""], true), (vec![""], false)] {
        let case = format!("{chunks:?}, cut {cut}");
        let (router, backends, (status, session, body)) =
            start_on_a(Act::Stream(chunks, cut), Some(true));
        assert_eq!(labels(&backends), [A, B], "{case}");
        assert_eq!(
            (status, session.as_deref()),
            (StatusCode::OK, Some("s-b")),
            "{case}"
        );
        assert_eq!(&body.unwrap()[..], b"{}", "{case}");
        let m = router.metrics();
        assert_eq!(
            (m.placements_retried, m.owners_down, m.keys_learned),
            (1, 1, 1),
            "{case}"
        );
    }
}

#[test]
fn sixteen_empty_frames_are_passed_over_and_the_seventeenth_counts_as_the_first() {
    // The bound keeps a body of endless empty frames from holding the head (and from keeping
    // the task polling): past it, the start is the backend's, cut or not.
    for (empty, placed_again) in [(16, true), (17, false)] {
        let (router, backends, (status, session, body)) =
            start_on_a(Act::Stream(vec![""; empty], true), Some(true));
        let m = router.metrics();
        if placed_again {
            assert_eq!(labels(&backends), [A, B]);
            assert_eq!((status, session.as_deref()), (StatusCode::OK, Some("s-b")));
            assert_eq!(&body.unwrap()[..], b"{}");
            assert_eq!(m.placements_retried, 1);
        } else {
            assert_eq!(labels(&backends), [A]);
            assert_eq!((status, session.as_deref()), (StatusCode::OK, Some("s-a")));
            assert!(matches!(body, Err(Failure(false))));
            assert_eq!(m.placements_retried, 0);
        }
    }
}

#[test]
fn a_start_cut_after_its_first_frame_is_not_placed_again() {
    // The client has had the first event: the rest of the stream is A's, cut or not.
    let event = "event: message\ndata: {}\n\n";
    let (router, backends, (status, session, body)) =
        start_on_a(Act::Stream(vec![event], true), Some(true));
    assert_eq!(labels(&backends), [A]);
    assert_eq!((status, session.as_deref()), (StatusCode::OK, Some("s-a")));
    assert!(matches!(body, Err(Failure(false))));
    let m = router.metrics();
    assert_eq!((m.placements_retried, m.owners_down), (0, 0));
}

#[test]
fn a_start_read_ahead_reaches_the_client_whole_and_a_start_without_a_refusal_check_is_not_read_ahead()
 {
    let events = vec!["event: message\n", "data: {}\n\n", ": more\n\n"];
    for check in [Some(true), None] {
        let (router, backends, (status, session, body)) =
            start_on_a(Act::Stream(events.clone(), false), check);
        assert_eq!(labels(&backends), [A]);
        assert_eq!((status, session.as_deref()), (StatusCode::OK, Some("s-a")));
        assert_eq!(&body.unwrap()[..], events.concat().as_bytes());
        let m = router.metrics();
        assert_eq!((m.keys_learned, m.placements_retried), (1, 0));
    }
    // No refusal check: nothing tells a dead backend from a live one, so the cut passes on.
    let (_, backends, (_, session, body)) = start_on_a(Act::Stream(vec![], true), None);
    assert_eq!(labels(&backends), [A]);
    assert_eq!(session.as_deref(), Some("s-a"));
    assert!(matches!(body, Err(Failure(false))));
}
