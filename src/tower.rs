//! A [`tower`](https://docs.rs/tower) layer: the router in front of the service that forwards
//! requests to backends (feature `tower`).
//!
//! [`AffinityLayer`] wraps the embedder's forwarding service (a `hyper-util` client, a
//! `reqwest` wrapper, anything that is a `Service<Request<_>>`) and drives the whole
//! [call protocol](crate::router::Router#the-call-protocol) around it:
//!
//! 1. it routes each request; a rejection is answered at once (404, 400 or 503 with its
//!    JSON-RPC body and `Retry-After`) and the inner service is not called;
//! 2. it applies the rewrite the router asks for (a sealed session id becomes the backend's
//!    own) and tells the inner service where to send: an [`Upstream`] request extension with
//!    the backend's id and label (its base URL, by convention; [`Upstream::uri_for`] joins
//!    it with the request's path);
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
//!    its size hint); any other body is streamed once;
//! 4. it shows the router the response head (which may replace it by a rejection), and wraps
//!    the response body in an [`ObservedBody`] that feeds the router and ends the exchange
//!    when the body ends, fails or is dropped;
//! 5. with a shared store ([`store`](crate::router::store)), a key the local table does not
//!    know is looked up through the [`StoreLookup`] the embedder gives, and a key a response
//!    reveals is written through its [`StoreSync`] before the client sees it.
//!
//! Backpressure and cancellation pass through: `poll_ready` is the inner service's, response
//! bodies are polled only when the client polls (a request body kept for another placement,
//! step 3, is read before the request is sent), and dropping the response future or body drops the
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
//! use mcp_affinity::tower::{AffinityLayer, ReplayBody, Upstream};
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
//!         let upstream = request.extensions().get::<Upstream>().expect("set by the layer");
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

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::BackendId;
use crate::body::{Clock, ObservedBody};
use crate::router::store::{Looked, StoreSync};
use crate::router::{End, Exchange, HeadOutcome, Rejection, Routed, Router, Undelivered};
use crate::table::{KeyKind, MemoryTable, SessionTable};

/// The default [`replay_limit`](AffinityLayer::replay_limit): 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: u64 = 64 * 1024;

/// Where the layer sends a request: the request extension the inner service reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    backend: BackendId,
    label: Arc<str>,
    pinned: bool,
    starts_conversation: bool,
}

impl Upstream {
    /// The backend the router chose.
    pub fn backend(&self) -> BackendId {
        self.backend
    }

    /// Whether a session or task key pins the request to its backend (it is never placed
    /// elsewhere).
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// Whether the request starts a conversation (an `initialize`, a legacy SSE connect).
    ///
    /// With [`is_pinned`](Upstream::is_pinned), it tells a forwarder when a request that
    /// failed *after* it may have been written can still be reported as
    /// [`Undelivered::Refused`], if the backend refuses connections since: a pinned
    /// request's session died with the backend either way, and a conversation start left
    /// nothing that survived. Any other request may have run, and must not be.
    pub fn starts_conversation(&self) -> bool {
        self.starts_conversation
    }

    /// The label the backend was added with (by convention its base URL).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `host:port` of the backend, when the label is a base URL (the scheme's port when the
    /// URL has none): where a health check or a [`RefusalCheck`] connects.
    pub fn host_port(&self) -> Option<String> {
        let base: Uri = self.label.parse().ok()?;
        let authority = base.authority()?;
        let port = authority.port_u16().or(match base.scheme_str()? {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })?;
        Some(format!("{}:{port}", authority.host()))
    }

