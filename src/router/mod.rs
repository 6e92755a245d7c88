//! The routing decision engine: which backend owns each request, where new conversations go,
//! what to learn from responses, and what to reject.
//!
//! Start with [`Router`]: its documentation is the whole call protocol. Each rule lives in one
//! file of this module: `classify` (what a request is), `path` (how paths are read), `route`
//! (step 1: pin, place, reject; failed deliveries), `respond` (steps 2 to 4: learn, forget,
//! observe, release), `control` (backends and upkeep), `fleet` (backend states and placement),
//! `observe` (reading bodies for keys), `reject` (reasons and statuses), `edit` (head changes
//! as values), `metrics`.

mod builder;
mod classify;
mod control;
mod edit;
mod exchange;
mod extract;
mod fleet;
mod metrics;
mod observe;
mod openmetrics;
mod path;
mod reject;
mod respond;
mod route;
#[cfg(feature = "seal")]
mod seal;
pub mod store;
mod wall;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashMap;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use parking_lot::Mutex;

pub use builder::RouterBuilder;
pub use classify::Era;
pub use control::Maintenance;
pub use edit::{HeadEdit, HeadEdits, HeadEditsIntoIter};
pub use exchange::{ChunkOutcome, Data, End, Exchange, HeadOutcome, How, Routed, Undelivered};
pub use extract::{
    KeyExtractor, KeyFn, OperatorScope, PrincipalExtractor, TenantExtractor, key_fn,
};
pub use fleet::{BackendInfo, FleetError, Health, NewBackend, Placement, Probe};
pub use metrics::{Metrics, TOKEN_REFUSALS};
pub use openmetrics::OPENMETRICS_CONTENT_TYPE;
pub use reject::{BadEra, Reason, Rejection};
#[cfg(feature = "seal")]
#[cfg_attr(docsrs, doc(cfg(feature = "seal")))]
pub use seal::{Sealing, SealingOff};
pub use store::SharedStore;

use classify::Paths;
use fleet::Fleet;
use metrics::Counters;

use crate::BackendId;
use crate::table::{KeyKind, MemoryTable};

type BodyOverride = dyn Fn(&Rejection) -> Option<(HeaderValue, Bytes)> + Send + Sync;

