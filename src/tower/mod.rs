//! A [`tower`](https://docs.rs/tower) layer: the router in front of the service that forwards
//! requests to backends (feature `tower`).
//!
//! [`AffinityLayer`] wraps the embedder's forwarding service (a `hyper-util` client, a
//! `reqwest` wrapper, anything that is a `Service<Request<_>>`) and drives the whole
//! [call protocol](crate::router::Router#the-call-protocol) around it:
//!
//! 1. it routes each request; a rejection is answered at once with
//!    [`Rejection::to_response`](crate::router::Rejection::to_response) (404, 400, 502 or
//!    503; a JSON-RPC body for a lost legacy session, plain text otherwise; `Retry-After` on
//!    503) and the inner service is not called;
//! 2. it applies the rewrite the router asks for (a sealed session id becomes the backend's
//!    own) and tells the inner service where to send: the request's body, a [`ReplayBody`],
//!    carries an [`Upstream`] ([`ReplayBody::upstream`]) with the backend's id and label (its
//!    base URL, by convention; [`Upstream::uri_for`] joins it with the request's path);
//! 3. when the inner service fails and its error says nothing of the request was written
//!    (the [`Classify`] function the embedder gives, see
//!    [`AffinityLayer::undelivered`]), it reports the failure to the router, which marks a
//!    refusing backend down and either rejects the request (a pinned session's owner died:
//!    404) or places it on another backend; the layer then calls the inner service again.
//!    A request that failed without saying whether it was delivered (a pooled connection
//!    reset) is reported the same way when its backend refuses connections since
//!    ([`refusal_check`](AffinityLayer::refusal_check)) and nothing it did can have survived:
//!    a pinned session died with its backend, a conversation start left nothing behind.
//!    A request that may be placed again keeps its body for that when it is small (at most
//!    [`replay_limit`](AffinityLayer::replay_limit) bytes, 64 KiB by default, announced by
//!    its size hint); any other body is streamed once.
//!    A conversation start's answer waits for the first frame of its body before its head goes on
//!    (when a refusal check is set and the start's body was kept; up to 16 empty data frames are
//!    passed over, and the next frame, empty or not, counts as the first, so that a body of endless
//!    empty frames cannot hold the head, nor spin the task): a backend that sent the head and died
//!    before any of the body (the process crashed under an `initialize` answered by an event
//!    stream) has shown the client nothing, and if the body failed or ended there and the backend
//!    refuses connections, the start is placed again as one refused would be. A body cut after its
//!    first frame, or by a backend that still accepts connections, reaches the client as it came.
//!    The layer does not bound the wait (the forwarding service's body timeouts do); a server that
//!    sends an event at once (a 2025-11-25 priming event) ends it there, and is covered only until
//!    then;
//!    The layer's own answers: 400 `request body failed` when a body it keeps fails or grows
//!    past its size hint; 502 `not delivered` when a failed request cannot be sent again
//!    (its body was streamed) and the inner service gave no error to return;
//! 4. it shows the router the response head (which may replace it by a rejection), and wraps
//!    the response body in an [`ObservedBody`] that feeds the router and ends the exchange
//!    when the body ends, fails or is dropped;
//! 5. with a shared store ([`store`](crate::router::store)), a key the local table does not
//!    know is looked up through the [`StoreLookup`] the embedder gives, and a key a response
//!    reveals is written through its [`StoreSync`] before the client sees it.
//!
//! Remove the request's hop-by-hop headers, and those its `Connection` header names, before
//! the layer, not in the forwarding service: the router routes by the headers it is shown, and
//! a session header that `Connection: Mcp-Session-Id` makes hop-by-hop would pin a request to
//! a session its backend is never told of (`examples/axum_gateway.rs` does it in a middleware
//! in front of the layer).
//!
//! Backpressure and cancellation pass through: `poll_ready` is the inner service's, response
//! bodies are polled only when the client polls (a request body kept for another placement,
//! step 3, is read before the request is sent, and a conversation start's first frame
//! before its head goes on), and dropping the response future or body drops the
//! inner one (the backend sees the client go). The layer needs no runtime; its response
//! future is boxed (`Send`).
//!
//! ```
//! # futures_executor::block_on(async {
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::time::Instant;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use mcp_affinity::TenantId;
//! use mcp_affinity::router::Router;
//! use mcp_affinity::tower::{AffinityLayer, ReplayBody};
//! use tower_layer::Layer;
//! use tower_service::Service;
//!
//! let router = Arc::new(Router::builder().build());
//! router.add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1).unwrap();
//!
//! // The forwarding service: here a stand-in backend that mints a session.
//! #[derive(Clone)]
//! struct Backend;
//! impl Service<Request<ReplayBody<Full<Bytes>>>> for Backend {
//!     type Response = Response<Full<Bytes>>;
//!     type Error = Infallible;
//!     type Future = std::future::Ready<Result<Self::Response, Infallible>>;
//!     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
//!         std::task::Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, request: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
//!         let upstream = request.body().upstream().expect("set by the layer");
//!         assert_eq!(upstream.uri_for(request.uri()).unwrap(), "http://127.0.0.1:9001/mcp");
//!         let response = Response::builder().header("mcp-session-id", "s1");
//!         std::future::ready(Ok(response.body(Full::new(Bytes::from("{}"))).unwrap()))
//!     }
//! }
//!
//! let mut service = AffinityLayer::new(router.clone(), Instant::now).layer(Backend);
//! let initialize = Request::post("/mcp").body(Full::new(Bytes::from("{}"))).unwrap();
//! let response = service.call(initialize).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let _ = response.into_body().collect().await.unwrap(); // the exchange ends with its body
//! assert_eq!(router.metrics().keys_learned, 1);
//!
//! // A session nobody minted is rejected; the backend never sees it.
//! let stranger = Request::post("/mcp")
//!     .header("mcp-session-id", "not-ours")
//!     .body(Full::new(Bytes::new()))
//!     .unwrap();
//! assert_eq!(service.call(stranger).await.unwrap().status(), StatusCode::NOT_FOUND);
//! # });
//! ```

