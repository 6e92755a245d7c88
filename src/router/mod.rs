//! The routing decision engine: which backend owns each request, where new conversations go,
//! what to learn from responses, and what to reject.
//!
//! Start with [`Router`]: its documentation is the whole call protocol.

mod classify;
mod exchange;
mod extract;
mod fleet;
mod metrics;
mod observe;
mod reject;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HeaderMap, HeaderName, HeaderValue, SET_COOKIE};
use http::{StatusCode, request, response};
use parking_lot::Mutex;

pub use classify::Era;
pub use exchange::{ChunkOutcome, End, Exchange, HeadOutcome, How, Routed};
pub use extract::{KeyExtractor, KeyFn, PrincipalExtractor, TenantExtractor, key_fn};
pub use fleet::{BackendInfo, FleetError, Placement};
pub use metrics::Metrics;
pub use reject::{BadEra, Reason, Rejection};

use classify::{Intent, Paths, classify};
use exchange::IdBuf;
use fleet::{Fleet, OwnerStatus};
use metrics::Counters;
use observe::{Observer, Seen};

use crate::table::{
    Entry, Insert, InsertError, Key, KeyKind, MemoryTable, MemoryTableConfig, OwnedKey, Principal,
    SessionTable,
};
use crate::{BackendId, TenantId};

/// The response header that carries a Streamable HTTP session.
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

type BodyOverride = dyn Fn(&Rejection) -> Option<Bytes> + Send + Sync;