/// The routing core: one per proxy, shared by every worker (`&self` everywhere; put it in an
/// `Arc`), holding the fleet of backends, the [`SessionTable`](crate::table::SessionTable) of
/// learned keys, and counters.
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
///                     ├─► Lookup(lookup) ──► ask the shared store ──► on_lookup ──► (a decision)
///                     │
///                     └─► Forward(exchange) ──► send to exchange.backend()
///                               ▲                       │
///                               │            could not connect
///                               └── on_undelivered ◄────┤
///                                                       │
///  response head ──► on_response_head(&mut exchange) ──► Forward | Observe | Rewrite | Replace
///                                                                    │        │
///  each body chunk ──► on_response_chunk(&mut exchange, &chunk) ─────┘        │ (until Done)
///                  ──► on_response_data(&mut exchange, chunk) → Data ─────────┘ (send what it returns)
///                                                       │
///  end or abort ──► on_exchange_end(exchange, End::Completed | End::Aborted)
/// ```
///
/// 1. [`route`](Router::route) (or [`route_with`](Router::route_with), whose closure may
///    veto a placement choice and ask for the next) classifies the request head:
///    - a request carrying a protocol key (legacy SSE session parameter, `Mcp-Session-Id`,
///      a task's `Mcp-Name`) is **pinned** to the key's owner, or **rejected** if the key is
///      unknown, its owner gone, down or revoked, or it belongs to another principal;
///    - a request with an operator key is pinned to the key's live owner; a key not known,
///      or whose owner is gone, is placed and bound afresh to the backend that answers it;
///    - a request with an affinity cookie naming a ready backend goes there; with none, or a
///      cookie naming a backend that is not ready, it is **placed** on a ready backend of its
///      tenant by the [`Placement`] policy, or rejected if none is ready.
///
///    With a [shared store](store), a key this router does not hold is answered
///    [`Routed::Lookup`]: read the key from the store and hand the answer to
///    [`on_lookup`](Router::on_lookup), which decides as `route` would have.
///
///    If the request cannot be delivered (nothing of it was written: the connection was
///    refused, timed out or failed), hand the exchange to
///    [`on_undelivered`](Router::on_undelivered) instead of going on: a refused connection
///    means the backend is **down**, so a pinned request gets `OwnerDown` (404) at once and
///    every other key of that backend with it (a timeout or another failure:
///    `OwnerUnreachable`, 503); a placed request is placed again on another ready backend,
///    within [`placement_attempts`](RouterBuilder::placement_attempts).
/// 2. [`on_response_head`](Router::on_response_head) learns and forgets from the response
///    head, and may add an affinity cookie to it: a 2xx answer to an `initialize` binds its
///    `Mcp-Session-Id`; a `DELETE` answered 2xx forgets the session, and so does a 404 to a
///    request with a legacy session when the router binds principals (without binding, a
///    404 may be the backend refusing a stranger who knows the id: the key stays until it
///    idles out), except a legacy SSE session that a stream still carries (it ends with its
///    streams); a session `GET` stream keeps its session from expiring. With sealed ids it
///    puts the client's token in place of a minted `Mcp-Session-Id`.
///    It answers [`HeadOutcome::Observe`] when the body reveals a key (a legacy SSE stream's
///    `endpoint` event, a task created by a 2026-07-28 call), [`HeadOutcome::Rewrite`] when
///    the router must change the body (with sealed ids, a legacy SSE stream's `endpoint`
///    event), and [`HeadOutcome::Replace`] when the backend created a conversation the
///    router cannot record. An embedder whose heads are not `http`'s `Parts` (pingora) calls
///    [`on_response_head_edits`](Router::on_response_head_edits) instead, which returns the
///    header changes as [`HeadEdits`] to make (and [`Exchange::request_edits`] does the same
///    for [`Exchange::rewrite_request`]). With a shared store, when
///    [`Exchange::take_store_sync`] answers `true`, write the router's queued store writes
///    before the client gets the head.
/// 3. After `Observe`, [`on_response_chunk`](Router::on_response_chunk) reads each body chunk
///    as it passes (never holding it back) until the key is learned or the byte bound is hit,
///    then answers [`ChunkOutcome::Done`]. After `Rewrite`, every chunk goes through
///    [`on_response_data`](Router::on_response_data) instead, and the client gets what it
///    returns (it holds the body back up to the `endpoint` event, at most
///    [`max_observed_bytes`](RouterBuilder::max_observed_bytes) and the chunk that crosses
///    it), then what [`on_response_data_end`](Router::on_response_data_end) returns when the
///    body ends; `on_response_chunk` alone would learn nothing, and the client would present
///    the backend's own id, refused as unknown. [`ObservedBody`](crate::body::ObservedBody)
///    does all of step 3.
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
/// idle keys under a work budget, revokes keys past drain deadlines, purges the keys of
/// removed and down backends), [`metrics`](Router::metrics), [`keys_of`](Router::keys_of) and
/// [`evict_key`](Router::evict_key).
///
/// # Backend states
///
/// | state | how it comes | its keys | new conversations |
/// |---|---|---|---|
/// | ready | added; healthy again | pinned to it | placed on it |
/// | draining | [`drain_backend`](Router::drain_backend) | pinned to it (revoked past a deadline: 404) | no |
/// | unhealthy: answers, fails checks | N failed [`Probe`]s | pinned to it: it still holds them | no |
/// | **down**: refuses connections | a refused delivery, or N refused [`Probe`]s | 404 at once, purged | no |
/// | removed | [`remove_backend`](Router::remove_backend) | 404, purged after the grace | no |
///
/// *Down is not unhealthy*: a backend that refuses connections has lost its in-memory
/// sessions, so they are answered as gone at once (the 404 that makes clients start over);
/// one that answers but fails checks still holds them, so they keep going to it. A down
/// backend that answers again comes back with none of its keys (a new process of the
/// replica; its [`BackendId`] and incarnation number stay).
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
/// 2026-07-28 is the modern era, where a 404 means *method not found*, never *session gone*.
/// On an MCP endpoint, a version that is not a date, or that appears twice, is refused
/// ([`BadEra`], 400); the legacy SSE paths and non-MCP paths do not read it. A repeated
/// `Mcp-Method` is refused on every path.
///
/// # Principles
///
/// - **Learn only from backends.** A key from a client is only looked up, never stored
///   (operator keys are bound only once a backend answered 2xx).
/// - **Reject, never re-hash.** A request whose owner is unknown or gone gets the status its
///   client acts on ([`Reason`] lists them); it is never sent to a replica that does not
///   know it.
/// - **A key is checked wherever it is carried.** A legacy session key on a path the router
///   does not route by it (another spelling of the endpoint, a discovery path, a 2026-07-28
///   version) is still checked against the principal, since the backend may read the request
///   as one of that session's.
/// - **Bounded.** Keys, observed bytes, the table (per tenant too), time, placement attempts.
/// - **Restarted backends inherit nothing.** A [`BackendId`] carries a generation, and a down
///   backend comes back with no keys.
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
    /// Removed backends whose keys are to be purged, and when.
    purges: Mutex<HashMap<BackendId, Instant>>,
    /// Held while the keys of a down backend are purged, so that its comeback (which purges
    /// too, then makes it healthy) cannot interleave with an upkeep purge.
    purge_lock: Mutex<()>,
    /// The shared store's side, if keys are shared with a fleet.
    store: Option<store::StoreState>,
    config: Config,
}

/// What the builder set: everything the router reads and never changes.
struct Config {
    paths: Paths,
    max_key_len: usize,
    max_observe: usize,
    placement: Placement,
    placement_attempts: usize,
    retry_after: u32,
    removal_grace: Duration,
    down_grace: Option<Duration>,
    cookie: Option<Arc<str>>,
    tenant: Option<Box<dyn TenantExtractor>>,
    operator: Option<Box<dyn KeyExtractor>>,
    operator_scope: OperatorScope,
    principal: Option<Box<dyn PrincipalExtractor>>,
    rejection_body: Option<Box<BodyOverride>>,
    #[cfg(feature = "seal")]
    sealing: Option<Sealing>,
}

