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

/// The next frame, which must be ready.
fn next<B: Body + Unpin>(body: &mut B) -> Frame<B::Data>
where
    B::Error: std::fmt::Debug,
{
    match poll(body) {
        Poll::Ready(Some(Ok(frame))) => frame,
        other => panic!(
            "expected a frame: {:?}",
            other.map(|f| f.map(|r| r.map(|_| ())))
        ),
    }
}

/// The body has ended, and its backend was asked `polls` times in all.
fn assert_done<B: Body + Unpin>(body: &mut B, polls: &AtomicUsize, expected: usize, why: &str) {
    assert!(matches!(poll(body), Poll::Ready(None)), "{why}: ended");
    assert_eq!(polls.load(Ordering::SeqCst), expected, "{why}");
}

/// A JSON answer to a call on a router with one backend: the router does not read its body.
fn json_answer(status: u16) -> (Arc<Router>, mcp_affinity::router::Exchange) {
    let router = Arc::new(Router::builder().build());
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let now = clock();
    let mut ex = forward(router.route(&post("/mcp", &[]), now));
    let _ = router.on_response_head(&mut ex, &mut resp(status, &[JSON]), now);
    (router, ex)
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

/// The same with a router that seals legacy sessions: it rewrites the endpoint event, holding
/// its bytes until the event is whole.
fn sealed_sse_stream() -> (Arc<Router>, mcp_affinity::router::Exchange) {
    use mcp_affinity::router::Sealing;
    use mcp_affinity::seal::{Keyring, SealKey};
    let keys = Keyring::new([SealKey::new([7; 32])]).unwrap();
    let router = Router::builder()
        .sealing(Sealing::new(keys, [9; 12], clock(), 1_795_000_000))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let router = Arc::new(router);
    let mut ex = forward(router.route(&get("/sse", &[]), clock()));
    let _ = router.on_response_head(&mut ex, &mut resp(200, &[SSE]), clock());
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
    let frame = next(&mut body);
    assert_eq!(&frame.into_data().unwrap()[..], b"ion_id=s1\r\n\r\n");
    assert!(
        !body.is_observing(),
        "learned: the body is no longer inspected"
    );
    assert_eq!(router.metrics().keys_learned, 1);
    next(&mut body);
    // The backend said it had ended with its last frame: it is not asked again.
    assert_done(
        &mut body,
        &polls,
        4,
        "no poll ahead of the consumer, none past the end",
    );
}

/// A body that knows its last frame is its last (read ahead to its end, or of a known length)
/// ends with it: the exchange ends as the frame goes, and the wrapper says it has ended, so
/// that its reader (hyper) need not poll again for the end and lets it go at once. Without
/// that, a reader that stops at `is_end_stream` dropped it, and the exchange ended as aborted.
#[test]
fn the_last_frame_ends_the_exchange_and_the_body_when_the_backend_knows_it_is_the_last() {
    for observed in [true, false] {
        // An SSE stream is read for its endpoint; a JSON answer is not read at all.
        let (router, ex) = if observed {
            sse_stream()
        } else {
            json_answer(200)
        };
        let (script, polls, _) = Script::new(vec![data(ENDPOINT)]);
        let mut body = ObservedBody::new(script, router.clone(), ex, clock);
        assert!(!body.is_end_stream());
        let frame = next(&mut body);
        assert_eq!(&frame.into_data().unwrap()[..], ENDPOINT, "passed on whole");
        assert!(body.is_end_stream(), "ended with its last frame");
        assert!(!body.is_observing());
        if observed {
            // The legacy session was learned, and its stream has ended with the body.
            assert_eq!(router.metrics().keys_learned, 1);
            assert_eq!(router.metrics().keys_released, 1);
        }
        assert_done(&mut body, &polls, 1, "never asked past its end");
        drop(body);
        if observed {
            assert_eq!(router.metrics().keys_released, 1, "and ended once");
        }
    }
}

/// A sealing router rewrites the legacy endpoint event, holding its bytes until the event
/// is whole. With a backend that knows its last frame, the body still gives what the router's
/// own calls give for the same chunks, cut anywhere: the rewritten event when it is whole, and
/// what was held, last, when the body ends inside it.
#[test]
fn what_the_router_holds_goes_after_the_last_frame_in_order() {
    use mcp_affinity::router::Data;
    let whole: &[u8] = b": ping\r\n\r\nevent: endpoint\r\ndata: /messages/?session_id=\
fd15ff9f769d4acd9a944aa18b923c61\r\n\r\nevent: message\r\ndata: {}";
    // Cut short inside the endpoint event: the router holds it when the body ends.
    let cut_short = &whole[..60];
    let mut cases: Vec<Vec<&[u8]>> = vec![vec![whole], vec![cut_short]];
    for cut in [8, 20, 40, 60, 80, whole.len() - 3] {
        cases.push(vec![&whole[..cut], &whole[cut..]]);
    }
    for cut in [8, 20, 40] {
        cases.push(vec![&cut_short[..cut], &cut_short[cut..]]);
    }
    for chunks in cases {
        // The router's calls, one after the other.
        let (router, mut ex) = sealed_sse_stream();
        let mut expected = Vec::new();
        for chunk in &chunks {
            let data = router.on_response_data(&mut ex, Bytes::copy_from_slice(chunk), clock());
            if let Data::Send(bytes) = data {
                expected.extend_from_slice(&bytes);
            }
        }
        expected.extend(router.on_response_data_end(&mut ex).unwrap_or_default());
        // The same through the body, whose backend knows its last frame.
        let (router, ex) = sealed_sse_stream();
        let (script, _, _) = Script::new(
            chunks
                .iter()
                .map(|c| Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(c))))))
                .collect(),
        );
        let mut body = ObservedBody::new(script, router.clone(), ex, clock);
        let mut out = Vec::new();
        loop {
            match poll(&mut body) {
                Poll::Ready(Some(Ok(frame))) => out.extend_from_slice(&frame.into_data().unwrap()),
                Poll::Ready(None) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(body.is_end_stream());
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "{chunks:?}"
        );
        if chunks.concat() == whole {
            assert!(
                !out.windows(8).any(|w| w == b"fd15ff9f"),
                "the id was sealed"
            );
        }
    }
}

