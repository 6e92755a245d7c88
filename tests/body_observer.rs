//! `ObservedBody`: frames pass through unchanged and on demand, the exchange ends exactly once
//! (completed, failed or dropped), and dropping the wrapper drops the backend body at once.

mod common;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use common::*;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use mcp_affinity::TenantId;
use mcp_affinity::body::ObservedBody;
use mcp_affinity::router::{HeadOutcome, Router};

type Step = Poll<Option<Result<Frame<Bytes>, std::io::Error>>>;

/// A backend body that plays a script, one step per poll, and reports polls and its drop.
struct Script {
    steps: VecDeque<Step>,
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    hint: SizeHint,
}

impl Script {
    fn new(steps: Vec<Step>) -> (Self, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let script = Script {
            steps: steps.into(),
            polls: polls.clone(),
            dropped: dropped.clone(),
            hint: SizeHint::default(),
        };
        (script, polls, dropped)
    }
}

impl Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Step {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.steps.pop_front().unwrap_or(Poll::Ready(None))
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

fn data(bytes: &'static [u8]) -> Step {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(bytes)))))
}

type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

fn poll<B: Body + Unpin>(body: &mut B) -> Polled<B> {
    Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
}

/// A router with one backend and an open legacy SSE stream, observing its body.
fn sse_stream() -> (Arc<Router>, mcp_affinity::router::Exchange) {
    let router = Arc::new(Router::builder().build());
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = Clock::new().now();
    let mut ex = forward(router.route(&get("/sse", &[]), now));
    let outcome = router.on_response_head(&mut ex, &mut resp(200, &[SSE]), now);
    assert!(matches!(outcome, HeadOutcome::Observe));
    (router, ex)
}

fn clock() -> std::time::Instant {
    Clock::new().now()
}

const ENDPOINT: &[u8] = b"event: endpoint\r\ndata: /messages/?session_id=s1\r\n\r\n";

#[test]
fn frames_pass_through_unchanged_one_per_poll_and_are_never_held_back() {
    let (router, ex) = sse_stream();
    let (script, polls, _) = Script::new(vec![
        data(b"event: endpoint\r\ndata: /messages/?sess"),
        Poll::Pending,
        data(b"ion_id=s1\r\n\r\n"),
        data(b": keep-alive\r\n\r\n"),
    ]);
    let mut body = ObservedBody::new(script, router.clone(), ex, clock);

    // Each poll of the wrapper polls the backend once and hands its frame on at once.
    let first = poll(&mut body);
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    let Poll::Ready(Some(Ok(frame))) = first else {
        panic!()
    };
    let first = frame.into_data().unwrap();
    assert_eq!(&first[..], b"event: endpoint\r\ndata: /messages/?sess");
    assert!(
        poll(&mut body).is_pending(),
        "a pending backend is a pending body"
    );
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert!(body.is_observing());
    let Poll::Ready(Some(Ok(frame))) = poll(&mut body) else {
        panic!()
    };
    assert_eq!(&frame.into_data().unwrap()[..], b"ion_id=s1\r\n\r\n");
    assert!(
        !body.is_observing(),
        "learned: the body is no longer inspected"
    );
    assert_eq!(router.metrics().keys_learned, 1);
    let Poll::Ready(Some(Ok(_))) = poll(&mut body) else {
        panic!()
    };
    assert!(matches!(poll(&mut body), Poll::Ready(None)));
    assert_eq!(
        polls.load(Ordering::SeqCst),
        5,
        "no poll ahead of the consumer"
    );
}

#[test]
fn data_is_not_copied() {
    let (router, ex) = sse_stream();
    let chunk = Bytes::from_static(ENDPOINT);
    let (script, _, _) = Script::new(vec![Poll::Ready(Some(Ok(Frame::data(chunk.clone()))))]);
    let mut body = ObservedBody::new(script, router, ex, clock);
    let Poll::Ready(Some(Ok(frame))) = poll(&mut body) else {
        panic!()
    };
    assert_eq!(frame.into_data().unwrap().as_ptr(), chunk.as_ptr());
}

#[test]
fn a_slow_consumer_makes_the_backend_wait_instead_of_buffering() {
    let (router, ex) = sse_stream();
    let steps = (0..100).map(|_| data(b": ping\r\n\r\n")).collect();
    let (script, polls, _) = Script::new(steps);
    let mut body = ObservedBody::new(script, router, ex, clock);
    for consumed in 1..=10 {
        let _ = poll(&mut body);
        // The consumer took `consumed` frames; the backend was asked for exactly as many.
        assert_eq!(polls.load(Ordering::SeqCst), consumed);
    }
}

#[test]
fn dropping_the_body_drops_the_backend_body_at_once_and_ends_the_exchange() {
    let (router, ex) = sse_stream();
    let (script, _, dropped) = Script::new(vec![data(ENDPOINT), Poll::Pending]);
    let mut body = ObservedBody::new(script, router.clone(), ex, clock);
    let _ = poll(&mut body);
    assert!(poll(&mut body).is_pending());
    // The session lives while the stream does…
    let message = post("/messages/?session_id=s1", &[]);
    assert!(matches!(
        router.route(&message, clock()),
        mcp_affinity::router::Routed::Forward(_)
    ));
    // …and the client going away cancels the backend body and ends the session.
    drop(body);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the backend body was dropped with the wrapper"
    );
    assert_eq!(router.metrics().keys_released, 1);
    assert!(matches!(
        router.route(&message, clock()),
        mcp_affinity::router::Routed::Reject(_)
    ));
}

#[test]
fn a_body_that_fails_mid_stream_ends_the_exchange_as_aborted() {
    let (router, ex) = sse_stream();
    let (script, _, _) = Script::new(vec![
        data(ENDPOINT),
        Poll::Ready(Some(Err(std::io::Error::other("backend reset")))),
    ]);
    let mut body = ObservedBody::new(script, router.clone(), ex, clock);
    let _ = poll(&mut body);
    assert_eq!(router.metrics().keys_learned, 1);
    let Poll::Ready(Some(Err(err))) = poll(&mut body) else {
        panic!()
    };
    assert_eq!(err.to_string(), "backend reset", "the error passes through");
    assert_eq!(
        router.metrics().keys_released,
        1,
        "ended at the error, not at drop"
    );
    drop(body);
    assert_eq!(router.metrics().keys_released, 1, "and ended once");
}

#[test]
fn trailers_size_hints_and_end_of_stream_pass_through() {
    let router = Arc::new(Router::builder().build());
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = clock();
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let _ = router.on_response_head(&mut ex, &mut resp(200, &[JSON]), now);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let (mut script, _, _) = Script::new(vec![
        data(b"{}"),
        Poll::Ready(Some(Ok(Frame::trailers(trailers.clone())))),
    ]);
    script.hint = SizeHint::with_exact(2);
    let mut body = ObservedBody::new(script, router, ex, clock);
    assert_eq!(body.size_hint().exact(), Some(2));
    assert!(!body.is_end_stream());
    let _ = poll(&mut body);
    let Poll::Ready(Some(Ok(frame))) = poll(&mut body) else {
        panic!()
    };
    assert_eq!(frame.into_trailers().unwrap(), trailers);
    assert!(body.is_end_stream());
}