impl<T: crate::table::SessionTable> Router<T> {
    /// Whether `claim`, of an owner this router saw go down (`down_since`: when, and as which
    /// incarnation), may be its new process's, which another router has seen come back: of a
    /// newer incarnation, or made more than `skew` after the loss, read on `clock`; or made
    /// within the skew, while the down grace (if any) has not passed.
    fn unsure_of_loss(
        &self,
        claim: fleet::Claim,
        down_since: Option<(Instant, u32)>,
        clock: &wall::WallClock,
        skew: u32,
        now: Instant,
    ) -> bool {
        down_since.is_some_and(|since| {
            claim.after(since, clock, skew)
                || (self.config.down_grace)
                    .is_none_or(|grace| now.saturating_duration_since(since.0) < grace)
        })
    }

    /// Unix seconds before which the sealed ids and shared bindings of a backend lost at `now`
    /// are refused: now, less the clock skew (0 without sealing or a store).
    fn lost_cutoff(&self, now: Instant) -> u32 {
        // With both, the larger skew: a binding or token dated by a router whose clock is
        // behind by less than that is not taken for one of the lost incarnation.
        #[cfg(feature = "seal")]
        if let Some(sealing) = &self.config.sealing {
            let sealed = sealing.lost_cutoff(now);
            return self
                .store_cutoff(now)
                .map_or(sealed, |stored| stored.min(sealed));
        }
        self.store_cutoff(now).unwrap_or(0)
    }
}

/// Sealed ids are off in this build (feature `seal`): nothing is sealed, nothing opened.
#[cfg(not(feature = "seal"))]
mod seal {
    use std::time::Instant;

    use bytes::Bytes;

    use super::Router;
    use super::classify::Intent;
    use super::exchange::{Exchange, Routed};
    use super::reject::Reason;
    use crate::TenantId;
    use crate::table::{KeyKind, Principal, SessionTable};

    // Never built here: the variant only keeps the callers' `match` the same in both builds.
    #[allow(clippy::large_enum_variant)]
    pub(super) enum Presented {
        #[allow(dead_code)]
        Routed(Routed),
        NotAToken,
    }

    impl<T: SessionTable> Router<T> {
        pub(super) fn route_sealed(
            &self,
            _: TenantId,
            _: KeyKind,
            _: &[u8],
            _: Intent,
            _: Option<Principal>,
            _: Instant,
        ) -> Presented {
            Presented::NotAToken
        }

        pub(super) fn seal_minted(
            &self,
            _: &Exchange,
            _: KeyKind,
            _: &[u8],
            _: Instant,
        ) -> Result<Option<Bytes>, Reason> {
            Ok(None)
        }

        pub(super) fn carries_own_token(
            &self,
            _: TenantId,
            _: KeyKind,
            _: &[u8],
            _: Option<Principal>,
        ) -> bool {
            false
        }

        pub(super) fn seals(&self) -> bool {
            false
        }

        pub(super) fn unknown_presented(&self, kind: KeyKind) -> Reason {
            Reason::UnknownKey(kind)
        }
    }

    pub(super) fn splice_endpoint(
        _: &[u8],
        _: usize,
        _: &[u8],
        _: std::ops::Range<usize>,
        _: &[u8],
    ) -> Option<Bytes> {
        None
    }

    pub(super) const fn presented_bound(max_key_len: usize) -> usize {
        max_key_len
    }
}

impl Config {
    /// Principals are bound, and operator keys are theirs: an operator key's id is prefixed
    /// with its principal (see [`OperatorScope::Principal`]).
    fn scoped_operator_keys(&self) -> bool {
        self.principal.is_some() && self.operator_scope == OperatorScope::Principal
    }

    /// The longest id of a key of `kind` the table may hold: operator keys scoped by
    /// principal carry an 18-byte prefix.
    fn key_bound(&self, kind: KeyKind) -> usize {
        if kind == KeyKind::Operator && self.scoped_operator_keys() {
            self.max_key_len.saturating_add(route::PRINCIPAL_PREFIX_LEN)
        } else {
            self.max_key_len
        }
    }
}

/// Whether the body is sent as is (no `Content-Encoding`, or `identity`).
fn identity_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Whether the `Content-Type` is the media type `essence` (`type/subtype`, any case), with or
/// without parameters: `text/event-stream; charset=utf-8` is an event stream,
/// `application/jsonl` is not JSON.
fn content_type_is(headers: &HeaderMap, essence: &str) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let value = v.as_bytes();
        let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
        value[..end]
            .trim_ascii()
            .eq_ignore_ascii_case(essence.as_bytes())
    })
}

impl<T> fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("paths", &self.config.paths)
            .field("placement", &self.config.placement)
            .field("max_key_len", &self.config.max_key_len)
            .field("max_observe", &self.config.max_observe)
            .field("cookie", &self.config.cookie)
            .finish_non_exhaustive()
    }
}