/// The routing core: one per proxy, shared by every worker (`&self` everywhere; put it in an
/// `Arc`), holding the fleet of backends, the [`SessionTable`] of learned keys, and counters.
///
/// # The call protocol
///
/// The router never does I/O. For each request, the embedder (a proxy) calls it at four
/// points, carrying an owned [`Exchange`] between them; every call that can expire state takes
/// the current time.
///
/// ```text
///  request head ──► route ──► Reject(rejection) ──► answer rejection.to_response()
///                     │
///                     └─► Forward(exchange) ──► send to exchange.backend()
///                                                       │
///  response head ──► on_response_head(&mut exchange) ──► Forward | Observe | Replace(rejection)
///                                                                    │
///  each body chunk ──► on_response_chunk(&mut exchange, &chunk) ─────┘ (until Done)
///                                                       │
///  end or abort ──► on_exchange_end(exchange, End::Completed | End::Aborted)
/// ```
///
/// 1. [`route`](Router::route) (or [`route_with`](Router::route_with), whose closure may
///    veto a placement choice and ask for the next) classifies the request head:
///    - a request carrying a key (legacy SSE session parameter, `Mcp-Session-Id`, a task's
///      `Mcp-Name`, an operator key, an affinity cookie) is **pinned** to the key's owner, or
///      **rejected** if the key is unknown, its owner gone or revoked, or it belongs to
///      another principal;
///    - a request without one is **placed** on a ready backend of its tenant by the
///      [`Placement`] policy, or rejected if none is ready.
/// 2. [`on_response_head`](Router::on_response_head) learns and forgets from the response
///    head, and may add an affinity cookie to it: a 2xx answer to an `initialize` binds its
///    `Mcp-Session-Id`; a `DELETE` answered 2xx or 404, or any 404 to a request with a legacy
///    session, forgets the session; a session `GET` stream keeps its session from expiring.
///    It answers [`HeadOutcome::Observe`] when the body reveals a key (a legacy SSE stream's
///    `endpoint` event, a task created by a 2026-07-28 call) and
///    [`HeadOutcome::Replace`] when the backend created a conversation the router cannot
///    record.
/// 3. [`on_response_chunk`](Router::on_response_chunk), while observing, reads each body chunk
///    as it passes (never holding it back) until the key is learned or the byte bound is hit,
///    then answers [`ChunkOutcome::Done`].
/// 4. [`on_exchange_end`](Router::on_exchange_end), when the response ended or was cut short,
///    releases what the stream held: a legacy SSE session lives exactly as long as its `GET`
///    stream; a session `GET` stream stops keeping its session alive.
///
/// Out of band, from any thread: [`add_backend`](Router::add_backend),
/// [`drain_backend`](Router::drain_backend) (optionally with a deadline after which the
/// backend's keys are revoked), [`remove_backend`](Router::remove_backend) (requests for its
/// keys get 404 and the keys are purged), [`restart_backend`](Router::restart_backend) (a new
/// generation: it inherits nothing), [`report_health`](Router::report_health) (health flips
/// after N consecutive results), [`maintain`](Router::maintain) (call periodically: expires
/// idle keys under a work budget, revokes keys past drain deadlines),
/// [`metrics`](Router::metrics), [`keys_of`](Router::keys_of) and
/// [`evict_key`](Router::evict_key).
///
/// # The eras
///
/// | era | how a conversation starts | key | learned from |
/// |---|---|---|---|
/// | 2024-11-05 HTTP+SSE | `GET` on the SSE path (default `/sse`) | `sessionId` / `session_id` / `sessionid` query parameter | the stream's `endpoint` event |
/// | 2025-03-26 … 2025-11-25 Streamable HTTP | `POST` without `Mcp-Session-Id` | `Mcp-Session-Id` | the 2xx response's header |
/// | 2026-07-28 and later | every call is self-contained | tasks: `Mcp-Name` of `tasks/get`, `tasks/update`, `tasks/cancel` | a `CreateTaskResult` in the call's JSON or SSE response (feature `tasks`) |
///
/// The era of a request comes from its `MCP-Protocol-Version` header: a date on or after
/// 2026-07-28 is the modern era, where `Mcp-Session-Id` is ignored and a 404 means *method not
/// found*, never *session gone*.
///
/// # Principles
///
/// - **Learn only from backends.** A key from a client is only looked up, never stored
///   (operator keys are bound only once a backend answered 2xx).
/// - **Reject, never re-hash.** A request whose owner is unknown or gone gets the status its
///   client acts on ([`Reason`] lists them); it is never sent to a replica that does not
///   know it.
/// - **Bounded.** Keys, observed bytes, the table (per tenant too), time.
/// - **Restarted backends inherit nothing.** A [`BackendId`] carries a generation.
///
/// # Example
///
/// ```
/// use std::time::Instant;
/// use http::{Request, Response, StatusCode};
/// use mcp_affinity::TenantId;
/// use mcp_affinity::router::{End, HeadOutcome, Routed, Router};
///
/// let router = Router::builder().build();
/// let a = router.add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1).unwrap();
/// let now = Instant::now();
///
/// // An initialize (no session yet) is placed…
/// let (init, _) = Request::post("/mcp").body(()).unwrap().into_parts();
/// let Routed::Forward(mut exchange) = router.route(&init, now) else { panic!() };
/// assert_eq!(exchange.backend(), a);
///
/// // …and the backend's answer binds the session it minted.
/// let (mut head, _) = Response::builder()
///     .header("mcp-session-id", "4f2a9c1e")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert!(matches!(router.on_response_head(&mut exchange, &mut head, now), HeadOutcome::Forward));
/// router.on_exchange_end(exchange, End::Completed, now);
///
/// // The next request of that session is pinned to its owner.
/// let (call, _) = Request::post("/mcp")
///     .header("mcp-session-id", "4f2a9c1e")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let Routed::Forward(exchange) = router.route(&call, now) else { panic!() };
/// assert_eq!(exchange.backend(), a);
/// router.on_exchange_end(exchange, End::Completed, now);
///
/// // A session nobody minted is rejected with what the client expects: 404.
/// let (stale, _) = Request::post("/mcp")
///     .header("mcp-session-id", "nobody")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let Routed::Reject(rejection) = router.route(&stale, now) else { panic!() };
/// assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
/// ```
pub struct Router<T = MemoryTable> {
    table: T,
    fleet: Fleet,
    counters: Counters,
    paths: Paths,
    max_key_len: usize,
    max_observe: usize,
    placement: Placement,
    retry_after: u32,
    removal_grace: Duration,
    /// Removed backends whose keys are to be purged, and when.
    purges: Mutex<Vec<(BackendId, Instant)>>,
    cookie: Option<Arc<str>>,
    tenant: Option<Box<dyn TenantExtractor>>,
    operator: Option<Box<dyn KeyExtractor>>,
    principal: Option<Box<dyn PrincipalExtractor>>,
    rejection_body: Option<Box<BodyOverride>>,
}

/// Builds a [`Router`]; see each method for its default.
pub struct RouterBuilder<T = MemoryTable> {
    table: T,
    paths: Paths,
    max_key_len: usize,
    max_observe: usize,
    placement: Placement,
    max_backends: usize,
    unhealthy_after: u32,
    healthy_after: u32,
    retry_after: u32,
    removal_grace: Duration,
    cookie: Option<Arc<str>>,
    tenant: Option<Box<dyn TenantExtractor>>,
    operator: Option<Box<dyn KeyExtractor>>,
    principal: Option<Box<dyn PrincipalExtractor>>,
    rejection_body: Option<Box<BodyOverride>>,
}