mod body;
mod hooks;
mod replay;
mod upstream;

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Clock, ObservedBody};
use crate::router::store::{Lookup, MAX_LOOKUPS, StoreSync, SyncFuture};
use crate::router::{End, Exchange, HeadOutcome, Rejection, Routed, Router, Undelivered};
use crate::table::{MemoryTable, SessionTable};

pub use body::AffinityBody;
use body::FromBackend;
pub use hooks::{
    Classify, LookupFuture, PassErrors, RefusalCheck, RefusalFuture, StoreAnswer, StoreLookup,
};
pub use replay::ReplayBody;
pub use upstream::Upstream;

use body::{local, reject};
use replay::{Attempts, keep};

/// The default [`replay_limit`](AffinityLayer::replay_limit): 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: u64 = 64 * 1024;

/// The [`Layer`] that puts a [`Router`] in front of a forwarding service (see the
/// [module docs](self)).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`undelivered`](AffinityLayer::undelivered) | [`PassErrors`] | which inner errors mean "not delivered" |
/// | [`replay_limit`](AffinityLayer::replay_limit) | 64 KiB | largest body kept to place a request again |
/// | [`refusal_check`](AffinityLayer::refusal_check) | none | tells a backend that died with a request |
/// | [`store_lookup`](AffinityLayer::store_lookup) | none (lookups answer 503) | reads keys from a shared store |
/// | [`store_sync`](AffinityLayer::store_sync) | none | writes a revealed key to the store before the client sees it |
pub struct AffinityLayer<
    T: SessionTable = MemoryTable,
    C = fn() -> std::time::Instant,
    U = PassErrors,
> {
    /// The settings every service it makes shares.
    shared: Shared<T, C, U>,
}

impl<T: SessionTable, C: Clock + Clone> AffinityLayer<T, C, PassErrors> {
    /// A layer for `router`, reading the time from `clock` (`std::time::Instant::now`).
    pub fn new(router: Arc<Router<T>>, clock: C) -> Self {
        AffinityLayer {
            shared: Shared {
                router,
                clock,
                classify: PassErrors,
                replay_limit: DEFAULT_REPLAY_LIMIT,
                store: None,
                refusals: None,
                sync: None,
            },
        }
    }
}

