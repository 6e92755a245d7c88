//! An `http_body::Body` that drives a [`Router`] exchange as a response streams through.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::router::store::{StoreSync, SyncFuture};
use crate::router::{Data, End, Exchange, Router};
use crate::table::{MemoryTable, SessionTable};

/// Where an adapter gets the time it hands the router (the crate never reads the clock).
///
/// Implemented for every `Fn() -> Instant`, so `std::time::Instant::now` (or a test's manual
/// clock) is a clock.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Instant;
}

impl<F: Fn() -> Instant + Send + Sync + 'static> Clock for F {
    fn now(&self) -> Instant {
        self()
    }
}

pin_project! {
    /// A response body that shows its data frames to the router while passing every frame on
    /// unchanged, and ends the exchange when the body ends, fails or is dropped.
    ///
    /// - It polls the inner body only when it is polled, and holds no frame back, so a slow
    ///   client slows the backend (backpressure) and nothing is buffered, with two bounded
    ///   exceptions: when the router rewrites the body's first event
    ///   ([`HeadOutcome::Rewrite`](crate::router::HeadOutcome::Rewrite), sealed legacy SSE
    ///   sessions), the bytes up to that event are held and sent rewritten; and a chunk that
    ///   reveals a key the shared store must have first waits for its writes
    ///   ([`with_store_sync`](ObservedBody::with_store_sync)).
    /// - Data frames go through [`Router::on_response_data`] only while the router is
    ///   observing or rewriting; after that the wrapper only forwards.
    /// - The end of the body ends the exchange as [`End::Completed`]; an error from the inner
    ///   body, or dropping the wrapper first (a client that went away), as [`End::Aborted`].
    ///   Dropping the wrapper drops the inner body at once: the backend sees the cancellation.
    ///   The inner body's [`is_end_stream`](Body::is_end_stream) is trusted: once it says a
    ///   frame was its last, the exchange ends with that frame, and nothing past it is read.
    /// - Trailers pass through. [`size_hint`](Body::size_hint) is the inner body's, plus the
    ///   bytes taken from it and not yet sent (unknown while the body is being rewritten: it
    ///   will have another length); [`is_end_stream`](Body::is_end_stream) is true once the
    ///   exchange has ended and nothing held is left to send (with the last frame, when the
    ///   inner body knows it is the last).
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use std::sync::Arc;
    /// use std::time::Instant;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use mcp_affinity::TenantId;
    /// use mcp_affinity::body::ObservedBody;
    /// use mcp_affinity::router::{HeadOutcome, Routed, Router};
    ///
    /// let router = Arc::new(Router::builder().build());
    /// router.add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1).unwrap();
    ///
    /// // A legacy SSE connect: the session is in the body's `endpoint` event.
    /// let (req, _) = Request::get("/sse").body(()).unwrap().into_parts();
    /// let Routed::Forward(mut exchange) = router.route(&req, Instant::now()) else { panic!() };
    /// let response = Response::builder()
    ///     .header("content-type", "text/event-stream")
    ///     .body(Full::new(Bytes::from_static(b"event: endpoint\ndata: /messages?sessionId=s1\n\n")))
    ///     .unwrap();
    /// let (mut head, body) = response.into_parts();
    /// assert!(matches!(router.on_response_head(&mut exchange, &mut head, Instant::now()), HeadOutcome::Observe));
    ///
    /// let body = ObservedBody::new(body, router.clone(), exchange, Instant::now);
    /// let bytes = body.collect().await.unwrap().to_bytes(); // what the client receives, unchanged
    /// assert!(bytes.starts_with(b"event: endpoint"));
    /// assert_eq!(router.metrics().keys_learned, 1);
    /// assert_eq!(router.metrics().keys_released, 1); // the stream ended: the session with it
    /// # });
    /// ```
    #[must_use = "bodies do nothing unless polled"]
    pub struct ObservedBody<B, C, T = MemoryTable>
    where
        T: SessionTable,
        C: Clock,
    {
        #[pin]
        inner: B,
        router: Arc<Router<T>>,
        exchange: Option<Exchange>,
        observing: bool,
        // A frame that came while bytes were held: sent after them.
        pending: Option<Frame<Bytes>>,
        // The inner body ended; what was held has been sent.
        ended: bool,
        clock: C,
        // Performs the store writes of a key a chunk revealed, before the chunk goes on.
        sync: Option<Arc<dyn StoreSync>>,
        // The writes under way, and the chunk that waits for them.
        syncing: Option<(SyncFuture, Bytes)>,
    }

    impl<B, C, T> PinnedDrop for ObservedBody<B, C, T>
    where
        T: SessionTable,
        C: Clock,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let _ = end_exchange(this.router, this.exchange, this.clock, End::Aborted);
        }
    }
}