impl Router {
    /// A builder with every default: a [`MemoryTable`] with its defaults, legacy SSE on `/sse`
    /// and `/messages`, least-sessions placement.
    pub fn builder() -> RouterBuilder<MemoryTable> {
        RouterBuilder {
            table: MemoryTable::new(),
            paths: Paths {
                sse: Some("/sse".into()),
                messages: vec!["/messages".into(), "/messages/".into()],
                mcp: None,
                task_creating: vec!["tools/call".into()],
            },
            max_key_len: Key::DEFAULT_MAX_LEN,
            max_observe: 64 * 1024,
            placement: Placement::default(),
            max_backends: 4096,
            unhealthy_after: 3,
            healthy_after: 2,
            retry_after: 1,
            removal_grace: Duration::from_secs(60),
            cookie: None,
            tenant: None,
            operator: None,
            principal: None,
            rejection_body: None,
        }
    }
}

impl RouterBuilder<MemoryTable> {
    /// Uses a [`MemoryTable`] with this configuration (idle TTL, capacities, shards).
    pub fn table_config(self, config: MemoryTableConfig) -> Self {
        self.table(MemoryTable::with_config(config))
    }
}

impl<T> RouterBuilder<T> {
    /// Uses `table` as the session table (default: [`MemoryTable::new`]).
    pub fn table<U: SessionTable>(self, table: U) -> RouterBuilder<U> {
        RouterBuilder {
            table,
            paths: self.paths,
            max_key_len: self.max_key_len,
            max_observe: self.max_observe,
            placement: self.placement,
            max_backends: self.max_backends,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
            retry_after: self.retry_after,
            removal_grace: self.removal_grace,
            cookie: self.cookie,
            tenant: self.tenant,
            operator: self.operator,
            principal: self.principal,
            rejection_body: self.rejection_body,
        }
    }

    /// The legacy HTTP+SSE stream path (default `/sse`); `None` turns legacy SSE handling off.
    pub fn sse_path(mut self, path: Option<&str>) -> Self {
        self.paths.sse = path.map(Into::into);
        self
    }

    /// The legacy HTTP+SSE message paths (default `/messages` and `/messages/`).
    pub fn message_paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.paths.messages = paths.into_iter().map(Into::into).collect();
        self
    }

    /// The paths of the Streamable HTTP / 2026-07-28 endpoints (for example `/mcp`). Requests
    /// to other paths are routed as plain HTTP: placed, their keys neither looked up nor
    /// learned nor forgotten. By default every path is an endpoint except `/.well-known/…`
    /// (OAuth discovery and the like).
    pub fn mcp_paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.paths.mcp = Some(paths.into_iter().map(Into::into).collect());
        self
    }

    /// The `Mcp-Method`s whose 2026-07-28 responses may hold a `CreateTaskResult` and are
    /// observed for one (default `tools/call`).
    pub fn task_creating_methods<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        methods: I,
    ) -> Self {
        self.paths.task_creating = methods.into_iter().map(Into::into).collect();
        self
    }

    /// The longest key id accepted, in bytes (default 256); longer ones are rejected with
    /// [`Reason::InvalidKey`].
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// The most bytes of a response body observed for a key (default 64 KiB); past it the
    /// router stops observing.
    pub fn max_observed_bytes(mut self, bytes: usize) -> Self {
        self.max_observe = bytes;
        self
    }

    /// How conversations are placed (default [`Placement::LeastSessions`]).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// The most backend slots, up to 65,536 (default 4,096).
    pub fn max_backends(mut self, slots: usize) -> Self {
        self.max_backends = slots;
        self
    }

    /// Consecutive failed health results that make a backend unhealthy (default 3), and
    /// consecutive good ones that make it healthy again (default 2).
    pub fn health_thresholds(mut self, unhealthy_after: u32, healthy_after: u32) -> Self {
        self.unhealthy_after = unhealthy_after;
        self.healthy_after = healthy_after;
        self
    }

    /// How long the keys of a removed backend are kept, so that their clients are told
    /// [`OwnerGone`](Reason::OwnerGone) rather than "unknown" (default 60 s; zero purges at
    /// once). Nothing is ever routed to a removed backend meanwhile.
    pub fn removal_grace(mut self, grace: Duration) -> Self {
        self.removal_grace = grace;
        self
    }

    /// Seconds in `Retry-After` on 503 rejections (default 1).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = seconds;
        self
    }

    /// Opt-in cookie fallback: conversation starts placed by the router set a cookie of this
    /// name naming their backend, and a request carrying no key but this cookie goes to that
    /// backend while it is ready (for clients with cookie jars: browsers, Python clients); a
    /// cookie naming a backend that is gone or not ready is ignored and the request placed.
    /// Off by default.
    pub fn affinity_cookie(mut self, name: &str) -> Self {
        self.cookie = Some(name.into());
        self
    }

    /// Finds each request's tenant (default: every request is [`TenantId::DEFAULT`]).
    pub fn tenant(mut self, extractor: impl TenantExtractor) -> Self {
        self.tenant = Some(Box::new(extractor));
        self
    }

    /// Extracts an operator-defined key from requests without a protocol key (see
    /// [`KeyExtractor`] for the trade-off). Off by default.
    pub fn operator_key(mut self, extractor: impl KeyExtractor) -> Self {
        self.operator = Some(Box::new(extractor));
        self
    }

    /// Binds keys to the principal that learned them (see [`PrincipalExtractor`]). Off by
    /// default.
    pub fn principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.principal = Some(Box::new(extractor));
        self
    }

    /// Replaces rejection bodies: `body(&rejection)` returns the body to send, or `None` for
    /// the default JSON-RPC error.
    pub fn rejection_body(
        mut self,
        body: impl Fn(&Rejection) -> Option<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.rejection_body = Some(Box::new(body));
        self
    }

    /// The router.
    pub fn build(self) -> Router<T> {
        Router {
            table: self.table,
            fleet: Fleet::new(self.max_backends, self.unhealthy_after, self.healthy_after),
            counters: Counters::default(),
            paths: self.paths,
            max_key_len: self.max_key_len,
            max_observe: self.max_observe,
            placement: self.placement,
            retry_after: self.retry_after,
            removal_grace: self.removal_grace,
            purges: Mutex::new(Vec::new()),
            cookie: self.cookie,
            tenant: self.tenant,
            operator: self.operator,
            principal: self.principal,
            rejection_body: self.rejection_body,
        }
    }
}