impl<T: SessionTable, C: Clock + Clone, U> AffinityLayer<T, C, U> {
    /// Sets which errors of the inner service mean that nothing of the request was written:
    /// those are reported to the router ([`Router::on_undelivered`]), which may place the
    /// request again or reject it; the others are returned as they are.
    pub fn undelivered<V>(self, classify: V) -> AffinityLayer<T, C, V> {
        let Shared {
            router,
            clock,
            classify: _,
            replay_limit,
            store,
            refusals,
            sync,
        } = self.shared;
        AffinityLayer {
            shared: Shared {
                router,
                clock,
                classify,
                replay_limit,
                store,
                refusals,
                sync,
            },
        }
    }

    /// Sets the largest request body (by its size hint) kept so that the request can be
    /// placed again after a failed delivery. Only requests that may be placed again are kept:
    /// those not pinned by a session or task key (conversation starts, 2026-07-28 calls,
    /// operator-key requests, non-MCP paths); 0 keeps none. A kept body is read whole before
    /// the first attempt: one that fails, or grows past the size it announced, is answered
    /// 400 by the layer (`request body failed`) and sent nowhere.
    pub fn replay_limit(mut self, bytes: u64) -> Self {
        self.shared.replay_limit = bytes;
        self
    }

    /// Sets how to tell whether a backend refuses connections now (for example a TCP
    /// connect to its address), asked after a request to it failed in a way that does not
    /// say whether it was delivered (a pooled connection reset by a backend that died), or
    /// was not delivered for a reason that does not say whether the backend is gone
    /// ([`Undelivered::Failed`]: a connection attempt reset by a dying process). If
    /// the request is [pinned](Upstream::is_pinned) or
    /// [starts a conversation](Upstream::starts_conversation) and the backend refuses, the
    /// failure is reported as [`Undelivered::Refused`]: the router declares the backend down
    /// and answers 404 for the dead session, or places the conversation start elsewhere.
    /// Any other request may have run: its error is returned as it is. With a check set, a
    /// conversation start's response head also waits for its body's first frame, so that a
    /// start whose backend died between the two is placed again too (see the
    /// [module docs](self), step 3).
    pub fn refusal_check(mut self, check: impl RefusalCheck) -> Self {
        self.shared.refusals = Some(Arc::new(check));
        self
    }

    /// Sets how the router's queued store writes are performed now, for a router built with
    /// a shared store: when a response reveals a key shared through the store (a new session
    /// in its head, a task or legacy SSE session in its body), the layer waits for the writes
    /// before the client gets the head or chunk, so that the client's next request, whichever
    /// router it reaches, finds the key in the store.
    pub fn store_sync(mut self, sync: impl StoreSync) -> Self {
        self.shared.sync = Some(Arc::new(sync));
        self
    }