impl<B, C: Clock, T: SessionTable> ObservedBody<B, C, T> {
    /// Wraps `inner`, the body of the response whose head was shown to
    /// [`Router::on_response_head`] for `exchange`.
    pub fn new(inner: B, router: Arc<Router<T>>, exchange: Exchange, clock: C) -> Self {
        let observing = exchange.is_observing();
        ObservedBody {
            inner,
            router,
            exchange: Some(exchange),
            observing,
            pending: None,
            ended: false,
            clock,
            sync: None,
            syncing: None,
        }
    }

    /// Performs the router's store writes through `sync` whenever a chunk revealed a key
    /// shared through the store (a task id, a legacy SSE session), before that chunk is
    /// passed on (see [`Exchange::take_store_sync`](crate::router::Exchange::take_store_sync)).
    pub fn with_store_sync(mut self, sync: Arc<dyn StoreSync>) -> Self {
        self.sync = Some(sync);
        self
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Whether the router is still reading the body.
    pub fn is_observing(&self) -> bool {
        self.observing
    }

    /// Whether the body's frames pass untouched: the exchange is still held, the router reads
    /// no more of the body, and no frame, held bytes or store write waits to go first.
    fn passes(&self) -> bool {
        // (Nor rewriting, which alone holds bytes back: it implies observing today, but the
        // path below must not depend on that.)
        self.exchange
            .as_ref()
            .is_some_and(|e| !e.is_observing() && !e.is_rewriting())
            && self.pending.is_none()
            && self.syncing.is_none()
            && !self.ended
    }
}

/// Ends `exchange`, if still held, `how`; what the router held back of the body, to send last.
fn end_exchange<T: SessionTable, C: Clock>(
    router: &Router<T>,
    exchange: &mut Option<Exchange>,
    clock: &C,
    how: End,
) -> Option<Bytes> {
    let mut exchange = exchange.take()?;
    // An error drops what was held: the stream is broken anyway.
    let rest = match how {
        End::Completed => router.on_response_data_end(&mut exchange),
        End::Aborted => None,
    };
    router.on_exchange_end(exchange, how, clock.now());
    rest
}

impl<B, C, T> ObservedBody<B, C, T>
where
    B: Body<Data = Bytes>,
    C: Clock,
    T: SessionTable,
{
    /// The next frame to send: the inner body's, seen by the router, or what it held back.
    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some((writes, _)) = this.syncing.as_mut() {
            if writes.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some((_, chunk)) = this.syncing.take() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        loop {
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(end) => {
                    let how = match end {
                        None => End::Completed,
                        Some(_) => End::Aborted,
                    };
                    *this.observing = false;
                    let rest = end_exchange(this.router, this.exchange, this.clock, how);
                    return match (rest, end) {
                        (Some(rest), None) => {
                            *this.ended = true;
                            Poll::Ready(Some(Ok(Frame::data(rest))))
                        }
                        (_, end) => Poll::Ready(end),
                    };
                }
            };
            let exchange = match this.exchange.as_mut() {
                Some(exchange) if *this.observing => exchange,
                _ => return Poll::Ready(Some(Ok(frame))),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // Trailers: whatever was held goes first.
                    *this.observing = false;
                    return match this.router.on_response_data_end(exchange) {
                        Some(rest) => {
                            *this.pending = Some(frame);
                            Poll::Ready(Some(Ok(Frame::data(rest))))
                        }
                        None => Poll::Ready(Some(Ok(frame))),
                    };
                }
            };
            let out = this
                .router
                .on_response_data(exchange, data, this.clock.now());
            *this.observing = exchange.is_observing();
            match out {
                Data::Send(bytes) => {
                    if let Some(sync) = this.sync.as_ref().filter(|_| exchange.take_store_sync()) {
                        // The chunk names a key the store must have before the client does.
                        let mut writes = sync.sync();
                        if writes.as_mut().poll(cx).is_pending() {
                            *this.syncing = Some((writes, bytes));
                            return Poll::Pending;
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Data::Hold => {}
            }
        }
    }
}

impl<B, C, T> Body for ObservedBody<B, C, T>
where
    B: Body<Data = Bytes>,
    C: Clock,
    T: SessionTable,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.passes() {
            // The router reads nothing of this body, and nothing waits to go first: its frames
            // pass as they come (not copied through `poll_next`), and its end ends the exchange.
            let mut this = self.project();
            let frame = this.inner.as_mut().poll_frame(cx);
            let end = match &frame {
                Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                    // Its last frame: the end is known with it (see below).
                    *this.ended = true;
                    End::Completed
                }
                Poll::Ready(None) => End::Completed,
                Poll::Ready(Some(Err(_))) => End::Aborted,
                _ => return frame,
            };
            let rest = end_exchange(this.router, this.exchange, this.clock, end);
            debug_assert!(rest.is_none(), "nothing is held of a body not rewritten");
            return frame;
        }
        let frame = ready!(self.as_mut().poll_next(cx));
        let this = self.project();
        if matches!(frame, Some(Ok(_)))
            && this.exchange.is_some()
            && this.pending.is_none()
            && this.syncing.is_none()
            && this.inner.is_end_stream()
        {
            // The inner body's last frame (one of a known length, or read ahead to its end):
            // the exchange ends with it, and what the router held back goes next, so that this
            // body's end is known with its last frame and its reader need not poll again (hyper
            // then writes the answer's end with it, and lets the body go at once).
            *this.observing = false;
            *this.ended = true;
            *this.pending = end_exchange(this.router, this.exchange, this.clock, End::Completed)
                .map(Frame::data);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Not while the exchange is held (it ends with the last frame, or at the end, which
        // the reader then polls for): held bytes, a pending frame or a chunk waiting for its
        // store writes are still to come.
        self.exchange.is_none()
            && self.pending.is_none()
            && self.syncing.is_none()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // A rewritten body has another length.
        if self.exchange.as_ref().is_some_and(Exchange::is_rewriting) {
            return SizeHint::default();
        }
        // A chunk taken from the inner body but not sent yet still counts.
        let waiting = self.syncing.as_ref().map_or(0, |(_, chunk)| chunk.len())
            + self
                .pending
                .as_ref()
                .and_then(Frame::data_ref)
                .map_or(0, Bytes::len);
        hint_plus(self.inner.size_hint(), waiting as u64)
    }
}

/// `hint` with `bytes` more at both ends: a body's, with bytes taken from it but not sent yet.
pub(crate) fn hint_plus(hint: SizeHint, bytes: u64) -> SizeHint {
    let mut plus = SizeHint::new();
    if let Some(upper) = hint.upper() {
        plus.set_upper(upper.saturating_add(bytes));
    }
    plus.set_lower(hint.lower().saturating_add(bytes));
    plus
}

impl<B: fmt::Debug, C: Clock, T: SessionTable> fmt::Debug for ObservedBody<B, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedBody")
            .field("inner", &self.inner)
            .field("exchange", &self.exchange)
            .field("observing", &self.observing)
            .finish_non_exhaustive()
    }
}