/// What one [`Router::maintain`] call did.
#[must_use]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Maintenance {
    /// Table entries looked at for idle expiry.
    pub examined: usize,
    /// Keys expired after the idle TTL.
    pub expired: usize,
    /// Keys revoked because their draining owner's deadline passed.
    pub revoked: usize,
}

/// Whether the body is sent as is (no `Content-Encoding`, or `identity`).
fn identity_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// How learning a key a backend revealed went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learned {
    /// Bound to the backend (or already was).
    Bound,
    /// Not an id this router can route by (too long, or not visible ASCII).
    Unroutable,
    /// Another backend owns it.
    Conflict,
    /// The table is full.
    Full(crate::table::Scope),
    /// The table stores nothing.
    Refused,
}

fn content_type_is(headers: &HeaderMap, prefix: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix))
}

impl<T: SessionTable> Router<T> {
    // --- Step 1: the request head ---------------------------------------------------------

    /// Decides where a request goes: see the [call protocol](Router#the-call-protocol).
    pub fn route(&self, req: &request::Parts, now: Instant) -> Routed {
        self.route_with(req, now, |_| true)
    }

    /// [`route`](Router::route), where `accept` may veto a placement choice (for example a
    /// backend whose connection pool is exhausted): the next candidate of the policy is tried,
    /// and if every ready backend is vetoed the request is rejected with
    /// [`Reason::NoReadyBackend`]. Pinned requests are never offered to `accept`: their owner
    /// is the only backend that can serve them.
    pub fn route_with(
        &self,
        req: &request::Parts,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let tenant = match &self.tenant {
            None => Some(TenantId::DEFAULT),
            Some(extractor) => extractor.tenant(req),
        };
        match tenant {
            Some(tenant) => self.route_in(tenant, req, now, accept),
            None => Routed::Reject(self.reject(Reason::UnknownTenant)),
        }
    }

    /// [`route_with`](Router::route_with) for a request whose tenant the caller already knows
    /// (the tenant extractor is not consulted).
    pub fn route_in(
        &self,
        tenant: TenantId,
        req: &request::Parts,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let class = match classify(req, &self.paths) {
            Ok(class) => class,
            Err(reason) => return Routed::Reject(self.reject(reason)),
        };
        let principal = self.principal.as_ref().and_then(|p| p.principal(req));
        if let Some((kind, id)) = class.key {
            return self.route_key(tenant, kind, id, class.intent, principal, now);
        }
        if let Some(id) = self.operator.as_ref().and_then(|op| op.key(req)) {
            let key = match Key::with_max_len(tenant, KeyKind::Operator, id, self.max_key_len) {
                Ok(key) => key,
                Err(why) => {
                    return Routed::Reject(self.reject(Reason::InvalidKey(KeyKind::Operator, why)));
                }
            };
            if let Some(entry) = self.table.get(&key, now) {
                if self.fleet.owner_status(entry.owner, now) == OwnerStatus::Live {
                    return self.forward_owned(&key, entry, class.intent, principal, now);
                }
                // A client cannot start an operator key over: when its owner is gone, the key
                // is bound afresh, as on its first request.
                if self.table.remove(&key, Some(entry.owner)).is_some() {
                    self.counters.purged.incr();
                }
            }
            let bind = Some(Box::new(IdBuf::new(id)));
            return self.place(tenant, class.intent, principal, accept, bind);
        }
        if let Some(backend) = self.cookie_backend(tenant, req) {
            self.counters.pinned.incr();
            return Routed::Forward(Exchange::new(
                tenant,
                backend,
                How::Pinned,
                class.intent,
                principal,
            ));
        }
        self.place(tenant, class.intent, principal, accept, None)
    }