    /// The request's URI on the backend, when the label is a base URL
    /// (`scheme://host[:port][/prefix]`): the label's scheme and authority, its path as a
    /// prefix, then the request's path and query. `None` when the label is not such a URL.
    pub fn uri_for(&self, request: &Uri) -> Option<Uri> {
        let base: Uri = self.label.parse().ok()?;
        let (scheme, authority) = (base.scheme()?.clone(), base.authority()?.clone());
        let prefix = base.path().trim_end_matches('/');
        let path = request.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query: PathAndQuery = if prefix.is_empty() {
            path.parse().ok()?
        } else {
            format!("{prefix}{path}").parse().ok()?
        };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

/// Says whether an error of the inner service means that nothing of the request was written
/// (so the router may place it elsewhere, or learn that its backend is down). Implemented for
/// every `Fn(&E) -> Option<Undelivered>`.
///
/// Answer `Some` only when the request surely did not reach the backend: a connection
/// refused or timed out before a byte was sent. An error after that (a reset mid-response)
/// must be `None`: the request may have run.
pub trait Classify<E> {
    /// Why the request was not delivered, if it surely was not.
    fn undelivered(&self, error: &E) -> Option<Undelivered>;
}

impl<E, F: Fn(&E) -> Option<Undelivered>> Classify<E> for F {
    fn undelivered(&self, error: &E) -> Option<Undelivered> {
        self(error)
    }
}

/// The default [`Classify`]: every error is passed through as it is (nothing is retried).
#[derive(Clone, Copy, Debug, Default)]
pub struct PassErrors;

impl<E> Classify<E> for PassErrors {
    fn undelivered(&self, _: &E) -> Option<Undelivered> {
        None
    }
}

/// What a shared store said of a key (the owned form of [`Looked`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAnswer {
    /// The key's value.
    Found(String),
    /// The store does not have the key.
    Missing,
    /// The store did not answer in time.
    Unavailable,
}

impl StoreAnswer {
    /// As the router takes it.
    pub fn looked(&self) -> Looked<'_> {
        match self {
            StoreAnswer::Found(value) => Looked::Found(value),
            StoreAnswer::Missing => Looked::Missing,
            StoreAnswer::Unavailable => Looked::Unavailable,
        }
    }
}

/// The future of a [`StoreLookup`].
pub type LookupFuture = Pin<Box<dyn Future<Output = StoreAnswer> + Send + 'static>>;

/// Reads a key from the shared store, within the store's own timeout (an answer that does not
/// come in time is [`StoreAnswer::Unavailable`]). Implemented for every
/// `Fn(String) -> impl Future<Output = StoreAnswer>`.
pub trait StoreLookup: Send + Sync + 'static {
    /// Reads `key`.
    fn lookup(&self, key: String) -> LookupFuture;
}

impl<F, Fut> StoreLookup for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StoreAnswer> + Send + 'static,
{
    fn lookup(&self, key: String) -> LookupFuture {
        Box::pin(self(key))
    }
}

/// The future of a [`RefusalCheck`].
pub type RefusalFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// Tells whether a backend refuses connections right now (nothing listens at its address:
/// its process is gone). Implemented for every `Fn(&Upstream) -> impl Future<Output = bool>`.
pub trait RefusalCheck: Send + Sync + 'static {
    /// Whether `upstream` refuses connections.
    fn refuses(&self, upstream: &Upstream) -> RefusalFuture;
}

impl<F, Fut> RefusalCheck for F
where
    F: Fn(&Upstream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn refuses(&self, upstream: &Upstream) -> RefusalFuture {
        Box::pin(self(upstream))
    }
}

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
    router: Arc<Router<T>>,
    clock: C,
    classify: U,
    replay_limit: u64,
    store: Option<Arc<dyn StoreLookup>>,
    refusals: Option<Arc<dyn RefusalCheck>>,
    sync: Option<Arc<dyn StoreSync>>,
}

impl<T: SessionTable, C: Clock + Clone> AffinityLayer<T, C, PassErrors> {
    /// A layer for `router`, reading the time from `clock` (`std::time::Instant::now`).
    pub fn new(router: Arc<Router<T>>, clock: C) -> Self {
        AffinityLayer {
            router,
            clock,
            classify: PassErrors,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            store: None,
            refusals: None,
            sync: None,
        }
    }
}

impl<T: SessionTable, C: Clock + Clone, U> AffinityLayer<T, C, U> {
    /// Sets which errors of the inner service mean that nothing of the request was written:
    /// those are reported to the router ([`Router::on_undelivered`]), which may place the
    /// request again or reject it; the others are returned as they are.
    pub fn undelivered<V>(self, classify: V) -> AffinityLayer<T, C, V> {
        AffinityLayer {
            router: self.router,
            clock: self.clock,
            classify,
            replay_limit: self.replay_limit,
            store: self.store,
            refusals: self.refusals,
            sync: self.sync,
        }
    }