    /// Sets how keys are read from the shared store, for a router built with one.
    pub fn store_lookup(mut self, lookup: impl StoreLookup) -> Self {
        self.shared.store = Some(Arc::new(lookup));
        self
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router<T>> {
        &self.shared.router
    }
}

impl<T: SessionTable, C: Clone, U: Clone> Clone for AffinityLayer<T, C, U> {
    fn clone(&self) -> Self {
        AffinityLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<T: SessionTable, C, U> fmt::Debug for AffinityLayer<T, C, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityLayer")
            .field("replay_limit", &self.shared.replay_limit)
            .field("store", &self.shared.store.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, T: SessionTable, C: Clock + Clone, U: Clone> Layer<S> for AffinityLayer<T, C, U> {
    type Service = Affinity<S, T, C, U>;

    fn layer(&self, inner: S) -> Self::Service {
        Affinity {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}

/// A layer's settings: what every clone of an [`Affinity`] service it makes shares.
struct Shared<T: SessionTable, C, U> {
    router: Arc<Router<T>>,
    clock: C,
    classify: U,
    replay_limit: u64,
    store: Option<Arc<dyn StoreLookup>>,
    refusals: Option<Arc<dyn RefusalCheck>>,
    sync: Option<Arc<dyn StoreSync>>,
}

// (Not derived: `T` itself need not be `Clone`.)
impl<T: SessionTable, C: Clone, U: Clone> Clone for Shared<T, C, U> {
    fn clone(&self) -> Self {
        Shared {
            router: self.router.clone(),
            clock: self.clock.clone(),
            classify: self.classify.clone(),
            replay_limit: self.replay_limit,
            store: self.store.clone(),
            refusals: self.refusals.clone(),
            sync: self.sync.clone(),
        }
    }
}

/// The [`Service`] of an [`AffinityLayer`]: the router in front of `S`.
pub struct Affinity<
    S,
    T: SessionTable = MemoryTable,
    C = fn() -> std::time::Instant,
    U = PassErrors,
> {
    inner: S,
    shared: Arc<Shared<T, C, U>>,
}

impl<S: Clone, T: SessionTable, C, U> Clone for Affinity<S, T, C, U> {
    fn clone(&self) -> Self {
        Affinity {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, T: SessionTable, C, U> fmt::Debug for Affinity<S, T, C, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The response future of an [`Affinity`] service.
pub type ResponseFuture<B, E, C, T> =
    Pin<Box<dyn Future<Output = Result<Response<AffinityBody<B, C, T>>, E>> + Send + 'static>>;

impl<S, T, C, U, ReqB, ResB> Service<Request<ReqB>> for Affinity<S, T, C, U>
where
    S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
    T: SessionTable + 'static,
    C: Clock + Clone,
    U: Classify<S::Error> + Send + Sync + 'static,
{
    type Response = Response<AffinityBody<ResB, C, T>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error, C, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The service that was polled ready takes this request; its clone waits for the next.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let (parts, body) = request.into_parts();
        let attempts = Attempts::once(body);
        Box::pin(self.shared.clone().serve(inner, Some(parts), attempts))
    }
}

impl<T: SessionTable + 'static, C: Clock + Clone, U> Shared<T, C, U> {
    /// One request through the layer: decided, delivered (and placed again while it is not),
    /// answered.
    ///
    /// Its future is boxed for every request, so it is kept small (within what the allocator
    /// keeps at hand per thread, about 1 KiB), and moved once: not an `async fn`, whose future
    /// would keep each argument twice; the request's parts lent to the steps, not moved into
    /// theirs; a wait on the shared store, rare and large, boxed apart.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future keeps each of its arguments twice"
    )]
    fn serve<S, ReqB, ResB>(
        self: Arc<Self>,
        mut inner: S,
        mut parts: Option<http::request::Parts>,
        mut attempts: Attempts<ReqB>,
    ) -> impl Future<Output = Result<Response<AffinityBody<ResB, C, T>>, S::Error>>
    where
        S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>>,
        ReqB: Body<Data = Bytes>,
        ResB: Body<Data = Bytes>,
        U: Classify<S::Error>,
    {
        async move {
            // (Each step in a block of its own, so that the future does not keep what the
            // step was given or made across the next wait.)
            let mut pending = {
                // (In an `Option` for the attempt that sends the request to take it.)
                let head = parts.as_mut().expect("taken only by an attempt");
                let decided = match self.router.route(head, self.clock.now()) {
                    Routed::Forward(exchange) => Ok(exchange),
                    Routed::Reject(rejection) => Err(rejection),
                    Routed::Lookup(lookup) => Box::pin(self.look_up(lookup)).await,
                };
                match decided {
                    Ok(exchange) => {
                        // A sealed session id: the backend gets its own id back.
                        exchange.rewrite_request(head);
                        Pending {
                            shared: &self,
                            exchange: Some(exchange),
                        }
                    }
                    Err(rejection) => return Ok(reject(&rejection)),
                }
            };
            // A request that may be placed again keeps a small body (within the replay
            // limit), to send it again.
            let placeable = pending.exchange().is_placeable();
            let keepable = attempts
                .announced()
                .filter(|&upper| placeable && upper <= self.replay_limit);
            if let Some(upper) = keepable
                && let Some(body) = attempts.take_streamed()
            {
                match keep(body, upper).await {
                    Some(kept) => attempts = Attempts::Kept(kept),
                    None => return Ok(local(StatusCode::BAD_REQUEST, "request body failed\n")),
                }
            }
            let (head, body, sync) = {
                let delivered = self.deliver(&mut inner, &mut pending, &mut parts, &mut attempts);
                let response = match delivered.await? {
                    Delivery::Answered(response) => response,
                    Delivery::Rejected(rejection) => return Ok(reject(&rejection)),
                    Delivery::Failed(status) => return Ok(local(status, "not delivered\n")),
                };
                let (mut head, body) = response.into_parts();
                match self.show_head(&mut pending, &mut head) {
                    Ok(sync) => (head, body, sync),
                    Err(rejection) => return Ok(reject(&rejection)),
                }
            };
            if let Some(sync) = sync {
                // The head names a key the store must have before the client does. (The guard
                // holds the exchange meanwhile: a client that goes away still ends it.)
                sync.await;
            }
            let mut body = ObservedBody::new(
                body,
                self.router.clone(),
                pending.take(),
                self.clock.clone(),
            );
            if let Some(sync) = &self.sync {
                body = body.with_store_sync(sync.clone());
            }
            Ok(Response::from_parts(head, AffinityBody::backend(body)))
        }
    }

    /// Sends the request to the exchange's backend and, for as long as it is not delivered
    /// and the router places it again, to the next one.
    async fn deliver<S, ReqB, ResB>(
        &self,
        inner: &mut S,
        pending: &mut Pending<'_, T, C, U>,
        parts: &mut Option<http::request::Parts>,
        body: &mut Attempts<ReqB>,
    ) -> Result<Delivery<Response<FromBackend<ResB>>>, S::Error>
    where
        S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>>,
        ResB: Body<Data = Bytes>,
        U: Classify<S::Error>,
    {
        let not_delivered = || Ok(Delivery::Failed(StatusCode::BAD_GATEWAY));
        let mut first = true;
        loop {
            let backend = pending.exchange().backend();
            let (why, error) = match self.router.backend_label(backend) {
                // Removed between the decision and here: nothing listens for it any more.
                None => (Undelivered::Refused, None),
                Some(label) => {
                    if !first {
                        poll_fn(|cx| inner.poll_ready(cx)).await?;
                    }
                    first = false;
                    let exchange = pending.exchange();
                    let upstream = Upstream {
                        backend,
                        label,
                        pinned: !exchange.is_placeable(),
                        starts_conversation: exchange.starts_conversation(),
                    };
                    // The request is made and handed over between two waits, so that the
                    // future does not keep it across either. (Never `None`: a spent body is
                    // not tried again, see below.)
                    let Some((head, attempt)) = body.next(parts, upstream.clone()) else {
                        return not_delivered();
                    };
                    let call = inner.call(Request::from_parts(head, attempt));
                    let error = {
                        let answered = if self.reads_ahead(&upstream, body) {
                            // (Boxed: rare, and it keeps the head across the wait for the body.)
                            Box::pin(self.call_reading_ahead(call, &upstream)).await
                        } else {
                            call.await
                                .map(|response| Some(response.map(FromBackend::direct)))
                        };
                        match answered {
                            Ok(Some(response)) => return Ok(Delivery::Answered(response)),
                            // Cut before its first frame by a backend that died: the client
                            // has seen nothing of it, and the start left nothing behind.
                            Ok(None) => None,
                            Err(error) => Some(error),
                        }
                    };
                    match error {
                        None => (Undelivered::Refused, None),
                        Some(error) => match self.classify.undelivered(&error) {
                            // Not delivered, for a reason that does not say whether the
                            // backend is gone (a connection its dying process reset before
                            // the request was written): asked as a failure after delivery is.
                            // (Answered 503 before, a crashed backend's session got "retry
                            // later", not 404.)
                            Some(Undelivered::Failed) if self.died_with(&upstream).await => {
                                (Undelivered::Refused, Some(error))
                            }
                            Some(why) => (why, Some(error)),
                            None if self.died_with(&upstream).await => {
                                (Undelivered::Refused, Some(error))
                            }
                            None => return Err(error),
                        },
                    }
                }
            };
            match self
                .router
                .on_undelivered(pending.take(), why, self.clock.now())
            {
                Routed::Forward(next) if body.can_send() => pending.exchange = Some(next),
                Routed::Forward(next) => {
                    // Its body went with the first attempt: nothing to send again.
                    self.router
                        .on_exchange_end(next, End::Aborted, self.clock.now());
                    // (An error is always at hand: a body is spent only by a call, which
                    // failed.)
                    return error.map_or_else(not_delivered, Err);
                }
                Routed::Reject(rejection) => return Ok(Delivery::Rejected(rejection)),
                // (A failed delivery is placed again or rejected, never looked up.)
                Routed::Lookup(_) => return Ok(Delivery::Failed(StatusCode::SERVICE_UNAVAILABLE)),
            }
        }
    }

    /// Shows a backend's response head to the router, which may replace the response by a
    /// rejection (`Err`); `Ok` with the store writes to wait for before
    /// the client sees the head, when it reveals a key the store must have first. (Not
    /// `async`: most answers wait for nothing, and a future of its own would be moved into the
    /// request's, and its answer out of it.)
    fn show_head(
        &self,
        pending: &mut Pending<'_, T, C, U>,
        head: &mut http::response::Parts,
    ) -> Result<Option<SyncFuture>, Rejection> {
        let exchange = pending.exchange.as_mut().expect("present until taken");
        let now = self.clock.now();
        if let HeadOutcome::Replace(rejection) = self.router.on_response_head(exchange, head, now) {
            // (The guard ends the exchange, once the backend's body is dropped.)
            return Err(rejection);
        }
        let wants_sync = self.sync.is_some() && exchange.take_store_sync();
        // (`sync()` may run the store's code: the exchange is in the guard.)
        Ok(self
            .sync
            .as_ref()
            .filter(|_| wants_sync)
            .map(|sync| sync.sync()))
    }

    /// Whether the response's head is to wait for its body's first frame: a conversation
    /// start's, where the start could be placed again (a refusal check is set, its body is
    /// kept). A backend that sent the head and died before any of the body would otherwise
    /// leave the client with a head and a broken stream: a new conversation failed with the
    /// replica that crashed under it (an `initialize` answered by an event stream cut before
    /// its event).
    fn reads_ahead<ReqB>(&self, upstream: &Upstream, body: &Attempts<ReqB>) -> bool {
        upstream.starts_conversation() && self.refusals.is_some() && body.can_send()
    }

    /// The response to `call` with its body's first frame read; `None` if the body failed or
    /// ended before it and its backend refuses connections now: it died under the request.
    async fn call_reading_ahead<B, E>(
        &self,
        call: impl Future<Output = Result<Response<B>, E>>,
        upstream: &Upstream,
    ) -> Result<Option<Response<FromBackend<B>>>, E>
    where
        B: Body<Data = Bytes>,
    {
        let (head, body) = call.await?.into_parts();
        let body = FromBackend::read_ahead(body).await;
        if body.nothing_came() && self.died_with(upstream).await {
            return Ok(None);
        }
        Ok(Some(Response::from_parts(head, body)))
    }

    /// Whether a request that failed on its way can be reported as refused: its backend
    /// refuses connections now, and nothing the request did can have survived it.
    async fn died_with(&self, upstream: &Upstream) -> bool {
        match &self.refusals {
            Some(check) if upstream.is_pinned() || upstream.starts_conversation() => {
                check.refuses(upstream).await
            }
            _ => false,
        }
    }

    /// Answers the router's lookups in the shared store until it decides.
    async fn look_up(&self, mut lookup: Lookup) -> Result<Exchange, Rejection> {
        let mut asked = 0;
        loop {
            // The router asks once for each key the request names; were it ever to ask more,
            // the answer is "unavailable", which it must refuse.
            let answer = match &self.store {
                Some(store) if asked < MAX_LOOKUPS => store.lookup(lookup.key().to_owned()).await,
                _ => StoreAnswer::Unavailable,
            };
            asked += 1;
            match self
                .router
                .on_lookup(lookup, answer.looked(), self.clock.now())
            {
                Routed::Forward(exchange) => return Ok(exchange),
                Routed::Reject(rejection) => return Err(rejection),
                Routed::Lookup(next) => lookup = next,
            }
        }
    }
}

/// Ends the exchange as aborted if the future is dropped before the response head (the
/// client went away) or returns early.
struct Pending<'a, T: SessionTable, C: Clock, U> {
    shared: &'a Shared<T, C, U>,
    exchange: Option<Exchange>,
}

impl<T: SessionTable, C: Clock, U> Pending<'_, T, C, U> {
    fn exchange(&self) -> &Exchange {
        self.exchange.as_ref().expect("present until taken")
    }

    fn take(&mut self) -> Exchange {
        self.exchange.take().expect("taken once per attempt")
    }
}

impl<T: SessionTable, C: Clock, U> Drop for Pending<'_, T, C, U> {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            let now = self.shared.clock.now();
            self.shared
                .router
                .on_exchange_end(exchange, End::Aborted, now);
        }
    }
}

/// How the delivery of a request ended.
enum Delivery<R> {
    /// A backend answered.
    Answered(R),
    /// The router refused to place it again.
    Rejected(Rejection),
    /// It could be delivered nowhere (the client gets this status, "not delivered").
    Failed(StatusCode),
}