    fn route_key(
        &self,
        tenant: TenantId,
        kind: KeyKind,
        id: &[u8],
        intent: Intent,
        principal: Option<Principal>,
        now: Instant,
    ) -> Routed {
        let key = match Key::with_max_len(tenant, kind, id, self.max_key_len) {
            Ok(key) => key,
            Err(why) => return Routed::Reject(self.reject(Reason::InvalidKey(kind, why))),
        };
        match self.table.get(&key, now) {
            Some(entry) => self.forward_owned(&key, entry, intent, principal, now),
            None => Routed::Reject(self.reject(Reason::UnknownKey(kind))),
        }
    }

    /// Forwards to the owner of `key`, if it may serve it.
    fn forward_owned(
        &self,
        key: &Key<'_>,
        entry: Entry,
        intent: Intent,
        principal: Option<Principal>,
        now: Instant,
    ) -> Routed {
        let kind = key.kind();
        if self.principal.is_some() && entry.principal != principal {
            return Routed::Reject(self.reject(Reason::WrongPrincipal(kind)));
        }
        match self.fleet.owner_status(entry.owner, now) {
            OwnerStatus::Live => {
                self.counters.pinned.incr();
                let mut exchange =
                    Exchange::new(key.tenant(), entry.owner, How::Pinned, intent, principal);
                exchange.key = Some((kind, IdBuf::new(key.id_bytes())));
                Routed::Forward(exchange)
            }
            OwnerStatus::Gone => {
                if self.table.remove(key, Some(entry.owner)).is_some() {
                    self.counters.purged.incr();
                }
                Routed::Reject(self.reject(Reason::OwnerGone(kind)))
            }
            OwnerStatus::Revoked => {
                if self.table.remove(key, Some(entry.owner)).is_some() {
                    self.counters.revoked.incr();
                }
                Routed::Reject(self.reject(Reason::OwnerRevoked(kind)))
            }
        }
    }

    fn place(
        &self,
        tenant: TenantId,
        intent: Intent,
        principal: Option<Principal>,
        accept: impl FnMut(BackendId) -> bool,
        bind_operator: Option<Box<IdBuf>>,
    ) -> Routed {
        // Sessions are balanced by the policy; stateless calls, which leave nothing behind to
        // balance, take turns.
        let policy = if intent.starts_conversation() || bind_operator.is_some() {
            self.placement
        } else {
            Placement::WeightedRoundRobin
        };
        let Some(backend) = self.choose(tenant, policy, accept) else {
            return Routed::Reject(self.reject(Reason::NoReadyBackend));
        };
        self.counters.placed.incr();
        let mut exchange = Exchange::new(tenant, backend, How::Placed, intent, principal);
        if policy != Placement::WeightedRoundRobin {
            self.fleet.start_pending(backend);
            exchange.pending = true;
        }
        exchange.bind_operator = bind_operator;
        exchange.set_cookie = self.cookie.is_some() && intent.starts_conversation();
        Routed::Forward(exchange)
    }

    /// The policy's first choice that `accept` takes. The fleet lock is not held while
    /// `accept` runs, so it may call back into the router.
    fn choose(
        &self,
        tenant: TenantId,
        policy: Placement,
        mut accept: impl FnMut(BackendId) -> bool,
    ) -> Option<BackendId> {
        let mut refused: Vec<BackendId> = Vec::new();
        loop {
            let choice = self.fleet.pick(tenant, policy, &self.table, &refused)?;
            if accept(choice) {
                return Some(choice);
            }
            self.counters.vetoed.incr();
            refused.push(choice);
        }
    }