    /// Sets the largest request body (by its size hint) kept so that the request can be
    /// placed again after a failed delivery. Only requests that may be placed again are kept:
    /// those not pinned by a session or task key (conversation starts, 2026-07-28 calls,
    /// operator-key requests, non-MCP paths); 0 keeps none.
    pub fn replay_limit(mut self, bytes: u64) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Sets how to tell whether a backend refuses connections now (for example a TCP
    /// connect to its address), asked after a request to it failed in a way that does not
    /// say whether it was delivered (a pooled connection reset by a backend that died). If
    /// the request is [pinned](Upstream::is_pinned) or
    /// [starts a conversation](Upstream::starts_conversation) and the backend refuses, the
    /// failure is reported as [`Undelivered::Refused`]: the router declares the backend down
    /// and answers 404 for the dead session, or places the conversation start elsewhere.
    /// Any other request may have run: its error is returned as it is.
    pub fn refusal_check(mut self, check: impl RefusalCheck) -> Self {
        self.refusals = Some(Arc::new(check));
        self
    }

    /// Sets how the router's queued store writes are performed now, for a router built with
    /// a shared store: when a response reveals a key shared through the store (a new session
    /// in its head, a task or legacy SSE session in its body), the layer waits for the writes
    /// before the client gets the head or chunk, so that the client's next request, whichever
    /// router it reaches, finds the key in the store.
    pub fn store_sync(mut self, sync: impl StoreSync) -> Self {
        self.sync = Some(Arc::new(sync));
        self
    }

    /// Sets how keys are read from the shared store, for a router built with one.
    pub fn store_lookup(mut self, lookup: impl StoreLookup) -> Self {
        self.store = Some(Arc::new(lookup));
        self
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router<T>> {
        &self.router
    }
}

impl<T: SessionTable, C: Clone, U: Clone> Clone for AffinityLayer<T, C, U> {
    fn clone(&self) -> Self {
        AffinityLayer {
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

impl<T: SessionTable, C, U> fmt::Debug for AffinityLayer<T, C, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityLayer")
            .field("replay_limit", &self.replay_limit)
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, T: SessionTable, C: Clock + Clone, U: Clone> Layer<S> for AffinityLayer<T, C, U> {
    type Service = Affinity<S, T, C, U>;

    fn layer(&self, inner: S) -> Self::Service {
        Affinity {
            inner,
            shared: Arc::new(Shared {
                router: self.router.clone(),
                clock: self.clock.clone(),
                classify: self.classify.clone(),
                replay_limit: self.replay_limit,
                store: self.store.clone(),
                refusals: self.refusals.clone(),
                sync: self.sync.clone(),
            }),
        }
    }
}

/// What every clone of an [`Affinity`] service shares.
struct Shared<T: SessionTable, C, U> {
    router: Arc<Router<T>>,
    clock: C,
    classify: U,
    replay_limit: u64,
    store: Option<Arc<dyn StoreLookup>>,
    refusals: Option<Arc<dyn RefusalCheck>>,
    sync: Option<Arc<dyn StoreSync>>,
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
        Box::pin(self.shared.clone().serve(inner, request))
    }
}

impl<T: SessionTable + 'static, C: Clock + Clone, U> Shared<T, C, U> {
    async fn serve<S, ReqB, ResB>(
        self: Arc<Self>,
        mut inner: S,
        request: Request<ReqB>,
    ) -> Result<Response<AffinityBody<ResB, C, T>>, S::Error>
    where
        S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>>,
        ReqB: Body<Data = Bytes>,
        ResB: Body<Data = Bytes>,
        U: Classify<S::Error>,
    {
        let (mut parts, body) = request.into_parts();
        let exchange = match self.decide(&parts).await {
            Ok(exchange) => exchange,
            Err(rejection) => return Ok(reject(&rejection)),
        };
        // A sealed session id: the backend gets its own id back.
        exchange.rewrite_request(&mut parts);
        let mut pending = Pending {
            shared: &self,
            exchange: Some(exchange),
        };
        // A request that may be placed again keeps a small body for that.
        let announced = body.size_hint().upper();
        let small = announced.filter(|&upper| upper <= self.replay_limit);
        let mut body = if let Some(upper) = small.filter(|_| placeable(pending.exchange())) {
            match keep(body, upper).await {
                Some(kept) => Attempts::Kept(kept),
                None => return Ok(local(StatusCode::BAD_REQUEST, "request body failed\n")),
            }
        } else {
            Attempts::Once(Some(body))
        };
        let mut first = true;
        let response = loop {
            let backend = pending.exchange().backend();
            let (why, error) = match self.router.backend_label(backend) {
                // Removed between the decision and here: nothing listens for it any more.
                None => (Undelivered::Refused, None),
                Some(label) => {
                    let (head, attempt) = match &mut body {
                        Attempts::Kept(kept) => (parts.clone(), kept.body()),
                        Attempts::Once(once) => match once.take() {
                            Some(once) => (take_parts(&mut parts), ReplayBody::streamed(once)),
                            // (Not reached: a spent body is never tried again, see below.)
                            None => return Ok(local(StatusCode::BAD_GATEWAY, "not delivered\n")),
                        },
                    };
                    let exchange = pending.exchange();
                    let upstream = Upstream {
                        backend,
                        label,
                        pinned: !placeable(exchange),
                        starts_conversation: exchange.starts_conversation(),
                    };
                    let mut request = Request::from_parts(head, attempt);
                    request.extensions_mut().insert(upstream.clone());
                    if !first {
                        poll_fn(|cx| inner.poll_ready(cx)).await?;
                    }
                    first = false;
                    let error = match inner.call(request).await {
                        Ok(response) => break response,
                        Err(error) => error,
                    };
                    match self.classify.undelivered(&error) {
                        Some(why) => (why, Some(error)),
                        None if self.died_with(&upstream).await => {
                            (Undelivered::Refused, Some(error))
                        }
                        None => return Err(error),
                    }
                }
            };
            let exchange = pending.take();
            match self.router.on_undelivered(exchange, why, self.clock.now()) {
                Routed::Forward(next) if body.can_send() => pending.exchange = Some(next),
                Routed::Forward(next) => {
                    // Its body went with the first attempt: nothing to send again.
                    self.router
                        .on_exchange_end(next, End::Aborted, self.clock.now());
                    return match error {
                        Some(error) => Err(error),
                        // (Not reached: a body is spent only by a call, which failed.)
                        None => Ok(local(StatusCode::BAD_GATEWAY, "not delivered\n")),
                    };
                }
                Routed::Reject(rejection) => return Ok(reject(&rejection)),
                // (A failed delivery is placed again or rejected, never looked up.)
                Routed::Lookup(_) => {
                    return Ok(local(StatusCode::SERVICE_UNAVAILABLE, "not delivered\n"));
                }
            }
        };
        let (mut head, body) = response.into_parts();
        let mut exchange = pending.take();
        let now = self.clock.now();
        if let HeadOutcome::Replace(rejection) =
            self.router.on_response_head(&mut exchange, &mut head, now)
        {
            drop(body);
            self.router.on_exchange_end(exchange, End::Aborted, now);
            return Ok(reject(&rejection));
        }
        if let Some(sync) = &self.sync {
            if exchange.take_store_sync() {
                // The head names a key the store must have before the client does. (The guard
                // holds the exchange meanwhile: a client that goes away still ends it.)
                pending.exchange = Some(exchange);
                sync.sync().await;
                exchange = pending.take();
            }
        }
        let mut body = ObservedBody::new(body, self.router.clone(), exchange, self.clock.clone());
        if let Some(sync) = &self.sync {
            body = body.with_store_sync(sync.clone());
        }
        Ok(Response::from_parts(
            head,
            AffinityBody {
                inner: Answer::Backend { body },
            },
        ))
    }

    /// Whether a request that failed on its way can be reported as refused: its backend
    /// refuses connections now, and nothing the request did can have survived it.
    async fn died_with(&self, upstream: &Upstream) -> bool {
        match &self.refusals {
            Some(check) if upstream.pinned || upstream.starts_conversation => {
                check.refuses(upstream).await
            }
            _ => false,
        }
    }

    /// Routes a request, looking its key up in the shared store if the router asks.
    async fn decide(&self, parts: &http::request::Parts) -> Result<Exchange, Rejection> {
        let mut routed = self.router.route(parts, self.clock.now());
        let mut asked = false;
        loop {
            routed = match routed {
                Routed::Forward(exchange) => return Ok(exchange),
                Routed::Reject(rejection) => return Err(rejection),
                Routed::Lookup(lookup) => {
                    // The router answers a lookup with a decision; were it ever to ask again,
                    // the second answer is "unavailable", which it must refuse.
                    let answer = match &self.store {
                        Some(store) if !asked => store.lookup(lookup.key().to_owned()).await,
                        _ => StoreAnswer::Unavailable,
                    };
                    asked = true;
                    self.router
                        .on_lookup(lookup, answer.looked(), self.clock.now())
                }
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

/// Whether the router may place the request again after a failed delivery: it is not pinned
/// by a session or task key.
fn placeable(exchange: &Exchange) -> bool {
    exchange
        .key()
        .is_none_or(|(kind, _)| kind == KeyKind::Operator)
}

/// Takes the parts out, leaving empty ones.
fn take_parts(parts: &mut http::request::Parts) -> http::request::Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// The bodies of the delivery attempts of one request.
enum Attempts<B> {
    /// Kept whole: every attempt sends it.
    Kept(Kept),
    /// Streamed as it comes: one attempt.
    Once(Option<B>),
}

impl<B> Attempts<B> {
    /// Whether another attempt can send the body.
    fn can_send(&self) -> bool {
        match self {
            Attempts::Kept(_) => true,
            Attempts::Once(once) => once.is_some(),
        }
    }
}

/// A request body read whole, to be sent again.
struct Kept {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Kept {
    fn body<B>(&self) -> ReplayBody<B> {
        ReplayBody {
            inner: Replay::Kept {
                data: (!self.data.is_empty()).then(|| self.data.clone()),
                trailers: self.trailers.clone(),
            },
        }
    }
}

/// Reads a body that announced at most `limit` bytes; `None` if it failed or grew past that.
async fn keep<B: Body<Data = Bytes>>(body: B, limit: u64) -> Option<Kept> {
    let mut body = pin!(body);
    let mut data = BytesMut::new();
    let mut single: Option<Bytes> = None;
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.ok()?;
        match frame.into_data() {
            Ok(chunk) => {
                // One chunk (the usual case) is kept as it came, without a copy.
                match single.take() {
                    None if data.is_empty() => single = Some(chunk),
                    first => {
                        if let Some(first) = first {
                            data.extend_from_slice(&first);
                        }
                        data.extend_from_slice(&chunk);
                    }
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
        let len = single.as_ref().map_or(data.len(), Bytes::len);
        if len as u64 > limit {
            return None;
        }
    }
    Some(Kept {
        data: single.unwrap_or_else(|| data.freeze()),
        trailers,
    })
}

/// The router's rejection as a response.
fn reject<B, C: Clock, T: SessionTable>(rejection: &Rejection) -> Response<AffinityBody<B, C, T>> {
    rejection.to_response().map(AffinityBody::local)
}

/// A plain-text answer of the layer's own.
fn local<B, C: Clock, T: SessionTable>(
    status: StatusCode,
    text: &'static str,
) -> Response<AffinityBody<B, C, T>> {
    let mut response = Response::new(AffinityBody::local(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project! {
    /// The request body the inner service gets: the client's, streamed as it comes, or, for a
    /// request that may be placed again, the body read whole before the first attempt and
    /// sent again on each.
    pub struct ReplayBody<B> {
        #[pin]
        inner: Replay<B>,
    }
}

pin_project! {
    #[project = ReplayProj]
    enum Replay<B> {
        Kept { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Streamed { #[pin] body: B },
    }
}

impl<B> ReplayBody<B> {
    fn streamed(body: B) -> Self {
        ReplayBody {
            inner: Replay::Streamed { body },
        }
    }

    /// Whether this is a body kept whole (sent again on another attempt).
    pub fn is_kept(&self) -> bool {
        matches!(self.inner, Replay::Kept { .. })
    }
}

impl<B: Body<Data = Bytes>> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            ReplayProj::Kept { data, trailers } => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            ReplayProj::Streamed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Replay::Kept { data, trailers } => data.is_none() && trailers.is_none(),
            Replay::Streamed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Replay::Kept { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Replay::Streamed { body } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("kept", &self.is_kept())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The body of a response from an [`Affinity`] service: the backend's, observed by the
    /// router ([`ObservedBody`]), or one the layer answered itself (a rejection).
    pub struct AffinityBody<B, C, T>
    where
        C: Clock,
        T: SessionTable,
    {
        #[pin]
        inner: Answer<B, C, T>,
    }
}

pin_project! {
    #[project = AnswerProj]
    enum Answer<B, C, T>
    where
        C: Clock,
        T: SessionTable,
    {
        Backend { #[pin] body: ObservedBody<B, C, T> },
        Local { data: Option<Bytes> },
    }
}

impl<B, C: Clock, T: SessionTable> AffinityBody<B, C, T> {
    fn local(data: Bytes) -> Self {
        AffinityBody {
            inner: Answer::Local {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether the layer answered this response itself (a rejection), without a backend.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Answer::Local { .. })
    }
}

impl<B, C, T> Body for AffinityBody<B, C, T>
where
    B: Body<Data = Bytes>,
    C: Clock,
    T: SessionTable,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            AnswerProj::Backend { body } => body.poll_frame(cx),
            AnswerProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Answer::Backend { body } => body.is_end_stream(),
            Answer::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Answer::Backend { body } => body.size_hint(),
            Answer::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B, C: Clock, T: SessionTable> fmt::Debug for AffinityBody<B, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityBody")
            .field("local", &self.is_local())
            .finish_non_exhaustive()
    }
}