/// A chunk that waits for the shared store's writes before it goes (a legacy SSE session the
/// fleet must know first) may be the last: the exchange still ends with it once the writes are
/// done, not when the reader, told the body has ended, drops it.
#[test]
fn the_last_chunk_after_the_store_writes_still_ends_the_exchange_with_it() {
    use mcp_affinity::router::store::SharedStore;
    /// Not done the first time it is polled.
    struct Once(bool);
    impl std::future::Future for Once {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }
    let now = clock();
    let router = Router::builder()
        .shared_store(SharedStore::new("mcp", now, 1_795_000_000))
        .build();
    router.add_backend(TenantId::DEFAULT, "a", 1).unwrap();
    let router = Arc::new(router);
    let mut ex = forward(router.route(&get("/sse", &[]), now));
    let _ = router.on_response_head(&mut ex, &mut resp(200, &[SSE]), now);
    let (script, polls, _) = Script::new(vec![data(ENDPOINT)]);
    let synced = Arc::new(AtomicUsize::new(0));
    let count = synced.clone();
    let mut body =
        ObservedBody::new(script, router.clone(), ex, clock).with_store_sync(Arc::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            Once(false)
        }));
    assert!(
        poll(&mut body).is_pending(),
        "the chunk waits for the writes"
    );
    assert_eq!(synced.load(Ordering::SeqCst), 1);
    assert!(!body.is_end_stream());
    let frame = next(&mut body);
    assert_eq!(&frame.into_data().unwrap()[..], ENDPOINT);
    assert!(body.is_end_stream(), "ended with its last chunk");
    assert_eq!(router.metrics().keys_learned, 1);
    assert_eq!(
        router.metrics().keys_released,
        1,
        "the session ended with its stream"
    );
    assert_done(&mut body, &polls, 1, "never asked past its end");
}

/// Trailers that come while the router still holds bytes back (a sealed endpoint event cut
/// short) go after those bytes, and end the body: nothing is asked of the backend after them.
#[test]
fn trailers_end_the_body_after_what_the_router_held() {
    let (router, ex) = sealed_sse_stream();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-done", "1".parse().unwrap());
    let cut: &'static [u8] = b"event: endpoint\r\ndata: /messa";
    let (script, polls, _) = Script::new(vec![
        data(cut),
        Poll::Ready(Some(Ok(Frame::trailers(trailers.clone())))),
    ]);
    let mut body = ObservedBody::new(script, router, ex, clock);
    let held = next(&mut body);
    assert_eq!(
        &held.into_data().unwrap()[..],
        cut,
        "what was held goes first, as it came"
    );
    assert!(!body.is_end_stream(), "the trailers are still to come");
    let frame = next(&mut body);
    assert_eq!(frame.into_trailers().unwrap(), trailers);
    assert!(body.is_end_stream());
    assert_done(&mut body, &polls, 2, "never asked past the trailers");
}

/// An empty body is not said to have ended before it is polled once: the exchange ends as the
/// reader finds the end, not when it drops a body it was told had ended.
#[test]
fn an_empty_body_is_polled_once_for_its_end() {
    let (router, ex) = json_answer(202);
    let (script, polls, _) = Script::new(vec![]);
    let mut body = ObservedBody::new(script, router, ex, clock);
    assert!(!body.is_end_stream(), "the exchange is still held");
    assert_done(&mut body, &polls, 1, "polled once, for its end");
    assert!(body.is_end_stream());
}

#[test]
fn data_is_not_copied() {
    let (router, ex) = sse_stream();
    let chunk = Bytes::from_static(ENDPOINT);
    let (script, _, _) = Script::new(vec![Poll::Ready(Some(Ok(Frame::data(chunk.clone()))))]);
    let mut body = ObservedBody::new(script, router, ex, clock);
    let frame = next(&mut body);
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
    let (router, ex) = json_answer(200);
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
    let frame = next(&mut body);
    assert_eq!(frame.into_trailers().unwrap(), trailers);
    assert!(body.is_end_stream());
}