    /// The backend named by the request's affinity cookie, if the fallback is on and the
    /// cookie names a ready backend of the tenant. Anything else (no cookie, a malformed one,
    /// a backend gone, draining, unhealthy or of another tenant) is no hint at all: the
    /// request is placed like any keyless request, and a conversation start gets a fresh
    /// cookie. A client can name any ready backend of its tenant this way, which is no more
    /// than placement could have given it.
    fn cookie_backend(&self, tenant: TenantId, req: &request::Parts) -> Option<BackendId> {
        let name = self.cookie.as_deref()?;
        let value = req
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)?;
        let (slot, generation) = value.split_once('.')?;
        let id = BackendId::new(slot.parse().ok()?, generation.parse().ok()?);
        self.fleet.is_ready_in(id, tenant).then_some(id)
    }

    fn reject(&self, reason: Reason) -> Rejection {
        self.counters.rejected[reason.index()].incr();
        let rejection = Rejection::new(reason, self.retry_after);
        match &self.rejection_body {
            Some(body) => {
                let custom = body(&rejection);
                rejection.with_body(custom)
            }
            None => rejection,
        }
    }

    // --- Step 2: the response head --------------------------------------------------------

    /// Learns and forgets from a response head, and says whether to observe its body: see the
    /// [call protocol](Router#the-call-protocol). May add a `Set-Cookie` header (affinity
    /// cookie fallback).
    pub fn on_response_head(
        &self,
        exchange: &mut Exchange,
        response: &mut response::Parts,
        now: Instant,
    ) -> HeadOutcome {
        let status = response.status;
        let ok = status.is_success();
        if std::mem::take(&mut exchange.pending) {
            self.fleet.end_pending(exchange.backend);
        }
        if let Some(id) = exchange.bind_operator.take() {
            if ok {
                // The call already ran: a binding that fails is counted, never turned into an
                // error the client would retry (and repeat a call that was not idempotent).
                let _ = self.learn(exchange, KeyKind::Operator, id.as_bytes(), false, now);
            }
        }
        if exchange.set_cookie && ok {
            if let Some(name) = &self.cookie {
                let id = exchange.backend;
                let cookie = format!(
                    "{name}={}.{}; Path=/; HttpOnly; SameSite=Lax",
                    id.slot(),
                    id.generation()
                );
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers.append(SET_COOKIE, value);
                }
            }
        }
        match exchange.intent {
            Intent::SseConnect | Intent::ModernCall { .. }
                if ok && !identity_encoded(&response.headers) =>
            {
                // A compressed body cannot be read for its key (proxies should not ask
                // backends for compression on these paths): counted, not observed.
                self.counters.encoded.incr();
                HeadOutcome::Forward
            }
            Intent::SseConnect if ok && content_type_is(&response.headers, "text/event-stream") => {
                exchange.observer = Some(Box::new(Observer::endpoint(self.max_observe)));
                self.counters.observed.incr();
                HeadOutcome::Observe
            }
            Intent::SessionStart if ok => match response.headers.get(&MCP_SESSION_ID) {
                Some(id) => {
                    let learned = self.learn(exchange, KeyKind::Session, id.as_bytes(), false, now);
                    self.learned_head(learned, KeyKind::Session)
                }
                None => HeadOutcome::Forward,
            },
            Intent::SessionPost
            | Intent::SessionStream
            | Intent::SessionDelete
            | Intent::SseMessage => {
                self.session_response(exchange, status, &response.headers, now);
                HeadOutcome::Forward
            }
            #[cfg(feature = "tasks")]
            Intent::ModernCall {
                may_create_task: true,
            } if ok => {
                let observer = if content_type_is(&response.headers, "application/json") {
                    let expected = response
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    Observer::task_json(expected, self.max_observe)
                } else if content_type_is(&response.headers, "text/event-stream") {
                    Observer::task_events(self.max_observe)
                } else {
                    return HeadOutcome::Forward;
                };
                exchange.observer = Some(Box::new(observer));
                self.counters.observed.incr();
                HeadOutcome::Observe
            }
            _ => HeadOutcome::Forward,
        }
    }

    /// A response to a request that carried a legacy session.
    fn session_response(
        &self,
        exchange: &mut Exchange,
        status: StatusCode,
        headers: &HeaderMap,
        now: Instant,
    ) {
        let Some(key) = exchange.routed_key() else {
            return;
        };
        let ended = status == StatusCode::NOT_FOUND
            || (exchange.intent == Intent::SessionDelete && status.is_success());
        if ended {
            if self.table.remove(&key, Some(exchange.backend)).is_some() {
                self.counters.forgotten.incr();
            }
            return;
        }
        if key.kind() == KeyKind::Session {
            if let Some(id) = headers.get(&MCP_SESSION_ID) {
                if id.as_bytes() != key.id_bytes() {
                    // Another id for an existing session: not learned.
                    self.counters.id_mismatches.incr();
                }
            }
        }
        if exchange.intent == Intent::SessionStream
            && status.is_success()
            && content_type_is(headers, "text/event-stream")
            && self.table.open_stream(&key, now).is_some()
        {
            exchange.stream_open = true;
        }
    }

    /// Binds a key a backend revealed to that backend; with `stream`, the binding holds one
    /// open stream from the start (a legacy SSE session, bound while its stream lives).
    fn learn(
        &self,
        exchange: &Exchange,
        kind: KeyKind,
        id: &[u8],
        stream: bool,
        now: Instant,
    ) -> Learned {
        let Ok(key) = Key::with_max_len(exchange.tenant, kind, id, self.max_key_len) else {
            self.counters.unlearned.incr();
            return Learned::Unroutable;
        };
        let (backend, principal) = (exchange.backend, exchange.principal);
        let insert = || {
            if stream {
                self.table.insert_streaming(&key, backend, principal, now)
            } else {
                self.table.insert(&key, backend, principal, now)
            }
        };
        let mut inserted = insert();
        if let Ok(Insert::Exists(stale)) = inserted {
            // The id is held for an owner that is gone or revoked (its keys await their
            // purge): the backend that minted it now is its owner.
            let dead = self.fleet.owner_status(stale.owner, now) != OwnerStatus::Live;
            if stale.owner != backend
                && dead
                && self.table.remove(&key, Some(stale.owner)).is_some()
            {
                self.counters.purged.incr();
                inserted = insert();
            }
        }
        match inserted {
            Ok(Insert::Added { evicted }) => {
                self.counters.learned.incr();
                if evicted {
                    self.counters.evicted.incr();
                }
                Learned::Bound
            }
            Ok(Insert::Exists(entry)) if entry.owner == backend => Learned::Bound,
            Ok(_) => {
                self.counters.conflicts.incr();
                Learned::Conflict
            }
            Err(InsertError::Full { scope }) => {
                self.counters.unlearned.incr();
                Learned::Full(scope)
            }
            Err(_) => Learned::Refused,
        }
    }

    /// What to do with a response whose head revealed a new conversation's key.
    fn learned_head(&self, learned: Learned, kind: KeyKind) -> HeadOutcome {
        match learned {
            Learned::Bound | Learned::Refused => HeadOutcome::Forward,
            Learned::Unroutable => HeadOutcome::Replace(self.reject(Reason::UnroutableKey(kind))),
            Learned::Conflict => HeadOutcome::Replace(self.reject(Reason::KeyConflict(kind))),
            Learned::Full(scope) => HeadOutcome::Replace(self.reject(Reason::TableFull(scope))),
        }
    }

    // --- Step 3: body chunks --------------------------------------------------------------

    /// Reads a chunk of an observed response body: see the
    /// [call protocol](Router#the-call-protocol). Cheap to call when not observing.
    pub fn on_response_chunk(
        &self,
        exchange: &mut Exchange,
        chunk: &Bytes,
        now: Instant,
    ) -> ChunkOutcome {
        let Some(observer) = exchange.observer.as_mut() else {
            return ChunkOutcome::Done;
        };
        match observer.feed(chunk, self.max_observe) {
            Seen::More => return ChunkOutcome::More,
            Seen::Key(id) => self.learn_from_body(exchange, &id, now),
            Seen::Nothing => {}
            Seen::Limit => self.counters.observe_limit.incr(),
        }
        exchange.observer = None;
        ChunkOutcome::Done
    }

    fn learn_from_body(&self, exchange: &mut Exchange, id: &IdBuf, now: Instant) {
        // The headers are gone: a refusal can only be counted (clients get a clear 404).
        let sse = exchange.intent == Intent::SseConnect;
        let kind = if sse {
            KeyKind::SseSession
        } else {
            KeyKind::Task
        };
        let learned = self.learn(exchange, kind, id.as_bytes(), sse, now);
        if sse && learned == Learned::Bound {
            exchange.stream_binding = Some(Box::new(id.clone()));
        }
    }

    // --- Step 4: the end ------------------------------------------------------------------

    /// Releases what the exchange held: see the [call protocol](Router#the-call-protocol).
    /// Completed and aborted exchanges release alike; `end` is there for the record.
    pub fn on_exchange_end(&self, exchange: Exchange, end: End, now: Instant) {
        let _ = end;
        if exchange.pending {
            self.fleet.end_pending(exchange.backend);
        }
        if let Some(id) = &exchange.stream_binding {
            // A legacy SSE session lives exactly as long as its stream.
            let key = exchange.key_of(KeyKind::SseSession, id);
            if self.table.remove(&key, Some(exchange.backend)).is_some() {
                self.counters.released.incr();
            }
        }
        if exchange.stream_open {
            if let Some(key) = exchange.routed_key() {
                let _ = self.table.close_stream(&key, now);
            }
        }
    }

    // --- Out of band ----------------------------------------------------------------------

    /// Adds a backend to `tenant`'s fleet, ready for new conversations. `label` is yours (for
    /// example its base URL); `weight` counts for weighted round robin.
    pub fn add_backend(
        &self,
        tenant: TenantId,
        label: &str,
        weight: u32,
    ) -> Result<BackendId, FleetError> {
        self.fleet.add(tenant, label.into(), weight)
    }

    /// Stops placing new conversations on a backend; it keeps serving its keys. With a
    /// deadline, keys still on it at that time are revoked (requests for them get 404, and
    /// [`maintain`](Router::maintain) purges them).
    pub fn drain_backend(
        &self,
        id: BackendId,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), FleetError> {
        self.fleet.drain(id, deadline, now)
    }

    /// Makes a draining backend ready again.
    pub fn undrain_backend(&self, id: BackendId) -> Result<(), FleetError> {
        self.fleet.undrain(id)
    }

    /// Removes a backend: nothing is routed to it any more, and its slot may be reused by a
    /// later backend, with a new generation. Its keys are rejected as
    /// [`OwnerGone`](Reason::OwnerGone) (404, the signal to start over) and purged: one by one
    /// as they are presented, the rest by [`maintain`](Router::maintain) once the removal grace
    /// has passed (see [`RouterBuilder::removal_grace`]; with no grace, at once). Returns how
    /// many keys it owned.
    pub fn remove_backend(&self, id: BackendId, now: Instant) -> Result<usize, FleetError> {
        self.fleet.remove(id)?;
        let owned = self.table.count_owner(id);
        if self.removal_grace.is_zero() {
            self.purge(id);
        } else {
            self.purges.lock().push((id, now + self.removal_grace));
        }
        Ok(owned)
    }

    fn purge(&self, id: BackendId) {
        let purged = self.table.remove_owner(id);
        self.counters.purged.add(purged as u64);
    }

    /// A backend restarted: removes it (see [`remove_backend`](Router::remove_backend)) and
    /// adds it again with the same tenant, label and weight, as a new generation that inherits
    /// nothing.
    pub fn restart_backend(&self, id: BackendId, now: Instant) -> Result<BackendId, FleetError> {
        let info = self
            .fleet
            .infos(&self.table)
            .into_iter()
            .find(|b| b.id == id)
            .ok_or(FleetError::NotFound(id))?;
        self.remove_backend(id, now)?;
        self.fleet.add(info.tenant, info.label, info.weight)
    }

    /// Sets a backend's weight for weighted round robin; 0 takes it out of every placement
    /// (it keeps serving its keys).
    pub fn set_weight(&self, id: BackendId, weight: u32) -> Result<(), FleetError> {
        self.fleet.set_weight(id, weight)
    }

    /// Records a health check result from the embedder; a backend turns unhealthy (no new
    /// conversations; its keys still route to it) after consecutive failures, and healthy again
    /// after consecutive successes (see
    /// [`RouterBuilder::health_thresholds`]). Returns its health now.
    pub fn report_health(&self, id: BackendId, ok: bool) -> Result<bool, FleetError> {
        self.fleet.report_health(id, ok)
    }

    /// Periodic upkeep (call it every second or so): expires idle keys, looking at no more
    /// than `budget` table entries; revokes the keys of draining backends past their
    /// deadline; purges the keys of removed backends past the removal grace.
    pub fn maintain(&self, now: Instant, budget: usize) -> Maintenance {
        let eviction = self.table.evict_idle(now, budget);
        self.counters.expired.add(eviction.evicted as u64);
        let mut revoked = 0;
        for id in self.fleet.take_due_revocations(now) {
            revoked += self.table.remove_owner(id);
        }
        self.counters.revoked.add(revoked as u64);
        let due: Vec<BackendId> = {
            let mut purges = self.purges.lock();
            let (due, later) = purges.drain(..).partition(|(_, at)| *at <= now);
            *purges = later;
            due.into_iter().map(|(id, _)| id).collect()
        };
        for id in due {
            self.purge(id);
        }
        Maintenance {
            examined: eviction.examined,
            expired: eviction.evicted,
            revoked,
        }
    }

    /// Every backend, with its state and live keys.
    pub fn backends(&self) -> Vec<BackendInfo> {
        self.fleet.infos(&self.table)
    }

    /// A snapshot of the counters and state.
    pub fn metrics(&self) -> Metrics {
        self.counters
            .snapshot(self.fleet.infos(&self.table), self.table.occupancy())
    }

    /// Up to `max` keys that `backend` owns.
    pub fn keys_of(&self, backend: BackendId, max: usize) -> Vec<OwnedKey> {
        self.table.keys_of(backend, max)
    }

    /// Forgets one key (an operator's eviction); its next request is rejected as unknown.
    pub fn evict_key(&self, key: &Key<'_>) -> Option<Entry> {
        let removed = self.table.remove(key, None);
        if removed.is_some() {
            self.counters.forgotten.incr();
        }
        removed
    }

    /// The session table.
    pub fn table(&self) -> &T {
        &self.table
    }
}

impl<T> fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("paths", &self.paths)
            .field("placement", &self.placement)
            .field("max_key_len", &self.max_key_len)
            .field("max_observe", &self.max_observe)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for RouterBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("paths", &self.paths)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}
